"""Synthetic abdominal/thoracic CT in Hounsfield units with TotalSegmentator-named organ labels.

A case is one CT volume (HU, int16) and its label map: 1 liver, 2 spleen, 3 kidney_left, 4 kidney_right,
5 lung_left, 6 lung_right, 7 pancreas, 8 aorta (0 everything else). Left and right are the patient's: the
anatomy is built in patient coordinates (RAS+ mm, +x towards the patient's right) and every voxel is
mapped there through the file's affine, so a label is on the correct side in any storage orientation.

How a case is made (all randomness from the ``rng`` passed in):

1. *Subject*: skeleton scale, subcutaneous and visceral fat, sex (breasts), arms up or down; a body cavity
   whose outline changes from abdomen to chest, muscle wall (thick paraspinal muscles), subcutaneous fat
   and skin, a flattened back lying on the table.
2. *Anatomy*: organs are superquadrics/ellipsoids and tubes placed anatomically (liver under the right
   diaphragm dome, spleen left posterior, kidneys retroperitoneal beside the L1-L2 spine with the right one
   lower, pancreas from the head at the duodenum across the aorta to the splenic hilum, aorta left of the
   midline anterior to the spine with its arch and ascending part), each pulled through its own smooth
   random deformation and the subject's global one. Lungs fill the rib cage above the diaphragm domes and
   hold a branching vessel tree; also heart, mediastinum, stomach (gas, fluid or oral contrast),
   gallbladder, bowel texture with gas, IVC, portal/splenic/renal vessels, psoas, vertebrae with discs,
   ribs, sternum. Occasional lesions: liver cysts and hypodense metastases, kidney cysts (some exophytic),
   all labelled as their organ.
3. *Acquisition* (domain randomisation of what scanners vary): contrast phase (native, arterial, portal
   venous; sometimes random organ HU), 128-160 matrix over a 300-450 mm field of view, 40-80 slices of
   0.6-5 mm thickness at 2.5-5 mm increments (the slice profile integrated by sub-slices), gantry tilt,
   patient roll/pitch/yaw and off-centring, any axial storage orientation (LPS, RAS, LAS, ...),
   reconstruction kernel blur (soft to bone, edge enhancement), correlated noise scaled by slice
   thickness and patient size, beam-hardening cupping, calibration offset, table and pad, the circular
   reconstruction field of view with a scanner's padding value (-1024, -2048, -3024 or -1000).

Example:
    >>> case = make_case(np.random.default_rng(0), matrix=64, n_slices=24)   # doctest: +SKIP
    >>> case["image"].shape == case["label"].shape                           # doctest: +SKIP
    True
    >>> generate(Path("ct_synth"), n=10, seed=1)                              # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from medcnn.synth.grid import affine_coords, axcodes_matrix, rotation_matrix, save_nifti, sigmoid, smooth_field

logger = logging.getLogger(__name__)

#: Label values (TotalSegmentator names).
LABELS: Mapping[str, int] = MappingProxyType({
    "background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4,
    "lung_left": 5, "lung_right": 6, "pancreas": 7, "aorta": 8})
#: Contrast phases.
PHASES: tuple[str, ...] = ("native", "arterial", "portal")
#: Reconstruction kernels: (PSF sigma mm, noise HU at 3 mm for a mid-sized patient, edge enhancement).
KERNELS: Mapping[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = MappingProxyType({
    "soft": ((0.9, 1.4), (7.0, 14.0), (0.0, 0.0)),
    "standard": ((0.6, 1.0), (10.0, 22.0), (0.0, 0.2)),
    "lung": ((0.35, 0.6), (30.0, 70.0), (0.3, 0.8)),
    "bone": ((0.3, 0.5), (45.0, 110.0), (0.5, 1.0)),
})
#: Folder layouts understood by :func:`generate`.
LAYOUTS: tuple[str, ...] = ("nnunet",)
#: Subsets: ``train`` writes imagesTr/labelsTr, ``test`` imagesTs/labelsTs.
SUBSETS: tuple[str, ...] = ("train", "test")

# Organ HU ranges per phase (parenchyma); cortex/medulla split for arterial kidneys.
_HU: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType({
    "native": MappingProxyType({"liver": (50, 66), "spleen": (40, 52), "kidney": (28, 40), "medulla": (28, 40),
                                "pancreas": (35, 50), "aorta": (35, 52), "ivc": (35, 50), "portal": (35, 50),
                                "heart": (35, 50), "lungvessel": (35, 50), "hepvessel": (30, 45)}),
    "arterial": MappingProxyType({"liver": (62, 90), "spleen": (85, 160), "kidney": (150, 230), "medulla": (60, 105),
                                  "pancreas": (95, 140), "aorta": (220, 430), "ivc": (60, 110), "portal": (100, 160),
                                  "heart": (150, 320), "lungvessel": (150, 320), "hepvessel": (60, 110)}),
    "portal": MappingProxyType({"liver": (95, 135), "spleen": (100, 135), "kidney": (140, 210), "medulla": (130, 190),
                                "pancreas": (75, 110), "aorta": (130, 200), "ivc": (110, 170), "portal": (140, 200),
                                "heart": (110, 180), "lungvessel": (110, 180), "hepvessel": (135, 190)}),
})
_PAD_VALUES = (-1024.0, -2048.0, -3024.0, -1000.0)
_PAD_P = (0.55, 0.1, 0.15, 0.2)


# ----------------------------------------------------------------------------------------- shape primitives

def _fourier(rng: np.random.Generator, amp_mm: float, n: int = 4, wavelength: tuple[float, float] = (80.0, 220.0)) -> tuple:
    """Parameters of a smooth random displacement ``sum_m a_m sin(w_m . p + phi_m)`` (``amp_mm`` per term)."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    w = d * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    a = rng.normal(size=(n, 3)) * amp_mm / np.sqrt(n)
    return w.astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32), a.astype(np.float32)


def _displace(p: np.ndarray, params: tuple | None) -> np.ndarray:
    """``p + displacement(p)``; ``p`` (3, ...) mm."""
    if params is None:
        return p
    w, phi, a = params
    out = p.copy()
    for m in range(len(phi)):
        s = np.sin(w[m, 0] * p[0] + w[m, 1] * p[1] + w[m, 2] * p[2] + phi[m])
        for c in range(3):
            out[c] += a[m, c] * s
    return out


def _local(p: np.ndarray, centre: Sequence[float], rot: np.ndarray | None) -> np.ndarray:
    """Points (3, ...) in a frame centred at ``centre`` with axes the columns of ``rot``."""
    q = p - np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (p.ndim - 1)))
    if rot is None:
        return q
    r = np.asarray(rot, dtype=np.float32)
    return np.einsum("ji,j...->i...", r, q)


