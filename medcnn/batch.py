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
* a batch splits into parts, each a deterministic subset of the cases (sorted by case id, every N-th
  from the K-th: :func:`select_shard`) written into the same output folder: the ranks of one
  ``torchrun`` (rank 0 merges their summaries into ``summary.csv`` at the end) and, for cluster
  schedulers, ``shard=(K, N)`` (``medcnn predict --shard K/N``), whose run ends with its own
  ``summary.shard-K-of-N.csv`` and ``run.shard-K-of-N.json`` so that shards never write one file;
  :func:`merge_summaries` (``medcnn merge-summaries``) joins the shards' parts into ``summary.csv``.
  A part in progress is ``summary[.shard-K-of-N].rankR.csv``; a shard's part only appears when the
  shard has finished, so a missing part means an unfinished shard. Shards may run at the same time,
  on any machines sharing the folder (each shard has its own lock and only cleans up its own cases'
  temporary files); a torchrun's ranks may span nodes.
"""

from __future__ import annotations

import contextvars
import csv
import functools
import hashlib
import io
import json
import logging
import os
import platform
import re
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from medcnn._version import __version__
from medcnn.cases import Case
from medcnn.errors import ConfigError, InputError, MedcnnError
from medcnn.io.atomic import TMP_MARK, is_stale_temp, write_text_atomic
from medcnn.io.memory import MemoryLimit, memory_limit_scope

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
#: summary parts: a shard's (``summary.shard-K-of-N.csv``) and those of ranks in progress (``...rankR.csv``)
_PART = re.compile(r"^summary(?:\.shard-(\d+)-of-(\d+))?(?:\.rank(\d+))?\.csv$")
_TMP_NAME = re.compile(r"^\.(.*)" + re.escape(TMP_MARK) + r"\d+-[0-9a-f]{8}(.*)$")


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
    """Rows of earlier runs: ``summary.csv``, shards' parts and the rank parts a killed run left behind;
    where two files have a row of one case, the newer file's row counts."""
    files = [p for p in out.glob("summary*.csv") if p.name == "summary.csv" or _PART.match(p.name)]
    rows: dict[str, dict[str, str]] = {}
    for part in sorted(files, key=_mtime):
        rows.update(_read_summary(part))
    return rows


def _mtime(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:
        return 0, path.name


# ------------------------------------------------------------------ shards: one mechanism for ranks and jobs


def parse_shard(text: str | Sequence[int], what: str = "shard") -> tuple[int, int]:
    """``"K/N"`` (or ``(K, N)``) -> ``(K, N)``: shard K (counted from 1) of N.

    Raises:
        ConfigError: not two integers with ``1 <= K <= N`` (the message names ``what`` and gives an example).
    """
    example = "e.g. 1/4 for the first of four shards (K counts from 1, as Slurm's --array=1-4)"
    if isinstance(text, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise ConfigError(f"{what}: expected K/N, {example}; got {text!r}")
        k, n = int(m.group(1)), int(m.group(2))
    else:
        try:
            k, n = (int(v) for v in text)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected K/N, {example}; got {text!r}") from None
    if n < 1:
        raise ConfigError(f"{what}: N (the number of shards) must be at least 1, got {k}/{n}")
    if not 1 <= k <= n:
        raise ConfigError(f"{what}: K must be between 1 and {n} (K counts from 1), got {k}/{n}; {example}")
    return k, n


def select_shard(cases: Sequence[Case], index: int, count: int) -> list[Case]:
    """The cases of part ``index`` (counted from 0) of ``count``: sorted by case id, every ``count``-th from
    ``index`` (round robin, so that parts differ by at most one case and the sizes of neighbouring cases spread).

    The same on every machine whatever the discovery order, since case ids are unique within a batch.
    """
    return sorted(cases, key=lambda c: c.id)[index::count]


def shard_part_name(shard: tuple[int, int]) -> str:
    """``summary.shard-K-of-N.csv``: the summary part of shard ``(K, N)``."""
    return f"summary.shard-{shard[0]}-of-{shard[1]}.csv"


def _rank_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torchrun`` (``0, 1`` otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _single_host() -> bool:
    """True unless the ranks of this ``torchrun`` span several machines."""
    _, world = _rank_world()
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world))) == world


