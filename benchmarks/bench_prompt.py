"""Interactive speed of the bundled light promptable model against issue #4's CPU targets, and against MedSAM.

    OMP_NUM_THREADS=1 python benchmarks/bench_prompt.py --threads 1 --repeats 30
    OMP_NUM_THREADS=1 python benchmarks/bench_prompt.py --threads 1 --medsam   # + a ViT-B MedSAM slice, side by side
    OMP_NUM_THREADS=1 python benchmarks/bench_prompt.py --threads 1 --compare-trace   # the CPU trace's options side by side

Measures on a generated 256 x 256 slice (a ``medcnn generate prompt``-style image, one object per
box): ``set_image`` (target <= 50 ms), ``predict`` with one box (<= 10 ms per prompt; also declared exact), with four
boxes at once (per prompt), box + click + prior refinement, and a 3D box through 64 slices of
256 x 256 (<= 3 s). ``--medsam`` also runs the same 256 x 256 slice through the full ViT-B MedSAM
path (random weights in the official layout; the time does not depend on the weights) and prints
the ratio. ``--compare-trace`` times ``predict`` (one box) with the CPU trace as shipped (channels-last
layout, oneDNN Graph fusion) against the plain NCHW trace and each option alone, interleaved, and
checks that the logits agree. Median of ``--repeats`` runs after a warm-up; timings include everything a user call
does (validation, crop, network, paste back).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def _compare_trace(seg, img, box, repeats: int) -> None:
    """``predict`` with the CPU trace's options (``optimised_cpu_network``), interleaved rounds."""
    from medcnn.inference.tta import mirror_predictor
    from medcnn.prompt.lite import optimised_cpu_network

    be = seg.backend
    options = {"plain NCHW trace": (False, False), "channels-last": (True, False), "oneDNN fusion": (False, True),
               "channels-last + oneDNN fusion (shipped)": (True, True)}
    runs = {}
    for name, (cl, fusion) in options.items():
        run = optimised_cpu_network(be.net, be.spec.in_channels, be.spec.size, channels_last=cl, onednn_fusion=fusion)
        runs[name] = mirror_predictor(run, be.tta_axes, batched=True) if be.tta else run
    seg.set_image(img)
    logits, times = {}, {name: [] for name in runs}
    for _ in range(5):  # interleaved rounds: drifts of a shared machine hit all alike
        for name, run in runs.items():
            be._run = run
            logits[name] = seg.predict(box=box, return_logits=True)
            times[name].append(_time(lambda: seg.predict(box=box), max(1, repeats // 5))[0])
    base = next(iter(runs))
    ref = statistics.median(times[base]) * 1e3
    print(f"predict, one box, interleaved ({seg.backend.spec.size} px crops):")
    for name in runs:
        med = statistics.median(times[name]) * 1e3
        diff = float((logits[name] - logits[base]).abs().max())
        print(f"  {name:42s}{med:8.2f} ms median  {ref / med:5.2f}x   largest logit difference {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled medcnn-prompt)")
    ap.add_argument("--medsam", action="store_true", help="also time the ViT-B MedSAM path on the same slice")
    ap.add_argument("--compare-trace", action="store_true",
                    help="also time predict with the CPU trace's options (layout, oneDNN fusion) side by side, interleaved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    from medcnn.prompt import PromptableSegmenter
    from medcnn.synth.prompt import make_case

    from scipy import ndimage as ndi

    case = make_case(np.random.default_rng([7, 0, 77]), "shapes")
    img = torch.from_numpy(np.ascontiguousarray(ndi.zoom(case["image"], (256 / case["image"].shape[0], 256 / case["image"].shape[1]),
                                                         order=1)))[None]
    lab = ndi.zoom(case["labels"], (256 / case["labels"].shape[0], 256 / case["labels"].shape[1]), order=0)
    boxes = []
    for v in range(1, int(lab.max()) + 1):
        rows, cols = np.nonzero((lab == v).any(1))[0], np.nonzero((lab == v).any(0))[0]
        if len(rows):
            boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    box = boxes[0]
    seg = PromptableSegmenter.from_pretrained(args.model)
    print(f"model {seg.name} ({sum(p.numel() for p in seg.backend.net.parameters()) / 1e6:.2f}M parameters), "
          f"crop {seg.backend.spec.size}, torch threads {torch.get_num_threads()}, image {tuple(img.shape)}")

    t_set, b_set = _time(lambda: seg.set_image(img), args.repeats)
    seg.set_image(img)
    t_one, b_one = _time(lambda: seg.predict(box=box), args.repeats)
    t_exact, b_exact = _time(lambda: seg.predict(box=box, exact_box=True), args.repeats)
    four = (boxes * 4)[:4]
    t_four, b_four = _time(lambda: seg.predict(box=four), args.repeats)
    logits = seg.predict(box=box, return_logits=True)
    ci, cj = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    t_ref, b_ref = _time(lambda: seg.predict(box=box, points=[(ci, cj)], labels=[1], mask_input=logits), args.repeats)

    vol = img[:, None].repeat(1, 64, 1, 1) * torch.linspace(0.9, 1.1, 64)[None, :, None, None]
    box3d = (0, box[0], box[1], 64, box[2], box[3])

    def run3d():
        seg.set_image(vol)
        return seg.predict(box=box3d)

    t_3d, b_3d = _time(run3d, max(3, args.repeats // 10))
    n_slices = int(run3d().any(-1).any(-1).sum())

    rows = [
        ("set_image, 256x256 slice", t_set * 1e3, b_set * 1e3, "ms", 50),
        ("predict, one box", t_one * 1e3, b_one * 1e3, "ms", 10),
        ("predict, one box declared exact (exact_box=True)", t_exact * 1e3, b_exact * 1e3, "ms", 10),
        ("predict, 4 boxes at once (per prompt)", t_four / 4 * 1e3, b_four / 4 * 1e3, "ms", 10),
        ("predict, box + click + prior", t_ref * 1e3, b_ref * 1e3, "ms", 10),
        (f"3D box through 64 slices of 256x256 ({n_slices} segmented)", t_3d, b_3d, "s", 3),
    ]
    print(f"{'':58s}{'median':>10s}{'best':>10s}{'target':>10s}")
    for name, med, best, unit, target in rows:
        ok = "meets" if med <= target else "MISSES"
        print(f"{name:58s}{med:9.2f}{unit:>1s}{best:9.2f}{unit:>1s}  <= {target} {unit}  {ok}")

    if args.compare_trace:
        _compare_trace(seg, img, box, args.repeats)

    if args.medsam:
        from medcnn.prompt import MedSAMBackend, build_sam

        sam = MedSAMBackend(build_sam("vit_b").eval())
        ref = PromptableSegmenter(sam, name="medsam-vit-b")

        def medsam_slice():
            ref.set_image(img)
            return ref.predict(box=box)

        def lite_slice():
            seg.set_image(img)
            return seg.predict(box=box)

        t_ms, _ = _time(medsam_slice, 1)
        t_li, _ = _time(lite_slice, args.repeats)
        print(f"one slice, set_image + one box: MedSAM ViT-B {t_ms:.2f} s, light model {t_li * 1e3:.1f} ms: "
              f"{t_ms / t_li:.0f}x faster")


if __name__ == "__main__":
    main()