def _superquadric(p: np.ndarray, centre, radii, rot=None, e: float = 2.0) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) of a superquadric ``sum |u_i / r_i|^e = 1``."""
    u = _local(p, centre, rot)
    r = np.asarray(radii, dtype=np.float32)
    rho = (np.abs(u[0] / r[0]) ** e + np.abs(u[1] / r[1]) ** e + np.abs(u[2] / r[2]) ** e) ** (1.0 / e)
    dist = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    return ((1.0 - rho) * dist / np.maximum(rho, 1e-3)).astype(np.float32)


def _ellipse2d(x: np.ndarray, y: np.ndarray, a, b, e: float = 2.0) -> np.ndarray:
    """Signed distance (mm) of the superellipse ``|x/a|^e + |y/b|^e = 1`` along rays from its centre."""
    rho = (np.abs(x / a) ** e + np.abs(y / b) ** e) ** (1.0 / e)
    return ((1.0 - rho) * np.sqrt(x * x + y * y) / np.maximum(rho, 1e-3)).astype(np.float32)


def _tube(p: np.ndarray, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to a tube along a polyline with radius interpolated along each segment."""
    best = np.full(p.shape[1:], -1e4, dtype=np.float32)
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        ab = (b - a).astype(np.float32)
        rel = p - a.astype(np.float32).reshape(3, *([1] * (p.ndim - 1)))
        t = np.clip((rel[0] * ab[0] + rel[1] * ab[1] + rel[2] * ab[2]) / max(float(ab @ ab), 1e-6), 0, 1)
        d = np.sqrt((rel[0] - t * ab[0]) ** 2 + (rel[1] - t * ab[1]) ** 2 + (rel[2] - t * ab[2]) ** 2)
        np.maximum(best, ra + t * (rb - ra) - d, out=best)
    return best


