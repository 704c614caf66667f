"""Batch prediction over folders of cases (what ``medcnn predict`` runs for every pipeline).

A *pipeline* object supplies: ``name``, ``fields`` (its summary.csv columns), ``discover(inputs)``,
``outputs(case, out_dir)`` (files a finished case leaves), ``load(case)`` (inputs, on a background
thread), and ``run(model, case, data, out_dir) -> dict`` (writes the outputs atomically, returns
its summary fields). The runner adds what every pipeline needs:

* ``summary.csv`` (``case, inputs, status, error`` + the pipeline's fields + ``inputs_signature,
  model_sha``), ``run.json`` provenance; cells that a spreadsheet would run as a formula (starting
  with ``= + - @``, tab or CR) are written with a leading ``'``;
* a rerun skips a case only when its outputs all exist, its row in the previous ``summary.csv`` says
  ``ok`` (or ``skipped``) and that row's ``inputs_signature`` (path, size and mtime of every input
  file) and ``model_sha`` (the checkpoints' sha256) equal this run's; otherwise the case is redone
  and the log says why (``--overwrite`` redoes every case);
* ``summary.csv`` is rewritten (atomically) after every case, so a run killed at any moment leaves
  whole files only and the rerun completes the rest; a case's new outputs replace the old ones by
  rename (old outputs are never deleted first), and its row is written after them, so a kill during
  ``--overwrite`` leaves each case with its old outputs and old row or its new ones; a failed case
  leaves no output file (removed after its ``error`` row is recorded) and does not stop the batch;
  exit status 1 when any case failed;
* one run at a time per output folder: a lock file (``.medcnn-lock``, the holder's pid) makes a
  second run refuse with one line; a lock left by a killed run is taken over with a warning; the
  ranks of one ``torchrun`` share it; temporary files of dead processes are removed at start,
  those of live ones kept;
* a ``summary.csv`` that medcnn did not write (its header is not ``case,inputs,status,error,...``) is
  never replaced without ``--overwrite``;
* every failure is one line (case, file, reason) in the log and in ``summary.csv``; the traceback
  only goes to the debug log (``medcnn --debug``);
* the next case is read while the model works on the current one (prefetch thread), and a case's
  outputs (label files, QC pictures) are written while the model already works on the next case:
  two cases are in flight, their model calls serialised by a lock (:class:`_Serialised`), so that
  only the network's compute stays on the critical path;
* under ``torchrun`` the cases are sharded over ranks and rank 0 merges the summaries.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import platform
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from medcnn._version import __version__
from medcnn.cases import Case
from medcnn.errors import InputError, MedcnnError
from medcnn.io.atomic import TMP_MARK, is_stale_temp, write_text_atomic

logger = logging.getLogger(__name__)

BASE_FIELDS = ["case", "inputs", "status", "error"]
#: what a rerun compares before skipping a case (last columns of summary.csv)
SIGNATURE_FIELDS = ["inputs_signature", "model_sha"]
#: the output folder's lock file (JSON: pid, host, torchrun run id of the run writing there)
LOCK_NAME = ".medcnn-lock"
#: first characters that make a spreadsheet evaluate a cell as a formula
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: cases processed at once: one computing, one writing its outputs (model calls are serialised)
CASES_IN_FLIGHT = 2


class Pipeline(Protocol):
    """What :func:`run_batch` needs from a pipeline module/object."""

    name: str
    fields: Sequence[str]

    def discover(self, inputs: Sequence[str | Path]) -> list[Case]: ...

    def outputs(self, case: Case, out_dir: Path) -> list[Path]: ...

    def load(self, case: Case) -> Any: ...

    def run(self, model: Any, case: Case, data: Any, out_dir: Path) -> dict[str, Any]: ...


def _read_summary(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: _csv_unescape(v) if isinstance(v, str) else v for k, v in r.items()} for r in csv.DictReader(fh)]
            return {r["case"]: r for r in rows if r.get("case")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        logger.warning("%s: unreadable previous summary (%s); finished cases will be redone", path, exc)
        return {}


def _previous_rows(out: Path) -> dict[str, dict[str, str]]:
    """Rows of earlier runs: ``summary.csv`` plus per-rank parts a killed sharded run left behind."""
    rows = _read_summary(out / "summary.csv")
    for part in sorted(out.glob("summary.rank*.csv")):
        rows.update(_read_summary(part))
    return rows


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on a single line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _case_error(case: Case) -> InputError:
    """The error of a case that discovery already knows is broken (names its folder or first file)."""
    where: Path | str | None = case.id
    if case.inputs:
        first = Path(case.inputs[0])
        where = first if first.is_dir() else first.parent
    return InputError(where, str(case.error))


def _write_summary(rows: list[dict[str, Any]], path: Path, fields: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_escape(_fmt(r.get(k, ""))) for k in fields})
    write_text_atomic(path, buf.getvalue())


def _formula_like(text: str) -> bool:
    """True if a spreadsheet could run ``text`` as a formula, or it is such a text already escaped."""
    return text[:1] in _FORMULA_START or (text[:1] == "'" and _formula_like(text[1:]))


def _csv_escape(v: Any) -> Any:
    """``v`` with a leading ``'`` when a spreadsheet would evaluate it (numbers such as ``-1.5`` stay)."""
    if not isinstance(v, str) or not _formula_like(v):
        return v
    try:
        float(v)
        return v
    except ValueError:
        return "'" + v


