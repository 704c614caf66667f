"""Generator B, chest-xray: frontal (PA) radiographs with lung and heart masks and finding labels.

Thorax model in millimetres: lungs as jittered smoothed outlines, a two-ellipse cardiac silhouette sized to a
drawn cardiothoracic ratio, posterior and anterior ribs, clavicles, vertebral column, trachea, hemidiaphragms,
gastric bubble, breast shadows and a branching vessel tree from the hila. Projection: line integrals of linear
attenuation (tissue, bone, air), quantum noise on the transmitted photons, detector blur, then a random
display chain (window, gamma or sigmoid LUT, unsharp masking, optional shutters), stored as 8- or 16-bit PNG.
Findings: Cardiomegaly (CTR > 0.5), Effusion (basal fluid with a lateral meniscus), Consolidation (patchy
airspace opacity), Nodule (8-30 mm opacity), Pneumothorax (lateral/apical air without lung markings behind a
pleural line).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.path import Path as MplPath
from PIL import Image
from scipy import ndimage

from benchmarks.genb import common

FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax")
MU_TISSUE, MU_BONE = 0.02, 0.05  # linear attenuation per mm near 60 keV


def frame(rng: np.random.Generator) -> dict:
    """Image size, pixel spacing and the body-frame coordinates ``X`` (mm, + = patient left), ``Y`` (mm, down)."""
    rows = int(rng.integers(320, 513))
    cols = int(rows * rng.uniform(0.8, 1.05))
    half_w = rng.uniform(115, 165)  # inner thoracic half-width at the widest level
    lung_h = rng.uniform(0.85, 1.05) * half_w * 1.75
    px = (lung_h + rng.uniform(110, 200)) / rows
    r0 = rows * rng.uniform(0.14, 0.24) + rng.normal(0, 4)
    c0 = cols / 2 + rng.normal(0, cols * 0.03)
    ang = np.deg2rad(rng.normal(0, 3))
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    dx, dy = (c - c0) * px, (r - r0) * px
    X = np.cos(ang) * dx + np.sin(ang) * dy
    Y = -np.sin(ang) * dx + np.cos(ang) * dy
    return {"rows": rows, "cols": cols, "px": px, "X": X, "Y": Y, "W": half_w, "H": lung_h, "r0": r0, "c0": c0, "ang": ang,
            "dome_r": rng.uniform(12, 30), "dome_l": rng.uniform(10, 25), "r_high": rng.uniform(5, 20)}


def _inside(poly: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    return MplPath(poly).contains_points(pts).reshape(X.shape)


def lungs(rng: np.random.Generator, f: dict) -> tuple[np.ndarray, np.ndarray]:
    """Right (image left) and left lung outlines as bool masks ``(rows, cols)``, smoothed jittered polygons."""
    W, H = f["W"], f["H"]
    out = []
    for s in (-1.0, 1.0):
        base = H - (f["r_high"] if s < 0 else 0.0)
        dome = f["dome_r"] if s < 0 else f["dome_l"]
        pts = [(0.42, 0.0), (0.68, 0.06), (0.86, 0.22), (0.97, 0.48), (1.0, 0.72), (0.99, base / H),
               (0.85, (base - 0.55 * dome) / H), (0.6, (base - dome) / H), (0.32, (base - 0.7 * dome) / H),
               (0.14, (base - 0.35 * dome) / H), (0.11, 0.55), (0.12, 0.28), (0.2, 0.06)]
        poly = np.array([(s * (a * W + rng.normal(0, 0.02 * W)), b * H + rng.normal(0, 0.012 * H)) for a, b in pts])
        m = _inside(poly, f["X"], f["Y"]).astype(np.float32)
        m = ndimage.gaussian_filter(m, 6.0 / f["px"]) > 0.5
        out.append(m)
    return out[0], out[1]


def heart(rng: np.random.Generator, f: dict, lung_any: np.ndarray, ctr: float) -> np.ndarray:
    """Cardiac silhouette ``(rows, cols)`` bool whose width is ``ctr`` x the widest lung span, above the diaphragm."""
    cols_with = np.where(lung_any.any(0))[0]
    span_mm = (cols_with.max() - cols_with.min() + 1) * f["px"]
    width = ctr * span_mm
    X, Y = f["X"], f["Y"]
    bottom = f["H"] - f["dome_l"] * rng.uniform(0.55, 0.85)
    a_l, b_l = 0.4 * width, 0.36 * width * rng.uniform(0.9, 1.15)
    cxl, cyl = 0.64 * width - a_l, bottom - 0.85 * b_l
    th = np.deg2rad(rng.uniform(-35, -15))
    u = np.cos(th) * (X - cxl) + np.sin(th) * (Y - cyl)
    v = -np.sin(th) * (X - cxl) + np.cos(th) * (Y - cyl)
    left = (u / a_l) ** 2 + (v / b_l) ** 2 <= 1
    a_r, b_r = 0.2 * width, 0.34 * width
    right = ((X - (-0.36 * width + a_r)) / a_r) ** 2 + ((Y - (bottom - 0.8 * b_r)) / b_r) ** 2 <= 1
    core = (np.abs(X - 0.1 * width) < 0.3 * width) & (Y > bottom - 1.55 * b_l) & (Y < bottom - 0.2 * b_l)
    m = (left | right | core) & (Y < bottom)
    m &= (X > -0.36 * width) & (X < 0.64 * width)
    return ndimage.binary_opening(m, iterations=2)


def _band(dist: np.ndarray, half: float, cortex: float) -> np.ndarray:
    """Projected thickness (mm) of a bone of half-width ``half`` at distance ``dist`` from its axis, cortex brighter."""
    inner = np.sqrt(np.clip(half ** 2 - dist ** 2, 0, None))
    shell = np.sqrt(np.clip((half + cortex) ** 2 - dist ** 2, 0, None)) - inner
    return 0.35 * inner + shell * 2.0


def _curve_dist(X: np.ndarray, Y: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance (mm) from every pixel to a polyline sampled densely at ``(xs, ys)``."""
    sub = 4
    Xs, Ys = X[::sub, ::sub], Y[::sub, ::sub]
    d = np.full(Xs.shape, np.inf, np.float32)
    for x, y in zip(xs, ys):
        d = np.minimum(d, np.hypot(Xs - x, Ys - y))
    return ndimage.zoom(d, (X.shape[0] / d.shape[0], X.shape[1] / d.shape[1]), order=1)[: X.shape[0], : X.shape[1]]


