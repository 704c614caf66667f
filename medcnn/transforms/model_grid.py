"""The preprocessing a model was trained with, applied identically at training and inference time.

A *preprocessing spec* is the ``preprocess`` section of a training config, stored in every
checkpoint: orientation, spacing, foreground crop, intensity normalisation, fixed size. The
inverse (:func:`uncrop`) puts a prediction back on the loaded grid, and :func:`medcnn.save`
then undoes the resampling, so outputs land on the input file's own grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medcnn.errors import InputError
from medcnn.io import load
from medcnn.io.api import meta_without_affine
from medcnn.io.memory import check_memory
from medcnn.transforms.custom import masked_zscore
from medcnn.transforms.windows import CT_WINDOWS

logger = logging.getLogger(__name__)

__all__ = [
    "CT_WINDOWS", "crop", "foreground_box", "load_for_model", "normalize", "pad_or_crop_to", "prepare",
    "restore_to_box", "square_resize", "square_restore", "uncrop",
]


def load_for_model(paths: Sequence[str | Path] | str | Path, spec: Mapping[str, Any], *, series: str | int | None = None,
                   mode: str = "linear") -> MetaTensor:
    """Load input(s) on the model's grid: ``medcnn.load`` with the spec's spacing and orientation.

    Returns:
        ``MetaTensor (C, *spatial)`` (see :func:`medcnn.load`).
    """
    spacing = spec.get("spacing")
    sdims = 3 if spacing is None else len(spacing)
    orientation = spec.get("orientation") if sdims == 3 else None
    return load(paths if not isinstance(paths, (str, Path)) else paths, spacing=spacing, orientation=orientation,
                series=series, mode=mode)


def foreground_box(img: torch.Tensor, margin: int = 2, threshold: float = 0.0) -> list[tuple[int, int]]:
    """Bounding box of voxels above ``threshold`` in any channel, grown by ``margin``.

    Args:
        img: ``(C, *spatial)``.

    Returns:
        ``[(start, stop), ...]`` per spatial axis (the whole axis if nothing is above threshold).
    """
    fg = (img > threshold).any(dim=0) if img.ndim > 1 else img > threshold
    box = []
    for ax in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != ax)
        hit = torch.nonzero(fg.any(dim=other) if other else fg).flatten()
        n = fg.shape[ax]
        if hit.numel() == 0:
            box.append((0, n))
        else:
            box.append((max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return box


def crop(img: torch.Tensor, box: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``img[:, box]`` with the MetaTensor affine moved to the new corner (``(C, *spatial)``)."""
    sl = (slice(None),) + tuple(slice(a, b) for a, b in box)
    out = img[sl]
    if isinstance(img, MetaTensor):
        shift = np.eye(4)
        shift[: len(box), 3] = [a for a, _ in box]
        out = MetaTensor(out.as_tensor().clone(), affine=torch.as_tensor(img.affine.numpy() @ shift), meta=meta_without_affine(img))
    return out


def uncrop(pred: torch.Tensor, box: Sequence[tuple[int, int]], full_shape: Sequence[int], fill: float = 0) -> torch.Tensor:
    """Paste ``pred (C, *cropped)`` back into a ``(C, *full_shape)`` tensor filled with ``fill``."""
    out = torch.full((pred.shape[0], *full_shape), fill, dtype=pred.dtype, device=pred.device)
    sl = (slice(None),) + tuple(slice(a, b) for a, b in box)
    out[sl] = pred
    return out


