"""Synthetic BraTS-like cases (medcnn.synth.brain_tumor)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from medcnn.synth import brain_tumor as BT

FAST = {"spacing": 4.0}


@pytest.fixture(scope="module")
def clean_case() -> dict[str, Any]:
    """A large enhancing, necrotic lesion, axis-aligned, little noise and no bias."""
    return BT.make_case(
        np.random.default_rng(11), spacing=2.0, oriented=False, n_lesions=1, size="large",
        necrosis=True, enhancement=True, noise=0.01, bias=0.0, dtype="float32",
    )


def test_case_arrays_share_one_grid(clean_case: dict[str, Any]) -> None:
    shape = clean_case["label"].shape
    for c in BT.CONTRASTS:
        assert clean_case[c].shape == shape and clean_case[c].dtype == np.float32
        assert np.all(np.isfinite(clean_case[c])) and clean_case[c].min() >= 0
        assert np.all(clean_case[c][~clean_case["brain_mask"]] == 0)  # skull-stripped background
    assert clean_case["label"].dtype == np.uint8
    assert set(np.unique(clean_case["label"])) == {0, 1, 2, 3}
    assert clean_case["affine"].shape == (4, 4)
    assert clean_case["meta"]["axcodes"] == "LPS"
    assert np.all(clean_case["brain_mask"][clean_case["label"] > 0])
    vols = clean_case["meta"]["volumes_ml"]
    assert vols["ET"] > 0.5 and vols["NCR"] > 0.5 and vols["ED"] > 1


def test_et_brighter_than_surroundings_on_t1c(clean_case: dict[str, Any]) -> None:
    label, t1c, t1n = clean_case["label"], clean_case["t1c"], clean_case["t1n"]
    tumour = label > 0
    shell = ndi.binary_dilation(tumour, iterations=3) & ~tumour & clean_case["brain_mask"]
    et = label == 3
    assert t1c[et].mean() > 1.2 * t1c[shell].mean()
    assert t1c[et].mean() > 1.2 * t1c[label == 2].mean()
    assert t1c[et].mean() > 1.2 * t1c[label == 1].mean()
    # enhancement is a t1c feature: relative to normal brain, ET is much brighter on t1c than on t1n
    normal = clean_case["brain_mask"] & ~tumour
    assert t1c[et].mean() / np.median(t1c[normal]) > 1.3 * t1n[et].mean() / np.median(t1n[normal])


def _mirror_voxels(case: dict[str, Any], mask: np.ndarray) -> np.ndarray:
    """Voxel indices of the left-right mirror (about the brain's mid-plane) of ``mask``'s voxels."""
    affine = case["affine"]
    ijk = np.argwhere(mask).T.astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    centre = affine[:3, :3] @ np.argwhere(case["brain_mask"]).mean(axis=0) + affine[:3, 3]
    world[0] = 2 * centre[0] - world[0]
    back = np.linalg.solve(affine, np.vstack([world, np.ones(world.shape[1])]))[:3]
    return np.clip(np.round(back).astype(int), 0, np.array(mask.shape)[:, None] - 1)


def test_edema_brighter_on_flair_than_contralateral_tissue(clean_case: dict[str, Any]) -> None:
    label, flair, t2 = clean_case["label"], clean_case["t2f"], clean_case["t2w"]
    ed = label == 2
    mirror = _mirror_voxels(clean_case, ed)
    inside = clean_case["brain_mask"][tuple(mirror)] & (label[tuple(mirror)] == 0)
    assert inside.mean() > 0.5
    contra = flair[tuple(mirror[:, inside])]
    assert flair[ed].mean() > 1.2 * contra.mean()
    assert t2[ed].mean() > 1.1 * t2[tuple(mirror[:, inside])].mean()


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


def test_stored_affine_is_the_true_geometry() -> None:
    """The subject is drawn before the grid: an oblique/permuted grid must show it at the same place."""
    plain = BT.make_case(np.random.default_rng(21), spacing=3.0, oriented=False, n_lesions=1)
    tilted = BT.make_case(np.random.default_rng(21), spacing=3.0, oriented=True, n_lesions=1)
    assert plain["meta"]["lesions"] == tilted["meta"]["lesions"]
    for key in ("label", "brain_mask"):
        a = _world_centroid(plain[key] > 0, plain["affine"])
        b = _world_centroid(tilted[key] > 0, tilted["affine"])
        assert np.linalg.norm(a - b) < 1.0, (key, a, b)
    vol = lambda c: (c["label"] > 0).sum() * abs(np.linalg.det(c["affine"][:3, :3]))  # noqa: E731
    assert vol(tilted) == pytest.approx(vol(plain), rel=0.05)


def test_same_seed_same_case_and_cases_differ() -> None:
    a = BT.make_case(BT.case_rng(3, 1), **FAST)
    b = BT.make_case(BT.case_rng(3, 1), **FAST)
    for key in (*BT.CONTRASTS, "label", "affine"):
        np.testing.assert_array_equal(a[key], b[key])
    c = BT.make_case(BT.case_rng(3, 2), **FAST)
    assert a["label"].shape != c["label"].shape or not np.array_equal(a["label"], c["label"])
    assert a["meta"]["lesions"] != c["meta"]["lesions"]


def test_cases_vary_widely() -> None:
    metas = [BT.make_case(BT.case_rng(0, i), spacing=4.0)["meta"] for i in range(6)]
    assert len({m["axcodes"] for m in metas}) >= 3
    assert len({tuple(m["shape"]) for m in metas}) == 6
    assert len({(les["hemisphere"], les["lobe"]) for m in metas for les in m["lesions"]}) >= 3
    wt = [sum(m["volumes_ml"].values()) for m in metas]
    assert max(wt) > 2 * min(wt)
    assert len({m["dtype"] for m in metas}) >= 1


def test_forced_options() -> None:
    rng = np.random.default_rng
    no_enh = BT.make_case(rng(2), spacing=4.0, enhancement=False, n_lesions=1, size=15.0)
    assert 3 not in np.unique(no_enh["label"]) and 1 in np.unique(no_enh["label"])
    no_nec = BT.make_case(rng(2), spacing=4.0, enhancement=True, necrosis=False, n_lesions=1, size=15.0)
    assert 1 not in np.unique(no_nec["label"]) and 3 in np.unique(no_nec["label"])
    two = BT.make_case(rng(4), spacing=4.0, n_lesions=2, size="small", dtype="int16")
    assert two["meta"]["n_lesions"] == 2 and two["t1n"].dtype == np.int16
    large = BT.make_case(rng(4), spacing=4.0, size="large", n_lesions=1)["meta"]["volumes_ml"]
    small = two["meta"]["volumes_ml"]
    assert small["NCR"] + small["ET"] < large["NCR"] + large["ET"]
    for bad in ({"size": "huge"}, {"size": 100.0}, {"n_lesions": 0}, {"dtype": "uint8"}, {"noise": -1.0}):
        with pytest.raises(ValueError):
            BT.make_case(rng(0), spacing=4.0, **bad)


def _read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_case_files(out: Path, row: dict[str, str], labels: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    imgs = [nib.load(out / row[c]) for c in BT.CONTRASTS]
    shapes = {img.shape for img in imgs}
    assert len(shapes) == 1
    for img in imgs[1:]:
        np.testing.assert_allclose(img.affine, imgs[0].affine, atol=1e-6)
    if row["label"]:
        seg = nib.load(out / row["label"])
        assert seg.shape == imgs[0].shape
        np.testing.assert_allclose(seg.affine, imgs[0].affine, atol=1e-6)
        values = set(np.unique(np.asanyarray(seg.dataobj)).tolist())
        assert values <= set(labels) and len(values) > 1


@pytest.mark.parametrize("layout", BT.LAYOUTS)
def test_generate_layouts(tmp_path: Path, layout: str) -> None:
    records = BT.generate(tmp_path, n=2, seed=7, layout=layout, progress=False, **FAST)
    assert [r["case"] for r in records] == [r["case"] for r in records if r["case"]] and len(records) == 2
    rows = _read_manifest(tmp_path)
    assert list(rows[0]) == ["case", "subject", "t1n", "t1c", "t2w", "t2f", "label"]
    assert [r["case"] for r in rows] == [r["case"] for r in records]
    for row in rows:  # BraTS 2021 files hold ET as 4, as the real data
        _check_case_files(tmp_path, row, (0, 1, 2, 4) if layout == "brats2021" else (0, 1, 2, 3))
    first = rows[0]
    if layout == "brats2023":
        assert first["case"] == "BraTS-GLI-00000-000" and first["subject"] == "BraTS-GLI-00000"
        assert first["t2f"] == "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz"
        assert first["label"] == "BraTS-GLI-00000-000/BraTS-GLI-00000-000-seg.nii.gz"
    elif layout == "brats2021":
        assert first["case"] == "BraTS2021_00000"
        assert first["t1c"] == "BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz"
        assert first["t2f"] == "BraTS2021_00000/BraTS2021_00000_flair.nii.gz"
        assert first["label"] == "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"
    else:
        assert first["t1n"] == "imagesTr/BraTS_00000_0000.nii.gz"
        assert first["t2f"] == "imagesTr/BraTS_00000_0003.nii.gz"
        assert first["label"] == "labelsTr/BraTS_00000.nii.gz"
        doc = json.loads((tmp_path / "dataset.json").read_text())
        assert doc["channel_names"] == {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}
        assert doc["labels"] == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
        assert doc["numTraining"] == 2 and doc["file_ending"] == ".nii.gz"
        assert len(list((tmp_path / "imagesTr").glob("*.nii.gz"))) == 8
        assert all((tmp_path / e["label"]).is_file() for e in doc["training"])


def test_generate_without_labels_and_prefix_stability(tmp_path: Path) -> None:
    BT.generate(tmp_path / "a", n=2, seed=5, with_labels=False, progress=False, **FAST)
    rows = _read_manifest(tmp_path / "a")
    assert all(r["label"] == "" for r in rows)
    assert not list((tmp_path / "a").rglob("*-seg.nii.gz"))
    BT.generate(tmp_path / "b", n=1, seed=5, progress=False, **FAST)
    first_a = nib.load(tmp_path / "a" / rows[0]["t1c"])
    first_b = nib.load(tmp_path / "b" / _read_manifest(tmp_path / "b")[0]["t1c"])
    np.testing.assert_array_equal(np.asanyarray(first_a.dataobj), np.asanyarray(first_b.dataobj))
    np.testing.assert_array_equal(first_a.affine, first_b.affine)


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        BT.generate(tmp_path, n=1, layout="decathlon")
    with pytest.raises(ValueError, match="unknown option"):
        BT.generate(tmp_path, n=1, spacingg=2.0)
    with pytest.raises(ValueError):
        BT.generate(tmp_path, n=-1)


def test_generate_with_workers_writes_the_same_cases(tmp_path: Path) -> None:
    """Two worker processes write byte-identical volumes, in case order, to one process."""
    one = BT.generate(tmp_path / "one", n=3, seed=11, progress=False, **FAST)
    two = BT.generate(tmp_path / "two", n=3, seed=11, workers=2, progress=False, **FAST)
    assert [r["case"] for r in two] == [r["case"] for r in one]
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()
    for row in _read_manifest(tmp_path / "one"):
        for key in ("t1n", "t2f", "label"):
            a, b = nib.load(tmp_path / "one" / row[key]), nib.load(tmp_path / "two" / row[key])
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, b.affine)
    with pytest.raises(ValueError, match="workers"):
        BT.generate(tmp_path / "bad", n=1, workers=0)
