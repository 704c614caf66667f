"""Voxel-grid geometry: affines, orientation codes and grid-to-grid resampling.

Conventions (DESIGN §3):

* spatial axes are in the file's voxel index order ``(i, j, k)`` (nibabel / ITK index order);
  2D images are ``(rows, cols)`` of the pixel array;
* an *affine* is the 4x4 voxel-index -> world (RAS+, millimetres) matrix of nibabel and MONAI,
  mapping voxel *centres*;
* ITK geometry (origin, spacing, direction) is in LPS+ and is converted with :func:`itk_to_affine`
  / :func:`affine_to_itk`.

Resampling between two grids is expressed by one matrix ``M = inv(A_in) @ A_out`` that maps an
output voxel index to an input voxel index. Everything medcnn does at load time (reorientation,
respacing) and everything :func:`medcnn.save` does to undo it is such a matrix, almost always
*axis-aligned* (a permutation with per-axis scale and offset). For those we resample one axis at a
time with 1D gathers, which is exact for flips/permutations (no interpolation at all), separable for
scaling, and far lighter in memory than a dense ``grid_sample`` (one coordinate per axis instead of
three floats per output voxel). Oblique matrices fall back to ``grid_sample`` in slabs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations as nio

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: interpolation modes accepted by :func:`resample`
MODES = ("nearest", "linear")


def itk_to_affine(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Build a RAS voxel->world affine from ITK (LPS) geometry.

    Args:
        origin: world position (LPS, mm) of voxel index 0; length D (2 or 3).
        spacing: voxel size along each ITK index axis; length D.
        direction: row-major D x D direction cosine matrix (LPS), as SimpleITK's ``GetDirection``.

    Returns:
        ``(4, 4)`` float64 affine mapping ITK index ``(i, j, k)`` to RAS world coordinates.
        For D == 2 the third axis is the identity.
    """
    d = len(origin)
    lps = np.eye(4)
    rot = np.asarray(direction, dtype=np.float64).reshape(d, d)
    lps[:d, :d] = rot * np.asarray(spacing, dtype=np.float64)[None, :]
    lps[:d, 3] = np.asarray(origin, dtype=np.float64)
    return _LPS_TO_RAS @ lps


def affine_2d(row_spacing: float = 1.0, col_spacing: float = 1.0) -> np.ndarray:
    """RAS affine of a plain 2D image indexed ``(rows, cols)``.

    It is what SimpleITK's geometry (origin 0, identity direction, spacing ``(col, row)``)
    becomes once the two index axes are put in ``(rows, cols)`` order, so 2D images from PNG,
    DICOM and MetaImage files share one convention. Shape ``(4, 4)``.
    """
    return itk_to_affine((0.0, 0.0), (col_spacing, row_spacing), (1.0, 0.0, 0.0, 1.0))[:, [1, 0, 2, 3]]


def affine_to_itk(affine: np.ndarray, ndim: int = 3) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`itk_to_affine`.

    Args:
        affine: ``(4, 4)`` RAS voxel->world affine.
        ndim: number of spatial dimensions of the ITK image (2 or 3).

    Returns:
        ``(origin, spacing, direction)`` in LPS, ready for SimpleITK setters.
    """
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    m = lps[:ndim, :ndim]
    spacing = np.linalg.norm(m, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = m / spacing[None, :]
    return (
        tuple(float(v) for v in lps[:ndim, 3]),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def voxel_spacing(affine: np.ndarray, ndim: int = 3) -> np.ndarray:
    """Voxel size along each spatial axis: the norms of the affine's columns. Shape ``(ndim,)``."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :ndim], axis=0)


