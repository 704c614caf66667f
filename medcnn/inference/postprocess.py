"""Post-processing of segmentation outputs: connected components and BraTS nested regions.

Every function takes a numpy array or a torch tensor (``MetaTensor`` included) and gives back
the same kind (a torch result on the input's device; a ``MetaTensor`` keeps the input's
metadata, so the affine travels along).

BraTS conventions (2023 labels)::

    labels:   0 background, 1 NCR (necrotic core), 2 ED (edema), 3 ET (enhancing tumour)
    regions:  WT = {1, 2, 3} (whole tumour) ⊃ TC = {1, 3} (tumour core) ⊃ ET = {3}

Networks trained on regions (nnU-Net "region-based", MONAI's BraTS tutorial) output
``(3, *spatial)`` probabilities in the order WT, TC, ET; :func:`regions_to_labels` turns them
into a label map and :func:`labels_to_regions` goes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

__all__ = [
    "REGION_NAMES",
    "enforce_nested_regions",
    "keep_largest_component",
    "labels_to_regions",
    "regions_to_labels",
    "relabel_small_regions",
    "remove_small_components",
]

REGION_NAMES = ("WT", "TC", "ET")
NCR, ED, ET = 1, 2, 3

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if isinstance(x, MetaTensor) else x
        return t.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"expected a numpy array or torch tensor; got {type(x).__name__}")


def _like(arr: np.ndarray, ref: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``arr`` as the same kind of object as ``ref`` (numpy, tensor on its device, MetaTensor)."""
    if not isinstance(ref, torch.Tensor):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(ref.device)
    if isinstance(ref, MetaTensor):
        return MetaTensor(t).copy_meta_from(ref)
    return t


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """Neighbourhood for labelling: ``connectivity`` 1 (faces) .. ``ndim`` (full, default)."""
    conn = ndim if connectivity is None else connectivity
    if isinstance(conn, bool) or not isinstance(conn, int) or not 1 <= conn <= ndim:
        raise ValueError(f"connectivity must be an int in [1, {ndim}] for a {ndim}D mask; got {connectivity!r}")
    return ndimage.generate_binary_structure(ndim, conn)


