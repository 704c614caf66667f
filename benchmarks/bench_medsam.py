"""Side-by-side timing: MedSAM inference with segment-anything's modules vs medcnn's own.

One 2D slice, one box prompt, the full MedSAM ViT-B at 1024x1024, fp32 on the CPU:

* ``reference``: what a MedSAM user runs -- ``MedSAM_Inference.py``'s procedure on the
  ``segment_anything`` ``Sam`` (skimage resize of the 3-channel image to 1024, ``uint8`` cast,
  min-max to [0, 1], ``image_encoder`` under ``torch.no_grad()``, prompt encoder with the box,
  single-mask decoder, sigmoid, bilinear upsampling, threshold 0.5);
* ``ours``: ``medcnn.PromptableSegmenter.from_pretrained(ckpt)``, ``set_image`` + ``predict``.

Both use the same weights (random ViT-B weights from a fixed seed, relative position tables
included, saved to a temporary ``.pth`` that ours loads strictly), or ``--checkpoint`` (e.g. the
official ``medsam_vit_b.pth``). Per method: best and median wall time per slice over
``--repeats`` runs after one warm-up (methods take turns so that machine noise hits both),
the speed-up ratio (> 1 means ours is faster), the max abs difference of the probabilities and
the fraction of mask pixels that agree. Outputs must agree within ``--tol`` (1e-3).

segment-anything is not a medcnn dependency: ``pip install --no-deps segment-anything``
(torchvision, which it imports at module level, is stubbed when absent).

Examples::

    python benchmarks/bench_medsam.py                          # 512x512 slice, 2 repeats
    python benchmarks/bench_medsam.py --repeats 1 --threads 1  # busy machine
    python benchmarks/bench_medsam.py --checkpoint medsam_vit_b.pth --size 256 300
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcnn.prompt import PromptableSegmenter  # noqa: E402


def import_segment_anything() -> types.ModuleType:
    """``segment_anything.modeling``, with a temporary torchvision stub when it is absent."""
    try:
        importlib.import_module("torchvision")
        return importlib.import_module("segment_anything.modeling")
    except ImportError:
        pass
    stubs = {
        "torchvision": {},
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": None, "box_area": None},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"resize": None, "to_pil_image": None},
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    try:
        for name, attrs in stubs.items():
            module = types.ModuleType(name)
            for key, value in attrs.items():
                setattr(module, key, value)
            sys.modules[name] = module
        importlib.import_module("segment_anything")
        return importlib.import_module("segment_anything.modeling")
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def reference_model(checkpoint: Path | None, seed: int) -> torch.nn.Module:
    """segment_anything's ViT-B Sam: from ``checkpoint`` or random weights (seeded)."""
    importlib.import_module("segment_anything")
    build = importlib.import_module("segment_anything.build_sam")
    torch.manual_seed(seed)
    model = build.sam_model_registry["vit_b"]()
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    else:
        with torch.no_grad():  # SAM initialises the relative position tables to zero
            for name, p in model.named_parameters():
                if "rel_pos" in name:
                    p.normal_(0.0, 0.02)
    return model.eval()


def medsam_reference(model: torch.nn.Module, image: np.ndarray, box_xyxy: list[int]) -> torch.Tensor:
    """MedSAM_Inference.py's procedure on an ``(H, W)`` uint8 image: ``(H, W)`` probabilities."""
    from skimage import transform

    img_3c = np.repeat(image[:, :, None], 3, axis=-1)
    h, w, _ = img_3c.shape
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True)
    img_1024 = img_1024.astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    tensor = torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)
    box_1024 = np.array([box_xyxy]) / np.array([w, h, w, h]) * 1024
    with torch.no_grad():
        embedding = model.image_encoder(tensor)
        box = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        probs = F.interpolate(torch.sigmoid(low), size=(h, w), mode="bilinear", align_corners=False)
    return probs[0, 0]


def make_slice(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth 8-bit grey slice with a few bright blobs and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 40.0)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        img += rng.uniform(40, 120) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    img += rng.normal(0, 5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="slice H [W] (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="MedSAM/SAM ViT-B .pth (default: random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-3, help="max abs difference of the probabilities")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (args.size * 2)[:2]

    import_segment_anything()
    ref = reference_model(args.checkpoint, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or Path(tmp) / "vit_b_random.pth"
        if args.checkpoint is None:
            torch.save(ref.state_dict(), ckpt)
        seg = PromptableSegmenter.from_pretrained(ckpt)

    image = make_slice(h, w, args.seed)
    i0, j0, i1, j1 = h // 5, w // 4, (4 * h) // 5, (3 * w) // 4  # medcnn box, max exclusive

    def run_reference() -> torch.Tensor:
        return medsam_reference(ref, image, [j0, i0, j1 - 1, i1 - 1])

    def run_ours() -> torch.Tensor:
        seg.set_image(image[None])
        return torch.sigmoid(seg.predict(box=(i0, j0, i1, j1), return_logits=True))

    methods = {"reference": run_reference, "ours": run_ours}
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, torch.Tensor] = {}
    print(f"MedSAM ViT-B, 1024x1024 encoder input, slice {h}x{w}, fp32 CPU, {torch.get_num_threads()} thread(s)")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    for name, fn in methods.items():  # warm-up
        outputs[name] = fn()
    for _ in range(args.repeats):
        for name, fn in methods.items():
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
            print(f"  {name:9s} {seconds:8.2f} s", flush=True)
    diff = (outputs["ours"] - outputs["reference"]).abs().max().item()
    agree = ((outputs["ours"] > 0.5) == (outputs["reference"] > 0.5)).float().mean().item()
    best = {name: min(t) for name, t in times.items()}
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'method':9s} {'best s':>8s} {'median s':>9s}")
    for name in methods:
        print(f"{name:9s} {best[name]:8.2f} {med[name]:9.2f}")
    print(f"speed-up (reference / ours): best {best['reference'] / best['ours']:.2f}x, "
          f"median {med['reference'] / med['ours']:.2f}x")
    print(f"max |p_ours - p_reference| = {diff:.2e} (tol {args.tol:g}); mask agreement {100 * agree:.4f} %")
    if diff > args.tol:
        print("FAIL: outputs differ beyond the tolerance")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
