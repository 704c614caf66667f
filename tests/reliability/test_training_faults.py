"""Training faults: ``kill -9`` then ``--resume`` equals an uninterrupted run; a NaN loss stops cleanly and keeps
the last good checkpoint; 2-process DDP on CPU equals one process with the same effective batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from relyhelp import AD_TRAIN_TINY, REPO, ad_training_set, medcnn_cmd, quiet_env
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.cli.main import cli
from medcnn.engine import Trainer, TrainingError, load_checkpoint, train

CONFIG = REPO / "configs" / "alzheimer.yaml"
EPOCHS = 8


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return ad_training_set(tmp_path_factory.mktemp("ad_train"))


def _overrides(manifest: Path, *extra: str) -> list[str]:
    return [f"data.source={manifest}", *AD_TRAIN_TINY, *extra]


# 13-17 s on an idle 2-core machine, 77-79 s at load average 13 (six busy processes beside the suite)
DDP_TIMEOUT_S = 300


def _descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (Linux /proc), deepest last, so torchrun's workers are found."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0 if atol == 0 else 1e-4, atol=atol, msg=f"{k} differs")


def _curve(run: Path) -> list[tuple]:
    """(epoch, train loss, validation metrics) per epoch, without timings."""
    hist = load_checkpoint(run / "last.pt")["training"]["history"]
    return [tuple(sorted((k, v) for k, v in row.items() if k not in ("seconds",))) for row in hist]


def test_sigkill_then_resume_matches_uninterrupted(manifest: Path, tmp_path: Path) -> None:
    ov = _overrides(manifest, f"train.epochs={EPOCHS}")
    full = train(CONFIG, ov, tmp_path / "full")

    run = tmp_path / "killed"
    proc = subprocess.Popen(medcnn_cmd("train", str(CONFIG), *_set_args(ov), "-o", str(run)), env=quiet_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while not (run / "last.pt").exists():
            assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()}"
            assert time.monotonic() - t0 < 300, "no last.pt after 300 s"
            time.sleep(0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists(), "the run had finished before the kill"
    stopped = load_checkpoint(run / "last.pt")
    assert 1 <= stopped["training"]["epoch"] == stopped["resume"]["next_epoch"] < EPOCHS

    res = CliRunner().invoke(cli, ["train", str(CONFIG), *_set_args(ov), "-o", str(run), "--resume"])
    assert res.exit_code == 0, res.output
    resumed = json.loads((run / "result.json").read_text())
    assert resumed["best"] == full["best"] and resumed["best_epoch"] == full["best_epoch"]
    _same_weights(tmp_path / "full" / "last.pt", run / "last.pt")
    _same_weights(tmp_path / "full" / "best.pt", run / "best.pt")
    assert _curve(run) == _curve(tmp_path / "full"), "per-epoch losses/metrics differ after resume"


def _nan_loss_after(epochs: int):
    """A replacement for ``Trainer._loss`` whose loss turns NaN once ``epochs`` epochs are done."""
    real_loss = Trainer._loss

    def poisoned(self: Trainer) -> torch.nn.Module:
        base, trainer = real_loss(self), self

        class NanLater(torch.nn.Module):
            def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                loss = base(logits, target)
                return loss * float("nan") if len(trainer.history) >= epochs else loss

        return NanLater()

    return poisoned


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(manifest: Path, tmp_path: Path, monkeypatch) -> None:
    """A loss that turns NaN in epoch 3 stops the run with one clear line; last.pt/best.pt from before stay usable."""
    monkeypatch.setattr(Trainer, "_loss", _nan_loss_after(2))
    run = tmp_path / "nan"
    res = CliRunner().invoke(cli, ["train", str(CONFIG), *_set_args(_overrides(manifest, "train.epochs=5")), "-o", str(run)])
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    assert "loss became nan at epoch 3" in errors[0] and "last.pt: epoch 2" in errors[0], errors[0]
    last = load_checkpoint(run / "last.pt")
    assert last["training"]["epoch"] == 2 and last["resume"]["next_epoch"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
    best = load_checkpoint(run / "best.pt")
    assert 1 <= best["training"]["epoch"] <= 2
    assert not (run / "result.json").exists()

    monkeypatch.setattr(Trainer, "_loss", _nan_loss_after(0))  # NaN in the very first epoch: nothing to keep
    with pytest.raises(TrainingError, match="loss became nan at epoch 1.*no checkpoint was written yet"):
        train(CONFIG, _overrides(manifest, "train.epochs=2"), tmp_path / "nan0")
    assert not (tmp_path / "nan0" / "last.pt").exists()


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(manifest: Path, tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 (gloo, batch 1 per rank) == one process with batch 2.

    Augmentation is off (probability 0): its random draws are seeded per rank by design, so they
    cannot match a single process; everything else (data order within the global batch aside, which
    the mean loss does not see) is the same computation.
    """
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = _overrides(manifest, "train.epochs=3", "train.augment.prob=0", "train.val_every=1")
    single = train(CONFIG, [*common, "train.batch_size=2"], tmp_path / "single")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "medcnn.cli.main", "train", str(CONFIG),
           *_set_args([*common, "train.batch_size=1"]), "-o", str(tmp_path / "ddp")]
    # PYTHONFAULTHANDLER: on a stall the workers get SIGABRT and print every thread's stack into the kept log
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=quiet_env(PYTHONFAULTHANDLER="1"), cwd=REPO)
    try:
        _, stderr = proc.communicate(timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGABRT)
        time.sleep(5)
        proc.kill()
        _, stderr = proc.communicate()
        (tmp_path / "torchrun_stalled.log").write_text(stderr)
        pytest.fail(f"torchrun did not finish in {DDP_TIMEOUT_S} s; the workers' stacks and the end of the log "
                    f"(all of it in {tmp_path / 'torchrun_stalled.log'}):\n{stderr[-6000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    _same_weights(tmp_path / "single" / "last.pt", tmp_path / "ddp" / "last.pt", atol=1e-5)
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["best_epoch"] == single["best_epoch"]
    assert ddp["best"] == pytest.approx(single["best"], abs=1e-6)
    a = load_checkpoint(tmp_path / "single" / "last.pt")["training"]["history"]
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")["training"]["history"]
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-5)
