"""Segmentation metrics per case and region: Dice, HD95, normalised surface Dice, volumes.

The distance and overlap computations are MONAI's (:func:`monai.metrics.compute_dice`,
:func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``,
:func:`monai.metrics.compute_surface_dice`); this module is the glue that turns label maps into
region masks, passes the voxel spacing so that distances are in millimetres, and applies the
BraTS conventions for empty masks, which MONAI leaves as NaN/Inf:

================================  ======  =====  =====================================
prediction / reference            Dice    NSD    HD95 (mm)
================================  ======  =====  =====================================
both empty                        1       1      0
one empty, the other not          0       0      ``hd95_penalty_mm`` (373.13 by default)
both non-empty                    MONAI   MONAI  MONAI
================================  ======  =====  =====================================

Surfaces are the masks' boundary voxels (a voxel of the mask with a face neighbour, or an image
border, outside it; MONAI's ``get_mask_edges``); distances are Euclidean between voxel centres
scaled by the spacing. HD95 is the larger of the two directed 95th percentiles of those distances.
NSD (Nikolov et al. 2021) is the fraction of both boundaries lying within ``nsd_tolerance_mm`` of
the other boundary, counted in boundary voxels.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Union

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

logger = logging.getLogger(__name__)

#: BraTS 2023 glioma regions as sets of labels (1 NCR, 2 ED, 3 ET): whole tumour, tumour core,
#: enhancing tumour. Read-only; pass your own mapping for other label schemes.
BRATS_REGIONS: Mapping[str, tuple[int, ...]] = MappingProxyType({"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)})

#: HD95 given when exactly one of prediction and reference is empty: the diagonal of the BraTS
#: 240 x 240 x 155 (1 mm) volume, sqrt(240**2 + 240**2 + 155**2) = 373.13 mm, as in BraTS 2023.
BRATS_HD95_PENALTY_MM: float = math.sqrt(240.0**2 + 240.0**2 + 155.0**2)

#: keys of the per-region dictionaries returned by :func:`segmentation_metrics`
METRIC_KEYS: tuple[str, ...] = ("dice", "hd95_mm", "nsd", "pred_ml", "ref_ml")

#: region name -> one label or a set of labels
RegionSpec = Mapping[str, Union[int, Iterable[int]]]


def _labels_array(labels: np.ndarray | torch.Tensor, ndim: int | None, name: str) -> np.ndarray:
    """Integer label map of shape ``(*spatial)`` from an array or tensor (``(1, *spatial)`` accepted).

    Args:
        labels: label map, any numeric dtype (float label maps, e.g. from :func:`medcnn.load`,
            must hold whole numbers).
        ndim: number of spatial dimensions expected, or ``None`` to take the array's own
            (a leading singleton channel of a 4D array is dropped).
        name: argument name for error messages.

    Raises:
        ValueError: wrong dimensionality, non-finite or non-integer labels.
    """
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    if ndim is None:
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
    elif arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a label map of {ndim} spatial dimensions (or 1 x spatial), got shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: label maps must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: label map must be numeric, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: label map contains NaN or Inf")
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise ValueError(f"{name}: label map holds non-integer values (probabilities?); threshold or argmax it first")
    return rounded.astype(np.int64)


def _spacing_tuple(spacing: Sequence[float] | float | np.ndarray, ndim: int) -> tuple[float, ...]:
    """Validated voxel size per spatial axis (mm)."""
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing needs {ndim} values for a {ndim}D label map, got {sp.size}")
    if not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ValueError(f"spacing must be finite and > 0, got {tuple(sp.tolist())}")
    return tuple(float(v) for v in sp)


def normalize_regions(regions: RegionSpec) -> dict[str, tuple[int, ...]]:
    """Validated ``{region: (label, ...)}`` from a region specification.

    Args:
        regions: region name -> an integer label or a non-empty set of integer labels.

    Raises:
        ValueError: no region, or a region without integer labels.
    """
    if not regions:
        raise ValueError("regions must name at least one region, e.g. {'tumor': (1,)}")
    out: dict[str, tuple[int, ...]] = {}
    for name, labs in regions.items():
        items = (labs,) if isinstance(labs, (int, np.integer)) else tuple(labs)
        if not items or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
            raise ValueError(f"region {name!r} must be an integer label or a non-empty set of integer labels, got {labs!r}")
        out[str(name)] = tuple(int(v) for v in items)
    return out


def region_masks(labels: np.ndarray | torch.Tensor, regions: RegionSpec = BRATS_REGIONS) -> dict[str, np.ndarray]:
    """Binary mask of each region, a region being the union of a set of labels.

    Args:
        labels: integer label map ``(*spatial)`` (2D or 3D) or ``(1, *spatial)``; float maps
            holding whole numbers are accepted.
        regions: region name -> label or set of labels (default BraTS 2023 WT/TC/ET).

    Returns:
        ``{region: bool array (*spatial)}`` in the order of ``regions``.

    Raises:
        ValueError: invalid label map or region specification.
    """
    arr = _labels_array(labels, None, "labels")
    return {name: np.isin(arr, labs) for name, labs in normalize_regions(regions).items()}


def region_volumes_ml(
    labels: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | float | np.ndarray,
    regions: RegionSpec = BRATS_REGIONS,
) -> dict[str, float]:
    """Volume of each region in millilitres (voxel count x voxel volume in mm^3 / 1000).

    Args:
        labels: integer label map ``(*spatial)`` or ``(1, *spatial)``.
        spacing: voxel size per spatial axis (mm), or one value for all axes. For a 2D map the
            result is the area in mm^2 / 1000.
        regions: region name -> label or set of labels.

    Returns:
        ``{region: volume_ml}``.
    """
    masks = region_masks(labels, regions)
    ndim = next(iter(masks.values())).ndim
    voxel_ml = float(np.prod(_spacing_tuple(spacing, ndim))) / 1000.0
    return {name: float(np.count_nonzero(m)) * voxel_ml for name, m in masks.items()}


def _crop_to_foreground(p: np.ndarray, r: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop both label maps to the box holding every region voxel of either, plus one voxel.

    None of the metrics depends on voxels outside that box (MONAI crops the same way before
    extracting edges), so this only saves whole-volume passes: a BraTS case drops from seconds
    to a fraction of a second. Returns views; both empty gives a one-voxel crop.
    """
    fg = np.isin(p, labels) | np.isin(r, labels)
    if not fg.any():
        return p[(slice(0, 1),) * p.ndim], r[(slice(0, 1),) * r.ndim]
    box = []
    for ax in range(fg.ndim):
        hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != ax)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, fg.shape[ax])))
    return p[tuple(box)], r[tuple(box)]