def _tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, length: float, radius: float,
          depth: int, spread: float = 32.0) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Segments ``(a, b, r_a, r_b)`` of a random branching vessel tree."""
    d = direction / np.linalg.norm(direction)
    end = root + d * length
    segs = [(root, end, radius, radius * 0.8)]
    if depth > 0:
        for _ in range(2):
            axis = np.cross(d, rng.normal(size=3))
            if np.linalg.norm(axis) < 1e-6:
                continue
            nd = rotation_matrix(axis, rng.uniform(0.4, 1.0) * spread) @ d
            segs += _tree(rng, end, nd, length * rng.uniform(0.6, 0.85), radius * 0.72, depth - 1, spread)
    return segs


def _bbox_of_points(points: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts.min(0) - pad, pts.max(0) + pad


# ----------------------------------------------------------------------------------------- painting

@dataclass
class _Structure:
    """One painted structure: signed distance and HU value functions of body-frame (or world) points.

    ``label``: the label it writes (None keeps the current one: lesions, vessels inside an organ);
    ``within``: paint only where the current label is one of these (None: everywhere).
    """

    name: str
    bbox: tuple[np.ndarray, np.ndarray]
    sd: Callable[[np.ndarray], np.ndarray]
    value: float | Callable[[np.ndarray, tuple], np.ndarray]
    label: int | None = 0
    within: tuple[int, ...] | None = None
    frame: str = "body"  # body (patient), or scanner (the table)
    width: float | None = None  # edge width (mm); None: the case's default
    meta: dict = field(default_factory=dict)


def _index_box(vox2frame: np.ndarray, bbox: tuple[np.ndarray, np.ndarray], shape: Sequence[int]) -> tuple[slice, ...] | None:
    """Voxel-index slices of the grid block covering a frame-space bounding box (None if outside)."""
    lo, hi = (np.asarray(v, dtype=np.float64) for v in bbox)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = (np.linalg.inv(vox2frame) @ corners.T)[:3]
    a = np.maximum(np.floor(idx.min(1)).astype(int) - 1, 0)
    b = np.minimum(np.ceil(idx.max(1)).astype(int) + 2, np.asarray(shape))
    if np.any(b <= a):
        return None
    return tuple(slice(int(i), int(j)) for i, j in zip(a, b))


def _paint(structures: Sequence[_Structure], shape: tuple[int, int, int], vox2body: np.ndarray, vox2scanner: np.ndarray,
           warp: tuple | None, warp_pad: float, width: float, fields: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Render ``structures`` in order (later ones on top) onto a grid: ``(hu (X, Y, Z) float32, label uint8)``."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    for s in structures:
        if s.frame == "body":
            lo, hi = s.bbox
            box = _index_box(vox2body, (np.asarray(lo) - warp_pad, np.asarray(hi) + warp_pad), shape)
        else:
            box = _index_box(vox2scanner, s.bbox, shape)
        if box is None:
            continue
        start = np.eye(4)
        start[:3, 3] = [b.start for b in box]
        sub = tuple(b.stop - b.start for b in box)
        if s.frame == "body":
            p = _displace(affine_coords(vox2body @ start, sub), warp)
        else:
            p = affine_coords(vox2scanner @ start, sub)
        sd = s.sd(p)
        alpha = sigmoid(sd / np.float32(s.width or width))
        if s.within is not None:
            alpha = alpha * np.isin(lab[box], s.within)
        if not (alpha > 1e-3).any():
            continue
        val = s.value(p, box) if callable(s.value) else np.float32(s.value)
        blk = hu[box]
        blk += alpha * (val - blk)
        if s.label is not None:
            lab[box] = np.where(alpha > 0.5, np.uint8(s.label), lab[box])
    return hu, lab


# ----------------------------------------------------------------------------------------- the subject

def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _phase_hu(rng: np.random.Generator, phase: str, wild: bool) -> dict[str, float]:
    """HU of each enhancing tissue for this case (``wild``: random soft-tissue HU, as SynthSeg varies contrast)."""
    hu = {k: _u(rng, v) for k, v in _HU[phase].items()}
    if wild:
        for k in hu:
            hu[k] = float(rng.uniform(-20, 450 if k in ("aorta", "heart", "lungvessel") else 250))
    return hu


def _structures(rng: np.random.Generator, phase: str, wild: bool, lesion_prob: float,
                fields: dict[str, np.ndarray]) -> tuple[list[_Structure], dict[str, Any]]:
    """The subject's structures in painting order, and its description."""
    L = dict(LABELS)
    s = _u(rng, (0.85, 1.15))  # skeleton scale
    fat = float(rng.uniform(0, 1) ** 1.3)  # 0 lean .. 1 obese
    hu = _phase_hu(rng, phase, wild)
    fat_hu, muscle_hu = _u(rng, (-125, -80)), _u(rng, (38, 62))
    soft_hu = _u(rng, (15, 45))
    old = rng.random() < 0.4
    bone_c, bone_t = _u(rng, (80, 200) if old else (150, 330)), _u(rng, (500, 1100))

    # body cavity (inside the muscle wall), abdomen -> chest
    a_abd, b_abd = 122 * s * (1 + 0.18 * fat) * rng.uniform(0.92, 1.08), 82 * s * (1 + 0.3 * fat) * rng.uniform(0.9, 1.1)
    a_th, b_th = 128 * s * rng.uniform(0.92, 1.08), 92 * s * rng.uniform(0.9, 1.1)
    e_cav = _u(rng, (2.0, 2.6))
    zd_r = _u(rng, (105, 150)) * s  # right diaphragm dome (z = 0: L1/L2)
    zd_l = zd_r - _u(rng, (5, 25))
    z_apex = zd_r + _u(rng, (150, 190)) * s
    yv = -0.68 * b_th  # vertebral body centre (anterior-posterior)
    t_sc = 6 + 45 * fat * rng.uniform(0.7, 1.3)  # subcutaneous fat

    def cavity_ab(z: np.ndarray, cap: bool) -> tuple[np.ndarray, np.ndarray]:
        w = np.clip((z - 40) / 80.0, 0, 1)
        w = w * w * (3 - 2 * w)
        a = a_abd + (a_th - a_abd) * w
        b = b_abd + (b_th - b_abd) * w
        if cap:  # the chest narrows towards the apex
            f = np.sqrt(np.clip(1 - (np.clip(z - (z_apex - 110), 0, None) / 115.0) ** 2, 0.05, 1))
            a, b = a * f, b * f
        return a, b

    def sd_cav(p: np.ndarray, cap: bool = True) -> np.ndarray:
        a, b = cavity_ab(p[2], cap)
        return _ellipse2d(p[0], p[1], a, b, e_cav)

    def wall(p: np.ndarray) -> np.ndarray:  # muscle thickness: thick behind (paraspinal muscles)
        ang = np.arctan2(p[1], p[0])
        return 10 * s + 38 * s * np.clip(-np.sin(ang), 0, None) ** 3

    def fat_t(p: np.ndarray) -> np.ndarray:
        ang = np.arctan2(p[1], p[0])
        return t_sc * (0.8 + 0.4 * np.abs(np.cos(ang)) + 0.3 * np.clip(np.sin(ang), 0, None))

    y_back = -(min(b_abd, b_th) + 48 * s + t_sc * 0.8) + _u(rng, (0, 12))  # flattened back on the table

    def sd_body(p: np.ndarray) -> np.ndarray:
        return np.minimum(sd_cav(p, False) + wall(p) + fat_t(p) + 2.0, p[1] - y_back)

    def dome(p: np.ndarray) -> np.ndarray:
        dr = zd_r - 75 * (((p[0] - 55 * s) / (90 * s)) ** 2 + ((p[1] - 5) / (105 * s)) ** 2)
        dl = zd_l - 75 * (((p[0] + 55 * s) / (90 * s)) ** 2 + ((p[1] - 5) / (105 * s)) ** 2)
        w = sigmoid((p[0] / 15.0).astype(np.float32))
        return w * dr + (1 - w) * dl

    big = np.array([400.0, 400.0, 700.0])
    whole = (-big, big)
    z_lo, z_hi = -400.0, z_apex + 60
    trunk = (np.array([-300.0, -300.0, z_lo]), np.array([300.0, 300.0, z_hi]))
    out: list[_Structure] = []
    tex = fields

    def texture(name: str, amp: float, base: float) -> Callable:
        return lambda p, box: base + amp * tex[name][box]

    out.append(_Structure("skin", trunk, sd_body, _u(rng, (0, 50))))
    out.append(_Structure("subcutaneous_fat", trunk, lambda p: sd_body(p) - 2.0, texture("t1", 8.0, fat_hu)))
    if rng.random() < 0.35:  # breasts
        for sgn in (1, -1):
            c = (sgn * 70 * s, b_th + 25 + t_sc * 0.5, zd_r + 45)
            rad = np.array([55, 40, 55]) * s * rng.uniform(0.7, 1.3)
            out.append(_Structure("breast", _bbox_of_points([c], rad.max() + 5), lambda p, c=c, r=rad: _superquadric(p, c, r),
                                  texture("t2", 60.0, fat_hu + 25)))
    arms = rng.random() < 0.2
    if arms:
        for sgn in (1, -1):
            c = np.array([sgn * (a_abd + 45 + t_sc + rng.uniform(0, 30)), rng.uniform(-20, 25), 0.0])
            ra = np.array([38, 42]) * s
            bb = (np.array([c[0] - 60, c[1] - 60, -250.0]), np.array([c[0] + 60, c[1] + 60, 300.0]))
            out.append(_Structure("arm", bb, lambda p, c=c, ra=ra: np.minimum(_ellipse2d(p[0] - c[0], p[1] - c[1], ra[0], ra[1]), 200 - p[2]),
                                  texture("t1", 20.0, muscle_hu - 20)))
            out.append(_Structure("humerus", bb, lambda p, c=c: np.minimum(11 * s - np.hypot(p[0] - c[0], p[1] - c[1]), 200 - p[2]),
                                  bone_t * 0.8))
    out.append(_Structure("muscle_wall", trunk, lambda p: sd_cav(p, False) + wall(p), texture("t1", 6.0, muscle_hu)))
    # cavity content: abdomen bowel/fat/gas texture, chest mediastinal fat
    oral = rng.random() < 0.15
    bowel_hu, gas_frac = (_u(rng, (150, 350)) if oral else soft_hu), _u(rng, (0.0, 0.12))
    loop_w = _u(rng, (0.25, 0.5)) * (1.3 - 0.6 * fat)

    def cavity_value(p: np.ndarray, box: tuple) -> np.ndarray:
        b1, b2 = tex["bowel"][box], tex["gas"][box]
        loop = np.abs(b1) < loop_w
        v = np.where(loop, bowel_hu + 8 * tex["t2"][box], fat_hu + 5 * tex["t1"][box]).astype(np.float32)
        v = np.where((b2 > 2.2 - 8 * gas_frac) & loop, -950.0, v)
        return np.where(p[2] > dome(p) + 3, fat_hu + 20, v).astype(np.float32)

    out.append(_Structure("cavity", trunk, sd_cav, cavity_value))
    out.append(_Structure("diaphragm", trunk, lambda p: np.minimum(sd_cav(p) + 4, 3.0 - np.abs(p[2] - dome(p))), muscle_hu))

    # lungs: the rib cage above the domes, out of the mediastinum
    xm = _u(rng, (-8, 8))
    pleura = _u(rng, (1.5, 4.0))
    wmed = _u(rng, (14, 24)) * s
    lung_hu = _u(rng, (-900, -780))
    grav = _u(rng, (20, 150))  # dependent (posterior) density

    def lung_sd(p: np.ndarray, sgn: int) -> np.ndarray:
        side = sgn * (p[0] - xm) - wmed * (1 + 0.6 * sigmoid(((p[1] - yv - 30) / 15).astype(np.float32)))
        spine = np.hypot(p[0], p[1] - yv) - 32 * s
        return np.minimum.reduce([sd_cav(p) - pleura, p[2] - dome(p) - 4, side, spine, z_apex - p[2]])

    lung_bb = (np.array([-250.0, -200.0, min(zd_l, zd_r) - 110]), np.array([250.0, 200.0, z_apex + 10]))

    def lung_value(p: np.ndarray, box: tuple) -> np.ndarray:
        dep = np.clip((-p[1] + 0.2 * b_th) / (1.2 * b_th), 0, 1)
        base = lung_hu + grav * dep ** 2 + 15 * tex["t1"][box]
        # small peripheral vessels: where two smooth fields both cross zero (curves in 3D)
        small = sigmoid((0.12 - np.abs(tex["t2"][box])) / 0.03) * sigmoid((0.12 - np.abs(tex["gas"][box])) / 0.03)
        return (base + small * (0.6 * (hu["lungvessel"] - base))).astype(np.float32)

    out.append(_Structure("lung_right", lung_bb, lambda p: lung_sd(p, 1), lung_value, L["lung_right"]))
    out.append(_Structure("lung_left", lung_bb, lambda p: lung_sd(p, -1), lung_value, L["lung_left"]))
    for sgn, lab in ((1, L["lung_right"]), (-1, L["lung_left"])):
        hilum = np.array([sgn * 42 * s + xm, yv + 55 * s, zd_r + 40 * s])
        segs: list = []
        for d in ([sgn * 0.5, 0.1, 1.0], [sgn * 1.0, 0.2, 0.3], [sgn * 1.0, -0.3, -0.4], [sgn * 0.6, -0.6, -0.8], [sgn * 0.5, -0.2, -1.0],
                  [sgn * 0.4, 0.6, -0.5], [sgn * 0.7, 0.5, 0.4]):
            segs += _tree(rng, hilum, np.asarray(d) + rng.normal(0, 0.2, 3), rng.uniform(35, 50) * s, rng.uniform(4, 6.0), 4)
        for a, b, ra, rb in segs:
            pts = np.stack([a, b])
            out.append(_Structure("lung_vessel", _bbox_of_points(pts, ra + 3), lambda p, pts=pts, r=np.array([ra, rb]): _tube(p, pts, r),
                                  hu["lungvessel"], None, (lab,), width=0.6))
    out.append(_Structure("mediastinum", lung_bb, lambda p: np.minimum.reduce([sd_cav(p), wmed + 4 - np.abs(p[0] - xm), p[2] - dome(p) - 3]),
                          fat_hu + 25))
    # heart
    hc = np.array([xm - 30 * s, 24 * s, zd_l + 40 * s])
    hr = np.array([54, 42, 48]) * s * rng.uniform(0.88, 1.12)
    hrot = rotation_matrix([0, 0, 1], _u(rng, (20, 45)))
    out.append(_Structure("pericardial_fat", _bbox_of_points([hc], hr.max() + 12), lambda p: _superquadric(p, hc, hr + 6, hrot), fat_hu + 10))
    out.append(_Structure("heart", _bbox_of_points([hc], hr.max() + 6), lambda p: _superquadric(p, hc, hr, hrot),
                          texture("t2", 12.0, hu["heart"])))
    trachea = np.array([[0, yv + 52 * s, zd_r + 60], [0, yv + 55 * s, z_apex + 40]])
    out.append(_Structure("trachea", _bbox_of_points(trachea, 14), lambda p: _tube(p, trachea, np.array([9.0, 9.0]) * s), -980.0))

    # abdominal organs
    warp_amp = _u(rng, (4, 10))

    def organ(name: str, label: int | None, sdf: Callable, bb: tuple, value, **kw) -> None:
        dp = _fourier(rng, warp_amp * kw.pop("amp", 1.0))
        lo, hi = bb
        pad = np.abs(dp[2]).sum(0).max() + 2
        out.append(_Structure(name, (np.asarray(lo) - pad, np.asarray(hi) + pad), lambda p: sdf(_displace(p, dp)), value, label, **kw))

    # stomach
    sc = np.array([-45 * s, 32 * s, zd_l - 50 * s])
    sr = np.array([42, 36, 52]) * s * rng.uniform(0.75, 1.25)
    st_content = rng.choice(["gas", "fluid", "contrast"], p=[0.4, 0.45, 0.15])
    st_hu = {"gas": -990.0, "fluid": _u(rng, (0, 35)), "contrast": _u(rng, (150, 400))}[str(st_content)]
    level = sc[1] + _u(rng, (-10, 25))

    def stomach_value(p, box):
        return np.where(p[1] > level, -990.0 if st_content != "gas" else -990.0, st_hu).astype(np.float32)

    organ("stomach_wall", 0, lambda p: _superquadric(p, sc, sr + 4), _bbox_of_points([sc], sr.max() + 8), soft_hu + 20)
    organ("stomach", 0, lambda p: _superquadric(p, sc, sr), _bbox_of_points([sc], sr.max() + 4), stomach_value)
    # liver: right lobe and left lobe, under the right dome, inside the cavity
    lc = np.array([60 * s, -6 * s, zd_r - 68 * s])
    lr = np.array([72, 84, 78]) * s * rng.lognormal(0, 0.08)
    llc = np.array([-18 * s, 38 * s, zd_r - 40 * s])
    llr = np.array([55, 34, 32]) * s * rng.lognormal(0, 0.15)

    def liver_sd(p):
        lobes = np.maximum(_superquadric(p, lc, lr, None, 2.2), _superquadric(p, llc, llr, None, 2.0))
        return np.minimum.reduce([lobes, sd_cav(p) - 2, dome(p) - 5 - p[2]])

    liver_bb = (np.minimum(lc - lr, llc - llr) - 4, np.maximum(lc + lr, llc + llr) + 4)
    organ("liver", L["liver"], liver_sd, liver_bb, texture("t1", 6.0, hu["liver"]))
    if rng.random() < 0.55:  # gallbladder
        gc = np.array([40 * s, 40 * s, lc[2] - 40 * s])
        gr = np.array([14, 14, 32]) * s * rng.uniform(0.7, 1.3)
        grot = rotation_matrix([1, 0, 0], _u(rng, (-40, -10)))
        organ("gallbladder", 0, lambda p: _superquadric(p, gc, gr, grot), _bbox_of_points([gc], gr.max() + 3), _u(rng, (0, 25)), amp=0.4)

    # spleen
    spc = np.array([-88 * s, -32 * s, zd_l - 58 * s])
    spr = np.array([24, 54, 50]) * s * rng.lognormal(0, 0.12)
    sprot = rotation_matrix([0, 0, 1], _u(rng, (-45, -20)))

    def spleen_sd(p):
        return np.minimum.reduce([_superquadric(p, spc, spr, sprot, 2.2), sd_cav(p) - 2, dome(p) - 5 - p[2]])

    spleen_val = texture("t2", 25.0 if phase == "arterial" else 5.0, hu["spleen"])
    organ("spleen", L["spleen"], spleen_sd, _bbox_of_points([spc], spr.max() + 4), spleen_val)
    # kidneys
    zk_l = _u(rng, (-18, 18)) * s
    kidneys = {}
    for side, sgn, zk in (("kidney_left", -1, zk_l), ("kidney_right", 1, zk_l - _u(rng, (0, 25)))):
        kc = np.array([sgn * 68 * s * rng.uniform(0.92, 1.08), yv + 12 * s, zk])
        kr = np.array([26, 23, 52]) * s * rng.lognormal(0, 0.1)
        krot = rotation_matrix([0, 0, 1], -sgn * _u(rng, (20, 40))) @ rotation_matrix([0, 1, 0], sgn * _u(rng, (8, 20)))
        sinus_c = kc + krot @ np.array([-sgn * 15 * s, 4, 0])
        sinus_r = np.array([13, 10, 27]) * s
        kidneys[side] = (kc, kr, krot, sinus_c)

        def ksd(p, kc=kc, kr=kr, krot=krot, sc_=sinus_c, sr_=sinus_r):
            return np.minimum(_superquadric(p, kc, kr, krot), -_superquadric(p, sc_, sr_, krot))

        organ("perirenal_fat", 0, lambda p, kc=kc, kr=kr, krot=krot: _superquadric(p, kc, kr + 10, krot),
              _bbox_of_points([kc], kr.max() + 14), fat_hu + 10, amp=0.5)
        organ(side, L[side], ksd, _bbox_of_points([kc], kr.max() + 4), hu["kidney"], amp=0.5)
        organ("renal_medulla", None, lambda p, kc=kc, kr=kr, krot=krot: _superquadric(p, kc, kr * 0.68, krot),
              _bbox_of_points([kc], kr.max()), hu["medulla"], within=(L[side],), amp=0.5)
        organ("renal_sinus", 0, lambda p, sc_=sinus_c, sr_=sinus_r, krot=krot: _superquadric(p, sc_, sr_ * 0.9, krot),
              _bbox_of_points([sinus_c], sinus_r.max() + 4), fat_hu + 30, amp=0.5)
    # psoas muscles
    for sgn in (1, -1):
        ps = np.array([[sgn * 32 * s, yv + 5, 80], [sgn * 42 * s, yv + 8, -40], [sgn * 55 * s, yv + 20, -160]])
        out.append(_Structure("psoas", _bbox_of_points(ps, 30), lambda p, ps=ps: _tube(p, ps, np.array([6, 18, 26]) * s), muscle_hu))
    # vessels: aorta, IVC, portal/splenic, renal
    z_arch = zd_r + _u(rng, (95, 125)) * s
    z_bif = _u(rng, (-120, -75)) * s
    jit = lambda n: rng.normal(0, 3.0, (n, 3))  # noqa: E731
    aorta = np.array([[-8 * s, yv + 32 * s, z_bif], [-13 * s, yv + 33 * s, -20], [-15 * s, yv + 30 * s, 60],
                      [-20 * s, yv + 22 * s, zd_l + 25], [-24 * s, yv + 14 * s, zd_l + 85], [-24 * s, yv + 12 * s, z_arch - 20],
                      [-8 * s, yv + 45 * s, z_arch], [10 * s, yv + 78 * s, z_arch - 22], [12 * s, yv + 84 * s, hc[2] + 30]]) + jit(9)
    r_ab = _u(rng, (8.5, 12.5)) * s
    aorta_r = r_ab * np.array([1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.45])
    ivc = np.array([[22 * s, yv + 30 * s, z_bif - 10], [22 * s, yv + 34 * s, zd_r - 50], [14 * s, yv + 50 * s, zd_r + 8]]) + jit(3)
    ivc_r = np.array([10, 12, 13]) * s * rng.uniform(0.8, 1.2)
    conf = np.array([8 * s, yv + 50 * s, 0.0]) + jit(1)[0]
    portal = np.stack([conf, conf + [28 * s, 10, 45 * s]])
    splenic = np.stack([conf, [-40 * s, yv + 42 * s, 18], spc + [16, 25, -10]])
    for nm, pts, rr, v in (("ivc", ivc, ivc_r, hu["ivc"]), ("portal_vein", portal, np.array([7.0, 7.5]) * s, hu["portal"]),
                           ("splenic_vein", splenic, np.array([4.5, 4.5, 4.0]) * s, hu["portal"])):
        out.append(_Structure(nm, _bbox_of_points(pts, rr.max() + 3), lambda p, pts=pts, rr=rr: _tube(p, pts, rr), v))
    for sd_ in ("kidney_left", "kidney_right"):
        kc, kr, krot, sinc = kidneys[sd_]
        src = ivc[0] + [0, 0, (kc[2] - ivc[0][2])] if sd_ == "kidney_right" else np.array([aorta[1][0], aorta[1][1], kc[2] + 8])
        rv = np.stack([np.asarray(src, dtype=float), sinc])
        out.append(_Structure("renal_vessel", _bbox_of_points(rv, 8), lambda p, rv=rv: _tube(p, rv, np.array([4.5, 4.0]) * s),
                              hu["ivc"] if sd_ == "kidney_right" else hu["aorta"]))
    iliac = [np.stack([aorta[0], aorta[0] + [sgn * 35 * s, 6, -85]]) for sgn in (1, -1)]
    for il in iliac:
        out.append(_Structure("iliac_artery", _bbox_of_points(il, 12), lambda p, il=il: _tube(p, il, np.array([7.0, 6.0]) * s), hu["aorta"]))
    sma = np.stack([aorta[1] + [0, r_ab, 15], aorta[1] + [3, 25 + r_ab, -60]])
    out.append(_Structure("sma", _bbox_of_points(sma, 8), lambda p: _tube(p, sma, np.array([4.0, 3.5]) * s), hu["aorta"]))

    # pancreas, between the duodenum and the splenic hilum, anterior to the aorta and splenic vein
    pan = np.array([[36 * s, conf[1] + 8, -18 * s], [10 * s, conf[1] + 20, -4], [-28 * s, conf[1] + 16, 8],
                    [-62 * s, splenic[1][1] + 4, 20], [spc[0] + 22, spc[1] + 30, spc[2] - 18]]) + jit(5) * 1.5
    pan_r = np.array([16, 12, 11, 10, 8]) * s * rng.lognormal(0, 0.12)
    fatty = _u(rng, (0, 35)) if old else _u(rng, (0, 10))
    organ("duodenum", 0, lambda p: _tube(p, np.array([pan[0] + [22, -5, 30], pan[0] + [26, 0, -10], pan[0] + [-5, 8, -40]]),
                                         np.array([9.0, 10, 9]) * s), _bbox_of_points(pan[:1], 70), soft_hu + 5, amp=0.4)
    organ("pancreas", L["pancreas"], lambda p: _tube(p, pan, pan_r), _bbox_of_points(pan, pan_r.max() + 4),
          lambda p, box: (hu["pancreas"] - fatty + (8 + fatty) * tex["t2"][box]).astype(np.float32), amp=0.5)
    # hepatic veins to the IVC at the dome, portal branches from the porta hepatis
    for root, dirs in ((ivc[2] - [4, 6, 10], ([1, -0.2, -0.6], [0.3, 0.6, -0.6], [-0.7, 0.6, -0.5])),
                       (portal[1], ([1, -0.2, 0.2], [-0.8, 0.5, 0.3], [0.5, 0.3, -0.7]))):
        for d in dirs:
            for a, b, ra, rb in _tree(rng, np.asarray(root, float), np.asarray(d, float), rng.uniform(40, 60) * s, rng.uniform(4, 6), 2):
                pts = np.stack([a, b])
                out.append(_Structure("liver_vessel", _bbox_of_points(pts, ra + 3), lambda p, pts=pts, r=np.array([ra, rb]): _tube(p, pts, r),
                                      hu["hepvessel"], None, (L["liver"],), width=0.6))
    # aorta last among soft tissue: it lies on top of everything it crosses
    out.append(_Structure("aorta", _bbox_of_points(aorta, aorta_r.max() + 3), lambda p: _tube(p, aorta, aorta_r),
                          texture("t2", 6.0, hu["aorta"]), L["aorta"]))
    if old:  # wall calcifications
        for _ in range(int(rng.integers(1, 8))):
            k = int(rng.integers(0, len(aorta) - 1))
            t = rng.uniform()
            c0 = aorta[k] + t * (aorta[k + 1] - aorta[k])
            rad = aorta_r[k] - 1.2
            d = np.cross(aorta[k + 1] - aorta[k], rng.normal(size=3))
            c0 = c0 + d / np.linalg.norm(d) * rad
            rc = _u(rng, (1.5, 3.0))
            out.append(_Structure("calcification", _bbox_of_points([c0], rc + 2), lambda p, c0=c0, rc=rc: _superquadric(p, c0, [rc] * 3),
                                  _u(rng, (400, 1000)), None, (L["aorta"],), width=0.5))

    # lesions, labelled as their organ
    lesions = []
    if rng.random() < lesion_prob:
        for _ in range(int(rng.integers(1, 4))):
            kind = str(rng.choice(["liver_cyst", "liver_metastasis", "kidney_cyst"], p=[0.35, 0.35, 0.3]))
            if kind.startswith("liver"):
                lab, c = L["liver"], lc + rng.uniform(-0.45, 0.45, 3) * lr
                r = _u(rng, (4, 22) if kind == "liver_cyst" else (5, 28))
                v = _u(rng, (0, 18)) if kind == "liver_cyst" else hu["liver"] * _u(rng, (0.35, 0.75))
                within = (lab,)
            else:
                side = str(rng.choice(["kidney_left", "kidney_right"]))
                kc, kr, krot, _ = kidneys[side]
                lab, v, r = L[side], _u(rng, (0, 18)), _u(rng, (4, 22))
                c = kc + krot @ (rng.uniform(-0.7, 0.7, 3) * kr)
                within = None  # an exophytic cyst bulges out of the kidney and is labelled kidney
            lesions.append({"kind": kind, "label": lab, "centre_mm": [round(float(x), 1) for x in c], "radius_mm": round(r, 1)})
            dp = _fourier(rng, r * 0.15, 3, (20.0, 60.0))
            out.append(_Structure(kind, _bbox_of_points([c], r * 1.3 + 3), lambda p, c=c, r=r, dp=dp: _superquadric(_displace(p, dp), c, [r] * 3),
                                  v, lab, within, width=0.7 if "cyst" in kind else 2.0))

    # skeleton: vertebrae with discs and posterior elements, ribs, sternum
    lvl = _u(rng, (29, 36)) * s
    disc_hu = _u(rng, (70, 110))
    z0 = _u(rng, (0, lvl))
    spine_bb = (np.array([-60.0, yv - 80 * s, z_lo]), np.array([60.0, yv + 30 * s, z_hi]))

    def spine_sd(p):
        y = p[1] - yv
        body = _ellipse2d(p[0], y, 22 * s, 18 * s, 2.3)
        canal = np.hypot(p[0], y + 31 * s)
        arch = 13 * s - canal
        spinous = _ellipse2d(p[0], y + 52 * s, 5 * s, 16 * s)
        u = np.mod(p[2] - z0, lvl) / lvl
        transverse = np.minimum(_ellipse2d(np.abs(p[0]) - 28 * s, y + 24 * s, 17 * s, 6 * s), 0.35 * lvl - np.abs(u - 0.55) * lvl)
        post = np.maximum.reduce([arch, spinous, transverse])
        return np.maximum(body, np.minimum(post, canal - 8 * s))

    def spine_value(p, box):
        y = p[1] - yv
        body = _ellipse2d(p[0], y, 22 * s, 18 * s, 2.3)
        u = np.mod(p[2] - z0, lvl) / lvl
        v = np.where(body < 1.5, bone_t, bone_c + 25 * tex["t2"][box])
        v = np.where((body > -1) & (u < 0.2), disc_hu, v)
        return v.astype(np.float32)

    out.append(_Structure("spine", spine_bb, spine_sd, spine_value, width=0.6))
    out.append(_Structure("spinal_canal", spine_bb, lambda p: 8 * s - np.hypot(p[0], p[1] - yv + 31 * s), _u(rng, (0, 25))))
    period, kappa, thick = _u(rng, (22, 28)) * s, _u(rng, (0.35, 0.6)), _u(rng, (7, 11)) * s

    def ribs_sd(p):
        d = sd_cav(p, False)
        radial = np.minimum(-1 - d, d + 1 + thick * 0.8)
        u = np.mod(p[2] + kappa * (p[1] - yv), period)
        band = thick / 2 - np.abs(u - period / 2)
        ang = np.arctan2(p[1], p[0])
        z_min = 75 - 115 * np.clip(-np.sin(ang) * 0.5 + 0.5, 0, 1)
        return np.minimum.reduce([radial, band, p[2] - z_min, np.abs(p[0]) - 22 * s, z_apex - 20 - p[2]])

    out.append(_Structure("ribs", trunk, ribs_sd, lambda p, box: (bone_c + 0.3 * bone_t + 0 * p[0]).astype(np.float32), width=0.6))
    stern = np.array([[0, b_th - 6, zd_r + 10], [0, b_th - 2, z_apex - 10]])
    out.append(_Structure("sternum", _bbox_of_points(stern, 25), lambda p: _tube(p, stern, np.array([9.0, 10.0]) * s), bone_c + 100))

    desc = {"scale": round(s, 3), "fat": round(fat, 3), "phase": phase, "wild_contrast": bool(wild), "arms_down": bool(arms),
            "stomach": str(st_content), "oral_contrast": bool(oral), "lesions": lesions,
            "hu": {k: round(v, 1) for k, v in hu.items()}, "y_back": float(y_back), "z_range": (float(z_bif - 100), float(z_apex))}
    return out, desc


