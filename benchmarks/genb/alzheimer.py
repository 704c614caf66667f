"""Generator B, alzheimer: T1-weighted head or brain scans of AD and CN subjects in a BIDS folder.

Atrophy model: cortical grey matter thinned along a depth map (temporo-parietal emphasis), medial-temporal
(hippocampal/parahippocampal) volume loss, ventricles grown along their distance map; age adds a mild
version of the same to every subject. Contrast: MPRAGE or spoiled gradient echo signal equations on
per-subject relaxation times at 1.5 or 3 T; skull and scalp shells or skull-stripped; bias, Rician noise,
optional thick slices, random axis order, stored type and scale.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.genb import common


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ventricles(t: dict[str, np.ndarray]) -> np.ndarray:
    """Boolean lateral/third-ventricle mask: deep, central CSF components of at least 0.3 mL."""
    x, y, z = t["mni"]
    depth_ic = ndimage.distance_transform_edt(t["intracranial"], sampling=t["spacing"])
    cand = (t["csf"] > 0.5) & (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 32) & (depth_ic > 18)
    lab, n = ndimage.label(cand)
    if n == 0:
        return cand
    sizes = ndimage.sum_labels(cand, lab, np.arange(1, n + 1)) * float(np.prod(t["spacing"])) / 1000.0
    keep = np.arange(1, n + 1)[sizes >= 0.3]
    return np.isin(lab, keep)


def apply_atrophy(t: dict[str, np.ndarray], cortex: float, mtl: float, vent: float) -> np.ndarray:
    """Edit ``t``'s ``gm``/``wm``/``csf`` in place; returns the ventricle mask before growth.

    Args:
        t: :func:`common.brain_on_grid` tissues.
        cortex: cortical thinning, mm at full regional weight.
        mtl: medial-temporal volume loss fraction in [0, 1].
        vent: ventricular growth in mm.
    """
    sp = t["spacing"]
    x, y, z = t["mni"]
    gm, wm = t["gm"], t["wm"]
    depth = ndimage.distance_transform_edt((gm + wm) > 0.5, sampling=sp)
    temporal = _sigmoid((np.abs(x) - 28) / 6) * _sigmoid(-(z - 2) / 8)
    parietal = _sigmoid(-(y + 38) / 8) * _sigmoid((z - 18) / 8)
    thin = cortex * (0.35 + 0.9 * np.maximum(temporal, parietal))
    keep = np.clip(depth - thin + 1.0, 0.0, 1.0)  # a 1-mm ramp; no change where thin == 0
    gm *= np.where(depth < thin + 1.0, keep, 1.0)
    hip = np.exp(-(((np.abs(x) - 27) / 7) ** 2 + ((y + 22) / 13) ** 2 + ((z + 14) / 8) ** 2))
    gm *= 1.0 - 0.75 * mtl * hip
    wm *= 1.0 - 0.45 * mtl * hip
    vmask = ventricles(t)
    if vmask.any() and vent > 0:
        dv = ndimage.distance_transform_edt(~vmask, sampling=sp)
        grow = np.clip(vent - dv, 0.0, 1.0)
        gm *= 1.0 - grow
        wm *= 1.0 - grow
    t["csf"] = np.clip(t["intracranial"].astype(np.float32) - gm - wm, 0.0, 1.0)
    return vmask


def t1_signal(rng: np.random.Generator, params: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """Signal per tissue of a random T1-weighted sequence (MPRAGE-like inversion or spoiled gradient echo)."""
    out = {}
    if rng.random() < 0.6:
        ti, tr, te = rng.uniform(800, 1100), rng.uniform(2000, 2600), rng.uniform(2.5, 4.5)
        for k, (t1, t2, pd) in params.items():
            out[k] = pd * abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)
    else:
        tr, te, fa = rng.uniform(12, 30), rng.uniform(3, 6), np.deg2rad(rng.uniform(18, 35))
        for k, (t1, t2, pd) in params.items():
            e1 = np.exp(-tr / t1)
            out[k] = pd * np.sin(fa) * (1 - e1) / (1 - np.cos(fa) * e1) * np.exp(-te / t2)
    return out


def render_t1(rng: np.random.Generator, t: dict[str, np.ndarray], stripped: bool) -> np.ndarray:
    """A T1-weighted image ``(X, Y, Z)`` float32 from the tissue maps of ``t``."""
    sig = t1_signal(rng, common.tissue_params(rng, rng.choice([1.5, 3.0])))
    tex = 1.0 + 0.03 * common.smooth_field(rng, t["gm"].shape, 14, 1.0)
    img = (t["gm"] * sig["gm"] + t["wm"] * sig["wm"]) * tex + t["csf"] * sig["csf"]
    head = t["intracranial"].copy()
    if not stripped:
        for name, m in common.head_layers(rng, t["intracranial"], t["spacing"]).items():
            img = img + m * sig[name] * (1.0 + 0.06 * common.smooth_field(rng, m.shape, 10, 1.0))
            head |= m > 0
    img = np.clip(img, 0.0, None).astype(np.float32)
    if rng.random() < 0.35:  # thick slices along one axis
        ax = int(rng.integers(3))
        sigma = [0.0, 0.0, 0.0]
        sigma[ax] = rng.uniform(2.0, 3.5) / 2.355 / t["spacing"][ax]
        img = ndimage.gaussian_filter(img, sigma)
    return common.bias_and_noise(rng, img, head, rng.uniform(0.05, 0.3), rng.uniform(20, 60))


def subject(rng: np.random.Generator, diagnosis: str, spacing_mm: float | None = None
            ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """One subject: stored image, affine and its participants row fields (``spacing_mm`` fixes the voxel size)."""
    age = float(rng.uniform(60, 90))
    aging = (age - 60) / 30.0
    sev = float(rng.uniform(0.35, 1.0)) if diagnosis == "AD" else 0.0
    stripped = bool(rng.random() < 0.5)
    spacing = tuple(float(v) for v in rng.uniform(1.3, 2.0, 3)) if rng.random() < 0.4 else (float(rng.uniform(1.3, 2.0)),) * 3
    if spacing_mm is not None:
        spacing = (float(spacing_mm),) * 3
    fov = (156.0, 190.0, 160.0) if stripped else (186.0, 224.0, 204.0)
    t = common.brain_on_grid(rng, spacing, fov)
    apply_atrophy(t, cortex=0.5 * aging + 1.6 * sev, mtl=0.15 * aging + 0.7 * sev, vent=1.2 * aging + 5.0 * sev)
    img = render_t1(rng, t, stripped)
    return common.store_scale(rng, img), t["affine"], {"age": round(age, 1), "severity": round(sev, 3),
                                                        "skull_stripped": int(stripped)}


def generate(n: int, seed: int, out: Path, spacing_mm: float | None = None) -> Path:
    """Write ``n`` subjects (alternating AD/CN, shuffled) as BIDS ``sub-XXX/anat/sub-XXX_T1w.nii.gz`` + ``participants.tsv``.

    ``spacing_mm`` fixes an isotropic voxel size (tests use a coarse one); default: random 1.3-2 mm.

    Returns:
        the ``participants.tsv`` path (``participant_id``, ``diagnosis`` AD/CN, ``age``, ``sex``, ``severity``).
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    diags = np.array(["AD", "CN"] * ((n + 1) // 2))[:n]
    rng.shuffle(diags)
    rows = []
    for i, dx in enumerate(diags, start=1):
        sid = f"sub-b{i:03d}"
        srng = np.random.default_rng([seed, i])
        data, aff, info = subject(srng, str(dx), spacing_mm)
        common.save_nifti(out / sid / "anat" / f"{sid}_T1w.nii.gz", data, aff)
        rows.append({"participant_id": sid, "diagnosis": str(dx), "sex": str(srng.choice(["F", "M"])), **info})
    cols = ["participant_id", "diagnosis", "age", "sex", "severity", "skull_stripped"]
    with open(out / "participants.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return out / "participants.tsv"
