"""CT organ generator: HU ranges, labels, geometry, determinism, nnU-Net files and the DICOM copy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medcnn.synth import ct_organs

SMALL = {"matrix": 32, "n_slices": 12}


def _case(index: int, **kw):
    return ct_organs.make_case(ct_organs.case_rng(0, index), **{**SMALL, **kw})


def test_case_values_labels_and_geometry() -> None:
    case = _case(0, increment_mm=4.0, axcodes="LPS", tilt=False)
    img, lab, aff = case["image"], case["label"], case["affine"]
    assert img.shape == lab.shape == (32, 32, 12) and img.dtype == np.int16 and lab.dtype == np.uint8
    pad = case["meta"]["pad_value"]  # outside the reconstruction circle, as scanners write it
    inside = img != pad
    assert inside.mean() > 0.5 and -1100 <= img[inside].min() < -900, "air around the patient is about -1000 HU"
    assert set(np.unique(lab)) <= set(ct_organs.LABELS.values()) and (lab > 0).any()
    # organs have the densities CT gives them: liver ~ soft tissue, lungs ~ air-filled
    if (lab == 1).sum() > 20:
        assert 0 < np.median(img[lab == 1]) < 200
    lungs = np.isin(lab, (5, 6))
    if lungs.sum() > 20:
        assert np.median(img[lungs]) < -500
    sp = np.linalg.norm(aff[:3, :3], axis=0)
    assert sp[2] == pytest.approx(4.0) and sp[0] == pytest.approx(case["meta"]["pixel_mm"], abs=1e-3)
    assert np.allclose(np.sign(np.diag(aff[:3, :3])), [-1, -1, 1]), "LPS storage: i towards L, j towards P"
    volumes = case["meta"]["volumes_ml"]
    voxel_ml = float(np.prod(sp)) / 1000
    assert volumes["liver"] == pytest.approx((lab == 1).sum() * voxel_ml, rel=1e-3, abs=0.01)


def test_deterministic_per_seed_and_index() -> None:
    a, b, c = _case(3), _case(3), _case(4)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert np.array_equal(a["affine"], b["affine"])
    assert a["image"].shape != c["image"].shape or not np.array_equal(a["image"], c["image"])


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="phase"):
        _case(0, phase="venous-ish")
    with pytest.raises(ValueError, match="axcodes"):
        _case(0, axcodes="LSP")  # the slice axis must be S or I
    with pytest.raises(ValueError):
        ct_organs.generate(Path("/nonexistent-never-written"), 1, layout="brats2023")


def test_generate_writes_nnunet_layout_and_a_dicom_copy_on_the_same_world_grid(tmp_path: Path) -> None:
    import medcnn

    recs = ct_organs.generate(tmp_path, 2, seed=1, dicom=True, axcodes="LPI", **SMALL)  # left-handed storage
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"]["liver"] == 1 and meta["numTraining"] == 2
    assert [e["label"] for e in meta["training"]] == ["labelsTr/CT_00000.nii.gz", "labelsTr/CT_00001.nii.gz"]
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert [r["case"] for r in rows] == ["CT_00000", "CT_00001"] and rows[0]["dicom"] == "dicom/CT_00000"
    nii = medcnn.load(recs[0]["paths"]["image"])
    dcm = medcnn.load(recs[0]["paths"]["dicom"])
    a, b = np.asarray(nii.affine, dtype=float), np.asarray(dcm.affine, dtype=float)
    # DICOM readers order slices along the IOP normal, so LPI storage comes back as LPS: same voxels, same
    # world positions, the slice index reversed
    assert not np.allclose(a, b)
    flipped = a.copy()
    flipped[:3, 3] += a[:3, 2] * (nii.shape[-1] - 1)
    flipped[:3, 2] *= -1
    np.testing.assert_allclose(b, flipped, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(dcm)[..., ::-1], np.asarray(nii))


def test_cli_generate_ct_organs(tmp_path: Path) -> None:
    from medcnn.cli.main import cli

    res = CliRunner().invoke(cli, ["generate", "ct-organs", "-n", "1", "--seed", "2", "-o", str(tmp_path / "ct")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ct" / "imagesTr" / "CT_00000_0000.nii.gz").exists()
    res = CliRunner().invoke(cli, ["generate", "alzheimer", "-n", "1", "--dicom", "-o", str(tmp_path / "ad")])
    assert res.exit_code == 2 and "--dicom is a ct-organs option" in res.output
