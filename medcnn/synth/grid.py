"""Geometry helpers shared by the synthetic-data generators.

Conventions (nibabel's): a volume is a numpy array indexed (i, j, k) and its *affine* is the
4 x 4 matrix mapping voxel indices (i, j, k, 1) to world coordinates (x, y, z, 1) in RAS+
millimetres (x to the subject's Right, y Anterior, z Superior). A :class:`Grid` is a shape
plus such an affine.

The generators build anatomy on a fixed template grid and then *acquire* it on a random grid
(:func:`random_grid`): random voxel spacing (incl. thick slices), random storage orientation
(axis permutation and flips: RAS, LPS, LAS, PIR, ...), small oblique rotations, and a field of
view that covers the object. :func:`resample` pulls a volume from its source grid onto such a
grid; the affine of the result is exactly ``grid.affine``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_AXIS_OF_CODE = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}

#: All 48 storage orientations (3 letters, one per voxel axis, e.g. "RAS", "LPS", "PIR").
ALL_AXCODES: tuple[str, ...] = tuple(
    "".join(letters)
    for perm in itertools.permutations(("RL", "AP", "SI"))
    for letters in itertools.product(*perm)
)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape plus voxel->world (RAS+, mm) affine.

    Attributes:
        shape: number of voxels along (i, j, k).
        affine: (4, 4) float64 voxel->world affine.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if len(self.shape) != 3 or any(int(s) < 1 for s in self.shape):
            raise ValueError(f"shape must be three positive ints, got {self.shape}")
        affine = affine.copy()
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axcodes(self) -> str:
        """Closest storage orientation, e.g. ``"LPS"`` (nibabel's ``aff2axcodes``)."""
        return "".join(nib.aff2axcodes(self.affine))

    def world_coords(self, dtype: type = np.float32) -> np.ndarray:
        """World coordinates of every voxel centre.

        Returns:
            (3, X, Y, Z) array of RAS+ mm coordinates.
        """
        return affine_coords(self.affine, self.shape, dtype=dtype)

    def corners_world(self) -> np.ndarray:
        """World coordinates of the 8 corner voxel centres, shape (8, 3)."""
        idx = np.array(list(itertools.product(*[(0, s - 1) for s in self.shape])), dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]



def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function as float32 (tanh form: no overflow warnings for large ``|x|``). Same shape as ``x``."""
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)

def axcodes_matrix(axcodes: str) -> np.ndarray:
    """Signed permutation matrix of a storage orientation.

    Args:
        axcodes: three letters, one per voxel axis, e.g. ``"LPS"``.

    Returns:
        (3, 3) matrix whose column ``a`` is the RAS unit vector of voxel axis ``a``.

    Raises:
        ValueError: if the code is not a valid orientation.
    """
    code = axcodes.upper()
    if len(code) != 3 or any(c not in _AXIS_OF_CODE for c in code):
        raise ValueError(f"invalid orientation code {axcodes!r}; expected e.g. 'RAS', 'LPS', 'PIR'")
    m = np.zeros((3, 3))
    used = set()
    for col, letter in enumerate(code):
        row, sign = _AXIS_OF_CODE[letter]
        if row in used:
            raise ValueError(f"invalid orientation code {axcodes!r}: repeated world axis")
        used.add(row)
        m[row, col] = sign
    return m


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Rotation about ``axis`` by ``angle_deg`` degrees (Rodrigues' formula).

    Args:
        axis: (3,) rotation axis (normalised internally).
        angle_deg: rotation angle in degrees.

    Returns:
        (3, 3) rotation matrix.
    """
    axis = np.asarray(axis, dtype=np.float64)
    norm = np.linalg.norm(axis)
    if norm == 0:
        raise ValueError("rotation axis must be non-zero")
    ux, uy, uz = axis / norm
    cross = np.array([[0, -uz, uy], [uz, 0, -ux], [-uy, ux, 0]])
    theta = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * cross @ cross


def random_spacing(rng: np.random.Generator, *, max_slice_mm: float = 5.0) -> tuple[float, float, float]:
    """Draw a plausible MRI voxel spacing.

    About half the draws are (near-)isotropic between 1 and 2 mm; the rest have an in-plane
    resolution of 0.9-1.5 mm and one thick-slice axis of 2.5 mm up to ``max_slice_mm``
    (axis chosen at random).

    Args:
        rng: random generator.
        max_slice_mm: largest slice thickness.

    Returns:
        Spacing along the three voxel axes, mm.
    """
    if rng.random() < 0.5:
        s = float(rng.uniform(1.0, 2.0))
        return tuple(float(s * rng.uniform(0.97, 1.03)) for _ in range(3))
    inplane = float(rng.uniform(0.9, 1.5))
    thick = float(rng.uniform(min(2.5, max_slice_mm), max(max_slice_mm, 2.5)))
    spacing = [inplane, inplane, inplane]
    spacing[int(rng.integers(3))] = thick
    return tuple(spacing)


def random_grid(
    rng: np.random.Generator,
    points_world: np.ndarray,
    *,
    spacing: float | Sequence[float] | None = None,
    oriented: bool = True,
    axcodes: str = "RAS",
    max_rotation_deg: float = 20.0,
    margin_mm: tuple[float, float] = (4.0, 20.0),
    max_slice_mm: float = 5.0,
    float32_exact: bool = True,
) -> Grid:
    """Draw a random acquisition grid whose field of view covers ``points_world``.

    Args:
        rng: random generator.
        points_world: (N, 3) RAS mm points to cover, e.g. the corners of the head's bounding box.
        spacing: voxel size along the output's (i, j, k) axes; a float means isotropic; None
            draws one with :func:`random_spacing`.
        oriented: when True, draw a random storage orientation (any of the 48 axis
            permutations/flips, RAS/LPS/LAS favoured) and, for about half of the grids, an
            oblique rotation up to ``max_rotation_deg``. When False the grid is axis-aligned
            with orientation ``axcodes``.
        axcodes: orientation used when ``oriented`` is False.
        max_rotation_deg: largest oblique rotation angle.
        margin_mm: range of the random margin added around the points on each side.
        max_slice_mm: largest slice thickness when spacing is drawn.
        float32_exact: round the affine to float32-representable numbers, so that it survives a
            round trip through a NIfTI header (which stores float32) unchanged.

    Returns:
        The grid (shape and voxel->world affine).

    Raises:
        ValueError: on malformed arguments.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        raise ValueError("points_world must hold at least one point")
    if spacing is None:
        sp = np.array(random_spacing(rng, max_slice_mm=max_slice_mm))
    else:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if margin_mm[0] < 0 or margin_mm[1] < margin_mm[0]:
        raise ValueError(f"margin_mm must be (low, high) with 0 <= low <= high, got {margin_mm}")

    if oriented:
        common = ("RAS", "LPS", "LAS", "LPI", "RPI", "LIP", "PIR", "ASL")
        code = str(rng.choice(common)) if rng.random() < 0.5 else str(rng.choice(ALL_AXCODES))
        direction = axcodes_matrix(code)
        if rng.random() < 0.5 and max_rotation_deg > 0:
            axis = rng.normal(size=3)
            angle = float(rng.uniform(2.0, max_rotation_deg))
            direction = rotation_matrix(axis, angle) @ direction
    else:
        direction = axcodes_matrix(axcodes)

    # Extent of the points along each output axis (direction columns are orthonormal).
    proj = pts @ direction
    lo = proj.min(axis=0) - rng.uniform(*margin_mm, size=3)
    hi = proj.max(axis=0) + rng.uniform(*margin_mm, size=3)
    shape = np.maximum(np.ceil((hi - lo) / sp).astype(int) + 1, 1)
    # Centre the grid on the requested extent.
    lo = (lo + hi) / 2 - (shape - 1) * sp / 2
    affine = np.eye(4)
    affine[:3, :3] = direction * sp[None, :]
    affine[:3, 3] = direction @ lo
    if float32_exact:
        affine = affine.astype(np.float32).astype(np.float64)
        affine[3] = (0, 0, 0, 1)
    return Grid(tuple(int(s) for s in shape), affine)


def slice_profile_offsets(grid: Grid, max_samples: int = 3) -> list[np.ndarray]:
    """Sub-voxel offsets that average a thick slice over its thickness.

    Point-sampling thick slices aliases edges (a stair-step look); a real slice integrates
    the signal over its thickness. Averaging samples taken at these offsets along the
    thickest axis approximates a box slice profile.

    Args:
        grid: the acquisition grid.
        max_samples: most sub-samples per voxel.

    Returns:
        List of (3,) voxel-index offsets (a single zero offset for near-isotropic grids).
    """
    spacing = np.array(grid.spacing)
    axis = int(np.argmax(spacing))
    n = int(min(max_samples, np.floor(spacing[axis] / spacing.min() + 0.25)))
    if n <= 1:
        return [np.zeros(3)]
    offsets = []
    for t in (np.arange(n) + 0.5) / n - 0.5:
        off = np.zeros(3)
        off[axis] = t
        offsets.append(off)
    return offsets


def affine_coords(matrix: np.ndarray, shape: Sequence[int], dtype: type = np.float32) -> np.ndarray:
    """Apply a 4 x 4 affine to every voxel index of a grid.

    Args:
        matrix: (4, 4) affine.
        shape: grid shape (X, Y, Z).
        dtype: output dtype.

    Returns:
        (3, X, Y, Z) array ``matrix @ (i, j, k, 1)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape)
    out = np.empty((3, *shape), dtype=dtype)
    for r in range(3):
        out[r] = (
            (m[r, 0] * i)[:, None, None] + (m[r, 1] * j)[None, :, None] + (m[r, 2] * k)[None, None, :] + m[r, 3]
        )
    return out


