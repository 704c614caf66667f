"""Connected-component clean-up and BraTS nested-region conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medcnn.inference import (
    enforce_nested_regions,
    keep_largest_component,
    labels_to_regions,
    regions_to_labels,
    remove_small_components,
)


def _blobs() -> np.ndarray:
    """3D mask with components of 1, 8, 27 and 125 voxels, well apart."""
    m = np.zeros((30, 30, 30), dtype=bool)
    m[1, 1, 1] = True  # 1
    m[5:7, 5:7, 5:7] = True  # 8
    m[10:13, 10:13, 10:13] = True  # 27
    m[20:25, 20:25, 20:25] = True  # 125
    return m


def _sizes(mask: np.ndarray, connectivity: int = 3) -> list[int]:
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    return sorted(np.bincount(lab.ravel())[1:].tolist())


# ------------------------------------------------------------------------------- components
@pytest.mark.parametrize(("threshold", "expected"), [(0, [1, 8, 27, 125]), (8, [8, 27, 125]), (9, [27, 125]),
                                                     (126, [])])
def test_remove_small_components_removes_only_small_ones(threshold, expected):
    m = _blobs()
    out = remove_small_components(m, threshold)
    assert out.dtype == bool and out.shape == m.shape
    assert _sizes(out) == expected
    assert not (out & ~m).any()  # never adds voxels
    kept = ndimage.label(m)[0]
    for comp in np.unique(kept[out]):  # every kept component is kept whole
        assert out[kept == comp].all()


def test_remove_small_components_in_ml():
    m = _blobs()
    # 2 x 2 x 2 mm voxels: 8 mm^3 each; 0.2 ml = 200 mm^3 = 25 voxels -> keeps 27 and 125
    out = remove_small_components(m, min_ml=0.2, spacing=(2.0, 2.0, 2.0))
    assert _sizes(out) == [27, 125]
    out_scalar = remove_small_components(m, min_ml=0.2, spacing=2.0)
    assert np.array_equal(out, out_scalar)
    meta = MetaTensor(torch.from_numpy(m), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out_meta = remove_small_components(meta, min_ml=0.2)  # spacing from the affine
    assert isinstance(out_meta, MetaTensor)
    assert np.array_equal(out_meta.numpy(), out)
    torch.testing.assert_close(out_meta.affine, meta.affine)


def test_remove_small_components_connectivity():
    m = np.zeros((6, 6), dtype=bool)
    m[1, 1] = m[2, 2] = m[3, 3] = True  # a diagonal line: one component at full connectivity
    assert remove_small_components(m, 3).sum() == 3
    assert remove_small_components(m, 3, connectivity=1).sum() == 0
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_components(m, 3, connectivity=3)


def test_remove_small_components_keeps_label_values_and_types():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 2
    labels[4:6, 4:6, 4:6] = 3  # inside the big one
    labels[15, 15, 15] = 1  # speck
    out = remove_small_components(labels, 5)
    assert out.dtype == np.uint8
    expected = labels.copy()
    expected[15, 15, 15] = 0
    assert np.array_equal(out, expected)
    t = torch.from_numpy(labels)
    out_t = remove_small_components(t, 5)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, torch.from_numpy(expected))


def test_remove_small_components_arguments():
    m = _blobs()
    with pytest.raises(ValueError, match="exactly one"):
        remove_small_components(m)
    with pytest.raises(ValueError, match="exactly one"):
        remove_small_components(m, 5, min_ml=1.0, spacing=1.0)
    with pytest.raises(ValueError, match="spacing"):
        remove_small_components(m, min_ml=1.0)
    with pytest.raises(ValueError, match="spacing"):
        remove_small_components(m, min_ml=1.0, spacing=(1.0, 1.0))


def test_keep_largest_component():
    m = _blobs()
    out = keep_largest_component(m)
    assert _sizes(out) == [125] and out[22, 22, 22]
    assert not keep_largest_component(np.zeros((4, 4, 4), dtype=bool)).any()
    probs = m.astype(np.float32) * 0.7
    out_f = keep_largest_component(torch.from_numpy(probs))
    assert out_f.dtype == torch.float32 and float(out_f.sum()) == pytest.approx(125 * 0.7, rel=1e-6)
    # 2D works as well
    m2 = np.zeros((10, 10), dtype=np.int64)
    m2[0:2, 0:2] = 1
    m2[5:9, 5:9] = 1
    assert keep_largest_component(m2).sum() == 16


# --------------------------------------------------------------------------- nested regions
def _random_labels(seed: int = 0, shape: tuple[int, ...] = (12, 14, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


def _consistent(regions: np.ndarray) -> bool:
    wt, tc, et = regions
    return bool((~et | tc).all() and (~tc | wt).all())


def test_labels_to_regions_definition():
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    regions = labels_to_regions(labels)
    assert regions.dtype == bool and regions.shape == (3, 4)
    assert regions.tolist() == [
        [False, True, True, True],  # WT = NCR + ED + ET
        [False, True, False, True],  # TC = NCR + ET
        [False, False, False, True],  # ET
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_labels_regions(seed):
    labels = _random_labels(seed)
    regions = labels_to_regions(labels)
    assert _consistent(regions)
    back = regions_to_labels(regions)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    # probabilities of a consistent map give the same labels
    assert np.array_equal(regions_to_labels(regions.astype(np.float32) * 0.9), labels)
    assert np.array_equal(labels_to_regions(back), regions)


def test_round_trip_torch_and_metatensor():
    labels = torch.from_numpy(_random_labels(3))
    regions = labels_to_regions(labels)
    assert isinstance(regions, torch.Tensor) and regions.dtype == torch.bool and regions.shape[0] == 3
    assert torch.equal(regions_to_labels(regions), labels)
    meta = MetaTensor(labels, affine=torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0])))
    back = regions_to_labels(labels_to_regions(meta))
    assert isinstance(back, MetaTensor)
    torch.testing.assert_close(back.affine, meta.affine)


@pytest.mark.parametrize("rule", ["inner", "outer"])
def test_enforce_nested_regions_is_consistent(rule):
    rng = np.random.default_rng(7)
    probs = rng.random((3, 16, 12, 9)).astype(np.float32)  # arbitrary, mostly inconsistent
    assert not _consistent(probs > 0.5)
    labels = enforce_nested_regions(probs, rule=rule)
    assert labels.shape == (16, 12, 9) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
    regions = labels_to_regions(labels)
    assert _consistent(regions)
    wt, tc, et = probs > 0.5
    if rule == "inner":  # an inner region implies its parents: ET kept everywhere it was seen
        assert np.array_equal(regions[2], et)
        assert np.array_equal(regions[1], tc | et)
        assert np.array_equal(regions[0], wt | tc | et)
    else:  # an inner region counts only inside its parent
        assert np.array_equal(regions[0], wt)
        assert np.array_equal(regions[1], tc & wt)
        assert np.array_equal(regions[2], et & tc & wt)
    # already-consistent regions are a fixed point of both rules
    again = enforce_nested_regions(regions, rule=rule)
    assert np.array_equal(again, labels)


def test_enforce_nested_regions_labels_rule():
    # one voxel per case: (WT, TC, ET) -> label
    cases = {
        (0, 0, 0): 0,
        (1, 0, 0): 2,  # WT-not-TC -> ED
        (1, 1, 0): 1,  # TC-not-ET -> NCR
        (1, 1, 1): 3,  # ET
        (0, 0, 1): 3,  # stray ET: inner rule keeps it
        (0, 1, 0): 1,
    }
    regions = np.array(list(cases), dtype=bool).T  # (3, n)
    assert enforce_nested_regions(regions).tolist() == list(cases.values())
    assert enforce_nested_regions(regions, rule="outer").tolist() == [0, 2, 1, 3, 0, 0]


def test_threshold_applies_to_probabilities():
    probs = np.array([[0.6, 0.6], [0.45, 0.35], [0.2, 0.1]], dtype=np.float32)  # (3, 2)
    assert regions_to_labels(probs).tolist() == [2, 2]
    assert regions_to_labels(probs, threshold=0.4).tolist() == [1, 2]


def test_nested_region_errors():
    with pytest.raises(ValueError, match="WT, TC, ET"):
        regions_to_labels(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="rule"):
        enforce_nested_regions(np.zeros((3, 4, 4)), rule="middle")
    with pytest.raises(ValueError, match="4 for ET"):
        labels_to_regions(np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError):
        labels_to_regions(np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError):
        remove_small_components([[1, 0]], 1)  # plain lists are not accepted


BRATS_REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def test_region_fallback_labels():
    from medcnn.inference.postprocess import region_fallback_label

    assert region_fallback_label("ET", BRATS_REGIONS) == 1  # ET lies in TC = {NCR, ET}: falls back to NCR
    assert region_fallback_label("TC", BRATS_REGIONS) == 2  # TC lies in WT: the rest of WT is ED
    assert region_fallback_label("WT", BRATS_REGIONS) == 0  # outermost: background
    with pytest.raises(ValueError, match="unknown region"):
        region_fallback_label("XX", BRATS_REGIONS)
    with pytest.raises(ValueError, match="no single label"):
        region_fallback_label("ET", {"WT": [1, 2, 3], "ET": [3]})  # WT adds 1 and 2


def test_relabel_small_regions_acts_on_the_total_volume():
    from medcnn.inference import relabel_small_regions

    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 2  # ED
    labels[4:8, 4:8, 4:8] = 1  # NCR
    labels[5:7, 5:7, 5:7] = 3  # ET: 8 voxels of 8 mm^3 = 0.064 mL
    spacing = (2.0, 2.0, 2.0)
    out = relabel_small_regions(labels, {"ET": 0.1}, BRATS_REGIONS, spacing)
    assert not (out == 3).any()
    assert (out[labels == 3] == 1).all()  # ET became NCR: TC and WT unchanged
    assert np.array_equal(out[labels != 3], labels[labels != 3])
    kept = relabel_small_regions(labels, {"ET": 0.06}, BRATS_REGIONS, spacing)  # 0.064 mL >= 0.06: kept
    assert np.array_equal(kept, labels)
    # two ET islands of 8 voxels each: 0.128 mL in total, above 0.1 although each alone is below
    two = labels.copy()
    two[9:11, 9:11, 9:11] = 3
    assert np.array_equal(relabel_small_regions(two, {"ET": 0.1}, BRATS_REGIONS, spacing), two)
    # torch in, torch out; the whole tumour below its threshold goes to background
    t = torch.as_tensor(labels)
    gone = relabel_small_regions(t, {"WT": 100.0}, BRATS_REGIONS, spacing)
    assert isinstance(gone, torch.Tensor) and int(gone.count_nonzero()) == 0
