"""Generator B, prompt: 2D images and 3D volumes, one object each, with its exact bounding box.

Shape classes: ``thin`` (curves 1-4 px wide), ``tubular`` (thicker, sometimes branching curves, 3D tubes and
helices), ``nonconvex`` (C-shapes, stars, rings, tori, shells), ``multipart`` (2-4 separate blobs; in 3D
separated along the slice axis, so the box holds empty slices), ``compact`` (ellipses and squircles), and
real anatomy from the ICBM tissue maps under a random deformation (lateral ventricles, the cortical ribbon,
white matter, the whole brain) on a rendered MR image. Each object is darker or brighter than its
surroundings; its fill (mask / box area) is recorded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmarks.genb import alzheimer, common

CLASSES: tuple[str, ...] = ("thin", "tubular", "nonconvex", "multipart", "compact", "anatomy")


def _curve(rng: np.random.Generator, shape: tuple[int, ...], width: float, length: float) -> np.ndarray:
    """A smooth random curve of ``width`` voxels through ``shape`` (2D or 3D), as a bool mask."""
    nd = len(shape)
    t = np.linspace(0, 1, 400)
    start = np.array([rng.uniform(0.2, 0.8) * s for s in shape])
    direc = rng.normal(size=nd)
    direc /= np.linalg.norm(direc)
    pts = start + np.outer(t - 0.5, direc) * length
    for _ in range(2):
        amp = rng.uniform(0.05, 0.2) * length
        pts += amp * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t[:, None] + rng.uniform(0, 6, nd)) * rng.normal(size=nd)
    line = np.zeros(shape, bool)
    idx = np.round(pts).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(shape)), 1)
    line[tuple(idx[ok].T)] = True
    return ndimage.distance_transform_edt(~line) <= width / 2


def _ellipsoid(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    q = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(len(shape)))
    return q + 0.15 * common.smooth_field(rng, shape, 5, 1.0) <= 1.0


def shape_mask(rng: np.random.Generator, cls: str, shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask of class ``cls`` (any of :data:`CLASSES` but ``anatomy``) on a 2D or 3D ``shape``."""
    nd, m = len(shape), min(shape)
    c = np.array([s / 2 + rng.normal(0, s / 10) for s in shape])
    grid = np.indices(shape, dtype=np.float32)
    rad = np.sqrt(sum((grid[a] - c[a]) ** 2 for a in range(nd)))
    if cls == "thin":
        return _curve(rng, shape, rng.uniform(1.2, 4.0 if nd == 2 else 3.0), rng.uniform(0.4, 0.8) * m)
    if cls == "tubular":
        out = _curve(rng, shape, rng.uniform(5, 12) if nd == 2 else rng.uniform(3, 7), rng.uniform(0.5, 0.8) * m)
        return out | (_curve(rng, shape, rng.uniform(4, 8), 0.4 * m) if rng.random() < 0.4 else False)
    if cls == "nonconvex":
        r0, r1 = rng.uniform(0.15, 0.3) * m, rng.uniform(0.05, 0.12) * m
        if nd == 3:  # torus (random axis) or a spherical shell with an opening
            ax = rng.integers(3)
            plane = np.sqrt(sum((grid[a] - c[a]) ** 2 for a in range(3) if a != ax))
            if rng.random() < 0.5:
                return np.hypot(plane - r0, grid[ax] - c[ax]) < r1
            return (np.abs(rad - r0) < 0.5 * r1 + 1) & (grid[ax] - c[ax] < 0.5 * r0)
        ang = np.arctan2(grid[0] - c[0], grid[1] - c[1])
        kind = rng.choice(["c", "star", "ring"])
        if kind == "star":
            k = rng.integers(4, 9)
            return rad < r0 * (0.55 + 0.45 * np.cos(k * ang + rng.uniform(0, 6)))
        ring = np.abs(rad - r0) < r1
        return ring & (np.mod(ang - rng.uniform(-np.pi, np.pi), 2 * np.pi) < rng.uniform(3.5, 5.6)) if kind == "c" else ring
    if cls == "multipart":
        out = np.zeros(shape, bool)
        n = int(rng.integers(2, 5))
        axis0 = np.linspace(0.2, 0.8, n) * shape[0]
        for i in range(n):
            cen = np.array([axis0[i]] + [rng.uniform(0.25, 0.75) * s for s in shape[1:]])
            out |= _ellipsoid(rng, shape, cen, rng.uniform(0.04, 0.09, nd) * m)
        return out
    if rng.random() < 0.5:  # compact: ellipse(-oid) or a squircle filling up to ~95 % of its box
        return _ellipsoid(rng, shape, c, rng.uniform(0.1, 0.3, nd) * m)
    p, half = rng.uniform(4, 10), rng.uniform(0.1, 0.3, nd) * m
    return sum(np.abs((grid[a] - c[a]) / half[a]) ** p for a in range(nd)) <= 1.0


