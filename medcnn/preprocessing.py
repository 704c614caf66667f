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
from medcnn.transforms.custom import masked_zscore

logger = logging.getLogger(__name__)

CT_WINDOWS = {"soft_tissue": (-160.0, 240.0), "lung": (-1350.0, 150.0), "bone": (-450.0, 1050.0), "brain": (0.0, 80.0)}


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
    """Crop (optional) + normalise an image already on the model grid.

    Args:
        img: ``(C, *spatial)`` from :func:`load_for_model`.
        spec: the preprocessing spec.

    Returns:
        ``(x, info)``: float32 ``(C, *cropped)`` plain tensor, and ``info`` with ``box`` and
        ``shape`` for :func:`uncrop`.

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
    size = spec.get("size")
    if size:
        x, pads = pad_or_crop_to(x, size)
        info["pads"] = pads
    return x, info
