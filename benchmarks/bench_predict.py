"""Batch prediction: end-to-end ``medcnn predict`` wall time against the model's compute alone.

On a folder of generated brain-tumour cases, with the bundled model:

* ``compute alone``: ``model.predict(img)`` on every case, images already in memory (what the
  network, the resampling to and from the model grid and the post-processing cost; no reading,
  no writing, no QC picture);
* ``run_batch (2 cases in flight)``: what ``medcnn predict brain-tumor DIR -o OUT --overwrite``
  runs after loading the model (:func:`medcnn.batch.run_batch`): reading (prefetch thread),
  predicting, writing the label map, the QC picture and ``summary.csv``/``run.json``;
* ``run_batch (one case at a time)``: the same with ``CASES_IN_FLIGHT = 1`` (writing and QC on the
  critical path, reading still prefetched) -- the previous behaviour, for reference.

The three take turns ``--rounds`` times; printed: best and median seconds and the ratio to the
compute alone (the target is <= 1.15x). ``--cli`` also times the real ``medcnn predict`` command
once (adds interpreter start-up, imports and model loading).

Examples::

    medcnn generate brain-tumor -n 6 --seed 5 -o /tmp/bt_train
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --cases /tmp/bt_train --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --cases /tmp/bt_train --threads 1 --no-tta
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="/tmp/bt_train", help="folder of generated brain-tumour cases")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--cli", action="store_true", help="also time the medcnn predict command once")
    parser.add_argument("--no-tta", action="store_true",
                        help="switch the model's mirror TTA off (about 5x less compute per case, so the reading, "
                             "writing and QC weigh more)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import medcnn.batch as batch
    from medcnn.pipelines import get_pipeline
    from medcnn.predictor import load_model

    pipe = get_pipeline("brain-tumor")
    model = load_model("brain-tumor")
    if args.no_tta:
        model.config["inference"]["tta"] = False
    cases = pipe.discover([args.cases])
    images = [pipe.load(c) for c in cases]
    print(f"machine: {platform.machine()} | {os.cpu_count()} CPUs | torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"{len(cases)} cases from {args.cases}, e.g. {tuple(images[0].shape)} | bundled brain-tumor model, "
          f"TTA {'on' if model.config['inference'].get('tta') else 'off'}")

    def compute() -> None:
        for img in images:
            model.predict(img)

    def end_to_end(in_flight: int) -> None:
        old = batch.CASES_IN_FLIGHT
        batch.CASES_IN_FLIGHT = in_flight
        try:
            with tempfile.TemporaryDirectory() as out:
                rows = batch.run_batch(pipe, model, [args.cases], out, overwrite=True, progress=False)
            bad = [r for r in rows if r["status"] != "ok"]
            if bad:
                raise SystemExit(f"failed cases: {bad}")
        finally:
            batch.CASES_IN_FLIGHT = old

    methods = [("compute alone (model.predict)", compute), ("run_batch, 2 cases in flight", lambda: end_to_end(2)),
               ("run_batch, one case at a time", lambda: end_to_end(1))]
    compute()  # warm-up
    times: list[list[float]] = [[] for _ in methods]
    for _ in range(args.rounds):
        for i, (_, fn) in enumerate(methods):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    ref = min(times[0])
    print(f"\n{'method':34s} {'best s':>8s} {'median s':>9s} {'/ compute':>10s}")
    for (name, _), ts in zip(methods, times):
        print(f"{name:34s} {min(ts):8.3f} {statistics.median(ts):9.3f} {min(ts) / ref:9.3f}x")
    if args.cli:
        exe = shutil.which("medcnn")
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([exe, "predict", "brain-tumor", args.cases, "-o", out, "--overwrite"], check=True,
                           capture_output=True)
            wall = time.perf_counter() - t0
        print(f"{'medcnn predict (CLI, once)':34s} {wall:8.3f} {'':9s} {wall / ref:9.3f}x   (start-up + model load included)")
    print("\nratio = best time / best compute-alone time (target <= 1.15x); rounds interleaved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
