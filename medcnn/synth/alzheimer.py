"""Synthetic T1-weighted brain MRI of cognitively normal (CN) and Alzheimer's (AD) subjects.

Every subject is the MNI152 2009 template made into an individual: a sex-dependent head size,
a smooth nonlinear warp, normal variation of ventricle and hippocampus size, and age-related
atrophy (mild ventricular enlargement, sulcal widening). AD subjects additionally get the
disease's hallmarks, scaled by a ``severity`` in (0, 1]:

- enlargement of the lateral ventricles (periventricular tissue replaced by CSF);
- medial temporal atrophy: grey-matter loss in the hippocampi (asymmetric) and the wider
  medial temporal lobe, with CSF filling the space (temporal horn / choroid fissure);
- cortical thinning with widened sulci, strongest in temporal and parietal cortex.

All of it is done by editing the tissue probability maps before the T1 contrast is
synthesised. The acquisition then varies contrast (GM/WM/CSF intensities, partial-volume
sharpness), bias field, Rician noise, resolution, storage orientation and obliquity (see
:mod:`medcnn.synth.grid`), with or without a synthetic skull and scalp.

Severity of AD starts at 0.12, and age-related change in CN is milder and differently
distributed, so classes overlap only for the mildest AD subjects.

Several sessions of one subject (``generate(..., sessions=3)``) share the subject's anatomy and
differ by acquisition and by 1-2 years of progression, so a split by image rather than by
subject leaks.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from medcnn.synth.anatomy import Anatomy, SubjectTransform, ellipsoid, load_mni152, random_subject_transform
from medcnn.synth.grid import (
    affine_coords,
    bias_field,
    random_grid,
    rician_noise,
    rotation_matrix,
    sample,
    save_nifti,
    sigmoid,
    slice_profile_offsets,
    smooth_field,
)

logger = logging.getLogger(__name__)

DIAGNOSES: tuple[str, ...] = ("CN", "AD")
LAYOUTS: tuple[str, ...] = ("bids", "flat")
_PAD_VOX = 10  # template padding (voxels) to make room for the skull and scalp
_FAR_MM = 200.0  # shell distance of points off the template grid


@dataclass(frozen=True)
class SubjectParams:
    """Anatomy-level parameters of one subject (shared by all of its sessions).

    Attributes:
        diagnosis: ``"CN"`` or ``"AD"``.
        severity: AD severity in [0, 1] (0 for CN).
        age: age in years at the first session.
        sex: ``"F"`` or ``"M"``.
        aging: age-related atrophy factor in [0, 1].
        ventricle_base_mm: normal ventricle-size variation (dilation in mm, may be < 0).
        hippocampus_base: normal hippocampal GM variation (fraction lost, >= 0).
        asymmetry: (left, right) multipliers of medial temporal atrophy.
        gains: random multipliers of the ventricular, hippocampal and cortical effects.
        pattern_seed: seed of the subject's smooth random patterns.
        transform_seed: seed of the subject's head size and warp.
    """

    diagnosis: str
    severity: float
    age: float
    sex: str
    aging: float
    ventricle_base_mm: float
    hippocampus_base: float
    asymmetry: tuple[float, float]
    gains: tuple[float, float, float]
    pattern_seed: int
    transform_seed: int

    def progressed(self, years: float) -> SubjectParams:
        """The same subject ``years`` later (AD progresses, everyone ages).

        Args:
            years: elapsed time (>= 0).

        Returns:
            Updated parameters (same anatomy seeds).
        """
        if years < 0:
            raise ValueError(f"years must be >= 0, got {years}")
        rate = 0.1 if self.diagnosis == "AD" else 0.0
        return replace(
            self,
            age=self.age + years,
            aging=float(min(1.0, self.aging + 0.022 * years)),
            severity=float(min(1.0, self.severity + rate * years)),
        )


def draw_subject(
    rng: np.random.Generator,
    diagnosis: str,
    severity: float | None = None,
    *,
    age: float | None = None,
    sex: str | None = None,
) -> SubjectParams:
    """Draw a subject's anatomy-level parameters.

    Args:
        rng: random generator.
        diagnosis: ``"CN"`` or ``"AD"``.
        severity: AD severity in (0, 1]; None draws 0.12-1 (mid-to-high favoured). Must be None
            or 0 for CN.
        age: years (None: about 73 +/- 7, within 55-92).
        sex: ``"F"``/``"M"`` (None: random).

    Returns:
        The parameters.

    Raises:
        ValueError: on an unknown diagnosis or out-of-range values.
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"diagnosis must be one of {', '.join(DIAGNOSES)}, got {diagnosis!r}")
    if diagnosis == "CN":
        if severity not in (None, 0, 0.0):
            raise ValueError(f"CN subjects have no disease severity; got severity={severity}")
        sev = 0.0
    elif severity is None:
        sev = float(0.12 + 0.88 * rng.beta(1.6, 1.3))
    else:
        sev = float(severity)
        if not 0.0 < sev <= 1.0:
            raise ValueError(f"severity must be in (0, 1], got {severity}")
    age_v = float(np.clip(rng.normal(73.0, 7.0), 55.0, 92.0)) if age is None else float(age)
    if not 18.0 <= age_v <= 110.0:
        raise ValueError(f"age must be within 18-110 years, got {age}")
    sex_v = str(rng.choice(["F", "M"])) if sex is None else str(sex).upper()
    if sex_v not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    aging = float(np.clip((age_v - 50.0) / 40.0 * rng.uniform(0.6, 1.3), 0.0, 1.0))
    return SubjectParams(
        diagnosis=diagnosis,
        severity=sev,
        age=age_v,
        sex=sex_v,
        aging=aging,
        ventricle_base_mm=float(rng.uniform(-0.4, 1.2)),
        hippocampus_base=float(rng.uniform(0.0, 0.1)),
        asymmetry=(float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2))),
        gains=tuple(float(g) for g in rng.uniform(0.75, 1.25, size=3)),
        pattern_seed=int(rng.integers(2**63 - 1)),
        transform_seed=int(rng.integers(2**63 - 1)),
    )


