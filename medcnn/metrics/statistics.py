"""Per-label statistics of a label map over its image (``medcnn predict ... --statistics``).

For each label (and optional region, a set of labels): the voxel count, the volume in mL, and each input
channel's intensity mean, standard deviation and percentiles inside it -- what TotalSegmentator's
``--statistics`` gives, measured on the input grid in the input's own intensity units.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn.io.atomic import write_text_atomic
from medcnn.metrics.segmentation import normalize_regions

logger = logging.getLogger(__name__)

#: percentiles reported per channel
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _intensity(values: np.ndarray) -> dict[str, float | None]:
    """Mean, std and :data:`PERCENTILES` of a 1D array (``None`` each when empty)."""
    keys = ["mean", "std", *(f"p{p}" for p in PERCENTILES)]
    if values.size == 0:
        return dict.fromkeys(keys, None)
    v = values.astype(np.float64, copy=False)
    pct = np.percentile(v, PERCENTILES)
    out = [float(v.mean()), float(v.std()), *(float(p) for p in pct)]
    return {k: round(x, 4) for k, x in zip(keys, out)}


def label_statistics(
    labels: np.ndarray | torch.Tensor,
    image: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    names: Mapping[int, str] | None = None,
    channel_names: Sequence[str] | None = None,
    regions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Voxels, volume and per-channel intensity statistics of every label (and region) of one case.

    Args:
        labels: ``(*spatial)`` integer label map (0 = background) on the image's grid.
        image: ``(C, *spatial)`` input image (the intensities measured).
        spacing: voxel size per spatial axis in mm.
        names: label value -> name (default ``"label_<value>"``); every named label is reported,
            present or not.
        channel_names: one name per image channel (default ``"channel_<c>"``).
        regions: optional region name -> label or set of labels (e.g. BraTS WT/TC/ET).

    Returns:
        ``{"spacing_mm", "voxel_ml", "channels", "labels": {name: {"value", "voxels", "volume_ml",
        "intensity": {channel: {"mean", "std", "p5", ...}}}}, "regions": {...}}``.

    Raises:
        ValueError: the label map and the image are not on one grid, or names/spacing do not fit.
    """
    lab = _np(labels)
    img = _np(image)
    if lab.ndim == img.ndim and lab.shape[0] == 1:
        lab = lab[0]
    if img.ndim == lab.ndim:
        img = img[None]
    if tuple(img.shape[1:]) != tuple(lab.shape):
        raise ValueError(f"label map {tuple(lab.shape)} and image {tuple(img.shape[1:])} are not on one grid")
    if len(spacing) != lab.ndim:
        raise ValueError(f"spacing needs {lab.ndim} values, got {len(spacing)}")
    chans = list(channel_names) if channel_names else [f"channel_{c}" for c in range(img.shape[0])]
    if len(chans) != img.shape[0]:
        raise ValueError(f"{len(chans)} channel names for {img.shape[0]} channels")
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    present = [int(v) for v in np.unique(lab) if v != 0]
    named = {int(k): str(v) for k, v in (names or {}).items()}
    values = sorted(set(named) | set(present))

    def block(mask: np.ndarray) -> dict[str, Any]:
        n = int(np.count_nonzero(mask))
        return {"voxels": n, "volume_ml": round(n * voxel_ml, 4),
                "intensity": {c: _intensity(img[i][mask]) for i, c in enumerate(chans)}}

    out: dict[str, Any] = {"spacing_mm": [round(float(s), 6) for s in spacing], "voxel_ml": voxel_ml, "channels": chans,
                           "labels": {}}
    for v in values:
        out["labels"][named.get(v, f"label_{v}")] = {"value": v, **block(lab == v)}
    if regions:
        out["regions"] = {name: {"labels": list(labs), **block(np.isin(lab, labs))}
                          for name, labs in normalize_regions(regions).items()}
    return out


def write_statistics(path: str | os.PathLike[str], stats: Mapping[str, Any]) -> Path:
    """Write :func:`label_statistics` output as JSON, atomically (``null`` for empty labels' intensities)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path = Path(path)
    write_text_atomic(path, json.dumps(clean(dict(stats)), indent=2) + "\n")
    logger.debug("wrote %s", path)
    return path
