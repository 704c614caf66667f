"""Training smoke runs: logs and checkpoints, exact resume, NaN stop, 2-process DDP on gloo."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_overrides import TINY_OVERRIDES

from medcnn.engine import TrainingError, load_checkpoint, train


def _overrides(src: Path, *extra: str) -> list[str]:
    return [f"data.source={src}", *TINY_OVERRIDES, *extra]


def test_train_writes_outputs_and_selfdescribing_checkpoint(tiny_brain_model: Path) -> None:
    run = tiny_brain_model.parent
    for name in ("best.pt", "last.pt", "log.csv", "curves.png", "config.yaml", "result.json"):
        assert (run / name).is_file(), name
    ck = load_checkpoint(tiny_brain_model)
    assert ck["model"]["name"] == "unet" and ck["model"]["kwargs"]["in_channels"] == 4
    assert ck["preprocess"]["spacing"] == [4, 4, 4] and ck["preprocess"]["orientation"] == "RAS"
    assert ck["labels"]["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert ck["inference"]["roi_size"] == [32, 32, 32]
    assert set(ck["metrics"]) >= {"dice_WT", "dice_TC", "dice_ET", "dice_mean"}
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert rows and "train_loss" in rows[0] and "dice_mean" in rows[0]
    val_cases = ck["training"]["val_cases"]
    assert val_cases, "validation cases are recorded"


def test_resume_reproduces_uninterrupted_run(tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    cfg = repo_root / "configs" / "brain_tumor.yaml"
    full = train(cfg, _overrides(tiny_brats, "train.epochs=2", "train.val_every=2"), tmp_path / "full")
    part = tmp_path / "part"
    train(cfg, _overrides(tiny_brats, "train.epochs=1"), part)  # a run that "stopped" after epoch 1
    # the resumed run must continue the 2-epoch schedule: fake the crash by editing nothing but epochs
    res = train(cfg, _overrides(tiny_brats, "train.epochs=2", "train.val_every=2"), part, resume=True)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = load_checkpoint(part / "last.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert res["history"][-1]["train_loss"] == pytest.approx(full["history"][-1]["train_loss"], abs=0)


def test_nan_loss_stops_with_clear_message(tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    # lr=1e30 diverges at epoch 1, step 2: before any checkpoint (tests/reliability covers a NaN after checkpoints)
    with pytest.raises(TrainingError, match="loss became nan at epoch 1.*no checkpoint was written yet"):
        train(repo_root / "configs" / "brain_tumor.yaml", _overrides(tiny_brats, "train.lr=1e30", "train.epochs=3",
                                                                     "train.grad_clip=null", "train.optimizer=sgd"),
              tmp_path / "nan")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "medcnn.cli.main", "train",
           str(repo_root / "configs" / "brain_tumor.yaml"), "-o", str(tmp_path / "ddp")]
    for o in _overrides(tiny_brats):
        cmd += ["--set", o]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "ddp" / "best.pt").is_file()
    ck = load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert not any(k.startswith("module.") for k in ck["state_dict"]), "DDP wrapper prefix leaked into the checkpoint"
    assert res.stdout.count("best ") == 1, "only rank 0 reports"


def test_best_checkpoint_exists_when_no_validation_can_be_scored(tiny_cxr: Path, repo_root: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A validation split too small for any AUROC (one radiograph: every finding has one class) still leaves a
    best.pt (the last epoch), so ``medcnn export RUN/best.pt`` works on small datasets."""
    import logging

    # val_fraction 0.1 of 8 radiographs: one patient, too few for any AUROC
    with caplog.at_level(logging.WARNING, logger="medcnn.engine.trainer"):
        res = train(repo_root / "configs" / "chest_xray.yaml",
                    [f"data.source={tiny_cxr}", "train.epochs=2", "train.batch_size=4", "preprocess.square_size=64",
                     "data.val_fraction=0.1", "train.augment.names=[]", "model.kwargs.growth_rate=4",
                     "model.kwargs.init_features=8"], tmp_path / "run")
    history = res["history"]
    assert all(h["auroc_mean"] != h["auroc_mean"] for h in history)  # NaN: nothing could be scored
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["training"]["epoch"] == 2
    assert "no validation gave a finite selection metric" in caplog.text


def test_data_cache_modes(tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    """``data.cache``: false (preprocess when drawn) trains exactly as true; half keeps float16 images in
    memory, hands float32 batches to the network and trains to nearly the same weights."""
    from medcnn.engine.schema import load_train_config
    from medcnn.engine.trainer import Trainer

    cfg = repo_root / "configs" / "brain_tumor.yaml"
    runs = {mode: train(cfg, _overrides(tiny_brats, f"data.cache={mode}", "train.epochs=2", "train.val_every=2"),
                        tmp_path / mode) for mode in ("true", "false", "half")}
    ref = load_checkpoint(tmp_path / "true" / "last.pt")["state_dict"]
    lazy = load_checkpoint(tmp_path / "false" / "last.pt")["state_dict"]
    half = load_checkpoint(tmp_path / "half" / "last.pt")["state_dict"]
    for k in ref:
        torch.testing.assert_close(lazy[k], ref[k], rtol=0, atol=0, msg=f"{k}: cache false trained differently")
    assert any(not torch.equal(half[k], ref[k]) for k in ref if torch.is_floating_point(ref[k])), "half changed nothing"
    # kernels only: a convolution bias followed by a normalisation gets no gradient but rounding noise (the norm
    # subtracts it again), which Adam scales to full steps, so its drift is arbitrary (measured 0.15 relative here,
    # while every kernel moved <= 0.015)
    rel = [float((half[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)) for k in ref
           if torch.is_floating_point(ref[k]) and ref[k].ndim > 1]
    assert max(rel) < 0.05, f"float16 cache moved the weights too far: {max(rel):.3f}"
    assert runs["half"]["history"][-1]["dice_mean"] == pytest.approx(runs["true"]["history"][-1]["dice_mean"], abs=0.1)

    t = Trainer(load_train_config(cfg, _overrides(tiny_brats, "data.cache=half")), tmp_path / "setup")
    t.setup()
    assert t.train_items[0]["image"].dtype == torch.float16 and t.val_items[0]["image"].dtype == torch.float16
    x, _ = next(t._batches(t._loader(0)))
    assert x.dtype == torch.float32
    raw = Trainer(load_train_config(cfg, _overrides(tiny_brats)), tmp_path / "setup32")
    raw.setup()
    torch.testing.assert_close(t.train_items[0]["image"].float(), raw.train_items[0]["image"], rtol=1e-3, atol=1e-3)
