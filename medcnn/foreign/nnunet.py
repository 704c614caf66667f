"""nnU-Net v2 trained model folders, run with nnU-Net's preprocessing semantics.

``load_model("nnUNet_results/Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres")`` reads
``plans.json``, ``dataset.json`` and every ``fold_N/checkpoint_final.pth`` (``weights_only=True``; the
numpy scalars and dtypes nnU-Net's training log stores are the only globals allowed) and returns an
:class:`NnUNetModel`, whose ``predict(img)`` does what nnU-Net's predictor does, written here on
numpy/scipy/scikit-image:

1. the image in nnU-Net's axis order (SimpleITK's: the voxel axes reversed), then ``transpose_forward``;
2. crop to the non-zero box (any channel non-zero, holes filled), keeping that mask;
3. normalise each channel by its scheme: ``ZScoreNormalization`` (inside the mask when
   ``use_mask_for_norm``), ``CTNormalization`` (clip to the stored foreground 0.5/99.5 percentiles, then
   the stored mean/std), ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``;
4. resample to the configuration's spacing: cubic (``order``) in 3D, or in-plane then ``order_z`` along
   the low-resolution axis when the spacing is anisotropic (max/min > 3) -- nnU-Net's separate-z rule;
5. pad to the patch, sliding window with tile step 0.5 spread evenly, Gaussian importance (sigma 1/8 of
   the patch), mirroring over the checkpoint's allowed axes, logits averaged over folds;
6. logits resampled back (``resampling_fn_probabilities_kwargs``), softmax/argmax (or sigmoid and
   ``regions_class_order``), un-cropped, ``transpose_backward``, back to medcnn's axis order.

The network is built from ``plans.json``'s ``architecture`` entry with nnU-Net's network package,
``dynamic_network_architectures`` (``pip install "medcnn[nnunet]"``); only classes from that package and
``torch.nn`` are ever imported by name.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage
from torch import nn

from medcnn.errors import ConfigError, InputError
from medcnn.foreign.common import load_weights, safe_torch_load
from medcnn.io import geometry
from medcnn.io.api import meta_without_affine

logger = logging.getLogger(__name__)

#: spacing ratio above which nnU-Net resamples the low-resolution axis separately
ANISO_THRESHOLD = 3.0
#: readers whose axis order is SimpleITK's (voxel axes reversed) without reorientation
_READERS = ("SimpleITKIO", "NibabelIO", "SimpleITKWithDirectionIO", "Tiff3DIO")
_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization", "RGBTo01Normalization")


def is_model_folder(folder: str | Path) -> bool:
    """A folder with ``plans.json``, ``dataset.json`` and at least one ``fold_*`` folder."""
    f = Path(folder)
    return (f / "plans.json").is_file() and (f / "dataset.json").is_file() and any(p.is_dir() for p in f.glob("fold_*"))


# ------------------------------------------------------------------------------- preprocessing pieces


def nonzero_crop(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Crop to the box of voxels non-zero in any channel (holes in that mask filled, as nnU-Net does).

    Args:
        data: ``(C, *S)``.

    Returns:
        ``(cropped (C, *s), mask (*s) bool, box [(start, stop), ...])``; an all-zero image keeps its whole extent.
    """
    mask = ndimage.binary_fill_holes((data != 0).any(axis=0))
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[ax]))
    sl = tuple(slice(a, b) for a, b in box)
    return data[(slice(None), *sl)], mask[sl], box


