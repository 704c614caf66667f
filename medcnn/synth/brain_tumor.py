"""Synthetic BraTS-like brain-tumour cases on real anatomy (MNI152 2009 template).

A case is four co-registered MRI contrasts -- ``t1n`` (native T1), ``t1c`` (contrast-enhanced
T1), ``t2w`` (T2) and ``t2f`` (T2-FLAIR) -- plus a label map with the BraTS 2023 labels
1 NCR (necrotic / non-enhancing tumour core), 2 ED (peritumoural oedema), 3 ET (enhancing
tumour), 0 elsewhere (the ``brats2021`` layout writes ET as 4, as BraTS 2012-2021 did).

How a case is made (all randomness from the ``rng`` passed in):

1. *Subject*: the template's tissue maps are pulled through a random head scaling and smooth
   warp (:func:`medcnn.synth.anatomy.random_subject_transform`).
2. *Lesions* (one, sometimes two): a centre inside cerebral tissue (any lobe/hemisphere), a
   core radius from 4 to 32 mm, a random ellipsoid perturbed by smooth random fields; a
   necrotic core (optional), an enhancing rim (optional) and oedema that spreads preferentially
   along white matter, stays out of CSF and on its own side of the midline. Each region is a
   smooth *level field* in mm (positive inside), so boundaries stay smooth at any output
   resolution. Large lesions push surrounding tissue away (mass effect).
3. *Acquisition*: a random grid (spacing incl. thick slices, storage orientation, oblique
   angle; :mod:`medcnn.synth.grid`), a random head pose, contrast-specific tissue intensities
   (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF dark, oedema bright; ET bright on t1c),
   partial-volume sharpness, tissue texture, tumour heterogeneity, per-contrast bias fields,
   Rician noise, skull-stripped background, and a per-contrast global intensity scale.

Images and labels are produced on the same output grid, so they always overlay exactly.

Example:
    >>> import numpy as np
    >>> case = make_case(np.random.default_rng(0), spacing=2.0)          # doctest: +SKIP
    >>> case["t1c"].shape == case["label"].shape                          # doctest: +SKIP
    True
    >>> generate(Path("brats_synth"), n=10, seed=1, layout="brats2023")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from medcnn.synth.anatomy import (
    Anatomy,
    SubjectTransform,
    hemisphere_of,
    load_mni152,
    lobe_of,
    random_subject_transform,
)
from medcnn.synth.grid import (
    Grid,
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

#: Contrast names (BraTS 2023 suffixes), in nnU-Net channel order 0000..0003.
CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
#: BraTS 2023 label values.
LABELS: Mapping[str, int] = MappingProxyType({"background": 0, "NCR": 1, "ED": 2, "ET": 3})
#: BraTS 2012-2021 label values, which the ``brats2021`` layout writes (as the real data: ET 4, no 3).
BRATS2021_LABELS: Mapping[str, int] = MappingProxyType({"background": 0, "NCR": 1, "ED": 2, "ET": 4})
#: Folder layouts understood by :func:`generate`.
LAYOUTS: tuple[str, ...] = ("brats2023", "brats2021", "nnunet")
#: BraTS 2021 file suffixes of each contrast.
BRATS2021_SUFFIX: Mapping[str, str] = MappingProxyType({"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"})
#: Core-radius ranges (mm) of the named sizes.
SIZES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"small": (4.0, 10.0), "medium": (10.0, 20.0), "large": (20.0, 32.0)}
)

# Tissue intensity ranges relative to white matter (= 1) for each contrast.
# "nec": necrosis, "net": non-enhancing tumour core (both label NCR), "et": enhancing tumour,
# "ed": oedema (blended with the underlying tissue).
_INTENSITY_RANGES: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType({
    "t1n": MappingProxyType({"gm": (0.62, 0.82), "csf": (0.15, 0.38), "nec": (0.18, 0.42),
                             "net": (0.45, 0.65), "et": (0.55, 0.80), "ed": (0.50, 0.72)}),
    "t1c": MappingProxyType({"gm": (0.62, 0.82), "csf": (0.15, 0.38), "nec": (0.18, 0.42),
                             "net": (0.45, 0.68), "et": (1.30, 1.90), "ed": (0.50, 0.74)}),
    "t2w": MappingProxyType({"gm": (1.25, 1.65), "csf": (2.60, 3.80), "nec": (2.00, 3.20),
                             "net": (1.80, 2.50), "et": (1.40, 2.00), "ed": (1.90, 2.70)}),
    "t2f": MappingProxyType({"gm": (1.12, 1.40), "csf": (0.15, 0.45), "nec": (0.50, 1.30),
                             "net": (1.50, 2.10), "et": (1.35, 1.90), "ed": (1.70, 2.40)}),
})
_OUTSIDE = -50.0  # level value far outside every lesion, mm


@dataclass(frozen=True)
class Lesion:
    """Parameters of one tumour (subject-space mm).

    Attributes:
        centre: (3,) centre, subject world coordinates.
        radius: core (NCR + ET) radius before perturbation.
        edema_radius: oedema extent from the centre before perturbation.
        necrosis: whether the core has a necrotic centre.
        enhancing: whether the core enhances (ET); if not, the whole core is NCR.
        necrosis_fraction: necrotic radius as a fraction of ``radius``.
        rim_min: minimum enhancing-rim thickness, mm.
        rotation: (3, 3) ellipsoid orientation.
        axes: (3,) ellipsoid axis scales (product 1).
        irregularity: amplitude of the core-shape perturbation.
        edema_irregularity: amplitude of the oedema-shape perturbation.
        mass_effect: strength of the tissue push (0 = none).
    """

    centre: np.ndarray
    radius: float
    edema_radius: float
    necrosis: bool
    enhancing: bool
    necrosis_fraction: float
    rim_min: float
    rotation: np.ndarray
    axes: np.ndarray
    irregularity: float
    edema_irregularity: float
    mass_effect: float

    @property
    def push_length(self) -> float:
        """Length scale of the mass effect, mm."""
        return float(self.radius + 0.5 * (self.edema_radius - self.radius) + 5.0)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "centre_mm": [round(float(v), 1) for v in self.centre],
            "hemisphere": hemisphere_of(self.centre),
            "lobe": lobe_of(self.centre),
            "radius_mm": round(self.radius, 1),
            "edema_radius_mm": round(self.edema_radius, 1),
            "necrosis": self.necrosis,
            "enhancing": self.enhancing,
            "mass_effect": round(self.mass_effect, 3),
        }


def mass_effect_pull(lesions: Sequence[Lesion], xyz: np.ndarray) -> np.ndarray:
    """Map points of the tumour-bearing brain back to the healthy brain (pull-back).

    Tissue at distance ``d`` from a lesion centre comes from distance ``d (1 - k(d))`` with
    ``k(d) = A exp(-(d / L)^2)``: content is pushed outwards, most near the lesion, and the
    map stays monotonic for ``A < 1``.

    Args:
        lesions: the lesions (applied in order).
        xyz: (3, ...) float32 world points.

    Returns:
        (3, ...) float32 points in the healthy subject.
    """
    out = np.array(xyz, dtype=np.float32)
    flat = out.reshape(3, -1)
    for les in lesions:
        if les.mass_effect <= 0:
            continue
        c = les.centre.astype(np.float32)[:, None]
        reach2 = np.float32((3.0 * les.push_length) ** 2)
        d2 = (flat[0] - c[0]) ** 2
        d2 += (flat[1] - c[1]) ** 2
        d2 += (flat[2] - c[2]) ** 2
        idx = np.flatnonzero(d2 < reach2)  # beyond 3 L the push is below 1e-4 of A
        rel = flat[:, idx] - c
        k = np.float32(les.mass_effect) * np.exp(-d2[idx] / np.float32(les.push_length**2))
        flat[:, idx] = c + rel * (1.0 - k)[None]
    return out


def _subject_maps(anat: Anatomy, transform: SubjectTransform, lesions: Sequence[Lesion]) -> dict[str, np.ndarray]:
    """Tissue maps of the tumour-bearing subject on the template grid.

    Returns:
        name -> (X, Y, Z) float32 map for gm, wm, csf, brain, cerebrum.
    """
    xyz = anat.world_coords()
    healthy = mass_effect_pull(lesions, xyz) if lesions else xyz
    tpl = transform(healthy)
    vox = _world_to_voxel(anat.affine, tpl)
    stack = np.stack([anat.gm, anat.wm, anat.csf, anat.brain, anat.region("cerebrum").astype(np.float32)])
    res = sample(stack, vox, order=1)
    return dict(zip(("gm", "wm", "csf", "brain", "cerebrum"), res))


def _world_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(affine).astype(np.float32)
    flat = xyz.reshape(3, -1)
    return (inv[:3, :3] @ flat + inv[:3, 3:]).reshape(xyz.shape)


def _draw_radius(rng: np.random.Generator, size: str | float | None) -> float:
    if size is None:
        size = str(rng.choice(list(SIZES), p=[0.2, 0.45, 0.35]))
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, a radius in mm, or None; got {size!r}")
        lo, hi = SIZES[size]
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    radius = float(size)
    if not 2.0 <= radius <= 45.0:
        raise ValueError(f"size as a radius must be within [2, 45] mm, got {radius}")
    return radius


def sample_lesions(
    rng: np.random.Generator,
    anat: Anatomy,
    transform: SubjectTransform,
    *,
    n_lesions: int | None = None,
    size: str | float | None = None,
    necrosis: bool | None = None,
    enhancement: bool | None = None,
    mass_effect: bool = True,
) -> list[Lesion]:
    """Draw lesion parameters and centres inside cerebral tissue.

    Centres are drawn on the template (white matter favoured, deep enough for the core to fit
    in the brain, away from the ventricles and from other lesions) and mapped to the subject.

    Args:
        rng: random generator.
        anat: template anatomy.
        transform: the subject's transform (centres are returned in subject space).
        n_lesions: number of lesions; None draws 1 (85 %) or 2.
        size: ``"small"``, ``"medium"``, ``"large"``, a core radius in mm, or None (random).
        necrosis: force a necrotic core on/off; None draws it (more likely for large cores).
        enhancement: force enhancement on/off; None draws it (about 85 % enhancing).
        mass_effect: allow mass effect.

    Returns:
        The lesions (the first one the largest).

    Raises:
        ValueError: on invalid arguments.
    """
    if n_lesions is None:
        n_lesions = 1 if rng.random() < 0.85 else 2
    if not 1 <= int(n_lesions) <= 4:
        raise ValueError(f"n_lesions must be 1..4, got {n_lesions}")
    tissue = anat.region("cerebrum") & (anat.gm + anat.wm > 0.6) & ~ndi.binary_dilation(anat.region("ventricles"))
    xyz = anat.world_coords()
    weights_all = (anat.wm + 0.35 * anat.gm).ravel()
    lesions: list[Lesion] = []
    template_centres: list[np.ndarray] = []
    for i in range(int(n_lesions)):
        radius = _draw_radius(rng, size) if i == 0 else min(_draw_radius(rng, size), lesions[0].radius)
        tpl_centre = _draw_template_centre(rng, anat, tissue, xyz, weights_all, radius, template_centres, lesions)
        template_centres.append(tpl_centre)
        centre = transform.approx_inverse(tpl_centre[None])[0]
        lesions.append(_draw_lesion(rng, centre, radius, necrosis=necrosis, enhancement=enhancement,
                                    mass_effect=mass_effect))
    return lesions


def _draw_template_centre(rng: np.random.Generator, anat: Anatomy, tissue: np.ndarray, xyz: np.ndarray,
                          weights_all: np.ndarray, radius: float, template_centres: Sequence[np.ndarray],
                          lesions: Sequence[Lesion]) -> np.ndarray:
    """Draw a lesion centre (3,) in template mm, deep enough and away from the earlier lesions.

    Args:
        tissue: (X, Y, Z) bool allowed template voxels; ``xyz``: (3, X, Y, Z) their world coordinates.
        weights_all: (X*Y*Z,) sampling weights (white matter favoured).
        template_centres, lesions: the lesions drawn so far and their template centres.
    """
    ok = tissue & (anat.depth > 0.5 * radius + 6.0)
    for prev, les in zip(template_centres, lesions):  # keep lesions apart
        d2 = np.sum((xyz - prev.astype(np.float32)[:, None, None, None]) ** 2, axis=0)
        ok &= d2 > (les.radius + radius + 8.0) ** 2
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        idx = np.flatnonzero(tissue & (anat.depth > 8.0))
    weights = weights_all[idx].astype(np.float64)
    pick = rng.choice(idx, p=weights / weights.sum())
    ijk = np.array(np.unravel_index(pick, anat.shape), dtype=np.float64) + rng.uniform(-0.5, 0.5, size=3)
    return anat.affine[:3, :3] @ ijk + anat.affine[:3, 3]


def _draw_lesion(rng: np.random.Generator, centre: np.ndarray, radius: float, *, necrosis: bool | None,
                 enhancement: bool | None, mass_effect: bool) -> Lesion:
    """Draw the appearance, shape and mass effect of a lesion of core ``radius`` (mm) at ``centre`` (3,)."""
    enh = bool(rng.random() < 0.85) if enhancement is None else bool(enhancement)
    if necrosis is None:
        nec = enh and radius > 6.0 and bool(rng.random() < min(0.95, 0.25 + radius / 25.0))
    else:
        nec = bool(necrosis)
    rim_min = float(rng.uniform(1.2, 3.0))
    rim = float(rng.uniform(2.5, max(2.6, min(10.0, 0.6 * radius))))  # enhancing rim thickness, mm
    nec_fraction = float(np.clip(1.0 - rim / radius, 0.2, 0.85))
    if rng.random() < 0.05:
        edema_radius = radius + float(rng.uniform(1.0, 3.0))  # almost no oedema
    else:
        edema_radius = min(radius * float(rng.uniform(1.05, 1.4)) + float(rng.uniform(3.0, 18.0)), 48.0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = np.exp(rng.normal(0.0, 0.18, size=3))
    axes /= np.cbrt(np.prod(axes))
    strength = float(rng.uniform(0.15, 0.5) * np.clip(radius / 25.0, 0.15, 1.0)) if mass_effect else 0.0
    return Lesion(
        centre=centre,
        radius=radius,
        edema_radius=edema_radius,
        necrosis=nec,
        enhancing=enh,
        necrosis_fraction=nec_fraction,
        rim_min=rim_min,
        rotation=q,
        axes=axes,
        irregularity=float(rng.uniform(0.08, 0.35)),
        edema_irregularity=float(rng.uniform(0.1, 0.35)),
        mass_effect=strength,
    )


def lesion_levels(
    rng: np.random.Generator, anat: Anatomy, maps: dict[str, np.ndarray], lesions: Sequence[Lesion]
) -> np.ndarray:
    """Level fields (mm, positive inside) of the necrotic core, tumour core and whole tumour.

    Args:
        rng: random generator (shape perturbations).
        anat: template anatomy (grid of ``maps``).
        maps: tumour-bearing subject maps from :func:`_subject_maps`.
        lesions: lesions from :func:`sample_lesions`.

    Returns:
        (3, X, Y, Z) float32: ``[ncr, core, whole]``; NCR is where ncr > 0, ET where core > 0
        and ncr <= 0, ED where whole > 0 and core <= 0.
    """
    out = np.full((3, *anat.shape), _OUTSIDE, dtype=np.float32)
    inv = np.linalg.inv(anat.affine)
    vox_mm = float(np.cbrt(abs(np.linalg.det(anat.affine[:3, :3]))))
    brain_lvl = (maps["brain"] - 0.5) * 6.0
    for les in lesions:
        reach = les.edema_radius * 1.6 + 6.0
        c_vox = inv[:3, :3] @ les.centre + inv[:3, 3]
        half = reach / vox_mm
        lo = np.clip(np.floor(c_vox - half).astype(int), 0, np.array(anat.shape))
        hi = np.clip(np.ceil(c_vox + half).astype(int) + 1, 0, np.array(anat.shape))
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        shape = tuple(int(b - a) for a, b in zip(lo, hi))
        if min(shape) < 2:
            continue
        sub_affine = anat.affine.copy()
        sub_affine[:3, 3] += anat.affine[:3, :3] @ lo
        xyz = affine_coords(sub_affine, shape)
        to_local = (les.rotation.T / les.axes[:, None]).astype(np.float32)
        rel = np.tensordot(to_local, xyz - les.centre.astype(np.float32)[:, None, None, None], axes=1)
        r = np.sqrt(np.sum(rel * rel, axis=0))
        n_ctrl = int(rng.integers(4, 8))
        coarse = smooth_field(rng, shape, n_ctrl, channels=3)
        fine = smooth_field(rng, shape, 2 * n_ctrl, channels=3)
        noise = coarse + np.float32(rng.uniform(0.2, 0.6)) * fine
        # Zero-mean over the lesion itself (a low-frequency field must not act as a global
        # size change), unit spread, bounded.
        for ch, reach_ch in enumerate((les.radius, les.radius, les.edema_radius)):
            sel = noise[ch][r < reach_ch]
            if sel.size > 8:
                noise[ch] = (noise[ch] - sel.mean()) / max(float(sel.std()), 0.5)
        noise = np.clip(noise, -2.5, 2.5)
        core = les.radius * np.clip(1.0 + les.irregularity * noise[0], 0.3, None) - r
        core = np.minimum(core, brain_lvl[sl])
        core = np.minimum(core, (0.8 - maps["csf"][sl]) * 8.0)
        if not les.enhancing:
            ncr = core.copy()
        elif les.necrosis:
            wobble = float(rng.uniform(0.1, 0.4))
            ncr = les.radius * les.necrosis_fraction * np.clip(1.0 + wobble * noise[1], 0.3, None) - r
            ncr = np.minimum(ncr, core - les.rim_min)
        else:
            ncr = np.full(shape, _OUTSIDE, dtype=np.float32)
        wm_pref = 0.75 + 0.45 * maps["wm"][sl]
        whole = les.edema_radius * np.clip(1.0 + les.edema_irregularity * noise[2], 0.3, None) * wm_pref - r
        whole = np.minimum(whole, brain_lvl[sl])
        whole = np.minimum(whole, (0.55 - maps["csf"][sl]) * 8.0)
        whole = np.minimum(whole, (maps["cerebrum"][sl] - 0.5) * 8.0)
        side = 1.0 if les.centre[0] >= 0 else -1.0
        if abs(les.centre[0]) > 6.0:
            whole = np.minimum(whole, side * xyz[0] + 1.0)
        whole = np.maximum(whole, core)
        for ch, field in enumerate((ncr, core, whole)):
            out[ch][sl] = np.maximum(out[ch][sl], field)
    return out


def _draw_intensities(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-contrast tissue intensities relative to WM = 1."""
    table: dict[str, dict[str, float]] = {}
    for contrast, ranges in _INTENSITY_RANGES.items():
        table[contrast] = {"wm": 1.0, **{k: float(rng.uniform(*v)) for k, v in ranges.items()}}
    # Native and post-contrast T1 share the normal-tissue appearance (same sequence family).
    for k in ("gm", "csf", "nec", "net", "ed"):
        table["t1c"][k] = table["t1n"][k] * float(rng.uniform(0.95, 1.06))
    return table


