"""predict segment / ct-organs with a checkpoint from `medcnn train DATASET --auto` on generated CT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medcnn.cli.main import cli

SMALL = {"matrix": 32, "n_slices": 12, "increment_mm": 5.0}


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset folder, auto-trained checkpoint): 4 tiny CT cases (one also as DICOM), one epoch."""
    from medcnn.synth import ct_organs

    root = tmp_path_factory.mktemp("ct")
    ct_organs.generate(root / "ds", 4, seed=0, **SMALL)
    ct_organs.generate(root / "dcm", 1, seed=7, dicom=True, subset="test", **SMALL)
    run = root / "run"
    res = CliRunner().invoke(cli, ["train", str(root / "ds"), "--auto", "--device", "cpu", "--set", "train.epochs=1",
                                   "--set", "train.val_every=1", "-o", str(run)])
    assert res.exit_code == 0, res.output
    return root, run / "best.pt"


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))


def test_segment_on_an_nnunet_folder_and_dicom(ct_run, tmp_path: Path) -> None:
    import medcnn

    root, ckpt = ct_run
    out = tmp_path / "seg"
    res = CliRunner().invoke(cli, ["predict", "segment", str(root / "ds" / "imagesTr"), str(root / "dcm" / "dicom"),
                                   "-o", str(out), "--model", str(ckpt)])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    # nnU-Net ids lose their _0000 channel suffix unless the id is taken (here by the DICOM series folder)
    assert sorted(r["case"] for r in rows) == ["CT_00000", "CT_00000_0000", "CT_00001", "CT_00002", "CT_00003"]
    assert all(r["status"] == "ok" for r in rows)
    names = json.loads((out / "labels.json").read_text())
    assert "liver" in json.dumps(names)
    for r in rows:
        mask = medcnn.load(out / f"{r['case']}.nii.gz")
        image = medcnn.load(r["inputs"].split(";")[0] if ";" in r["inputs"] else r["inputs"])
        assert mask.shape[1:] == image.shape[1:], "the mask is on the input grid"
        np.testing.assert_allclose(np.asarray(mask.affine), np.asarray(image.affine), atol=1e-3)
        vols = dict(kv.split("=") for kv in r["labels_ml"].split("; "))
        assert set(vols) == {"liver", "spleen", "kidney_left", "kidney_right", "lung_left", "lung_right",
                             "pancreas", "aorta"}
        voxel_ml = float(np.prod(np.linalg.norm(np.asarray(mask.affine)[:3, :3], axis=0))) / 1000
        assert float(vols["liver"]) == pytest.approx((np.asarray(mask) == 1).sum() * voxel_ml, abs=0.06)
        assert (out / "qc" / f"{r['case']}.png").stat().st_size > 1000


def test_ct_organs_columns_modality_flag_and_model_check(ct_run, tmp_path: Path) -> None:
    root, ckpt = ct_run
    out = tmp_path / "ct"
    res = CliRunner().invoke(cli, ["predict", "ct-organs", str(root / "dcm" / "dicom"), "-o", str(out), "--model", str(ckpt)])
    assert res.exit_code == 0, res.output
    (row,) = _rows(out)
    assert row["status"] == "ok" and row["case"] == "CT_00000"
    assert {"liver_ml", "liver_hu", "spleen_ml", "aorta_ml", "aorta_hu", "ood", "ood_score"} <= set(row)
    import medcnn

    mask = np.asarray(medcnn.load(out / "CT_00000.nii.gz"))[0]
    hu = np.asarray(medcnn.load(root / "dcm" / "dicom" / "CT_00000"))[0]
    for value, organ in ((1, "liver"), (5, "lung_left")):
        if (mask == value).any():
            assert float(row[f"{organ}_hu"]) == pytest.approx(hu[mask == value].mean(), abs=0.06)
        else:
            assert row[f"{organ}_hu"] == "" and float(row[f"{organ}_ml"]) == 0
    soft, lung = (out / "qc" / "CT_00000.png"), (out / "qc" / "CT_00000_lung.png")
    assert soft.exists() and lung.exists() and soft.read_bytes() != lung.read_bytes()

    res = CliRunner().invoke(cli, ["predict", "ct-organs", str(root / "dcm" / "dicom"), "-o", str(tmp_path / "bad"),
                                   "--model", "alzheimer"])
    assert res.exit_code != 0 and "is a classification model" in res.output
