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

``--brats-size`` first puts every case on the BraTS grid (4 x 240 x 240 x 155, 1 mm, RAS; written
to a temporary folder in BraTS 2023 naming), the input size issue #7 asks GPU figures for;
``--device cuda`` runs the model there (precision ``auto``: bf16 on GPUs that have it) and prints
the absolute seconds per case.

The three take turns ``--rounds`` times; printed: best and median seconds and the ratio to the
compute alone (the target is <= 1.15x). ``--cli`` also times the real ``medcnn predict`` command
once (adds interpreter start-up, imports and model loading).

Examples::

    medcnn generate brain-tumor -n 6 --seed 5 -o /tmp/bt_train
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --cases /tmp/bt_train --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py --cases /tmp/bt_train --threads 1 --no-tta
    python benchmarks/bench_predict.py --cases /tmp/bt_train --brats-size --device cuda   # GPU seconds per case
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (where the model runs)")
    parser.add_argument("--brats-size", action="store_true",
                        help="resample the cases to the BraTS grid first (240 x 240 x 155, 1 mm)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.brats_size:
        with tempfile.TemporaryDirectory() as tmp:
            args.cases = _to_brats_grid(args.cases, tmp)
            return _run(args)
    return _run(args)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_brats_grid(case_dir: str, out_dir: str) -> str:
    """Copies of the brain-tumour cases under ``case_dir`` on a 240 x 240 x 155, 1 mm RAS grid
    (centred on each volume's centre; BraTS 2023 file names). Returns the new folder."""
    import glob

    import nibabel as nib
    import numpy as np

    from medcnn.io.api import load, resample_image

    shape = np.array([240, 240, 155])
    for folder in sorted(glob.glob(os.path.join(case_dir, "*", ""))):
        case = Path(folder).name
        files = sorted(glob.glob(os.path.join(folder, f"{case}-*.nii.gz")))
        if not files:
            continue
        os.makedirs(os.path.join(out_dir, case))
        for f in files:
            img = resample_image(load(f), spacing=1.0, orientation="RAS", mode="nearest" if f.endswith("-seg.nii.gz") else "linear")
            data = img[0].numpy()
            start = (np.array(data.shape) - shape) // 2  # negative: padding
            out = np.zeros(tuple(shape), dtype=np.float32)
            src = [slice(max(0, s), max(0, s) + min(n, d - max(0, s))) for s, n, d in zip(start, shape, data.shape)]
            dst = [slice(max(0, -s), max(0, -s) + (sl.stop - sl.start)) for s, sl in zip(start, src)]
            out[tuple(dst)] = data[tuple(src)]
            affine = img.affine.numpy().astype(np.float64).copy()
            affine[:3, 3] += affine[:3, :3] @ start
            nib.save(nib.Nifti1Image(out, affine), os.path.join(out_dir, case, Path(f).name))
    return out_dir


def _run(args: argparse.Namespace) -> int:
    import medcnn.batch as batch
    from medcnn.pipelines import get_pipeline
    from medcnn.predictor import load_model

    pipe = get_pipeline("brain-tumor")
    device = torch.device(args.device)
    model = load_model("brain-tumor", device=device)
    if args.no_tta:
        model.config["inference"]["tta"] = False
    cases = pipe.discover([args.cases])
    images = [pipe.load(c) for c in cases]
    print(f"machine: {platform.machine()} | {os.cpu_count()} CPUs | torch {torch.__version__} threads {torch.get_num_threads()}"
          f" | device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"{len(cases)} cases from {args.cases}, e.g. {tuple(images[0].shape)} | bundled brain-tumor model, "
          f"TTA {'on' if model.config['inference'].get('tta') else 'off'}")

    def compute() -> None:
        for img in images:
            model.predict(img)
        _sync(device)

    def end_to_end(in_flight: int) -> None:
        old = batch.CASES_IN_FLIGHT
        batch.CASES_IN_FLIGHT = in_flight
        try:
            with tempfile.TemporaryDirectory() as out:
                rows = batch.run_batch(pipe, model, [args.cases], out, overwrite=True, progress=False, device=str(device))
            _sync(device)
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
    print(f"\ncompute alone per case: {ref / len(images):.3f} s (best round / {len(images)} cases)")
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
