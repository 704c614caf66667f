"""``kill -9`` during ``medcnn predict`` leaves whole files only; the rerun completes the rest; --overwrite redoes all."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from relyhelp import head_volume, medcnn_cmd, quiet_env, tiny_checkpoint, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.cases import find_image_cases
from medcnn.cli.main import cli
from medcnn.io.atomic import TMP_MARK
from medcnn.pipelines import get_pipeline

N_CASES = 12


def _wait_for(predicate, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the moment to kill it: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting to kill")
        time.sleep(0.002)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _whole(path: Path) -> bool:
    """True if the file reads completely (NIfTI voxels, PNG pixels, CSV rows)."""
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(str(path)).dataobj).size > 0
    if path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
        return True
    if path.suffix == ".csv":
        return all(r["status"] in ("ok", "error", "skipped") for r in csv.DictReader(open(path, encoding="utf-8")))
    return path.stat().st_size > 0


@pytest.fixture
def many_cases(tmp_path: Path) -> Path:
    vol, aff = head_volume()
    for i in range(N_CASES):
        write_nifti(tmp_path / "scans" / f"case{i:02d}.nii.gz", np.roll(vol, i, axis=0), aff)
    return tmp_path / "scans"


def test_sigkill_mid_batch_then_rerun_and_overwrite(many_cases: Path, tmp_path: Path) -> None:
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    out = tmp_path / "out"
    args = ["predict", "alzheimer", str(many_cases), "-o", str(out), "--model", str(model), "--device", "cpu"]
    proc = subprocess.Popen(medcnn_cmd(*args), env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "qc").is_dir() and any(True for _ in (out / "qc").iterdir()), proc)
    finally:
        if proc.poll() is None:
            _kill(proc)
    pipe = get_pipeline("alzheimer")
    cases = pipe.discover([many_cases])
    finished = [c.id for c in cases if all(p.exists() for p in pipe.outputs(c, out))]
    assert len(finished) < N_CASES, "the kill came after the batch had ended: nothing was interrupted"
    files = [p for p in out.rglob("*") if p.is_file()]
    for p in files:
        if TMP_MARK not in p.name:
            assert _whole(p), f"{p} is not a whole file"

    mtimes = {p: p.stat().st_mtime_ns for c in cases for p in pipe.outputs(c, out) if p.exists()}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv", encoding="utf-8"))}
    assert set(rows) == {c.id for c in cases}
    recorded = [cid for cid in finished if rows[cid]["status"] == "skipped"]
    assert all(rows[c.id]["status"] in ("ok", "skipped") for c in cases)
    assert all(rows[c]["status"] == "ok" for c in rows if c not in finished), "unfinished cases were not redone"
    for cid in recorded:  # skipped: outputs untouched, results carried over from the killed run's summary
        assert rows[cid]["p_ad"] not in ("", None), rows[cid]
        assert all(mtimes[p] == p.stat().st_mtime_ns for p in pipe.outputs(next(c for c in cases if c.id == cid), out))
    for c in cases:
        assert all(_whole(p) for p in pipe.outputs(c, out))
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name], "the rerun left (or kept) temporary files"

    redo = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert redo.exit_code == 0, redo.output
    rows2 = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows2] == ["ok"] * N_CASES
    assert {r["case"]: r["p_ad"] for r in rows2} == {cid: r["p_ad"] for cid, r in rows.items()}, "same model, same results"


def test_sigkill_while_writing_leaves_no_partial_output(tmp_path: Path) -> None:
    """A process killed in the middle of ``medcnn.save`` leaves no file under the output's name."""
    target = tmp_path / "out" / "big mask.nii.gz"
    code = (
        "import numpy as np, medcnn, sys\n"
        "data = np.random.default_rng(0).random((1, 220, 220, 220), dtype=np.float32)\n"
        f"medcnn.save(data, {str(target)!r}, affine=np.eye(4))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=quiet_env(), stderr=subprocess.PIPE, text=True)
    temps = lambda: [p for p in target.parent.glob("*") if TMP_MARK in p.name] if target.parent.exists() else []  # noqa: E731
    try:
        _wait_for(lambda: bool(temps()), proc)
    finally:
        if proc.poll() is None:
            _kill(proc)
    assert not target.exists(), "a killed write left a file under the final name"
    assert temps(), "the kill did not land during the write"
    assert all(p.name.startswith(".") for p in temps()), "temporary files are hidden"
    write_nifti(tmp_path / "out" / "real.nii.gz", head_volume()[0])
    assert [c.id for c in find_image_cases([tmp_path / "out"])] == ["real"], "temporary files are never taken as inputs"
