"""Batch prediction and case discovery under hostile use: stale results, clashing ids, kills during
``--overwrite``, concurrent runs, symlink loops, formula-like ids, foreign files in the output folder.

Most tests drive :func:`medcnn.batch.run_batch` with :class:`FakePipe` (writes a text file per case in
milliseconds), so that they test the runner's rules, not a network.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from relyhelp import head_volume, quiet_env, tiny_checkpoint, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.batch import LOCK_NAME, acquire_output_lock, run_batch
from medcnn.cases import Case, find_brain_tumor_cases, find_image_cases
from medcnn.cli.main import cli
from medcnn.errors import InputError
from medcnn.io.atomic import TMP_MARK, write_text_atomic

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FakePipe:
    """A pipeline whose "model" is a string: each case's output is ``<model>:<input bytes>``.

    ``FAKE_KILL_AT=<case id>`` in the environment SIGKILLs the process when that case starts to run.
    """

    name: str = "fake"
    fields: tuple[str, ...] = ("value",)

    def discover(self, inputs):
        return find_image_cases(inputs)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.id}.txt", out_dir / "qc" / f"{case.id}.txt"]

    def load(self, case: Case) -> str:
        return "".join(Path(p).read_text() for p in case.inputs if Path(p).is_file())

    def run(self, model: Any, case: Case, data: str, out_dir: Path) -> dict[str, Any]:
        if os.environ.get("FAKE_KILL_AT") == case.id:
            os.kill(os.getpid(), signal.SIGKILL)
        text = f"{model.strip()}:{data}"  # the runner passes the model through a proxy: str.strip() gets the string
        write_text_atomic(out_dir / "qc" / f"{case.id}.txt", text)
        write_text_atomic(out_dir / f"{case.id}.txt", text)
        return {"value": text}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


def _scan(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def medcnn_logs(monkeypatch):
    """Let caplog see medcnn's log records (the CLI, run earlier in this process, stops their propagation)."""
    monkeypatch.setattr(logging.getLogger("medcnn"), "propagate", True)