def paint(rng: np.random.Generator, mask: np.ndarray) -> tuple[np.ndarray, str]:
    """A textured image ``mask.shape`` float32 in [0, 1] with the object brighter or darker than around it."""
    bg = 0.5 + 0.12 * common.smooth_field(rng, mask.shape, 6, 1.0)
    box = np.zeros(mask.shape, bool)
    b = bbox(mask)
    box[tuple(slice(max(0, b[a] - 2), b[a + mask.ndim] + 2) for a in range(mask.ndim))] = True
    for _ in range(int(rng.integers(1, 4))):  # distractors of either polarity, outside the object's box
        d = shape_mask(rng, str(rng.choice(["compact", "tubular"])), mask.shape) & ~box
        bg = bg + rng.uniform(-0.25, 0.25) * d
    polarity = "bright" if rng.random() < 0.5 else "dark"
    delta = rng.uniform(0.15, 0.4) * (1 if polarity == "bright" else -1)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.3, 1.0))
    img = bg + delta * soft * (1 + 0.15 * common.smooth_field(rng, mask.shape, 8, 1.0))
    img = img + rng.normal(0, rng.uniform(0.01, 0.06), mask.shape)
    return np.clip(img, 0, 1).astype(np.float32), polarity


def anatomy(rng: np.random.Generator, dim: int, spacing_mm: float | None = None) -> tuple[np.ndarray, np.ndarray, str, str]:
    """A rendered brain MR image (2D slice or 3D volume) and one real structure: ``(image, mask, structure, polarity)``."""
    sp = spacing_mm or (1.8 if dim == 2 else 2.6)
    t = common.brain_on_grid(rng, (sp, sp, sp), (156.0, 190.0, 160.0))
    img = alzheimer.render_t1(rng, t, stripped=True)
    if rng.random() < 0.4:  # T2-like: CSF bright
        img = t["csf"] * 1.0 + t["gm"] * 0.55 + t["wm"] * 0.4
        img = common.bias_and_noise(rng, img.astype(np.float32), t["intracranial"], 0.1, 40)
    which = str(rng.choice(["ventricles", "cortex", "white_matter", "brain"], p=[0.45, 0.25, 0.15, 0.15]))
    mask = {"ventricles": alzheimer.ventricles(t), "cortex": t["gm"] > 0.5, "white_matter": t["wm"] > 0.5,
            "brain": t["intracranial"]}[which]
    if mask.sum() < 50:
        which, mask = "brain", t["intracranial"]
    if dim == 2:
        ax = int(rng.integers(3))
        counts = np.moveaxis(mask, ax, 0).reshape(mask.shape[ax], -1).sum(1)
        good = np.where(counts >= max(20, 0.5 * counts.max()))[0]
        k = int(rng.choice(good)) if len(good) else int(np.argmax(counts))
        img, mask = np.take(img, k, axis=ax), np.take(mask, k, axis=ax)
    lab, n = ndimage.label(mask)
    if n > 1 and which != "ventricles":  # one connected structure (ventricles may come in parts)
        mask = lab == 1 + int(np.argmax(ndimage.sum_labels(mask, lab, np.arange(1, n + 1))))
    inside = ndimage.binary_dilation(mask, iterations=2) & ~mask
    img = img / (float(np.percentile(img, 99.5)) or 1.0)
    pol = "dark" if img[mask].mean() < (img[inside].mean() if inside.any() else img.mean()) else "bright"
    return np.clip(img, 0, 1).astype(np.float32), mask, which, pol


def bbox(mask: np.ndarray) -> tuple[int, ...]:
    """Exact bounding box, all mins then all maxes (exclusive), in the mask's axis order."""
    idx = np.argwhere(mask)
    return tuple(int(v) for v in idx.min(0)) + tuple(int(v) + 1 for v in idx.max(0))


def one_object(rng: np.random.Generator, dim: int, cls: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    """``(image, mask, structure, polarity)`` of one object of class ``cls`` in ``dim`` dimensions."""
    if cls == "anatomy":
        return anatomy(rng, dim)
    shape = tuple(int(v) for v in rng.integers(128, 257, 2)) if dim == 2 else tuple(int(v) for v in rng.integers(48, 73, 3))
    for _ in range(10):
        mask = shape_mask(rng, cls, shape)
        if mask.sum() >= 30:
            break
    img, pol = paint(rng, mask)
    return img, mask, cls, pol


def generate(n: int, seed: int, out: Path) -> Path:
    """Write ``n`` objects: ``images/`` (2D PNG, 3D NIfTI), ``masks/`` and ``objects.csv`` with exact boxes.

    Returns:
        ``objects.csv``: ``case, image, mask, dim, shape_class, structure, polarity, fill, box`` (box: space-separated
        ``i0 j0 [k0] i1 j1 [k1]``, maxima exclusive, in the axis order of ``medcnn.load``).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        dim = 3 if i % 4 == 0 else 2
        cls = CLASSES[sum(r["dim"] == dim for r in rows) % len(CLASSES)]  # every class in 2D and in 3D
        img, mask, structure, pol = one_object(rng, dim, cls)
        name = f"genb-prompt-{i:04d}"
        if dim == 2:
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(out / "images" / f"{name}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
            ext = ".png"
        else:
            common.save_nifti(out / "images" / f"{name}.nii.gz", img, np.diag([1.5, 1.5, 1.5, 1.0]))
            common.save_nifti(out / "masks" / f"{name}.nii.gz", mask.astype(np.uint8), np.diag([1.5, 1.5, 1.5, 1.0]))
            ext = ".nii.gz"
        box = bbox(mask)
        fill = mask.sum() / np.prod([box[dim + a] - box[a] for a in range(dim)])
        rows.append({"case": name, "image": f"images/{name}{ext}", "mask": f"masks/{name}{ext}", "dim": dim,
                     "shape_class": cls, "structure": structure, "polarity": pol, "fill": round(float(fill), 4),
                     "box": " ".join(str(v) for v in box)})
    with open(out / "objects.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
    return out / "objects.csv"
