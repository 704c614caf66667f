"""Synthetic frontal chest radiographs with lung and heart masks and finding labels.

The generator builds each case physically. A patient is a set of curves and shapes in a
canonical frame (millimetres at the detector, ``x`` towards the patient's left = the image's
right, ``y`` downwards, origin on the midline at the height of the lung apices): body outline
with neck, shoulders and arms; two lungs with costophrenic angles and diaphragm domes (right
higher); a left-leaning heart; superior mediastinum with aortic knob and trachea; vertebral
column; posterior and anterior ribs, clavicles, scapulae, humeral heads; breast shadows;
pulmonary vessels branching from the hila. Each structure adds its projected path length
times its attenuation relative to soft tissue to a *density* image (water-equivalent mm): air
and lung subtract, bone and metal add. Findings change that physical picture (fluid replaces
lung air, a collapsed lung pulls away from the chest wall, ...).

The density then goes through an X-ray chain: scatter, detector blur, quantum noise that grows
with density, the log signal, CR/DR-style processing (dynamic-range compression and unsharp
masking), anti-scatter grid lines, collimator shutters, a lead "L"/"R" marker and burned-in
text, a window and a tone curve. Everything is randomised: patient size and build, sex, age,
inspiration, rotation, tilt, off-centring (sometimes cutting a lung), detector format, pixel
spacing, exposure, noise, processing.

Lung-mask convention (option ``lung_mask``): ``"aerated"`` (default) marks the lung fields an
annotator outlines on the film, like the JSRT/SCR, Montgomery and Shenzhen masks: inside the
pleural outline, below the apices and above the diaphragm, excluding the heart and
mediastinum; a pleural effusion is *excluded* (the mask follows the meniscus, since fluid is
outside the lung and hides it), a pneumothorax is *included* (its air lies inside the
thoracic lung field the annotator traces), consolidation and nodules are included.
``"anatomical"`` includes the effusion too (the whole hemithorax above the diaphragm). The
heart mask is the cardiac silhouette, with its lower border interpolated across the
diaphragm, as in SCR.

Masks only cover what is exposed: nothing behind collimator shutters or outside the image is
annotated (the returned cardiothoracic ratio is computed from the uncut outlines).

Public entry points: :func:`make_case` (one case in memory), :func:`generate` (a folder of
files with CheXpert- and NIH-style label tables), :func:`sample_subject` (patient traits
shared by a patient's studies), :func:`dicom_encoding` (stored values + VOI attributes for
:func:`medcnn.synth.dicom_write.write_xray_dicom`), :func:`apply_tone` and
:func:`cardiothoracic_ratio`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from scipy.interpolate import CubicSpline

from medcnn.io.atomic import write_csv_atomic, write_png_atomic
from medcnn.metrics.segmentation import cardiothoracic_ratio  # noqa: F401  (re-exported: generator API)

logger = logging.getLogger(__name__)

#: Finding names, spelled as in TorchXRayVision / NIH ChestX-ray14.
FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax")
#: Image formats that :func:`generate` writes ("dcm" is an alias of "dcm-mono2").
IMAGE_FORMATS: tuple[str, ...] = ("png", "png16", "dcm-mono2", "dcm-mono1")
_FORMAT_ALIASES = MappingProxyType({"png8": "png", "dcm": "dcm-mono2", "dicom": "dcm-mono2"})
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Patient", "Sex", "Age", "Frontal/Lateral", "AP/PA")
NIH_COLUMNS: tuple[str, ...] = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]",
)

# Attenuation relative to soft tissue (per mm of path) used to build the density image.
_LUNG_AIR = 0.8  # aerated lung replaces tissue: lung parenchyma is ~0.2 of tissue
_AIR = 0.97


# --------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class ChestXrayOptions:
    """Knobs of :func:`make_case` (pass them as keyword arguments).

    Attributes:
        prevalence: probability of each finding when not fixed by ``findings``; one number
            for all, or a mapping finding -> probability (others keep 0.3).
        lung_mask: ``"aerated"`` (effusion excluded from the lung mask) or ``"anatomical"``.
        size_range: (min, max) of the image's long side in pixels when ``size`` is None.
        native_spacing_range: range of the detector's native pixel spacing in mm.
        ap_prob: probability of an AP (portable) film instead of PA.
        cut_prob: probability that the positioning cuts part of a lung off the image.
        collimation_prob: probability of visible collimator shutters.
        marker_prob: probability of a lead L/R marker.
        text_prob: probability of burned-in text ("PA", "PORTABLE", ...).
        grid_prob: probability of visible anti-scatter grid lines.
        device_prob: probability of monitoring devices: ECG electrodes and leads, and (more
            often on AP films) endotracheal/nasogastric tubes, central lines, pacemakers.
        noise: multiplier of the quantum-noise level (0 switches noise off).
        processing: multiplier of the processing strength (dynamic-range compression and
            unsharp masking; 0 gives a plain log image).
    """

    prevalence: float | Mapping[str, float] = 0.3
    lung_mask: str = "aerated"
    size_range: tuple[int, int] = (512, 1024)
    native_spacing_range: tuple[float, float] = (0.139, 0.2)
    ap_prob: float = 0.25
    cut_prob: float = 0.08
    collimation_prob: float = 0.5
    marker_prob: float = 0.85
    text_prob: float = 0.3
    grid_prob: float = 0.15
    device_prob: float = 0.15
    noise: float = 1.0
    processing: float = 1.0

    def prevalence_of(self, finding: str) -> float:
        """Probability of ``finding`` when it is sampled."""
        if isinstance(self.prevalence, Mapping):
            return float(self.prevalence.get(finding, 0.3))
        return float(self.prevalence)


def _resolve_options(options: Mapping[str, Any]) -> ChestXrayOptions:
    """Build and validate :class:`ChestXrayOptions` from keyword arguments.

    Raises:
        ValueError: unknown option name (the message lists the valid ones) or invalid value.
    """
    valid = [f.name for f in fields(ChestXrayOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid options: {valid}")
    opts = ChestXrayOptions(**options)
    prev = opts.prevalence
    if isinstance(prev, Mapping):
        bad = sorted(set(prev) - set(FINDINGS))
        if bad:
            raise ValueError(f"prevalence: unknown finding(s) {bad}; valid: {list(FINDINGS)}")
        values = [float(v) for v in prev.values()]
    else:
        values = [float(prev)]
    for name, v in [("prevalence", x) for x in values] + [
        ("ap_prob", opts.ap_prob), ("cut_prob", opts.cut_prob),
        ("collimation_prob", opts.collimation_prob), ("marker_prob", opts.marker_prob),
        ("text_prob", opts.text_prob), ("grid_prob", opts.grid_prob),
        ("device_prob", opts.device_prob),
    ]:
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
    if opts.lung_mask not in ("aerated", "anatomical"):
        raise ValueError(f"lung_mask must be 'aerated' or 'anatomical', got {opts.lung_mask!r}")
    lo, hi = opts.size_range
    if not (64 <= int(lo) <= int(hi) <= 8192):
        raise ValueError(f"size_range must satisfy 64 <= min <= max <= 8192, got {opts.size_range}")
    slo, shi = opts.native_spacing_range
    if not (0.01 <= float(slo) <= float(shi) <= 2.0):
        raise ValueError(f"native_spacing_range must be within [0.01, 2] mm, got {opts.native_spacing_range}")
    if opts.noise < 0 or opts.processing < 0:
        raise ValueError("noise and processing must be >= 0")
    return opts


# --------------------------------------------------------------------------------------
# small numerical helpers


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    """Cubic smoothstep of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _spline(points: Sequence[Sequence[float]] | np.ndarray, n: int, closed: bool = False) -> np.ndarray:
    """Cubic spline through control points, sampled at ``n`` points by chord length.

    Args:
        points: control points, shape (K, 2).
        n: number of output samples.
        closed: make a periodic (closed) curve.

    Returns:
        Curve samples, shape (n, 2).
    """
    p = np.asarray(points, dtype=np.float64)
    if closed:
        p = np.vstack([p, p[:1]])
    d = np.sqrt((np.diff(p, axis=0) ** 2).sum(axis=1))
    keep = np.concatenate([[True], d > 1e-9])
    p, d = p[keep], d[keep[1:]]
    t = np.concatenate([[0.0], np.cumsum(d)])
    cs = CubicSpline(t, p, axis=0, bc_type="periodic" if closed else "natural")
    return cs(np.linspace(0.0, t[-1], n))