def _table(rng: np.random.Generator, y_top: float) -> list[_Structure]:
    """Couch (carbon shells around a foam core) and pad, in scanner coordinates below the patient."""
    pad = _u(rng, (0, 40)) if rng.random() < 0.6 else 0.0
    core, shell, curve = _u(rng, (15, 45)), _u(rng, (1.5, 4)), _u(rng, (0.0, 6e-4))
    top = y_top - pad
    bb = (np.array([-260.0, top - core - 2 * shell - 10, -5000.0]), np.array([260.0, y_top + 80, 5000.0]))
    surf = lambda p: top + curve * p[0] ** 2  # noqa: E731  (the couch is curved)
    width = lambda p: 230 - np.abs(p[0])  # noqa: E731
    out = [_Structure("table_shell", bb, lambda p: np.minimum.reduce([surf(p) - p[1], p[1] - (surf(p) - core - 2 * shell), width(p)]),
                      _u(rng, (80, 500)), frame="scanner"),
           _Structure("table_core", bb, lambda p: np.minimum.reduce([surf(p) - shell - p[1], p[1] - (surf(p) - core - shell), width(p) - shell]),
                      _u(rng, (-950, -700)), frame="scanner")]
    if pad > 0:
        out.append(_Structure("table_pad", bb, lambda p: np.minimum.reduce([y_top + curve * p[0] ** 2 - p[1], p[1] - surf(p), width(p)]),
                              _u(rng, (-900, -500)), frame="scanner"))
    return out