def pad_or_crop_to(img: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Centre pad (zeros) / crop ``(C, *spatial)`` to ``size``; returns the tensor and per-axis (before, after) pads."""
    out = img.as_tensor() if isinstance(img, MetaTensor) else img
    pads = []
    for ax, target in enumerate(size):
        n = out.shape[1 + ax]
        if n > target:
            start = (n - target) // 2
            out = out.narrow(1 + ax, start, target)
            pads.append((-start, -(n - target - start)))
        elif n < target:
            before = (target - n) // 2
            after = target - n - before
            shape = list(out.shape)
            shape[1 + ax] = target
            grown = out.new_zeros(shape)
            grown.narrow(1 + ax, before, n).copy_(out)
            out = grown
            pads.append((before, after))
        else:
            pads.append((0, 0))
    return out.contiguous(), pads


def square_resize(img: torch.Tensor, size: int, *, label: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Letterbox a 2D image: centre-pad ``(C, H, W)`` to a square with zeros, then resize to ``size x size``.

    The usual chest X-ray model input (CheXNet, TorchXRayVision): the whole field of view is kept
    and the aspect ratio is preserved. Images are shrunk with area averaging (bilinear when
    enlarging); ``label=True`` resizes binary masks the same way and thresholds at 0.5, which keeps
    the mask's outline where nearest-neighbour sampling would alias it.

    Args:
        img: ``(C, H, W)``.
        size: output side.
        label: the input is a (multi-channel) binary mask.

    Returns:
        ``(x, info)``: ``(C, size, size)`` float32 (uint8 0/1 for labels) and ``info`` with
        ``hw`` (input size) and ``pad`` (top, left) for :func:`square_restore`.
    """
    x = img.as_tensor() if isinstance(img, MetaTensor) else img
    if x.ndim != 3:
        raise ValueError(f"square_resize expects (C, H, W), got shape {tuple(x.shape)}")
    h, w = int(x.shape[1]), int(x.shape[2])
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    sq = x.new_zeros((x.shape[0], side, side), dtype=torch.float32)
    sq[:, top:top + h, left:left + w] = x.to(torch.float32)
    mode = "area" if side >= size else "bilinear"
    out = torch.nn.functional.interpolate(sq[None], size=(size, size), mode=mode,
                                          **({} if mode == "area" else {"align_corners": False}))[0]
    if label:
        out = (out >= 0.5).to(torch.uint8)
    return out.contiguous(), {"hw": (h, w), "pad": (top, left)}


def square_restore(t: torch.Tensor, info: Mapping[str, Any]) -> torch.Tensor:
    """Invert :func:`square_resize` for a float map: ``(K, size, size)`` -> ``(K, H, W)`` (bilinear).

    Probabilities (not labels) are brought back, so the decision is taken at the input's own
    resolution with sub-pixel outlines.
    """
    h, w = info["hw"]
    top, left = info["pad"]
    side = max(h, w)
    up = torch.nn.functional.interpolate(t[None].float(), size=(side, side), mode="bilinear", align_corners=False)[0]
    return up[:, top:top + h, left:left + w].contiguous()


def restore_to_box(t: torch.Tensor, info: Mapping[str, Any]) -> torch.Tensor:
    """Undo the fixed-size steps of :func:`prepare` (letterbox resize, pad/crop): ``(K, *size)`` ->
    ``(K, *cropped box)``, ready for :func:`uncrop`. Centre-cropped margins come back as zeros."""
    if info.get("square"):
        return square_restore(t, info["square"])
    pads = info.get("pads")
    if not pads:
        return t
    for ax, (before, after) in enumerate(pads):
        dim = 1 + ax
        if before > 0 or after > 0:
            t = t.narrow(dim, max(before, 0), t.shape[dim] - max(before, 0) - max(after, 0))
        if before < 0 or after < 0:
            shape = list(t.shape)
            shape[dim] += -min(before, 0) - min(after, 0)
            grown = t.new_zeros(shape)
            grown.narrow(dim, -min(before, 0), t.shape[dim]).copy_(t)
            t = grown
    return t


def normalize(img: torch.Tensor, spec: Mapping[str, Any]) -> torch.Tensor:
    """Intensity normalisation named by ``spec["normalize"]``.

    * ``brain_mri``: per-channel z-score inside the voxels non-zero in any channel (background 0);
    * ``zscore``: per-channel z-score over the whole image;
    * ``ct``: clip to ``spec["ct_window"]`` (HU pair or a name in :data:`CT_WINDOWS`) and scale to [0, 1];
    * ``minmax``: per-channel robust (0.5-99.5 percentile) scaling to [0, 1];
    * ``none``.

    Args:
        img: ``(C, *spatial)`` float tensor.

    Returns:
        Tensor of the same shape, float32.
    """
    kind = spec.get("normalize", "none")
    x = img.as_tensor() if isinstance(img, MetaTensor) else img
    x = x.to(torch.float32)
    if kind == "brain_mri":
        out = masked_zscore(x)
    elif kind == "zscore":
        mean = x.flatten(1).mean(1).view(-1, *([1] * (x.ndim - 1)))
        std = x.flatten(1).std(1).clamp_min(1e-8).view(-1, *([1] * (x.ndim - 1)))
        out = (x - mean) / std
    elif kind == "ct":
        win = spec.get("ct_window") or (-1000.0, 1000.0)
        lo, hi = CT_WINDOWS[win] if isinstance(win, str) else (float(win[0]), float(win[1]))
        out = (x.clamp(lo, hi) - lo) / (hi - lo)
        stats = spec.get("ct_zscore")  # (mean, std) HU of the training foreground: a global z-score after clipping
        if stats:
            mean, std = float(stats[0]), float(stats[1])
            out = (x.clamp(lo, hi) - mean) / max(std, 1e-8)
    elif kind == "minmax":
        flat = x.flatten(1)
        k_lo = max(1, int(0.005 * flat.shape[1]))
        k_hi = max(1, int(0.995 * flat.shape[1]))
        lo = flat.kthvalue(k_lo, dim=1).values.view(-1, *([1] * (x.ndim - 1)))
        hi = flat.kthvalue(k_hi, dim=1).values.view(-1, *([1] * (x.ndim - 1)))
        out = ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    elif kind == "none":
        out = x
    else:
        raise ValueError(f"unknown normalisation {kind!r}")
    return out.to(torch.float32)


def prepare(img: MetaTensor, spec: Mapping[str, Any]) -> tuple[torch.Tensor, dict]:
    """Crop (optional) + normalise an image already on the model grid, then bring it to the fixed
    input size: ``square_size`` (2D letterbox + resize, :func:`square_resize`) or ``size``
    (centre pad/crop, :func:`pad_or_crop_to`). :func:`restore_to_box` and :func:`uncrop` invert it.

    Args:
        img: ``(C, *spatial)`` from :func:`load_for_model`.
        spec: the preprocessing spec.

    Returns:
        ``(x, info)``: float32 ``(C, *cropped or fixed size)`` plain tensor, and ``info`` with
        ``box`` and ``shape`` for :func:`uncrop`, ``pads`` or ``square`` for :func:`restore_to_box`.

    Raises:
        InputError: the image is empty (all zero) where a foreground crop is requested.
    """
    full_shape = tuple(int(s) for s in img.shape[1:])
    box = [(0, n) for n in full_shape]
    if spec.get("crop_foreground", False):
        data = img.as_tensor() if isinstance(img, MetaTensor) else img
        rel = float(spec.get("crop_threshold") or 0.0)
        # a relative threshold (fraction of the 99.5th percentile) ignores background noise, e.g. Rician noise
        # around an unstripped head, which would otherwise make the whole field of view "foreground"
        thr = rel * float(torch.quantile(data.flatten()[:: max(1, data.numel() // 1_000_000)].float(), 0.995)) if rel else 0.0
        box = foreground_box(data, threshold=thr)
        if all(b == (0, n) for b, n in zip(box, full_shape)) and not bool((img != 0).any()):
            raise InputError(img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None, "image is all zero")
    x = crop(img.as_tensor() if isinstance(img, MetaTensor) else img, box)
    x = normalize(x, spec)
    info: dict[str, Any] = {"box": box, "shape": full_shape}
    square = spec.get("square_size")
    size = spec.get("size")
    source = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    if square:
        check_memory(source, (x.shape[0], int(square), int(square)), 4, what="model input (preprocess.square_size)")
        x, info["square"] = square_resize(x, int(square))
    elif size:
        check_memory(source, (x.shape[0], *size), 4, what="model input (preprocess.size)")
        x, pads = pad_or_crop_to(x, size)
        info["pads"] = pads
    return x, info
