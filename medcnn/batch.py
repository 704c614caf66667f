"""Batch prediction over folders of cases (what ``medcnn predict`` runs for every pipeline).

A *pipeline* object supplies: ``name``, ``fields`` (its summary.csv columns), ``discover(inputs)``,
``outputs(case, out_dir)`` (files a finished case leaves), ``load(case)`` (inputs, on a background
thread), and ``run(model, case, data, out_dir) -> dict`` (writes the outputs atomically, returns
its summary fields). The runner adds what every pipeline needs:

* ``summary.csv`` (``case, inputs, status, error`` + the pipeline's fields), ``run.json`` provenance;
* a rerun skips cases whose outputs all exist (``--overwrite`` redoes them); a failed case leaves
  no output file and does not stop the batch; exit status 1 when any case failed;
* the next case is read while the model works on the current one (prefetch thread);
* under ``torchrun`` the cases are sharded over ranks and rank 0 merges the summaries.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from medcnn._version import __version__
from medcnn.cases import Case
from medcnn.errors import MedcnnError
from medcnn.io.atomic import TMP_MARK, write_text_atomic

logger = logging.getLogger(__name__)

BASE_FIELDS = ["case", "inputs", "status", "error"]


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
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


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
    previous = _read_summary(out / "summary.csv")
    fields = BASE_FIELDS + [f for f in pipeline.fields if f not in BASE_FIELDS]
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    todo: list[Case] = []
    for c in mine:
        done = all(p.exists() for p in pipeline.outputs(c, out))
        if done and not overwrite and c.error is None:
            row = dict(previous.get(c.id, {}))
            row.update(case=c.id, inputs=";".join(map(str, c.inputs)), status="skipped", error="")
            rows.append(row)
        else:
            todo.append(c)
    if rows:
        logger.info("skipping %d finished case(s) (use --overwrite to redo them)", len(rows))

    def load(c: Case) -> Any:
        if c.error:
            raise MedcnnError(f"{c.inputs[0].parent if c.inputs else c.id}: {c.error}")
        return pipeline.load(c)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        nxt: Future | None = pool.submit(load, todo[0]) if todo else None
        disable = True if (rank != 0 or progress is False) else (None if progress is None else False)
        bar = tqdm(todo, desc=f"{pipeline.name}", unit="case", disable=disable)
        for i, case in enumerate(bar):
            fut, nxt = nxt, (pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None)
            row: dict[str, Any] = {"case": case.id, "inputs": ";".join(map(str, case.inputs)), "status": "ok", "error": ""}
            t0 = time.perf_counter()
            try:
                data = fut.result() if fut is not None else load(case)
                for p in pipeline.outputs(case, out):  # a rerun with --overwrite must not keep stale files on failure
                    if overwrite and p.exists():
                        p.unlink()
                row.update(pipeline.run(model, case, data, out))
            except MedcnnError as exc:
                row.update(status="error", error=str(exc))
                logger.error("%s: %s", case.id, exc)
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
                row.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
                logger.error("%s: unexpected %s: %s (run with --debug for the traceback)", case.id, type(exc).__name__, exc)
                logger.debug("%s", traceback.format_exc())
            if row["status"] == "error":
                for p in pipeline.outputs(case, out):
                    if p.exists():
                        p.unlink()
            timings[case.id] = round(time.perf_counter() - t0, 3)
            rows.append(row)
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


def _barrier() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # only a barrier: CPU collectives are enough
    dist.barrier()