def skeleton(rng: np.random.Generator, f: dict) -> np.ndarray:
    """Projected bone thickness (mm) ``(rows, cols)``: spine, posterior/anterior ribs, clavicles."""
    X, Y, W, H = f["X"], f["Y"], f["W"], f["H"]
    bone = np.zeros_like(X)
    vw = rng.uniform(17, 23)
    level = np.mod(Y + rng.uniform(0, 25), 26.0)
    body = (np.abs(X) < vw) & (level > 3.5)
    spine = np.where(body, 7.0 * np.sqrt(np.clip(1 - (X / vw) ** 2, 0, 1)), 1.5) * (np.abs(X) < vw)
    spine += 3.0 * (np.abs(np.abs(X) - 0.7 * vw) < 3) * (level > 5) * (level < 16)
    bone += ndimage.gaussian_filter(spine.astype(np.float32), 1.0 / f["px"])
    gap = rng.uniform(0.085, 0.105) * H
    y_first = rng.uniform(-0.04, 0.04) * H
    t = np.linspace(0, 1, 40)
    for s in (-1.0, 1.0):
        for k in range(10):
            y0 = y_first + k * gap
            xs = s * (15 + (W + 12) * t)
            ys = y0 - 0.07 * H * np.sin(np.pi * t * 0.9) + rng.uniform(0.22, 0.32) * H * t ** 3
            bone += _band(_curve_dist(X, Y, xs, ys), rng.uniform(4, 6), 1.2)
            if k < 7:  # anterior rib: from the lateral wall down and in, faint (cartilage further in)
                xa = s * (W + 5 - (W * 0.65) * t)
                ya = y0 + 0.1 * H + rng.uniform(0.25, 0.35) * H * t
                bone += 0.5 * _band(_curve_dist(X, Y, xa, ya), rng.uniform(5, 7), 0.8)
        xs = s * (12 + (W + 30) * t)
        ys = -0.02 * H - 0.06 * H * np.sin(np.pi * t) + 0.04 * H * t + rng.normal(0, 3)
        bone += _band(_curve_dist(X, Y, xs, ys), rng.uniform(6, 8), 1.5)
    return bone