def _components(arr: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(component ids (*spatial), voxel count per id)`` of the non-zero voxels (id 0 = bg)."""
    if arr.ndim < 1:
        raise ValueError("mask must have at least one spatial axis")
    labels, _ = ndimage.label(arr != 0, structure=_structure(arr.ndim, connectivity))
    counts = np.bincount(labels.ravel())
    return labels, counts


def _spacing_of(mask: np.ndarray | torch.Tensor, ndim: int) -> tuple[float, ...] | None:
    """Voxel spacing from a ``MetaTensor``'s affine (its column norms), else ``None``."""
    if isinstance(mask, MetaTensor):
        affine = np.asarray(mask.affine, dtype=np.float64)
        if affine.ndim == 2 and affine.shape[0] - 1 >= ndim:
            rank = affine.shape[0] - 1
            return tuple(float(v) for v in np.linalg.norm(affine[:rank, :ndim], axis=0))
    return None


def remove_small_components(
    mask: ArrayT,
    min_voxels: int | None = None,
    *,
    min_ml: float | None = None,
    spacing: Sequence[float] | float | None = None,
    connectivity: int | None = None,
) -> ArrayT:
    """Removes connected components smaller than a size threshold.

    Components are found on the non-zero voxels; removed voxels become 0, kept voxels keep
    their value (so a label map keeps its labels). Components of exactly the threshold size
    are kept.

    Args:
        mask: ``(*spatial)`` mask or label map (bool, int or float), numpy or torch.
        min_voxels: smallest component size to keep, in voxels.
        min_ml: smallest component size to keep, in millilitres (1 ml = 1000 mm^3); needs
            ``spacing`` (mm per voxel along each axis), or a ``MetaTensor`` mask whose affine
            gives it. Exactly one of ``min_voxels``/``min_ml`` is required.
        spacing: voxel spacing in mm, one per spatial axis or one for all.
        connectivity: neighbourhood, 1 (faces only) .. ``ndim`` (faces, edges and corners; the
            default, as scikit-image and nnU-Net).

    Returns:
        The cleaned ``(*spatial)`` mask, same kind, dtype and shape as ``mask``.

    Raises:
        ValueError: for missing/conflicting thresholds, missing spacing, bad connectivity.
    """
    arr = _to_numpy(mask)
    if (min_voxels is None) == (min_ml is None):
        raise ValueError("give exactly one of min_voxels or min_ml")
    if min_ml is not None:
        if spacing is None:
            spacing = _spacing_of(mask, arr.ndim)
        if spacing is None:
            raise ValueError("min_ml needs spacing= (mm per voxel) or a MetaTensor mask with an affine")
        sp = (float(spacing),) * arr.ndim if isinstance(spacing, (int, float)) else tuple(map(float, spacing))
        if len(sp) != arr.ndim or any(s <= 0 for s in sp):
            raise ValueError(f"spacing must be {arr.ndim} positive values; got {spacing!r}")
        if min_ml < 0:
            raise ValueError(f"min_ml must be >= 0; got {min_ml}")
        threshold = float(min_ml) * 1000.0 / float(np.prod(sp))
    else:
        if min_voxels < 0:  # type: ignore[operator]
            raise ValueError(f"min_voxels must be >= 0; got {min_voxels}")
        threshold = float(min_voxels)  # type: ignore[arg-type]
    labels, counts = _components(arr, connectivity)
    keep = counts >= threshold
    keep[0] = False
    kept = keep[labels]
    out = kept if arr.dtype == bool else np.where(kept, arr, np.zeros((), dtype=arr.dtype))
    return _like(out, mask)  # type: ignore[return-value]


def region_fallback_label(region: str, regions: Mapping[str, Sequence[int]]) -> int:
    """The label a too-small ``region`` falls back to: the label of its closest enclosing region
    that is not in ``region`` (BraTS: ET -> NCR, since TC = {NCR, ET}); 0 for an outermost region.

    Args:
        region: a key of ``regions``.
        regions: region name -> the label values it groups, e.g. ``{"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}``.

    Returns:
        The fallback label value.

    Raises:
        ValueError: unknown region, or the enclosing region leaves more than one candidate label.
    """
    if region not in regions:
        raise ValueError(f"unknown region {region!r}; regions: {', '.join(regions)}")
    inner = set(regions[region])
    parents = [(len(v), name) for name, v in regions.items() if name != region and inner < set(v)]
    if not parents:
        return 0
    _, parent = min(parents)
    rest = sorted(set(regions[parent]) - inner)
    if len(rest) != 1:
        raise ValueError(
            f"region {region!r} lies in {parent!r}, which adds labels {rest}: no single label to fall back to"
        )
    return int(rest[0])


def relabel_small_regions(
    labels: ArrayT,
    min_ml: Mapping[str, float],
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
) -> ArrayT:
    """Relabels a whole region that is smaller in total than a volume threshold.

    nnU-Net's BraTS post-processing: a predicted enhancing tumour of a few voxels is almost always a
    false positive (non-enhancing tumours have none, and an empty ET scores 0 against an empty
    reference), so when the total ET volume is below the threshold its voxels become necrotic core
    (they stay in TC and WT). In general each region ``R`` in ``min_ml`` falls back to
    :func:`region_fallback_label`. Regions are handled innermost first.

    Args:
        labels: ``(*spatial)`` integer label map, numpy or torch.
        min_ml: region name -> smallest total volume in mL it may have (e.g. ``{"ET": 0.3}``).
        regions: region name -> label values (the checkpoint's ``labels.regions``).
        spacing: mm per voxel along each spatial axis.

    Returns:
        The label map, same kind, dtype and shape as ``labels``.

    Raises:
        ValueError: unknown region or one without a single fallback label.
    """
    arr = _to_numpy(labels).copy()
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    for region in sorted(min_ml, key=lambda r: len(regions.get(r, ()))):
        fallback = region_fallback_label(region, regions)
        inside = np.isin(arr, np.asarray(list(regions[region])))
        volume = float(inside.sum()) * voxel_ml
        if 0.0 < volume < float(min_ml[region]):
            arr[inside] = fallback
    return _like(arr, labels)  # type: ignore[return-value]


def keep_largest_component(mask: ArrayT, connectivity: int | None = None) -> ArrayT:
    """Keeps only the largest connected component of the non-zero voxels.

    Args:
        mask: ``(*spatial)`` mask or label map, numpy or torch.
        connectivity: neighbourhood, 1 .. ``ndim`` (default ``ndim``, full).

    Returns:
        ``(*spatial)``, same kind and dtype; all zero when ``mask`` is. On ties the component
        met first in C order wins.

    Raises:
        ValueError: for a bad connectivity.
    """
    arr = _to_numpy(mask)
    labels, counts = _components(arr, connectivity)
    if counts.size <= 1:
        return _like(arr.copy(), mask)  # type: ignore[return-value]
    largest = int(np.argmax(counts[1:])) + 1
    kept = labels == largest
    out = kept if arr.dtype == bool else np.where(kept, arr, np.zeros((), dtype=arr.dtype))
    return _like(out, mask)  # type: ignore[return-value]


def _binarise_regions(regions: np.ndarray, threshold: float) -> np.ndarray:
    if regions.ndim < 2 or regions.shape[0] != 3:
        raise ValueError(
            f"regions must be (3, *spatial) in the order WT, TC, ET; got shape {regions.shape}"
        )
    if regions.dtype == bool:
        return regions
    return regions > threshold


def enforce_nested_regions(
    regions: ArrayT,
    threshold: float = 0.5,
    *,
    rule: Literal["inner", "outer"] = "inner",
) -> ArrayT:
    """Turns per-region probabilities or masks (WT, TC, ET) into a consistent label map.

    The regions a network predicts need not be nested (an ET voxel outside TC, a TC voxel
    outside WT); a label map always is. Two rules resolve the conflicts:

    * ``"inner"`` (default; nnU-Net region-based and BraTS practice): an inner region implies
      its parents. ET voxels -> 3, TC-not-ET -> 1, WT-not-TC -> 2.
    * ``"outer"``: an inner region only counts inside its parent (ET := ET ∧ TC ∧ WT,
      TC := TC ∧ WT), then the same labelling.

    Args:
        regions: ``(3, *spatial)`` in the order WT, TC, ET: bool masks, or probabilities that
            are thresholded (``> threshold``).
        threshold: probability threshold for non-bool input.
        rule: ``"inner"`` or ``"outer"``.

    Returns:
        ``(*spatial)`` uint8 label map with values in {0, 1, 2, 3}, same kind as ``regions``.

    Raises:
        ValueError: for a wrong shape or an unknown rule.
    """
    arr = _to_numpy(regions)
    wt, tc, et = _binarise_regions(arr, threshold)
    if rule == "outer":
        tc = tc & wt
        et = et & tc
    elif rule != "inner":
        raise ValueError(f"rule must be 'inner' or 'outer'; got {rule!r}")
    labels = np.zeros(arr.shape[1:], dtype=np.uint8)
    labels[wt] = ED
    labels[tc] = NCR
    labels[et] = ET
    return _like(labels, regions)  # type: ignore[return-value]


def regions_to_labels(region_probs: ArrayT, threshold: float = 0.5) -> ArrayT:
    """Region probabilities (WT, TC, ET) to a BraTS label map (``"inner"`` rule).

    Exact inverse of :func:`labels_to_regions` on consistent (nested) region masks.

    Args:
        region_probs: ``(3, *spatial)`` probabilities (or bool masks) in the order WT, TC, ET.
        threshold: a region is present where its probability is ``> threshold``.

    Returns:
        ``(*spatial)`` uint8 labels: 0 background, 1 NCR, 2 ED, 3 ET; same kind as the input.

    Raises:
        ValueError: for a wrong shape.
    """
    return enforce_nested_regions(region_probs, threshold, rule="inner")


def labels_to_regions(labels: ArrayT) -> ArrayT:
    """BraTS label map to nested region masks.

    Args:
        labels: ``(*spatial)`` integer labels in {0, 1 NCR, 2 ED, 3 ET}.

    Returns:
        ``(3, *spatial)`` bool, channels WT = {1, 2, 3}, TC = {1, 3}, ET = {3}; same kind as
        ``labels``.

    Raises:
        ValueError: for values outside {0, 1, 2, 3} (e.g. BraTS <= 2021's ET label 4).
    """
    arr = _to_numpy(labels)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"labels must be an integer label map; got dtype {arr.dtype}")
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
    if bad:
        raise ValueError(
            f"labels must be in {{0, 1, 2, 3}} (BraTS 2023: 1 NCR, 2 ED, 3 ET); found {bad[:5]}"
            + (" (BraTS <= 2021 used 4 for ET: map 4 -> 3 first)" if 4 in bad else "")
        )
    regions = np.stack([arr > 0, (arr == NCR) | (arr == ET), arr == ET])
    return _like(regions, labels)  # type: ignore[return-value]
