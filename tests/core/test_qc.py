"""QC montage slice choice: every label value in view, not just the label centroid."""

from __future__ import annotations

import numpy as np

from medcnn import qc


def _tumour() -> np.ndarray:
    """A 40 mm 'oedema' ball (2) with a small 'core' (1) and 'enhancing rim' (3) off its centre."""
    g = np.indices((64, 64, 64)).astype(np.float32)
    lab = np.zeros((64, 64, 64), np.uint8)
    lab[((g - 32) ** 2).sum(0) < 20**2] = 2
    core = ((g - np.array([20.0, 44.0, 40.0])[:, None, None, None]) ** 2).sum(0)
    lab[core < 5**2] = 3
    lab[core < 3**2] = 1
    return lab


def test_label_slices_show_every_label_value_where_the_centroid_does_not() -> None:
    lab = _tumour()
    centroid = [int(round(c)) for c in np.argwhere(lab > 0).mean(0)]
    # the fixture is the failure case: the centroid's slices hold the oedema only
    assert set(np.unique(lab[centroid[0]])) == {0, 2}
    x, y, z = qc.label_slices(lab)
    for plane in (lab[x], lab[:, y], lab[:, :, z]):
        assert set(np.unique(plane)) == {0, 1, 2, 3}
    # among the slices cutting the core (within 3 voxels of 20, 44, 40), the one with the most labelled
    # voxels: the one nearest the oedema ball's centre (32)
    assert (x, y, z) == (22, 42, 38)


def test_label_slices_on_a_single_label_take_the_largest_cross_section() -> None:
    lab = np.zeros((20, 30, 40), np.int16)
    lab[5:9, 10:20, 3:30] = 7
    lab[6, 12:18, 3:39] = 7  # one slice along x with more voxels
    assert qc.label_slices(lab) == [6, int(np.argmax((lab > 0).sum((0, 2)))), int(np.argmax((lab > 0).sum((0, 1))))]


def test_montage_slices_through_label_slices_by_default() -> None:
    lab = _tumour()
    vol = np.random.default_rng(0).normal(size=lab.shape).astype(np.float32)
    default = qc.volume_montage(vol, np.eye(4), label=lab, size=64)
    chosen = qc.volume_montage(vol, np.eye(4), label=lab, center=qc.label_slices(lab), size=64)
    centroid = qc.volume_montage(vol, np.eye(4), label=lab, center=[32, 32, 32], size=64)
    np.testing.assert_array_equal(default, chosen)
    assert not np.array_equal(default, centroid)