def to_pixels(f: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame mm ``(x, y)`` -> pixel ``(row, col)`` (float), the inverse of :func:`frame`'s mapping."""
    ang = f["ang"]
    dx = np.cos(ang) * x - np.sin(ang) * y
    dy = np.sin(ang) * x + np.cos(ang) * y
    return f["r0"] + dy / f["px"], f["c0"] + dx / f["px"]


def vessels(rng: np.random.Generator, f: dict, lung_any: np.ndarray) -> np.ndarray:
    """Projected vessel thickness (mm): branching trees from both hila, splatted and blurred per calibre."""
    canvases = [np.zeros((f["rows"], f["cols"]), np.float32) for _ in range(3)]
    px, W, H = f["px"], f["W"], f["H"]
    stack = []
    for s in (-1.0, 1.0):
        for a in np.deg2rad(rng.uniform(0, 360, 6)):
            stack.append((s * 0.27 * W, 0.45 * H + rng.normal(0, 8), a, rng.uniform(22, 34), 2))
    while stack:
        x, y, a, length, gen = stack.pop()
        t = np.arange(0, length, px * 0.7)
        r, c = to_pixels(f, x + t * np.cos(a), y + t * np.sin(a))
        r, c = np.round(r).astype(int), np.round(c).astype(int)
        ok = (r >= 0) & (r < f["rows"]) & (c >= 0) & (c < f["cols"])
        np.add.at(canvases[gen], (r[ok], c[ok]), 1.0)
        x, y = x + length * np.cos(a), y + length * np.sin(a)
        if gen > 0 or (length > 7 and rng.random() < 0.75):
            for da in (-1, 1):
                stack.append((x, y, a + da * rng.uniform(0.2, 0.6), length * rng.uniform(0.68, 0.85), max(gen - 1, 0)))
    out = np.zeros_like(canvases[0])
    for gen, cv in enumerate(canvases):
        radius = 0.9 + 1.3 * gen  # mm
        out += ndimage.gaussian_filter(cv, radius / px) * (2 * radius) * (radius / px) * 4.0
    return out * ndimage.gaussian_filter(lung_any.astype(np.float32), 3.0 / px)


def _lung_depth(f: dict, lung: np.ndarray, depth_mm: float) -> np.ndarray:
    """AP air path (mm) through a lung mask: a dome rising from the outline to ``depth_mm``."""
    d = ndimage.distance_transform_edt(lung) * f["px"]
    return depth_mm * np.sqrt(np.clip(d / (0.35 * f["W"]), 0, 1))


def findings(rng: np.random.Generator, f: dict, right: np.ndarray, left: np.ndarray, present: dict[str, bool]
             ) -> dict[str, np.ndarray]:
    """Bool masks ``(rows, cols)`` of the present lung findings (Effusion, Consolidation, Nodule, Pneumothorax)."""
    X, Y, W, H, px = f["X"], f["Y"], f["W"], f["H"], f["px"]
    out: dict[str, np.ndarray] = {}
    pick = lambda: right if rng.random() < 0.5 else left  # noqa: E731
    if present["Effusion"]:
        lung = pick()
        base = Y[lung].max()
        level = base - rng.uniform(0.12, 0.35) * H
        menis = rng.uniform(0.05, 0.15) * H * np.clip((np.abs(X) - 0.2 * W) / (0.8 * W), 0, 1)
        out["Effusion"] = lung & (Y > level - menis)
    if present["Consolidation"]:
        lung = pick()
        rr, cc = np.where(lung)
        k = rng.integers(len(rr))
        rad = rng.uniform(25, 60) / px
        blob = np.hypot(np.arange(f["rows"])[:, None] - rr[k], np.arange(f["cols"])[None] - cc[k]) / rad
        field = common.smooth_field(rng, (f["rows"], f["cols"]), 18, 0.35)
        out["Consolidation"] = lung & (blob + field < 1.0)
    if present["Nodule"]:
        inner = ndimage.binary_erosion(right | left, iterations=max(1, int(12 / px)))
        rr, cc = np.where(inner if inner.any() else right | left)
        k = rng.integers(len(rr))
        rad = rng.uniform(4, 15) / px
        ang = np.arctan2(np.arange(f["rows"])[:, None] - rr[k], np.arange(f["cols"])[None] - cc[k])
        lob = 1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6)) * rng.random()
        out["Nodule"] = np.hypot(np.arange(f["rows"])[:, None] - rr[k], np.arange(f["cols"])[None] - cc[k]) < rad * lob
    if present["Pneumothorax"]:
        lung = pick()
        outside = ndimage.distance_transform_edt(lung) * px
        width = rng.uniform(8, 35)
        upper = Y < Y[lung].min() + rng.uniform(0.5, 0.85) * H
        lateral = np.abs(X) > 0.35 * W
        out["Pneumothorax"] = lung & (outside < width + 4 * common.smooth_field(rng, lung.shape, 6, 1.0)) & upper & lateral
    return {k: v for k, v in out.items() if v.sum() > 10}


