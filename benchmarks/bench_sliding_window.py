"""Side-by-side timing: medcnn.sliding_window_inference vs monai.inferers.sliding_window_inference.

The reference is what a MONAI user runs: ``sliding_window_inference(x, roi, sw_batch, net,
overlap=0.5, mode="gaussian")`` in fp32 under ``torch.no_grad()`` (as in MONAI's tutorials).
Compared against it, on the same network and input:

* ``ours same, fp32``: the same settings, ``precision="fp32"`` (must agree to 1e-4);
* ``ours same, fp32, no fast conv``: the same, with ``fast_cpu_conv=False`` (PyTorch's own
  convolution backends: what the engine alone gains);
* ``ours defaults``: the call with nothing but the positional arguments (overlap 0.25, constant
  blending, fp32) -- a different blending, so only agreement of the decisions is meaningful;
* ``ours same, auto -> bf16/fp16``: only where the device has native low precision.

Networks (``--net``):

* ``brain-tumor`` (default): the bundled trained model (MONAI UNet 16..256, 4 MRI contrasts in,
  3 nested regions WT/TC/ET out, roi 80^3). A trained network is needed for a meaningful
  agreement figure (random weights give near-tied logits). The input is a mosaic of generated
  brain-tumour cases on the model grid (2.5 mm, normalised as in training), cropped to
  ``--size``; ``--size case`` uses the first case alone. Generate the cases with
  ``medcnn generate brain-tumor -n 2 --seed 5 -o /tmp/bt``.
* ``unet``: MONAI UNet (16..256) with random weights, ``--in-channels`` in, 3 out (memory runs).
* ``none``: a free predictor ``x[:, :3]`` (the engine's own cost).

Printed per method: best and median wall time over ``--repeats`` interleaved runs (after one
warm-up run unless ``--no-warmup``), speed-up over MONAI (> 1: faster), max abs difference to
MONAI's output, argmax agreement, agreement of the region decisions (logit > 0 per channel, all
channels equal), agreement of the label maps the brain-tumour pipeline writes (BraTS labels decoded
from the nested regions: the decision of a region model, whose background has three strongly
negative, near-tied logits that make the raw argmax there arbitrary), Dice of channel 0 (whole tumour) against MONAI, network windows computed, and
GFLOP/s achieved in the network (FLOPs of the convolutions per window x windows / time) against
a conv3d peak measured in the same run. ``--memory`` adds each method's peak RSS, run alone in a
fresh process. Absolute times are only meaningful for GPU runs (DESIGN §6); quote the ratios.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_window.py --threads 1 --size 128
    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_window.py --threads 1 --size case
    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_window.py --threads 1 --size 512 512 300 --repeats 1 --no-warmup
    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_window.py --threads 1 --net unet --in-channels 1 \\
        --size 512 512 300 --memory-only --overlap 0.25 --mode constant       # memory, MONAI defaults
    python benchmarks/bench_sliding_window.py --net none --size 256       # engine overhead alone
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.inferers import sliding_window_inference as monai_swi  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

from medcnn.inference import resolve_precision, sliding_window_inference  # noqa: E402
from medcnn.inference.sliding_window import _WindowPlan  # noqa: E402

CONTRASTS = ("t1n", "t1c", "t2w", "t2f")


class _FirstChannels(torch.nn.Module):
    """``x[:, :n]`` (a view): a predictor that costs nothing."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n]


def _brain_cases(case_dir: str, model) -> list[torch.Tensor]:
    """Generated brain-tumour cases on the model grid, preprocessed as in training: ``(4, *spatial)``."""
    import medcnn
    from medcnn.preprocessing import prepare

    cases = []
    for folder in sorted(glob.glob(os.path.join(case_dir, "*", ""))):
        files = [glob.glob(os.path.join(folder, f"*-{c}.nii.gz")) for c in CONTRASTS]
        if not all(files):
            continue
        img = medcnn.load([f[0] for f in files])
        x, _ = prepare(model.model_grid(img), model.config["preprocess"])
        cases.append(x.float())
    if not cases:
        raise SystemExit(f"no brain-tumour cases under {case_dir}; run: medcnn generate brain-tumor -n 2 --seed 5 -o {case_dir}")
    return cases


