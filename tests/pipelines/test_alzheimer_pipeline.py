"""``medcnn predict alzheimer``: p_ad/label summary, saliency on the T1 grid, QC, skip/overwrite, bad files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medcnn.cli.main import cli

TINY_AD = [
    "train.epochs=1", "train.batch_size=2", "train.augment.names=[]", "data.val_fraction=0.5",
    "preprocess.spacing=[6,6,6]", "preprocess.size=[24,28,24]", "model.kwargs.channels=[4,8]", "train.device=cpu",
]


@pytest.fixture(scope="module")
def ad_data(tmp_path_factory) -> Path:
    """Four generated subjects (2 AD, 2 CN), 6 mm voxels, random orientations, BIDS with sessions."""
    from medcnn.synth.alzheimer import generate

    out = tmp_path_factory.mktemp("ad_bids")
    generate(out, 4, seed=5, sessions=1, spacing=6.0)
    return out


@pytest.fixture(scope="module")
def ad_model(ad_data: Path, tmp_path_factory, repo_root: Path) -> Path:
    from medcnn.engine import train

    run = tmp_path_factory.mktemp("ad_run")
    train(repo_root / "configs" / "alzheimer.yaml", [f"data.source={ad_data}", *TINY_AD], run)
    return run / "best.pt"


def _predict(*args: str):
    return CliRunner().invoke(cli, ["predict", "alzheimer", *args])


def test_predict_outputs_on_the_input_grid_and_rerun(ad_data: Path, ad_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _predict(str(ad_data), "-o", str(out), "--model", str(ad_model), "--device", "cpu")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert list(rows[0])[:6] == ["case", "inputs", "status", "error", "p_ad", "label"]
    for r in rows:
        assert r["status"] == "ok", r
        assert 0.0 <= float(r["p_ad"]) <= 1.0
        assert r["label"] == ("AD" if float(r["p_ad"]) >= 0.5 else "CN")
        t1 = nib.load(r["inputs"])
        sal = nib.load(str(out / f"{r['case']}_saliency.nii.gz"))
        assert sal.shape == t1.shape
        np.testing.assert_allclose(sal.affine, t1.affine, atol=1e-4)
        data = np.asarray(sal.dataobj, dtype=np.float32)
        assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0 + 1e-6
        assert (out / "qc" / f"{r['case']}.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["pipeline"] == "alzheimer"
    again = _predict(str(ad_data), "-o", str(out), "--model", str(ad_model), "--device", "cpu")
    assert again.exit_code == 0
    assert [r["status"] for r in csv.DictReader(open(out / "summary.csv"))] == ["skipped"] * 4
    assert [r["p_ad"] for r in csv.DictReader(open(out / "summary.csv"))] == [r["p_ad"] for r in rows]


def test_bad_file_and_threshold_from_checkpoint(ad_data: Path, ad_model: Path, tmp_path: Path) -> None:
    from medcnn.batch import run_batch
    from medcnn.pipelines import get_pipeline
    from medcnn.predictor import load_model

    data = tmp_path / "flat"
    data.mkdir()
    good = sorted(ad_data.glob("sub-*/anat/*_T1w.nii.gz"))[:2]
    for f in good:
        shutil.copy(f, data / f.name)
    (data / "broken_T1w.nii.gz").write_bytes(good[0].read_bytes()[:300])
    res = _predict(str(data), "-o", str(tmp_path / "o1"), "--model", str(ad_model), "--device", "cpu")
    assert res.exit_code == 1 and "Traceback" not in res.output
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "o1" / "summary.csv"))}
    assert rows["broken_T1w"]["status"] == "error" and "broken_T1w" in rows["broken_T1w"]["error"]
    assert not (tmp_path / "o1" / "broken_T1w_saliency.nii.gz").exists()
    assert [rows[c]["status"] for c in ("sub-001", "sub-002")] == ["ok", "ok"]

    model = load_model(ad_model)
    model.config["inference"]["threshold"] = 0.0  # every case reaches the stored threshold
    out = run_batch(get_pipeline("alzheimer"), model, [good[0]], tmp_path / "o2", progress=False)
    assert out[0]["label"] == "AD"
    model.config["inference"]["threshold"] = 1.0 + 1e-9
    out = run_batch(get_pipeline("alzheimer"), model, [good[0]], tmp_path / "o3", progress=False)
    assert out[0]["label"] == "CN"