def density(rng: np.random.Generator, f: dict, right: np.ndarray, left: np.ndarray, heart_m: np.ndarray,
            found: dict[str, np.ndarray], female: bool) -> np.ndarray:
    """Line integral of attenuation ``(rows, cols)``: body, lungs, heart, bones, vessels and findings."""
    X, Y, W, H, px = f["X"], f["Y"], f["W"], f["H"], f["px"]
    body_w = W + rng.uniform(15, 40)
    ap = rng.uniform(190, 260)
    tissue = ap * np.sqrt(np.clip(1 - (X / body_w) ** 2, 0, 1))
    shoulder = (Y < 0.15 * H) & (np.abs(X) > body_w * 0.9)
    tissue += np.where(shoulder, 90 * np.clip((0.15 * H - Y) / (0.3 * H), 0, 1), 0)
    neck = (Y < -0.02 * H) & (np.abs(X) > rng.uniform(45, 65))
    tissue = np.where(neck, tissue * np.clip(1 + (Y + 0.02 * H) / (0.12 * H), 0.05, 1), tissue)
    lung = right | left
    air = _lung_depth(f, right, rng.uniform(0.5, 0.7) * ap) + _lung_depth(f, left, rng.uniform(0.5, 0.7) * ap)
    air *= np.where(heart_m, rng.uniform(0.25, 0.45), 1.0)
    air = ndimage.gaussian_filter(air, 2.0 / px)
    ptx = found.get("Pneumothorax", np.zeros_like(lung))
    parenchyma = 0.22 * air * (~ptx)  # lung tissue and blood within the aerated volume
    trachea = (np.abs(X - 0.02 * Y) < rng.uniform(7, 10)) & (Y < 0.3 * H) & (Y > -0.15 * H)
    air += np.where(trachea, 18.0, 0.0)
    bubble = ((X - 0.5 * W) / 28) ** 2 + ((Y - (H - f["dome_l"] + 22)) / 16) ** 2 < 1
    air += np.where(bubble & (rng.random() < 0.7), 45.0, 0.0)
    extra = np.zeros_like(X)
    if "Effusion" in found:
        extra += ndimage.gaussian_filter(found["Effusion"] * air * 0.8, 4.0 / px)
    if "Consolidation" in found:
        extra += ndimage.gaussian_filter(found["Consolidation"] * air * rng.uniform(0.35, 0.6), 5.0 / px)
    if "Nodule" in found:
        d = ndimage.distance_transform_edt(found["Nodule"]) * px
        extra += np.sqrt(np.clip(d * (2 * d.max() - d), 0, None)) * 2 * rng.uniform(0.8, 1.2)
    if "Pneumothorax" in found:  # the pleural line: a thin rim of tissue at the collapsed lung's edge
        edge = ptx ^ ndimage.binary_dilation(ptx, iterations=max(1, int(1.2 / px)))
        extra += ndimage.gaussian_filter(edge.astype(np.float32) * 6.0, 0.5 / px) * lung
    if female:
        q = ((np.abs(X) - 0.55 * W) / (0.45 * W)) ** 2 + ((Y - 0.85 * H) / (0.22 * H)) ** 2
        tissue += rng.uniform(8, 20) * np.sqrt(np.clip(1 - q, 0, 1)) * (Y > 0.7 * H)
    vess = vessels(rng, f, lung & ~ptx)
    bone = skeleton(rng, f)
    return MU_TISSUE * (tissue - air + parenchyma + vess + extra) + (MU_BONE - MU_TISSUE) * bone