# ----------------------------------------------------------------------------------------- the case

def make_case(
    rng: np.random.Generator,
    *,
    matrix: int | None = None,
    n_slices: int | None = None,
    fov_mm: float | None = None,
    increment_mm: float | None = None,
    thickness_mm: float | None = None,
    phase: str | None = None,
    kernel: str | None = None,
    axcodes: str | None = None,
    tilt: bool = True,
    wild_prob: float = 0.15,
    lesion_prob: float = 0.35,
) -> dict[str, Any]:
    """One synthetic CT case.

    Args:
        rng: random generator (the only source of randomness).
        matrix: in-plane matrix (square); None draws 128-160.
        n_slices: number of slices; None draws 40-80.
        fov_mm: in-plane field of view; None draws 300-450 mm (wider for larger patients).
        increment_mm: slice spacing; None draws 2.5-5 mm.
        thickness_mm: slice thickness (profile width); None draws 0.6-5 mm (at most 1.5 increments).
        phase: one of :data:`PHASES`; None draws one.
        kernel: one of :data:`KERNELS`; None draws one.
        axcodes: storage orientation (three letters, the slice axis last, e.g. ``"LPS"``); None draws an axial one.
        tilt: allow gantry tilt and patient rotation.
        wild_prob: probability of random soft-tissue HU instead of the phase's.
        lesion_prob: probability of lesions (liver cysts/metastases, kidney cysts).

    Returns:
        ``image`` (X, Y, Z) int16 HU, ``label`` (X, Y, Z) uint8 (:data:`LABELS`), ``affine`` (4, 4) RAS, ``meta``.

    Raises:
        ValueError: on a bad option.
    """
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    phase = phase or str(rng.choice(PHASES, p=[0.25, 0.25, 0.5]))
    kernel = kernel or str(rng.choice(list(KERNELS), p=[0.3, 0.45, 0.18, 0.07]))
    wild = bool(rng.random() < wild_prob)
    n = int(matrix or rng.integers(128, 161))
    nz = int(n_slices or rng.integers(40, 81))
    inc = float(increment_mm or rng.uniform(2.5, 5.0))
    thick = float(thickness_mm or min(5.0, rng.uniform(0.6, 1.5 * inc)))
    if min(n, nz) < 4 or inc <= 0 or thick <= 0:
        raise ValueError("matrix and n_slices must be >= 4, increment and thickness positive")

    fields: dict[str, np.ndarray] = {}
    structs, desc = _structures(rng, phase, wild, lesion_prob, fields)
    fov = float(fov_mm or np.clip(rng.uniform(300, 450) * (0.85 + 0.3 * desc["fat"]), 300, 500))
    px = fov / n

    # patient pose in the scanner frame (isocentre at the origin), gantry tilt, storage orientation
    roll, pitch, yaw = (rng.uniform(-7, 7), rng.uniform(-4, 4), rng.uniform(-4, 4)) if tilt else (0.0, 0.0, 0.0)
    rot = rotation_matrix([0, 0, 1], roll) @ rotation_matrix([1, 0, 0], pitch) @ rotation_matrix([0, 1, 0], yaw)
    z_c = float(rng.uniform(-30, 110))
    shift = np.array([rng.uniform(-30, 30), rng.uniform(-45, 25) - 0.25 * desc["y_back"], -z_c])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, shift  # body -> scanner
    gantry = float(rng.uniform(-25, 25)) if tilt and rng.random() < 0.25 else 0.0
    if axcodes is None:
        lr, ap = str(rng.choice(["L", "R"], p=[0.75, 0.25])), str(rng.choice(["P", "A"], p=[0.8, 0.2]))
        inplane = lr + ap if rng.random() < 0.9 else ap + lr
        axcodes = inplane + str(rng.choice(["S", "I"], p=[0.6, 0.4]))
    direction = rotation_matrix([1, 0, 0], gantry) @ axcodes_matrix(axcodes)
    if abs(direction[2, 2]) < 0.5:
        raise ValueError(f"axcodes {axcodes!r}: the slice axis (third letter) must be S or I for an axial CT")
    sp = np.array([px, px, inc])
    centre_idx = (np.array([n, n, nz]) - 1) / 2
    aff = np.eye(4)
    aff[:3, :3] = direction * sp[None, :]
    aff[:3, 3] = -aff[:3, :3] @ centre_idx
    world_shift = rng.uniform(-250, 250, 3)  # DICOM patient coordinates have an arbitrary origin
    to_world = np.eye(4)
    to_world[:3, 3] = world_shift
    aff = to_world @ aff
    aff = aff.astype(np.float32).astype(np.float64)
    aff[3] = (0, 0, 0, 1)
    shape = (n, n, nz)
    body_to_world = to_world @ pose
    world_to_body = np.linalg.inv(body_to_world)
    y_top = float((pose @ [0, desc["y_back"] - 1.0, 0, 1])[1])
    structs = structs + _table(rng, y_top)

    # textures on the output grid (shared by all sub-slices)
    c = lambda mm: int(np.clip(round(fov / mm), 2, 40))  # noqa: E731
    cz = lambda mm: int(np.clip(round(nz * inc / mm), 2, 40))  # noqa: E731
    fields["t1"] = smooth_field(rng, shape, (c(40), c(40), cz(40)))
    fields["t2"] = smooth_field(rng, shape, (c(15), c(15), cz(15)))
    fields["bowel"] = smooth_field(rng, shape, (c(28), c(28), cz(28)))
    fields["gas"] = smooth_field(rng, shape, (c(20), c(20), cz(20)))
    warp = _fourier(rng, float(rng.uniform(2, 8)), 4, (150.0, 400.0))
    warp_pad = float(np.abs(warp[2]).sum(0).max() + 2)

    # the slice profile: average sub-slices across the thickness; labels from the slice's centre plane
    n_sub = int(min(5, 2 * int(np.ceil(thick / 2.0 / 1.2)) + 1)) if thick > 1.2 else 1
    offsets = np.linspace(-0.5, 0.5, n_sub + 2)[1:-1] * thick / inc if n_sub > 1 else np.zeros(1)
    width = 0.3 * px
    hu = np.zeros(shape, dtype=np.float32)
    label = None
    for o in offsets:
        shift_k = np.eye(4)
        shift_k[2, 3] = o
        v2w = aff @ shift_k
        h, lab = _paint(structs, shape, world_to_body @ v2w, np.linalg.inv(to_world) @ v2w, warp, warp_pad, width, fields)
        hu += h / len(offsets)
        if label is None or abs(o) < 1e-9:
            label = lab

    # reconstruction: kernel PSF, edge enhancement, correlated noise, cupping, calibration, FOV circle
    psf, noise_hu, sharpen = (_u(rng, r) for r in KERNELS[kernel])
    hu = ndi.gaussian_filter(hu, (psf / px, psf / px, 0.0))
    if sharpen > 0:
        hu = hu + sharpen * (hu - ndi.gaussian_filter(hu, (1.5, 1.5, 0.0)))
    size_factor = float(np.exp((desc["fat"] - 0.3) * 0.8 + (desc["scale"] - 1) * 1.5))
    sigma = min(250.0, noise_hu * np.sqrt(3.0 / max(thick, 0.6)) * size_factor)
    corr = float(rng.uniform(0.5, 1.1)) * (1.6 if kernel == "soft" else 1.0)
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (corr, corr, 0.3))
    noise *= sigma / max(float(noise.std()), 1e-6)
    hu += noise
    ii, jj = np.meshgrid((np.arange(n) - centre_idx[0]) * px, (np.arange(n) - centre_idx[1]) * px, indexing="ij")
    r2 = (ii * ii + jj * jj).astype(np.float32)
    cup = float(rng.uniform(0, 20))
    hu -= (cup * np.exp(-r2 / (150.0 ** 2)))[:, :, None] * (hu > -500)
    hu = hu * float(rng.uniform(0.98, 1.02)) + float(rng.uniform(-8, 8))
    pad_value = float(rng.choice(_PAD_VALUES, p=_PAD_P))
    outside = (r2 > (fov / 2) ** 2)[:, :, None]
    hu = np.where(outside, pad_value, hu)
    label = np.where(outside, 0, label).astype(np.uint8)
    image = np.clip(np.round(hu), -3024, 3071).astype(np.int16)

    voxel_ml = float(abs(np.linalg.det(aff[:3, :3]))) / 1000.0
    counts = np.bincount(label.ravel(), minlength=len(LABELS))
    meta = {**desc, "kernel": kernel, "matrix": n, "slices": nz, "fov_mm": round(fov, 1), "pixel_mm": round(px, 3),
            "increment_mm": round(inc, 3), "thickness_mm": round(thick, 3), "gantry_tilt_deg": round(gantry, 1),
            "pose_deg": [round(float(v), 1) for v in (roll, pitch, yaw)], "axcodes": axcodes, "noise_hu": round(sigma, 1),
            "pad_value": pad_value,
            "volumes_ml": {k: round(float(counts[v]) * voxel_ml, 2) for k, v in LABELS.items() if v}}
    for k in ("y_back", "z_range"):
        meta.pop(k)
    return {"image": image, "label": label, "affine": aff, "meta": meta}