def _resample_polyline(pts: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at a fixed arc-length step.

    Args:
        pts: polyline, shape (N, 2).
        step: arc-length step (same unit as ``pts``).

    Returns:
        ``(samples, s)``: samples (M, 2) and their arc lengths (M,).
    """
    seg = np.sqrt((np.diff(pts, axis=0) ** 2).sum(axis=1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    m = max(2, int(math.ceil(s[-1] / step)) + 1)
    ss = np.linspace(0.0, s[-1], m)
    out = np.stack([np.interp(ss, s, pts[:, 0]), np.interp(ss, s, pts[:, 1])], axis=1)
    return out, ss


def _upsample(low: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling by an integer factor, pixel-centre aligned, edges clamped.

    The low-resolution pixel ``i`` is centred on full-resolution coordinate ``i*f + (f-1)/2``.

    Args:
        low: array of shape (ceil(H/f), ceil(W/f)).
        f: integer factor.
        shape: output shape (H, W).

    Returns:
        float32 array of shape ``shape``.
    """
    low = np.asarray(low, dtype=np.float32)
    if f == 1:
        return low[: shape[0], : shape[1]]
    h, w = low.shape
    p = np.pad(low, 1, mode="edge")
    rows = np.empty((h, f, w + 2), dtype=np.float32)
    for k in range(f):
        d = np.float32((k - (f - 1) / 2.0) / f)
        nb = p[:-2] if d < 0 else p[2:]
        np.multiply(p[1:-1], 1.0 - abs(d), out=rows[:, k])
        rows[:, k] += nb * abs(d)
    rows = rows.reshape(h * f, w + 2)
    out = np.empty((h * f, w, f), dtype=np.float32)
    for k in range(f):
        d = np.float32((k - (f - 1) / 2.0) / f)
        nb = rows[:, :-2] if d < 0 else rows[:, 2:]
        np.multiply(rows[:, 1:-1], 1.0 - abs(d), out=out[:, :, k])
        out[:, :, k] += nb * abs(d)
    return out.reshape(h * f, w * f)[: shape[0], : shape[1]]


def _downsample_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Block mean by an integer factor (edge-padded), shape (ceil(H/f), ceil(W/f))."""
    if f == 1:
        return a.astype(np.float32)
    h, w = a.shape
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3), dtype=np.float32)


def _box_blur(a: np.ndarray, size: float, passes: int = 2) -> np.ndarray:
    """Repeated box filter (a cheap Gaussian-like blur whose cost does not grow with size)."""
    k = max(1, int(round(size)))
    out = a.astype(np.float32, copy=False)
    for _ in range(passes):
        out = ndi.uniform_filter(out, size=k, mode="nearest")
    return out


def _edge_profile(mask: np.ndarray, width_px: float) -> np.ndarray:
    """Projected thickness profile of a solid behind a binary mask, in [0, 1].

    Zero on the mask border and outside, rising like ``sqrt(distance)`` (the tangent edge of
    a curved surface) to 1 about ``width_px`` pixels inside.

    Args:
        mask: binary mask (H, W).
        width_px: rise distance in pixels.

    Returns:
        float32 (H, W).
    """
    k = 2 * max(1, int(round(width_px))) + 1
    b = ndi.uniform_filter(mask.astype(np.float32), size=k, mode="nearest")
    return np.sqrt(np.clip(2.0 * b - 1.0, 0.0, 1.0))


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise normalised to unit standard deviation, float32."""
    n = rng.standard_normal(shape, dtype=np.float32)
    n = ndi.gaussian_filter(n, sigma, mode="wrap")
    sd = float(n.std())
    return n / (sd if sd > 0 else 1.0)


# --------------------------------------------------------------------------------------
# geometry: canonical frame <-> pixels


@dataclass(frozen=True)
class _Frame:
    """Map from the canonical patient frame (mm) to pixel (col, row) coordinates.

    A smooth random warp (a few long-wavelength sine modes, a few mm) first deforms the
    canonical anatomy, then an affine map (tilt, scale, shift) places it on the detector.

    Attributes:
        shape: image shape (rows, cols).
        spacing: mm per pixel.
        c0: column of the canonical origin.
        r0: row of the canonical origin.
        theta: in-plane tilt in radians.
        warp: (K, 5) sine modes ``kx, ky, phase, ax, ay``: displacement
            ``d(p) = sum_k (ax, ay) * sin(kx*x + ky*y + phase)`` in mm (empty: no warp).
    """

    shape: tuple[int, int]
    spacing: float
    c0: float
    r0: float
    theta: float
    warp: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))

    def _disp(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx = np.zeros_like(x)
        dy = np.zeros_like(y)
        for kx, ky, ph, ax, ay in self.warp:
            s = np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(ph))
            dx += np.float32(ax) * s
            dy += np.float32(ay) * s
        return dx, dy

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Canonical points (N, 2) as (x, y) mm -> pixel points (N, 2) as (col, row)."""
        pts = np.asarray(pts, dtype=np.float64)
        x, y = pts[..., 0], pts[..., 1]
        dx, dy = self._disp(x, y)
        x, y = x + dx, y + dy
        ct, st = math.cos(self.theta), math.sin(self.theta)
        col = self.c0 + (ct * x - st * y) / self.spacing
        row = self.r0 + (st * x + ct * y) / self.spacing
        return np.stack([col, row], axis=-1)

    def _unwarp(self, qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Invert the warp by fixed-point iteration (it is a small, smooth displacement)."""
        if len(self.warp) == 0:
            return qx, qy
        x, y = qx, qy
        for _ in range(3):
            dx, dy = self._disp(x, y)
            x, y = qx - dx, qy - dy
        return x.astype(np.float32), y.astype(np.float32)

    def grid(self, f: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (X, Y) in mm of the pixel centres of the ``f``-times coarser grid.

        Returns:
            Two float32 arrays of shape (ceil(H/f), ceil(W/f)).
        """
        h, w = -(-self.shape[0] // f), -(-self.shape[1] // f)
        return self._grid_rc(np.arange(h, dtype=np.float32) * f + (f - 1) / 2.0,
                             np.arange(w, dtype=np.float32) * f + (f - 1) / 2.0)

    def grid_box(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (X, Y) in mm of the full-resolution pixels ``[r0:r1, c0:c1]``."""
        return self._grid_rc(np.arange(r0, r1, dtype=np.float32), np.arange(c0, c1, dtype=np.float32))

    def _grid_rc(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rr = (rows - np.float32(self.r0)) * np.float32(self.spacing)
        cc = (cols - np.float32(self.c0)) * np.float32(self.spacing)
        ct, st = np.float32(math.cos(self.theta)), np.float32(math.sin(self.theta))
        x = ct * cc[None, :] + st * rr[:, None]
        y = -st * cc[None, :] + ct * rr[:, None]
        return self._unwarp(x.astype(np.float32), y.astype(np.float32))

    def fill(self, poly_mm: np.ndarray, f: int = 1) -> np.ndarray:
        """Rasterise a closed canonical polygon (N, 2) on the ``f``-coarser grid; bool mask."""
        h, w = -(-self.shape[0] // f), -(-self.shape[1] // f)
        px = self.to_px(poly_mm)
        px = (px - (f - 1) / 2.0) / f
        img = Image.new("1", (w, h), 0)
        pts = [(float(c), float(r)) for c, r in np.clip(px, -1e5, 1e5)]
        ImageDraw.Draw(img).polygon(pts, fill=1, outline=1)
        return np.array(img, dtype=bool)


# --------------------------------------------------------------------------------------
# tubes (ribs, clavicles, airways, long bones)


@dataclass
class _Tube:
    """A curved tube with an elliptic, optionally hollow (cortical) cross-section.

    Attributes:
        points: centre line in canonical mm, shape (N, 2).
        radius: in-plane outer radius in mm, shape (N,).
        weight: attenuation excess per mm of path (bone > 0, air < 0), shape (N,).
        cortex: cortical shell thickness in mm (0: solid).
        depth_ratio: depth (along the beam) / in-plane size of the cross-section.
        marrow: density of the medulla relative to the cortex.
    """

    points: np.ndarray
    radius: np.ndarray
    weight: np.ndarray
    cortex: float = 0.0
    depth_ratio: float = 1.0
    marrow: float = 1.0


def _render_tubes(tubes: Sequence[_Tube], frame: _Frame, f: int = 2) -> np.ndarray:
    """Projected thickness x weight of a set of non-overlapping tubes (water-equivalent mm).

    Nearest centre-line samples come from a distance transform on a grid ``f`` times
    coarser; the distance itself is computed exactly at full resolution from the nearest
    sample's position and tangent, so edges are smooth and sub-pixel accurate.

    Args:
        tubes: tubes that do not overlap each other.
        frame: canonical -> pixel mapping.
        f: coarsening factor of the nearest-sample search.

    Returns:
        float32 (H, W).
    """
    H, W = frame.shape
    out = np.zeros((H, W), dtype=np.float32)
    sp = frame.spacing
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("P", "T", "S", "L", "R", "Wt", "C", "E", "M")}
    for tube in tubes:
        px = frame.to_px(tube.points)
        seg = np.sqrt((np.diff(px, axis=0) ** 2).sum(axis=1))
        s_ctrl = np.concatenate([[0.0], np.cumsum(seg)])
        if s_ctrl[-1] < 1.0:
            continue
        pts, s = _resample_polyline(px, 0.6 * f)
        tan = np.gradient(pts, axis=0)
        tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
        m = len(s)
        cols["P"].append(pts)
        cols["T"].append(tan)
        cols["S"].append(s)
        cols["L"].append(np.full(m, s[-1]))
        cols["R"].append(np.interp(s, s_ctrl, tube.radius) / sp)
        cols["Wt"].append(np.interp(s, s_ctrl, tube.weight))
        cols["C"].append(np.full(m, tube.cortex / sp))
        cols["E"].append(np.full(m, tube.depth_ratio))
        cols["M"].append(np.full(m, tube.marrow))
    if not cols["P"]:
        return out
    attrs = np.concatenate(
        [np.concatenate(cols["P"]), np.concatenate(cols["T"])]
        + [np.concatenate(cols[k])[:, None] for k in ("S", "L", "R", "C", "E", "M", "Wt")], axis=1
    ).astype(np.float32)
    h2, w2 = -(-H // f), -(-W // f)
    ij = np.rint((attrs[:, 1::-1] - (f - 1) / 2.0) / f).astype(np.int64)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < h2) & (ij[:, 1] >= 0) & (ij[:, 1] < w2)
    if not ok.any():
        return out
    seed = np.full((h2, w2), -1, dtype=np.int64)
    seed[ij[ok, 0], ij[ok, 1]] = np.nonzero(ok)[0]
    dist, (ir, ic) = ndi.distance_transform_edt(seed < 0, return_indices=True)
    nid = seed[ir, ic]
    near = dist <= attrs[nid, 6] / f + 1.5
    li, lj = np.nonzero(near)
    q = attrs[nid[li, lj]]  # (K, 11): px, py, tx, ty, s, L, R, C, E, M, W of the nearest sample
    col = lambda k: q[:, k][:, None, None]  # noqa: E731
    sub = np.arange(f, dtype=np.float32)
    vx = (lj * f).astype(np.float32)[:, None, None] + sub[None, None, :] - col(0)
    vy = (li * f).astype(np.float32)[:, None, None] + sub[None, :, None] - col(1)
    along = col(4) + vx * col(2) + vy * col(3)
    perp = vx * col(3) - vy * col(2)
    over = np.maximum(0.0, -along) + np.maximum(0.0, along - col(5))
    d2 = perp * perp + over * over
    rad = col(6)
    outer = np.sqrt(np.maximum(rad * rad - d2, 0.0))
    ri = np.maximum(rad - col(7), 0.0)
    inner = np.where(col(7) > 0, np.sqrt(np.maximum(ri * ri - d2, 0.0)), 0.0)
    val = col(8) * 2.0 * (outer - (1.0 - col(9)) * inner) * col(10) * np.float32(sp)
    blocks = np.zeros((h2, f, w2, f), dtype=np.float32)
    blocks[li, :, lj, :] = val
    out += blocks.reshape(h2 * f, w2 * f)[:H, :W]
    return out


# --------------------------------------------------------------------------------------
# line deposits (vessels, bronchi, pleural line, wires)


def _deposit_lines(
    segments: np.ndarray, frame: _Frame, *, density: float, sigma_scale: float = 0.5
) -> np.ndarray:
    """Render thin cylinders (vessels) by depositing their cross-section along the line.

    Each segment deposits ``density * pi * r^2`` per mm of length and is blurred with a
    Gaussian of sigma ``sigma_scale * r``, so the integral across the line is that of a
    cylinder of radius ``r``. Thick segments are deposited on coarser grids.

    Args:
        segments: (M, 5) rows ``x0, y0, x1, y1, r`` in canonical mm.
        frame: canonical -> pixel mapping.
        density: attenuation excess per mm (negative for air in a bronchus).
        sigma_scale: blur sigma as a fraction of the radius.

    Returns:
        float32 (H, W) in water-equivalent mm.
    """
    H, W = frame.shape
    out = np.zeros((H, W), dtype=np.float32)
    if len(segments) == 0:
        return out
    sp = frame.spacing
    p0 = frame.to_px(segments[:, 0:2])
    p1 = frame.to_px(segments[:, 2:4])
    r = segments[:, 4]
    seg_len = np.linalg.norm(p1 - p0, axis=1)
    nsamp = np.maximum(1, np.ceil(seg_len / 0.7).astype(np.int64))
    idx = np.repeat(np.arange(len(segments)), nsamp)
    start = np.repeat(np.cumsum(nsamp) - nsamp, nsamp)
    t = (np.arange(idx.size) - start + 0.5) / nsamp[idx]
    pts = p0[idx] + (p1[idx] - p0[idx]) * t[:, None]
    q = density * math.pi * r[idx] ** 2 * (seg_len[idx] * sp / nsamp[idx]) / (sp * sp)
    sig = sigma_scale * r[idx] / sp
    # (grid factor, blur sigma at that grid) per class of sigma in full-res pixels
    classes = [(1, 0.9, 0.0, 1.6), (2, 1.0, 1.6, 3.2), (4, 1.2, 3.2, 1e9)]
    for f, s_blur, lo, hi in classes:
        sel = (sig >= lo) & (sig < hi)
        if not sel.any():
            continue
        h, w = -(-H // f), -(-W // f)
        ij = np.rint((pts[sel][:, ::-1] - (f - 1) / 2.0) / f).astype(np.int64)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < h) & (ij[:, 1] >= 0) & (ij[:, 1] < w)
        if not ok.any():
            continue
        flat = ij[ok, 0] * w + ij[ok, 1]
        acc = np.bincount(flat, weights=q[sel][ok], minlength=h * w).reshape(h, w) / (f * f)
        acc = ndi.gaussian_filter(acc.astype(np.float32), s_blur, mode="constant")
        out += _upsample(acc, f, (H, W))
    return out


def _branching_tree(
    rng: np.random.Generator,
    roots: Sequence[tuple[float, float, float, float]],
    centre: tuple[float, float],
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    r_min: float,
    max_segments: int = 6000,
    length_factor: tuple[float, float] = (5.0, 9.0),
) -> np.ndarray:
    """Grow a 2D projected branching tree (pulmonary vessels or bronchi).

    Args:
        rng: random generator.
        roots: trunks as ``(x, y, angle, radius)`` in canonical mm / radians.
        centre: point the branches radiate away from (the hilum).
        inside: ``inside(x, y) -> bool array``; a branch stops when it leaves.
        r_min: smallest radius grown (mm).
        max_segments: cap on the number of segments.
        length_factor: segment length range as a multiple of the radius.

    Returns:
        Segments (M, 5): ``x0, y0, x1, y1, r``.
    """
    if not roots:
        return np.zeros((0, 5))
    x, y, a, r = (np.array(v, dtype=np.float64) for v in zip(*roots))
    segs: list[np.ndarray] = []
    total = 0
    for _ in range(16):
        n = x.size
        if n == 0 or total >= max_segments:
            break
        length = r * rng.uniform(*length_factor, n) + rng.uniform(1.5, 4.0, n)
        radial = np.arctan2(y - centre[1], x - centre[0])
        da = np.angle(np.exp(1j * (radial - a)))
        a = a + 0.2 * da + rng.normal(0.0, 0.12, n)
        x1 = x + length * np.cos(a)
        y1 = y + length * np.sin(a)
        segs.append(np.stack([x, y, x1, y1, r], axis=1))
        total += n
        alive = inside(x1, y1) & (r > r_min)
        if not alive.any():
            break
        x1, y1, a, r = x1[alive], y1[alive], a[alive], r[alive]
        m = x1.size
        side = rng.choice([-1.0, 1.0], m)
        a_major = a - side * rng.uniform(0.05, 0.3, m)
        a_minor = a + side * rng.uniform(0.45, 0.95, m)
        r_major = r * rng.uniform(0.78, 0.9, m)
        r_minor = r * rng.uniform(0.5, 0.75, m)
        x = np.concatenate([x1, x1])
        y = np.concatenate([y1, y1])
        a = np.concatenate([a_major, a_minor])
        r = np.concatenate([r_major, r_minor])
        keep = r >= r_min
        x, y, a, r = x[keep], y[keep], a[keep], r[keep]
    return np.concatenate(segs, axis=0)[:max_segments]


# --------------------------------------------------------------------------------------
# patient and study parameters


def sample_subject(rng: np.random.Generator, cardiomegaly_prob: float = 0.3) -> dict[str, Any]:
    """Sample patient-level traits, shared by all studies of one patient.

    Args:
        rng: random generator.
        cardiomegaly_prob: probability that the patient has an enlarged heart.

    Returns:
        Dict with ``sex`` ("M"/"F"), ``age`` (years), body ``scale``, ``habitus``
        (0 thin .. 1 obese), thorax half-width ``tw`` and lung height ``lh`` (mm), baseline
        cardiothoracic ratios for a normal and an enlarged heart, ``cardiomegaly`` (bool,
        a patient trait) and a ``shape_seed`` that fixes the fine anatomy.
    """
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(np.clip(rng.normal(58.0, 17.0), 18, 95))
    scale = float(np.clip(rng.normal(1.0 if sex == "M" else 0.93, 0.055), 0.8, 1.15))
    habitus = float(rng.beta(2.0, 3.0))
    return {
        "sex": sex,
        "age": age,
        "scale": scale,
        "habitus": habitus,
        "tw": 138.0 * scale * float(rng.normal(1.0, 0.04)),
        "lh": 250.0 * scale * float(rng.normal(1.0, 0.045)),
        "ctr_normal": float(rng.uniform(0.38, 0.47)),
        "ctr_enlarged": float(rng.uniform(0.54, 0.68)),
        "cardiomegaly": bool(rng.random() < cardiomegaly_prob),
        "breasts": float(rng.uniform(0.4, 1.0) * (1.0 + habitus)) if sex == "F" and rng.random() < 0.9
        else (float(0.4 * habitus) if habitus > 0.6 else 0.0),
        "bone_density": float(np.clip(1.0 - 0.3 * max(age - 45, 0) / 45 * (1.4 if sex == "F" else 1.0), 0.55, 1.05)),
        "aortic": float(np.clip(0.2 + 0.9 * max(age - 30, 0) / 55 * rng.uniform(0.4, 1.3), 0.1, 1.2)),
        "shape_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _check_findings(findings: Mapping[str, bool] | None) -> dict[str, bool]:
    if findings is None:
        return {}
    if not isinstance(findings, Mapping):
        raise ValueError(f"findings must be a mapping name -> bool, got {type(findings).__name__}")
    bad = sorted(set(findings) - set(FINDINGS))
    if bad:
        raise ValueError(f"unknown finding(s) {bad}; valid: {list(FINDINGS)}")
    return {k: bool(v) for k, v in findings.items()}


def _resolve_size(
    rng: np.random.Generator, size: int | tuple[int, int] | Sequence[int] | None, opts: ChestXrayOptions, wide: bool
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Choose the output shape (rows, cols) and the detector field of view (h, w) in mm."""
    if size is None:
        r = rng.random()
        if wide:
            fov = (356.0, 432.0) if r < 0.5 else (432.0, 432.0)
        elif r < 0.5:
            fov = (432.0, 356.0)
        elif r < 0.75:
            fov = (432.0, 432.0)
        elif r < 0.88:
            fov = (356.0, 432.0)
        else:
            side = float(rng.uniform(340.0, 400.0))
            fov = (side, side)
        long_side = int(rng.integers(int(opts.size_range[0]), int(opts.size_range[1]) + 1))
        if fov[0] >= fov[1]:
            shape = (long_side, max(16, int(round(long_side * fov[1] / fov[0]))))
        else:
            shape = (max(16, int(round(long_side * fov[0] / fov[1]))), long_side)
        return shape, fov
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if not 32 <= int(size) <= 8192:
            raise ValueError(f"size must lie in 32..8192, got {size}")
        side = float(rng.uniform(350.0, 432.0))
        return (int(size), int(size)), (side, side)
    try:
        rows, cols = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"size must be None, an int or (rows, cols), got {size!r}") from None
    if not (32 <= rows <= 8192 and 32 <= cols <= 8192):
        raise ValueError(f"size must lie in 32..8192 per axis, got {size!r}")
    # a detector about 14-17 in. on the long side, at least ~13 in. on the short one
    long_mm = min(max(float(rng.uniform(356.0, 432.0)), 330.0 * max(rows, cols) / min(rows, cols)), 440.0)
    sp = long_mm / max(rows, cols)
    return (rows, cols), (rows * sp, cols * sp)


# --------------------------------------------------------------------------------------
# anatomy


@dataclass
class _Lung:
    """One lung in canonical mm. ``s`` is -1 for the right lung (image left), +1 for left."""

    s: int
    outline: np.ndarray  # closed polygon (N, 2): lateral/apex spline + dome
    cavity: np.ndarray  # outline extended below the dome (for the depth field)
    tw: float
    cp: tuple[float, float]  # costophrenic angle (x, y)
    x_medial: float  # |x| of the medial end of the dome
    dome_peak: tuple[float, float]  # (|x|, y)
    dome_params: tuple[float, float, float, float, float]  # xp, yp, xcp, ycp, pw, (md in attr)
    dome_medial_drop: float
    hilum: tuple[float, float]

    def dome_y(self, ax: np.ndarray) -> np.ndarray:
        """Diaphragm height (mm) under lateral coordinate ``ax = s * x`` (mm)."""
        xp, yp, xcp, ycp, pw = self.dome_params
        ax = np.asarray(ax, dtype=np.float64) if not isinstance(ax, np.ndarray) else ax
        lat = yp + (ycp - yp) * np.clip((ax - xp) / max(xcp - xp, 1e-3), 0.0, None) ** pw
        med = yp + self.dome_medial_drop * np.clip((xp - ax) / max(xp - self.x_medial, 1e-3), 0.0, 1.5) ** 2
        return np.where(ax >= xp, lat, med)


def _build_lung(rng: np.random.Generator, s: int, tw: float, lh: float, dome_depth: float,
                mediastinum_shift: float, knob: float) -> _Lung:
    """Build one lung outline from jittered control points."""
    j = lambda sd=0.012: float(rng.normal(0.0, sd))  # noqa: E731
    xp = 0.47 + j(0.04)
    yp = 1.0 - dome_depth / lh
    x_med = 0.16 + j(0.01)
    md = float(rng.uniform(0.01, 0.05))
    pw = float(rng.uniform(1.6, 2.4))
    cpx = 0.975 + j(0.01)
    dome_medial = yp + md * 1.0
    # medial border (bottom -> up), apex, lateral border (down to the costophrenic angle)
    if s < 0:
        medial = [(x_med, dome_medial), (0.15 + j(), 0.74), (0.165 + j(), 0.56), (0.2 + j(), 0.43),
                  (0.19 + j(), 0.31), (0.165 + j(), 0.2), (0.17 + j(), 0.12)]
    else:
        k = 0.27 + 0.06 * knob
        medial = [(x_med, dome_medial), (0.16 + j(), 0.7), (0.17 + j(), 0.52), (0.2 + j(), 0.41),
                  (k - 0.02 + j(), 0.355), (k + j(0.008), 0.3), (0.235 + j(), 0.24),
                  (0.18 + j(), 0.17), (0.17 + j(), 0.12)]
    apex = [(0.2 + j(), 0.06), (0.26 + j(), 0.018), (0.34 + j(0.02), 0.0), (0.47 + j(), 0.022),
            (0.61 + j(), 0.08)]
    lateral = [(0.74 + j(), 0.17), (0.855 + j(), 0.31), (0.93 + j(), 0.49), (0.972 + j(), 0.67),
               (0.99 + j(0.008), 0.84), (cpx, 1.0)]
    ctrl = np.array(medial + apex + lateral)
    ctrl[1:-1, 1] += rng.normal(0.0, 0.008, len(ctrl) - 2)
    # global shape knobs: how wide the apex and upper zone are, how the base flares
    n_med, n_apex = len(medial), len(apex)
    ctrl[n_med:n_med + n_apex, 0] *= rng.uniform(0.85, 1.12)
    upper = np.arange(len(ctrl)) >= n_med + n_apex
    ctrl[upper, 0] = 1.0 - (1.0 - ctrl[upper, 0]) * rng.uniform(0.75, 1.35)
    ctrl[:, 1] = np.sign(ctrl[:, 1]) * np.abs(ctrl[:, 1]) ** rng.uniform(0.9, 1.12)  # apex/base-heavy
    curve = _spline(ctrl, 260)
    # dome from the costophrenic angle back to the medial end
    axs = np.linspace(cpx, x_med, 90)[1:-1]
    lat = yp + (1.0 - yp) * np.clip((axs - xp) / (cpx - xp), 0, None) ** pw
    med = yp + md * np.clip((xp - axs) / (xp - x_med), 0, 1.5) ** 2
    dome = np.stack([axs, np.where(axs >= xp, lat, med)], axis=1)
    outline_n = np.vstack([curve, dome])
    cav_n = np.vstack([curve, [[cpx, 1.0 + 0.45], [x_med, dome_medial + 0.45]]])

    def to_mm(p: np.ndarray) -> np.ndarray:
        return np.stack([s * p[:, 0] * tw + mediastinum_shift, p[:, 1] * lh], axis=1)

    hil = (s * (0.29 + j(0.02)) * tw + mediastinum_shift, (0.44 if s < 0 else 0.4) * lh + j(0.02) * lh)
    return _Lung(
        s=s, outline=to_mm(outline_n), cavity=to_mm(cav_n), tw=tw,
        cp=(s * cpx * tw + mediastinum_shift, lh), x_medial=x_med * tw,
        dome_peak=(xp * tw, yp * lh), dome_params=(xp * tw, yp * lh, cpx * tw, lh, pw),
        dome_medial_drop=md * lh, hilum=hil,
    )


def _heart_outline(rng: np.random.Generator, ctr: float, thorax_width: float, x_centre: float,
                   y_top: float, y_bottom: float, y_apex: float, enlarged: bool,
                   floor_left: Callable[[float], float] | None = None) -> np.ndarray:
    """Closed cardiac silhouette (N, 2) in canonical mm with the requested width.

    ``floor_left(dx)`` gives the left diaphragm height at ``dx`` mm right of the heart's
    reference line; the inferior border rests on it.
    """
    width = ctr * thorax_width
    left_share = float(rng.uniform(0.6, 0.7)) + (0.03 if enlarged else 0.0)
    lx, rx = width * left_share, width * (1.0 - left_share)
    h = y_bottom - y_top
    j = lambda sd=0.015: float(rng.normal(0.0, sd))  # noqa: E731
    bulge = 0.03 if enlarged else 0.0
    y_bl = y_bottom + 0.03 * h
    if floor_left is not None:
        y_bl = max(y_bl, floor_left(0.45 * lx) + 3.0)
        y_apex = max(y_apex, floor_left(0.82 * lx) - (0.0 if enlarged else 6.0))
    pts = [
        (-0.5 * rx, y_top + (0.0 + j()) * h), (-0.82 * rx, y_top + (0.25 + j()) * h),
        (-1.0 * rx, y_top + (0.58 + j()) * h), (-0.9 * rx, y_top + (0.85 + j()) * h),
        (-0.6 * rx, y_bottom), (-0.1 * rx, y_bottom + 0.03 * h),
        (0.45 * lx, y_bl), (0.82 * lx, y_apex),
        (1.0 * lx, y_top + (0.7 + bulge + j()) * h), (0.86 * lx, y_top + (0.42 + j()) * h),
        (0.66 * lx, y_top + (0.2 + j()) * h), (0.5 * lx, y_top + (0.04 + j()) * h),
        (0.25 * lx, y_top - 0.06 * h), (-0.15 * rx, y_top - 0.06 * h),
    ]
    poly = _spline(pts, 240, closed=True)
    # exact width, measured on the dense outline
    cur = poly[:, 0].max() - poly[:, 0].min()
    poly[:, 0] *= width / cur
    poly[:, 0] += x_centre
    return poly


def _rib_tubes(rng: np.random.Generator, lung: _Lung, levels: np.ndarray, spine_hw: np.ndarray,
               spine_x: float, ant_shift: float, scale: float, bone_k: float, insp: float
               ) -> tuple[list[_Tube], list[_Tube]]:
    """Posterior and anterior rib tubes for one side.

    Args:
        levels: y (mm) of the top of vertebrae T1..T12 and L1, shape (13,).
        spine_hw: vertebral half-widths of T1..T12, shape (12,).

    Returns:
        (posterior tubes, anterior tubes).
    """
    x_lat = _lateral_border(lung)
    centre_x = lung.cp[0] - lung.s * lung.tw * 0.975
    post: list[_Tube] = []
    ant: list[_Tube] = []
    for k in range(12):
        ctrl_a, split, r_post = _rib_control_points(rng, k, lung, levels, spine_hw, x_lat, scale, insp)
        curve = _spline(ctrl_a, 200)
        # index on the dense curve closest to the split control point
        isplit = int(np.argmin(np.sum((curve - ctrl_a[split]) ** 2, axis=1)))
        pts = np.stack([centre_x + lung.s * curve[:, 0], curve[:, 1]], axis=1)
        p, a = _rib_parts(rng, k, pts, isplit, r_post, spine_x, ant_shift, scale, bone_k)
        post.append(p)
        if a is not None:
            ant.append(a)
    return post, ant


def _lateral_border(lung: _Lung) -> Callable[[float], float]:
    """|x| (mm, from the lung's own midline) of the lung's lateral border as a function of y (mm)."""
    s = lung.s
    ol = lung.outline
    rel = s * (ol[:, 0] - (lung.cp[0] - s * lung.tw * 0.975))
    ys = np.linspace(-40.0, lung.cp[1] + 60.0, 120)
    xl = np.empty_like(ys)
    for i, yy in enumerate(ys):
        band = np.abs(ol[:, 1] - yy) < 6.0
        xl[i] = rel[band].max() if band.any() else np.nan
    valid = ~np.isnan(xl)
    xl = np.interp(ys, ys[valid], xl[valid])

    def x_lat(y: float) -> float:
        return float(np.interp(y, ys, xl))

    return x_lat


def _rib_control_points(rng: np.random.Generator, k: int, lung: _Lung, levels: np.ndarray, spine_hw: np.ndarray,
                        x_lat: Callable[[float], float], scale: float, insp: float
                        ) -> tuple[np.ndarray, int, float]:
    """Jittered control points of rib ``k`` (0 = first rib) in (|x| from the midline, y) mm.

    Returns:
        (control points (P, 2), index of the point where the posterior part ends, posterior radius mm).
    """
    y0 = float(levels[k])
    spacing = float(levels[k + 1] - levels[k]) * (0.85 + 0.15 * insp)
    x_sp = float(spine_hw[k]) + 9.0 * scale
    r_post = (6.5 if k == 0 else 5.6) * scale * float(rng.uniform(0.9, 1.1))
    if k == 0:
        rr = x_lat(18.0) + 2.0
        ctrl = [(x_sp, y0), (x_sp + 0.35 * (rr - x_sp), y0 - 6.0), (0.85 * rr, y0 + 2.0),
                (rr, y0 + 14.0), (0.92 * rr, y0 + 26.0), (0.6 * rr, y0 + 38.0), (26.0 * scale, y0 + 48.0)]
        split = 3
    elif k < 10:
        y_lat = y0 + 1.7 * spacing
        rr = max(x_lat(y_lat), x_lat(y0 + 0.5 * spacing)) + r_post + 3.0
        drop = float(levels[min(k + 4, 12)] - y0) + 8.0
        x_cc = (0.28 + 0.03 * k) * rr + float(rng.normal(0, 3))
        if k >= 6:  # lower anterior ribs: only their lateral part is seen above the costal margin
            drop *= 0.8
            x_cc = (0.5 + 0.04 * (k - 6)) * rr
        ctrl = [(x_sp, y0), (x_sp + 0.2 * (rr - x_sp), y0 - 0.15 * spacing),
                (x_sp + 0.5 * (rr - x_sp), y0 + 0.2 * spacing), (0.8 * rr, y0 + 0.75 * spacing),
                (0.97 * rr, y0 + 1.35 * spacing), (rr, y_lat + 0.2 * spacing),
                (0.96 * rr, y0 + 2.4 * spacing),
                (0.78 * rr, y0 + 0.55 * drop + 0.9 * spacing), (x_cc, y0 + drop)]
        split = 5
    else:
        rr = 0.55 * x_lat(lung.cp[1]) + (0.15 if k == 10 else 0.0) * x_lat(lung.cp[1])
        ctrl = [(x_sp, y0), (x_sp + 0.4 * (rr - x_sp), y0 + 0.1 * spacing),
                (0.85 * rr, y0 + 0.55 * spacing), (rr, y0 + 1.2 * spacing)]
        split = len(ctrl) - 1
    ctrl_a = np.array(ctrl, dtype=np.float64)
    ctrl_a[1:, :] += rng.normal(0.0, 1.0, ctrl_a[1:, :].shape) * scale
    return ctrl_a, split, r_post


def _rib_parts(rng: np.random.Generator, k: int, pts: np.ndarray, isplit: int, r_post: float, spine_x: float,
               ant_shift: float, scale: float, bone_k: float) -> tuple[_Tube, _Tube | None]:
    """Posterior and anterior tubes of rib ``k`` along its centre line ``pts`` (N, 2) mm.

    Returns:
        (posterior tube, anterior tube or None when the rib has no anterior part).
    """
    # posterior (near spine) parts shift with rotation less than anterior ones
    # posterior and anterior parts cross-fade over the lateral bend (no double density)
    fade = 12
    n_pts = len(pts)
    shift = np.full(n_pts, spine_x)
    if isplit < n_pts - 3:
        frac = np.clip((np.arange(n_pts) - isplit) / max(n_pts - 1 - isplit, 1), 0.0, 1.0)
        shift = spine_x + (ant_shift - spine_x) * frac
    pts = pts + np.stack([shift, np.zeros(n_pts)], axis=1)
    wpost = bone_k * (0.55 if k >= 10 else 1.0) * float(rng.uniform(0.85, 1.15))
    e_post = min(n_pts, isplit + fade + 1) if isplit < n_pts - 3 else n_pts
    w_p = np.full(e_post, wpost)
    r_p = r_post * np.interp(np.linspace(0.0, 1.0, e_post), [0.0, 0.15, 0.6, 1.0],
                             [0.75, 0.95, 1.05, 1.0])
    if e_post < n_pts or isplit < n_pts - 3:
        ramp = np.clip((e_post - 1 - np.arange(e_post)) / (2.0 * fade), 0.0, 1.0)
        w_p = w_p * ramp
    post = _Tube(pts[:e_post], r_p, w_p, cortex=1.0 * scale, depth_ratio=1.15, marrow=0.15)
    if isplit >= n_pts - 3:
        return post, None
    b = max(0, isplit - fade)
    pa = pts[b:]
    m_a = len(pa)
    ramp = np.clip(np.arange(m_a) / (2.0 * fade), 0.0, 1.0)
    r_ant = r_post * np.linspace(1.0, 1.3, m_a)
    w_ant = bone_k * np.linspace(0.85, 0.45 if k < 6 else 0.25, m_a) * ramp
    return post, _Tube(pa, r_ant, w_ant, cortex=1.0 * scale, depth_ratio=0.75, marrow=0.35)


def _vertebrae(rng: np.random.Generator, scale: float, y_t1: float) -> dict[str, np.ndarray]:
    """Vertebral levels C3..L4: tops, centres, half-heights, half-widths, depths (mm)."""
    names = [f"C{i}" for i in range(3, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 5)]
    hb, disc, hw, dep = [], [], [], []
    for nm in names:
        if nm[0] == "C":
            hb.append(13.0), disc.append(4.5), hw.append(9.5 + 0.6 * (int(nm[1:]) - 3)), dep.append(16.0)
        elif nm[0] == "T":
            i = int(nm[1:]) - 1
            hb.append(16.0 + 8.0 * i / 11), disc.append(3.8 + 2.2 * i / 11)
            hw.append(14.0 + 8.0 * i / 11), dep.append(20.0 + 12.0 * i / 11)
        else:
            hb.append(25.0), disc.append(8.0), hw.append(23.5), dep.append(32.0)
    hb_a = np.array(hb) * scale
    disc_a = np.array(disc) * scale
    hw_a = np.array(hw) * scale * rng.uniform(0.93, 1.07)
    span = hb_a + disc_a
    i_t1 = names.index("T1")
    tops = np.concatenate([[0.0], np.cumsum(span)])
    tops = tops - tops[i_t1] + y_t1
    return {
        "names": np.array(names), "tops": tops, "hb": hb_a / 2.0, "disc": disc_a, "hw": hw_a,
        "depth": np.array(dep) * scale, "centre": tops[:-1] + disc_a / 2.0 + hb_a / 2.0,
        "i_t1": np.array(i_t1),
    }


def _spine_density(X: np.ndarray, Y: np.ndarray, vert: dict[str, np.ndarray],
                   xs: Callable[[np.ndarray], np.ndarray], bone_k: float) -> np.ndarray:
    """Projected bone excess of the vertebral column on the canonical grid (water-eq. mm)."""
    tops = vert["tops"]
    k = np.clip(np.searchsorted(tops, Y, side="right") - 1, 0, len(vert["hb"]) - 1)
    yc, hb, hw, dep = vert["centre"][k], vert["hb"][k], vert["hw"][k], vert["depth"][k]
    u = X - xs(Y)
    vn = (Y - yc) / hb
    waist = 1.0 - 0.08 * np.clip(1.0 - vn * vn, 0.0, 1.0)
    un = u / (hw * waist)
    sup = np.abs(un) ** 5 + np.abs(vn) ** 5
    in_body = sup < 1.0
    c1 = np.sqrt(np.clip(1.0 - un * un, 0.0, 1.0))
    sv = 0.55 + 0.45 * _smoothstep((1.0 - sup) * hb / 4.0)
    trab = 0.13 * dep * c1
    shell = 0.5 * 2.0 / np.maximum(c1, 0.25)
    endplate = 1.2 * np.exp(-(((1.0 - np.abs(vn)) * hb) / 1.6) ** 2) * c1
    body = np.where(in_body, (trab + shell + endplate) * sv, 0.0)
    # laminae and facets fill the disc spaces in a frontal projection
    post_el = 0.09 * dep * np.sqrt(np.clip(1.0 - (u / (0.85 * hw)) ** 2, 0.0, 1.0))
    total = body + post_el
    # pedicles: end-on cortical rings in the upper lateral corners
    for sgn in (-1.0, 1.0):
        du = (u - sgn * 0.66 * hw) / (0.2 * hw)
        dv = (Y - (yc - 0.28 * hb)) / (0.36 * hb)
        rn = np.sqrt(du * du + dv * dv)
        total = total + 4.0 * (np.exp(-((rn - 0.8) / 0.22) ** 2) * 0.6 + 0.3 * _smoothstep((1.0 - rn) / 0.2))
        # transverse processes
        du = (sgn * u - (hw + 9.0)) / 13.0
        dv = (Y - (yc - 0.35 * hb)) / (0.38 * hb)
        rn2 = du * du + dv * dv
        total = total + 3.5 * np.sqrt(np.clip(1.0 - rn2, 0.0, 1.0))
    # spinous process: teardrop projecting over the lower half of the body
    du = u / (0.13 * hw)
    dv = (Y - (yc + 0.5 * hb)) / (0.6 * hb)
    rn = np.sqrt(du * du + dv * dv)
    total = total + 5.0 * (np.exp(-((rn - 0.8) / 0.25) ** 2) * 0.6 + 0.3 * _smoothstep((1.0 - rn) / 0.2))
    return (bone_k * total).astype(np.float32)


# --------------------------------------------------------------------------------------
# rendering helpers


def _add_in_box(
    dens: np.ndarray, frame: _Frame, box_mm: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> None:
    """Add ``fn(x, y)`` (canonical mm grids) to ``dens`` over the pixels of a canonical box.

    Args:
        dens: full-resolution array (H, W), modified in place.
        frame: canonical -> pixel mapping.
        box_mm: two opposite corners ``[[x0, y0], [x1, y1]]`` in mm.
        fn: density of the object at canonical coordinates.
    """
    x0, y0 = box_mm.min(axis=0)
    x1, y1 = box_mm.max(axis=0)
    corners = frame.to_px(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
    c0 = max(0, int(math.floor(corners[:, 0].min())) - 1)
    c1 = min(frame.shape[1], int(math.ceil(corners[:, 0].max())) + 2)
    r0 = max(0, int(math.floor(corners[:, 1].min())) - 1)
    r1 = min(frame.shape[0], int(math.ceil(corners[:, 1].max())) + 2)
    if r1 <= r0 or c1 <= c0:
        return
    xg, yg = frame.grid_box(r0, r1, c0, c1)
    dens[r0:r1, c0:c1] += fn(xg, yg).astype(np.float32)


def _body_thickness(rng: np.random.Generator, shape_rng: np.random.Generator, subj: Mapping[str, Any],
                    Xl: np.ndarray, Yl: np.ndarray, tw: float, lh: float, med_x: float,
                    lungs: Sequence[_Lung], px_mm: float) -> np.ndarray:
    """Soft-tissue path length (mm) of neck, shoulders, torso, arms, breasts and bowel gas.

    Args:
        Xl, Yl: canonical coordinates of a coarse grid (h, w).
        px_mm: size of a coarse pixel in mm.

    Returns:
        float32 (h, w).
    """
    scale = float(subj["scale"])
    hab = float(subj["habitus"])
    cw = (18.0 + 35.0 * hab) * scale + float(rng.normal(0, 3))
    a_neck = (52.0 + 18.0 * hab) * scale
    y_nb = -(45.0 + float(shape_rng.uniform(0, 25))) * scale
    slope = float(shape_rng.uniform(0.22, 0.42))
    sh_x = tw + cw + (25.0 + 15.0 * hab) * scale
    d_chest = (195.0 + 70.0 * hab) * scale * (1.0 if subj["sex"] == "M" else 0.95)
    axl = np.abs(Xl - med_x * 0.5)
    y_shoulder = (y_nb + slope * np.clip(axl - a_neck, 0.0, None)
                  + 0.004 * np.clip(axl - 0.8 * sh_x, 0, None) ** 2)
    top_f = _smoothstep((Yl - y_shoulder) / (22.0 * scale))
    a_t = (tw + cw + 22.0 * scale * np.exp(-(((Yl - 10.0) / (70.0 * scale)) ** 2))
           + 0.08 * np.clip(Yl - lh, 0, None) * hab)
    depth_y = d_chest * (0.25 + 0.75 * _smoothstep((Yl - y_shoulder) / (120.0 * scale)))
    torso = depth_y * np.clip(1.0 - (axl / a_t) ** 2, 0.0, None) ** 0.55 * top_f
    neck = (120.0 + 30.0 * hab) * scale * np.clip(1.0 - (axl / a_neck) ** 2, 0.0, None) ** 0.5
    neck *= _smoothstep((y_nb + 60.0 * scale - Yl) / (40.0 * scale))
    body = np.maximum(torso, neck)
    if rng.random() < 0.85:  # arms at the sides
        r_arm = (42.0 + 14.0 * hab) * scale
        psi = math.radians(float(rng.uniform(5.0, 25.0)))
        gap = float(rng.uniform(-5.0, 25.0))
        y_sh = y_nb + slope * (sh_x - a_neck) + 12.0
        for sgn in (-1.0, 1.0):
            cx = sgn * (sh_x + r_arm * 0.55 + gap + np.clip(Yl - y_sh, 0, None) * math.tan(psi)) + med_x * 0.5
            dx = (Xl - cx) / r_arm
            arm = 1.8 * r_arm * np.sqrt(np.clip(1.0 - dx * dx, 0.0, None))
            body = body + arm * _smoothstep((Yl - (y_sh - r_arm * 0.6)) / (r_arm * 0.8))
    breast = float(subj["breasts"])
    if breast > 0.05:  # soft-tissue domes over the lower zones with a sharp inferior fold
        for lg in lungs:
            bx = lg.s * (0.62 + 0.1 * hab) * lg.tw + med_x + float(shape_rng.normal(0, 6))
            by = (0.62 + 0.08 * hab + 0.05 * breast) * lh + float(shape_rng.normal(0, 8))
            rbx = min((55.0 + 25.0 * breast) * scale, 0.85 * abs(bx - med_x))  # never across the midline
            rby = rbx * float(shape_rng.uniform(0.75, 0.95))
            q = ((Xl - bx) / rbx) ** 2 + ((Yl - by) / rby) ** 2
            prof = np.sqrt(np.clip(1.0 - q, 0.0, None))
            upper = _smoothstep((Yl - (by - 1.1 * rby)) / (1.3 * rby))
            prof = np.where(Yl < by, prof * upper, prof)
            body = body + (12.0 + 22.0 * breast) * scale * prof
    for _ in range(int(rng.integers(0, 5))):  # bowel gas below the diaphragm
        lg = lungs[int(rng.integers(0, 2))]
        gxb = lg.s * float(rng.uniform(0.1, 0.8)) * lg.tw + med_x
        gyb = float(lg.dome_y(np.array([abs(gxb - med_x)]))[0]) + float(rng.uniform(50.0, 160.0)) * scale
        rgb = float(rng.uniform(8.0, 25.0)) * scale
        qb = ((Xl - gxb) / (rgb * float(rng.uniform(0.8, 1.8)))) ** 2 + ((Yl - gyb) / rgb) ** 2
        qb = qb * np.clip(1.0 + 0.35 * _band_noise(rng, Xl.shape, 6.0 / px_mm), 0.6, 1.6)
        body = body - float(rng.uniform(8.0, 25.0)) * np.sqrt(np.clip(1.0 - qb, 0.0, None))
    body = body * (1.0 + 0.025 * _band_noise(rng, Xl.shape, 25.0 / px_mm))  # muscle, fat
    return np.maximum(body, 0.0).astype(np.float32)


def _airway_tubes(rng: np.random.Generator, shape_rng: np.random.Generator, scale: float, sex: str,
                  lh: float, spine_x: float, med_x: float, aortic: float) -> list[_Tube]:
    """Trachea (first) and the two main bronchi as air tubes."""
    y_car = (0.37 + float(shape_rng.normal(0, 0.02))) * lh
    x_car = med_x + 2.0 + float(shape_rng.normal(0, 2))
    tr_r = (8.5 + 1.5 * (sex == "M")) * scale
    knob_dev = -4.0 * aortic  # the aortic arch pushes the trachea to the right
    tr = _spline(np.array([[0.5 * (spine_x + med_x) + 1.0, -260.0], [0.5 * (spine_x + med_x), -60.0],
                           [x_car + knob_dev, 0.75 * y_car], [x_car, y_car]]), 40)
    rb = math.radians(float(rng.uniform(20, 35)))
    lb = math.radians(float(rng.uniform(38, 55)))
    x0r, x0l = x_car - tr_r * 0.3, x_car + tr_r * 0.3
    rmb = _spline(np.array([[x0r, y_car + 2.0], [x_car - 24 * scale * math.sin(rb), y_car + 24 * scale * math.cos(rb)],
                            [x_car - 30 * scale * math.sin(rb), y_car + 55 * scale * math.cos(rb)]]), 20)
    lmb = _spline(np.array([[x0l, y_car + 2.0],
                            [x_car + 48 * scale * math.sin(lb), y_car + 48 * scale * math.cos(lb)]]), 20)
    return [
        _Tube(tr, np.full(len(tr), tr_r), np.full(len(tr), -_AIR)),
        _Tube(rmb, np.linspace(7.0, 5.0, 20) * scale, np.full(20, -_AIR * 0.8)),
        _Tube(lmb, np.linspace(6.5, 5.5, 20) * scale, np.full(20, -_AIR * 0.8)),
    ]


def _shoulder_girdle(rng: np.random.Generator, shape_rng: np.random.Generator, lungs: Sequence[_Lung],
                     scale: float, hab: float, ap: bool, bone_k: float, spine_x: float, ant_x: float
                     ) -> tuple[list[_Tube], list[np.ndarray], list[tuple[float, float, float]]]:
    """Clavicles, humeral shafts and scapular borders (tubes), scapular plates (polygons) and
    humeral heads ``(x, y, radius)``, all in canonical mm."""
    clav_y_med = (float(rng.uniform(30.0, 58.0)) if not ap else float(rng.uniform(5.0, 30.0))) * scale
    clav_rise = (float(rng.uniform(12.0, 35.0)) if not ap else float(rng.uniform(0.0, 15.0))) * scale
    tubes: list[_Tube] = []
    plates: list[np.ndarray] = []
    heads: list[tuple[float, float, float]] = []
    for lg in lungs:
        s, tws = lg.s, lg.tw
        x_lat_end = s * (tws + 30.0 * scale + 8.0 * hab) + ant_x
        xm = s * 22.0 * scale + ant_x
        ctrl = np.array([[xm, clav_y_med], [xm + s * 0.25 * tws, clav_y_med - 0.1 * clav_rise + 3.0],
                         [xm + s * 0.55 * tws, clav_y_med - 0.45 * clav_rise],
                         [xm + s * 0.85 * tws, clav_y_med - 0.85 * clav_rise + 4.0],
                         [x_lat_end, clav_y_med - clav_rise - 2.0]])
        ctrl[1:-1] += shape_rng.normal(0, 1.5, (3, 2))
        rad = np.interp(np.linspace(0, 1, 80), [0, 0.1, 0.4, 0.8, 1.0], [9.0, 7.5, 6.0, 6.5, 8.0]) * scale
        tubes.append(_Tube(_spline(ctrl, 80), rad, np.full(80, bone_k * 1.3), cortex=1.8 * scale,
                           depth_ratio=0.9, marrow=0.3))
        gl = (s * (tws + 28.0 * scale) + spine_x * 0.3, clav_y_med - clav_rise + 25.0 * scale)
        hr = 23.0 * scale * float(rng.uniform(0.92, 1.08))
        hc = (gl[0] + s * (hr * 0.75), gl[1] + 6.0 * scale)
        heads.append((hc[0], hc[1], hr))
        shaft = np.array([[hc[0], hc[1] + 0.5 * hr], [hc[0] + s * 10.0, hc[1] + 200.0]])
        tubes.append(_Tube(_spline(shaft, 10), np.full(10, 12.0 * scale), np.full(10, bone_k),
                           cortex=3.0 * scale, depth_ratio=1.0, marrow=0.2))
        # scapula: thin plate; in AP films it is not rotated off the chest and overlies the lung
        sup = np.array([s * tws * (0.5 if ap else 0.68) + spine_x * 0.5, gl[1] - 40.0 * scale])
        inf = np.array([s * tws * (0.66 if ap else 0.9) + spine_x * 0.5, gl[1] + 125.0 * scale])
        glen_lo = np.array([gl[0] - s * 4.0, gl[1] + 22.0 * scale])
        tri = np.array([sup, [gl[0], gl[1] - 8.0], glen_lo, inf])
        plates.append(_spline(tri, 60, closed=True))
        bulge = 0.5 * (glen_lo + inf) + np.array([s * 9.0 * scale, 0.0])
        lat_border = _spline(np.array([glen_lo, bulge, inf]), 30)
        tubes.append(_Tube(lat_border, np.full(30, 3.5 * scale), np.linspace(0.6, 0.25, 30) * bone_k,
                           cortex=0.0, depth_ratio=1.0))
        med_border = _spline(np.array([sup, 0.5 * (sup + inf) + np.array([-s * 4.0, 0.0]), inf]), 30)
        tubes.append(_Tube(med_border, np.full(30, 1.6 * scale), np.full(30, 0.5 * bone_k),
                           cortex=0.0, depth_ratio=1.5))
    return tubes, plates, heads


def _xray_chain(rng: np.random.Generator, density: np.ndarray, lungs_mask: np.ndarray, body_low: np.ndarray,
                f_low: int, sp: float, ap: bool, opts: ChestXrayOptions
                ) -> tuple[np.ndarray, tuple[float, float], dict[str, float]]:
    """Scatter, detector blur, quantum noise, log signal, CR-style processing and window.

    Args:
        density: water-equivalent path length (H, W).
        lungs_mask: lung mask (H, W) used for the window.
        body_low: body mask on the ``f_low``-coarse grid.

    Returns:
        ``(signal, (lo, hi), params)``: processed log signal (H, W) float32, the window and
        the sampled parameters.
    """
    H, W = density.shape
    full = (H, W)
    f_s = 8
    mu = float(rng.uniform(0.017, 0.023))
    inten = np.exp(-mu * density)
    scatter = float(rng.uniform(0.12, 0.3) if ap else rng.uniform(0.02, 0.12))
    sc_low = ndi.gaussian_filter(_downsample_mean(inten, f_s), 45.0 / (f_s * sp))
    inten += scatter * _upsample(sc_low, f_s, full)
    logsig = -np.log(np.maximum(inten, 1e-6)) / mu
    # heel effect: exposure falls off smoothly along the anode-cathode axis
    heel = float(rng.uniform(-0.08, 0.08)) / mu
    if rng.random() < 0.5:
        logsig += (heel * np.linspace(-0.5, 0.5, H, dtype=np.float32))[:, None]
    else:
        logsig += (heel * np.linspace(-0.5, 0.5, W, dtype=np.float32))[None, :]
    lung_vals = logsig[lungs_mask] if lungs_mask.any() else logsig.ravel()
    ref = float(np.median(lung_vals[::5])) if lung_vals.size else 0.0
    nl = float(rng.uniform(0.25, 1.3) if ap else rng.uniform(0.15, 1.0)) * opts.noise
    if nl > 0:  # quantum noise grows where fewer photons arrive (dense regions)
        sd_map = nl * np.exp(np.clip(mu * (logsig - ref) / 2.0, -3.0, 2.5))
        logsig += rng.standard_normal(full, dtype=np.float32) * sd_map * 1.6
    mtf = max(float(rng.uniform(0.12, 0.3)) / sp, 0.5)  # detector blur also correlates the noise
    logsig = ndi.gaussian_filter(logsig, mtf)
    beta = float(rng.uniform(0.15, 0.5)) * opts.processing
    lp_sigma = float(rng.uniform(20, 50)) / (f_s * sp)
    lp_big = _upsample(ndi.gaussian_filter(_downsample_mean(logsig, f_s), lp_sigma), f_s, full)
    sig = logsig - beta * (lp_big - ref)
    alpha = float(rng.uniform(0.15, 0.7)) * opts.processing
    if alpha > 0:  # unsharp masking (edge enhancement), kernel 1.5-6 mm
        k_usm = float(rng.uniform(1.5, 6.0)) / sp
        sig += alpha * (sig - _upsample(_box_blur(_downsample_mean(sig, 2), k_usm / 2.0), 2, full))
    o = (f_low - 1) // 2 + 1
    sub = sig[o::f_low, o::f_low][: body_low.shape[0], : body_low.shape[1]]
    body_vals = sub[body_low[: sub.shape[0], : sub.shape[1]]]
    if body_vals.size < 10:
        body_vals = sub.ravel()
    lung_sig = sig[lungs_mask][::7] if lungs_mask.any() else body_vals
    lo0 = float(np.percentile(lung_sig, 0.5))
    hi0 = float(np.percentile(body_vals, 99.7))
    width = max(hi0 - lo0, 1.0)
    lo = lo0 - float(rng.uniform(0.0, 0.25)) * width
    hi = hi0 + float(rng.uniform(-0.06, 0.08)) * width
    params = {"noise": nl, "scatter": scatter, "mu": mu, "usm_alpha": alpha, "drc_beta": beta, "mtf_px": mtf}
    return sig.astype(np.float32), (lo, hi), params


def _overlays(rng: np.random.Generator, signal: np.ndarray, lo: float, hi: float, sp: float, ap: bool,
              opts: ChestXrayOptions) -> dict[str, Any]:
    """Grid lines, collimator shutters, lead marker and burned-in text, in place on ``signal``.

    Returns:
        The overlay parameters (``grid_lines``, ``collimated``, ``marker``, ``texts``) and
        ``field``: the exposed field as a bool (H, W) mask, or None without shutters.
    """
    span = hi - lo
    grid = rng.random() < opts.grid_prob
    if grid:
        _grid_lines(rng, signal, span)
    collimated = rng.random() < opts.collimation_prob
    field_mask = _collimate(rng, signal, lo, hi) if collimated else None
    marker = None
    texts: list[str] = []
    if rng.random() < opts.marker_prob:
        marker = "L" if rng.random() < 0.7 else "R"
        texts.append(marker)
    if rng.random() < opts.text_prob:
        choices = ["AP", "PORTABLE", "AP SITTING", "SUPINE"] if ap else ["PA", "ERECT", "UPRIGHT", "INSP"]
        texts.append(str(rng.choice(choices)))
    for t_i, text in enumerate(texts):
        _burn_in(rng, signal, text, is_marker=t_i == 0 and marker is not None, value=hi + 0.3 * span, sp=sp)
    return {"grid_lines": grid, "collimated": collimated, "marker": marker, "texts": texts, "field": field_mask}


def _grid_lines(rng: np.random.Generator, signal: np.ndarray, span: float) -> None:
    """Add the aliased pattern of an anti-scatter grid (vertical lines mostly) to (H, W) ``signal`` in place."""
    H, W = signal.shape
    fq = float(rng.uniform(0.08, 0.45))
    amp = float(rng.uniform(0.003, 0.012)) * span
    ph = float(rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.8:
        signal += (amp * np.sin(2 * math.pi * fq * np.arange(W) + ph)).astype(np.float32)[None, :]
    else:
        signal += (amp * np.sin(2 * math.pi * fq * np.arange(H) + ph)).astype(np.float32)[:, None]


def _collimate(rng: np.random.Generator, signal: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Apply collimator shutters to (H, W) ``signal`` in place.

    Outside the shutters the film is nearly unexposed (white) or electronically masked (black).

    Returns:
        The exposed field, bool (H, W).
    """
    H, W = signal.shape
    span = hi - lo
    m = [float(rng.uniform(0.01, 0.12)) if rng.random() < 0.7 else -1.0 for _ in range(4)]
    ang = math.radians(float(rng.normal(0, 1.0)))
    rr = np.arange(H, dtype=np.float32)[:, None] - H / 2.0
    cc = np.arange(W, dtype=np.float32)[None, :] - W / 2.0
    u = cc * math.cos(ang) + rr * math.sin(ang)
    v = -cc * math.sin(ang) + rr * math.cos(ang)
    ramp = float(rng.uniform(0.7, 2.5))
    inside = (np.clip((u + W / 2 - m[0] * W) / ramp, 0, 1) * np.clip((W / 2 - m[1] * W - u) / ramp, 0, 1)
              * np.clip((v + H / 2 - m[2] * H) / ramp, 0, 1) * np.clip((H / 2 - m[3] * H - v) / ramp, 0, 1))
    if rng.random() < 0.8:
        outside = hi + float(rng.uniform(0.0, 0.4)) * span + 0.05 * (signal - lo)
    else:
        outside = np.float32(lo - 0.5 * span)
    signal *= inside
    signal += (outside * (1.0 - inside)).astype(np.float32)
    return inside > 0.5


def _burn_in(rng: np.random.Generator, signal: np.ndarray, text: str, *, is_marker: bool, value: float,
             sp: float) -> None:
    """Burn ``text`` (a boxed lead marker, or small annotation text) into a corner of (H, W) ``signal`` in place.

    Text that would cover a third of the image is skipped (after its size is drawn).
    """
    H, W = signal.shape
    height_mm = float(rng.uniform(12.0, 22.0)) if is_marker else float(rng.uniform(6.0, 11.0))
    px_h = max(8, int(height_mm / sp))
    font = ImageFont.load_default(size=px_h)
    x0, y0, x1, y1 = font.getbbox(text)
    pad = int(0.3 * px_h) if is_marker else 1
    img = Image.new("L", (x1 - x0 + 2 + 2 * pad, y1 - y0 + 2 + 2 * pad), 0)
    draw = ImageDraw.Draw(img)
    draw.text((pad - x0, pad - y0), text, font=font, fill=255)
    if is_marker:
        draw.rectangle([0, 0, img.width - 1, img.height - 1], outline=160, width=max(1, pad // 3))
    lab = np.asarray(img, dtype=np.float32) / 255.0
    lh_, lw_ = lab.shape
    if lh_ >= H // 3 or lw_ >= W // 3:
        return
    # the lead marker sits on the side it names (patient's left = image right)
    right = (text == "L") if is_marker else bool(rng.random() < 0.5)
    r_at = int(rng.uniform(0.02, 0.25) * H) if is_marker else int(rng.uniform(0.02, 0.08) * H)
    c_at = int(W - lw_ - rng.uniform(0.03, 0.2) * W) if right else int(rng.uniform(0.03, 0.2) * W)
    r_at = int(np.clip(r_at, 0, H - lh_))
    c_at = int(np.clip(c_at, 0, W - lw_))
    reg = signal[r_at:r_at + lh_, c_at:c_at + lw_]
    signal[r_at:r_at + lh_, c_at:c_at + lw_] = reg * (1 - lab) + value * lab


def _devices(rng: np.random.Generator, frame: _Frame, dens: np.ndarray, *, tw: float, lh: float, med_x: float,
             scale: float, ap: bool, trachea: np.ndarray, heart: np.ndarray, lung_l: _Lung) -> list[str]:
    """Add ECG electrodes and leads, tubes, lines and pacemakers to ``dens`` (in place).

    Returns:
        Names of the devices drawn.
    """
    drawn: list[str] = []
    lines: list[np.ndarray] = []
    if rng.random() < 0.75:
        drawn.append("ecg")
        lines += _ecg_electrodes(rng, frame, dens, tw=tw, lh=lh, med_x=med_x)
    tr_top, carina = trachea[0], trachea[-1]
    if rng.random() < (0.5 if ap else 0.1):  # endotracheal tube ending 3-7 cm above the carina
        drawn.append("ett")
        tip_y = carina[1] - float(rng.uniform(30.0, 70.0)) * scale
        sel = trachea[trachea[:, 1] < tip_y] + np.array([float(rng.normal(0, 2)), 0.0])
        if len(sel) > 3:
            lines.append(_polyline(sel, 0.7))
    if rng.random() < (0.4 if ap else 0.05):  # nasogastric tube down the oesophagus into the stomach
        drawn.append("ngt")
        gx = 0.4 * lung_l.tw + med_x
        gy = float(lung_l.dome_y(np.array([0.4 * lung_l.tw]))[0]) + 40.0 * scale
        pts = np.array([[tr_top[0] + 6.0, tr_top[1]], [carina[0] + 8.0, carina[1]],
                        [med_x + 12.0, 0.8 * lh], [gx - 15.0, gy - 10.0], [gx, gy],
                        [gx + 20.0 * float(rng.uniform(-1, 1)), gy + 20.0]])
        lines.append(_polyline(pts, 0.8))
    if rng.random() < (0.4 if ap else 0.08):  # central venous line into the SVC
        drawn.append("cvc")
        s = -1.0 if rng.random() < 0.6 else 1.0
        tip = np.array([med_x - 0.2 * tw, heart[:, 1].min() + float(rng.uniform(-10.0, 15.0))])
        pts = np.array([[s * 1.1 * tw + med_x, 0.08 * lh], [s * 0.6 * tw + med_x, 0.12 * lh],
                        [med_x - 0.12 * tw, 0.2 * lh], tip])
        lines.append(_polyline(pts, 0.7))
    if rng.random() < 0.12:
        drawn.append("pacemaker")
        lines += _pacemaker(rng, frame, dens, tw=tw, lh=lh, med_x=med_x, scale=scale, heart=heart)
    if lines:
        dens += _deposit_lines(np.concatenate(lines), frame, density=8.0, sigma_scale=0.6)
    return drawn


def _polyline(pts: np.ndarray, radius: float, n: int = 80) -> np.ndarray:
    """A smooth wire through the control points ``pts`` (P, 2) mm as (n - 1, 5) line segments of ``radius``."""
    c = _spline(np.asarray(pts, dtype=np.float64), n)
    return np.concatenate([c[:-1], c[1:], np.full((n - 1, 1), radius)], axis=1)


def _ecg_electrodes(rng: np.random.Generator, frame: _Frame, dens: np.ndarray, *, tw: float, lh: float,
                    med_x: float) -> list[np.ndarray]:
    """Add ECG electrodes (metal snap in a foam pad) to ``dens`` in place.

    Returns:
        Their wandering leads, each as (M, 5) line segments.
    """
    lines: list[np.ndarray] = []
    for _ in range(int(rng.integers(2, 5))):
        ex = float(rng.uniform(-1.1, 1.1)) * tw + med_x
        ey = float(rng.uniform(-0.1, 0.5)) * lh

        def electrode(xg: np.ndarray, yg: np.ndarray, ex: float = ex, ey: float = ey) -> np.ndarray:
            rn = np.sqrt((xg - ex) ** 2 + (yg - ey) ** 2) / 5.0
            return 60.0 * np.sqrt(np.clip(1 - (rn / 0.5) ** 2, 0, None)) + 3.0 * (np.abs(rn - 2.0) < 0.15)

        _add_in_box(dens, frame, np.array([[ex - 11.0, ey - 11.0], [ex + 11.0, ey + 11.0]]), electrode)
        wp = [(ex, ey)]
        d = float(rng.uniform(0, 2 * math.pi))
        for _i in range(int(rng.integers(5, 8))):
            d += float(rng.normal(0, 0.5))
            wp.append((wp[-1][0] + 50 * math.cos(d), wp[-1][1] + 50 * math.sin(d)))
        lines.append(_polyline(np.array(wp), 0.9, 60))
    return lines


def _pacemaker(rng: np.random.Generator, frame: _Frame, dens: np.ndarray, *, tw: float, lh: float, med_x: float,
               scale: float, heart: np.ndarray) -> list[np.ndarray]:
    """Add a pacemaker's metal can in the upper chest to ``dens`` in place.

    Returns:
        Its two leads into the right heart, each as (M, 5) line segments.
    """
    s = 1.0 if rng.random() < 0.8 else -1.0
    px_, py_ = s * 0.65 * tw + med_x, 0.1 * lh + float(rng.uniform(0, 20))
    a_, b_ = 24.0 * scale, 20.0 * scale

    def can(xg: np.ndarray, yg: np.ndarray) -> np.ndarray:
        q = np.abs((xg - px_) / a_) ** 4 + np.abs((yg - py_) / b_) ** 4
        return 45.0 * _smoothstep((1.0 - q) / 0.15) + 40.0 * _smoothstep((0.35 - q) / 0.1)

    _add_in_box(dens, frame, np.array([[px_ - a_, py_ - b_], [px_ + a_, py_ + b_]]), can)
    hx, hy0, hy1 = float(heart[:, 0].mean()), float(heart[:, 1].min()), float(heart[:, 1].max())
    lines = []
    for tip in ([hx + 10.0, hy1 - 15.0], [hx - 25.0, hy0 + 30.0]):
        pts = np.array([[px_, py_], [px_ - s * 40.0, py_ - 15.0], [med_x - 0.15 * tw, 0.25 * lh],
                        [med_x - 0.18 * tw, hy0 + 10.0], tip])
        lines.append(_polyline(pts, 1.1))
    return lines


# --------------------------------------------------------------------------------------
# the case generator


@dataclass(frozen=True)
class _Study:
    """Acquisition of one radiograph: view, breathing, patient rotation and detector field.

    Attributes:
        view: ``"PA"`` or ``"AP"``; ``ap``: ``view == "AP"``.
        insp: inspiration depth (scales the lung height).
        rot: axial patient rotation (radians); ``tilt``: in-plane tilt (radians).
        tw: thorax half-width (mm); ``lh``: lung height (mm).
        sp: pixel spacing (mm, square pixels).
        native_sp: detector pixel spacing (mm); ``native_shape``: detector (rows, cols).
        cut: which border cuts a lung off (``"lateral"``, ``"bottom"``, ``"top"``) or None.
        frame: canonical mm -> pixel map of the image (rows, cols) = ``frame.shape``.
    """

    view: str
    ap: bool
    insp: float
    rot: float
    tilt: float
    tw: float
    lh: float
    sp: float
    native_sp: float
    native_shape: tuple[int, int]
    cut: str | None
    frame: _Frame


@dataclass(frozen=True)
class _Scene:
    """Geometry shared by the density layers of one case (all lengths in canonical mm).

    Attributes:
        frame: canonical mm -> pixel map; ``sp``: mm per pixel.
        lungs: (right, left) lungs.
        med_x, spine_x, ant_x: x of the mediastinum, the spine and anterior structures
            (shifted in opposite directions by the patient's rotation).
        scale: body scale of the subject; ``lh``, ``tw``: lung height, thorax half-width.
        f_low: downsampling factor of the low-resolution grid.
        Xl, Yl: canonical coordinates of the low-resolution grid, shape ``lowshape``.
        X2, Y2: canonical coordinates of the half-resolution grid, shape ``halfshape``.
    """

    frame: _Frame
    sp: float
    lungs: tuple[_Lung, _Lung]
    med_x: float
    spine_x: float
    ant_x: float
    scale: float
    lh: float
    tw: float
    f_low: int
    Xl: np.ndarray
    Yl: np.ndarray
    X2: np.ndarray
    Y2: np.ndarray

    @property
    def full(self) -> tuple[int, int]:
        """Full image shape (rows, cols)."""
        return self.frame.shape

    @property
    def lowshape(self) -> tuple[int, int]:
        """Shape of the low-resolution grid."""
        return self.Xl.shape

    @property
    def halfshape(self) -> tuple[int, int]:
        """Shape of the half-resolution grid."""
        return self.X2.shape


@dataclass
class _Layers:
    """Density accumulators at three resolutions, summed by :meth:`total` (mm of water).

    Attributes:
        low: smooth soft tissue on the low-resolution grid (``_Scene.lowshape``).
        half: medium detail (spine, texture) on the half-resolution grid.
        full: fine detail (tubes, vessels, lesions) on the image grid (rows, cols).
    """

    low: np.ndarray
    half: np.ndarray
    full: np.ndarray

    def total(self, scene: _Scene) -> np.ndarray:
        """Upsample and sum the layers: float32 (rows, cols), clipped at 0."""
        density = _upsample(self.low, scene.f_low, scene.full) + _upsample(self.half, 2, scene.full) + self.full
        np.maximum(density, 0.0, out=density)
        return density.astype(np.float32)


@dataclass
class _Air:
    """Aerated lung: how much air each pixel's ray crosses and where lung is visible.

    Attributes:
        A: float (rows, cols), air path length (mm) of fully aerated lung.
        air_frac: float (rows, cols) in [0, 1], aerated fraction (heart cover, fluid removed).
        recess: float (rows, cols), posterior recesses below the domes.
        e_lung: float (rows, cols), soft lung-field profile; ``e_heart``: same for the heart.
        poly_low: bool low-resolution lung polygons (``_Scene.lowshape``).
        a_max: maximal air path length (mm).
    """

    A: np.ndarray
    air_frac: np.ndarray
    recess: np.ndarray
    e_lung: np.ndarray
    e_heart: np.ndarray
    poly_low: np.ndarray
    a_max: float


def make_case(
    rng: np.random.Generator,
    size: int | tuple[int, int] | None = None,
    findings: Mapping[str, bool] | None = None,
    *,
    subject: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Generate one synthetic frontal chest radiograph with masks and labels.

    Args:
        rng: random generator; the case is a pure function of its state (and ``subject``).
        size: output shape: ``None`` (random long side in ``size_range``, detector aspect
            such as 14x17 in.), an int (square), or ``(rows, cols)``.
        findings: finding name -> present, for any subset of :data:`FINDINGS`; the others
            are sampled with ``prevalence``.
        subject: patient traits from :func:`sample_subject` (sampled from ``rng`` if None);
            pass the same dict for several studies of one patient.
        **options: fields of :class:`ChestXrayOptions`.

    Returns:
        Dict with

        - ``image``: float32 (rows, cols) in [0, 1], the processed radiograph as displayed
          (higher = denser = brighter: bone bright, lungs dark).
        - ``density``: float32 (rows, cols), the physical projection before the detector:
          water-equivalent path length in mm (higher = denser).
        - ``signal``: float32 (rows, cols), the processed log signal with overlays, before
          the window and tone curve; ``image == apply_tone(signal, window, tone)``.
        - ``window``: (lo, hi) signal values mapped to 0 and 1; ``tone``: tone-curve params.
        - ``lungs``, ``heart``: uint8 (rows, cols) 0/1 masks (see module doc for the lung
          convention).
        - ``findings``: dict finding -> bool; ``finding_masks``: finding -> uint8 mask of
          the visible abnormality (present findings only; Cardiomegaly has none).
        - ``ctr``: cardiothoracic ratio from the mask outlines (heart width / widest lung
          span, both horizontal), unaffected by cropping.
        - ``pixel_spacing``: (row, col) mm of this image; ``native_pixel_spacing`` (mm) and
          ``native_shape`` of the simulated detector before downsampling.
        - ``view`` ("PA"/"AP"), ``sex``, ``age``, ``subject`` (traits used), ``params``
          (sampled acquisition parameters, for inspection).

    Raises:
        ValueError: invalid size, findings or options.
    """
    # Every stage draws from ``rng`` (study) and ``shape_rng`` (the patient's anatomy) in a
    # fixed order: reordering the calls below changes every generated image.
    opts = _resolve_options(options)
    fixed = _check_findings(findings)
    subj, cm_from_subject = _case_subject(rng, opts, subject)
    shape_rng = np.random.default_rng([int(subj["shape_seed"]), 1])
    flags = _sample_flags(rng, opts, fixed, subj, cm_from_subject)
    study = _sample_study(rng, subj, size, opts)
    scene, heart, ctr_target = _build_thorax(rng, shape_rng, subj, study, flags["Cardiomegaly"])
    ctr = _fit_heart_ctr(scene, heart, ctr_target)
    lung_poly_masks = [scene.frame.fill(lg.outline) for lg in scene.lungs]
    lung_poly = lung_poly_masks[0] | lung_poly_masks[1]
    heart_mask = scene.frame.fill(heart)
    low = _body_thickness(rng, shape_rng, subj, scene.Xl, scene.Yl, study.tw, study.lh, scene.med_x, scene.lungs,
                          scene.f_low * study.sp)
    layers = _Layers(low=low, half=np.zeros(scene.halfshape, dtype=np.float32),
                     full=np.zeros(scene.full, dtype=np.float32))
    air = _lung_air(rng, scene, float(subj["habitus"]), lung_poly, heart_mask)
    finding_masks: dict[str, np.ndarray] = {}
    if flags["Effusion"]:
        fluid, finding_masks["Effusion"] = _effusion(rng, scene, lung_poly, heart_mask)
        air.air_frac *= 1.0 - fluid
    ptx_region, pleural_line = None, np.zeros((0, 5))
    if flags["Pneumothorax"]:
        ptx_region, pleural_line = _pneumothorax(rng, scene, lung_poly_masks)
        finding_masks["Pneumothorax"] = ptx_region.astype(np.uint8)
    air_path = _deposit_air(layers, air, ptx_region)
    lungs_mask = _lung_mask(lung_poly, heart_mask, finding_masks.get("Effusion"), opts.lung_mask)
    _vessels_and_texture(rng, scene, air, air_path, ptx_region, layers)
    _add_lesions(rng, scene, flags, lungs_mask, lung_poly, air, air_path, pleural_line, layers, finding_masks)
    if rng.random() < 0.6 and "Effusion" not in finding_masks:
        _gastric_bubble(rng, scene, layers.full)
    bone_k, trachea = _skeleton(rng, shape_rng, scene, subj, study, layers)

    devices: list[str] = []
    if rng.random() < (opts.device_prob * (2.5 if study.ap else 1.0)):
        devices = _devices(rng, scene.frame, layers.full, tw=study.tw, lh=study.lh, med_x=scene.med_x,
                           scale=scene.scale, ap=study.ap, trachea=trachea, heart=heart, lung_l=scene.lungs[1])
    density = layers.total(scene)
    image, signal, window, tone, params = _expose(rng, scene, study, opts, density, layers.low, lung_poly,
                                                  heart_mask, lungs_mask, finding_masks)
    return {
        "image": image,
        "density": density,
        "signal": signal,
        "window": window,
        "tone": tone,
        "lungs": lungs_mask.astype(np.uint8),
        "heart": heart_mask.astype(np.uint8),
        "findings": flags,
        "finding_masks": finding_masks,
        "ctr": ctr,
        "pixel_spacing": (study.sp, study.sp),
        "native_pixel_spacing": study.native_sp,
        "native_shape": study.native_shape,
        "view": study.view,
        "sex": str(subj["sex"]),
        "age": int(subj["age"]),
        "subject": subj,
        "params": {
            "inspiration": study.insp, "rotation_deg": math.degrees(study.rot), "tilt_deg": math.degrees(study.tilt),
            "cut": study.cut, "devices": devices, "bone_k": bone_k, "ctr_target": ctr_target,
            **params,
        },
    }


def _case_subject(rng: np.random.Generator, opts: ChestXrayOptions, subject: Mapping[str, Any] | None
                  ) -> tuple[dict[str, Any], bool]:
    """Sample the patient's traits and override them with ``subject``.

    Returns:
        (traits, whether ``subject`` fixes the cardiomegaly flag).

    Raises:
        ValueError: ``subject`` holds an unknown trait.
    """
    subj = sample_subject(rng, opts.prevalence_of("Cardiomegaly"))
    if subject is not None:
        bad = sorted(set(subject) - set(subj))
        if bad:
            raise ValueError(f"subject: unknown trait(s) {bad}; valid: {sorted(subj)}")
        subj.update(subject)
    return subj, subject is not None and "cardiomegaly" in subject


def _sample_flags(rng: np.random.Generator, opts: ChestXrayOptions, fixed: Mapping[str, bool],
                  subj: Mapping[str, Any], cm_from_subject: bool) -> dict[str, bool]:
    """Finding name -> present; one draw per finding even when it is fixed (stable streams)."""
    flags: dict[str, bool] = {}
    for name in FINDINGS:
        u = rng.random()
        if name in fixed:
            flags[name] = fixed[name]
        elif name == "Cardiomegaly" and cm_from_subject:
            flags[name] = bool(subj["cardiomegaly"])
        else:
            flags[name] = bool(u < opts.prevalence_of(name))
    return flags


def _sample_study(rng: np.random.Generator, subj: Mapping[str, Any], size: int | tuple[int, int] | None,
                  opts: ChestXrayOptions) -> _Study:
    """Sample view, breathing, rotation, the detector field of view and the patient's placement."""
    view = "AP" if rng.random() < opts.ap_prob else "PA"
    ap = view == "AP"
    insp = float(rng.uniform(0.82, 0.98) if ap else rng.uniform(0.91, 1.06))
    rot = math.radians(float(np.clip(rng.normal(0.0, 5.0 if ap else 2.5), -10, 10)))
    tilt = math.radians(float(np.clip(rng.normal(0.0, 3.0 if ap else 1.5), -8, 8)))
    tw = float(subj["tw"]) * float(rng.normal(1.0, 0.01)) * (1.04 if ap else 1.0)
    lh = float(subj["lh"]) * insp
    wide = 2 * tw + 60 > 340 and rng.random() < 0.7
    shape, det = _resolve_size(rng, size, opts, wide)
    sp, fov = _field_of_view(rng, shape, det, tw, lh)
    native_sp = float(rng.uniform(*opts.native_spacing_range))
    native_shape = (int(round(fov[0] / native_sp)), int(round(fov[1] / native_sp)))
    frame, cut = _place_patient(rng, opts, shape, fov, sp, tw, lh, tilt)
    return _Study(view=view, ap=ap, insp=insp, rot=rot, tilt=tilt, tw=tw, lh=lh, sp=sp, native_sp=native_sp,
                  native_shape=native_shape, cut=cut, frame=frame)


def _field_of_view(rng: np.random.Generator, shape: tuple[int, int], det: tuple[float, float], tw: float,
                   lh: float) -> tuple[float, tuple[float, float]]:
    """Pixel spacing (mm) and field of view (rows, cols in mm) of an image of ``shape``.

    The detector area ``det`` (mm) is electronically cropped so that the lungs fill a
    typical fraction of the height while the thorax still fits across.
    """
    H, W = shape
    lung_span = lh + 20.0
    h_mm = min(det[0], lung_span / float(rng.uniform(0.52, 0.74)))
    need_w = 2.0 * tw * 1.12 + 20.0
    if h_mm * W / H < need_w:
        h_mm = min(max(h_mm, need_w * H / W), det[0], det[1] * H / W)
    h_mm = min(h_mm, det[1] * H / W)
    sp = h_mm / H
    return sp, (H * sp, W * sp)


def _place_patient(rng: np.random.Generator, opts: ChestXrayOptions, shape: tuple[int, int],
                   fov: tuple[float, float], sp: float, tw: float, lh: float, tilt: float
                   ) -> tuple[_Frame, str | None]:
    """Position the patient on the detector (origin = midline at the apex height).

    Returns:
        (the frame with its random warp, the cut border or None).
    """
    H, W = shape
    bottom_need = lh + 20.0 + 15.0
    apex_mm = float(rng.uniform(0.03, 0.16)) * fov[0] + 10.0
    if apex_mm + bottom_need > fov[0]:
        apex_mm = max(6.0, fov[0] - bottom_need)
    off_x = float(rng.normal(0.0, 0.025)) * fov[1]
    cut = None
    if rng.random() < opts.cut_prob:
        cut = str(rng.choice(["lateral", "bottom", "top"]))
        if cut == "lateral":
            over = float(rng.uniform(5.0, 30.0))
            off_x = float(np.sign(rng.normal()) * (fov[1] / 2 - tw + over))
        elif cut == "bottom":
            apex_mm = fov[0] - lh - 15.0 + float(rng.uniform(10.0, 50.0))
        else:
            apex_mm = -float(rng.uniform(5.0, 30.0))
    n_modes = int(rng.integers(2, 5))
    lam = rng.uniform(180.0, 450.0, n_modes)
    ang = rng.uniform(0.0, 2 * math.pi, n_modes)
    amp_dir = rng.uniform(0.0, 2 * math.pi, n_modes)
    amp = rng.uniform(1.5, 6.0, n_modes)[:, None] * np.stack([np.cos(amp_dir), np.sin(amp_dir)], axis=1)
    warp = np.column_stack([2 * math.pi / lam * np.cos(ang), 2 * math.pi / lam * np.sin(ang),
                            rng.uniform(0.0, 2 * math.pi, n_modes), amp])
    frame = _Frame(shape=(H, W), spacing=sp, c0=W / 2.0 + off_x / sp, r0=apex_mm / sp, theta=tilt, warp=warp)
    return frame, cut


def _build_thorax(rng: np.random.Generator, shape_rng: np.random.Generator, subj: Mapping[str, Any],
                  study: _Study, enlarged: bool) -> tuple[_Scene, np.ndarray, float]:
    """Lungs and heart outline in canonical mm, and the grids of the density layers.

    Returns:
        (scene, heart outline (N, 2) mm, target cardiothoracic ratio).
    """
    scale, tw, lh = float(subj["scale"]), study.tw, study.lh
    # rotation: posterior structures move one way, anterior ones the other
    sr = math.sin(study.rot)
    spine_x, ant_x, med_x = -70.0 * sr, 60.0 * sr, 20.0 * sr
    tw_r = tw * (1.0 + 0.7 * sr)
    tw_l = tw * (1.0 - 0.7 * sr) * float(shape_rng.uniform(0.95, 1.01))
    dome_r = float(shape_rng.uniform(0.08, 0.15) if shape_rng.random() < 0.85 else shape_rng.uniform(0.03, 0.08)) * lh
    dl = float(shape_rng.uniform(8.0, 18.0)) * scale
    lh_l = lh + dl
    dome_l = dome_r * float(shape_rng.uniform(0.8, 1.1))
    lung_r = _build_lung(shape_rng, -1, tw_r, lh, dome_r, med_x, float(subj["aortic"]))
    lung_l = _build_lung(shape_rng, +1, tw_l, lh_l, dome_l, med_x, float(subj["aortic"]))

    if enlarged:
        ctr_target = float(np.clip(subj["ctr_enlarged"] + rng.normal(0, 0.015), 0.53, 0.72))
    else:
        ctr_target = float(np.clip(subj["ctr_normal"] + (0.025 if study.ap else 0.0) + rng.normal(0, 0.01),
                                   0.36, 0.475))
    thorax_w = float(lung_l.outline[:, 0].max() - lung_r.outline[:, 0].min())
    y_top = (0.4 + float(shape_rng.normal(0, 0.02))) * lh - (0.02 * lh if enlarged else 0.0)
    y_bot = float(lung_r.dome_y(np.array([0.3 * tw_r]))[0]) + 0.04 * lh
    y_apex = float(lung_l.dome_y(np.array([0.7 * ctr_target * thorax_w * 0.65]))[0]) - 0.02 * lh
    if enlarged:
        y_apex += 0.04 * lh
    heart_x = med_x + 0.3 * ant_x + float(shape_rng.normal(0.0, 4.0))
    heart = _heart_outline(shape_rng, ctr_target, thorax_w, heart_x, y_top, y_bot, y_apex, enlarged,
                           floor_left=lambda ax: float(lung_l.dome_y(np.array([ax + heart_x - med_x]))[0]))
    f_low = 4
    Xl, Yl = study.frame.grid(f_low)
    X2, Y2 = study.frame.grid(2)
    scene = _Scene(frame=study.frame, sp=study.sp, lungs=(lung_r, lung_l), med_x=med_x, spine_x=spine_x, ant_x=ant_x,
                   scale=scale, lh=lh, tw=tw, f_low=f_low, Xl=Xl, Yl=Yl, X2=X2, Y2=Y2)
    return scene, heart, ctr_target


def _fit_heart_ctr(scene: _Scene, heart: np.ndarray, ctr_target: float) -> float:
    """Scale ``heart`` (N, 2) in place so that the ratio measured on the image (after warp and tilt) is the target.

    Returns:
        The cardiothoracic ratio measured on the pixel outlines.
    """
    frame = scene.frame
    lung_px = [frame.to_px(lg.outline) for lg in scene.lungs]
    all_lung_cols = np.concatenate([p[:, 0] for p in lung_px])
    thorax_px = float(all_lung_cols.max() - all_lung_cols.min())
    hx0 = float(heart[:, 0].mean())
    for _ in range(3):
        heart_px = frame.to_px(heart)
        ctr = float((heart_px[:, 0].max() - heart_px[:, 0].min()) / thorax_px)
        if abs(ctr - ctr_target) < 1e-3:
            break
        heart[:, 0] = hx0 + (heart[:, 0] - hx0) * (ctr_target / ctr)
    return ctr


def _lung_air(rng: np.random.Generator, scene: _Scene, hab: float, lung_poly: np.ndarray,
              heart_mask: np.ndarray) -> _Air:
    """Air path length of the lungs (deepest at the centre) and where it shows (bool (rows, cols) masks in)."""
    frame, f_low, sp, scale, lh, full = scene.frame, scene.f_low, scene.sp, scene.scale, scene.lh, scene.full
    lung_r, lung_l = scene.lungs
    cav_low = frame.fill(lung_r.cavity, f_low) | frame.fill(lung_l.cavity, f_low)
    poly_low = frame.fill(lung_r.outline, f_low) | frame.fill(lung_l.outline, f_low)
    d_in = ndi.distance_transform_edt(cav_low).astype(np.float32) * (f_low * sp)
    a_max = (150.0 + 25.0 * hab) * scale * float(rng.uniform(0.9, 1.05))
    g_y = 0.6 + 0.4 * _smoothstep(scene.Yl / (0.45 * lh))
    A = _upsample(a_max * (1.0 - np.exp(-d_in / (22.0 * scale))) * g_y, f_low, full)
    # posterior recesses: some aerated lung projects below the domes
    recess_frac = float(rng.uniform(0.08, 0.2))
    recess_low = np.zeros(scene.lowshape, dtype=np.float32)
    for lg in scene.lungs:
        ax = lg.s * (scene.Xl - scene.med_x)
        dy = scene.Yl - lg.dome_y(ax)
        lat_ok = _smoothstep((lg.tw * 0.98 - ax) / 10.0) * _smoothstep((ax - lg.x_medial) / 10.0)
        lam = float(rng.uniform(12.0, 30.0)) * scale
        recess_low = np.maximum(recess_low, recess_frac * np.exp(-np.clip(dy, 0.0, None) / lam) * lat_ok)
    recess = _upsample(recess_low * cav_low, f_low, full)
    e_lung = _edge_profile(lung_poly, 5.0 / sp)
    lung_vis = np.maximum(e_lung, recess)
    e_heart = _upsample(_edge_profile(_downsample_mean(heart_mask, 2), 15.0 / sp), 2, full)
    heart_cover = float(rng.uniform(0.55, 0.75))
    air_frac = lung_vis * (1.0 - heart_cover * e_heart)
    return _Air(A=A, air_frac=air_frac, recess=recess, e_lung=e_lung, e_heart=e_heart, poly_low=poly_low, a_max=a_max)


def _effusion(rng: np.random.Generator, scene: _Scene, lung_poly: np.ndarray, heart_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Pleural fluid layering above a meniscus in one or both costophrenic angles.

    Returns:
        (fluid fraction float (rows, cols) in [0, 1], uint8 (rows, cols) effusion mask).
    """
    Xl, Yl, lh, scale = scene.Xl, scene.Yl, scene.lh, scene.scale
    fluid_low = np.zeros(scene.lowshape, dtype=np.float32)
    lungs = scene.lungs
    sides = [lungs[int(rng.integers(0, 2))]] if rng.random() < 0.7 else list(lungs)
    for lg in sides:
        ax = lg.s * (Xl - scene.med_x)
        e_h = float(rng.uniform(22.0, 0.45 * lh))
        h_men = float(rng.uniform(25.0, 70.0)) * scale
        x_m = lg.x_medial
        # meniscus: flat medially, climbing steeply along the lateral chest wall
        qx = np.clip((ax - x_m) / max(lg.tw * 0.975 - x_m, 1.0), 0.0, 1.0) ** float(rng.uniform(2.5, 4.0))
        y_men = lg.cp[1] - e_h + h_men * (1.0 - qx)
        tau_f = float(rng.uniform(12.0, 30.0)) * scale
        fl = _smoothstep((Yl - y_men) / tau_f)
        if e_h > 60.0:  # larger effusions layer posteriorly: a veil above the meniscus
            fl = fl + 0.12 * np.exp(np.clip(Yl - y_men, None, 0.0) / 50.0)
        fluid_low = np.maximum(fluid_low, np.clip(fl, 0.0, 1.0) * _smoothstep((ax - 8.0) / 8.0))
    fluid = _upsample(fluid_low, scene.f_low, scene.full)
    eff = (fluid > 0.5) & lung_poly & ~heart_mask
    return fluid, eff.astype(np.uint8)


def _pneumothorax(rng: np.random.Generator, scene: _Scene, lung_poly_masks: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Collapse one lung away from the chest wall and apex.

    Returns:
        (bool (rows, cols) pleural-air region, (M, 5) line segments of the visceral pleura).
    """
    idx = int(rng.integers(0, 2))
    lg = scene.lungs[idx]
    pts = lg.outline
    ax = lg.s * (pts[:, 0] - scene.med_x) / lg.tw
    ay = pts[:, 1] / scene.lh
    w_lat = np.clip((ax - 0.35) / 0.45, 0.0, 1.0)
    w_apex = np.clip((0.2 - ay) / 0.2, 0.0, 1.0) * (ax > 0.15)
    w = np.maximum(w_lat, w_apex) * (1.0 - 0.85 * _smoothstep(ay / 0.95))
    w = ndi.uniform_filter1d(w, 15, mode="wrap")
    gap = float(rng.uniform(12.0, 60.0)) * scene.scale * w
    centre = np.array([lg.hilum[0], lg.hilum[1] + 0.1 * scene.lh])
    vec = centre[None, :] - pts
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-6)
    collapsed = pts + vec * gap[:, None]
    ptx_region = lung_poly_masks[idx] & ~scene.frame.fill(collapsed)
    on_line = gap > 2.0
    cl = collapsed[on_line]
    pleural_line = np.zeros((0, 5))
    if len(cl) > 2:
        pleural_line = np.concatenate([cl[:-1], cl[1:], np.full((len(cl) - 1, 1), 0.5)], axis=1)
    return ptx_region, pleural_line


def _deposit_air(layers: _Layers, air: _Air, ptx_region: np.ndarray | None) -> np.ndarray:
    """Subtract the lung air (and the pneumothorax's pure air) from the fine density layer.

    Returns:
        The air path length float (rows, cols) of aerated lung (mm).
    """
    air_path = air.A * air.air_frac
    layers.full -= _LUNG_AIR * air_path
    if ptx_region is not None:
        # the pleural space holds pure air, without lung tissue and vessels
        layers.full -= (_AIR - _LUNG_AIR) * air.A * ptx_region * air.air_frac
    return air_path


def _lung_mask(lung_poly: np.ndarray, heart_mask: np.ndarray, effusion: np.ndarray | None, mode: str) -> np.ndarray:
    """Bool (rows, cols) lung annotation: the lung fields minus the heart (and fluid when ``mode`` is aerated)."""
    lungs_mask = lung_poly & ~heart_mask
    if effusion is not None and mode == "aerated":
        lungs_mask &= ~effusion.astype(bool)
        lab, nlab = ndi.label(lungs_mask)
        if nlab > 2:  # drop slivers cut off by the meniscus
            sizes = ndi.sum(lungs_mask, lab, index=np.arange(1, nlab + 1))
            keep_l = np.zeros(nlab + 1, dtype=bool)
            keep_l[1:] = sizes >= 0.02 * sizes.max()
            lungs_mask = keep_l[lab]
    return lungs_mask


def _inside_mask(scene: _Scene, mask_low: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Predicate (x, y) mm -> bool: whether points fall inside ``mask_low`` (bool, ``scene.lowshape``)."""
    frame, f_low, lowshape = scene.frame, scene.f_low, scene.lowshape

    def inside(xq: np.ndarray, yq: np.ndarray) -> np.ndarray:
        p = frame.to_px(np.stack([xq, yq], axis=1))
        jj = np.rint((p[:, 0] - (f_low - 1) / 2) / f_low).astype(np.int64)
        ii = np.rint((p[:, 1] - (f_low - 1) / 2) / f_low).astype(np.int64)
        ok = (ii >= 0) & (ii < lowshape[0]) & (jj >= 0) & (jj < lowshape[1])
        res = np.zeros(len(xq), dtype=bool)
        res[ok] = mask_low[ii[ok], jj[ok]]
        return res
    return inside


def _vessels_and_texture(rng: np.random.Generator, scene: _Scene, air: _Air, air_path: np.ndarray,
                         ptx_region: np.ndarray | None, layers: _Layers) -> None:
    """Add branching pulmonary vessels (fine layer) and parenchymal texture (half layer) in place."""
    frame, scale = scene.frame, scene.scale
    segs = []
    vscale = scale * float(rng.uniform(0.85, 1.15))
    for lg in scene.lungs:
        hx, hy = lg.hilum
        s = lg.s
        roots = []
        for ang, rad in ((-80, 3.2), (-40, 3.0), (10, 3.3), (45, 4.2), (75, 4.6), (100, 3.6)):
            a = math.radians(ang + float(rng.normal(0, 8)))
            roots.append((hx + float(rng.normal(0, 4)), hy + float(rng.normal(0, 4)),
                          math.atan2(math.sin(a), math.cos(a) * s), rad * vscale))
        segs.append(_branching_tree(rng, roots, (hx - s * 25.0, hy), _inside_mask(scene, air.poly_low),
                                    r_min=0.45 * vscale, max_segments=4000))
        # main pulmonary artery from the mediastinum into the hilum
        segs.append(np.array([[scene.med_x + s * 0.12 * lg.tw, hy - 8.0, hx, hy, 6.5 * vscale],
                              [hx, hy, hx + s * 8.0, hy + 22.0, 5.5 * vscale]]))
    vessels = _deposit_lines(np.concatenate(segs, axis=0), frame, density=0.8)
    vis = np.minimum(1.0, air.e_lung + 2.0 * air.recess) * (1.0 - 0.6 * air.e_heart)
    if ptx_region is not None:
        vis = vis * ~ptx_region
    layers.full += vessels * vis
    air_half = _downsample_mean(air_path if ptx_region is None else air_path * ~ptx_region, 2)
    tex = _band_noise(rng, scene.halfshape, 1.2 / (2 * scene.sp) * scale + 0.6)
    layers.half += float(rng.uniform(1.2, 3.2)) * tex * air_half / max(air.a_max, 1.0)


def _add_lesions(rng: np.random.Generator, scene: _Scene, flags: Mapping[str, bool], lungs_mask: np.ndarray,
                 lung_poly: np.ndarray, air: _Air, air_path: np.ndarray, pleural_line: np.ndarray,
                 layers: _Layers, finding_masks: dict[str, np.ndarray]) -> None:
    """Add the findings that add density (consolidation, nodules, the pleural line) and record their masks."""
    if flags["Consolidation"]:
        finding_masks["Consolidation"] = _consolidation(rng, scene, lungs_mask, lung_poly, air, air_path,
                                                        layers.full)
    if flags["Nodule"]:
        finding_masks["Nodule"] = _nodules(rng, scene, lungs_mask, layers.full)
    if len(pleural_line):
        layers.full += _deposit_lines(pleural_line, scene.frame, density=4.0, sigma_scale=0.8)


def _consolidation_foci(rng: np.random.Generator, scene: _Scene, lungs_mask: np.ndarray
                        ) -> tuple[np.ndarray, list[tuple[_Lung, float, float, float, float]]]:
    """Opacity of one focus mostly, sometimes multifocal, occasionally in both lungs.

    Returns:
        (opacity float32 on the low-resolution grid in [0, 1], foci as (lung, cx, cy, rx, ry) mm).
    """
    f_low, Xl, Yl, scale, lowshape = scene.f_low, scene.Xl, scene.Yl, scene.scale, scene.lowshape
    n_foci = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
    first_side = int(rng.integers(0, 2))
    both = rng.random() < 0.3
    o = np.zeros(lowshape, dtype=np.float32)
    foci = []
    cand_all = lungs_mask[(f_low - 1) // 2 + 1::f_low, (f_low - 1) // 2 + 1::f_low]
    cand_all = cand_all[: lowshape[0], : lowshape[1]]
    xl_c, yl_c = Xl[: cand_all.shape[0], : cand_all.shape[1]], Yl[: cand_all.shape[0], : cand_all.shape[1]]
    for i_f in range(n_foci):
        lg = scene.lungs[first_side if (i_f == 0 or not both) else 1 - first_side]
        ii, jj = np.nonzero(cand_all & ((xl_c - scene.med_x) * lg.s > 0))
        if len(ii):
            k = int(rng.integers(0, len(ii)))
            cx, cy = float(xl_c[ii[k], jj[k]]), float(yl_c[ii[k], jj[k]])
        else:
            cx, cy = lg.hilum[0] + lg.s * 40.0, lg.hilum[1] + 40.0
        axr = float(rng.uniform(22.0, 65.0)) * scale / (1.0 + 0.2 * i_f)
        ayr = float(rng.uniform(22.0, 65.0)) * scale / (1.0 + 0.2 * i_f)
        env = np.exp(-(((Xl - cx) / axr) ** 2 + ((Yl - cy) / ayr) ** 2))
        patchy = np.clip(1.0 + 0.45 * _band_noise(rng, lowshape, 8.0 / (f_low * scene.sp)), 0.0, None)
        of = _smoothstep((env * patchy - 0.3) / 0.5)
        of = ndi.gaussian_filter(of, 3.0 / (f_low * scene.sp))  # ill-defined margins
        if lg.s < 0 and rng.random() < 0.3:  # lobar: sharp border at the minor fissure
            y_fis = lg.hilum[1] + float(rng.normal(0, 8))
            of = of * (_smoothstep((y_fis - Yl) / 2.0) if cy < y_fis else _smoothstep((Yl - y_fis) / 2.0))
        o = np.maximum(o, of.astype(np.float32))
        foci.append((lg, cx, cy, axr, ayr))
    return o, foci


def _consolidation(rng: np.random.Generator, scene: _Scene, lungs_mask: np.ndarray, lung_poly: np.ndarray,
                   air: _Air, air_path: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Fill part of the air spaces (``dens`` (rows, cols) in place), maybe with air bronchograms.

    Returns:
        uint8 (rows, cols) consolidation mask.
    """
    o, foci = _consolidation_foci(rng, scene, lungs_mask)
    o_low = (o * air.poly_low).astype(np.float32)
    o_full = np.clip(_upsample(o_low, scene.f_low, scene.full), 0.0, 1.0)
    fill = float(rng.uniform(0.25, 0.6))
    dens += _LUNG_AIR * air_path * o_full * fill
    if rng.random() < 0.6:  # air bronchograms in the largest focus
        lg, cx, cy, axr, ayr = foci[0]
        ang = math.atan2(cy - lg.hilum[1], cx - lg.hilum[0])
        start = (cx - 0.6 * axr * math.cos(ang), cy - 0.6 * ayr * math.sin(ang))
        br = _branching_tree(rng, [(start[0], start[1], ang, 2.6 * scene.scale)], lg.hilum,
                             _inside_mask(scene, o_low > 0.2), r_min=0.7, max_segments=300,
                             length_factor=(6.0, 10.0))
        dens -= _deposit_lines(br, scene.frame, density=0.6) * o_full * fill
    return ((o_full > 0.35) & lung_poly).astype(np.uint8)


def _nodules(rng: np.random.Generator, scene: _Scene, lungs_mask: np.ndarray, dens: np.ndarray) -> np.ndarray:
    """Add one or a few lobulated nodules inside the lungs to ``dens`` (rows, cols) in place.

    Returns:
        uint8 (rows, cols) nodule mask.
    """
    H, W = scene.full
    sp = scene.sp
    nod_mask = np.zeros(scene.full, dtype=bool)
    n_nod = 1 if rng.random() < 0.75 else int(rng.integers(2, 4))
    er = ndi.binary_erosion(lungs_mask[::4, ::4], iterations=max(1, int(8.0 / (4 * sp))))
    ii, jj = np.nonzero(er)
    for _ in range(n_nod if len(ii) else 0):
        k = int(rng.integers(0, len(ii)))
        cr, cc = int(ii[k]) * 4 + 2, int(jj[k]) * 4 + 2
        diam = float(np.exp(rng.uniform(math.log(6.0), math.log(30.0))))
        rpx = diam / 2.0 / sp
        rb = int(math.ceil(rpx * 1.3)) + 2
        r0_, r1_, c0_, c1_ = max(0, cr - rb), min(H, cr + rb + 1), max(0, cc - rb), min(W, cc + rb + 1)
        yy, xx = np.mgrid[r0_:r1_, c0_:c1_]
        ang = np.arctan2(yy - cr, xx - cc)
        lob = (1.0 + 0.08 * np.sin(3 * ang + rng.uniform(0, 6.3))
               + 0.05 * np.sin(5 * ang + rng.uniform(0, 6.3)))
        rr_ = np.sqrt((yy - cr) ** 2 + (xx - cc) ** 2) / (rpx * lob)
        prof = diam * np.sqrt(np.clip(1.0 - rr_ * rr_, 0.0, None))
        dens[r0_:r1_, c0_:c1_] += (0.85 * (2.2 if rng.random() < 0.12 else 1.0) * prof).astype(np.float32)
        nod_mask[r0_:r1_, c0_:c1_] |= rr_ < 1.0
    return nod_mask.astype(np.uint8)


def _gastric_bubble(rng: np.random.Generator, scene: _Scene, dens: np.ndarray) -> None:
    """Add the gastric air bubble with its fluid level under the left dome to ``dens`` (rows, cols) in place."""
    lung_l, scale = scene.lungs[1], scene.scale
    gx = 0.45 * lung_l.tw + scene.med_x + float(rng.normal(0, 10))
    gy0 = float(lung_l.dome_y(np.array([0.45 * lung_l.tw]))[0])
    grx = float(rng.uniform(14, 32)) * scale
    gry = float(rng.uniform(10, 20)) * scale
    gy = gy0 + gry + float(rng.uniform(6, 14))
    level = gy + float(rng.uniform(-0.1, 0.6)) * gry
    depth = float(rng.uniform(15, 45)) * scale

    def bubble(xg: np.ndarray, yg: np.ndarray) -> np.ndarray:
        q = ((xg - gx) / grx) ** 2 + ((yg - gy) / gry) ** 2
        return -_AIR * depth * np.sqrt(np.clip(1 - q, 0, None)) * _smoothstep((level - yg) / 1.5)

    _add_in_box(dens, scene.frame, np.array([[gx - grx, gy - gry], [gx + grx, gy + gry]]), bubble)


def _spine_layer(rng: np.random.Generator, shape_rng: np.random.Generator, scene: _Scene,
                 subj: Mapping[str, Any], half: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Add the (slightly scoliotic) spine to the half-resolution layer ``half`` in place.

    Returns:
        (the vertebrae from :func:`_vertebrae`, the bone density factor).
    """
    scale, sp, frame, halfshape = scene.scale, scene.sp, scene.frame, scene.halfshape
    vert = _vertebrae(shape_rng, scale, y_t1=-(12.0 + float(shape_rng.uniform(-6, 6))) * scale)
    scol = float(shape_rng.normal(0.0, 4.0))
    scol_len = float(shape_rng.uniform(250.0, 450.0))
    scol_ph = float(shape_rng.uniform(0, 2 * math.pi))
    spine_x = scene.spine_x

    def xs(yq: np.ndarray) -> np.ndarray:
        return spine_x + scol * np.sin(2 * math.pi * yq / scol_len + scol_ph)

    bone_k = float(rng.uniform(1.0, 1.8)) * float(subj["bone_density"])
    spine_px = frame.to_px(np.array([[float(xs(np.array(-300.0))), -300.0], [float(xs(np.array(600.0))), 600.0]]))
    half_w = (vert["hw"].max() + 40.0) / sp
    c_lo = int(max(0, (min(spine_px[:, 0]) - half_w) // 2))
    c_hi = int(min(halfshape[1], (max(spine_px[:, 0]) + half_w) // 2 + 1))
    if c_hi > c_lo:
        half[:, c_lo:c_hi] += _spine_density(scene.X2[:, c_lo:c_hi], scene.Y2[:, c_lo:c_hi], vert, xs, bone_k)
    return vert, bone_k


def _skeleton(rng: np.random.Generator, shape_rng: np.random.Generator, scene: _Scene, subj: Mapping[str, Any],
              study: _Study, layers: _Layers) -> tuple[float, np.ndarray]:
    """Add spine, ribs, shoulder girdle and airways to ``layers`` in place.

    Returns:
        (bone density factor, trachea centre line points (N, 2) mm).
    """
    frame, scale, med_x, spine_x, ant_x = scene.frame, scene.scale, scene.med_x, scene.spine_x, scene.ant_x
    vert, bone_k = _spine_layer(rng, shape_rng, scene, subj, layers.half)
    airway = _airway_tubes(rng, shape_rng, scale, str(subj["sex"]), scene.lh, spine_x, med_x, float(subj["aortic"]))
    it1 = int(vert["i_t1"])
    post: list[_Tube] = [airway[0]]
    ant: list[_Tube] = []
    for lg in scene.lungs:
        p, a = _rib_tubes(shape_rng, lg, vert["tops"][it1: it1 + 13], vert["hw"][it1: it1 + 12],
                          spine_x - med_x, ant_x - med_x, scale, bone_k, study.insp)
        post += p
        ant += a
    others, plates, humeral = _shoulder_girdle(rng, shape_rng, scene.lungs, scale, float(subj["habitus"]), study.ap,
                                               bone_k, spine_x, ant_x)
    others += airway[1:]
    layers.full += _render_tubes(post, frame) + _render_tubes(ant, frame) + _render_tubes(others, frame)
    for poly in plates:
        plate = ndi.gaussian_filter(frame.fill(poly, scene.f_low).astype(np.float32), 0.7)
        layers.low += plate * 4.0 * bone_k
    for hx_, hy_, hr in humeral:
        def head(xg: np.ndarray, yg: np.ndarray, hx_=hx_, hy_=hy_, hr=hr) -> np.ndarray:
            rn = np.sqrt((xg - hx_) ** 2 + (yg - hy_) ** 2) / hr
            c1 = np.sqrt(np.clip(1 - rn * rn, 0, None))
            return bone_k * (0.7 * hr * c1 + 1.2 / np.maximum(c1, 0.3) * _smoothstep((1.0 - rn) * hr / 0.6))

        _add_in_box(layers.full, frame, np.array([[hx_ - hr, hy_ - hr], [hx_ + hr, hy_ + hr]]), head)
    return bone_k, airway[0].points


def _expose(rng: np.random.Generator, scene: _Scene, study: _Study, opts: ChestXrayOptions, density: np.ndarray,
            low: np.ndarray, lung_poly: np.ndarray, heart_mask: np.ndarray, lungs_mask: np.ndarray,
            finding_masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple[float, float],
                                                           dict[str, float], dict[str, Any]]:
    """X-ray chain, processing, overlays and tone curve of the (rows, cols) ``density``.

    Collimator shutters clip ``lungs_mask``, ``heart_mask`` and ``finding_masks`` in place.

    Returns:
        (image in [0, 1], signal, window (lo, hi), tone parameters, chain and overlay parameters).
    """
    # the window uses the whole lung fields, so the image does not depend on the mask convention
    chain = _xray_chain(rng, density, lung_poly & ~heart_mask, low > 20.0, scene.f_low, scene.sp, study.ap, opts)
    signal, (lo, hi), extras = chain
    overlay = _overlays(rng, signal, lo, hi, scene.sp, study.ap, opts)
    field_mask = overlay.pop("field")
    if field_mask is not None:  # nothing is annotated behind the collimator shutters
        lungs_mask &= field_mask
        heart_mask &= field_mask
        for k, v in finding_masks.items():
            finding_masks[k] = (v.astype(bool) & field_mask).astype(np.uint8)
    tone = {
        "gamma": float(rng.uniform(0.75, 1.3)),
        "mix": float(rng.uniform(0.0, 0.8)),
        "k": float(rng.uniform(3.0, 7.0)),
    }
    image = apply_tone(signal, (lo, hi), tone)
    return image, signal, (lo, hi), tone, {**extras, **overlay}


def apply_tone(signal: np.ndarray, window: tuple[float, float], tone: Mapping[str, float]) -> np.ndarray:
    """Map a processed signal to a display image in [0, 1] (window, then tone curve).

    Args:
        signal: float array (any shape).
        window: (lo, hi) signal values mapped to 0 and 1.
        tone: ``gamma`` (power), ``mix`` (weight of an S-curve) and ``k`` (its steepness).

    Returns:
        float32 array of the same shape, monotone non-decreasing in ``signal``.
    """
    lo, hi = window
    t = np.clip((np.asarray(signal, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    t = t ** np.float32(tone["gamma"])
    k = float(tone["k"])
    s_curve = 0.5 + 0.5 * np.tanh(k * (t - 0.5)) / math.tanh(k / 2.0)
    mix = np.float32(tone["mix"])
    return np.clip((1.0 - mix) * t + mix * s_curve, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# writing a dataset


def _normalise_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    out = []
    for f in formats:
        key = _FORMAT_ALIASES.get(str(f).lower(), str(f).lower())
        if key not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {f!r}; valid: {list(IMAGE_FORMATS) + list(_FORMAT_ALIASES)}")
        out.append(key)
    if not out:
        raise ValueError("formats must name at least one image format")
    return tuple(out)


def dicom_encoding(case: Mapping[str, Any], rng: np.random.Generator, photometric: str) -> dict[str, Any]:
    """Stored pixels and Modality/VOI LUT attributes that reproduce ``case["image"]``.

    Two encodings are drawn at random:

    - *window*: stored values hold the tone-mapped signal inside the window and its linear
      continuation outside (background, shutters), with a LINEAR (or LINEAR_EXACT) window
      that covers exactly the display range;
    - *VOI LUT*: stored values are linear in the processed signal and a *VOI LUT Sequence*
      table carries the window and tone curve.

    In both, reading with rescale -> VOI -> (invert MONOCHROME1) gives ``case["image"]`` up to
    quantisation. CR files may use a non-trivial rescale slope/intercept; DX never does.

    Args:
        case: output of :func:`make_case`.
        rng: random generator for the encoding choices.
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.

    Returns:
        Keyword arguments for :func:`medcnn.synth.dicom_write.write_xray_dicom`
        (``pixels_stored`` included).
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    signal = np.asarray(case["signal"], dtype=np.float64)
    lo, hi = (float(v) for v in case["window"])
    tone = case["tone"]
    bits = int(rng.choice([10, 12, 12, 14, 15, 16]))
    maxv = 2**bits - 1
    modality = "DX" if rng.random() < 0.6 else "CR"
    mono1 = photometric == "MONOCHROME1"
    out: dict[str, Any] = {"photometric": photometric, "modality": modality, "bits_stored": bits}
    if rng.random() < 0.35:
        s_min, s_max = float(signal.min()), float(signal.max())
        p_hi = int(maxv * float(rng.uniform(0.8, 1.0)))
        scale = p_hi / max(s_max - s_min, 1e-9)
        mono2 = np.rint((signal - s_min) * scale).astype(np.int64)
        stored = maxv - mono2 if mono1 else mono2
        m = np.arange(int(stored.min()), int(stored.max()) + 1)
        m2 = maxv - m if mono1 else m
        disp = apply_tone(s_min + m2 / scale, (lo, hi), tone).astype(np.float64)
        lut_bits = 16 if rng.random() < 0.5 else 12
        lut = np.rint((1.0 - disp if mono1 else disp) * (2**lut_bits - 1)).astype(np.int64)
        # DX requires an identity rescale; CR may omit it (then stored values feed the LUT)
        rescale = (1.0, 0.0) if modality == "DX" or rng.random() < 0.5 else (None, None)
        out.update(pixels_stored=stored.astype(np.uint16), rescale_slope=rescale[0],
                   rescale_intercept=rescale[1], voi_lut=lut, voi_lut_first_mapped=int(m[0]),
                   voi_lut_bits=lut_bits)
        return out
    t = (signal - lo) / max(hi - lo, 1e-9)
    disp = apply_tone(signal, (lo, hi), tone).astype(np.float64)
    g = disp + np.minimum(t, 0.0) + np.maximum(t - 1.0, 0.0)  # monotone, = display inside window
    g_min, g_max = min(0.0, float(g.min())), max(1.0, float(g.max()))
    b = maxv * float(rng.uniform(0.85, 1.0)) / (g_max - g_min)
    a = -b * g_min
    mono2 = np.clip(np.rint(a + b * g), 0, maxv).astype(np.int64)
    stored = maxv - mono2 if mono1 else mono2
    if modality == "CR" and rng.random() < 0.5:
        slope = float(rng.choice([0.5, 1.0, 2.0]))
        intercept = float(rng.choice([-1024.0, 0.0, 512.0]))
    else:
        slope, intercept = 1.0, 0.0
    ends = [slope * (maxv - a if mono1 else a) + intercept, slope * (maxv - a - b if mono1 else a + b) + intercept]
    m_low, m_high = min(ends), max(ends)
    if rng.random() < 0.8:
        func, center, width = "LINEAR", 0.5 * (m_low + m_high) + 0.5, m_high - m_low + 1.0
    else:
        func, center, width = "LINEAR_EXACT", 0.5 * (m_low + m_high), m_high - m_low
    # LINEAR is the default VOI LUT Function: state it explicitly only half of the time
    explicit = func != "LINEAR" or rng.random() < 0.5
    out.update(pixels_stored=stored.astype(np.uint16), rescale_slope=slope, rescale_intercept=intercept,
               window_center=center, window_width=width, voi_lut_function=func if explicit else None)
    return out


#: where :func:`generate` writes a present finding's mask, relative to the output folder; the
#: same pattern (``{case}`` = the image's file stem) serves as ``data.finding_masks`` in configs.
FINDING_MASK_PATTERN = "masks/{case}_{finding}.png"


def finding_mask_path(case_id: str, finding: str) -> Path:
    """Relative path of one finding's mask in a generated dataset (``FINDING_MASK_PATTERN``)."""
    return Path(FINDING_MASK_PATTERN.format(case=case_id, finding=finding))


def _case_job(args: tuple[Path, int, int, tuple[str, ...], Any, dict[str, Any], float, float, float]) -> dict[str, Any]:
    """Generate and write one case (runs in worker processes too)."""
    out_dir, seed, index, formats, size, options, uncertain_frac, blank_frac, followup_prob = args
    opts = _resolve_options(options)
    block = index // 2
    paired = bool(np.random.default_rng([seed, block, 7]).random() < followup_prob)
    first = 2 * block if paired else index
    study = index - first
    subject = sample_subject(np.random.default_rng([seed, first, 1]), opts.prevalence_of("Cardiomegaly"))
    case = make_case(np.random.default_rng([seed, index]), size=size, subject=subject, **options)
    case_id = f"cxr-{index + 1:05d}"
    subject_id = f"patient{first + 1:05d}"
    fmt = formats[index % len(formats)]
    H, W = case["image"].shape
    rel_img = _write_case_image(out_dir, case, fmt, seed=seed, index=index, case_id=case_id, subject_id=subject_id,
                                study=study)
    rel_lungs = Path("masks") / f"{case_id}_lungs.png"
    rel_heart = Path("masks") / f"{case_id}_heart.png"
    write_png_atomic(out_dir / rel_lungs, (case["lungs"] * 255).astype(np.uint8))
    write_png_atomic(out_dir / rel_heart, (case["heart"] * 255).astype(np.uint8))
    for name, fmask in case["finding_masks"].items():  # where each present finding is (pixel supervision)
        write_png_atomic(out_dir / finding_mask_path(case_id, name), (fmask * 255).astype(np.uint8))
    chexpert = _chexpert_labels(np.random.default_rng([seed, index, 3]), case["findings"], uncertain_frac, blank_frac)
    return {
        "case": case_id, "subject": subject_id, "study": study, "image": rel_img.as_posix(),
        "lungs": rel_lungs.as_posix(), "heart": rel_heart.as_posix(),
        # the nodule mask as a segmentation target (data.masks: [nodule]); blank: no nodule (an all-zero mask)
        "nodule": finding_mask_path(case_id, "Nodule").as_posix() if "Nodule" in case["finding_masks"] else "",
        "format": fmt,
        "rows": H, "cols": W, "pixel_spacing_mm": round(float(case["pixel_spacing"][0]), 6),
        "view": case["view"], "sex": case["sex"], "age": case["age"], "ctr": round(case["ctr"], 4),
        **{name: int(case["findings"][name]) for name in FINDINGS},
        "_chexpert": chexpert,
    }


def _write_case_image(out_dir: Path, case: Mapping[str, Any], fmt: str, *, seed: int, index: int, case_id: str,
                      subject_id: str, study: int) -> Path:
    """Write the (rows, cols) image of ``case`` as 8/16-bit PNG or DICOM with seed-derived UIDs.

    Returns:
        The image path relative to ``out_dir``.
    """
    from medcnn.synth.dicom_write import write_xray_dicom

    if fmt in ("png", "png16"):
        rel_img = Path("images") / f"{case_id}.png"
        if fmt == "png":
            pix = np.rint(case["image"] * 255.0).astype(np.uint8)
        else:
            pix = np.rint(case["image"] * 65535.0).astype(np.uint16)
        write_png_atomic(out_dir / rel_img, pix)
        return rel_img
    from pydicom.uid import generate_uid

    rel_img = Path("images") / f"{case_id}.dcm"
    photometric = "MONOCHROME1" if fmt == "dcm-mono1" else "MONOCHROME2"
    enc = dicom_encoding(case, np.random.default_rng([seed, index, 5]), photometric)
    uid = lambda kind: generate_uid(entropy_srcs=["medcnn-synth-cxr", str(seed), case_id, kind])  # noqa: E731
    study_uid = generate_uid(entropy_srcs=["medcnn-synth-cxr", str(seed), subject_id, str(study), "study"])
    write_xray_dicom(
        out_dir / rel_img, enc.pop("pixels_stored"), **enc,
        pixel_spacing=case["pixel_spacing"], view_position=case["view"],
        patient_name=f"SYNTH^{subject_id.upper()}", patient_id=subject_id,
        patient_sex=case["sex"], patient_age=case["age"], study_instance_uid=study_uid,
        series_instance_uid=uid("series"), sop_instance_uid=uid("sop"), study_id=str(study + 1),
        burned_in_annotation=bool(case["params"]["texts"]),
    )
    return rel_img


def _chexpert_labels(lab_rng: np.random.Generator, findings: Mapping[str, bool], uncertain_frac: float,
                     blank_frac: float) -> dict[str, str]:
    """CheXpert label strings per finding: "1.0"/"0.0", "-1.0" (uncertain) or "" (unmentioned negative)."""
    chexpert: dict[str, str] = {}
    for name in FINDINGS:
        u, v = lab_rng.random(), lab_rng.random()
        present = findings[name]
        if u < uncertain_frac:
            chexpert[name] = "-1.0"
        elif not present and v < blank_frac:
            chexpert[name] = ""
        else:
            chexpert[name] = "1.0" if present else "0.0"
    return chexpert


def generate(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    formats: Sequence[str] = ("png",),
    *,
    size: int | tuple[int, int] | None = None,
    uncertain_frac: float = 0.0,
    blank_frac: float = 0.0,
    followup_prob: float = 0.3,
    workers: int = 1,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Write ``n`` synthetic frontal chest radiographs with masks and label tables.

    Layout of ``out_dir``::

        images/cxr-00001.png | .dcm   the radiograph (format per case, cycling ``formats``)
        masks/cxr-00001_lungs.png     0/255, same rows x cols as the image's pixel array
        masks/cxr-00001_heart.png
        masks/cxr-00001_Nodule.png    one per present finding with a visible extent (Effusion,
                                      Consolidation, Nodule, Pneumothorax; not Cardiomegaly):
                                      0/255 on the image's pixel grid (``data.finding_masks``
                                      of a training config reads them: ``FINDING_MASK_PATTERN``)
        labels.csv                    CheXpert style: Path, Patient, Sex, Age, Frontal/Lateral,
                                      AP/PA, then one column per finding (1.0/0.0, -1.0
                                      uncertain, blank unmentioned)
        nih_labels.csv                NIH ChestX-ray14 style: Image Index, Finding Labels
                                      ("A|B" or "No Finding"), Follow-up #, Patient ID, ...
        manifest.csv                  case, subject, study, image, lungs, heart, nodule (its mask,
                                      blank without one), format, rows, cols, pixel_spacing_mm,
                                      view, sex, age, ctr, findings 0/1

    Case ``i`` (0-based) is ``cxr-{i+1:05d}`` and depends only on ``(seed, i)``: its image
    comes from ``np.random.default_rng([seed, i])``. Cases ``2k`` and ``2k+1`` belong to the
    same patient (two studies, shared anatomy and heart size) with probability
    ``followup_prob``, so splits must be made by patient.

    Args:
        out_dir: output folder (created).
        n: number of cases.
        seed: dataset seed.
        formats: image formats cycled over the cases: ``"png"`` (8-bit), ``"png16"``,
            ``"dcm-mono2"`` (alias ``"dcm"``), ``"dcm-mono1"``.
        size: image size passed to :func:`make_case`.
        uncertain_frac: fraction of CheXpert labels replaced by -1.0 (uncertain).
        blank_frac: fraction of negative CheXpert labels left blank (unmentioned).
        followup_prob: probability that a pair of consecutive cases is one patient.
        workers: worker processes (1: in this process).
        progress: show a tqdm progress bar.
        **options: :class:`ChestXrayOptions` fields.

    Returns:
        The manifest rows (dicts), in case order.

    Raises:
        ValueError: invalid arguments.
    """
    from tqdm.auto import tqdm

    from medcnn.synth import check_workers, map_jobs

    _check_generate_args(n, seed, uncertain_frac=uncertain_frac, blank_frac=blank_frac, followup_prob=followup_prob)
    workers = check_workers(workers)
    fmts = _normalise_formats(formats)
    _resolve_options(options)  # fail fast on bad options
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, int(seed), i, fmts, size, dict(options), float(uncertain_frac), float(blank_frac),
             float(followup_prob)) for i in range(int(n))]
    done = map_jobs(_case_job, jobs, workers, chunksize=len(jobs) // (8 * workers))
    rows: list[dict[str, Any]] = list(tqdm(done, total=len(jobs), desc="synthetic chest x-rays", unit="case",
                                           disable=not progress))
    man_rows = _write_label_tables(out, rows)
    logger.info("wrote %d synthetic chest radiographs (%d patients) to %s", len(rows),
                len({r["subject"] for r in rows}), out)
    return man_rows


def _check_generate_args(n: Any, seed: Any, **fractions: float) -> None:
    """Validate :func:`generate`'s case count, seed and probabilities.

    Raises:
        ValueError: ``n`` or ``seed`` is not a non-negative integer, or a fraction lies outside [0, 1].
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, v in fractions.items():
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {v!r}")


def _write_label_tables(out: Path, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Write labels.csv (CheXpert style), nih_labels.csv and manifest.csv from the cases' rows.

    Returns:
        The manifest rows (the case rows without their private ``_`` fields), in case order.
    """
    chex_rows, nih_rows, man_rows = [], [], []
    for row in rows:
        chex_rows.append({
            "Path": row["image"], "Patient": row["subject"], "Sex": "Male" if row["sex"] == "M" else "Female",
            "Age": row["age"], "Frontal/Lateral": "Frontal", "AP/PA": row["view"], **row["_chexpert"],
        })
        present = [name for name in FINDINGS if row[name]]
        ps = row["pixel_spacing_mm"]
        nih_rows.append({
            "Image Index": Path(row["image"]).name, "Finding Labels": "|".join(present) or "No Finding",
            "Follow-up #": row["study"], "Patient ID": int(row["subject"][len("patient"):]),
            "Patient Age": row["age"], "Patient Gender": row["sex"], "View Position": row["view"],
            "OriginalImage[Width": row["cols"], "Height]": row["rows"],
            "OriginalImagePixelSpacing[x": ps, "y]": ps,
        })
        man_rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    man_cols = ["case", "subject", "study", "image", "lungs", "heart", "nodule", "format", "rows", "cols",
                "pixel_spacing_mm", "view", "sex", "age", "ctr", *FINDINGS]
    write_csv_atomic(out / "labels.csv", [*CHEXPERT_COLUMNS, *FINDINGS], chex_rows)
    write_csv_atomic(out / "nih_labels.csv", NIH_COLUMNS, nih_rows)
    write_csv_atomic(out / "manifest.csv", man_cols, man_rows)
    return man_rows