def _mosaic(cases: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
    """``(C, *size)``: the cases side by side on a grid of cells (cycling through them), zero between."""
    cell = [max(c.shape[1 + a] for c in cases) for a in range(3)]
    counts = [math.ceil(s / c) for s, c in zip(size, cell)]
    out = torch.zeros((cases[0].shape[0], *[n * c for n, c in zip(counts, cell)]))
    for i, idx in enumerate(torch.cartesian_prod(*[torch.arange(n) for n in counts]).tolist()):
        case = cases[i % len(cases)]
        corner = [int(j) * c for j, c in zip(idx, cell)]
        out[(slice(None), *[slice(a, a + s) for a, s in zip(corner, case.shape[1:])])] = case
    return out[(slice(None), *[slice(0, s) for s in size])].contiguous()


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, tuple[int, ...], torch.device]:
    """The network and input every method (and every child process) gets: same seed, same data."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.net == "brain-tumor":
        import medcnn

        model = medcnn.load_model("brain-tumor")
        net = model.network
        roi = tuple(args.roi * 3 if len(args.roi) == 1 else args.roi) if args.roi else tuple(model.config["inference"]["roi_size"])
        cases = _brain_cases(args.cases, model)
        x = cases[0] if args.size == ["case"] else _mosaic(cases, _size(args))
        x = x[None]
    else:
        roi = tuple(args.roi * 3 if len(args.roi) == 1 else args.roi) if args.roi else (96, 96, 96)
        if args.net == "unet":
            net = UNet(3, args.in_channels, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
        else:
            net = _FirstChannels(3)
        x = torch.randn((1, args.in_channels, *_size(args)), generator=torch.Generator().manual_seed(args.seed + 1))
    return net.to(device).eval(), x.to(device), roi, device


def _labels(out: torch.Tensor) -> np.ndarray:
    """``(1, 3, *spatial)`` region logits (WT, TC, ET) -> the BraTS label map the pipeline writes."""
    from medcnn.inference.postprocess import regions_to_labels

    return regions_to_labels((out[0] > 0).cpu().numpy())


def _size(args: argparse.Namespace) -> tuple[int, ...]:
    size = [int(s) for s in args.size]
    return tuple(size * 3 if len(size) == 1 else size)


def _methods(
    args: argparse.Namespace, net: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...]
) -> list[tuple[str, float, Callable[[], torch.Tensor]]]:
    """``(name, overlap, fn)`` per method; the first is the MONAI reference."""
    sw, ov, mode = args.sw_batch, args.overlap, args.mode

    def run_monai() -> torch.Tensor:
        with torch.no_grad():
            return monai_swi(x, roi, sw, net, overlap=ov, mode=mode)

    methods = [
        (f"monai  overlap {ov} {mode} fp32", ov, run_monai),
        ("ours   same, fp32", ov, lambda: sliding_window_inference(x, roi, sw, net, ov, mode, precision="fp32")),
        ("ours   same, fp32, no fast conv", ov,
         lambda: sliding_window_inference(x, roi, sw, net, ov, mode, precision="fp32", fast_cpu_conv=False)),
        ("ours   defaults (0.25, constant)", 0.25, lambda: sliding_window_inference(x, roi, sw, net)),
        ("ours   0.25, gaussian", 0.25, lambda: sliding_window_inference(x, roi, sw, net, 0.25, "gaussian")),
    ]
    auto_dtype = resolve_precision("auto", x.device)
    if auto_dtype is not None:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[auto_dtype]
        methods.append((f"ours   same, auto -> {name}", ov,
                        lambda: sliding_window_inference(x, roi, sw, net, ov, mode, precision="auto")))
    if args.methods:
        keep = {int(i) for i in args.methods.split(",")} | {0}
        methods = [m for i, m in enumerate(methods) if i in keep]
    return methods


def _window_gflop(net: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...]) -> float:
    """GFLOP of the convolutions of one forward pass over one window (multiply-add = 2 FLOP)."""
    flops = [0.0]

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = math.prod(mod.kernel_size) * mod.in_channels * mod.out_channels // mod.groups
        vox = inp[0][0, 0].numel() if isinstance(mod, torch.nn.modules.conv._ConvTransposeNd) else out[0, 0].numel()
        flops[0] += 2.0 * k * vox * inp[0].shape[0]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        with torch.inference_mode():
            net(torch.zeros((1, x.shape[1], *roi), device=x.device))
    finally:
        for h in handles:
            h.remove()
    return flops[0] / 1e9


def _conv_peak(device: torch.device, repeats: int = 3) -> float:
    """GFLOP/s of a large, well-shaped conv3d (64 -> 64, 3^3, 2 x 24^3, oneDNN): this CPU's practical peak."""
    w = torch.randn(64, 64, 3, 3, 3, device=device)
    xi = torch.randn(2, 64, 24, 24, 24, device=device)
    gflop = 2 * 27 * 64 * 64 * 2 * 24**3 / 1e9
    best = float("inf")
    with torch.inference_mode():
        torch.nn.functional.conv3d(xi, w, padding=1)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.conv3d(xi, w, padding=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    return gflop / best


def _rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _child(args: argparse.Namespace) -> int:
    """Runs one method once in a fresh process and prints its peak memory (MiB) as JSON."""
    net, x, roi, device = _build(args)
    _, _, fn = _methods(args, net, x, roi)[args.child]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _rss_mib()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"base": base, "peak": peak, "seconds": elapsed}))
    return 0


