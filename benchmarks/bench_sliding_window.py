"""Side-by-side timing: medcnn.sliding_window_inference vs monai.inferers.sliding_window_inference.

Same network (MONAI UNet, channels (16, 32, 64, 128, 256), 4 inputs, 3 outputs, random weights
from a fixed seed), same input volume, same window grid. The reference is what a MONAI user
runs: ``sliding_window_inference(x, roi, sw_batch, net, overlap=0.5, mode="gaussian")`` in fp32
under ``torch.no_grad()`` (as in MONAI's tutorials). Compared against it:

* ``ours fp32``: the same settings, ``precision="fp32"`` (must agree to 1e-4);
* ``ours auto``: the same settings, ``precision="auto"`` (bf16/fp16 where the device has it);
* ``ours defaults``: the call with nothing but the positional arguments (overlap 0.25,
  constant blending, fp32) -- a different blending, so only argmax agreement is meaningful.

For each: best and median wall time over ``--repeats`` runs (after one warm-up run; the methods
take turns so that machine noise hits all alike), speed-up ratio over MONAI (> 1 means faster),
max abs difference to MONAI's output, argmax agreement, and peak memory of the method run alone
in a fresh process (peak RSS on CPU, ``max_memory_allocated`` on CUDA), with its increase over
the process before the call (network, input and libraries loaded). Absolute times are only
meaningful for GPU runs (DESIGN §6); quote the ratios.

Examples::

    python benchmarks/bench_sliding_window.py                       # 128^3, roi 96, CPU
    python benchmarks/bench_sliding_window.py --size 64 --roi 48 --repeats 1   # smoke run
    python benchmarks/bench_sliding_window.py --size 256 --device cuda
    python benchmarks/bench_sliding_window.py --size 512 512 300 --device cuda --sw-batch 4
    python benchmarks/bench_sliding_window.py --net none --size 256     # engine overhead alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.inferers import sliding_window_inference as monai_swi  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

from medcnn.inference import resolve_precision, sliding_window_inference  # noqa: E402


class _FirstChannels(torch.nn.Module):
    """``x[:, :n]`` (a view): a predictor that costs nothing."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n]


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, tuple[int, ...], torch.device]:
    """The network and input every method (and every child process) gets: same seed, same data."""
    roi = tuple(args.roi * 3 if len(args.roi) == 1 else args.roi)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.net == "unet":
        net = UNet(3, 4, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    else:  # a free predictor: what remains is the cost of the sliding-window engine itself
        net = _FirstChannels(3)
    net = net.to(device).eval()
    size = tuple(args.size * 3 if len(args.size) == 1 else args.size)
    x = torch.randn((1, 4, *size), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    return net, x, roi, device


def _methods(
    args: argparse.Namespace, net: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...]
) -> list[tuple[str, Callable[[], torch.Tensor]]]:
    def run_monai() -> torch.Tensor:
        with torch.no_grad():
            return monai_swi(x, roi, args.sw_batch, net, overlap=args.overlap, mode="gaussian")

    auto_dtype = resolve_precision("auto", x.device)
    auto_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[auto_dtype]
    return [
        (f"monai  overlap {args.overlap} gaussian fp32", run_monai),
        ("ours   same settings, fp32",
         lambda: sliding_window_inference(x, roi, args.sw_batch, net, args.overlap, "gaussian", precision="fp32")),
        (f"ours   same settings, auto -> {auto_name}",
         lambda: sliding_window_inference(x, roi, args.sw_batch, net, args.overlap, "gaussian", precision="auto")),
        ("ours   defaults (0.25, constant, fp32)", lambda: sliding_window_inference(x, roi, args.sw_batch, net)),
    ]


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
    _, fn = _methods(args, net, x, roi)[args.child]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _rss_mib()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"base": base, "peak": peak}))
    return 0


def _measure_memory(args: argparse.Namespace, index: int, argv: list[str]) -> tuple[float, float]:
    """``(baseline, peak)`` MiB of method ``index`` run alone in a fresh process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", str(index)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of method {index} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["base"], result["peak"]


def _time_interleaved(
    methods: list[tuple[str, Callable[[], torch.Tensor]]], repeats: int, device: torch.device
) -> tuple[list[list[float]], list[torch.Tensor]]:
    """Round-robin timing (method 1, 2, 3, ..., then again) so that machine noise and drift hit
    every method alike; one untimed warm-up call each first."""
    outputs = []
    for name, fn in methods:
        t0 = time.perf_counter()
        outputs.append(fn())
        print(f"  warm-up {name.strip()}: {time.perf_counter() - t0:.2f} s", flush=True)
    times: list[list[float]] = [[] for _ in methods]
    for _ in range(repeats):
        for i, (_, fn) in enumerate(methods):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[i].append(time.perf_counter() - t0)
    return times, outputs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="volume size: one int or D H W")
    parser.add_argument("--roi", type=int, nargs="+", default=[96], help="window size: one int or 3")
    parser.add_argument("--sw-batch", type=int, default=4, help="windows per network call")
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of the MONAI reference")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (after a warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--net", choices=("unet", "none"), default="unet",
                        help="unet: MONAI UNet (16..256); none: a free predictor (x[:, :3]) to time the engine alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory runs")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 3) or len(args.roi) not in (1, 3):
        parser.error("--size and --roi take one value or three")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        return _child(args)

    net, x, roi, device = _build(args)
    methods = _methods(args, net, x, roi)
    print(f"machine: {platform.machine()} {platform.processor() or ''} | {os.cpu_count()} CPUs | "
          f"torch {torch.__version__} threads {torch.get_num_threads()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if args.net == "unet":
        net_txt = f"MONAI UNet (16,32,64,128,256) 4->3, {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params"
    else:
        net_txt = "free predictor x[:, :3] (engine cost only)"
    print(f"input {tuple(x.shape)} roi {roi} sw_batch {args.sw_batch} repeats {args.repeats} | {net_txt}")

    memory: list[tuple[float, float] | None] = [None] * len(methods)
    if not args.no_memory:
        for i, (name, _) in enumerate(methods):
            memory[i] = _measure_memory(args, i, argv)
            print(f"  memory run {name.strip()}: peak {memory[i][1]:.0f} MiB", flush=True)

    times, outputs = _time_interleaved(methods, args.repeats, device)

    ref_best = min(times[0])
    ref_out = outputs[0].float()
    ref_arg = ref_out.argmax(1)
    kind = "GPU alloc" if device.type == "cuda" else "RSS"
    print()
    print(f"{'method':42s} {'best s':>8s} {'median s':>9s} {'speed-up':>9s} {'max|diff|':>10s} "
          f"{'argmax agree':>13s} {'peak ' + kind + ' MiB':>16s}")
    for (name, _), ts, out, mem in zip(methods, times, outputs, memory):
        diff = (out.float() - ref_out).abs().max().item()
        agree = (out.argmax(1) == ref_arg).float().mean().item()
        mem_txt = "-" if mem is None else f"{mem[1]:.0f} (+{mem[1] - mem[0]:.0f})"
        print(f"{name:42s} {min(ts):8.3f} {statistics.median(ts):9.3f} {ref_best / min(ts):8.2f}x "
              f"{diff:10.2e} {100 * agree:12.3f}% {mem_txt:>16s}")
    print("\nspeed-up = MONAI best time / method best time (> 1: faster than MONAI); timings interleaved")
    print(f"peak memory: each method alone in a fresh process, total (+ over the process before the call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