def make_case(
    rng: np.random.Generator,
    *,
    spacing: float | Sequence[float] | None = None,
    oriented: bool = True,
    n_lesions: int | None = None,
    size: str | float | None = None,
    necrosis: bool | None = None,
    enhancement: bool | None = None,
    mass_effect: bool = True,
    max_rotation_deg: float = 20.0,
    noise: float | None = None,
    bias: float | None = None,
    dtype: str | None = None,
    anatomy: Anatomy | None = None,
) -> dict[str, Any]:
    """Synthesise one BraTS-like case in memory.

    Args:
        rng: random generator; the case is a deterministic function of its state.
        spacing: output voxel size (mm) along the stored axes; float = isotropic; None = random
            (1-2 mm isotropic, or 0.9-1.5 mm in-plane with 2.5-5 mm slices; thick slices are
            averaged over their thickness).
        oriented: random storage orientation and oblique angle; False stores LPS+ axis-aligned
            (as BraTS files are).
        n_lesions: number of lesions (None: 1, sometimes 2).
        size: ``"small"``, ``"medium"``, ``"large"``, core radius in mm, or None (random).
        necrosis: force necrotic core on/off (None: random).
        enhancement: force enhancement on/off (None: random, ~85 % enhancing).
        mass_effect: push surrounding tissue away from large lesions.
        max_rotation_deg: largest oblique angle of the stored grid.
        noise: Rician noise sigma relative to white matter (None: random 0.01-0.06).
        bias: bias-field log-amplitude (None: random 0-0.25 per contrast).
        dtype: ``"float32"`` or ``"int16"`` for the images (None: random).
        anatomy: template anatomy (default: :func:`medcnn.synth.anatomy.load_mni152`).

    Returns:
        dict with ``t1n``, ``t1c``, ``t2w``, ``t2f``: (X, Y, Z) images (float32 or int16);
        ``label``: (X, Y, Z) uint8 BraTS 2023 labels; ``brain_mask``: (X, Y, Z) bool;
        ``affine``: (4, 4) voxel->world RAS affine shared by all arrays; ``meta``: dict of the
        drawn parameters (grid, lesions, volumes in ml, intensities...).

    Raises:
        ValueError: on invalid options.
    """
    t0 = time.perf_counter()
    _check_case_args(dtype, noise, bias)
    anat = load_mni152() if anatomy is None else anatomy

    # 1. subject anatomy, 2. lesions (+ mass effect).
    transform = random_subject_transform(rng, anat)
    lesions = sample_lesions(
        rng, anat, transform, n_lesions=n_lesions, size=size, necrosis=necrosis, enhancement=enhancement,
        mass_effect=mass_effect,
    )
    maps = _subject_maps(anat, transform, lesions)
    levels = lesion_levels(rng, anat, maps, lesions)

    # 3. acquisition grid and head pose, then resampling onto it.
    grid, world_to_subject = _acquisition_grid(rng, anat, transform, spacing=spacing, oriented=oriented,
                                               max_rotation_deg=max_rotation_deg)
    shape = grid.shape
    lvl, tissue = _resample_case(anat, transform, lesions, levels, grid, world_to_subject)
    gm, wm, csf, brain = tissue
    del tissue
    label, mask = _case_label(lvl, brain, shape)
    vox = np.flatnonzero(mask)  # everything below is computed on brain voxels only

    # 4. contrasts.
    table = _draw_intensities(rng)
    mix = _mixture(rng, gm, wm, csf, brain, lvl, vox, grid, lesions)
    del gm, wm, csf
    noise_sigma = float(rng.uniform(0.01, 0.06)) if noise is None else float(noise)
    out_dtype = str(rng.choice(["float32", "int16"], p=[0.6, 0.4])) if dtype is None else dtype
    images, scales = _render_contrasts(rng, table, mix, vox, shape, bias=bias, noise_sigma=noise_sigma,
                                       out_dtype=out_dtype)

    vox_ml = float(np.prod(grid.spacing) / 1000.0)
    meta = {
        "shape": list(shape),
        "spacing": [round(s, 4) for s in grid.spacing],
        "axcodes": grid.axcodes,
        "n_lesions": len(lesions),
        "lesions": [les.describe() for les in lesions],
        "volumes_ml": {name: round(float((label == v).sum() * vox_ml), 3) for name, v in LABELS.items() if v},
        "intensities": {c: {k: round(v, 3) for k, v in t.items()} for c, t in table.items()},
        "scales": {c: round(s, 3) for c, s in scales.items()},
        "noise_sigma": round(noise_sigma, 4),
        "sharpness": round(float(mix.gamma), 3),
        "dtype": out_dtype,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return {**images, "label": label, "brain_mask": mask, "affine": grid.affine.copy(), "meta": meta}


def _check_case_args(dtype: str | None, noise: float | None, bias: float | None) -> None:
    """Validate :func:`make_case`'s image options.

    Raises:
        ValueError: unknown dtype or a negative noise or bias level.
    """
    if dtype not in (None, "float32", "int16"):
        raise ValueError(f"dtype must be 'float32', 'int16' or None, got {dtype!r}")
    if noise is not None and noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if bias is not None and bias < 0:
        raise ValueError(f"bias must be >= 0, got {bias}")


def _acquisition_grid(rng: np.random.Generator, anat: Anatomy, transform: SubjectTransform, *,
                      spacing: float | Sequence[float] | None, oriented: bool, max_rotation_deg: float
                      ) -> tuple[Grid, np.ndarray]:
    """Random head pose and the stored grid around the posed head.

    The pose is ``world = pose @ (subject - centre) + centre + offset``.

    Returns:
        (the grid, the (4, 4) world -> subject affine).
    """
    centre = transform.centre
    pose = rotation_matrix(rng.normal(size=3), float(rng.uniform(0.0, 8.0)))
    offset = rng.normal(0.0, 15.0, size=3)
    corners = transform.approx_inverse(anat.bounds_world(0.3))
    world_corners = (corners - centre) @ pose.T + centre + offset
    grid = random_grid(
        rng, world_corners, spacing=spacing, oriented=oriented, axcodes="LPS", max_rotation_deg=max_rotation_deg,
        margin_mm=(4.0, 18.0),
    )
    world_to_subject = np.eye(4)
    world_to_subject[:3, :3] = pose.T
    world_to_subject[:3, 3] = centre - pose.T @ (centre + offset)
    return grid, world_to_subject


def _resample_case(anat: Anatomy, transform: SubjectTransform, lesions: Sequence[Lesion], levels: np.ndarray,
                   grid: Grid, world_to_subject: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample the lesion level fields and the tissue maps on the stored grid.

    Thick slices are averaged over their thickness (:func:`slice_profile_offsets`).

    Args:
        levels: (3, X, Y, Z) level fields on the template grid (:func:`lesion_levels`).

    Returns:
        (lvl (3, *grid.shape) level fields, tissue (4, n_vox) gm, wm, csf and brain fractions).
    """
    shape = grid.shape
    near = np.argwhere(np.any(levels > _OUTSIDE, axis=0))
    box = np.stack([near.min(axis=0) - 1, near.max(axis=0) + 1]).astype(np.float64) if near.size else None
    n_vox = int(np.prod(shape))
    lvl = np.zeros((3, n_vox), dtype=np.float32)
    tissue = np.zeros((4, n_vox), dtype=np.float32)
    tissue_stack = np.stack([anat.gm, anat.wm, anat.csf, anat.brain])
    offsets = slice_profile_offsets(grid)
    for off in offsets:
        shift = np.eye(4)
        shift[:3, 3] = off
        subj = affine_coords(world_to_subject @ grid.affine @ shift, shape).reshape(3, -1)
        lvl += _levels_near_lesions(anat, levels, box, subj)
        # Tissue: output voxel -> subject -> healthy subject -> template.
        tpl_vox = _world_to_voxel(anat.affine, transform(mass_effect_pull(lesions, subj)))
        del subj
        # Only points that land on the template grid can hold tissue.
        on_grid = np.all((tpl_vox > -1.0) & (tpl_vox < np.array(anat.shape, dtype=np.float32)[:, None]), axis=0)
        idx = np.flatnonzero(on_grid)
        tissue[:, idx] += sample(tissue_stack, tpl_vox[:, idx], order=1)
        del tpl_vox, on_grid, idx
    if len(offsets) > 1:
        lvl /= np.float32(len(offsets))
        tissue /= np.float32(len(offsets))
    return lvl.reshape(3, *shape), tissue


def _levels_near_lesions(anat: Anatomy, levels: np.ndarray, box: np.ndarray | None, subj: np.ndarray) -> np.ndarray:
    """Level fields at subject points ``subj`` (3, n), sampled only inside the template ``box`` around the lesions.

    Returns:
        (3, n) float32, ``_OUTSIDE`` away from every lesion.
    """
    part = np.full((3, subj.shape[1]), _OUTSIDE, dtype=np.float32)
    if box is not None:
        box_world = np.stack([anat.affine[:3, :3] @ b + anat.affine[:3, 3] for b in box])
        lo, hi = box_world.min(axis=0).astype(np.float32), box_world.max(axis=0).astype(np.float32)
        idx = np.flatnonzero(np.all((subj >= lo[:, None]) & (subj <= hi[:, None]), axis=0))
        part[:, idx] = sample(levels, _world_to_voxel(anat.affine, subj[:, idx]), order=1, cval=_OUTSIDE)
    return part


def _case_label(lvl: np.ndarray, brain: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """BraTS 2023 labels from the (3, X, Y, Z) level fields, and the brain mask (brain or lesion).

    Returns:
        (uint8 (X, Y, Z) label, bool (X, Y, Z) mask); labels are 0 outside the mask.
    """
    label = np.zeros(shape, dtype=np.uint8)
    label[lvl[2] > 0] = LABELS["ED"]
    label[lvl[1] > 0] = LABELS["ET"]
    label[lvl[0] > 0] = LABELS["NCR"]
    mask = (brain.reshape(shape) > 0.5) | (label > 0)
    label[~mask] = 0
    return label, mask


@dataclass(frozen=True)
class _Mixture:
    """Per-brain-voxel composition of one case (all arrays over the ``n`` masked voxels).

    Attributes:
        weights: (3, n) gm, wm, csf weights (sharpened by ``gamma``, summing to the brain fraction).
        t_core, t_ncr, t_et, t_ed: (n,) soft fractions of tumour core, necrosis, enhancing tumour, oedema.
        texture: (3, n) smooth fields for normal-tissue texture and lesion heterogeneity.
        tex_amp, het_amp: amplitudes of the texture and the heterogeneity.
        ncr_kind: intensity class of the core (``"nec"`` necrotic or ``"net"`` non-enhancing).
        gamma: sharpness exponent of the tissue weights.
    """

    weights: np.ndarray
    t_core: np.ndarray
    t_ncr: np.ndarray
    t_et: np.ndarray
    t_ed: np.ndarray
    texture: np.ndarray
    tex_amp: np.float32
    het_amp: np.float32
    ncr_kind: str
    gamma: np.float32


def _mixture(rng: np.random.Generator, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, brain: np.ndarray,
             lvl: np.ndarray, vox: np.ndarray, grid: Grid, lesions: Sequence[Lesion]) -> _Mixture:
    """Tissue and lesion fractions of the brain voxels ``vox`` (flat indices into ``grid.shape``).

    Args:
        gm, wm, csf, brain: (n_vox,) tissue fractions on the stored grid.
        lvl: (3, *grid.shape) lesion level fields (mm, positive inside).
    """
    shape = grid.shape
    gamma = np.float32(rng.uniform(1.0, 2.2))
    powered = np.stack([gm[vox], wm[vox], csf[vox]]) ** gamma
    weights = powered * (brain[vox] / np.maximum(powered.sum(axis=0), 1e-6))[None]
    del powered
    edge = float(rng.uniform(0.4, 1.2))  # blur of lesion boundaries in the images, mm
    lv = lvl.reshape(3, -1)[:, vox]
    t_core = sigmoid(lv[1] / edge)
    t_ncr = np.minimum(sigmoid(lv[0] / edge), t_core)
    t_et = t_core - t_ncr
    alpha = np.float32(rng.uniform(0.55, 0.85))
    t_ed = alpha * np.clip(sigmoid(lv[2] / (edge * 1.5)) - t_core, 0.0, 1.0)
    del lv
    fine = np.maximum(2, np.round(np.array(shape) * np.array(grid.spacing) / 14.0).astype(int))
    texture = smooth_field(rng, shape, tuple(fine), channels=3).reshape(3, -1)[:, vox]
    tex_amp = np.float32(rng.uniform(0.01, 0.04))
    het_amp = np.float32(rng.uniform(0.06, 0.2))
    any_enh = any(les.enhancing for les in lesions)
    ncr_kind = "nec" if any(les.necrosis for les in lesions) else "net"
    if not any_enh:
        ncr_kind = "net" if rng.random() < 0.7 else "nec"
    return _Mixture(weights=weights, t_core=t_core, t_ncr=t_ncr, t_et=t_et, t_ed=t_ed, texture=texture,
                    tex_amp=tex_amp, het_amp=het_amp, ncr_kind=ncr_kind, gamma=gamma)


def _render_contrasts(rng: np.random.Generator, table: Mapping[str, Mapping[str, float]], mix: _Mixture,
                      vox: np.ndarray, shape: tuple[int, ...], *, bias: float | None, noise_sigma: float,
                      out_dtype: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Render every contrast: tissue mixture, bias field, Rician noise and a random scanner scale.

    Returns:
        (contrast -> (X, Y, Z) image in ``out_dtype``, contrast -> intensity scale).
    """
    images: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    weights, texture = mix.weights, mix.texture
    for contrast in CONTRASTS:
        mu = table[contrast]
        normal = np.float32(mu["gm"]) * weights[0] + np.float32(mu["wm"]) * weights[1]
        normal += np.float32(mu["csf"]) * weights[2]
        normal *= 1.0 + mix.tex_amp * texture[0]
        val = normal * (1.0 - mix.t_core - mix.t_ed) + np.float32(mu["ed"]) * mix.t_ed
        val += np.float32(mu[mix.ncr_kind]) * (1.0 + mix.het_amp * texture[1]) * mix.t_ncr
        val += np.float32(mu["et"]) * (1.0 + mix.het_amp * texture[2]) * mix.t_et
        strength = float(rng.uniform(0.0, 0.25)) if bias is None else float(bias)
        val *= bias_field(rng, shape, strength).reshape(-1)[vox]
        val = rician_noise(rng, val, noise_sigma)
        scale = float(10 ** rng.uniform(1.5, 3.5))
        if out_dtype == "int16" and val.size:  # keep the brightest voxel within int16
            scale = min(scale, 30000.0 / max(float(val.max()), 1e-6))
        val *= np.float32(scale)
        scales[contrast] = scale
        img = np.zeros(int(np.prod(shape)), dtype=np.float32)
        img[vox] = val
        img = img.reshape(shape)
        images[contrast] = np.round(img).astype(np.int16) if out_dtype == "int16" else img
    return images, scales



def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of case ``index`` of a set generated with ``seed``."""
    return np.random.default_rng([int(seed), int(index)])


def _case_paths(out_dir: Path, index: int, layout: str, with_labels: bool) -> tuple[str, str, dict[str, Path], Path | None]:
    """Case id, subject id, image paths and label path of one case in ``layout``."""
    if layout == "brats2023":
        subject = f"BraTS-GLI-{index:05d}"
        case = f"{subject}-000"
        folder = out_dir / case
        images = {c: folder / f"{case}-{c}.nii.gz" for c in CONTRASTS}
        label = folder / f"{case}-seg.nii.gz" if with_labels else None
    elif layout == "brats2021":
        case = subject = f"BraTS2021_{index:05d}"
        folder = out_dir / case
        images = {c: folder / f"{case}_{BRATS2021_SUFFIX[c]}.nii.gz" for c in CONTRASTS}
        label = folder / f"{case}_seg.nii.gz" if with_labels else None
    elif layout == "nnunet":
        case = subject = f"BraTS_{index:05d}"
        folder = out_dir / ("imagesTr" if with_labels else "imagesTs")
        images = {c: folder / f"{case}_{ch:04d}.nii.gz" for ch, c in enumerate(CONTRASTS)}
        label = out_dir / "labelsTr" / f"{case}.nii.gz" if with_labels else None
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return case, subject, images, label


def generate(
    out_dir: Path | str,
    n: int,
    seed: int = 0,
    layout: str = "brats2023",
    *,
    with_labels: bool = True,
    workers: int = 1,
    progress: bool | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Write ``n`` synthetic cases to ``out_dir`` (NIfTI, ``.nii.gz``) plus ``manifest.csv``.

    Case ``i`` is made from ``np.random.default_rng([seed, i])``, so a set of 10 starts with the
    set of 5 made with the same seed and options.

    Layouts:
        ``brats2023``: ``BraTS-GLI-XXXXX-000/BraTS-GLI-XXXXX-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
        ``brats2021``: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``, labels with
        BraTS 2021 values (1 NCR, 2 ED, 4 ET: :data:`BRATS2021_LABELS`), as the real data has them;
        ``nnunet``: ``imagesTr/BraTS_XXXXX_000{0,1,2,3}.nii.gz`` (t1n, t1c, t2w, t2f),
        ``labelsTr/BraTS_XXXXX.nii.gz`` and ``dataset.json`` (images go to ``imagesTs`` when
        ``with_labels`` is False).

    ``manifest.csv`` has columns ``case, subject, t1n, t1c, t2w, t2f, label`` (paths relative
    to ``out_dir``; ``label`` empty without labels).

    Args:
        out_dir: output folder (created).
        n: number of cases (>= 0).
        seed: random seed of the set.
        layout: one of :data:`LAYOUTS`.
        with_labels: write the label maps.
        workers: worker processes (the cases do not depend on it).
        progress: show a tqdm progress bar (None: only on a terminal).
        **options: passed to :func:`make_case` (``spacing``, ``oriented``, ``size``, ...).

    Returns:
        One record per case: ``case``, ``subject``, ``index``, absolute ``paths`` and the case
        ``meta``.

    Raises:
        ValueError: on a bad layout, ``n`` or option.
    """
    from tqdm.auto import tqdm

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    from medcnn.synth import check_case_options, check_workers, map_jobs

    check_case_options(n, options, make_case, ['with_labels', 'workers', 'progress'])

    workers = check_workers(workers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    logger.info("generating %d brain-tumour case(s) in %s (layout=%s, seed=%d, %d worker(s))", n, out_dir, layout, seed,
                workers)
    jobs = [(out_dir, int(seed), i, layout, with_labels, options) for i in range(int(n))]
    # make_case loads the template once per process (cached)
    records: list[dict[str, Any]] = list(tqdm(map_jobs(_write_case, jobs, workers), total=len(jobs), desc="brain-tumor",
                                              unit="case", disable=not show))

    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "subject", *CONTRASTS, "label"])
        for rec in records:
            rel = {k: (p.relative_to(out_dir).as_posix() if p is not None else "") for k, p in rec["paths"].items()}
            writer.writerow([rec["case"], rec["subject"], *(rel[c] for c in CONTRASTS), rel["label"]])
    if layout == "nnunet":
        _write_dataset_json(out_dir, records, with_labels)
    return records


def _write_case(job: tuple) -> dict[str, Any]:
    """Make case ``index`` of the set and write its files; the record :func:`generate` returns for it."""
    out_dir, seed, index, layout, with_labels, options = job
    case = make_case(case_rng(seed, index), **options)
    case_id, subject, image_paths, label_path = _case_paths(out_dir, index, layout, with_labels)
    for contrast, path in image_paths.items():
        save_nifti(path, case[contrast], case["affine"])
    if label_path is not None:
        label = case["label"]
        if layout == "brats2021":
            label = np.where(label == LABELS["ET"], np.uint8(BRATS2021_LABELS["ET"]), label).astype(label.dtype)
        save_nifti(label_path, label, case["affine"])
    logger.debug("%s: %s", case_id, case["meta"]["volumes_ml"])
    paths = {**image_paths, "label": label_path}
    return {"case": case_id, "subject": subject, "index": index, "paths": paths, "meta": case["meta"]}


def _write_dataset_json(out_dir: Path, records: list[dict[str, Any]], with_labels: bool) -> None:
    """nnU-Net v2 / MSD style ``dataset.json``."""
    rel = lambda p: p.relative_to(out_dir).as_posix()  # noqa: E731
    entries = [
        {"image": [rel(r["paths"][c]) for c in CONTRASTS], **({"label": rel(r["paths"]["label"])} if with_labels else {})}
        for r in records
    ]
    doc = {
        "name": "BraTS-synthetic",
        "description": "Synthetic BraTS-like glioma cases made by medcnn.synth.brain_tumor on the MNI152 2009 template",
        "tensorImageSize": "3D",
        "channel_names": {str(i): c for i, c in enumerate(CONTRASTS)},
        "modality": {str(i): c for i, c in enumerate(CONTRASTS)},
        "labels": dict(LABELS),
        "numTraining": len(records) if with_labels else 0,
        "numTest": 0 if with_labels else len(records),
        "file_ending": ".nii.gz",
        "training": entries if with_labels else [],
        "test": [] if with_labels else [e["image"] for e in entries],
    }
    (out_dir / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