def sample(
    volume: np.ndarray,
    coords: np.ndarray,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Sample a volume at fractional voxel coordinates.

    Orders 0 (nearest) and 1 (trilinear) use ``torch.nn.functional.grid_sample`` (fast,
    multi-threaded, all channels at once); higher orders use ``scipy.ndimage.map_coordinates``.
    Points outside the volume get ``cval``.

    Args:
        volume: (X, Y, Z) or (C, X, Y, Z) array.
        coords: (3, *out_shape) voxel coordinates (i, j, k) into ``volume``.
        order: interpolation order: 0 nearest (labels), 1 linear (images), 3 cubic.
        cval: value outside the volume.

    Returns:
        (*out_shape) or (C, *out_shape) array. Float32 (float64 if ``volume`` is float64) for
        order >= 1; the input dtype for order 0.

    Raises:
        ValueError: on bad shapes or order.
    """
    vol = np.asarray(volume)
    coords = np.asarray(coords)
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be (X, Y, Z) or (C, X, Y, Z), got shape {vol.shape}")
    if coords.shape[0] != 3:
        raise ValueError(f"coords must be (3, ...), got shape {coords.shape}")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"order must be 0..5, got {order}")
    squeeze = vol.ndim == 3
    chans = vol[None] if squeeze else vol
    out_shape = coords.shape[1:]
    if order >= 2:
        res = np.stack(
            [ndi.map_coordinates(c.astype(np.float64), coords, order=order, cval=cval) for c in chans]
        ).astype(np.float64 if vol.dtype == np.float64 else np.float32)
        return res[0] if squeeze else res
    work = torch.float64 if vol.dtype == np.float64 else torch.float32
    np_work = np.float64 if work == torch.float64 else np.float32
    src = torch.from_numpy(np.ascontiguousarray(chans, dtype=np_work))
    if cval != 0.0:
        src = src - cval
    flat = coords.reshape(3, -1)
    # grid_sample wants normalised (x=k, y=j, z=i) with align_corners=False:
    # g = (2 * index + 1) / size - 1, valid for any size >= 1.
    norm = np.empty((flat.shape[1], 3), dtype=np_work)
    for col, axis in enumerate((2, 1, 0)):
        size = float(chans.shape[1 + axis])
        np.multiply(flat[axis], np_work(2.0 / size), out=norm[:, col], casting="unsafe")
        norm[:, col] += np_work(1.0 / size - 1.0)
    grid = torch.from_numpy(norm).reshape(1, 1, 1, -1, 3)
    res = F.grid_sample(
        src[None], grid, mode="nearest" if order == 0 else "bilinear", padding_mode="zeros", align_corners=False
    )[0, :, 0, 0]
    if cval != 0.0:
        res = res + cval
    res = res.reshape(chans.shape[0], *out_shape).numpy()
    if order == 0:
        res = res.astype(vol.dtype) if np.issubdtype(vol.dtype, np.number) else res
    else:
        res = res.astype(np.float64 if vol.dtype == np.float64 else np.float32, copy=False)
    return res[0] if squeeze else res


def resample(
    volume: np.ndarray,
    src_affine: np.ndarray,
    grid: Grid,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a volume from its own grid onto ``grid`` (world-coordinate aligned).

    Args:
        volume: (X, Y, Z) or (C, X, Y, Z) array on the source grid.
        src_affine: (4, 4) voxel->world affine of ``volume``.
        grid: destination grid; the result's voxel->world affine is exactly ``grid.affine``.
        order: 1 (linear) for images, 0 (nearest) for labels; 3 is cubic (scipy).
        cval: value outside the source volume.

    Returns:
        (*grid.shape) or (C, *grid.shape) array (dtype as in :func:`sample`).
    """
    src_affine = np.asarray(src_affine, dtype=np.float64)
    if src_affine.shape != (4, 4):
        raise ValueError(f"src_affine must be 4x4, got shape {src_affine.shape}")
    mapping = np.linalg.inv(src_affine) @ grid.affine
    dtype = np.float64 if np.asarray(volume).dtype == np.float64 else np.float32
    coords = affine_coords(mapping, grid.shape, dtype=dtype)
    return sample(volume, coords, order=order, cval=cval)


def bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """Cubic B-spline interpolation weights from a control lattice to a sampled axis.

    The ``n_ctrl`` control points span the axis evenly, with one extra control point beyond
    each end (so the field does not fade at the borders).

    Args:
        n_out: number of output samples along the axis.
        n_ctrl: number of inner control points (>= 2).

    Returns:
        (n_out, n_ctrl + 2) weight matrix.
    """
    if n_ctrl < 2:
        raise ValueError(f"n_ctrl must be >= 2, got {n_ctrl}")
    u = np.linspace(0.0, n_ctrl - 1.0, n_out)[:, None]
    knots = np.arange(-1, n_ctrl + 1, dtype=np.float64)[None, :]
    t = np.abs(u - knots)
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w


def smooth_field(
    rng: np.random.Generator,
    shape: Sequence[int],
    n_ctrl: int | Sequence[int] = 4,
    *,
    channels: int | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Random smooth field: a random cubic B-spline lattice evaluated on a grid.

    Separable evaluation (three small matrix products), so it is cheap even for large grids.
    The control values are standard normal; the field has roughly zero mean and unit standard
    deviation, varying over about ``shape / n_ctrl`` voxels.

    Args:
        rng: random generator.
        shape: output shape (X, Y, Z).
        n_ctrl: control points per axis (int or one per axis), >= 2; more means finer detail.
        channels: when given, return that many independent fields stacked first.
        dtype: output dtype.

    Returns:
        (X, Y, Z) array, or (channels, X, Y, Z).
    """
    shape = tuple(int(s) for s in shape)
    ctrl = np.broadcast_to(np.asarray(n_ctrl, dtype=int), (3,))
    mats = [bspline_matrix(n, int(c)) for n, c in zip(shape, ctrl)]
    n_ch = 1 if channels is None else int(channels)
    lattice = rng.standard_normal((n_ch, *(int(c) + 2 for c in ctrl)))
    # B-spline smoothing shrinks the variance; rescale to ~unit std (2/3 per axis ~ sum w^2).
    scale = 1.0 / np.sqrt(np.prod([np.mean(np.sum(m**2, axis=1)) for m in mats]))
    mx, my, mz = (m.astype(np.float32) for m in mats)
    out = np.einsum("xi,nijk->nxjk", mx, (lattice * scale).astype(np.float32))
    out = np.einsum("yj,nxjk->nxyk", my, out)
    out = np.matmul(out, mz.T)  # the large step as one BLAS call: (n, X, Y, K) @ (K, Z)
    out = out.astype(dtype, copy=False)
    return out[0] if channels is None else out


def warp(
    volume: np.ndarray,
    displacement_vox: np.ndarray,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Pull-back warp on the volume's own grid: ``out[p] = volume[p + displacement[p]]``.

    Args:
        volume: (X, Y, Z) or (C, X, Y, Z) array.
        displacement_vox: (3, X, Y, Z) displacement in voxels of the volume's grid.
        order: interpolation order.
        cval: value outside the volume.

    Returns:
        Array shaped like ``volume``.
    """
    spatial = np.asarray(volume).shape[-3:]
    if displacement_vox.shape != (3, *spatial):
        raise ValueError(f"displacement must be (3, {spatial}), got {displacement_vox.shape}")
    coords = affine_coords(np.eye(4), spatial) + displacement_vox.astype(np.float32, copy=False)
    return sample(volume, coords, order=order, cval=cval)


def bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float, n_ctrl: int = 3) -> np.ndarray:
    """Multiplicative MRI bias field: ``exp(strength * smooth_field)``.

    Args:
        rng: random generator.
        shape: grid shape (X, Y, Z).
        strength: log-amplitude (standard deviation of the log field); 0 gives ones.
        n_ctrl: control points per axis (3 = very smooth).

    Returns:
        (X, Y, Z) float32 positive field, around 1.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return np.ones(tuple(shape), dtype=np.float32)
    return np.exp(strength * smooth_field(rng, shape, n_ctrl)).astype(np.float32)


def rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (Rician statistics).

    Args:
        rng: random generator.
        image: (X, Y, Z) non-negative magnitude image.
        sigma: standard deviation of each of the real and imaginary noise channels.

    Returns:
        (X, Y, Z) float32 ``sqrt((image + n1)^2 + n2^2)``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    img = np.asarray(image, dtype=np.float32)
    if sigma == 0:
        return img.copy()
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 *= sigma
    return np.sqrt(n1 * n1 + n2 * n2)


def save_nifti(path: Path | str, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI-1 file atomically with the exact voxel->world affine (sform and qform, scanner).

    Args:
        path: destination (``.nii`` or ``.nii.gz``); parent folders are created.
        array: (X, Y, Z) array; its dtype is kept (float32, int16, uint8...).
        affine: (4, 4) voxel->world RAS affine.

    Returns:
        The written path.
    """
    from medcnn.io.atomic import atomic_path  # local: keeps this module importable on its own

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.asarray(array).dtype)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path