# ----------------------------------------------------------------------------------------- writing a set

def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of the set made with ``seed``."""
    return np.random.default_rng([int(seed), int(index), 35])


def generate(
    out_dir: Path | str,
    n: int,
    seed: int = 0,
    layout: str = "nnunet",
    *,
    subset: str = "train",
    dicom: bool = False,
    workers: int = 1,
    progress: bool | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Write ``n`` CT cases to ``out_dir`` in nnU-Net layout, plus ``dataset.json`` and ``manifest.csv``.

    Case ``i`` comes from :func:`case_rng` ``(seed, i)`` only, so a set of 10 starts with the set of 5. Files:
    ``imagesTr/CT_XXXXX_0000.nii.gz`` and ``labelsTr/CT_XXXXX.nii.gz`` (``subset="test"``: ``imagesTs``,
    ``labelsTs``), int16 HU and uint8 labels; with ``dicom``, also ``dicom/CT_XXXXX/`` (one CT file per slice,
    RescaleSlope 1, RescaleIntercept -1024, RescaleType HU). ``dataset.json`` has ``channel_names {"0": "CT"}``
    and :data:`LABELS`. The DICOM copy holds the same voxels at the same world positions; a left-handed storage
    order (e.g. ``LPI``) comes back from any DICOM reader with the slices reversed, since readers order slices
    along the ImageOrientationPatient normal.

    Args:
        out_dir: output folder (created).
        n: number of cases (>= 0).
        seed: random seed of the set.
        layout: ``"nnunet"``.
        subset: ``"train"`` or ``"test"``.
        dicom: also write each image as a DICOM series.
        workers: worker processes (the cases do not depend on it).
        progress: tqdm progress bar (None: only on a terminal).
        **options: passed to :func:`make_case` (``matrix``, ``n_slices``, ``phase``, ...).

    Returns:
        One record per case: ``case``, ``index``, absolute ``paths`` (image, label, dicom) and ``meta``.

    Raises:
        ValueError: a bad layout, subset, ``n`` or option.
    """
    from tqdm.auto import tqdm

    from medcnn.synth import check_case_options, check_workers, map_jobs

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    check_case_options(n, options, make_case, ['subset', 'dicom', 'workers', 'progress'])
    workers = check_workers(workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    logger.info("generating %d CT case(s) in %s (seed=%d, subset=%s)", n, out_dir, seed, subset)
    jobs = [(out_dir, int(seed), i, subset, bool(dicom), options) for i in range(int(n))]
    records = list(tqdm(map_jobs(_write_case, jobs, workers), total=len(jobs), desc="ct-organs", unit="case", disable=not show))
    rel = lambda p: p.relative_to(out_dir).as_posix() if p is not None else ""  # noqa: E731
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "image", "label", "dicom", "phase", "kernel", "thickness_mm", "lesions"])
        for r in records:
            m = r["meta"]
            w.writerow([r["case"], rel(r["paths"]["image"]), rel(r["paths"]["label"]), rel(r["paths"].get("dicom")),
                        m["phase"], m["kernel"], m["thickness_mm"], len(m["lesions"])])
    entries = [{"image": [rel(r["paths"]["image"])], "label": rel(r["paths"]["label"])} for r in records]
    doc = {
        "name": "CT-organs-synthetic",
        "description": "Synthetic abdominal/thoracic CT (HU) made by medcnn.synth.ct_organs; TotalSegmentator label names",
        "tensorImageSize": "3D",
        "channel_names": {"0": "CT"},
        "modality": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(records) if subset == "train" else 0,
        "numTest": len(records) if subset == "test" else 0,
        "file_ending": ".nii.gz",
        "training": entries if subset == "train" else [],
        "test": [e["image"] for e in entries] if subset == "test" else [],
    }
    (out_dir / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return records


def _write_case(job: tuple) -> dict[str, Any]:
    """Make case ``index`` and write its files; the record :func:`generate` returns for it."""
    out_dir, seed, index, subset, dicom, options = job
    case = make_case(case_rng(seed, index), **options)
    cid = f"CT_{index:05d}"
    suffix = "Tr" if subset == "train" else "Ts"
    img = save_nifti(out_dir / f"images{suffix}" / f"{cid}_0000.nii.gz", case["image"], case["affine"])
    lab = save_nifti(out_dir / f"labels{suffix}" / f"{cid}.nii.gz", case["label"], case["affine"])
    paths: dict[str, Path | None] = {"image": img, "label": lab, "dicom": None}
    if dicom:
        from medcnn.synth.dicom_series import write_dicom_series

        folder = out_dir / "dicom" / cid
        write_dicom_series(case["image"].astype(np.float32), case["affine"], folder, modality="CT",
                           series_description=f"synthetic CT {case['meta']['phase']} {case['meta']['kernel']}",
                           rescale=(1.0, -1024.0), seed=int(seed) * 100003 + index)
        paths["dicom"] = folder
    logger.debug("%s: %s", cid, case["meta"]["volumes_ml"])
    return {"case": cid, "index": index, "paths": paths, "meta": case["meta"]}


__all__ = ["KERNELS", "LABELS", "LAYOUTS", "PHASES", "SUBSETS", "case_rng", "generate", "make_case"]
