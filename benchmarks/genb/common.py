"""Shared pieces of generator B: brain anatomy on random acquisition grids, MR physics, storage.

Anatomy: the ICBM 2009a tissue probability maps at 1 mm as nilearn ships them (the only whole-brain
source installed offline), else the package's 2 mm copy of the same maps. Everything built on top
(skull and scalp, CSF, deformation, tissue relaxation times, sequences, bias, noise, storage) is
written here independently of the training generators.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: (T1 ms, T2 ms, proton density) at 3 T, literature-typical values; jittered per subject
TISSUE_3T: dict[str, tuple[float, float, float]] = {
    "wm": (850.0, 75.0, 0.69), "gm": (1350.0, 95.0, 0.80), "csf": (4200.0, 1800.0, 1.0),
    "fat": (380.0, 130.0, 0.95), "bone": (1000.0, 5.0, 0.06), "muscle": (1400.0, 45.0, 0.75),
    "marrow": (550.0, 120.0, 0.85),
}


@dataclass
class Anatomy:
    """Tissue probability maps on their own grid: ``gm``, ``wm`` ``(X, Y, Z)`` float32, ``affine`` voxel->MNI mm."""

    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray
    source: str


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """The 1 mm ICBM 2009a GM/WM maps from nilearn, or the 2 mm copy inside medcnn when nilearn is missing."""
    try:
        import nilearn

        d = Path(nilearn.__file__).parent / "datasets" / "data"
        gm_p = d / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
        wm_p = d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
        src = "nilearn ICBM 2009a 1 mm"
    except ImportError:
        import medcnn

        d = Path(medcnn.__file__).parent / "data" / "mni152"
        gm_p, wm_p, src = d / "mni152_gm_2mm.nii.gz", d / "mni152_wm_2mm.nii.gz", "medcnn ICBM 2009a 2 mm"
    gm_img = nib.load(str(gm_p))
    gm = np.asarray(gm_img.get_fdata(), np.float32)
    wm = np.asarray(nib.load(str(wm_p)).get_fdata(), np.float32)
    scale = max(float(gm.max()), float(wm.max()), 1.0) if gm.max() > 1.5 else 1.0
    return Anatomy(gm / scale, wm / scale, gm_img.affine.astype(np.float64), src)


def random_grid(rng: np.random.Generator, fov_mm: tuple[float, float, float], spacing: tuple[float, float, float],
                centre: tuple[float, float, float] = (0.0, -18.0, 12.0)) -> tuple[tuple[int, int, int], np.ndarray]:
    """A voxel grid covering ``fov_mm`` (R, A, S extents) around ``centre`` with a random axis order and flips.

    Returns:
        ``(shape, affine)``: the array shape in index order and the 4x4 voxel->world affine.
    """
    perm = rng.permutation(3)
    flips = rng.choice([-1.0, 1.0], size=3)
    rot = np.zeros((3, 3))
    shape = [0, 0, 0]
    for ax in range(3):  # index axis `ax` walks world axis perm[ax]
        w = perm[ax]
        rot[w, ax] = flips[ax] * spacing[ax]
        shape[ax] = int(np.ceil(fov_mm[w] / spacing[ax]))
    aff = np.eye(4)
    aff[:3, :3] = rot
    half = (np.array(shape) - 1) / 2.0
    aff[:3, 3] = np.asarray(centre) - rot @ half
    return (shape[0], shape[1], shape[2]), aff


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int, amp: float = 1.0) -> np.ndarray:
    """A smooth random field of ``shape``: Gaussian control values on an ``n_ctrl``-per-axis lattice, cubic zoom."""
    ctrl = rng.normal(0.0, amp, size=(n_ctrl,) * len(shape))
    return ndimage.zoom(ctrl, [s / n_ctrl for s in shape], order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]


def subject_coords(rng: np.random.Generator, shape: tuple[int, int, int], affine: np.ndarray,
                   scale_range: tuple[float, float] = (0.9, 1.1), rot_deg: float = 12.0,
                   shift_mm: float = 8.0, warp_mm: float = 3.0) -> np.ndarray:
    """Template (MNI mm) coordinates ``(3, *shape)`` of every output voxel of one random subject.

    The subject is the template under a random similarity + anisotropic scaling, then a smooth warp.
    """
    ang = np.deg2rad(rng.uniform(-rot_deg, rot_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    lin = rz @ ry @ rx @ np.diag(rng.uniform(*scale_range, 3))
    inv = np.linalg.inv(lin)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]
    world -= rng.uniform(-shift_mm, shift_mm, (3, 1))
    mni = (inv @ world).reshape(3, *shape)
    for ax in range(3):
        mni[ax] += smooth_field(rng, shape, 5, warp_mm)
    return mni.astype(np.float32)


def sample(vol: np.ndarray, vol_affine: np.ndarray, mni: np.ndarray, order: int = 1) -> np.ndarray:
    """``vol`` sampled at MNI coordinates ``mni`` ``(3, *shape)`` (0 outside)."""
    inv = np.linalg.inv(vol_affine)
    flat = mni.reshape(3, -1)
    vox = inv[:3, :3] @ flat + inv[:3, 3:4]
    out = ndimage.map_coordinates(vol, vox, order=order, mode="constant", cval=0.0)
    return out.reshape(mni.shape[1:]).astype(np.float32)


def brain_tissues(gm: np.ndarray, wm: np.ndarray, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """Soft ``gm``, ``wm``, ``csf`` and a boolean ``intracranial`` mask from GM/WM maps on one grid."""
    par = gm + wm
    radius = np.maximum(1, np.round(5.0 / spacing)).astype(int)
    ball = _ellipsoid(radius)
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(par > 0.3, structure=ball))
    intracranial = ndimage.binary_dilation(hull, structure=_ellipsoid(np.maximum(1, np.round(1.5 / spacing)).astype(int)))
    csf = np.clip(intracranial.astype(np.float32) - par, 0.0, 1.0)
    return {"gm": gm, "wm": wm, "csf": csf, "intracranial": intracranial}


def _ellipsoid(radius: np.ndarray) -> np.ndarray:
    g = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radius)]
    return sum((x / max(int(r), 1)) ** 2 for x, r in zip(g, radius)) <= 1.0


def head_layers(rng: np.random.Generator, intracranial: np.ndarray, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """Skull (inner/outer table ``bone`` and ``marrow``), ``muscle`` and ``fat`` shells around the intracranial mask."""
    dist = ndimage.distance_transform_edt(~intracranial, sampling=spacing).astype(np.float32)
    wobble = smooth_field(rng, intracranial.shape, 6, 1.0)
    t_bone = rng.uniform(5.0, 8.0) + wobble
    t_scalp = t_bone + rng.uniform(4.0, 8.0) + 0.8 * wobble
    out = dist > 0
    bone = out & (dist <= t_bone)
    marrow = bone & (dist > 0.3 * t_bone) & (dist < 0.7 * t_bone)
    scalp = out & (dist > t_bone) & (dist <= t_scalp)
    fat = scalp & (dist > t_bone + 0.4 * (t_scalp - t_bone))
    f = lambda m: m.astype(np.float32)  # noqa: E731
    return {"bone": f(bone & ~marrow), "marrow": f(marrow), "muscle": f(scalp & ~fat), "fat": f(fat)}


def tissue_params(rng: np.random.Generator, field_t: float) -> dict[str, tuple[float, float, float]]:
    """Per-subject (T1, T2, PD) per tissue: 1.5 T shortens T1 by ~20 %; each value jittered by a few percent."""
    t1_scale = 1.0 if field_t >= 2.5 else 0.8
    out = {}
    for name, (t1, t2, pd) in TISSUE_3T.items():
        j = rng.normal(1.0, 0.05, 3)
        out[name] = (t1 * t1_scale * j[0], t2 * j[1], pd * j[2])
    return out


def bias_and_noise(rng: np.random.Generator, img: np.ndarray, head: np.ndarray, bias: float, snr: float) -> np.ndarray:
    """Multiplicative smooth bias ``exp(bias * field)`` and Rician noise at ``snr`` relative to the head's 90th percentile."""
    field = np.exp(bias * smooth_field(rng, img.shape, 3, 1.0)).astype(np.float32)
    img = img * field
    ref = float(np.percentile(img[head], 90)) if head.any() else float(img.max() or 1.0)
    sigma = ref / snr
    re = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.sqrt(re * re + im * im)