def render(rng: np.random.Generator, f: dict, att: np.ndarray) -> np.ndarray:
    """Detector and display chain: photon noise, blur, window, LUT, unsharp mask, shutters -> float image in [0, 1]."""
    photons = rng.uniform(2e4, 2e5)
    trans = np.exp(-att)
    counts = rng.poisson(np.clip(photons * trans, 0, None)).astype(np.float32)
    log = -np.log(np.maximum(counts, 1.0) / photons)
    log = ndimage.gaussian_filter(log, rng.uniform(0.4, 1.0) * max(1.0, 0.5 / f["px"]))
    lo, hi = np.percentile(log, [rng.uniform(0.5, 3), rng.uniform(99, 99.9)])
    x = np.clip((log - lo) / max(hi - lo, 1e-6), 0, 1)
    if rng.random() < 0.5:
        x = x ** rng.uniform(0.6, 1.5)
    else:
        c, w = rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.35)
        x = 1 / (1 + np.exp(-(x - c) / w))
        x = (x - x.min()) / max(x.max() - x.min(), 1e-6)
    if rng.random() < 0.6:
        amount, sigma = rng.uniform(0.3, 1.2), rng.uniform(8, 25) / f["px"] * 0.5
        x = np.clip(x + amount * (x - ndimage.gaussian_filter(x, sigma)), 0, 1)
    if rng.random() < 0.3:  # collimator shutters, shown white
        b = [int(rng.uniform(0, 0.05) * n) for n in (f["rows"], f["rows"], f["cols"], f["cols"])]
        x[: b[0]], x[f["rows"] - b[1]:], x[:, : b[2]], x[:, f["cols"] - b[3]:] = 1, 1, 1, 1
    return x.astype(np.float32)


def case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], dict]:
    """One radiograph: image ``(rows, cols)`` float [0, 1], lungs and heart bool masks, finding masks, labels."""
    f = frame(rng)
    right, left = lungs(rng, f)
    present = {k: bool(rng.random() < p) for k, p in zip(FINDINGS, (0.35, 0.3, 0.3, 0.3, 0.25))}
    ctr = rng.uniform(0.54, 0.68) if present["Cardiomegaly"] else rng.uniform(0.36, 0.47)
    heart_m = heart(rng, f, right | left, ctr)
    right, left = right & ~heart_m, left & ~heart_m
    found = findings(rng, f, right, left, present)
    att = density(rng, f, right, left, heart_m, found, female=bool(rng.random() < 0.5))
    img = render(rng, f, att)
    lung_m = right | left
    span = np.where(lung_m.any(0))[0]
    hspan = np.where(heart_m.any(0))[0]
    ctr_true = (hspan.max() - hspan.min() + 1) / (span.max() - span.min() + 1) if len(hspan) else 0.0
    labels = {k: int(k in found) for k in FINDINGS[1:]}
    labels["Cardiomegaly"] = int(ctr_true > 0.5)
    info = {"rows": f["rows"], "cols": f["cols"], "pixel_spacing_mm": round(f["px"], 4), "ctr": round(float(ctr_true), 4)}
    return img, lung_m, heart_m, found, {**labels, **info}


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def generate(n: int, seed: int, out: Path) -> Path:
    """Write ``images/``, ``masks/`` (``_lungs``, ``_heart``, ``_{Finding}`` 0/255 PNGs) and ``labels.csv``.

    Returns:
        ``labels.csv``: ``case, image, lungs, heart, format, rows, cols, pixel_spacing_mm, ctr`` and one 0/1
        column per finding.
    """
    out = Path(out)
    rows = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        name = f"genb-cxr-{i:04d}"
        img, lung_m, heart_m, found, info = case(rng)
        fmt = "png16" if rng.random() < 0.5 else "png"
        if fmt == "png16":
            top = int(rng.choice([1023, 4095, 16383, 65535]))
            _png(out / "images" / f"{name}.png", np.round(img * top).astype(np.uint16))
        else:
            _png(out / "images" / f"{name}.png", np.round(img * 255).astype(np.uint8))
        _png(out / "masks" / f"{name}_lungs.png", lung_m.astype(np.uint8) * 255)
        _png(out / "masks" / f"{name}_heart.png", heart_m.astype(np.uint8) * 255)
        for k, m in found.items():
            _png(out / "masks" / f"{name}_{k}.png", m.astype(np.uint8) * 255)
        rows.append({"case": name, "image": f"images/{name}.png", "lungs": f"masks/{name}_lungs.png",
                     "heart": f"masks/{name}_heart.png", "format": fmt, **info})
    cols = ["case", "image", "lungs", "heart", "format", "rows", "cols", "pixel_spacing_mm", "ctr", *FINDINGS]
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return out / "labels.csv"
