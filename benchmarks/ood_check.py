"""Check the bundled models' out-of-distribution flags on inputs they must flag and inputs they must not.

Wrong inputs are built from real files shipped in installed packages (pydicom's test files, nibabel's and
nilearn's data, skimage.data photos) and from synthesized limb radiographs, hand radiographs and ultrasound
fans; the held-out sets (training generator, new seed) and generator-B sets are given as folders. Nothing here
is used to fit or calibrate: the thresholds come from ``medcnn ood-fit`` on training-generator cases only.

    python -m benchmarks.ood_check build /tmp/ood_wrong
    python -m benchmarks.ood_check run alzheimer /tmp/ood_wrong/alzheimer/* data/ad_hold data/ad_genb -o /tmp/ood_runs

``run`` prints, per input folder, how many cases were flagged (``ood`` true) out of those scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-12)


def _png(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(a, sigma)


def limb_radiograph(rng: np.random.Generator, hand: bool = False, shape: tuple[int, int] = (560, 440)) -> np.ndarray:
    """A synthetic limb radiograph (bright bones in a soft-tissue band on a dark field), ``(H, W)`` in [0, 255]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full(shape, 0.05)
    angle = rng.uniform(-0.25, 0.25)
    u = (xx - w / 2) * np.cos(angle) - (yy - h / 2) * np.sin(angle)  # across the limb
    v = (xx - w / 2) * np.sin(angle) + (yy - h / 2) * np.cos(angle)  # along it
    if hand:
        palm = (np.abs(u) < 0.3 * w) & (v > 0.0)
        img[palm] = 0.35
        for k in range(5):
            cu = (-0.24 + 0.12 * k) * w
            finger = (np.abs(u - cu) < 0.045 * w) & (v < 0.0) & (v > -rng.uniform(0.25, 0.42) * h)
            img[finger] = 0.35
            for seg in range(3):
                lo, hi = -0.12 * h * (seg + 1), -0.12 * h * seg - 0.01 * h
                bone = (np.abs(u - cu) < 0.02 * w) & (v > lo) & (v < hi) & finger
                img[bone] = 0.8
        for k in range(5):
            meta = (np.abs(u - (-0.24 + 0.12 * k) * w) < 0.022 * w) & (v > 0.02 * h) & (v < 0.3 * h)
            img[meta] = 0.8
    else:
        half = rng.uniform(0.18, 0.3) * w
        img[np.abs(u) < half] = rng.uniform(0.3, 0.45)
        bones = [0.0] if rng.random() < 0.5 else [-0.35 * half, 0.35 * half]
        joint = rng.uniform(-0.2, 0.2) * h
        for c in bones:
            r = rng.uniform(0.12, 0.22) * half
            r_v = r * (1 + 0.8 * np.exp(-((np.abs(v - joint) - 0.04 * h) / (0.05 * h)) ** 2))
            shaft = (np.abs(u - c) < r_v) & (np.abs(v - joint) > 0.012 * h)
            img[shaft] = 0.9
            img[shaft & (np.abs(u - c) < 0.55 * r_v)] = 0.7  # medullary canal
    img = _blur(img, 2.0) + rng.normal(0, 0.02, shape)
    coll = rng.integers(0, 40, 4)
    img[: coll[0]], img[h - coll[1]:], img[:, : coll[2]], img[:, w - coll[3]:] = 0.9, 0.9, 0.9, 0.9
    return 255 * _norm(img)


def ultrasound_fan(rng: np.random.Generator, colour: bool = False, shape: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A synthetic ultrasound frame: a speckled sector on black (``(H, W)``, or ``(H, W, 3)`` with Doppler colour)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(xx - w / 2, yy + 0.05 * h)
    th = np.arctan2(xx - w / 2, yy + 0.05 * h)
    span = rng.uniform(0.5, 0.8)
    fan = (np.abs(th) < span) & (r > 0.12 * h) & (r < 0.95 * h)
    tissue = 0.5 + 0.3 * _blur(rng.normal(0, 1, shape), 12)
    for _ in range(rng.integers(1, 4)):
        cy, cx, rad = rng.uniform(0.3, 0.8) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.04, 0.1) * h
        tissue[np.hypot(xx - cx, yy - cy) < rad] = 0.05
    speckle = rng.rayleigh(1.0, shape)
    img = np.where(fan, np.clip(tissue, 0, 1) * speckle * np.exp(-r / (1.5 * h)), 0.0)
    img = 255 * _norm(_blur(img, 0.8))
    if not colour:
        return img
    rgb = np.repeat(img[..., None], 3, axis=2)
    cy, cx = rng.uniform(0.4, 0.7) * h, rng.uniform(0.4, 0.6) * w
    blob = (np.hypot(xx - cx, yy - cy) < 0.08 * h) & fan
    rgb[blob] = [220, 30, 30] if rng.random() < 0.5 else [30, 60, 230]
    return rgb