def store_scale(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """The image in a random stored type and scale (uint8, int16, uint16 or float32) like scanners and converters write."""
    kind = rng.choice(["uint8", "int16", "uint16", "float32"])
    top = float(np.percentile(img, 99.9)) or 1.0
    x = img / top
    if kind == "uint8":
        return np.clip(np.round(x * rng.uniform(150, 250)), 0, 255).astype(np.uint8)
    if kind == "int16":
        return np.clip(np.round(x * rng.uniform(400, 4000)), 0, 32767).astype(np.int16)
    if kind == "uint16":
        return np.clip(np.round(x * rng.uniform(5000, 60000)), 0, 65535).astype(np.uint16)
    return (x * rng.uniform(0.5, 1000.0)).astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` with ``affine`` (sform and qform, scanner code) keeping the array's dtype, no scaling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    nib.save(img, str(path))


def brain_on_grid(rng: np.random.Generator, spacing: tuple[float, float, float],
                  fov_mm: tuple[float, float, float] = (176.0, 212.0, 180.0)) -> dict[str, np.ndarray]:
    """One random subject's tissues on a random grid: ``gm, wm, csf, intracranial, mni`` and ``affine``, ``spacing``."""
    anat = load_anatomy()
    shape, aff = random_grid(rng, fov_mm, spacing)
    mni = subject_coords(rng, shape, aff)
    gm = sample(anat.gm, anat.affine, mni)
    wm = sample(anat.wm, anat.affine, mni)
    sp = np.asarray(spacing, dtype=np.float64)
    t = brain_tissues(gm, wm, sp)
    t.update(mni=mni, affine=aff, spacing=sp)
    return t