def _soft(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


def _zero_mean(field: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``field`` shifted to zero mean and scaled to unit spread over the voxels ``where``."""
    sel = field[where]
    if sel.size < 8:
        return field
    return np.clip((field - sel.mean()) / max(float(sel.std()), 0.5), -2.5, 2.5)



@functools.lru_cache(maxsize=2)
def _prepared(anatomy: Anatomy) -> tuple[Anatomy, MappingProxyType]:
    """The padded template and the subject-independent maps used by :func:`atrophy_maps`.

    Cached per anatomy object (anatomies hash by identity; all arrays are read-only).
    """
    anat = anatomy.padded(_PAD_VOX)
    vox_mm = float(np.cbrt(abs(np.linalg.det(anat.affine[:3, :3]))))
    x, y, z = anat.world_coords()
    vent = anat.region("ventricles")
    static: dict[str, np.ndarray] = {}
    for name, side_mask in (("left", x < 0), ("right", x >= 0)):
        part = vent & side_mask
        if part.any():
            sdist = (ndi.distance_transform_edt(~part) - ndi.distance_transform_edt(part)) * vox_mm
        else:
            sdist = np.full(anat.shape, 1e3)
        static[f"vent_sdist_{name}"] = sdist.astype(np.float32)
    static["near_vent"] = ndi.binary_dilation(vent, iterations=4)
    static["vent_soft"] = _soft(vent, 0.5)
    # Where the ventricles may grow: not across the septum, hardly into the thalami or below
    # the ventricular floor (the third ventricle widens much less than the lateral ones).
    thalamus = np.minimum(ellipsoid((x, y, z), (14.0, -18.0, 6.0), (10.0, 13.0, 10.0)),
                          ellipsoid((x, y, z), (-14.0, -18.0, 6.0), (10.0, 13.0, 10.0))) < 1.0
    room = 1.0 - 0.75 * _soft(thalamus & (anat.gm > 0.3), 1.0)
    room *= 0.3 + 0.7 * sigmoid((z - 4.0) / 3.0)
    static["septum"] = (sigmoid((np.abs(x) - 1.5) / 0.5) * anat.region("cerebrum") * room).astype(np.float32)
    static["hipp_soft"] = _soft(anat.region("hippocampus"), 1.0)
    static["mtl_soft"] = _soft(anat.region("mtl"), 1.5)
    static["cortex_soft"] = _soft(anat.region("cortex"), 0.7)
    temporal = sigmoid((np.abs(x) - 30.0) / 5.0) * sigmoid((5.0 - z) / 8.0)
    parietal = np.exp(-(((y + 55.0) / 25.0) ** 2)) * sigmoid((z - 10.0) / 8.0)
    static["ad_weight"] = (0.35 + 0.65 * np.clip(temporal + parietal, 0.0, 1.0)).astype(np.float32)
    static["age_weight"] = (0.75 + 0.25 * sigmoid(y / 20.0)).astype(np.float32)
    static["left"] = x < 0
    static["outside_mm"] = (ndi.distance_transform_edt(anat.brain < 0.5) * vox_mm).astype(np.float32)
    for arr in static.values():
        arr.setflags(write=False)
    return anat, MappingProxyType(static)


def atrophy_maps(anatomy: Anatomy, params: SubjectParams) -> dict[str, np.ndarray]:
    """Edit the template's tissue maps for a subject's ageing and disease.

    Args:
        anatomy: template anatomy (unpadded; it is padded internally so that the head shell
            fits, see :func:`padded_template`).
        params: subject parameters.

    Returns:
        name -> (X, Y, Z) float32 map on the padded template grid: ``gm``, ``wm``, ``csf``,
        ``brain``, ``shell`` (distance outside the brain in mm, thickness-modulated; 0 inside)
        and ``ventricles`` (soft lateral-ventricle mask after enlargement).
    """
    anat, st = _prepared(anatomy)
    rng = np.random.default_rng(params.pattern_seed)
    a, s = params.aging, params.severity
    g_vent, g_hipp, g_ctx = params.gains
    pattern = smooth_field(rng, anat.shape, 6, channels=3)
    gm = anat.gm.astype(np.float32).copy()
    wm = anat.wm.astype(np.float32).copy()
    brain = anat.brain.astype(np.float32)

    # Ventricles: dilate each lateral ventricle by a signed distance (normal variation +
    # ageing + AD), each on its own side of a thin midline septum.
    expand = params.ventricle_base_mm + g_vent * (1.6 * a + 3.8 * s)
    expand_map = expand * (1.0 + 0.25 * _zero_mean(pattern[0], st["near_vent"]))
    grown = np.where(
        st["left"],
        sigmoid((expand_map - st["vent_sdist_left"]) / 0.8),
        sigmoid((expand_map - st["vent_sdist_right"]) / 0.8),
    )
    grown *= st["septum"]
    vent_soft = st["vent_soft"]
    if expand >= 0:
        grown = np.maximum(grown, vent_soft)
    else:  # smaller-than-template ventricles: give the rim back to white matter
        shrink = np.clip(vent_soft - grown, 0.0, 1.0)
        wm = np.clip(wm + shrink * np.clip(brain - gm - wm, 0.0, 1.0), 0.0, 1.0)
    keep = 1.0 - np.clip(grown - vent_soft, 0.0, 1.0)
    gm *= keep
    wm *= keep

    # Medial temporal lobe: hippocampal and wider MTL grey-matter loss (asymmetric).
    side = np.where(st["left"], np.float32(params.asymmetry[0]), np.float32(params.asymmetry[1]))
    hipp, mtl = st["hipp_soft"], st["mtl_soft"]
    loss_h = np.clip(params.hippocampus_base + g_hipp * (0.08 * a + 0.6 * s), 0.0, 0.85)
    loss_m = np.clip(g_hipp * (0.05 * a + 0.35 * s), 0.0, 0.6)
    loss = np.clip(side * (loss_h * hipp + loss_m * mtl * (1.0 - hipp)), 0.0, 0.9)
    gm *= 1.0 - loss
    wm *= 1.0 - 0.3 * loss

    # Cortex: thinning from the pial side (GM next to CSF becomes CSF: wider sulci),
    # temporo-parietal in AD, more uniform (slightly frontal) with age.
    csf_now = np.clip(brain - gm - wm, 0.0, 1.0)
    pial = np.clip(ndi.gaussian_filter(csf_now + (1.0 - brain), 1.0) * 2.0, 0.0, 1.0)
    thin = 0.15 * a * st["age_weight"] + g_ctx * 0.75 * s * st["ad_weight"]
    thin = thin * (1.0 + 0.3 * _zero_mean(pattern[1], anat.region("cortex")))
    gm *= 1.0 - np.clip(thin * pial * st["cortex_soft"], 0.0, 0.85)

    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    # Head shell: distance outside the brain, thickness modulated per subject.
    shell = (st["outside_mm"] / np.clip(1.0 + 0.3 * pattern[2], 0.6, None)).astype(np.float32)
    return {"gm": gm, "wm": wm, "csf": csf, "brain": brain, "shell": shell, "ventricles": grown.astype(np.float32)}


def padded_template(anatomy: Anatomy | None = None) -> Anatomy:
    """The (cached) padded template grid on which :func:`atrophy_maps` works."""
    return _prepared(load_mni152() if anatomy is None else anatomy)[0]


def map_volumes(anat: Anatomy, maps: dict[str, np.ndarray], transform: SubjectTransform | None = None) -> dict[str, float]:
    """Tissue volumes (ml) of edited maps, scaled by the subject's head size.

    Args:
        anat: the template anatomy given to :func:`atrophy_maps` (or its padded grid).
        maps: output of :func:`atrophy_maps`.
        transform: the subject transform (its linear part scales volumes).

    Returns:
        ``gm_ml``, ``wm_ml``, ``csf_ml``, ``ventricle_ml`` (CSF of the lateral ventricles),
        ``hippocampus_gm_ml``, ``mtl_gm_ml``.
    """
    if maps["gm"].shape != anat.shape:  # maps live on the padded grid of this template
        anat = padded_template(anat)
    if maps["gm"].shape != anat.shape:
        raise ValueError(f"maps of shape {maps['gm'].shape} are not on the grid of this anatomy {anat.shape}")
    scale = 1.0 if transform is None else float(1.0 / abs(np.linalg.det(transform.linear)))
    ml = anat.voxel_ml * scale
    return {
        "gm_ml": float(maps["gm"].sum() * ml),
        "wm_ml": float(maps["wm"].sum() * ml),
        "csf_ml": float(maps["csf"].sum() * ml),
        "ventricle_ml": float((maps["ventricles"] * maps["csf"]).sum() * ml),
        "hippocampus_gm_ml": float(maps["gm"][anat.region("hippocampus")].sum() * ml),
        "mtl_gm_ml": float(maps["gm"][anat.region("mtl")].sum() * ml),
    }


def _shell_t1(d: np.ndarray, layers: dict[str, float]) -> np.ndarray:
    """T1 intensity of the head outside the brain as a function of the distance ``d`` (mm).

    Layers from the brain outwards: CSF, inner table (dark), diploe (marrow, intermediate),
    outer table (dark), scalp fat (bright), skin/muscle (intermediate), then air.
    """
    edges = np.cumsum([0.0, layers["csf_mm"], layers["table_mm"], layers["diploe_mm"], layers["table_mm"], layers["fat_mm"], layers["skin_mm"]])
    values = [layers["csf"], 0.06, layers["marrow"], 0.06, layers["fat"], layers["skin"], 0.0]
    # Piecewise-constant profile smoothed over ~0.7 mm.
    out = np.full(d.shape, values[0], dtype=np.float32)
    for i in range(1, len(values)):
        step = sigmoid((d - edges[i]) / 0.35)
        out += (values[i] - values[i - 1]) * step
    return out


def render_subject(
    rng: np.random.Generator,
    params: SubjectParams,
    *,
    spacing: float | Sequence[float] | None = None,
    oriented: bool = True,
    skull: bool | None = None,
    max_rotation_deg: float = 20.0,
    noise: float | None = None,
    bias: float | None = None,
    dtype: str | None = None,
    anatomy: Anatomy | None = None,
) -> dict[str, Any]:
    """Acquire one T1 image of a subject (one session).

    Args:
        rng: random generator of this acquisition (grid, contrast, bias, noise).
        params: the subject (see :func:`draw_subject`).
        spacing: voxel size along the stored axes (None: random, incl. thick slices).
        oriented: random storage orientation/obliquity; False stores RAS+ axis-aligned.
        skull: include a synthetic skull and scalp (False: skull-stripped, zero background);
            None: random (70 % with skull).
        max_rotation_deg: largest oblique angle of the grid.
        noise: Rician noise sigma relative to white matter (None: random 0.01-0.05).
        bias: bias-field log-amplitude (None: random 0-0.3).
        dtype: ``"float32"``, ``"int16"`` or ``"uint16"`` (None: random).
        anatomy: template anatomy (default: the vendored MNI152).

    Returns:
        dict with ``t1`` (X, Y, Z) image, ``brain_mask`` (X, Y, Z) bool, ``affine`` (4, 4),
        ``diagnosis``, ``severity``, ``age``, ``sex`` and ``meta`` (grid, volumes, contrast).
    """
    t0 = time.perf_counter()
    if dtype not in (None, "float32", "int16", "uint16"):
        raise ValueError(f"dtype must be 'float32', 'int16', 'uint16' or None, got {dtype!r}")
    if noise is not None and noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if bias is not None and bias < 0:
        raise ValueError(f"bias must be >= 0, got {bias}")
    base = load_mni152() if anatomy is None else anatomy
    anat = padded_template(base)
    scale_range = (0.95, 1.06) if params.sex == "M" else (0.9, 1.0)
    transform = random_subject_transform(np.random.default_rng(params.transform_seed), anat, scale_range=scale_range)
    maps = atrophy_maps(base, params)
    volumes = map_volumes(anat, maps, transform)

    with_skull = bool(rng.random() < 0.7) if skull is None else bool(skull)
    centre = transform.centre
    pose = rotation_matrix(rng.normal(size=3), float(rng.uniform(0.0, 10.0)))
    offset = rng.normal(0.0, 15.0, size=3)
    reach = 22.0 if with_skull else 0.0
    corners = transform.approx_inverse(anat.bounds_world(0.3))
    lo, hi = corners.min(axis=0) - reach, corners.max(axis=0) + reach
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    world_corners = (corners - centre) @ pose.T + centre + offset
    grid = random_grid(
        rng, world_corners, spacing=spacing, oriented=oriented, axcodes="RAS", max_rotation_deg=max_rotation_deg, margin_mm=(2.0, 12.0)
    )
    world_to_subject = np.eye(4)
    world_to_subject[:3, :3] = pose.T
    world_to_subject[:3, 3] = centre - pose.T @ (centre + offset)
    shape = grid.shape
    inv = np.linalg.inv(anat.affine).astype(np.float32)
    # The shell channel is shifted so that points off the template grid read as far away (air).
    stack = np.stack([maps["gm"], maps["wm"], maps["csf"], maps["brain"], maps["shell"] - _FAR_MM])
    acc = np.zeros((5, int(np.prod(shape))), dtype=np.float32)
    offsets = slice_profile_offsets(grid)
    for off in offsets:  # thick slices: average over the slice thickness
        shift = np.eye(4)
        shift[:3, 3] = off
        subj = affine_coords(world_to_subject @ grid.affine @ shift, shape).reshape(3, -1)
        tpl = transform(subj)
        del subj
        vox = inv[:3, :3] @ tpl + inv[:3, 3:]
        del tpl
        acc += sample(stack, vox, order=1, cval=0.0)
        del vox
    if len(offsets) > 1:
        acc /= np.float32(len(offsets))
    gm, wm, csf, brain, shell = acc
    shell += _FAR_MM
    mask = (brain > 0.5).reshape(shape)

    # Contrast.
    mu_gm = float(rng.uniform(0.55, 0.8))
    mu_csf = float(rng.uniform(0.1, 0.35))
    gamma = np.float32(rng.uniform(1.0, 2.2))
    powered = np.stack([gm, wm, csf]) ** gamma
    weights = powered * (brain / np.maximum(powered.sum(axis=0), 1e-6))[None]
    del powered
    img = (np.float32(mu_gm) * weights[0] + weights[1] + np.float32(mu_csf) * weights[2]).reshape(shape)
    fine = np.maximum(2, np.round(np.array(shape) * np.array(grid.spacing) / 14.0).astype(int))
    img *= 1.0 + np.float32(rng.uniform(0.01, 0.04)) * smooth_field(rng, shape, tuple(fine))
    layers = {
        "csf_mm": float(rng.uniform(0.5, 2.5)),
        "table_mm": float(rng.uniform(1.2, 2.5)),
        "diploe_mm": float(rng.uniform(1.5, 4.0)),
        "fat_mm": float(rng.uniform(2.0, 6.0)),
        "skin_mm": float(rng.uniform(1.5, 3.5)),
        "csf": mu_csf,
        "marrow": float(rng.uniform(0.4, 0.8)),
        "fat": float(rng.uniform(0.9, 1.25)),
        "skin": float(rng.uniform(0.35, 0.6)),
    }
    if with_skull:
        flat_shell = shell.reshape(-1)
        near = np.flatnonzero((flat_shell < 30.0) & (brain < 0.999))
        head = _shell_t1(flat_shell[near], layers)
        img = img.reshape(-1)
        img[near] += (1.0 - brain[near]) * head
        img = img.reshape(shape)
    noise_sigma = float(np.exp(rng.uniform(np.log(0.01), np.log(0.05)))) if noise is None else float(noise)
    strength = float(rng.uniform(0.0, 0.3)) if bias is None else float(bias)
    img *= bias_field(rng, shape, strength)
    if with_skull:
        img = rician_noise(rng, img, noise_sigma)
    else:
        idx = np.flatnonzero(mask)
        vals = rician_noise(rng, img.reshape(-1)[idx], noise_sigma)
        img = np.zeros(int(np.prod(shape)), dtype=np.float32)
        img[idx] = vals
        img = img.reshape(shape)
    out_dtype = str(rng.choice(["float32", "int16", "uint16"], p=[0.4, 0.3, 0.3])) if dtype is None else dtype
    scale = float(10 ** rng.uniform(1.7, 3.3))
    img *= np.float32(scale)
    if out_dtype != "float32":
        img = np.clip(np.round(img), 0, 32767 if out_dtype == "int16" else 65535).astype(out_dtype)

    meta = {
        "shape": list(shape),
        "spacing": [round(v, 4) for v in grid.spacing],
        "axcodes": grid.axcodes,
        "skull": with_skull,
        "volumes_ml": {k: round(v, 2) for k, v in volumes.items()},
        "contrast": {"gm": round(mu_gm, 3), "csf": round(mu_csf, 3), "sharpness": round(float(gamma), 3)},
        "noise_sigma": round(noise_sigma, 4),
        "bias": round(strength, 3),
        "scale": round(scale, 2),
        "dtype": out_dtype,
        "aging": round(params.aging, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return {
        "t1": img,
        "brain_mask": mask,
        "affine": grid.affine.copy(),
        "diagnosis": params.diagnosis,
        "severity": params.severity,
        "age": params.age,
        "sex": params.sex,
        "meta": meta,
    }


def make_subject(
    rng: np.random.Generator,
    diagnosis: str,
    severity: float | None = None,
    *,
    age: float | None = None,
    sex: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Synthesise one T1 image of a new CN or AD subject, in memory.

    Args:
        rng: random generator; the subject is a deterministic function of its state.
        diagnosis: ``"CN"`` or ``"AD"``.
        severity: AD severity in (0, 1] (None: random 0.12-1); None/0 for CN.
        age: years (None: random around 73).
        sex: ``"F"``/``"M"`` (None: random).
        **options: acquisition options of :func:`render_subject` (``spacing``, ``oriented``,
            ``skull``, ``noise``, ``bias``, ``dtype``, ``max_rotation_deg``, ``anatomy``).

    Returns:
        See :func:`render_subject`.
    """
    params = draw_subject(rng, diagnosis, severity, age=age, sex=sex)
    return render_subject(rng, params, **options)


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """Random generator of subject ``index``'s anatomy in a set made with ``seed``."""
    return np.random.default_rng([int(seed), int(index)])


def session_rng(seed: int, index: int, session: int) -> np.random.Generator:
    """Random generator of one acquisition (session ``session``, counted from 1)."""
    return np.random.default_rng([int(seed), int(index), int(session)])


def diagnosis_of(seed: int, index: int, ad_fraction: float = 0.5) -> str:
    """Diagnosis of subject ``index``: exactly balanced in consecutive pairs when 0.5.

    Args:
        seed: set seed.
        index: subject index.
        ad_fraction: probability of AD; 0.5 gives one AD and one CN in every pair
            (2k, 2k + 1), in random order.

    Returns:
        ``"AD"`` or ``"CN"``.
    """
    if not 0.0 <= ad_fraction <= 1.0:
        raise ValueError(f"ad_fraction must be within [0, 1], got {ad_fraction}")
    if ad_fraction == 0.5:
        first_is_ad = np.random.default_rng([int(seed), int(index) // 2, 7919]).random() < 0.5
        return "AD" if (index % 2 == 0) == first_is_ad else "CN"
    return "AD" if np.random.default_rng([int(seed), int(index), 7919]).random() < ad_fraction else "CN"


def generate(
    out_dir: Path | str,
    n: int,
    seed: int = 0,
    layout: str = "bids",
    *,
    sessions: int = 1,
    ad_fraction: float = 0.5,
    severity: float | None = None,
    workers: int = 1,
    progress: bool | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Write ``n`` subjects (``sessions`` T1 images each) plus ``participants.tsv`` and ``manifest.csv``.

    Subject ``i`` is made from ``np.random.default_rng([seed, i])`` (anatomy) and
    ``np.random.default_rng([seed, i, session])`` (acquisitions), so a set of 10 starts with
    the set of 5.

    Layouts:
        ``bids``: ``sub-XXX/anat/sub-XXX_T1w.nii.gz``, or with ``sessions > 1``
        ``sub-XXX/ses-YY/anat/sub-XXX_ses-YY_T1w.nii.gz``; plus ``dataset_description.json``
        and ``participants.json``.
        ``flat``: ``sub-XXX[_ses-YY]_T1w.nii.gz`` in ``out_dir``.

    ``participants.tsv``: ``participant_id, diagnosis, age, sex, severity`` (age and severity at
    the first session). ``manifest.csv``: ``case, subject, session, t1, diagnosis`` (one row per
    image, ``t1`` relative to ``out_dir``, ``session`` empty with one session).

    Args:
        out_dir: output folder (created).
        n: number of subjects.
        seed: random seed of the set.
        layout: ``"bids"`` or ``"flat"``.
        sessions: images per subject (1-2 years apart).
        ad_fraction: share of AD subjects (0.5: exactly balanced in pairs).
        severity: force every AD subject's baseline severity (None: random).
        workers: worker processes (the subjects do not depend on it).
        progress: tqdm progress bar (None: only on a terminal).
        **options: acquisition options of :func:`render_subject`.

    Returns:
        One record per image: ``case``, ``subject``, ``session``, ``path``, ``diagnosis``,
        ``severity``, ``age``, ``sex``, ``meta``.

    Raises:
        ValueError: on a bad layout, count or option.
    """
    from tqdm.auto import tqdm

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if int(sessions) < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    valid = [p for p in inspect.signature(render_subject).parameters if p not in ("rng", "params")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown}; valid: {', '.join(valid + ['sessions', 'ad_fraction', 'severity', 'workers', 'progress'])}"
        )
    from medcnn.synth import check_workers, map_jobs

    workers = check_workers(workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(int(n) - 1, 0))))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    logger.info("generating %d subject(s) x %d session(s) in %s (layout=%s, seed=%d, %d worker(s))", n, sessions, out_dir,
                layout, seed, workers)
    jobs = [(out_dir, int(seed), index, width, layout, int(sessions), ad_fraction, severity, options)
            for index in range(int(n))]
    # render_subject loads the template once per process (cached) when no anatomy is given
    records: list[dict[str, Any]] = []
    participants: list[dict[str, Any]] = []
    bar = tqdm(total=int(n) * int(sessions), desc="alzheimer", unit="image", disable=not show)
    for row, subject_records in map_jobs(_write_subject, jobs, workers):
        participants.append(row)
        records.extend(subject_records)
        bar.update(len(subject_records))
    bar.close()

    with (out_dir / "participants.tsv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["participant_id", "diagnosis", "age", "sex", "severity"], delimiter="\t")
        writer.writeheader()
        writer.writerows(participants)
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "subject", "session", "t1", "diagnosis"])
        for rec in records:
            writer.writerow([rec["case"], rec["subject"], rec["session"], rec["path"].relative_to(out_dir).as_posix(), rec["diagnosis"]])
    if layout == "bids":
        _write_bids_sidecars(out_dir)
    return records


def _write_subject(job: tuple) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Make subject ``index`` of the set and write its images; its ``participants.tsv`` row and the
    records :func:`generate` returns for it (one per session)."""
    out_dir, seed, index, width, layout, sessions, ad_fraction, severity, options = job
    diagnosis = diagnosis_of(seed, index, ad_fraction)
    params = draw_subject(subject_rng(seed, index), diagnosis, severity if diagnosis == "AD" else None)
    subject = f"sub-{index + 1:0{width}d}"
    row = {"participant_id": subject, "diagnosis": diagnosis, "age": round(params.age, 1), "sex": params.sex,
           "severity": round(params.severity, 3)}
    records: list[dict[str, Any]] = []
    years = 0.0
    for ses in range(1, sessions + 1):
        if ses > 1:
            years += float(session_rng(seed, index, ses).uniform(1.0, 2.0))
        p = params.progressed(years)
        result = render_subject(session_rng(seed, index, ses), p, **options)
        session = f"ses-{ses:02d}" if sessions > 1 else ""
        case = f"{subject}_{session}" if session else subject
        if layout == "bids":
            folder = out_dir / subject / session / "anat" if session else out_dir / subject / "anat"
            path = folder / f"{case}_T1w.nii.gz"
        else:
            path = out_dir / f"{case}_T1w.nii.gz"
        save_nifti(path, result["t1"], result["affine"])
        records.append({"case": case, "subject": subject, "session": session, "path": path, "diagnosis": diagnosis,
                        "severity": p.severity, "age": p.age, "sex": p.sex, "meta": result["meta"]})
    return row, records


def _write_bids_sidecars(out_dir: Path) -> None:
    """``dataset_description.json`` and ``participants.json`` (column descriptions)."""
    description = {
        "Name": "medcnn synthetic Alzheimer's T1w",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "medcnn.synth.alzheimer"}],
        "License": "Derived from the MNI ICBM152 2009 template; see medcnn/data/mni152/NOTICE",
    }
    columns = {
        "diagnosis": {"Description": "clinical group", "Levels": {"CN": "cognitively normal", "AD": "Alzheimer's disease"}},
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "severity": {"Description": "synthetic AD severity at the first session (0 for CN, 0.12-1 for AD)"},
    }
    (out_dir / "dataset_description.json").write_text(json.dumps(description, indent=2), encoding="utf-8")
    (out_dir / "participants.json").write_text(json.dumps(columns, indent=2), encoding="utf-8")
