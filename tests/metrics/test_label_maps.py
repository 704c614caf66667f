"""Label conventions: BraTS 2021 (ET 4), BraTS 2023 (ET 3), nnU-Net's BraTS (ED 1, NCR 2, ET 3), YAML maps;
``medcnn evaluate --labels``, values outside the declared labels refused, the generator's brats2021 layout, and
training's ``data.labels``."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medcnn.cli.main import cli
from medcnn.errors import ConfigError
from medcnn.metrics import evaluate_folders
from medcnn.metrics.labels import label_mapping, remap_labels

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def tumor23() -> np.ndarray:
    """BraTS 2023 labels: 2 ED around 1 NCR around 3 ET."""
    lab = np.zeros((20, 20, 16), dtype=np.uint8)
    lab[3:15, 3:15, 3:13] = 2
    lab[5:12, 5:12, 5:11] = 1
    lab[7:10, 7:10, 7:9] = 3
    return lab


def convert(lab23: np.ndarray, values: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(lab23)
    for src, dst in values.items():
        out[lab23 == src] = dst
    return out


def to21(lab: np.ndarray) -> np.ndarray:
    return convert(lab, {1: 1, 2: 2, 3: 4})


def to_nnunet(lab: np.ndarray) -> np.ndarray:
    return convert(lab, {1: 2, 2: 1, 3: 3})


def write(path: Path, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, AFFINE), str(path))
    return path


def test_builtin_conventions() -> None:
    assert label_mapping("brats2021") == {0: 0, 1: 1, 2: 2, 4: 3}
    assert label_mapping("brats2023") == {0: 0, 1: 1, 2: 2, 3: 3}
    assert label_mapping("nnunet-brats") == {0: 0, 1: 2, 2: 1, 3: 3}
    with pytest.raises(ValueError, match="unknown label convention 'brats2020'.*brats2021"):
        label_mapping("brats2020")


def test_yaml_maps_by_name_and_by_value(tmp_path: Path) -> None:
    (tmp_path / "named.yaml").write_text("labels: {NCR: 1, ED: 2, ET: 4}\n")
    (tmp_path / "values.yaml").write_text("4: 3\n1: 1\n2: 2\n")
    (tmp_path / "bad.yaml").write_text("{NCR: 1, XX: 5}\n")
    assert label_mapping(tmp_path / "named.yaml") == label_mapping("brats2021")
    assert label_mapping(str(tmp_path / "values.yaml")) == label_mapping("brats2021")
    with pytest.raises(ValueError, match="'XX' is not one of the target's"):
        label_mapping(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="not found"):
        label_mapping(tmp_path / "missing.yaml")


def test_remap_numpy_and_torch_and_refuse_unknown() -> None:
    lab = to21(tumor23())
    np.testing.assert_array_equal(remap_labels(lab, label_mapping("brats2021")), tumor23())
    t = torch.from_numpy(to_nnunet(tumor23()).astype(np.int64))
    assert torch.equal(remap_labels(t, label_mapping("nnunet-brats")), torch.from_numpy(tumor23().astype(np.int64)))
    lab[0, 0, 0] = 7
    with pytest.raises(ValueError, match="case.nii.gz: label value\\(s\\) 7 not in"):
        remap_labels(lab, label_mapping("brats2021"), "case.nii.gz")


def _rows(path: Path) -> dict[str, dict]:
    return {r["region"]: r for r in csv.DictReader(open(path)) if r["case"] != "mean"}


def test_evaluate_brats2021_reference_refused_without_map_and_scored_with_it(tmp_path: Path) -> None:
    write(tmp_path / "pred" / "case1.nii.gz", tumor23())
    write(tmp_path / "ref" / "case1" / "case1_seg.nii.gz", to21(tumor23()))
    # without a map: ET = 4 used to score ET Dice 0 silently; now the case fails naming the value
    rows = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "m0.csv")
    case_rows = [r for r in rows if r["case"] == "case1"]
    assert all(r["status"] == "error" for r in case_rows)
    assert "label value(s) 4" in case_rows[0]["error"] and "--labels brats2021" in case_rows[0]["error"]
    rows = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "m1.csv", labels="brats2021")
    for r in rows:
        assert r["status"] == "ok" and r["dice"] == pytest.approx(1.0), r
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "m2.csv"),
                                   "--labels", "brats2021"])
    assert res.exit_code == 0, res.output
    assert {k: float(v["dice"]) for k, v in _rows(tmp_path / "m2.csv").items()} == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "m3.csv")])
    assert res.exit_code == 1 and "label value(s) 4" in (tmp_path / "m3.csv").read_text()


def test_evaluate_nnunet_predictions_against_brats2021_and_bad_option(tmp_path: Path) -> None:
    write(tmp_path / "pred" / "c.nii.gz", to_nnunet(tumor23()))
    write(tmp_path / "ref" / "c.nii.gz", to21(tumor23()))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "m.csv"),
                                   "--labels", "brats2021", "--pred-labels", "nnunet-brats"])
    assert res.exit_code == 0, res.output
    assert all(float(r["dice"]) == 1.0 for r in _rows(tmp_path / "m.csv").values())
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "m.csv"),
                                   "--labels", "brats2020"])
    assert res.exit_code == 2 and "brats2020" in res.output and "Traceback" not in res.output


def test_own_regions_only_warn_about_other_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "p.nii.gz", tumor23())
    write(tmp_path / "r.nii.gz", tumor23())
    rows = evaluate_folders(tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", tmp_path / "m.csv", regions={"core": (1,)})
    assert rows[0]["status"] == "ok"
    assert "label value(s) 2, 3 outside the regions' labels [1]" in caplog.text


def _fake_case(rng: np.random.Generator, **_: object) -> dict:
    """A tiny stand-in for brain_tumor.make_case (BraTS 2023 labels 1, 2, 3)."""
    img = np.ones((8, 8, 8), dtype=np.float32)
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    label[0, 0, 0], label[0, 0, 1], label[0, 1, 0] = 1, 2, 3
    return {"t1n": img, "t1c": img, "t2w": img, "t2f": img, "label": label, "affine": AFFINE.copy(),
            "meta": {"volumes_ml": {}}}


def test_generator_brats2021_layout_writes_et_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medcnn.cases import find_brain_tumor_cases
    from medcnn.synth import brain_tumor

    monkeypatch.setattr(brain_tumor, "make_case", _fake_case)
    rec21 = brain_tumor.generate(tmp_path / "b21", n=1, layout="brats2021", progress=False)[0]
    rec23 = brain_tumor.generate(tmp_path / "b23", n=1, layout="brats2023", progress=False)[0]
    assert np.unique(np.asarray(nib.load(rec21["paths"]["label"]).dataobj)).tolist() == [0, 1, 2, 4]
    assert np.unique(np.asarray(nib.load(rec23["paths"]["label"]).dataobj)).tolist() == [0, 1, 2, 3]
    # case discovery knows a BraTS 2021 case's label convention from its file names
    (c21,) = find_brain_tumor_cases([tmp_path / "b21"])
    (c23,) = find_brain_tumor_cases([tmp_path / "b23"])
    assert c21.extra.get("labels") == "brats2021" and "labels" not in c23.extra


def test_training_labels_remapped_or_refused(tmp_path: Path) -> None:
    from medcnn.engine.config import validate
    from medcnn.engine.schema import TRAIN_SCHEMA
    from medcnn.engine.trainer import _PrepareCase

    img = write(tmp_path / "img.nii.gz", np.random.default_rng(0).random((20, 20, 16)).astype(np.float32))
    lab = write(tmp_path / "seg.nii.gz", to21(tumor23()))
    cfg = validate({"data": {"source": str(tmp_path)}, "model": {"name": "unet"},
                    "preprocess": {"orientation": None, "normalize": "none", "crop_foreground": False},
                    "labels": {"names": {1: "NCR", 2: "ED", 3: "ET"}}}, TRAIN_SCHEMA)
    rec = {"case": "c", "subject": "c", "image": [str(img)], "label": str(lab)}
    prep = _PrepareCase("segmentation", cfg["preprocess"], None, [], label_values=[1, 2, 3])
    with pytest.raises(ConfigError, match="seg.nii.gz: label value\\(s\\) 4 not among the model's labels.*data.labels"):
        prep(rec)
    out = _PrepareCase("segmentation", cfg["preprocess"], None, [], labels="brats2021", label_values=[1, 2, 3])(rec)
    np.testing.assert_array_equal(out["label"][0].numpy(), tumor23())
    # a BraTS 2021 case folder's record carries its convention; the config's data.labels wins over it
    out = _PrepareCase("segmentation", cfg["preprocess"], None, [], label_values=[1, 2, 3])({**rec, "labels": "brats2021"})
    assert int(out["label"].max()) == 3
