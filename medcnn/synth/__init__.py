"""Synthetic but realistic data on real anatomy (MNI152 2009 template), for demos, tests and training.

Generators (each ``generate(out_dir, n, seed=0, **options) -> list[dict]``; case ``i`` depends only
on ``(seed, i)``, so a larger set extends a smaller one):

* ``brain-tumor``: 4-contrast brain MRI (t1n, t1c, t2w, t2f) with BraTS 2023 labels;
* ``alzheimer``: T1 MRI of CN and AD subjects in BIDS with ``participants.tsv``;
* ``chest-xray``: frontal radiographs (PNG 8/16-bit, DICOM MONOCHROME1/2) with lung/heart masks
  and CheXpert/NIH-style label CSVs;
* ``ct-organs``: abdominal/thoracic CT in HU with 8 TotalSegmentator-named organ labels (nnU-Net layout,
  optionally DICOM series);
* ``prompt``: 2D images with object label maps (shapes, MNI brain slices, radiographs) for
  promptable segmentation;
* ``sample``: the repository's ``sample_data/`` (a handful of cases of each, plus real DICOM
  files from pydicom's test data).
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_MODULES = {
    "brain-tumor": "medcnn.synth.brain_tumor",
    "alzheimer": "medcnn.synth.alzheimer",
    "chest-xray": "medcnn.synth.chest_xray",
    "ct-organs": "medcnn.synth.ct_organs",
    "prompt": "medcnn.synth.prompt",
    "sample": "medcnn.synth.sample",
}

TASKS = tuple(_MODULES)


def generate(task: str, out_dir: str | Path, n: int, seed: int = 0, **options) -> list[dict]:
    """Generate ``n`` cases of ``task`` into ``out_dir``.

    Args:
        task: one of :data:`TASKS`.
        out_dir: output folder (created).
        n: number of cases (ignored by ``sample``, which has a fixed content).
        seed: random seed.
        **options: task-specific options (e.g. ``layout``, ``formats``, ``spacing``).

    Returns:
        One record (dict of paths and attributes) per written case.

    Raises:
        ValueError: unknown task.
    """
    if task not in _MODULES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    mod = importlib.import_module(_MODULES[task])
    return mod.generate(Path(out_dir), n=n, seed=seed, **options)


def has_workers(task: str) -> bool:
    """Whether the generator of ``task`` takes a ``workers`` argument (worker processes)."""
    if task not in _MODULES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return "workers" in inspect.signature(importlib.import_module(_MODULES[task]).generate).parameters


def check_case_options(n: int, options: dict[str, Any], make_case: Callable[..., Any], extra: Sequence[str]) -> None:
    """Refuse a negative case count or an option that neither ``make_case`` nor the writer (``extra``) takes."""
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    valid = [p for p in inspect.signature(make_case).parameters if p != "rng"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {', '.join(valid + list(extra))}")


def check_workers(workers: Any) -> int:
    """``workers`` as an int; ValueError unless it is a positive integer (the generators' ``workers``)."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return int(workers)


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, chunksize: int = 1) -> Iterator[Any]:
    """``fn(job)`` for each job, in order: in this process (``workers`` 1, or a single job) or in
    ``workers`` processes. Workers start by ``spawn``: a forked child of a process that already runs
    threads (torch's pools, a test runner's) can wait forever on a lock that was held at the fork (seen
    with two workers inside a pytest-xdist worker). Spawning costs each worker an import of numpy/scipy
    (about a second), which larger sets amortise. ``fn`` must be a module-level function."""
    workers = check_workers(workers)
    if workers == 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs, chunksize=max(1, int(chunksize)))


__all__ = ["TASKS", "check_workers", "generate", "has_workers", "map_jobs"]
