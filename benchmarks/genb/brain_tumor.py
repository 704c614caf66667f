"""Generator B, brain-tumor: four-contrast glioma scans in the BraTS 2023 layout with a 1/2/3 label map.

Tumour model: lobulated growth (a union of jittered balls with a noisy boundary) from a seed in deep white
matter; ring-enhancing (necrotic centre), solid patchy-enhancing or non-enhancing cores; oedema spreading
further along white matter than grey matter. Contrast model: spin-echo T1 (or MPRAGE-like), the same with
gadolinium shortening the enhancing tumour's T1, spin-echo T2 and CSF-nulled FLAIR, from per-subject
relaxation times of normal and tumour tissues; each contrast with its own bias, noise and stored scale.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.genb import common

#: (T1 ms, T2 ms, PD) of tumour compartments at 3 T
TUMOUR_3T: dict[str, tuple[float, float, float]] = {
    "edema": (1450.0, 190.0, 0.88), "necrosis": (2800.0, 600.0, 0.95),
    "enhancing": (1500.0, 120.0, 0.86), "nonenh": (1650.0, 160.0, 0.86),
}
CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")


def tumour(rng: np.random.Generator, t: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """A label map ``(X, Y, Z)`` uint8 (1 NCR, 2 ED, 3 ET) grown inside the brain of ``t``, and its kind."""
    sp, gm, wm = t["spacing"], t["gm"], t["wm"]
    depth = ndimage.distance_transform_edt(t["intracranial"], sampling=sp)
    cand = np.argwhere((wm > 0.8) & (depth > 22))
    if len(cand) == 0:
        cand = np.argwhere(wm > 0.5)
    seed = cand[rng.integers(len(cand))] * sp
    grid = np.indices(gm.shape, dtype=np.float32) * sp.reshape(3, 1, 1, 1).astype(np.float32)
    radius = rng.uniform(12, 28)
    rel = np.full(gm.shape, np.inf, np.float32)
    for _ in range(int(rng.integers(2, 6))):
        c = seed + rng.normal(0, 0.35 * radius, 3)
        r = radius * rng.uniform(0.5, 0.9)
        rel = np.minimum(rel, np.sqrt(((grid - c.reshape(3, 1, 1, 1)) ** 2).sum(0)) / r)
    rel += 0.12 * common.smooth_field(rng, gm.shape, 10, 1.0)
    brain = t["intracranial"] & ((gm + wm) > 0.15)
    core = (rel < 1.0) & brain
    kind = rng.choice(["ring", "solid", "nonenh"], p=[0.6, 0.28, 0.12])
    seg = np.zeros(gm.shape, np.uint8)
    if kind == "ring":
        inner = rel < rng.uniform(0.45, 0.75) + 0.08 * common.smooth_field(rng, gm.shape, 8, 1.0)
        seg[core] = 3
        seg[core & inner] = 1
    elif kind == "solid":
        seg[core] = 1
        seg[core & (common.smooth_field(rng, gm.shape, 12, 1.0) > rng.uniform(-0.6, 0.2))] = 3
    else:
        seg[core] = 1
    dc = ndimage.distance_transform_edt(~core, sampling=sp)
    wm_s = ndimage.gaussian_filter(wm, 2.0 / sp)
    reach = rng.uniform(6, 28) * (0.2 + 0.8 * np.clip(wm_s, 0, 1)) * (1 + 0.3 * common.smooth_field(rng, gm.shape, 8, 1.0))
    seg[(dc > 0) & (dc < reach) & brain & ((gm + wm) > 0.3)] = 2
    return seg, str(kind)


def _signals(rng: np.random.Generator, params: dict[str, tuple[float, float, float]], contrast: str,
             gd: float) -> dict[str, float]:
    """Signal per tissue of one random sequence for ``contrast``; ``gd`` scales the enhancing T1 (t1c only)."""
    out = {}
    if contrast in ("t1n", "t1c"):
        tr, te = rng.uniform(400, 700), rng.uniform(8, 15)
    elif contrast == "t2w":
        tr, te = rng.uniform(3000, 6000), rng.uniform(80, 120)
    else:
        tr, te = rng.uniform(8000, 11000), rng.uniform(80, 140)
        ti = params["csf"][0] * np.log(2) * rng.uniform(0.92, 1.02)
    for k, (t1, t2, pd) in params.items():
        if contrast == "t1c" and k == "enhancing":
            t1 = t1 * gd
        if contrast == "t2f":
            s = abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
        else:
            s = 1 - np.exp(-tr / t1)
        out[k] = pd * s * np.exp(-te / t2)
    return out


def render(rng: np.random.Generator, t: dict[str, np.ndarray], seg: np.ndarray, stripped: bool,
           kind: str) -> dict[str, np.ndarray]:
    """The four stored contrasts ``{name: (X, Y, Z)}`` of one subject (label 1 is necrosis only in ring tumours)."""
    params = common.tissue_params(rng, float(rng.choice([1.5, 3.0])))
    for k, (t1, t2, pd) in TUMOUR_3T.items():
        j = rng.normal(1.0, 0.08, 3)
        params[k] = (t1 * j[0], t2 * j[1], pd * j[2])
    sp = t["spacing"]
    frac = {k: ndimage.gaussian_filter((seg == lab).astype(np.float32), 0.6 / sp)
            for k, lab in (("necrosis" if kind == "ring" else "nonenh", 1), ("edema", 2), ("enhancing", 3))}
    tum = np.clip(sum(frac.values()), 0, 1)
    maps = {"gm": t["gm"] * (1 - tum), "wm": t["wm"] * (1 - tum), "csf": t["csf"] * (1 - tum), **frac}
    head = t["intracranial"].copy()
    if not stripped:
        layers = common.head_layers(rng, t["intracranial"], sp)
        maps.update(layers)
        for m in layers.values():
            head |= m > 0
    tex = {k: 1 + a * common.smooth_field(rng, seg.shape, 12, 1.0) for k, a in
           (("gm", 0.03), ("wm", 0.03), ("necrosis", 0.1), ("nonenh", 0.1), ("edema", 0.08), ("enhancing", 0.12))}
    gd = rng.uniform(0.2, 0.4)
    out = {}
    for c in CONTRASTS:
        sig = _signals(rng, params, c, gd)
        img = sum(m * sig[k] * tex.get(k, 1.0) for k, m in maps.items())
        img = np.clip(img, 0, None).astype(np.float32)
        img = common.bias_and_noise(rng, img, head, rng.uniform(0.05, 0.25), rng.uniform(25, 60))
        if stripped:
            img *= ndimage.binary_dilation(t["intracranial"])
        out[c] = common.store_scale(rng, img)
    return out


def generate(n: int, seed: int, out: Path, spacing_mm: float | None = None) -> Path:
    """Write ``n`` cases ``genb-bt-XXXX/genb-bt-XXXX-{t1n,t1c,t2w,t2f,seg}.nii.gz`` and ``cases.csv``.

    ``spacing_mm`` fixes an isotropic voxel size (tests use a coarse one); default: random 1.4-2 mm.

    Returns:
        ``cases.csv`` (case, spacing_mm, skull_stripped, wt_ml, tc_ml, et_ml).
    """
    out = Path(out)
    rows = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        name = f"genb-bt-{i:04d}"
        stripped = bool(rng.random() < 0.7)
        spacing = tuple(float(v) for v in rng.uniform(1.4, 2.0, 3)) if rng.random() < 0.4 else (float(rng.uniform(1.4, 2.0)),) * 3
        if spacing_mm is not None:
            spacing = (float(spacing_mm),) * 3
        t = common.brain_on_grid(rng, spacing, (156.0, 190.0, 160.0) if stripped else (186.0, 224.0, 204.0))
        seg, kind = tumour(rng, t)
        for c, data in render(rng, t, seg, stripped, kind).items():
            common.save_nifti(out / name / f"{name}-{c}.nii.gz", data, t["affine"])
        common.save_nifti(out / name / f"{name}-seg.nii.gz", seg, t["affine"])
        ml = float(np.prod(spacing)) / 1000.0
        rows.append({"case": name, "spacing_mm": "x".join(f"{v:.2f}" for v in spacing), "skull_stripped": int(stripped), "kind": kind,
                     "wt_ml": round((seg > 0).sum() * ml, 2), "tc_ml": round(np.isin(seg, (1, 3)).sum() * ml, 2),
                     "et_ml": round((seg == 3).sum() * ml, 2)})
    with open(out / "cases.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
    return out / "cases.csv"