def _hold_lock(out: Path):
    """Another process that takes the output folder's lock and keeps it (a concurrent run)."""
    code = (f"import sys, time; sys.path.insert(0, {str(HERE)!r})\n"
            "from pathlib import Path\nfrom medcnn.batch import acquire_output_lock\n"
            f"acquire_output_lock(Path({str(out)!r})); print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=quiet_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def live_pid():
    """The pid of another live process (not this one), for locks and temp files of a concurrent run."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------ 1. stale skip


def test_rerun_skips_only_when_inputs_and_model_match(tmp_path: Path, caplog) -> None:
    a = _scan(tmp_path / "siteA", "case001.nii.gz", "A")
    _scan(tmp_path / "siteB", "case001.nii.gz", "B")
    out = tmp_path / "out"
    pipe = FakePipe()
    run_batch(pipe, "m1", [tmp_path / "siteA"], out, model_info={"sha256": "1" * 64})
    assert _rows(out)["case001"]["status"] == "ok"

    again = run_batch(pipe, "m1", [tmp_path / "siteA"], out, model_info={"sha256": "1" * 64})
    assert [r["status"] for r in again] == ["skipped"], "same inputs, same model: skipped"

    caplog.set_level(logging.INFO, logger="medcnn")
    run_batch(pipe, "m1", [tmp_path / "siteB"], out, model_info={"sha256": "1" * 64})
    row = _rows(out)["case001"]
    assert row["status"] == "ok" and (out / "case001.txt").read_text() == "m1:B", "another site's case001 was skipped"
    assert "case001: redoing it: its input files differ" in caplog.text

    run_batch(pipe, "m2", [tmp_path / "siteB"], out, model_info={"sha256": "2" * 64})
    assert _rows(out)["case001"]["status"] == "ok" and (out / "case001.txt").read_text() == "m2:B", \
        "another model's results were kept"

    b = tmp_path / "siteB" / "case001.nii.gz"
    b.write_text("C")
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 5_000_000_000))
    run_batch(pipe, "m2", [tmp_path / "siteB"], out, model_info={"sha256": "2" * 64})
    assert _rows(out)["case001"]["status"] == "ok" and (out / "case001.txt").read_text() == "m2:C", \
        "a changed input file was skipped"
    assert a.exists()


def test_summary_without_signatures_is_redone(tmp_path: Path) -> None:
    """A summary.csv row that records no input signature (older medcnn) cannot prove the outputs match."""
    _scan(tmp_path / "s", "x.nii.gz", "X")
    out = tmp_path / "out"
    run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    rows = list(_rows(out).values())
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "inputs", "status", "error", "value"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert [r["status"] for r in run_batch(FakePipe(), "m", [tmp_path / "s"], out)] == ["ok"]


# ------------------------------------------------------------------ 2. duplicate ids


def _brats_case(folder: Path) -> None:
    for c in ("t1n", "t1c", "t2w", "t2f"):
        write_nifti(folder / f"{folder.name}-{c}.nii.gz", np.zeros((2, 2, 2), np.float32))


def test_same_case_id_in_two_folders_gives_two_cases(tmp_path: Path, caplog) -> None:
    _brats_case(tmp_path / "siteA" / "case001")
    _brats_case(tmp_path / "siteB" / "case001")
    caplog.set_level(logging.WARNING, logger="medcnn")
    cases = find_brain_tumor_cases([tmp_path / "siteA", tmp_path / "siteB"])
    assert [c.id for c in cases] == ["case001", "case001_2"]
    assert cases[0].inputs[0].parent.parent.name == "siteA" and cases[1].inputs[0].parent.parent.name == "siteB"
    assert "case001_2" in caplog.text, "the renaming must be announced"

    _scan(tmp_path / "imgA", "case001.nii.gz", "A")
    _scan(tmp_path / "imgB", "case001.nii.gz", "B")
    caplog.clear()
    out = tmp_path / "out"
    run_batch(FakePipe(), "m", [tmp_path / "imgA", tmp_path / "imgB"], out)
    rows = _rows(out)
    assert {k: r["value"] for k, r in rows.items()} == {"case001": "m:A", "case001_2": "m:B"}
    assert "case001_2" in caplog.text


def test_two_dicom_series_with_one_series_number_are_two_cases(tmp_path: Path, caplog) -> None:
    from medcnn.synth.dicom_series import write_dicom_series

    vol = np.ones((4, 4, 3), np.float32)
    write_dicom_series(vol, np.eye(4), tmp_path / "p", series_number=3, name_prefix="A_")
    write_dicom_series(vol * 2, np.eye(4), tmp_path / "p", series_number=3, seed=7, name_prefix="B_")
    write_dicom_series(vol * 3, np.eye(4), tmp_path / "p", series_number=5, seed=9, name_prefix="C_")
    caplog.set_level(logging.WARNING, logger="medcnn")
    cases = find_image_cases([tmp_path / "p"])
    assert len(cases) == 3 and len({c.id for c in cases}) == 3
    assert len({c.extra["series"] for c in cases}) == 3
    assert "p_s3" in {c.id for c in cases} and "p_s5" in {c.id for c in cases}
    assert "SeriesNumber" in caplog.text or "series number" in caplog.text


# ------------------------------------------------------------------ 4. --overwrite killed mid-run


def test_overwrite_killed_mid_case_never_claims_ok_for_missing_outputs(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _scan(tmp_path / "s", f"{name}.nii.gz", name.upper())
    out = tmp_path / "out"
    run_batch(FakePipe(), "old", [tmp_path / "s"], out, model_info={"sha256": "1" * 64})
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        "from test_batch_reliability import FakePipe\n"
        "from medcnn.batch import run_batch\n"
        f"NEW = {{'sha256': {'2' * 64!r}}}\n"
        f"run_batch(FakePipe(), 'new', [{str(tmp_path / 's')!r}], {str(out)!r}, overwrite=True, model_info=NEW)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=quiet_env(FAKE_KILL_AT="b"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pipe = FakePipe()
    for cid, row in _rows(out).items():
        case = Case(cid, [])
        if row["status"] in ("ok", "skipped"):
            assert all(p.exists() for p in pipe.outputs(case, out)), f"{cid}: summary says ok, outputs gone"
            assert (out / f"{cid}.txt").read_text() == row["value"], f"{cid}: summary does not describe the output"
    rerun = run_batch(pipe, "new", [tmp_path / "s"], out, model_info={"sha256": "2" * 64})  # also takes over the killed run's lock
    assert all(r["status"] in ("ok", "skipped") for r in rerun)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name] and not (out / LOCK_NAME).exists()
    assert {cid: (out / f"{cid}.txt").read_text() for cid in "abc"} == {"a": "new:A", "b": "new:B", "c": "new:C"}


# ------------------------------------------------------------------ 5. temps and lock (and 16: ranks)


def test_startup_cleanup_keeps_temps_of_live_processes(tmp_path: Path, live_pid: int) -> None:
    _scan(tmp_path / "s", "x.nii.gz", "X")
    out = tmp_path / "out"
    (out / "qc").mkdir(parents=True)
    alive = out / f".y{TMP_MARK}{live_pid}-0123abcd.nii.gz"
    dead = out / "qc" / f".z{TMP_MARK}{_dead_pid()}-0123abcd.png"
    old_style = out / f".w{TMP_MARK}89abcdef.png"
    for p in (alive, dead, old_style):
        p.write_text("partial")
    run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    assert alive.exists(), "deleted the temporary file of another live process"
    assert not dead.exists() and not old_style.exists(), "a killed run's temporary files must go"


def test_second_run_into_a_locked_folder_refuses(tmp_path: Path, caplog) -> None:
    _scan(tmp_path / "s", "x.nii.gz", "X")
    out = tmp_path / "out"
    out.mkdir()
    other = _hold_lock(out)
    try:
        with pytest.raises(InputError, match=f"another medcnn run \\(pid {other.pid}\\)") as err:
            run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    finally:
        other.kill()
        other.wait()
    assert "\n" not in str(err.value)
    assert not (out / "summary.csv").exists()

    (out / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "run": ""}))
    caplog.set_level(logging.WARNING, logger="medcnn")
    assert [r["status"] for r in run_batch(FakePipe(), "m", [tmp_path / "s"], out)] == ["ok"]
    assert "stale lock" in caplog.text
    assert not (out / LOCK_NAME).exists(), "the lock is released when the run ends"


def test_two_concurrent_cli_runs_one_refuses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_nifti(tmp_path / "s" / "x.nii.gz", *head_volume())
    model = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    other = _hold_lock(out)
    try:
        res = CliRunner().invoke(cli, ["predict", "alzheimer", str(tmp_path / "s"), "-o", str(out), "--model",
                                       str(model), "--device", "cpu"])
    finally:
        other.kill()
        other.wait()
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "another medcnn run" in errors[0] and "Traceback" not in res.output


def test_ranks_of_one_torchrun_share_the_lock(tmp_path: Path, monkeypatch) -> None:
    """Ranks of one ``torchrun`` write into one folder on purpose: they join the lock; another run does not."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    first = acquire_output_lock(out)
    second = acquire_output_lock(out)  # the other rank of the same run (same launcher process)
    assert first is not None and second is not None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-2")
    with pytest.raises(InputError, match="another medcnn run"):
        acquire_output_lock(out)


# ------------------------------------------------------------------ 10. symlink loops


def test_symlink_loops_and_aliases_are_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    _scan(root, "a.nii.gz", "A")
    _scan(root / "deep", "b.nii.gz", "B")
    (root / "deep" / "up").symlink_to(root, target_is_directory=True)
    (root / "deep" / "again").symlink_to(root / "deep", target_is_directory=True)
    (root / "alias").symlink_to(root / "deep", target_is_directory=True)
    t0 = time.monotonic()
    cases = find_image_cases([root])
    assert time.monotonic() - t0 < 5
    assert sorted(c.id for c in cases) == ["a", "b"]

    _brats_case(tmp_path / "site" / "case001")
    (tmp_path / "site" / "alias").symlink_to(tmp_path / "site" / "case001", target_is_directory=True)
    assert [c.id for c in find_brain_tumor_cases([tmp_path / "site"])] == ["case001"]


# ------------------------------------------------------------------ 14. formula ids, -o a file, foreign summary, wrong model


def test_formula_like_case_id_is_escaped_in_the_csv_only(tmp_path: Path) -> None:
    _scan(tmp_path / "s", "=HYPERLINK(1).nii.gz", "H")
    _scan(tmp_path / "s", "@sum.nii.gz", "S")
    _scan(tmp_path / "s", "plain.nii.gz", "P")
    out = tmp_path / "out"
    run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    cells = [line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert sorted(cells) == ["'=HYPERLINK(1)", "'@sum", "plain"]
    assert (out / "=HYPERLINK(1).txt").read_text() == "m:H", "file names keep the case id"
    rerun = run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    assert sorted(r["status"] for r in rerun) == ["skipped"] * 3, "the escaped id must still match on a rerun"


def test_output_path_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    _scan(tmp_path / "s", "x.nii.gz", "X")
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(InputError, match="not a folder") as err:
        run_batch(FakePipe(), "m", [tmp_path / "s"], tmp_path / "taken")
    assert "Errno" not in str(err.value)
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_users_own_summary_csv_is_not_overwritten(tmp_path: Path) -> None:
    _scan(tmp_path / "s", "x.nii.gz", "X")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("patient,score\nbob,3\n")
    with pytest.raises(InputError, match="not written by medcnn"):
        run_batch(FakePipe(), "m", [tmp_path / "s"], out)
    assert (out / "summary.csv").read_text() == "patient,score\nbob,3\n"
    run_batch(FakePipe(), "m", [tmp_path / "s"], out, overwrite=True)
    assert _rows(out)["x"]["status"] == "ok"


def test_model_of_another_task_fails_once_up_front(tmp_path: Path) -> None:
    for i in range(2):
        write_nifti(tmp_path / "s" / f"x{i}.nii.gz", *head_volume(seed=i))
    brain = tiny_checkpoint("brain-tumor", tmp_path / "bt.pt")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["predict", "alzheimer", str(tmp_path / "s"), "-o", str(out), "--model", str(brain),
                                   "--device", "cpu"])
    assert res.exit_code in (1, 2)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bt.pt" in errors[0] and "AD" in errors[0], res.output
    assert "failed" not in res.output and not (out / "summary.csv").exists()

    ad = tiny_checkpoint("alzheimer", tmp_path / "ad.pt")
    _brats_case(tmp_path / "bt" / "case001")
    res = CliRunner().invoke(cli, ["predict", "brain-tumor", str(tmp_path / "bt"), "-o", str(out), "--model", str(ad),
                                   "--device", "cpu"])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "ad.pt: is a classification model" in errors[0], res.output


def test_unwritable_lock_is_one_clear_error(tmp_path: Path) -> None:
    """An output folder where the lock cannot be written (here its name is taken by a folder) fails with one line."""
    _scan(tmp_path / "s", "x.nii.gz", "X")
    out = tmp_path / "out"
    (out / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(InputError, match="cannot write into the output folder"):
        run_batch(FakePipe(), "m", [tmp_path / "s"], out)