def merge_summary_parts(parts: Sequence[Path], dest: Path, *, order: dict[str, int] | None = None,
                        remove: bool = False) -> list[dict[str, str]]:
    """Join summary parts into ``dest`` (written atomically); what rank 0 and :func:`merge_summaries` both do.

    Args:
        parts: the part files, all present.
        dest: the summary to write.
        order: case id -> position (default: sorted by case id).
        remove: delete the parts once ``dest`` is written.

    Returns:
        The merged rows.

    Raises:
        InputError: a part is unreadable or not a medcnn summary, two parts differ in their columns, or a
            case id appears in two parts.
    """
    fields: list[str] | None = None
    first: Path | None = None
    rows: list[dict[str, str]] = []
    where: dict[str, Path] = {}
    for part in parts:
        try:
            with open(part, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                got = [{k: _csv_unescape(v) if isinstance(v, str) else v for k, v in r.items()} for r in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(part, f"cannot read this summary part ({exc})") from None
        if header[: len(BASE_FIELDS)] != BASE_FIELDS:
            raise InputError(part, f"is not a medcnn summary (its columns are not {','.join(BASE_FIELDS)},...)")
        if fields is None:
            fields, first = header, part
        elif header != fields:
            extra, missing = sorted(set(header) - set(fields)), sorted(set(fields) - set(header))
            diff = "; ".join(t for t in (f"extra {', '.join(extra)}" if extra else "",
                                         f"lacking {', '.join(missing)}" if missing else "") if t) or "another order"
            raise InputError(part, f"its columns differ from those of {first.name} ({diff}): parts of one batch "
                                   "come from one pipeline and one medcnn version")
        for r in got:
            if r.get("case") in where:
                raise InputError(part, f"case {r['case']!r} is also in {where[r['case']].name}: the parts overlap "
                                       "(shards of different inputs or of different splits?)")
            where[r.get("case", "")] = part
            rows.append(r)
    if order is not None:
        rows.sort(key=lambda r: order.get(r["case"], len(order)))
    else:
        rows.sort(key=lambda r: r["case"])
    _write_summary(rows, dest, fields or BASE_FIELDS + SIGNATURE_FIELDS)
    if remove:
        for part in parts:
            part.unlink(missing_ok=True)
    return rows


def merge_summaries(out_dir: str | Path, *, allow_partial: bool = False) -> tuple[list[dict[str, str]], list[str]]:
    """Join the shards' parts (``summary.shard-K-of-N.csv``) of ``out_dir`` into ``summary.csv``, rows sorted by case.

    The parts stay, so that after rerunning one shard a new merge gives the whole table again.

    Args:
        out_dir: the output folder the shards wrote into.
        allow_partial: merge the parts present when some shard's part is missing (else an error).

    Returns:
        ``(rows, missing)``: the merged rows and the names of missing parts (empty unless ``allow_partial``).

    Raises:
        InputError: no part at all, parts of different splits (``-of-2`` beside ``-of-3``), a missing part
            (without ``allow_partial``; the message names them), or any check of :func:`merge_summary_parts`.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, "is not a folder (give the -o folder the shards wrote into)")
    found: dict[int, dict[int, Path]] = {}
    for p in out.iterdir():
        m = _PART.match(p.name)
        if m and m.group(1) and m.group(3) is None:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        running = sorted(p.name for p in out.glob("summary.shard-*.rank*.csv"))
        hint = f"; parts in progress (unfinished shards): {', '.join(running)}" if running else ""
        raise InputError(out, f"holds no shard summary (summary.shard-K-of-N.csv): run medcnn predict --shard K/N "
                              f"into it first{hint}")
    if len(found) > 1:
        splits = ", ".join(f"{len(v)} part(s) of {n}" for n, v in sorted(found.items()))
        raise InputError(out, f"holds parts of different splits ({splits}); remove the stale ones "
                              "(summary.shard-*-of-N.csv of the old N) and merge again")
    (n, parts), = found.items()
    missing = [shard_part_name((k, n)) for k in range(1, n + 1) if k not in parts]
    if missing and not allow_partial:
        raise InputError(out, f"{len(missing)} of {n} shard part(s) missing: {', '.join(missing)} (those shards have "
                              "not finished: rerun them, or pass --allow-partial to merge the others)")
    if missing:
        logger.warning("merging %d of %d shard parts; missing: %s", n - len(missing), n, ", ".join(missing))
    rows = merge_summary_parts([parts[k] for k in sorted(parts)], out / "summary.csv")
    return rows, missing


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
    """Who holds a lock taken now: this process, or for a ``torchrun`` rank its launcher (shared by all ranks).

    Ranks on several machines share no launcher: they are one run by its id and rendezvous address.
    """
    _, world = _rank_world()
    run = os.environ.get("TORCHELASTIC_RUN_ID", "") if world > 1 else ""
    me = {"pid": os.getppid() if run else os.getpid(), "host": socket.gethostname(), "run": run}
    if run and not _single_host():
        me["run"] = f"{run}@{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return me


def _same_run(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """True if the lock's ``holder`` is this run (this process, or another rank of this ``torchrun``)."""
    if "@" in str(me["run"]):  # a multi-node torchrun: its ranks have different launchers and hosts
        return holder.get("run") == me["run"]
    return {k: holder.get(k) for k in me} == me


def _lock_name(shard: tuple[int, int] | None) -> str:
    return LOCK_NAME if shard is None else f"{LOCK_NAME}.shard-{shard[0]}-of-{shard[1]}"


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_HELD_LOCKS: dict[str, int] = {}


def acquire_output_lock(out: Path, shard: tuple[int, int] | None = None) -> Path:
    """Take the lock of output folder ``out`` (or join it: another rank of this ``torchrun``).

    The lock file holds the owner's pid; it is held with ``flock`` too, so that the lock of a killed
    run is known to be stale whatever became of its pid. Each shard (``(K, N)``) has a lock of its own.

    Returns:
        The lock file.

    Raises:
        InputError: another live run holds the lock.
    """
    path = out / _lock_name(shard)
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
            if holder is not None and _same_run(holder, me):
                return path  # another rank of this torchrun (or another thread of this process)
            if holder is None and time.monotonic() < deadline:
                time.sleep(0.02)  # its holder has not written its pid yet
                continue
            who = f"pid {holder.get('pid')}" if holder else "pid unknown"
            raise InputError(out, f"another medcnn run ({who}) is writing into this folder; wait for it to end or "
                                  f"choose another -o (lock file {path.name})")
        try:
            current = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # released (removed) between our open and our flock: try the new file
            os.close(fd)
            continue
        old = _read_lock(path)
        if old and not _same_run(old, me):
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


def release_output_lock(out: Path, shard: tuple[int, int] | None = None) -> None:
    """Remove the lock of ``out`` if this process holds it (a joined rank leaves it to its holder)."""
    path = out / _lock_name(shard)
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


def _cleanup_temps(out_dir: Path, only: set[Path] | None = None) -> None:
    """Remove temporary files that killed processes left behind (never whole outputs, never the
    temporary files of a live process: another rank may be about to rename them).

    ``only``: remove only temporary files of these outputs (a process on another machine looks dead
    from here, so a shard or a multi-node rank leaves other cases' files alone).
    """
    for p in out_dir.rglob(f"*{TMP_MARK}*"):
        if not is_stale_temp(p):
            continue
        m = _TMP_NAME.match(p.name)
        if only is not None and (m is None or p.parent / (m.group(1) + m.group(2)) not in only):
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


def _output_lock_held(fn: Any) -> Any:
    """Run ``fn`` (:func:`run_batch`) after the checks that need no case, holding the output folder's lock."""

    @functools.wraps(fn)
    def wrapper(pipeline: Any, model: Any, inputs: Sequence[str | Path], out_dir: str | Path, *args: Any,
                **kwargs: Any) -> Any:
        check = getattr(pipeline, "check_model", None)
        if check is not None:  # a checkpoint of another task fails here once, not once per case
            check(model)
        out = Path(out_dir)
        shard = kwargs.get("shard")
        if shard is not None:
            kwargs["shard"] = shard = parse_shard(shard)
        _check_output_folder(out, bool(kwargs.get("overwrite", False)))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(out, f"cannot create the output folder ({exc.strerror or exc})") from None
        acquire_output_lock(out, shard)
        try:
            return fn(pipeline, model, inputs, out_dir, *args, **kwargs)
        finally:
            release_output_lock(out, shard)

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
    shard: str | tuple[int, int] | None = None,
    max_memory: MemoryLimit = None,
) -> list[dict[str, Any]]:
    """Run ``pipeline`` with ``model`` on every case found in ``inputs`` (or on one shard of them).

    Args:
        pipeline: see :class:`Pipeline`.
        model: whatever ``pipeline.run`` expects (usually a :class:`medcnn.predictor.Model`).
        inputs: files/folders given by the user.
        out_dir: output folder.
        overwrite: redo cases whose outputs already exist.
        model_info: provenance for run.json (name, path, sha256, config...).
        device: device name for run.json.
        progress: tqdm progress bar (``None``: only on a terminal).
        shard: ``"K/N"`` or ``(K, N)``: only shard K (from 1) of N of the cases (:func:`select_shard`); the
            run's summary is then ``summary.shard-K-of-N.csv`` (join the shards with :func:`merge_summaries`).
        max_memory: memory limit for every check made while the cases are read and run (see
            :mod:`medcnn.io.memory`; ``None``: the enclosing scope, ``MEDCNN_MAX_MEMORY`` or the default).

    Returns:
        The summary rows of this run (all ranks merged on rank 0).

    Raises:
        InputError: an input path does not exist or holds no case at all; ``out_dir`` is a file, holds
            a ``summary.csv`` medcnn did not write (without ``overwrite``) or is locked by another run;
            the pipeline's ``check_model`` refuses ``model``.
        ConfigError: an invalid ``shard`` or ``max_memory``.
    """
    with memory_limit_scope(max_memory, what="max_memory"):
        return _run_batch(pipeline, model, inputs, Path(out_dir), overwrite=overwrite, model_info=model_info,
                          device=device, progress=progress, shard=shard)  # type: ignore[arg-type]


def _run_batch(pipeline: Pipeline, model: Any, inputs: Sequence[str | Path], out: Path, *, overwrite: bool,
               model_info: dict[str, Any] | None, device: str, progress: bool | None,
               shard: tuple[int, int] | None) -> list[dict[str, Any]]:
    """:func:`run_batch` inside its memory limit, holding the lock, with ``shard`` parsed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "qc").mkdir(exist_ok=True)
    cases = pipeline.discover(inputs)
    rank, world = _rank_world()
    batch = select_shard(cases, shard[0] - 1, shard[1]) if shard else cases
    mine = select_shard(batch, rank, world)
    final = out / (shard_part_name(shard) if shard else "summary.csv")
    shared_folder = shard is not None or not _single_host()  # processes elsewhere write here too
    own = {final, final.with_suffix(f".rank{rank}.csv"), *(p for c in mine for p in pipeline.outputs(c, out))}
    _cleanup_temps(out, only=own if shared_folder else None)
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
    # a run whose summary is a merge of parts writes its progress into a rank part, merged at the end
    progress_path = final if world == 1 and shard is None else final.with_suffix(f".rank{rank}.csv")
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
                pending.append((case, _submit(workers, process, case, _submit(loader, load, case))))

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
    order = {c.id: i for i, c in enumerate(cases)}
    if progress_path == final:
        rows.sort(key=lambda r: order.get(r["case"], len(order)))
        _write_summary(rows, final, fields)
    else:
        _write_summary(rows, progress_path, fields)
        if world > 1:
            _barrier()
            if rank != 0:
                return rows
        parts = [final.with_suffix(f".rank{r}.csv") for r in range(world)]
        rows = merge_summary_parts(parts, final, order=order, remove=True)  # type: ignore[assignment]
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
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "n_cases": len(rows),
        "status_counts": {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "error")},
        "seconds_total": round(total, 3),
        "seconds_per_case": timings,
    }
    run_json = out / ("run.json" if shard is None else f"run.shard-{shard[0]}-of-{shard[1]}.json")
    write_text_atomic(run_json, json.dumps(run, indent=2, default=str) + "\n")
    return rows


def _submit(pool: Executor, fn: Callable[..., Any], *args: Any) -> Future:
    """``pool.submit`` in a copy of this thread's context: the memory limit's scope holds in the pool's threads."""
    return pool.submit(contextvars.copy_context().run, fn, *args)


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