def _binary_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tol_mm: float, penalty_mm: float
) -> tuple[float, float, float]:
    """Dice, HD95 (mm) and NSD of two boolean masks ``(*spatial)`` with BraTS empty-mask rules."""
    p_any, r_any = bool(pred.any()), bool(ref.any())
    if not p_any and not r_any:
        return 1.0, 0.0, 1.0
    if p_any != r_any:
        return 0.0, float(penalty_mm), 0.0
    yp = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    yr = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    sp = list(spacing)
    with warnings.catch_warnings():
        # MONAI's edge helper emits a FutureWarning about its own deprecated argument
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        dice = compute_dice(yp, yr, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=sp)
        nsd = compute_surface_dice(yp, yr, [float(tol_mm)], include_background=True, spacing=sp)
    return float(dice.item()), float(hd95.item()), float(nsd.item())


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | float | np.ndarray,
    regions: RegionSpec = BRATS_REGIONS,
    nsd_tolerance_mm: float = 1.0,
    *,
    hd95_penalty_mm: float = BRATS_HD95_PENALTY_MM,
) -> dict[str, dict[str, float]]:
    """Dice, HD95, NSD and volumes of each region for one case.

    Args:
        pred: predicted label map ``(*spatial)`` or ``(1, *spatial)`` (2D or 3D, integer labels).
        ref: reference label map, same shape as ``pred``.
        spacing: voxel size per spatial axis in mm (e.g. ``medcnn.io.geometry.voxel_spacing``),
            or one value for all axes; its length fixes the number of spatial dimensions.
        regions: region name -> label or set of labels (default BraTS 2023 WT/TC/ET).
        nsd_tolerance_mm: boundary tolerance of the normalised surface Dice, mm (>= 0).
        hd95_penalty_mm: HD95 reported when exactly one of the two masks is empty
            (default 373.13 mm, the BraTS 2023 value).

    Returns:
        ``{region: {"dice", "hd95_mm", "nsd", "pred_ml", "ref_ml"}}`` of floats, regions in the
        order given. Empty/empty gives Dice 1, NSD 1, HD95 0; one empty gives Dice 0, NSD 0,
        HD95 ``hd95_penalty_mm``.

    Raises:
        ValueError: mismatched shapes, invalid labels, spacing, tolerance or regions.

    Example:
        >>> m = segmentation_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))  # doctest: +SKIP
        >>> m["WT"]["dice"], m["ET"]["hd95_mm"]  # doctest: +SKIP
    """
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0, got {nsd_tolerance_mm}")
    if not (math.isfinite(hd95_penalty_mm) and hd95_penalty_mm >= 0):
        raise ValueError(f"hd95_penalty_mm must be finite and >= 0, got {hd95_penalty_mm}")
    sp_arr = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    ndim = int(sp_arr.size) if sp_arr.size > 1 else None
    p = _labels_array(pred, ndim, "pred")
    r = _labels_array(ref, ndim, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {p.shape} and {r.shape}")
    sp = _spacing_tuple(spacing, p.ndim)
    voxel_ml = float(np.prod(sp)) / 1000.0
    labs = normalize_regions(regions)
    p, r = _crop_to_foreground(p, r, sorted({v for region in labs.values() for v in region}))
    out: dict[str, dict[str, float]] = {}
    for name, region in labs.items():
        pm, rm = np.isin(p, region), np.isin(r, region)
        dice, hd95, nsd = _binary_metrics(pm, rm, sp, nsd_tolerance_mm, hd95_penalty_mm)
        out[name] = {
            "dice": dice,
            "hd95_mm": hd95,
            "nsd": nsd,
            "pred_ml": float(np.count_nonzero(pm)) * voxel_ml,
            "ref_ml": float(np.count_nonzero(rm)) * voxel_ml,
        }
        logger.debug("region %s: %s", name, out[name])
    return out


def dice_score(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary masks of one shape; two empty masks score 1 (BraTS convention)."""
    p, r = (m.bool() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=bool) for m in (pred, ref))
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom


def cardiothoracic_ratio(lungs: np.ndarray, heart: np.ndarray) -> float:
    """Cardiothoracic ratio from masks: heart width / widest span of the lungs (columns).

    Args:
        lungs: binary lung mask (rows, cols), both lungs.
        heart: binary heart mask (rows, cols).

    Returns:
        The ratio, or ``nan`` when either mask is empty.
    """
    lc = np.nonzero(np.asarray(lungs).any(axis=0))[0]
    hc = np.nonzero(np.asarray(heart).any(axis=0))[0]
    if lc.size == 0 or hc.size == 0:
        return float("nan")
    return float((hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1))