def _measure_memory(index: int, argv: list[str]) -> dict[str, float]:
    """``{base, peak, seconds}`` (MiB, s) of method ``index`` run alone in a fresh process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", str(index)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of method {index} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_interleaved(
    methods: list[tuple[str, float, Callable[[], torch.Tensor]]], repeats: int, device: torch.device, warmup: bool
) -> tuple[list[list[float]], list[torch.Tensor]]:
    """Round-robin timing (method 1, 2, 3, ..., then again) so that machine noise and drift hit
    every method alike; one untimed warm-up call each first (its output is the one compared)."""
    outputs: list[torch.Tensor | None] = [None] * len(methods)
    if warmup:
        for i, (name, _, fn) in enumerate(methods):
            t0 = time.perf_counter()
            outputs[i] = fn()
            print(f"  warm-up {name.strip()}: {time.perf_counter() - t0:.2f} s", flush=True)
    times: list[list[float]] = [[] for _ in methods]
    for _ in range(repeats):
        for i, (_, _, fn) in enumerate(methods):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[i].append(time.perf_counter() - t0)
            if outputs[i] is None:
                outputs[i] = out
            del out
    return times, outputs  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", default=["128"], help="volume size: one int, D H W, or 'case' (brain-tumor)")
    parser.add_argument("--roi", type=int, nargs="+", default=None, help="window size (default: the model's, or 96)")
    parser.add_argument("--sw-batch", type=int, default=4, help="windows per network call")
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of the reference (and 'same' methods)")
    parser.add_argument("--mode", default="gaussian", help="blending of the reference (and 'same' methods)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed first run (big inputs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--net", choices=("brain-tumor", "unet", "none"), default="brain-tumor")
    parser.add_argument("--cases", default="/tmp/bt", help="generated brain-tumour cases (--net brain-tumor)")
    parser.add_argument("--in-channels", type=int, default=4, help="input channels (--net unet/none)")
    parser.add_argument("--methods", default="", help="comma-separated method indices to run (0, the reference, always)")
    parser.add_argument("--memory", action="store_true", help="also measure each method's peak RSS in a fresh process")
    parser.add_argument("--memory-only", action="store_true", help="only the per-method memory runs")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size != ["case"] and len(args.size) not in (1, 3):
        parser.error("--size takes one value, three, or 'case'")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        return _child(args)

    net, x, roi, device = _build(args)
    methods = _methods(args, net, x, roi)
    print(f"machine: {platform.machine()} {platform.processor() or ''} | {os.cpu_count()} CPUs | "
          f"torch {torch.__version__} threads {torch.get_num_threads()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    gflop = _window_gflop(net, x, roi) if args.net != "none" else 0.0
    print(f"net {args.net}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params, "
          f"{gflop:.2f} GFLOP per window | input {tuple(x.shape)} roi {roi} sw_batch {args.sw_batch}")

    if args.memory or args.memory_only:
        child_argv = [a for a in argv if a not in ("--memory", "--memory-only")]
        print(f"\n{'method (alone, fresh process)':42s} {'peak RSS MiB':>13s} {'+ over start':>13s} {'time s':>8s}")
        for i, (name, _, _) in enumerate(methods):
            mem = _measure_memory(i, child_argv)
            print(f"{name:42s} {mem['peak']:13.0f} {mem['peak'] - mem['base']:13.0f} {mem['seconds']:8.2f}", flush=True)
        if args.memory_only:
            return 0

    peak = _conv_peak(device) if args.net != "none" else float("nan")
    times, outputs = _time_interleaved(methods, args.repeats, device, warmup=not args.no_warmup)
    peak = max(peak, _conv_peak(device)) if args.net != "none" else peak

    ref_best = min(times[0])
    ref_out = outputs[0].float()
    ref_arg = ref_out.argmax(1)
    ref_dec = ref_out > 0
    ref_lab = _labels(ref_out) if args.net == "brain-tumor" else None
    print(f"\nconv3d peak (64->64, 3^3, 2x24^3, best of two measurements in this run): {peak:.1f} GFLOP/s")
    print(f"{'method':38s} {'best s':>8s} {'median s':>9s} {'speed-up':>9s} {'max|diff|':>10s} {'argmax':>8s} "
          f"{'regions':>8s} {'labels':>8s} {'WT Dice':>8s} {'windows':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for (name, ov, _), ts, out in zip(methods, times, outputs):
        out = out.float()
        diff = (out - ref_out).abs().max().item()
        agree = (out.argmax(1) == ref_arg).float().mean().item()
        dec = out > 0
        regions = (dec == ref_dec).all(1).float().mean().item()
        labels = float((_labels(out) == ref_lab).mean()) if ref_lab is not None else float("nan")
        inter = (dec[:, 0] & ref_dec[:, 0]).sum().item()
        denom = dec[:, 0].sum().item() + ref_dec[:, 0].sum().item()
        dice = 2 * inter / denom if denom else 1.0
        nwin = _WindowPlan.build(x.shape[2:], roi, [ov] * len(roi)).num_windows * x.shape[0]
        rate = gflop * nwin / min(ts)
        print(f"{name:38s} {min(ts):8.3f} {statistics.median(ts):9.3f} {ref_best / min(ts):8.2f}x {diff:10.2e} "
              f"{100 * agree:7.3f}% {100 * regions:7.3f}% {100 * labels:7.3f}% {dice:8.4f} {nwin:8d} {rate:8.1f} {100 * rate / peak:6.1f}%")
    print("\nspeed-up = MONAI best time / method best time (> 1: faster than MONAI); timings interleaved")
    print("argmax / regions / labels: voxels whose argmax / per-channel decision (logit > 0) / BraTS label "
          "(decoded from the regions, as the pipeline writes it) equals MONAI's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
