"""Voxel-grid geometry: affines, orientation codes and grid-to-grid resampling.

Conventions:

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
from dataclasses import dataclass

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


#: input elements (slabs along the outermost axis) per chunk of the separable resampler, per torch
#: thread: small chunks stay in cache through the passes, while competing threads want fewer, larger chunks.
_CHUNK_ELEMS = 1 << 21


@dataclass
class _AxisStep:
    """1D resampling of one input axis: output index ``o`` reads input coordinate ``a*o+b``, clamped."""

    n_in: int
    n_out: int
    kind: str  # "identity", "index" (pure gather: nearest, integer coordinates, flips), "linear"
    lo: torch.Tensor | None = None  # gather indices (long)
    hi: torch.Tensor | None = None  # second neighbour (linear)
    w: torch.Tensor | None = None  # weight of ``hi`` (linear), compute dtype
    #: innermost-axis shortcut through ATen's ``upsample_linear1d`` when the sampling is the
    #: ``align_corners=False`` one (every respacing is): ``(flip_first, scale)``; ``None`` otherwise
    interp: tuple[bool, float] | None = None


def _axis_step(n_in: int, n_out: int, a: float, b: float, linear: bool, dtype: torch.dtype) -> _AxisStep:
    if a == 1.0 and b == 0.0 and n_out == n_in:
        return _AxisStep(n_in, n_out, "identity")
    coords = torch.arange(n_out, dtype=torch.float64) * a + b
    if not linear:
        idx = torch.floor(coords + 0.5).clamp_(0, n_in - 1).to(torch.long)
        return _AxisStep(n_in, n_out, "index", lo=idx)
    coords = coords.clamp_(0, n_in - 1)
    lo = torch.floor(coords)
    w = coords - lo
    lo_i = lo.to(torch.long)
    if bool((w == 0).all()):  # integer coordinates (flips, integer shifts, exact subsampling)
        return _AxisStep(n_in, n_out, "index", lo=lo_i)
    interp = None
    if a > 0 and abs(b - (0.5 * a - 0.5)) < 1e-6:
        interp = (False, 1.0 / a)
    elif a < 0 and abs((n_in - 1 - b) - (0.5 * -a - 0.5)) < 1e-6:  # the same on the flipped axis
        interp = (True, -1.0 / a)
    hi_i = (lo_i + 1).clamp_(max=n_in - 1)
    return _AxisStep(n_in, n_out, "linear", lo=lo_i, hi=hi_i, w=w.to(dtype), interp=interp)


def _along(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, idx)`` by advanced indexing: as fast single-threaded, and unlike
    ``index_select`` it does not slow down many times over when OpenMP threads compete for busy cores."""
    return t[(slice(None),) * dim + (idx,)]


def _apply_step(t: torch.Tensor, dim: int, step: _AxisStep) -> torch.Tensor:
    """Resample ``t`` (a fresh chunk in the compute dtype) along ``dim``."""
    if step.kind == "identity":
        return t
    if step.kind == "index":
        return _along(t, dim, step.lo)
    if dim == t.ndim - 1 and step.interp is not None:
        # ATen's fused 1D kernel beats two gathers + lerp on the contiguous last axis; a reversed axis is flipped first
        flip, scale = step.interp
        src = t.flip(-1) if flip else t
        src3 = src if src.ndim == 3 else src.reshape(-1, 1, src.shape[-1])
        out = torch.ops.aten.upsample_linear1d(src3, [step.n_out], False, scale)
        return out.reshape(*t.shape[:-1], step.n_out)
    out = _along(t, dim, step.lo)
    shape = [1] * t.ndim
    shape[dim] = step.n_out
    return out.lerp_(_along(t, dim, step.hi), step.w.reshape(shape))


def _outer_linear(x: torch.Tensor, step: _AxisStep, s: int, e: int, dtype: torch.dtype) -> torch.Tensor:
    """Outputs ``s:e`` along ``x``'s first axis: a small banded matrix times the input slabs they read.

    One conversion of the slab range and one matrix product instead of two gathers, two
    conversions and a lerp (still used for strong downsampling): less work and fewer
    parallel regions (each one costs a scheduler slice when OpenMP threads share busy cores).
    """
    lo, hi, w = step.lo[s:e], step.hi[s:e], step.w[s:e]
    l0 = int(torch.minimum(lo, hi).min())
    l1 = int(torch.maximum(lo, hi).max()) + 1
    if l1 - l0 > 2 * (e - s) + 2:  # strong downsampling: most slabs of the range are not read
        part = _along(x, 0, lo).to(dtype)
        return part.lerp_(_along(x, 0, hi).to(dtype), w.reshape(-1, *[1] * (x.ndim - 1)))
    src = x[l0:l1].to(dtype)
    band = torch.zeros((e - s, l1 - l0), dtype=dtype)
    rows = torch.arange(e - s)
    band.index_put_((rows, lo - l0), 1 - w, accumulate=True)
    band.index_put_((rows, hi - l0), w, accumulate=True)
    return (band @ src.reshape(l1 - l0, -1)).reshape(e - s, *x.shape[1:])


