"""Segmentation metrics: hand-computable Dice/HD95, BraTS empty-mask rules, NSD, volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from medcnn.metrics import (
    BRATS_HD95_PENALTY_MM,
    BRATS_REGIONS,
    region_masks,
    region_volumes_ml,
    segmentation_metrics,
)

ONE = {"fg": (1,)}


def cube(shape: tuple[int, ...], start: tuple[int, ...], side: int, label: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    out[tuple(slice(s, s + side) for s in start)] = label
    return out


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tol: float) -> tuple[float, float]:
    """Oracle HD95 and NSD from boundary voxels (mask minus its erosion) and all-pairs distances."""
    def edge_points(m: np.ndarray) -> np.ndarray:
        e = m & ~ndimage.binary_erosion(m)
        return np.argwhere(e) * np.asarray(spacing)

    pe, re = edge_points(pred.astype(bool)), edge_points(ref.astype(bool))
    d = cdist(pe, re)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    nsd = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (d_pr.size + d_rp.size)
    return float(hd95), float(nsd)


@pytest.mark.parametrize("axis, k", [(0, 2), (1, 3), (2, 1)])
def test_offset_cubes_dice_and_hd95_by_hand(axis: int, k: int) -> None:
    spacing = (1.5, 1.0, 2.0)
    n = 8
    ref = cube((20, 20, 20), (4, 4, 4), n)
    start = [4, 4, 4]
    start[axis] += k
    pred = cube((20, 20, 20), tuple(start), n)
    m = segmentation_metrics(pred, ref, spacing, regions=ONE)["fg"]
    assert m["dice"] == pytest.approx((n - k) / n, abs=1e-6)
    # the far faces (1/6 of each surface, > 5 %) sit exactly k voxels from the other surface
    assert m["hd95_mm"] == pytest.approx(k * spacing[axis], abs=1e-5)
    voxel_ml = 1.5 * 1.0 * 2.0 / 1000
    assert m["ref_ml"] == pytest.approx(n**3 * voxel_ml)
    assert m["pred_ml"] == pytest.approx(n**3 * voxel_ml)


def test_matches_brute_force_oracle_on_random_blobs(rng: np.random.Generator) -> None:
    spacing = (0.8, 1.3, 2.5)
    ref = ndimage.gaussian_filter(rng.random((24, 22, 18)), 2.0) > 0.5
    pred = ndimage.gaussian_filter(rng.random((24, 22, 18)), 2.0) > 0.5
    assert ref.any() and pred.any()
    for tol in (0.0, 1.0, 2.55):  # not lattice distances (2.6 = 2 x 1.3 would hinge on float rounding)
        m = segmentation_metrics(pred, ref, spacing, regions=ONE, nsd_tolerance_mm=tol)["fg"]
        hd95, nsd = brute_force(pred, ref, spacing, tol)
        assert m["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
        assert m["nsd"] == pytest.approx(nsd, abs=1e-6)
        dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
        assert m["dice"] == pytest.approx(dice, abs=1e-6)


def test_nsd_at_zero_and_large_tolerance() -> None:
    spacing = (1.5, 1.0, 2.0)
    ref = cube((20, 20, 20), (4, 4, 4), 8)
    same = segmentation_metrics(ref, ref, spacing, ONE, nsd_tolerance_mm=0.0)["fg"]
    assert same == pytest.approx({"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0, "pred_ml": same["ref_ml"], "ref_ml": same["ref_ml"]})
    shifted = cube((20, 20, 20), (6, 4, 4), 8)  # 2 voxels = 3 mm along axis 0
    at0 = segmentation_metrics(shifted, ref, spacing, ONE, nsd_tolerance_mm=0.0)["fg"]["nsd"]
    assert 0.0 < at0 < 1.0
    assert at0 == pytest.approx(brute_force(shifted, ref, spacing, 0.0)[1], abs=1e-6)
    assert segmentation_metrics(shifted, ref, spacing, ONE, nsd_tolerance_mm=2.9)["fg"]["nsd"] < 1.0
    assert segmentation_metrics(shifted, ref, spacing, ONE, nsd_tolerance_mm=3.0)["fg"]["nsd"] == pytest.approx(1.0)
    assert segmentation_metrics(shifted, ref, spacing, ONE, nsd_tolerance_mm=100.0)["fg"]["nsd"] == pytest.approx(1.0)
    # disjoint masks: no boundary within 0 mm, dice 0, HD95 is the gap between the boundaries
    far = cube((20, 20, 30), (4, 4, 20), 4)
    near = cube((20, 20, 30), (4, 4, 2), 4)
    m = segmentation_metrics(far, near, 1.0, ONE, nsd_tolerance_mm=0.0)["fg"]
    assert m["nsd"] == 0.0 and m["dice"] == 0.0
    # gap of 15 mm between facing sides, but the 95th percentile is set by the far faces
    # (16 of each cube's 56 boundary voxels) lying 18 mm from the other cube
    assert m["hd95_mm"] == pytest.approx(18.0)


def test_empty_conventions() -> None:
    empty = np.zeros((10, 10, 10), dtype=np.uint8)
    full = cube((10, 10, 10), (2, 2, 2), 4)
    both = segmentation_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert set(both) == {"WT", "TC", "ET"}
    for m in both.values():
        assert (m["dice"], m["nsd"], m["hd95_mm"], m["pred_ml"], m["ref_ml"]) == (1.0, 1.0, 0.0, 0.0, 0.0)
    for pred, ref in ((empty, full), (full, empty)):
        m = segmentation_metrics(pred, ref, (1.0, 1.0, 1.0), ONE)["fg"]
        assert (m["dice"], m["nsd"]) == (0.0, 0.0)
        assert m["hd95_mm"] == pytest.approx(373.13, abs=0.005) == BRATS_HD95_PENALTY_MM
    m = segmentation_metrics(empty, full, 1.0, ONE, hd95_penalty_mm=50.0)["fg"]
    assert m["hd95_mm"] == 50.0


def test_brats_regions_and_per_region_values() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[2:10, 2:10, 2:10] = 2  # edema
    labels[4:8, 4:8, 4:8] = 1  # necrosis
    labels[5:7, 5:7, 5:7] = 3  # enhancing
    masks = region_masks(labels)
    assert list(masks) == ["WT", "TC", "ET"]
    assert masks["WT"].sum() == 512 and masks["TC"].sum() == 64 and masks["ET"].sum() == 8
    assert masks["WT"].dtype == bool
    assert BRATS_REGIONS["TC"] == (1, 3)
    with pytest.raises(TypeError):
        BRATS_REGIONS["XX"] = (9,)  # type: ignore[index]
    # prediction misses enhancing tumour only
    pred = np.where(labels == 3, 1, labels)
    m = segmentation_metrics(pred, labels, (1.0, 1.0, 1.0))
    assert m["WT"]["dice"] == 1.0 and m["TC"]["dice"] == 1.0
    assert m["ET"]["dice"] == 0.0 and m["ET"]["hd95_mm"] == pytest.approx(BRATS_HD95_PENALTY_MM)
    assert m["ET"]["pred_ml"] == 0.0 and m["ET"]["ref_ml"] == pytest.approx(0.008)


def test_region_volumes_ml() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[:10, :10, :10] = 2
    labels[:5, :4, :5] = 1  # 100 voxels
    vols = region_volumes_ml(labels, (0.5, 2.0, 3.0))  # 3 mm^3 per voxel
    assert vols == pytest.approx({"WT": 3.0, "TC": 0.3, "ET": 0.0})
    assert region_volumes_ml(labels, 1.0, {"ed": 2}) == pytest.approx({"ed": 0.9})


def test_accepts_channel_first_float_and_tensors_and_2d() -> None:
    ref = cube((16, 16, 16), (4, 4, 4), 6)
    pred = cube((16, 16, 16), (5, 4, 4), 6)
    base = segmentation_metrics(pred, ref, (1.0, 1.0, 1.0), ONE)
    alt = segmentation_metrics(torch.from_numpy(pred[None].astype(np.float32)), ref[None].astype(np.float64), 1.0, ONE)
    assert alt == base
    ref2, pred2 = cube((20, 20), (4, 4), 8), cube((20, 20), (4, 7), 8)
    m = segmentation_metrics(pred2, ref2, (0.5, 2.0), ONE)["fg"]
    assert m["dice"] == pytest.approx(5 / 8)
    assert m["hd95_mm"] == pytest.approx(6.0)


def test_invalid_inputs_raise_value_error() -> None:
    a = cube((8, 8, 8), (2, 2, 2), 3)
    with pytest.raises(ValueError, match="same shape"):
        segmentation_metrics(a, a[:7], 1.0)
    with pytest.raises(ValueError, match="non-integer"):
        segmentation_metrics(a * 0.5, a, 1.0)
    with pytest.raises(ValueError, match="2 spatial dimensions"):
        segmentation_metrics(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        segmentation_metrics(a, a, 1.0, nsd_tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="region"):
        segmentation_metrics(a, a, 1.0, regions={})
    with pytest.raises(ValueError, match="region 'x'"):
        region_masks(a, {"x": ("a",)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="2D or 3D"):
        region_masks(np.zeros(5))