def _csv_unescape(v: str) -> str:
    """The value :func:`_csv_escape` was given."""
    return v[1:] if v[:1] == "'" and _formula_like(v[1:]) else v


def inputs_signature(case: Case) -> str:
    """A short hash of the absolute path, size and mtime of every input file of ``case``.

    A folder input (a DICOM series) counts its visible files; the series UID is included.
    """
    parts: list[str] = [str(case.extra.get("series", ""))]
    for raw in case.inputs:
        p = Path(raw)
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
                parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{f}|missing")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def model_signature(model_info: dict[str, Any] | None) -> str:
    """A short hash of every checkpoint sha256 in ``model_info`` (``""`` when it names none)."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "sha256" and isinstance(x, str) and x:
                    found.append(x)
                else:
                    walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(model_info or {})
    return hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()[:16] if found else ""


def _why_redo(prev: dict[str, str], signature: str, model_sha: str) -> str | None:
    """Why a finished case's recorded row does not cover this run (``None``: it does)."""
    if prev.get("inputs_signature") in (None, ""):
        return "its row in summary.csv records no input signature (written by an older medcnn)"
    if prev["inputs_signature"] != signature:
        return "its input files differ from the recorded ones (path, size or modification time)"
    if (prev.get("model_sha") or "") != model_sha:
        return "the model differs from the one that made its outputs"
    return None


def _check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``-o`` that is a file, and a ``summary.csv`` there that medcnn did not write."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder; -o needs a folder (it is created when missing)")
    summary = out / "summary.csv"
    if overwrite or not summary.is_file():
        return
    try:
        with open(summary, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = ["?"]
    if header and header[: len(BASE_FIELDS)] != BASE_FIELDS:
        raise InputError(summary, f"was not written by medcnn (its columns are not {','.join(BASE_FIELDS)},...); "
                                  "move it away, choose another -o, or pass --overwrite to replace it")


def _lock_owner() -> dict[str, Any]:
    """Who holds a lock taken now: this process, or for a ``torchrun`` rank its launcher (shared by all ranks)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    return {"pid": os.getppid() if run else os.getpid(), "host": socket.gethostname(), "run": run}


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_HELD_LOCKS: dict[str, int] = {}


def acquire_output_lock(out: Path) -> Path:
    """Take the lock of output folder ``out`` (or join it: another rank of this ``torchrun``).

    The lock file holds the owner's pid; it is held with ``flock`` too, so that the lock of a killed
    run is known to be stale whatever became of its pid.

    Returns:
        The lock file.

    Raises:
        InputError: another live run holds the lock.
    """
    path = out / LOCK_NAME
    me = _lock_owner()
    deadline = time.monotonic() + 2.0
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(out, f"cannot write into the output folder ({exc.strerror or exc})") from None
        if not _try_flock(fd, path):
            os.close(fd)
            holder = _read_lock(path)
            if holder is not None and {k: holder.get(k) for k in me} == me:
                return path  # another rank of this torchrun (or another thread of this process)
            if holder is None and time.monotonic() < deadline:
                time.sleep(0.02)  # its holder has not written its pid yet
                continue
            who = f"pid {holder.get('pid')}" if holder else "pid unknown"
            raise InputError(out, f"another medcnn run ({who}) is writing into this folder; wait for it to end or "
                                  f"choose another -o (lock file {LOCK_NAME})")
        try:
            current = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # released (removed) between our open and our flock: try the new file
            os.close(fd)
            continue
        old = _read_lock(path)
        if old and {k: old.get(k) for k in me} != me:
            logger.warning("%s: taking over a stale lock of pid %s (that run ended without releasing it)", path,
                           old.get("pid"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD_LOCKS[str(path)] = fd
        return path


def _try_flock(fd: int, path: Path) -> bool:
    """``flock`` ``fd`` without waiting; where there is no flock, a live pid in the file counts as held."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): trust the recorded pid
        from medcnn.io.atomic import pid_alive

        holder = _read_lock(path)
        return not (holder and holder.get("host") == socket.gethostname() and pid_alive(int(holder.get("pid") or 0))
                    and holder.get("pid") != _lock_owner()["pid"])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def release_output_lock(out: Path) -> None:
    """Remove the lock of ``out`` if this process holds it (a joined rank leaves it to its holder)."""
    path = out / LOCK_NAME
    fd = _HELD_LOCKS.pop(str(path), None)
    if fd is None:
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _fmt(v: Any) -> Any:
    if isinstance(v, bool):  # e.g. the ood column: lower-case, as CSV readers and pandas expect
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _cleanup_temps(out_dir: Path) -> None:
    """Remove temporary files that killed processes left behind (never whole outputs, never the
    temporary files of a live process: another rank may be about to rename them)."""
    for p in out_dir.rglob(f"*{TMP_MARK}*"):
        if not is_stale_temp(p):
            continue
        try:
            p.unlink()
        except OSError:
            pass


class _Serialised:
    """A model proxy whose inference methods run one call at a time (one shared lock).

    :func:`run_batch` keeps two cases in flight so that one case's writing and QC overlap the next
    case's compute; the lock keeps two computes from competing for the cores (and doubling peak
    memory). Attributes pass through; nested models (e.g. the chest X-ray pipeline's
    ``findings``/``lungs``) are wrapped with the same lock.
    """

    _LOCKED = frozenset({"predict", "predict_proba", "saliency", "logits", "prepare_input"})

    def __init__(self, model: Any, lock: threading.Lock) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name in self._LOCKED and callable(attr):
            lock = self._lock

            @functools.wraps(attr)
            def locked(*args: Any, **kwargs: Any) -> Any:
                with lock:
                    return attr(*args, **kwargs)

            return locked
        if _is_model(attr):
            return _Serialised(attr, self._lock)
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._model, name, value)