def _resample_separable(
    data: torch.Tensor, m: np.ndarray, src_axes: list[int], out_shape: Sequence[int], mode: str, dtype: torch.dtype
) -> torch.Tensor:
    """Axis-aligned resampling, one axis at a time, in chunks along the input's outermost axis.

    The input may be any strided view (e.g. the Fortran-ordered voxels of a NIfTI file): axes
    are visited in the input's memory order, so the first pass reads whole contiguous slabs and
    the transposition to the output's C order happens once, on the (small) output, when each
    chunk is written into it. Integer input is converted to ``dtype`` slab by slab, never whole.
    """
    d = data.ndim - 1
    linear = mode == "linear" and dtype.is_floating_point
    n_in = tuple(int(n) for n in data.shape[1:])
    out_axis = {r: c for c, r in enumerate(src_axes)}  # input axis -> output axis reading it
    steps = {
        r: _axis_step(n_in[r], int(out_shape[c]), _snap(m[r, c]), _snap(m[r, 3]), linear, dtype)
        for r, c in out_axis.items()
    }
    order = sorted(range(d), key=lambda r: -data.stride(1 + r))  # outermost input axis first
    x = data.permute(0, *[1 + r for r in order])
    out = torch.empty((data.shape[0], *(int(n) for n in out_shape)), dtype=dtype)
    out_mem = out.permute(0, *[1 + out_axis[r] for r in order])  # the output, dims in x's order
    first, rest = steps[order[0]], [steps[r] for r in order[1:]]
    block = max(1, _CHUNK_ELEMS * torch.get_num_threads() // max(1, int(np.prod(x.shape[2:]))))
    for ch in range(x.shape[0]):
        xc = x[ch]
        for s in range(0, first.n_out, block):
            e = min(first.n_out, s + block)
            if first.kind == "identity":
                part = xc[s:e].to(dtype)
            elif first.kind == "index":
                part = _along(xc, 0, first.lo[s:e]).to(dtype)
            else:
                part = _outer_linear(xc, first, s, e, dtype)
            for k, step in enumerate(rest, start=1):
                part = _apply_step(part, k, step)
            out_mem[ch, s:e].copy_(part)
    return out


def resample(
    data: torch.Tensor,
    out_to_in: np.ndarray,
    out_shape: Sequence[int],
    mode: str = "linear",
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Resample channel-first data onto another grid.

    Args:
        data: ``(C, *spatial_in)`` tensor (any dtype and strides; integer data is sampled
            nearest unless ``dtype`` is a floating type).
        out_to_in: ``(4, 4)`` matrix mapping an output voxel index to an input voxel index
            (``inv(A_in) @ A_out`` for two affines). For 2D data the top-left 2x2 block and the
            first two entries of the last column are used.
        out_shape: spatial shape of the output grid (same length as ``spatial_in``).
        mode: ``"linear"`` (bi/trilinear) or ``"nearest"``.
        dtype: compute and return in this dtype (e.g. ``torch.float32`` for int16 voxels straight
            from a file: converted chunk by chunk, and ``"linear"`` then applies to them);
            ``None``: the dtype of ``data``.

    Returns:
        ``(C, *out_shape)`` contiguous tensor of ``dtype``. Points outside the input take the
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
    dtype = data.dtype if dtype is None else dtype
    src_axes = _axis_aligned(m, d)
    if src_axes is None:
        return _resample_dense(data.to(dtype), m, out_shape, mode)
    if src_axes == list(range(d)) and all(
        _snap(m[r, r]) == 1.0 and _snap(m[r, 3]) == 0.0 and int(out_shape[r]) == data.shape[1 + r] for r in range(d)
    ):
        return data.to(dtype).contiguous()
    return _resample_separable(data, m, src_axes, out_shape, mode, dtype)


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