def axcodes(affine: np.ndarray) -> str:
    """Orientation code of a 3D affine, e.g. ``"RAS"`` or ``"LPS"`` (closest axes for oblique)."""
    return "".join(nio.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def reorient_affine(affine: np.ndarray, shape: Sequence[int], target: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of the same voxels re-indexed so that the axes follow ``target`` codes.

    Only permutes and flips axes (no resampling), like MONAI's ``Orientation`` and
    nibabel's ``as_closest_canonical``.

    Args:
        affine: ``(4, 4)`` RAS affine of a 3D grid.
        shape: spatial shape ``(X, Y, Z)``.
        target: three orientation letters, one of each pair L/R, A/P, S/I (e.g. ``"RAS"``).

    Returns:
        ``(new_affine, new_shape)``.

    Raises:
        ValueError: ``target`` is not a valid 3-letter code.
    """
    target = target.upper()
    pairs = ({"L", "R"}, {"A", "P"}, {"S", "I"})
    if len(target) != 3 or any(sum(c in p for c in target) != 1 for p in pairs):
        raise ValueError(f"orientation must be 3 letters with one of each of L/R, A/P, S/I (e.g. 'RAS'), got {target!r}")
    cur = nio.io_orientation(affine)
    tgt = nio.axcodes2ornt(tuple(target))
    trans = nio.ornt_transform(cur, tgt)
    new_aff = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(trans, tuple(shape))
    new_shape = tuple(int(shape[int(ax)]) for ax in np.argsort(trans[:, 0]))
    return new_aff, new_shape


def respace_affine(
    affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of a grid with the given voxel size covering the same extent.

    The new grid keeps the outer *edges* of the field of view where they were (the convention of
    ``torch.nn.functional.interpolate(align_corners=False)`` and of nnU-Net/scikit-image resizing):
    the number of voxels along an axis is ``round(n * old / new)`` (at least 1) and voxel ``j`` of
    the new grid sits at input index ``(j + 0.5) * new / old - 0.5``.

    Args:
        affine: ``(4, 4)`` affine of the input grid.
        shape: input spatial shape, length D (2 or 3).
        spacing: target voxel size, length D (mm); ``None`` or a value <= 0 keeps that axis.

    Returns:
        ``(new_affine, new_shape)``.
    """
    d = len(shape)
    old = voxel_spacing(affine, d)
    scale = np.ones(4)
    offset = np.zeros(4)
    new_shape = []
    for ax in range(d):
        tgt = spacing[ax]
        if tgt is None or tgt <= 0:
            new_shape.append(int(shape[ax]))
            continue
        r = float(tgt) / float(old[ax])
        new_shape.append(max(1, int(round(shape[ax] / r))))
        scale[ax] = r
        offset[ax] = 0.5 * r - 0.5
    step = np.diag(scale)
    step[:, 3] = offset
    step[3, 3] = 1.0
    return np.asarray(affine, dtype=np.float64) @ step, tuple(new_shape)


def _axis_aligned(m: np.ndarray, d: int, tol: float = 1e-6) -> list[int] | None:
    """For a D x D block, the input axis feeding each output axis if the block is a scaled permutation."""
    block = m[:d, :d]
    nz = np.abs(block) > tol * max(1.0, float(np.abs(block).max()))
    if not (nz.sum(axis=0) == 1).all() or not (nz.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nz[:, c])[0]) for c in range(d)]


def _snap(x: float, tol: float = 1e-6) -> float:
    r = round(x)
    return float(r) if abs(x - r) < tol else float(x)


def _resample_axis(
    data: torch.Tensor, axis: int, n_out: int, a: float, b: float, mode: str
) -> torch.Tensor:
    """1D resampling of ``data`` along ``axis``: output index ``o`` reads input coordinate ``a*o+b``.

    Coordinates outside the input are clamped to the edge (replicate padding).
    """
    n_in = data.shape[axis]
    if a == 1.0 and b == 0.0 and n_out == n_in:
        return data
    if a == -1.0 and b == n_in - 1 and n_out == n_in:
        return torch.flip(data, (axis,))
    coords = torch.arange(n_out, dtype=torch.float64) * a + b
    if mode == "nearest" or not torch.is_floating_point(data):
        idx = torch.floor(coords + 0.5).clamp_(0, n_in - 1).to(torch.long)
        return data.index_select(axis, idx)
    coords = coords.clamp_(0, n_in - 1)
    lo = torch.floor(coords)
    w = (coords - lo).to(data.dtype)
    lo_i = lo.to(torch.long)
    hi_i = (lo_i + 1).clamp_(max=n_in - 1)
    shape = [1] * data.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    if bool((w == 0).all()):
        return data.index_select(axis, lo_i)
    out = data.index_select(axis, lo_i)
    out.lerp_(data.index_select(axis, hi_i), w)
    return out