def _is_model(obj: Any) -> bool:
    from medcnn.predictor import Model

    return isinstance(obj, Model)


def _shard(cases: list[Case]) -> tuple[list[Case], int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return cases[rank::world], rank, world


def _output_lock_held(fn: Any) -> Any:
    """Run ``fn`` (:func:`run_batch`) after the checks that need no case, holding the output folder's lock."""

    @functools.wraps(fn)
    def wrapper(pipeline: Any, model: Any, inputs: Sequence[str | Path], out_dir: str | Path, *args: Any,
                **kwargs: Any) -> Any:
        check = getattr(pipeline, "check_model", None)
        if check is not None:  # a checkpoint of another task fails here once, not once per case
            check(model)
        out = Path(out_dir)
        _check_output_folder(out, bool(kwargs.get("overwrite", False)))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(out, f"cannot create the output folder ({exc.strerror or exc})") from None
        acquire_output_lock(out)
        try:
            return fn(pipeline, model, inputs, out_dir, *args, **kwargs)
        finally:
            release_output_lock(out)

    return wrapper


@_output_lock_held
def run_batch(
    pipeline: Pipeline,
    model: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    model_info: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Run ``pipeline`` with ``model`` on every case found in ``inputs``.

    Args:
        pipeline: see :class:`Pipeline`.
        model: whatever ``pipeline.run`` expects (usually a :class:`medcnn.predictor.Model`).
        inputs: files/folders given by the user.
        out_dir: output folder.
        overwrite: redo cases whose outputs already exist.
        model_info: provenance for run.json (name, path, sha256, config...).
        device: device name for run.json.
        progress: tqdm progress bar (``None``: only on a terminal).

    Returns:
        The summary rows of this run (all ranks merged on rank 0).

    Raises:
        InputError: an input path does not exist or holds no case at all; ``out_dir`` is a file, holds
            a ``summary.csv`` medcnn did not write (without ``overwrite``) or is locked by another run;
            the pipeline's ``check_model`` refuses ``model``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qc").mkdir(exist_ok=True)
    _cleanup_temps(out)
    cases = pipeline.discover(inputs)
    mine, rank, world = _shard(cases)
    previous = _previous_rows(out)
    fields = BASE_FIELDS + [f for f in pipeline.fields if f not in BASE_FIELDS + SIGNATURE_FIELDS] + SIGNATURE_FIELDS
    model_sha = model_signature(model_info)
    signatures = {c.id: inputs_signature(c) for c in mine}
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    todo: list[Case] = []
    unrecorded = 0
    for c in mine:
        done = c.error is None and all(p.exists() for p in pipeline.outputs(c, out))
        recorded = previous.get(c.id, {}).get("status") in ("ok", "skipped")
        why = _why_redo(previous[c.id], signatures[c.id], model_sha) if done and recorded and not overwrite else None
        if done and not overwrite and recorded and why is None:
            row = dict(previous[c.id])
            row.update(case=c.id, inputs=";".join(map(str, c.inputs)), status="skipped", error="")
            rows.append(row)
        else:
            if why is not None:
                logger.info("%s: redoing it: %s", c.id, why)
            unrecorded += done and not overwrite and not recorded
            todo.append(c)
    if rows:
        logger.info("skipping %d finished case(s) (use --overwrite to redo them)", len(rows))
    if unrecorded:
        logger.info("redoing %d case(s) whose outputs exist but are missing from summary.csv (interrupted run?)", unrecorded)
    progress_path = out / ("summary.csv" if world == 1 else f"summary.rank{rank}.csv")
    if any(previous.get(c.id, {}).get("status") in ("ok", "skipped") for c in todo):
        _write_summary(_merged(rows, previous, mine), progress_path, fields)  # before any old output is replaced

    def load(c: Case) -> Any:
        if c.error:
            raise _case_error(c)
        return pipeline.load(c)

    def process(case: Case, fut: Future) -> tuple[dict[str, Any], float]:
        row: dict[str, Any] = {"case": case.id, "inputs": ";".join(map(str, case.inputs)), "status": "ok", "error": "",
                               "inputs_signature": signatures[case.id], "model_sha": model_sha}
        t0 = time.perf_counter()
        try:
            data = fut.result()
            # old outputs stay until the new ones are renamed over them: a kill never leaves a row without files
            row.update(pipeline.run(shared, case, data, out))
        except MedcnnError as exc:
            row.update(status="error", error=one_line(str(exc)))
            logger.error("%s: %s", case.id, row["error"])
            logger.debug("%s", traceback.format_exc())
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            row.update(status="error", error=one_line(f"{type(exc).__name__}: {exc}", 300))
            logger.error("%s: unexpected %s (run with --debug for the traceback)", case.id, row["error"])
            logger.debug("%s", traceback.format_exc())
        return row, round(time.perf_counter() - t0, 3)

    shared = _Serialised(model, threading.Lock())
    in_flight = CASES_IN_FLIGHT
    disable = True if (rank != 0 or progress is False) else (None if progress is None else False)
    bar = tqdm(total=len(todo), desc=f"{pipeline.name}", unit="case", disable=disable)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as loader, \
            ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="case") as workers:
        pending: deque[tuple[Case, Future]] = deque()
        queue = iter(todo)

        def submit_next() -> None:
            case = next(queue, None)
            if case is not None:
                pending.append((case, workers.submit(process, case, loader.submit(load, case))))

        for _ in range(in_flight):
            submit_next()
        while pending:
            case, fut = pending.popleft()
            row, seconds = fut.result()
            submit_next()
            timings[case.id] = seconds
            rows.append(row)
            bar.update(1)
            # after every case: a run killed now keeps what it finished (the rerun skips it)
            _write_summary(_merged(rows, previous, mine), progress_path, fields)
            if row["status"] == "error":  # after its error row: a kill in between never leaves "ok" without files
                for p in pipeline.outputs(case, out):
                    p.unlink(missing_ok=True)
    bar.close()
    total = time.perf_counter() - t_start
    if world > 1:
        _write_summary(rows, out / f"summary.rank{rank}.csv", fields)
        _barrier()
        if rank != 0:
            return rows
        rows = []
        for r in range(world):
            part = out / f"summary.rank{r}.csv"
            rows.extend(_read_summary(part).values())
            part.unlink()
    order = {c.id: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: order.get(r["case"], len(order)))
    _write_summary(rows, out / "summary.csv", fields)
    run = {
        "medcnn_version": __version__,
        "pipeline": pipeline.name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "inputs": [str(p) for p in inputs],
        "model": model_info or {},
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "world_size": world,
        "n_cases": len(rows),
        "status_counts": {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "error")},
        "seconds_total": round(total, 3),
        "seconds_per_case": timings,
    }
    write_text_atomic(out / "run.json", json.dumps(run, indent=2, default=str) + "\n")
    return rows


def _merged(rows: list[dict[str, Any]], previous: dict[str, dict[str, str]], mine: list[Case]) -> list[dict[str, Any]]:
    """This run's rows so far, plus the previous ``error`` rows of this run's cases not reached yet.

    A previous ``ok`` row of a case this run redoes is not carried: its outputs are gone, stale, or
    about to be replaced, so a kill must not leave it claiming them (the rerun redoes the case).
    """
    seen = {r["case"] for r in rows}
    return rows + [previous[c.id] for c in mine if c.id not in seen and c.id in previous
                   and previous[c.id].get("status") not in ("ok", "skipped")]


def _barrier() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # only a barrier: CPU collectives are enough
    dist.barrier()
