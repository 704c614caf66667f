"""Generator B (benchmarks/genb): each task writes the expected files, labels and value ranges, deterministically."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.genb import alzheimer, brain_tumor, chest_xray, prompt  # noqa: E402


def _rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def test_alzheimer_bids_set_with_diagnoses_is_deterministic(tmp_path):
    tsv = alzheimer.generate(2, 5, tmp_path / "a", spacing_mm=6.0)
    rows = _rows(tsv, "\t")
    assert sorted(r["diagnosis"] for r in rows) == ["AD", "CN"]
    for r in rows:
        img = nib.load(str(tmp_path / "a" / r["participant_id"] / "anat" / f"{r['participant_id']}_T1w.nii.gz"))
        data = np.asanyarray(img.dataobj)
        assert data.dtype.name in {"uint8", "int16", "uint16", "float32"}
        assert np.allclose(img.header.get_zooms(), 6.0) and data.ndim == 3 and data.min() >= 0
        assert (data > 0.2 * data.max()).mean() > 0.05  # a head, not an empty volume
        assert (float(r["severity"]) > 0) == (r["diagnosis"] == "AD")
    alzheimer.generate(2, 5, tmp_path / "b", spacing_mm=6.0)
    alzheimer.generate(2, 6, tmp_path / "c", spacing_mm=6.0)
    sid = rows[0]["participant_id"]
    load = lambda d: np.asanyarray(nib.load(str(tmp_path / d / sid / "anat" / f"{sid}_T1w.nii.gz")).dataobj)  # noqa: E731
    assert np.array_equal(load("a"), load("b"))
    assert load("a").shape != load("c").shape or not np.array_equal(load("a"), load("c"))


def test_atrophy_enlarges_csf():
    rng = np.random.default_rng(0)
    from benchmarks.genb import common

    t = common.brain_on_grid(rng, (4.0, 4.0, 4.0), (156.0, 190.0, 160.0))
    gm0, wm0 = t["gm"].copy(), t["wm"].copy()
    alzheimer.apply_atrophy(t, cortex=0.0, mtl=0.0, vent=0.0)  # zero magnitude: identity
    assert np.array_equal(t["gm"], gm0) and np.array_equal(t["wm"], wm0)
    before, vent = float(t["csf"].sum()), int(alzheimer.ventricles(t).sum())
    alzheimer.apply_atrophy(t, cortex=2.0, mtl=0.8, vent=5.0)
    assert float(t["csf"].sum()) > 1.15 * before and t["gm"].sum() < gm0.sum()
    assert int(alzheimer.ventricles(t).sum()) > vent


def test_brain_tumor_brats_layout_and_labels(tmp_path):
    csv_path = brain_tumor.generate(1, 3, tmp_path, spacing_mm=5.0)
    row = _rows(csv_path)[0]
    case = tmp_path / row["case"]
    seg_img = nib.load(str(case / f"{row['case']}-seg.nii.gz"))
    seg = np.asanyarray(seg_img.dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 3} and (seg > 0).any() and (seg == 2).any()
    for c in brain_tumor.CONTRASTS:
        img = nib.load(str(case / f"{row['case']}-{c}.nii.gz"))
        assert img.shape == seg.shape and np.allclose(img.affine, seg_img.affine)
        assert np.asanyarray(img.dataobj).max() > 0
    assert float(row["wt_ml"]) >= float(row["tc_ml"]) >= float(row["et_ml"])


def test_chest_xray_images_masks_and_labels(tmp_path):
    rows = _rows(chest_xray.generate(2, 11, tmp_path / "a"))
    chest_xray.generate(2, 11, tmp_path / "b")
    for r in rows:
        img = np.array(Image.open(tmp_path / "a" / r["image"]))
        lungs = np.array(Image.open(tmp_path / "a" / r["lungs"]))
        heart = np.array(Image.open(tmp_path / "a" / r["heart"]))
        assert img.shape == lungs.shape == heart.shape == (int(r["rows"]), int(r["cols"]))
        assert 256 <= img.shape[0] <= 512 and img.dtype in (np.uint8, np.uint16) and img.max() > img.min()
        assert set(np.unique(lungs)) == {0, 255} and set(np.unique(heart)) == {0, 255}
        assert not ((lungs > 0) & (heart > 0)).any()
        assert {r[f] for f in chest_xray.FINDINGS} <= {"0", "1"}
        assert (r["Cardiomegaly"] == "1") == (float(r["ctr"]) > 0.5)
        for f in chest_xray.FINDINGS[1:]:
            assert (tmp_path / "a" / "masks" / f"{r['case']}_{f}.png").exists() == (r[f] == "1")
        assert np.array_equal(img, np.array(Image.open(tmp_path / "b" / r["image"])))


def test_prompt_objects_have_exact_boxes(tmp_path):
    rows = _rows(prompt.generate(4, 2, tmp_path))
    assert [r["dim"] for r in rows] == ["2", "2", "2", "3"]
    assert [r["shape_class"] for r in rows] == ["thin", "tubular", "nonconvex", "thin"]
    for r in rows:
        if r["dim"] == "2":
            mask = np.array(Image.open(tmp_path / r["mask"])) > 0
        else:
            mask = np.asanyarray(nib.load(str(tmp_path / r["mask"])).dataobj) > 0
        box = tuple(int(v) for v in r["box"].split())
        assert box == prompt.bbox(mask)
        assert 0 < float(r["fill"]) <= 1 and r["polarity"] in ("dark", "bright")


@pytest.mark.parametrize("dim", [2, 3])
def test_prompt_real_anatomy_object(dim):
    img, mask, structure, pol = prompt.anatomy(np.random.default_rng(4), dim, spacing_mm=6.0)
    assert img.ndim == mask.ndim == dim and img.shape == mask.shape
    assert mask.sum() >= 5 and 0.0 <= img.min() and img.max() <= 1.0
    assert structure in ("ventricles", "cortex", "white_matter", "brain") and pol in ("dark", "bright")