def resample(
    data: torch.Tensor,
    out_to_in: np.ndarray,
    out_shape: Sequence[int],
    mode: str = "linear",
) -> torch.Tensor:
    """Resample channel-first data onto another grid.

    Args:
        data: ``(C, *spatial_in)`` tensor (any dtype; integer data is always sampled nearest).
        out_to_in: ``(4, 4)`` matrix mapping an output voxel index to an input voxel index
            (``inv(A_in) @ A_out`` for two affines). For 2D data the top-left 2x2 block and the
            first two entries of the last column are used.
        out_shape: spatial shape of the output grid (same length as ``spatial_in``).
        mode: ``"linear"`` (bi/trilinear) or ``"nearest"``.

    Returns:
        ``(C, *out_shape)`` tensor, same dtype as ``data``. Points outside the input take the
        value of the nearest edge voxel.

    Raises:
        ValueError: unknown ``mode`` or dimensionality mismatch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    d = data.ndim - 1
    if len(out_shape) != d:
        raise ValueError(f"out_shape {tuple(out_shape)} does not match data with {d} spatial dims")
    m = np.asarray(out_to_in, dtype=np.float64)
    src_axes = _axis_aligned(m, d)
    if src_axes is not None:
        out = data
        # output axis c reads input axis src_axes[c]: in = m[r, c] * out_c + m[r, 3]
        for c, r in enumerate(src_axes):
            out = _resample_axis(out, 1 + r, int(out_shape[c]), _snap(m[r, c]), _snap(m[r, 3]), mode)
        perm = [0] + [1 + r for r in src_axes]
        if perm != list(range(d + 1)):
            out = out.permute(perm)
        return out.contiguous()
    return _resample_dense(data, m, out_shape, mode)


def _resample_dense(data: torch.Tensor, m: np.ndarray, out_shape: Sequence[int], mode: str) -> torch.Tensor:
    """General (oblique) resampling with ``grid_sample``, one output slab at a time."""
    d = data.ndim - 1
    in_shape = data.shape[1:]
    is_float = torch.is_floating_point(data)
    src = data.to(torch.float32) if not is_float or data.dtype not in (torch.float32, torch.float64) else data
    out = torch.empty((data.shape[0], *out_shape), dtype=src.dtype)
    mt = torch.as_tensor(m, dtype=torch.float64)
    gmode = "bilinear" if (mode == "linear" and is_float) else "nearest"
    # index -> normalised coordinate for align_corners=True: x_norm = 2 * x / (n - 1) - 1
    norm = torch.tensor([2.0 / max(n - 1, 1) for n in in_shape], dtype=torch.float64)
    slab = max(1, int(2**22 // max(1, int(np.prod(out_shape[1:])))))
    for start in range(0, int(out_shape[0]), slab):
        stop = min(int(out_shape[0]), start + slab)
        axes = [torch.arange(start, stop, dtype=torch.float64)] + [
            torch.arange(n, dtype=torch.float64) for n in out_shape[1:]
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        idx = grid @ mt[:d, :d].T + mt[:d, 3]
        for ax, n in enumerate(in_shape):
            idx[..., ax].clamp_(0, n - 1)
        g = (idx * norm - 1.0).flip(-1).to(src.dtype)  # grid_sample wants (x=last axis, ..., first)
        part = F.grid_sample(
            src.unsqueeze(0), g.unsqueeze(0), mode=gmode, padding_mode="border", align_corners=True
        )[0]
        out[:, start:stop] = part
    if not is_float:
        out = out.round_().to(data.dtype)
    return out
