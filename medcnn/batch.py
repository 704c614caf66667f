"""Batch prediction over folders of cases (what ``medcnn predict`` runs for every pipeline).

A *pipeline* object supplies: ``name``, ``fields`` (its summary.csv columns), ``discover(inputs)``,
``outputs(case, out_dir)`` (files a finished case leaves), ``load(case)`` (inputs, on a background
thread), and ``run(model, case, data, out_dir) -> dict`` (writes the outputs atomically, returns
its summary fields). The runner adds what every pipeline needs:

* ``summary.csv`` (``case, inputs, status, error`` + the pipeline's fields), ``run.json`` provenance;
* a rerun skips cases whose outputs all exist and whose row in the previous ``summary.csv`` says
  ``ok`` (``--overwrite`` redoes them); ``summary.csv`` is rewritten (atomically) after every case,
  so a run killed at any moment leaves whole files only and the rerun completes the rest; temporary
  files of a killed run are removed; a failed case leaves no output file and does not stop the
  batch; exit status 1 when any case failed;
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
import io
import json
import logging
import os
import platform
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
from medcnn.io.atomic import TMP_MARK, write_text_atomic

logger = logging.getLogger(__name__)

BASE_FIELDS = ["case", "inputs", "status", "error"]
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
            return {r["case"]: r for r in csv.DictReader(fh) if r.get("case")}
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
        w.writerow({k: _fmt(r.get(k, "")) for k in fields})
    write_text_atomic(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _cleanup_temps(out_dir: Path) -> None:
    """Remove temporary files a killed run left behind (never whole outputs)."""
    for p in out_dir.rglob(f"*{TMP_MARK}*"):
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
        InputError: an input path does not exist or holds no case at all.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qc").mkdir(exist_ok=True)
    _cleanup_temps(out)
    cases = pipeline.discover(inputs)
    mine, rank, world = _shard(cases)
    previous = _previous_rows(out)
    fields = BASE_FIELDS + [f for f in pipeline.fields if f not in BASE_FIELDS]
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    todo: list[Case] = []
    unrecorded = 0
    for c in mine:
        done = c.error is None and all(p.exists() for p in pipeline.outputs(c, out))
        recorded = previous.get(c.id, {}).get("status") in ("ok", "skipped")
        if done and not overwrite and recorded:
            row = dict(previous[c.id])
            row.update(case=c.id, inputs=";".join(map(str, c.inputs)), status="skipped", error="")
            rows.append(row)
        else:
            unrecorded += done and not overwrite
            todo.append(c)
    if rows:
        logger.info("skipping %d finished case(s) (use --overwrite to redo them)", len(rows))
    if unrecorded:
        logger.info("redoing %d case(s) whose outputs exist but are missing from summary.csv (interrupted run?)", unrecorded)
    progress_path = out / ("summary.csv" if world == 1 else f"summary.rank{rank}.csv")

    def load(c: Case) -> Any:
        if c.error:
            raise _case_error(c)
        return pipeline.load(c)

    def process(case: Case, fut: Future) -> tuple[dict[str, Any], float]:
        row: dict[str, Any] = {"case": case.id, "inputs": ";".join(map(str, case.inputs)), "status": "ok", "error": ""}
        t0 = time.perf_counter()
        try:
            data = fut.result()
            for p in pipeline.outputs(case, out):  # a rerun with --overwrite must not keep stale files on failure
                if overwrite and p.exists():
                    p.unlink()
            row.update(pipeline.run(shared, case, data, out))
        except MedcnnError as exc:
            row.update(status="error", error=one_line(str(exc)))
            logger.error("%s: %s", case.id, row["error"])
            logger.debug("%s", traceback.format_exc())
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            row.update(status="error", error=one_line(f"{type(exc).__name__}: {exc}", 300))
            logger.error("%s: unexpected %s (run with --debug for the traceback)", case.id, row["error"])
            logger.debug("%s", traceback.format_exc())
        if row["status"] == "error":
            for p in pipeline.outputs(case, out):
                if p.exists():
                    p.unlink()
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
    """This run's rows so far, plus the previous rows of this run's cases not reached yet (so that an
    interrupted rerun does not forget what earlier runs finished)."""
    seen = {r["case"] for r in rows}
    return rows + [previous[c.id] for c in mine if c.id not in seen and c.id in previous]


def _barrier() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # only a barrier: CPU collectives are enough
    dist.barrier()