def _mni(name: str) -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"


def _save_nii(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))


def build(out: Path, seed: int = 0, held_out: Path | None = None) -> dict[str, int]:
    """Write the wrong inputs under ``out/{alzheimer,brain-tumor,chest-xray}/<kind>/``; returns counts per kind.

    Args:
        out: destination folder.
        seed: synthesized images.
        held_out: a generated alzheimer set (BIDS) whose T1s are cropped for the cropped-field-of-view kind.
    """
    import nibabel as nib
    import pydicom
    import skimage.data
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    cx = out / "chest-xray"
    for i in range(10):
        _png(cx / "limb" / f"limb{i:02d}.png", limb_radiograph(rng))
        _png(cx / "hand" / f"hand{i:02d}.png", limb_radiograph(rng, hand=True))
        _png(cx / "ultrasound_png" / f"us{i:02d}.png", ultrasound_fan(rng, colour=i % 2 == 1))
    for name in ("astronaut", "chelsea", "coffee", "camera", "moon", "coins", "text", "page"):
        _png(cx / "photo_png" / f"{name}.png", getattr(skimage.data, name)())
    _png(cx / "ct_mr_png" / "shepp_logan.png", 255 * _norm(skimage.data.shepp_logan_phantom()))
    for f in ("CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "examples_overlay.dcm"):
        _png(cx / "ct_mr_png" / f"{Path(f).stem}.png", 255 * _norm(pydicom.dcmread(get_testdata_file(f)).pixel_array))
    t1 = nib.load(str(_mni("t1")))
    vol = np.asarray(t1.dataobj, dtype=np.float64)
    for ax in range(3):
        sl = np.take(vol, vol.shape[ax] // 2 + 10, axis=ax)
        _png(cx / "ct_mr_png" / f"mni_t1_axis{ax}.png", 255 * _norm(np.rot90(sl)))
    dcm = cx / "dicom"
    dcm.mkdir(parents=True, exist_ok=True)
    for f in ("CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "examples_overlay.dcm", "examples_rgb_color.dcm",
              "examples_jpeg2k.dcm", "SC_rgb_jpeg.dcm", "JPEG2000.dcm"):
        (dcm / f).write_bytes(Path(get_testdata_file(f)).read_bytes())

    ad = out / "alzheimer"
    for name in ("gm", "wm"):
        img = nib.load(str(_mni(name)))
        _save_nii(ad / "tissue_map" / f"mni_{name}_1mm.nii.gz", np.asarray(img.dataobj), img.affine)
    import medcnn.data

    for name in ("gm", "wm"):  # the vendored 2 mm maps
        p = Path(medcnn.data.__file__).parent / "mni152" / f"mni152_{name}_2mm.nii.gz"
        img = nib.load(str(p))
        _save_nii(ad / "tissue_map" / f"vendored_{name}_2mm.nii.gz", np.asarray(img.dataobj), img.affine)
    gm = np.asarray(nib.load(str(_mni("gm"))).dataobj, dtype=np.float64)
    wm = np.asarray(nib.load(str(_mni("wm"))).dataobj, dtype=np.float64)
    brain = _blur((gm + wm) > 0.3, 1.0)
    head = _blur(vol > 0.1 * vol.max(), 1.5) > 0.5
    for i in range(3):  # CT-like head: air -1000, soft tissue 40, brain 30-40, skull 1000+ (HU), integer typed
        skull = head & (_blur(brain.astype(float), 3.0) < 0.2)
        hu = np.where(head, 40.0, -1000.0) + np.where(skull, rng.uniform(700, 1400), 0.0)
        hu = np.where(brain > 0.5, 30 + 8 * wm / max(wm.max(), 1e-6) + rng.normal(0, 4, vol.shape), hu)
        _save_nii(ad / "ct" / f"ct_head{i}.nii.gz", np.round(hu + 1024.0 * (i == 2)), t1.affine)
    for i in range(3):  # other MR contrasts of the same anatomy: T2-like and FLAIR-like (inverted tissue order)
        t2 = np.where(head, 0.4 + 0.9 * (1 - gm - wm).clip(0, 1) * (brain > 0.2) + 0.5 * gm - 0.2 * wm, 0.0)
        _save_nii(ad / "other_contrast" / f"t2like{i}.nii.gz", 1000 * t2.clip(0) + rng.normal(0, 5 * (i + 1), vol.shape),
                  t1.affine)
    if held_out is not None:
        t1s = sorted(held_out.glob("sub-*/**/anat/*_T1w.nii.gz"))[:10]
        for k, p in enumerate(t1s):
            img = nib.load(str(p))
            data = np.asarray(img.dataobj)
            ax = k % 3
            keep = [slice(None)] * 3
            n = data.shape[ax]
            keep[ax] = slice(int(0.45 * n), n) if k % 2 else slice(0, int(0.55 * n))
            _save_nii(ad / "cropped_fov" / f"crop{k:02d}.nii.gz", data[tuple(keep)],
                      img.slicer[tuple(keep)].affine)
    bt = out / "brain-tumor"
    for i in range(4):  # non-brain volumes: a body (trunk) phantom and a limb, four "contrasts" each
        shape = (160, 120, 80) if i < 2 else (80, 80, 160)
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        if i < 2:
            body = (zz ** 2 / 0.8 + yy ** 2 / 0.6) < 1
            organs = [((zz - rng.uniform(-0.4, 0.4)) ** 2 + (yy - rng.uniform(-0.3, 0.3)) ** 2 + xx ** 2 * 0.3) < 0.05
                      for _ in range(4)]
        else:
            body = (zz ** 2 + yy ** 2) < 0.5
            organs = [(zz ** 2 + yy ** 2) < 0.04]
        case = bt / "non_brain" / f"Body-{i:02d}"
        case.mkdir(parents=True, exist_ok=True)
        aff = np.diag([2.5, 2.5, 3.0, 1.0])
        for c, suffix in enumerate(("t1n", "t1c", "t2w", "t2f")):
            v = np.where(body, rng.uniform(200, 600), 0.0)
            for o in organs:
                v = np.where(o & body, rng.uniform(100, 1200), v)
            v = _blur(v, 1.0) + rng.normal(0, 10, shape) * body
            _save_nii(case / f"{case.name}-{suffix}.nii.gz", v.clip(0), aff)
    case = bt / "one_contrast_x4" / "MNI-T1x4"  # a brain, but one T1 given for all four contrasts
    case.mkdir(parents=True, exist_ok=True)
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        _save_nii(case / f"{case.name}-{suffix}.nii.gz", vol, t1.affine)
    for kind in sorted({p.parent.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}):
        counts[kind] = sum(1 for _ in (out / kind).iterdir())
    return counts


def run(pipeline: str, folders: list[Path], out: Path, models: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Run ``medcnn predict PIPELINE`` on each folder; per folder, how many ok cases were flagged."""
    from medcnn.batch import run_batch
    from medcnn.pipelines import get_pipeline, load_models

    pipe = get_pipeline(pipeline)
    model, info = load_models(pipe, models or None)
    result = {}
    for folder in folders:
        dest = out / pipeline / folder.name
        run_batch(pipe, model, [folder], dest, overwrite=True, model_info=info, progress=False)
        with open(dest / "summary.csv", newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
        flagged = [r["case"] for r in rows if r.get("ood") == "true"]
        result[str(folder)] = {"ok": len(rows), "flagged": len(flagged),
                               "not_flagged": [r["case"] for r in rows if r.get("ood") != "true"][:10]}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ood_check", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the wrong inputs")
    b.add_argument("out", type=Path)
    b.add_argument("--held-out", type=Path, default=None, help="generated alzheimer set to crop (cropped field of view)")
    r = sub.add_parser("run", help="predict on folders and count the flags")
    r.add_argument("pipeline")
    r.add_argument("folders", nargs="+", type=Path)
    r.add_argument("-o", "--out", type=Path, required=True)
    r.add_argument("--model", action="append", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.cmd == "build":
        res = build(args.out, held_out=args.held_out)
    else:
        res = run(args.pipeline, args.folders, args.out, args.model)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
