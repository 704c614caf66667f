"""2D images with object label maps for training and testing promptable segmentation.

Each case is one grey image and a label map of non-overlapping objects (``1..K``, 0 background);
a box or click around any one object is a prompt, its label the answer. Three sources, mixed:

* ``shapes``: textured backgrounds with ellipses, rounded rectangles, stars, smooth blobs,
  rings, crescents and curved tubes, brighter or darker than their surroundings or only
  different in texture, with soft edges; noise Gaussian, Rician-like or multiplicative speckle
  (ultrasound-like), bias fields, blur, gamma, inversion;
* ``brain``: slices (axial, coronal or sagittal) through the MNI152 tissue maps shipped with
  the package (:mod:`medcnn.synth.anatomy`), rendered with T1-, T2- or FLAIR-like tissue
  contrasts, rotated and scaled; objects are the brain, or the ventricles, hippocampi, deep
  grey matter, cerebellum, brainstem and added lesions (connected components per slice);
* ``chest``: radiographs of :func:`medcnn.synth.chest_xray.make_case`; objects are each lung,
  the heart and the visible findings (nodules, consolidations, effusions).

Layout of ``out_dir``::

    images/prompt-00001.png   16-bit grey image
    masks/prompt-00001.png    8-bit label map, same size
    manifest.csv              case, subject, image, label, source, objects

Case ``i`` depends only on ``(seed, i)``, so files left by an interrupted run are kept and a
larger ``n`` extends a smaller set. Every case is its own subject.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medcnn.io.atomic import write_csv_atomic, write_png_atomic

logger = logging.getLogger(__name__)

SOURCES = ("shapes", "brain", "chest")
_SOURCE_P = (0.45, 0.3, 0.25)
# Objects smaller than this many pixels are not annotated (a box prompt around them is degenerate).
_MIN_OBJECT_PX = 40


# ----------------------------------------------------------------------------- helpers


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (float32)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    s = float(f.std())
    return (f - f.mean()) / (s if s > 0 else 1.0)


def _place(labels: np.ndarray, obj: np.ndarray, max_overlap: float = 0.02) -> bool:
    """Write ``obj`` as the next label where free; refuse it when it overlaps drawn objects, is too small,
    or would be left in pieces (an object cut apart by one drawn earlier is not what a box asks for)."""
    area = int(obj.sum())
    if area < _MIN_OBJECT_PX:
        return False
    if int((obj & (labels > 0)).sum()) > max_overlap * area:
        return False
    free = obj & (labels == 0)
    n_free = int(free.sum())
    if n_free < _MIN_OBJECT_PX:
        return False
    lab, n = ndi.label(free)
    if n > 1 and float(np.bincount(lab.ravel())[1:].max()) < 0.95 * n_free:
        return False
    labels[free] = labels.max() + 1
    return True


def _finish(rng: np.random.Generator, img: np.ndarray, *, speckle: bool = False) -> np.ndarray:
    """Acquisition look: bias field, blur, noise, gamma, optional inversion; returns [0, 1] float32."""
    h, w = img.shape
    if rng.random() < 0.5:
        img = img * (1.0 + rng.uniform(0.05, 0.35) * _smooth_field(rng, (h, w), rng.uniform(40, 90)))
    if rng.random() < 0.5:
        img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.5))
    kind = rng.choice(["gauss", "rician", "speckle"], p=[0.5, 0.25, 0.25]) if not speckle else "speckle"
    sd = float(rng.uniform(0.005, 0.05))
    if kind == "gauss":
        img = img + sd * rng.standard_normal(img.shape)
    elif kind == "rician":
        img = np.hypot(img + sd * rng.standard_normal(img.shape), sd * rng.standard_normal(img.shape))
    else:
        grain = ndi.gaussian_filter(rng.standard_normal(img.shape), rng.uniform(0.6, 1.5))
        img = img * (1.0 + rng.uniform(0.1, 0.35) * grain / max(float(grain.std()), 1e-6))
    lo, hi = np.percentile(img, [0.5, 99.5])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    img = img ** float(np.exp(rng.uniform(-0.5, 0.5)))
    if rng.random() < 0.1:
        img = 1.0 - img
    return img.astype(np.float32)


# ----------------------------------------------------------------------------- shapes


def _shape_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """One random object (bool mask) somewhere in the image."""
    h, w = shape
    d = float(np.exp(rng.uniform(np.log(12), np.log(0.6 * min(h, w)))))  # equivalent diameter, px
    ci, cj = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float32)
    th = rng.uniform(0, np.pi)
    u = (ii - ci) * math.cos(th) + (jj - cj) * math.sin(th)
    v = -(ii - ci) * math.sin(th) + (jj - cj) * math.cos(th)
    aspect = float(np.exp(rng.uniform(-0.9, 0.9)))
    a, b = d / 2 * math.sqrt(aspect), d / 2 / math.sqrt(aspect)
    kind = rng.choice(["ellipse", "superellipse", "star", "blob", "ring", "crescent", "tube"],
                      p=[0.2, 0.12, 0.16, 0.2, 0.1, 0.1, 0.12])
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "superellipse":
        p = rng.uniform(3, 8)
        return np.abs(u / a) ** p + np.abs(v / b) ** p <= 1
    if kind == "star":
        r = np.hypot(u / a, v / b)
        ang = np.arctan2(v, u)
        radial = np.ones_like(ang)
        for k in range(2, 7):
            radial += rng.uniform(0, 0.25 / k * 2) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
        return r <= radial
    if kind == "blob":
        win = _smooth_field(rng, (h, w), max(2.0, d / 6))
        env = 1.0 - ((u / (1.3 * a)) ** 2 + (v / (1.3 * b)) ** 2)
        m = (win * 0.6 + 2.0 * env) > 0.8
        lab, n = ndi.label(m)
        if n == 0:
            return m
        sizes = ndi.sum(m, lab, range(1, n + 1))
        return lab == (1 + int(np.argmax(sizes)))
    if kind == "ring":
        r = np.hypot(u / a, v / b)
        return (r <= 1) & (r >= rng.uniform(0.45, 0.8))
    if kind == "crescent":
        outer = (u / a) ** 2 + (v / b) ** 2 <= 1
        s = rng.uniform(0.3, 0.6)
        inner = ((u - s * a) / (0.9 * a)) ** 2 + (v / (0.9 * b)) ** 2 <= 1
        return outer & ~inner
    # tube: a thick curve along a random smooth path
    n = 6
    t = np.linspace(0, 1, n)
    length = d * rng.uniform(1.5, 3.0)
    pts = np.stack([ci + (t - 0.5) * length * math.cos(th), cj + (t - 0.5) * length * math.sin(th)], 1)
    pts += rng.normal(0, 0.15 * length, pts.shape)
    tt = np.linspace(0, 1, 200)
    path = np.stack([np.interp(tt, t, pts[:, 0]), np.interp(tt, t, pts[:, 1])], 1)
    path = ndi.gaussian_filter1d(path, 8, axis=0, mode="nearest")
    m = np.zeros((h, w), bool)
    idx = np.round(path).astype(int)
    ok = (idx[:, 0] >= 0) & (idx[:, 0] < h) & (idx[:, 1] >= 0) & (idx[:, 1] < w)
    m[idx[ok, 0], idx[ok, 1]] = True
    return ndi.distance_transform_edt(~m) <= max(3.0, d / rng.uniform(4, 8))


def _shapes_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(rng.integers(192, 321)), int(rng.integers(192, 321))
    img = 0.5 + rng.uniform(0.03, 0.15) * _smooth_field(rng, (h, w), rng.uniform(8, 50))
    if rng.random() < 0.5:  # fine background texture
        img = img + rng.uniform(0.02, 0.06) * _smooth_field(rng, (h, w), rng.uniform(0.8, 3))
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float32)
    img = img + rng.uniform(-0.2, 0.2) * (ii / h - 0.5) + rng.uniform(-0.2, 0.2) * (jj / w - 0.5)
    labels = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        m = _shape_mask(rng, (h, w))
        if not _place(labels, m, max_overlap=0.02 if rng.random() < 0.8 else 0.5):
            continue
        obj = labels == labels.max()
        soft = ndi.gaussian_filter(obj.astype(np.float32), rng.uniform(0.3, 2.0))
        contrast = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)
        if rng.random() < 0.1:  # texture-defined object: small mean difference, different grain
            contrast *= 0.4
            tex = rng.uniform(0.1, 0.25) * _smooth_field(rng, (h, w), rng.uniform(0.7, 2.5))
            img = img + soft * tex
        inner = contrast * (1.0 + rng.uniform(0, 0.3) * _smooth_field(rng, (h, w), rng.uniform(3, 15)))
        img = img + soft * inner
    return _finish(rng, img, speckle=rng.random() < 0.2), labels


# ----------------------------------------------------------------------------- brain


_CONTRASTS = {  # tissue intensities: csf, gm, wm, background
    "t1": (0.15, 0.5, 0.8, 0.02),
    "t2": (0.95, 0.6, 0.4, 0.02),
    "flair": (0.1, 0.62, 0.45, 0.02),
    "pd": (0.75, 0.7, 0.55, 0.02),
}


def _brain_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from medcnn.synth.anatomy import _load_cached

    anat = _load_cached()
    axis = int(rng.choice([0, 1, 2], p=[0.25, 0.3, 0.45]))
    inside = anat.brain > 0.5
    extent = np.nonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    lo, hi = extent[0], extent[-1]
    k = int(rng.integers(lo + int(0.15 * (hi - lo)), hi - int(0.12 * (hi - lo))))
    take = lambda a: np.take(a, k, axis=axis).astype(np.float32)  # noqa: E731
    gm, wm, csf, brain = take(anat.gm), take(anat.wm), take(anat.csf), take(anat.brain)
    c_csf, c_gm, c_wm, c_bg = (v + rng.normal(0, 0.05) for v in _CONTRASTS[str(rng.choice(list(_CONTRASTS)))])
    img = c_csf * csf + c_gm * gm + c_wm * wm + c_bg * (1 - brain)
    if rng.random() < 0.6:  # scalp/skull ring around the brain
        outer = ndi.binary_dilation(brain > 0.3, iterations=int(rng.integers(3, 6)))
        skull = outer & ~ndi.binary_dilation(brain > 0.3, iterations=1)
        img = img + rng.uniform(0.2, 0.7) * ndi.gaussian_filter(skull.astype(np.float32), 0.7)
    regions = {name: take(anat.regions[name]) > 0.5 for name in
               ("brain", "ventricles", "hippocampus", "deep_gm", "cerebellum", "brainstem")}
    # lesions inside the brain
    lesion = np.zeros_like(gm, bool)
    if rng.random() < 0.5:
        ii, jj = np.mgrid[0:gm.shape[0], 0:gm.shape[1]].astype(np.float32)
        cand = np.argwhere(regions["brain"])
        for _ in range(int(rng.integers(1, 3))):
            ci, cj = cand[rng.integers(len(cand))]
            r = rng.uniform(2.5, 9)
            blob = (((ii - ci) / r) ** 2 + ((jj - cj) / (r * rng.uniform(0.6, 1.4))) ** 2
                    + 0.3 * _smooth_field(rng, gm.shape, 2.0)) <= 1
            blob &= regions["brain"]
            lesion |= blob
            img = np.where(blob, rng.uniform(0.05, 1.0), img)
    regions["lesion"] = lesion
    # upsample (2 mm -> about 0.7-1 mm) with a random rotation and scale
    zoom = rng.uniform(2.0, 3.0)
    rot = math.radians(rng.uniform(-20, 20))
    h, w = gm.shape
    out_shape = (int(round(h * zoom)), int(round(w * zoom)))
    c, s = math.cos(rot), math.sin(rot)
    mat = np.array([[c, -s], [s, c]]) / zoom * np.exp(rng.normal(0, 0.05, 2))[:, None]
    centre_out = (np.asarray(out_shape) - 1) / 2
    offset = (np.asarray((h, w)) - 1) / 2 - mat @ centre_out
    warp = lambda a, order: ndi.affine_transform(a, mat, offset=offset, output_shape=out_shape, order=order)  # noqa: E731
    img = warp(img, 1)
    labels = np.zeros(out_shape, np.uint8)
    if rng.random() < 0.3:
        names = ["brain"]
    else:
        names = ["lesion", "ventricles", "hippocampus", "deep_gm", "brainstem", "cerebellum"]
    for name in names:
        m = warp(regions[name].astype(np.float32), 1) > 0.5
        lab, n = ndi.label(m)
        for comp in range(1, n + 1):
            _place(labels, lab == comp)
    return _finish(rng, img), labels


# ----------------------------------------------------------------------------- chest


def _chest_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from medcnn.synth.chest_xray import make_case

    case = make_case(rng, size=int(rng.integers(224, 385)))
    img = case["image"].astype(np.float32)
    labels = np.zeros(img.shape, np.uint8)
    order: list[np.ndarray] = []
    for m in case["finding_masks"].values():  # one object per nodule / patch
        lab, n = ndi.label(m.astype(bool))
        order += [lab == i for i in range(1, n + 1)]
    lungs = case["lungs"].astype(bool)
    lab, n = ndi.label(lungs)
    parts = [lab == i for i in range(1, n + 1)]
    if rng.random() < 0.6:
        order += parts + [case["heart"].astype(bool)]
    else:
        order += [case["heart"].astype(bool)] + parts
    for m in order:
        _place(labels, m)
    if rng.random() < 0.3:
        img = np.clip(img + rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape), 0, 1).astype(np.float32)
    return img, labels


# ----------------------------------------------------------------------------- generate


def make_case(rng: np.random.Generator, source: str | None = None) -> dict[str, Any]:
    """One image with its object label map.

    Args:
        rng: random generator (the case is a pure function of its state).
        source: ``"shapes"``, ``"brain"`` or ``"chest"`` (random by default).

    Returns:
        ``{"image": (H, W) float32 in [0, 1], "labels": (H, W) uint8 (0 background, 1..K objects),
        "source": str}``.
    """
    if source is None:
        source = str(rng.choice(SOURCES, p=_SOURCE_P))
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    for _ in range(20):  # a draw may leave no object big enough: draw again
        img, labels = {"shapes": _shapes_case, "brain": _brain_case, "chest": _chest_case}[source](rng)
        if labels.max() > 0:
            return {"image": img, "labels": labels, "source": source}
    raise RuntimeError(f"could not draw a {source} case with objects")


def _job(args: tuple[Path, int, int]) -> dict[str, Any]:
    out, seed, i = args
    name = f"prompt-{i + 1:05d}"
    row = {"case": name, "subject": name, "image": f"images/{name}.png", "label": f"masks/{name}.png"}
    img_path, lab_path = out / row["image"], out / row["label"]
    if img_path.is_file() and lab_path.is_file():  # written by an earlier (interrupted) run: same content
        from PIL import Image

        source = str(np.random.default_rng([seed, i, 77]).choice(SOURCES, p=_SOURCE_P))  # make_case's first draw
        with Image.open(lab_path) as im:
            return {**row, "source": source, "objects": int(np.asarray(im).max())}
    case = make_case(np.random.default_rng([seed, i, 77]))
    write_png_atomic(img_path, np.round(case["image"] * 65535).astype(np.uint16))
    write_png_atomic(lab_path, case["labels"])
    return {**row, "source": case["source"], "objects": int(case["labels"].max())}


def generate(out_dir: str | os.PathLike[str], n: int, seed: int = 0, *, workers: int = 1,
             progress: bool = True) -> list[dict[str, Any]]:
    """Write ``n`` cases (see the module docstring for the layout).

    Args:
        out_dir: output folder (created).
        n: number of cases.
        seed: dataset seed.
        workers: worker processes.
        progress: show a progress bar.

    Returns:
        The manifest rows.
    """
    from tqdm.auto import tqdm

    from medcnn.synth import check_workers, map_jobs

    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    workers = check_workers(workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, int(seed), i) for i in range(int(n))]
    rows = list(tqdm(map_jobs(_job, jobs, workers, chunksize=8), total=len(jobs), desc="prompt images", unit="case",
                     disable=not progress))
    write_csv_atomic(out / "manifest.csv", ["case", "subject", "image", "label", "source", "objects"], rows)
    logger.info("wrote %d prompt images (%d objects) to %s", len(rows), sum(r["objects"] for r in rows), out)
    return rows