def normalize_channels(data: np.ndarray, mask: np.ndarray, schemes: Sequence[str], use_mask: Sequence[bool],
                       intensity: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """nnU-Net's per-channel normalisation schemes.

    Args:
        data: ``(C, *S)`` cropped image.
        mask: ``(*S)`` the non-zero mask of the crop.
        schemes: one scheme name per channel.
        use_mask: per channel, z-score inside ``mask`` only (the rest left as is: zero).
        intensity: ``foreground_intensity_properties_per_channel`` of the plans (CTNormalization).

    Returns:
        ``(C, *S)`` float32.

    Raises:
        ValueError: a scheme this module does not implement.
    """
    out = data.astype(np.float32, copy=True)
    for c, scheme in enumerate(schemes):
        x = out[c]
        if scheme == "ZScoreNormalization":
            if use_mask[c]:
                vals = x[mask]
                x[mask] = (vals - vals.mean()) / max(float(vals.std()), 1e-8)
            else:
                x -= x.mean()
                x /= max(float(x.std()), 1e-8)
        elif scheme == "CTNormalization":
            props = intensity[str(c)]
            np.clip(x, props["percentile_00_5"], props["percentile_99_5"], out=x)
            x -= props["mean"]
            x /= max(float(props["std"]), 1e-8)
        elif scheme == "NoNormalization":
            pass
        elif scheme == "RescaleTo01Normalization":
            x -= x.min()
            x /= np.clip(x.max(), a_min=1e-8, a_max=None)
        elif scheme == "RGBTo01Normalization":
            x /= 255.0
        else:
            raise ValueError(f"normalisation scheme {scheme!r} is not implemented (known: {', '.join(_SCHEMES)})")
    return out


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """Shape after resampling from ``spacing`` to ``new_spacing`` (rounded per axis)."""
    return [int(round(float(s) * float(a) / float(b))) for s, a, b in zip(shape, spacing, new_spacing)]


def separate_axis(current: Sequence[float], new: Sequence[float], force: bool | None = None,
                  threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples on its own (``None``: plain 3D resampling).

    Anisotropic source spacing decides first, then the target's; the axis is the single one at the
    largest spacing (two or three such axes: no separate axis). ``force`` overrides the ratio test.
    """
    def lowres(sp: Sequence[float]) -> list[int]:
        return [i for i, s in enumerate(sp) if float(s) == max(float(v) for v in sp)]

    def anisotropic(sp: Sequence[float]) -> bool:
        return max(sp) / min(sp) > threshold

    if force is not None:
        axes = lowres(current) if force else []
    elif anisotropic(current):
        axes = lowres(current)
    elif anisotropic(new):
        axes = lowres(new)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def resample(data: np.ndarray, new_shape: Sequence[int], current: Sequence[float], new: Sequence[float],
             order: int = 3, order_z: int = 0, force_separate_z: bool | None = None) -> np.ndarray:
    """Resample ``(C, *S)`` to ``new_shape`` the way nnU-Net resamples images and logits.

    Without a separate axis each channel goes through :func:`skimage.transform.resize` (spline
    ``order``, edge mode, no anti-aliasing). With one (see :func:`separate_axis`), each slice across it
    is resized in-plane with ``order``, then the axis itself is interpolated with ``order_z``
    (pixel-centre aligned, nearest edge).

    Returns:
        ``(C, *new_shape)`` float32 (``data`` itself when the shape does not change).
    """
    from skimage.transform import resize

    new_shape = [int(s) for s in new_shape]
    if list(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    axis = separate_axis(current, new, force_separate_z)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64, copy=False)
        if axis is None:
            out[c] = resize(x, new_shape, order=order, mode="edge", anti_aliasing=False)
            continue
        plane = [n for i, n in enumerate(new_shape) if i != axis]
        slices = [resize(np.take(x, k, axis=axis), plane, order=order, mode="edge", anti_aliasing=False)
                  for k in range(x.shape[axis])]
        inplane = np.stack(slices, axis=axis)
        if inplane.shape[axis] == new_shape[axis]:
            out[c] = inplane
            continue
        grids = list(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in new_shape], indexing="ij"))
        scale = inplane.shape[axis] / new_shape[axis]
        grids[axis] = scale * (grids[axis] + 0.5) - 0.5
        out[c] = ndimage.map_coordinates(inplane, np.stack(grids), order=order_z, mode="nearest")
    return out


def pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last ``len(patch)`` axes of ``(C, *S)`` to at least ``patch`` (half before, half after).

    Returns:
        ``(padded, crop)``: ``padded[crop]`` is ``data`` again.
    """
    n = len(patch)
    lead = data.ndim - n
    pads, crop = [], [slice(None)] * lead
    for size, want in zip(data.shape[lead:], patch):
        diff = max(0, int(want) - int(size))
        before = diff // 2
        pads.append((before, diff - before))
        crop.append(slice(before, before + int(size)))
    flat = [p for pair in reversed(pads) for p in pair]
    return (torch.nn.functional.pad(data, flat) if any(flat) else data), tuple(crop)


def window_starts(size: int, tile: int, step: float = 0.5) -> list[int]:
    """Window start positions along one axis: as few windows as a step of ``step * tile`` allows,
    spread evenly from 0 to ``size - tile``."""
    if size <= tile:
        return [0]
    count = int(np.ceil((size - tile) / (tile * step))) + 1
    stride = (size - tile) / (count - 1)
    return [int(round(stride * i)) for i in range(count)]


def gaussian_importance(tile: Sequence[int], sigma_scale: float = 1.0 / 8, peak: float = 10.0) -> torch.Tensor:
    """Importance map of one window: a Gaussian (sigma ``sigma_scale * tile``) around the window's centre
    voxel, scaled to ``peak`` at its maximum, with no zero weights (``(*tile)`` float32)."""
    delta = np.zeros(tuple(int(t) for t in tile))
    delta[tuple(int(t) // 2 for t in tile)] = 1.0
    g = ndimage.gaussian_filter(delta, [t * sigma_scale for t in tile], 0, mode="constant", cval=0)
    g = g / g.max() * peak
    g[g == 0] = g[g > 0].min()
    return torch.as_tensor(g, dtype=torch.float32)


def mirrored(network: nn.Module, axes: Sequence[int] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (B, C, *S) -> logits``: the network averaged with its outputs on every combination of flips
    over spatial ``axes`` (``None``/empty: the network alone)."""
    dims = [int(a) + 2 for a in (axes or [])]
    combos = [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]

    def run(x: torch.Tensor) -> torch.Tensor:
        out = network(x)
        for flip in combos:
            out = out + torch.flip(network(torch.flip(x, flip)), flip)
        return out / (len(combos) + 1)

    return run


def sliding_window_logits(x: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor], patch: Sequence[int],
                          num_classes: int, step: float = 0.5, sw_batch_size: int = 1) -> torch.Tensor:
    """Gaussian-weighted sliding-window logits of one image, nnU-Net's tiling.

    Args:
        x: ``(C, *S)`` preprocessed image, at least ``patch`` along every axis (see :func:`pad_to_patch`).
            With a 2D ``patch`` and a 3D ``x`` every slice along the first axis is tiled on its own.
        predictor: ``(B, C, *patch) -> (B, K, *patch)``.
        patch: window size.
        num_classes: ``K``.
        step: tile step as a fraction of the patch.
        sw_batch_size: windows per network call.

    Returns:
        ``(K, *S)`` float32 logits.
    """
    spatial = tuple(x.shape[1:])
    two_d = len(patch) == len(spatial) - 1
    plane = spatial[1:] if two_d else spatial
    starts = [window_starts(n, int(p), step) for n, p in zip(plane, patch)]
    windows = []
    for corner in itertools.product(*starts):
        sl = tuple(slice(a, a + int(p)) for a, p in zip(corner, patch))
        windows.extend([(d, *sl) for d in range(spatial[0])] if two_d else [sl])
    weight = gaussian_importance(patch).to(x.device)
    logits = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=x.device)
    norm = torch.zeros(spatial, dtype=torch.float32, device=x.device)
    for i in range(0, len(windows), max(1, sw_batch_size)):
        batch = windows[i:i + max(1, sw_batch_size)]
        out = predictor(torch.stack([x[(slice(None), *w)] for w in batch])).float()
        for w, o in zip(batch, out):
            logits[(slice(None), *w)] += o * weight
            norm[w] += weight
    return logits / norm


# ------------------------------------------------------------------------------- model folder


@dataclass
class NnUNetPlan:
    """What inference needs from ``plans.json`` (one configuration) and ``dataset.json``."""

    configuration: str
    patch_size: list[int]
    spacing: list[float]
    transpose_forward: list[int]
    transpose_backward: list[int]
    schemes: list[str]
    use_mask: list[bool]
    intensity: dict[str, dict[str, float]]
    data_resampling: dict[str, Any]
    prob_resampling: dict[str, Any]
    channel_names: list[str]
    labels: dict[str, Any]
    regions_class_order: list[int] | None
    architecture: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def region_based(self) -> bool:
        return any(isinstance(v, (list, tuple)) for k, v in self.labels.items() if k != "ignore")

    @property
    def output_labels(self) -> list[int]:
        """The label value of each output channel (regions: ``regions_class_order``)."""
        if self.region_based:
            return [int(v) for v in (self.regions_class_order or [])]
        return sorted(int(v) for k, v in self.labels.items() if k != "ignore")

    @property
    def num_outputs(self) -> int:
        if self.region_based:
            return sum(1 for k, v in self.labels.items() if k not in ("ignore", "background"))
        return len(self.output_labels)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


def read_plan(folder: str | Path, configuration: str | None = None) -> NnUNetPlan:
    """The inference settings of an nnU-Net v2 model folder.

    Args:
        folder: the trained model folder.
        configuration: ``3d_fullres``, ``2d``... (default: the folder name's last ``__`` part).

    Raises:
        InputError: unreadable JSON, unknown configuration, a reader with another axis order, missing keys.
    """
    folder = Path(folder)
    plans, dataset = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    configs = plans.get("configurations") or {}
    name = configuration or folder.name.rsplit("__", 1)[-1]
    if name not in configs:
        raise InputError(folder / "plans.json", f"configuration {name!r} not in the plans (have: {', '.join(configs)})")
    cfg = dict(configs[name])
    while "inherits_from" in cfg and cfg["inherits_from"] in configs:  # nnU-Net's configuration inheritance
        parent = dict(configs[cfg.pop("inherits_from")])
        cfg = {**parent, **cfg}
    if cfg.get("previous_stage"):
        raise InputError(folder / "plans.json", f"configuration {name!r} is a cascade stage (needs the "
                                                "previous stage's segmentation); not supported")
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in _READERS:
        raise InputError(folder / "plans.json", f"image_reader_writer {reader} is not supported (supported: {', '.join(_READERS)})")
    if "architecture" not in cfg:
        raise InputError(folder / "plans.json", "no 'architecture' entry (plans of nnU-Net before 2.4); re-plan with a current nnU-Net")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    try:
        plan = NnUNetPlan(
            configuration=name, patch_size=[int(p) for p in cfg["patch_size"]], spacing=[float(s) for s in cfg["spacing"]],
            transpose_forward=[int(t) for t in plans["transpose_forward"]],
            transpose_backward=[int(t) for t in plans["transpose_backward"]],
            schemes=list(cfg["normalization_schemes"]), use_mask=[bool(u) for u in cfg["use_mask_for_norm"]],
            intensity=dict(plans.get("foreground_intensity_properties_per_channel") or {}),
            data_resampling=dict(cfg.get("resampling_fn_data_kwargs") or {}),
            prob_resampling=dict(cfg.get("resampling_fn_probabilities_kwargs") or {}),
            channel_names=[str(channels[k]) for k in sorted(channels, key=int)],
            labels=dict(dataset["labels"]), regions_class_order=dataset.get("regions_class_order"),
            architecture=dict(cfg["architecture"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(folder, f"plans.json/dataset.json lack what inference needs ({exc!r})") from None
    unknown = [s for s in plan.schemes if s not in _SCHEMES]
    if unknown:
        raise InputError(folder / "plans.json", f"normalisation scheme(s) {', '.join(unknown)} not supported (supported: {', '.join(_SCHEMES)})")
    for kw in (plan.data_resampling, plan.prob_resampling):
        if kw.get("is_seg"):
            raise InputError(folder / "plans.json", "segmentation resampling for images/probabilities is not supported")
    if plan.region_based and not plan.regions_class_order:
        raise InputError(folder / "dataset.json", "region labels without regions_class_order")
    return plan


def _import_named(name: str, prefixes: tuple[str, ...], where: Path) -> Any:
    """A class named in the plans, imported only from the allowed packages."""
    if not isinstance(name, str) or not name.startswith(prefixes):
        raise InputError(where, f"{name!r} is not a class of {' or '.join(p.rstrip('.') for p in prefixes)}; refused")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dynamic_network_architectures"):
            raise InputError(where, "building nnU-Net networks needs the dynamic-network-architectures package: "
                                    "pip install \"medcnn[nnunet]\"") from None
        raise InputError(where, f"cannot import {name} ({exc})") from None
    except AttributeError:
        raise InputError(where, f"{name} does not exist in this version of its package") from None


def build_network(plan: NnUNetPlan, where: Path) -> nn.Module:
    """The network ``plans.json``'s ``architecture`` entry describes (no deep supervision), untrained.

    Raises:
        InputError: a class outside ``dynamic_network_architectures`` / ``torch.nn``, or arguments it rejects.
    """
    arch = plan.architecture
    cls = _import_named(arch.get("network_class_name", ""), ("dynamic_network_architectures.",), where)
    kwargs = dict(arch.get("arch_kwargs") or {})
    for key in arch.get("_kw_requires_import") or []:
        if kwargs.get(key) is not None:
            kwargs[key] = _import_named(kwargs[key], ("torch.nn.",), where)
    try:
        return cls(input_channels=len(plan.channel_names), num_classes=plan.num_outputs, deep_supervision=False, **kwargs)
    except TypeError as exc:
        raise InputError(where, f"{cls.__name__} rejects the plans' arguments ({exc})") from None


def _numpy_globals() -> list[Any]:
    """The numpy types nnU-Net's checkpoints pickle in their training log (scalars and dtypes): data, not code."""
    import numpy.dtypes

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    scalar = core.multiarray.scalar
    dtypes = [t for t in vars(numpy.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return [scalar, np.dtype, *dtypes]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """An nnU-Net checkpoint (``network_weights``, ``inference_allowed_mirroring_axes``, ...) read with
    ``weights_only=True``, allowing only numpy scalars and dtypes beyond torch's defaults.

    Raises:
        InputError: missing, unreadable, other pickled objects (refused), or no ``network_weights``.
    """
    path = Path(path)
    data = safe_torch_load(path, "checkpoint", _numpy_globals(), " beyond numpy scalars")
    if not isinstance(data, dict) or not isinstance(data.get("network_weights"), Mapping):
        raise InputError(path, "not an nnU-Net checkpoint (no 'network_weights')")
    return data


def _sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class NnUNetModel:
    """An nnU-Net v2 trained model, predicting as nnU-Net's own predictor does.

    Attributes:
        network: the ``nn.Module`` (eval mode; holds the first fold's weights between calls).
        plan: the :class:`NnUNetPlan`.
        config: medcnn-style description (``task``, ``model``, ``preprocess``, ``inference``, ``labels``).
        path: the model folder; ``sha256`` of its checkpoints.
        device: where the network runs.
    """

    def __init__(self, network: nn.Module, plan: NnUNetPlan, fold_weights: list[dict[str, torch.Tensor]],
                 mirror_axes: Sequence[int] | None, path: Path, checkpoints: Sequence[Path],
                 label_map: Mapping[int, int] | None = None, tile_step: float = 0.5, use_mirroring: bool = True,
                 sw_batch_size: int = 1) -> None:
        self.network = network.eval()
        self.plan = plan
        self.fold_weights = fold_weights
        self.mirror_axes = list(mirror_axes) if (mirror_axes is not None and use_mirroring) else []
        self.path = path
        self.sha256 = _sha256(checkpoints)
        self.device = torch.device("cpu")
        self.tile_step = float(tile_step)
        self.sw_batch_size = int(sw_batch_size)
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        names = {str(v): k for k, v in plan.labels.items() if not isinstance(v, (list, tuple)) and int(v) != 0 and k != "ignore"}
        self.config: dict[str, Any] = {
            "task": "segmentation",
            "model": {"name": f"nnunet:{plan.architecture.get('network_class_name', '?').rsplit('.', 1)[-1]}",
                      "kwargs": {}, "format": "nnunet", "configuration": plan.configuration, "folds": len(fold_weights)},
            "preprocess": {"spacing": plan.spacing, "normalize": plan.schemes, "use_mask_for_norm": plan.use_mask,
                           "transpose_forward": plan.transpose_forward, "in_channels": len(plan.channel_names),
                           "channel_names": plan.channel_names, "crop_foreground": True},
            "inference": {"roi_size": plan.patch_size, "tile_step": self.tile_step, "mode": "gaussian",
                          "tta": bool(self.mirror_axes), "tta_axes": self.mirror_axes, "sw_batch_size": self.sw_batch_size},
            "labels": {"names": names, "region_based": plan.region_based, "map": self.label_map},
            "metrics": {},
        }

    @property
    def task(self) -> str:
        return "segmentation"

    def provenance(self) -> dict[str, Any]:
        """What ``run.json`` records of this model."""
        return {"path": str(self.path), "sha256": self.sha256, "network": self.config["model"],
                "preprocess": self.config["preprocess"], "inference": self.config["inference"], "metrics": {}}

    def to(self, device: str | torch.device) -> NnUNetModel:
        """Move the network to ``device`` (returns self)."""
        from medcnn.device import resolve_device

        self.device = resolve_device(device)
        self.network.to(self.device)
        return self

    def preprocess(self, img: MetaTensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``img (C, i, j, k)`` -> the network input in nnU-Net's axis order and spacing, and what undoing it needs.

        Raises:
            InputError: wrong number of channels, not a 3D image, NaN/Inf.
        """
        src = getattr(img, "meta", {}).get("filename_or_obj") if isinstance(img, MetaTensor) else None
        plan = self.plan
        if img.ndim != 4:
            raise InputError(src, f"nnU-Net models here take 3D images (C, i, j, k); got shape {tuple(img.shape)}")
        if img.shape[0] != len(plan.channel_names):
            raise InputError(src, f"model expects {len(plan.channel_names)} channel(s) ({', '.join(plan.channel_names)}), got {img.shape[0]}")
        arr = (img.as_tensor() if isinstance(img, MetaTensor) else img).detach().cpu().numpy().astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError(src, "image contains NaN or Inf")
        affine = img.affine.detach().cpu().numpy().astype(np.float64) if isinstance(img, MetaTensor) else np.eye(4)
        spacing = [float(s) for s in geometry.voxel_spacing(affine, 3)][::-1]
        data = arr.transpose(0, 3, 2, 1)  # nnU-Net reads voxel axes reversed (SimpleITK's order)
        tf = plan.transpose_forward
        data = data.transpose([0, *[t + 1 for t in tf]])
        spacing = [spacing[t] for t in tf]
        full_shape = data.shape[1:]
        data, mask, box = nonzero_crop(data)
        target = list(plan.spacing) if len(plan.spacing) == 3 else [spacing[0], *plan.spacing]
        new_shape = target_shape(data.shape[1:], spacing, target)
        data = normalize_channels(data, mask, plan.schemes, plan.use_mask, plan.intensity)
        kw = plan.data_resampling
        data = resample(data, new_shape, spacing, target, order=int(kw.get("order", 3)), order_z=int(kw.get("order_z", 0)),
                        force_separate_z=kw.get("force_separate_z"))
        info = {"full_shape": full_shape, "box": box, "cropped_shape": tuple(mask.shape), "spacing": spacing, "target": target}
        return torch.from_numpy(np.ascontiguousarray(data)), info

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits of a preprocessed ``x (C, *S)``, averaged over folds: ``(K, *S)`` float32 on CPU."""
        padded, crop = pad_to_patch(x.to(self.device), self.plan.patch_size)
        total = None
        for weights in self.fold_weights:
            self.network.load_state_dict(weights)
            out = sliding_window_logits(padded, mirrored(self.network, self.mirror_axes), self.plan.patch_size,
                                        self.plan.num_outputs, step=self.tile_step, sw_batch_size=self.sw_batch_size)
            total = out if total is None else total + out
        return (total / len(self.fold_weights))[(slice(None), *crop[1:])].cpu()

    @torch.no_grad()
    def predict(self, img: MetaTensor, progress: bool = False, probabilities: bool = False) -> MetaTensor:
        """Segment ``img``; the label map comes back on ``img``'s own grid.

        Args:
            img: ``MetaTensor (C, i, j, k)`` from :func:`medcnn.load`, channels in dataset.json's order.
            progress: unused (kept for the :class:`medcnn.predictor.Model` interface).
            probabilities: return the softmax (or sigmoid per region) instead of labels.

        Returns:
            ``MetaTensor (1, i, j, k)`` int64 labels (nnU-Net's label values, remapped by ``label_map``), or
            float32 ``(K, i, j, k)`` probabilities, with ``img``'s affine and meta.
        """
        x, info = self.preprocess(img)
        logits = self.logits(x).numpy()
        kw = self.plan.prob_resampling
        logits = resample(logits, info["cropped_shape"], info["target"], info["spacing"], order=int(kw.get("order", 1)),
                          order_z=int(kw.get("order_z", 0)), force_separate_z=kw.get("force_separate_z"))
        t = torch.from_numpy(logits)
        region = self.plan.region_based
        sl = (slice(None), *[slice(a, b) for a, b in info["box"]])
        back = [0, *[i + 1 for i in self.plan.transpose_backward]]
        if probabilities:
            probs = torch.sigmoid(t) if region else torch.softmax(t, dim=0)
            full = torch.zeros((probs.shape[0], *info["full_shape"]), dtype=torch.float32)
            if not region:
                full[0] = 1.0
            full[sl] = probs
            out = full.numpy().transpose(back).transpose(0, 3, 2, 1)
            return MetaTensor(torch.from_numpy(np.ascontiguousarray(out)), affine=img.affine.clone(), meta=meta_without_affine(img))
        values = self.plan.output_labels
        if region:
            seg = torch.zeros(t.shape[1:], dtype=torch.int64)
            for channel, value in enumerate(values):
                seg[t[channel] > 0] = value
        else:
            seg = torch.as_tensor(values, dtype=torch.int64)[t.argmax(0)]
        if self.label_map:
            lut = {v: self.label_map.get(v, v) for v in [0, *values]}
            seg = torch.as_tensor(np.vectorize(lut.get, otypes=[np.int64])(seg.numpy())) if seg.numel() else seg
        full = torch.zeros((1, *info["full_shape"]), dtype=torch.int64)
        full[sl] = seg[None]
        out = full.numpy().transpose(back).transpose(0, 3, 2, 1)
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(out)), affine=img.affine.clone(), meta=meta_without_affine(img))


def load_nnunet_model(folder: str | Path, *, folds: Sequence[int | str] | None = None, checkpoint: str = "checkpoint_final.pth",
                      configuration: str | None = None, config: Mapping[str, Any] | None = None,
                      device: str | torch.device | None = None) -> NnUNetModel:
    """Load an nnU-Net v2 trained model folder.

    Args:
        folder: ``nnUNet_results/DatasetXXX/Trainer__Plans__configuration``.
        folds: which ``fold_N`` (``"all"`` for ``fold_all``) to ensemble (default: every one holding ``checkpoint``).
        checkpoint: file name in each fold folder (``checkpoint_best.pth`` also works).
        configuration: override the configuration the folder name gives.
        config: options: ``tile_step`` (0.5), ``mirroring`` (true), ``sw_batch_size`` (1), ``folds``,
            ``checkpoint``, ``label_map`` ({nnU-Net value: output value}).
        device: ``None``/``"cpu"``, ``"cuda"``...

    Raises:
        InputError: no usable fold, unreadable or refused files, weights that do not fit the plans' network.
        ConfigError: an unknown option.
    """

    folder = Path(folder)
    opts = dict(config or {})
    known = {"tile_step", "mirroring", "sw_batch_size", "folds", "checkpoint", "label_map"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ConfigError(f"nnU-Net model option(s) {', '.join(unknown)} unknown; valid: {', '.join(sorted(known))}")
    folds = opts.get("folds", folds)
    checkpoint = str(opts.get("checkpoint", checkpoint))
    plan = read_plan(folder, configuration)
    if folds is None:
        fold_dirs = sorted(p for p in folder.glob("fold_*") if (p / checkpoint).is_file())
    else:
        fold_dirs = [folder / f"fold_{f}" for f in folds]
    if not fold_dirs:
        raise InputError(folder, f"no fold_*/{checkpoint} in this nnU-Net model folder")
    net = build_network(plan, folder / "plans.json")
    weights, mirror_axes, paths = [], None, []
    for d in fold_dirs:
        path = d / checkpoint
        ck = read_checkpoint(path)
        state = {k[len("module."):] if k.startswith("module.") else k: v.float() if torch.is_floating_point(v) else v
                 for k, v in ck["network_weights"].items()}
        load_weights(net, state, path, f"the {type(net).__name__} that plans.json describes")
        weights.append(state)
        paths.append(path)
        axes = ck.get("inference_allowed_mirroring_axes")
        mirror_axes = list(axes) if axes is not None else mirror_axes
    model = NnUNetModel(net, plan, weights, mirror_axes, folder, paths, label_map=opts.get("label_map"),
                        tile_step=float(opts.get("tile_step", 0.5)), use_mirroring=bool(opts.get("mirroring", True)),
                        sw_batch_size=int(opts.get("sw_batch_size", 1)))
    if device is not None:
        model.to(device)
    logger.debug("loaded nnU-Net %s (%s, %d fold(s)) from %s", type(net).__name__, plan.configuration, len(weights), folder)
    return model
