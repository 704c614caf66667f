"""``medcnn predict brain-tumor``: outputs on the input grid, summary, skip/overwrite, bad cases, load_model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import medcnn
from medcnn.cli.main import cli
from medcnn.predictor import load_model


def _predict(*args: str):
    return CliRunner().invoke(cli, ["predict", "brain-tumor", *args])


def test_predict_outputs_and_rerun_skip(tiny_brats: Path, tiny_brain_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _predict(str(tiny_brats), "-o", str(out), "--model", str(tiny_brain_model), "--device", "cpu")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert set(rows[0]) >= {"case", "inputs", "status", "error", "wt_ml", "tc_ml", "et_ml"}
    for r in rows:
        assert float(r["wt_ml"]) >= float(r["tc_ml"]) >= float(r["et_ml"]) >= 0
        mask = nib.load(str(out / f"{r['case']}.nii.gz"))
        t1n = nib.load(str(next((tiny_brats / r["case"]).glob("*-t1n.nii.gz"))))
        assert mask.shape == t1n.shape
        np.testing.assert_allclose(mask.affine, t1n.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}
        assert (out / "qc" / f"{r['case']}.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["sha256"] and run["status_counts"]["ok"] == 4
    before = (out / f"{rows[0]['case']}.nii.gz").stat().st_mtime_ns
    again = _predict(str(tiny_brats), "-o", str(out), "--model", str(tiny_brain_model), "--device", "cpu")
    assert again.exit_code == 0
    assert [r["status"] for r in csv.DictReader(open(out / "summary.csv"))] == ["skipped"] * 4
    assert (out / f"{rows[0]['case']}.nii.gz").stat().st_mtime_ns == before
    redo = _predict(str(tiny_brats), "-o", str(out), "--model", str(tiny_brain_model), "--device", "cpu", "--overwrite")
    assert redo.exit_code == 0
    assert [r["status"] for r in csv.DictReader(open(out / "summary.csv"))] == ["ok"] * 4


def test_bad_case_does_not_stop_batch(tiny_brats: Path, tiny_brain_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_brats, data)
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    t1c = next(cases[0].glob("*-t1c.nii.gz"))
    t1c.write_bytes(t1c.read_bytes()[:200])  # truncated
    next(cases[1].glob("*-t2f.nii.gz")).unlink()  # missing contrast
    out = tmp_path / "out"
    res = _predict(str(data), "-o", str(out), "--model", str(tiny_brain_model), "--device", "cpu")
    assert res.exit_code == 1
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows[cases[0].name]["status"] == "error" and "t1c" in rows[cases[0].name]["error"]
    assert rows[cases[1].name]["status"] == "error" and "t2f" in rows[cases[1].name]["error"]
    assert [rows[c.name]["status"] for c in cases[2:]] == ["ok", "ok"]
    assert not (out / f"{cases[0].name}.nii.gz").exists() and not (out / f"{cases[1].name}.nii.gz").exists()
    assert "Traceback" not in res.output


def _pointwise_model(checkpoint: Path):
    """The tiny model's config with a 1x1x1 network thresholding normalised t1c (WT > 0.5, TC > 1, ET > 1.5 SD).

    Its output depends on voxel values only, so predicting on any reorientation/respacing of a case must
    give (almost) the same mask once saved back on the source grid.
    """
    import torch

    from medcnn.predictor import Model

    base = load_model(checkpoint)
    net = torch.nn.Conv3d(4, 3, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:, 1] = 10.0
        net.bias.copy_(torch.tensor([-5.0, -10.0, -15.0]))
    cfg = dict(base.config)
    cfg["preprocess"] = dict(cfg["preprocess"], spacing=[2.0, 2.0, 2.0])
    cfg["inference"] = dict(cfg["inference"], min_component_ml=None)
    return Model(net, cfg)


def test_library_predict_on_reoriented_input(tiny_brats: Path, tiny_brain_model: Path, tmp_path: Path) -> None:
    model = _pointwise_model(tiny_brain_model)
    case = sorted(p for p in tiny_brats.iterdir() if p.is_dir())[0]
    files = [next(case.glob(f"*-{c}.nii.gz")) for c in ("t1n", "t1c", "t2w", "t2f")]
    img = medcnn.load(files)
    pred = model.predict(img)
    assert tuple(pred.shape) == (1, *img.shape[1:])
    assert set(pred.unique().tolist()) <= {0, 1, 2, 3}
    img2 = medcnn.load(files, orientation="LPS", spacing=3.0)
    medcnn.save(model.predict(img2), tmp_path / "b.nii.gz", like=img2)
    medcnn.save(pred, tmp_path / "a.nii.gz", like=img)
    a = np.asarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b.nii.gz")).dataobj)
    assert a.shape == b.shape
    assert (a > 0).sum() > 20, "the pointwise model should find the enhancing tumour"
    dice = 2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum())
    assert dice > 0.8, f"prediction moved with the input's orientation/spacing (Dice {dice:.3f})"


def test_unknown_pipeline_and_model(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["predict", "brain-tumour", str(tmp_path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "brain-tumor" in res.output
    with pytest.raises(medcnn.InputError, match="bundled"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.slow
def test_predict_sharded_over_two_ranks(tiny_brats: Path, tiny_brain_model: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "out"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "medcnn.cli.main", "predict", "brain-tumor",
           str(tiny_brats), "-o", str(out), "--model", str(tiny_brain_model), "--device", "cpu"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    except subprocess.TimeoutExpired as exc:  # keep the log: a bare timeout says nothing about where it stalled
        log = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"torchrun did not finish in {exc.timeout:.0f} s; the end of its log:\n{log[-3000:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert sorted(r["case"] for r in rows) == sorted(p.name for p in tiny_brats.iterdir() if p.is_dir())
    assert all(r["status"] == "ok" for r in rows)
    assert not list(out.glob("summary.rank*.csv")), "per-rank partial summaries are merged and removed"
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
