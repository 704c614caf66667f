"""``medcnn.load`` and ``medcnn.save``: scans in, results out, on exactly the right grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.data import MetaTensor

from medcnn.errors import InputError
from medcnn.io import geometry
from medcnn.io.atomic import atomic_path
from medcnn.io.memory import MemoryLimit, check_memory, memory_limit
from medcnn.io.readers import RawImage, header_bytes_to_nifti_header, read_raw
from medcnn.io.slicer import SEG_NRRD_SUFFIX, is_seg_nrrd, segment_fields

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: meta key holding everything :func:`save` needs about the file(s) an image came from
SOURCE_KEY = "medcnn_source"


def load(
    path: PathLike | Sequence[PathLike],
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = None,
    *,
    series: str | int | None = None,
    spatial_dims: int | None = None,
    nonfinite: str = "error",
    mode: str = "linear",
    max_memory: MemoryLimit = None,
) -> MetaTensor:
    """Load a scan (or several co-registered scans as channels) with its geometry.

    Args:
        path: a file (NIfTI, NRRD, MHA/MHD, DICOM, PNG/JPEG), a DICOM series folder, or a list
            of such paths stacked as channels in the given order (they must share one grid).
        spacing: voxel size to resample to (mm), one value per spatial axis or a single value
            for all; ``None`` keeps the stored grid. Resampling keeps the field of view's edges.
        orientation: axis codes to reorient to (e.g. ``"RAS"``, ``"LPS"``; 3D only) by
            permuting/flipping axes; ``None`` keeps the stored orientation.
        series: which series of a DICOM folder holding several (SeriesInstanceUID or index).
        spatial_dims: require 2 or 3 spatial dimensions (``None`` accepts either).
        nonfinite: ``"error"`` (default) refuses NaN/Inf voxels; ``"zero"`` replaces them by 0.
        mode: interpolation for ``spacing``: ``"linear"`` or ``"nearest"`` (use for label maps).
        max_memory: refuse (before reading any voxel) an image whose header says it needs more
            memory than this: bytes or a size string (``"8G"``, ``"512M"``; ``"none"`` disables).
            Default: the ``MEDCNN_MAX_MEMORY`` environment variable, else half the physical
            memory (see :mod:`medcnn.io.memory`). Resampling to ``spacing`` is checked too.

    Returns:
        ``MetaTensor`` of shape ``(C, *spatial)`` (``(C, I, J, K)`` volumes in the file's voxel
        order, ``(C, rows, cols)`` 2D images), float32, whose ``.affine`` maps voxel indices to
        RAS world millimetres. ``.meta["medcnn_source"]`` remembers the original grid so that
        :func:`save` can write results back onto it.

    Raises:
        InputError: the file is unreadable, unsupported, truncated, empty, non-finite, of the
            wrong dimensionality, too large for ``max_memory``, or (for several paths) on
            mismatched grids. The message names the file and the reason.
        ValueError: invalid arguments (bad orientation code, spacing length...).
        ConfigError: an invalid ``max_memory`` / ``MEDCNN_MAX_MEMORY`` value.

    Example:
        >>> img = medcnn.load("t1.nii.gz", spacing=1.5, orientation="RAS")  # doctest: +SKIP
        >>> img.shape, img.affine  # doctest: +SKIP
    """
    if nonfinite not in ("error", "zero"):
        raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
    if spatial_dims not in (None, 2, 3):
        raise ValueError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}")
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths:
        raise ValueError("load() needs at least one path")
    limit = memory_limit(max_memory) or "none"  # resolved once: a bad MEDCNN_MAX_MEMORY fails before any reading
    # NIfTI scaling deferred: applied once in float32 after resampling (same values: resampling
    # is a convex combination), never as a float64 copy of the whole stored volume
    raws = [read_raw(p, series=series, max_memory=limit, defer_scaling=True) for p in paths]
    raw = _stack_channels(raws, paths, nonfinite)
    first = paths[0]
    if spatial_dims is not None and raw.spatial_dims != spatial_dims:
        what = "2D image" if raw.spatial_dims == 2 else "3D volume"
        raise InputError(first, f"expected a {spatial_dims}D image but this is a {what} (shape {raw.array.shape[1:]})")
    # the stored voxels as they are (int16 CT stays int16, Fortran-ordered NIfTI stays a view):
    # the one conversion to float32 happens inside the resampling or in _float32_contiguous
    data = _to_tensor(raw.array)
    if data.is_floating_point():  # integers are always finite: skip the full-volume scan
        _check_finite(data, _channel_paths(raws, paths), nonfinite)
    src = dict(raw.source)
    src.update(
        paths=[str(p) for p in paths],
        spatial_shape=tuple(int(s) for s in raw.array.shape[1:]),
        affine=np.asarray(raw.affine, dtype=np.float64),
        spatial_dims=raw.spatial_dims,
    )
    affine = np.asarray(raw.affine, dtype=np.float64)
    if orientation is not None and raw.spatial_dims != 3:
        raise ValueError(f"{first}: orientation= applies to 3D volumes only")
    out_affine, out_shape = target_grid(affine, tuple(data.shape[1:]), spacing, orientation)
    if out_affine is not affine:
        check_memory(first, (data.shape[0], *out_shape), 4, limit, what="image resampled to the requested spacing")
        data = geometry.resample(data, np.linalg.inv(affine) @ out_affine, out_shape, mode=mode, dtype=torch.float32)
    else:
        data = _float32_contiguous(data)
    if raw.scaling is not None:
        slope, inter = raw.scaling
        if slope != 1.0:
            data.mul_(slope)
        if inter != 0.0:
            data.add_(inter)
        _check_scaled(data, first, raw.scaling, nonfinite)
    meta = {
        "filename_or_obj": str(first),
        "original_affine": affine,
        "spatial_shape": np.asarray(src["spatial_shape"]),
        "original_channel_dim": 0,
        SOURCE_KEY: src,
    }
    if src.get("segments"):  # Slicer .seg.nrrd: [{"value", "name", "color", ...}]
        meta["segments"] = src["segments"]
    return MetaTensor(data, affine=torch.as_tensor(out_affine, dtype=torch.float64), meta=meta)


def target_grid(
    affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float] | float | None, orientation: str | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of the grid ``load(..., spacing=, orientation=)`` produces from ``(affine, shape)``.

    Returns the input ``affine`` object itself when nothing changes.
    """
    out_affine, out_shape = affine, tuple(int(s) for s in shape)
    if orientation is not None:
        out_affine, out_shape = geometry.reorient_affine(out_affine, out_shape, orientation)
    if spacing is not None:
        sp = _as_tuple(spacing, len(out_shape), "spacing")
        out_affine, out_shape = geometry.respace_affine(out_affine, out_shape, sp)
    return out_affine, out_shape


def resample_image(
    img: MetaTensor,
    spacing: Sequence[float] | float | None = None,
    orientation: str | None = None,
    mode: str = "linear",
) -> MetaTensor:
    """Put an image from :func:`load` on another grid, exactly as ``load(..., spacing, orientation)`` would.

    Args:
        img: ``MetaTensor (C, *spatial)`` with ``.affine``.
        spacing: target voxel size (mm) or ``None``.
        orientation: target axis codes (3D) or ``None``.
        mode: ``"linear"`` or ``"nearest"``.

    Returns:
        A new ``MetaTensor`` on the target grid, keeping ``img``'s meta (so :func:`save` still
        finds the source file's grid).
    """
    affine = img.affine.detach().cpu().numpy().astype(np.float64)
    new_affine, new_shape = target_grid(affine, tuple(img.shape[1:]), spacing, orientation)
    if new_affine is affine:
        return img
    data = geometry.resample(img.as_tensor(), np.linalg.inv(affine) @ new_affine, new_shape, mode=mode)
    return MetaTensor(data, affine=torch.as_tensor(new_affine, dtype=torch.float64), meta=meta_without_affine(img))


def meta_without_affine(img: MetaTensor) -> dict:
    """A copy of ``img.meta`` minus its ``affine`` entry, to build a MetaTensor on another grid."""
    return {k: v for k, v in img.meta.items() if k != "affine"}


def _as_tuple(v: Sequence[float] | float, n: int, name: str) -> tuple[float, ...]:
    if isinstance(v, (int, float)):
        return (float(v),) * n
    t = tuple(float(x) for x in v)
    if len(t) != n:
        raise ValueError(f"{name} needs {n} values for a {n}D image, got {len(t)}")
    return t


def _stack_channels(raws: list[RawImage], paths: list[Path], nonfinite: str = "error") -> RawImage:
    if len(raws) == 1:
        return raws[0]
    ref, ref_path = raws[0], paths[0]
    for r, p in zip(raws[1:], paths[1:]):
        if r.spatial_dims != ref.spatial_dims or r.array.shape[1:] != ref.array.shape[1:]:
            raise InputError(p, f"grid {r.array.shape[1:]} does not match {ref_path.name} {ref.array.shape[1:]}; channels must share one grid")
        diff = np.abs(r.affine - ref.affine)
        if diff[:3, :3].max() > 1e-3 or diff[:3, 3].max() > 1e-2:
            raise InputError(
                p,
                f"geometry differs from {ref_path.name} (affine mismatch up to {diff.max():.3g}); "
                "channels must share one grid: register/resample them first",
            )
    arr = np.concatenate([_scaled_float32(r, p, nonfinite) for r, p in zip(raws, paths)], axis=0)
    return RawImage(arr, ref.affine, ref.spatial_dims, dict(ref.source))


def _scaled_float32(raw: RawImage, path: Path, nonfinite: str = "error") -> np.ndarray:
    arr = np.asarray(raw.array, dtype=np.float32)
    if raw.scaling is not None:
        stored_finite = raw.array.dtype.kind in "iub" or bool(np.isfinite(raw.array).all())
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr * np.float32(raw.scaling[0]) + np.float32(raw.scaling[1])
        if stored_finite:  # NaN stored in the file is reported as such by the finite check of load()
            _check_scaled(torch.from_numpy(arr), path, raw.scaling, nonfinite)
    return arr


def _check_scaled(data: torch.Tensor, path: Path, scaling: tuple[float, float], policy: str) -> None:
    """Refuse voxels the header's scl_slope/scl_inter push beyond float32 (stored values are finite).

    Args:
        data: ``(C, *spatial)`` float32 after scaling.
        path: the file, for the message.
        scaling: ``(slope, intercept)`` applied.
        policy: ``"error"`` or ``"zero"`` (as :func:`load`'s ``nonfinite``).
    """
    finite = torch.isfinite(data)
    if bool(finite.all()):
        return
    n_bad = int((~finite).sum())
    what = f"scl_slope {scaling[0]:g} / scl_inter {scaling[1]:g} of the header turn {n_bad} of {data.numel()} voxels into Inf/NaN (beyond float32)"
    if policy == "zero":
        logger.warning("%s: %s; replaced them by 0", path, what)
        data.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return
    raise InputError(path, what)


#: stored dtypes a tensor can share without conversion; anything else becomes float32 up front
_TORCH_NATIVE = {np.dtype(t) for t in (np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64)}


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """The stored voxels as a tensor, sharing ``arr``'s memory and strides where possible."""
    if not arr.dtype.isnative:  # big-endian files (torch only takes native byte order)
        arr = arr.astype(arr.dtype.newbyteorder("="), order="K")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8, order="K")
    if arr.dtype not in _TORCH_NATIVE:  # float16, uint16, uint32...: float32 (what load returns)
        arr = arr.astype(np.float32, order="K")
    if not arr.flags.writeable or any(st < 0 for st in arr.strides):
        # own the memory: read-only memmaps / Pillow buffers must not back a tensor we may edit in place
        arr = np.array(arr, order="K")
    return torch.from_numpy(arr)


def _float32_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a C-contiguous float32 tensor; conversion and transposition in one copy."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    out = torch.empty(t.shape, dtype=torch.float32)
    out.copy_(t)
    return out


def _channel_paths(raws: list[RawImage], paths: list[Path]) -> list[Path]:
    """The file each channel of the stacked image came from."""
    return [p for r, p in zip(raws, paths) for _ in range(int(r.array.shape[0]))]


def _check_finite(data: torch.Tensor, channel_paths: list[Path], policy: str) -> None:
    """Refuse (or zero, ``policy="zero"``) NaN/Inf voxels; the message names the file holding them.

    Args:
        data: ``(C, *spatial)``.
        channel_paths: the file of each channel (``C`` entries).
        policy: ``"error"`` or ``"zero"``.
    """
    finite = torch.isfinite(data)
    if bool(finite.all()):
        return
    bad_per_channel = [int((~finite[c]).sum()) for c in range(data.shape[0])]
    path = channel_paths[next(c for c, n in enumerate(bad_per_channel) if n)]
    if policy == "zero":
        logger.warning("%s: replaced %d NaN/Inf voxels by 0", path, sum(bad_per_channel))
        data.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return
    mine = [c for c, p in enumerate(channel_paths) if p == path]
    n_bad = sum(bad_per_channel[c] for c in mine)
    total = len(mine) * int(finite[0].numel())
    what = "all voxels are" if n_bad == total else f"{n_bad} of {total} voxels are"
    raise InputError(path, f"{what} NaN or Inf")


# ----------------------------------------------------------------------------------------- save


def display_pixels(data: torch.Tensor, path: PathLike, *, keep_integers: bool = True) -> torch.Tensor:
    """Grey levels of a 2D image as PNG/JPEG values, for writing a radiograph as a picture.

    Integer-valued data already in 0..255 are kept as they are (``keep_integers``), so an 8-bit image
    converts to itself; anything else (a radiograph's 12-bit or rescaled values) is stretched
    linearly from its minimum to its maximum onto 0..65535 (one-channel PNG) or 0..255 (JPEG, RGB),
    keeping higher = brighter. Volumes and integer tensors are returned unchanged (:func:`save`
    refuses what PNG cannot hold).

    Args:
        data: ``(C, rows, cols)`` image (``C`` 1 or 3).
        path: the output file (its suffix picks 16-bit PNG or 8-bit).
        keep_integers: keep integral values within 0..255 unscaled.

    Returns:
        ``(C, rows, cols)`` int32 tensor of output values, or ``data`` itself when left unchanged.

    Raises:
        InputError: the image holds NaN/Inf.
    """
    if data.ndim != 3 or not data.is_floating_point():
        return data
    if not bool(torch.isfinite(data).all()):
        raise InputError(path, "image holds NaN/Inf values; cannot write it as a picture")
    lo, hi = float(data.min()), float(data.max())
    if keep_integers and lo >= 0 and hi <= 255 and bool((data == data.round()).all()):
        return data.round().to(torch.int32)
    top = 65535 if (Path(path).suffix.lower() == ".png" and data.shape[0] == 1) else 255
    scale = top / (hi - lo) if hi > lo else 0.0
    return ((data.to(torch.float64) - lo) * scale).round().to(torch.int32)



def _source_of(like: Any) -> tuple[dict, np.ndarray]:
    meta = getattr(like, "meta", None)
    if not isinstance(meta, dict) or SOURCE_KEY not in meta:
        raise ValueError("like= must be an image returned by medcnn.load (its meta holds the source grid)")
    src = meta[SOURCE_KEY]
    cur = like.affine
    cur = cur.detach().cpu().numpy() if isinstance(cur, torch.Tensor) else np.asarray(cur)
    return src, np.asarray(cur, dtype=np.float64)


def save(
    data: torch.Tensor | np.ndarray,
    path: PathLike,
    like: Any = None,
    *,
    affine: np.ndarray | None = None,
    interp: str = "auto",
) -> Path:
    """Write an image or mask, atomically, on the exact grid of the file ``like`` came from.

    ``data`` is on ``like``'s current grid (whatever :func:`load` resampled or reoriented, or
    MONAI transforms that track the affine did since); ``save`` maps it back to the source grid
    (exact index permutation where possible; nearest for integer/bool data, linear for floats)
    and writes it with the source geometry, so it overlays the input exactly in 3D Slicer or
    ITK-SNAP. A NIfTI source keeps its header (qform and sform) in NIfTI outputs.

    Args:
        data: ``(*spatial)`` or ``(C, *spatial)`` tensor/array on ``like``'s grid.
        path: output file: ``.nii.gz``/``.nii``, ``.nrrd``, ``.mha``/``.mhd``, or ``.png`` (2D).
        like: the image returned by :func:`load` that ``data`` belongs to. If ``None``,
            ``data`` itself must be such an image, or ``affine`` must be given.
        affine: RAS affine of ``data`` when there is no ``like`` (written as is).
        interp: ``"auto"`` (nearest for integer/bool data, linear for floats), ``"nearest"``
            or ``"linear"``.

    Returns:
        The written path.

    Raises:
        ValueError: shapes do not match ``like``, unsupported output format or values.
    """
    path = Path(path)
    if interp not in ("auto", "nearest", "linear"):
        raise ValueError(f"interp must be 'auto', 'nearest' or 'linear', got {interp!r}")
    if like is None and isinstance(data, MetaTensor) and SOURCE_KEY in data.meta:
        like = data
    arr = data.detach().cpu() if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    if isinstance(arr, MetaTensor):
        arr = arr.as_tensor()
    if like is not None:
        src, cur_affine = _source_of(like)
        sdims = int(src["spatial_dims"])
        cur_shape = tuple(int(s) for s in like.shape[-sdims:])
        arr = _channel_first(arr, sdims, cur_shape)
        src_shape = tuple(int(s) for s in src["spatial_shape"])
        src_affine = np.asarray(src["affine"], dtype=np.float64)
        mode = _interp_mode(arr, interp)
        m = np.linalg.inv(cur_affine) @ src_affine
        if not (np.allclose(m, np.eye(4), atol=1e-6) and cur_shape == src_shape):
            arr = geometry.resample(arr, m, src_shape, mode=mode)
    else:
        if affine is None:
            raise ValueError("save() needs like= (an image from medcnn.load) or affine=")
        src_affine = np.asarray(affine, dtype=np.float64)
        sdims = 2 if path.name.lower().endswith((".png", ".jpg", ".jpeg")) else 3
        arr = _channel_first(arr, sdims, None)
        src = {"format": "none", "spatial_dims": sdims}
    out = _to_storage(arr)
    _write(out, path, src, src_affine, sdims)
    logger.debug("wrote %s %s", path, tuple(out.shape))
    return path


def _channel_first(arr: torch.Tensor, sdims: int, shape: tuple[int, ...] | None) -> torch.Tensor:
    if arr.ndim == sdims:
        arr = arr.unsqueeze(0)
    if arr.ndim != sdims + 1:
        raise ValueError(f"data must be (*spatial) or (C, *spatial) with {sdims} spatial dims, got shape {tuple(arr.shape)}")
    if shape is not None and tuple(arr.shape[1:]) != shape:
        raise ValueError(f"data spatial shape {tuple(arr.shape[1:])} does not match like= image {shape}")
    return arr


def _interp_mode(arr: torch.Tensor, interp: str) -> str:
    if interp != "auto":
        return interp
    return "linear" if torch.is_floating_point(arr) else "nearest"


def _to_storage(arr: torch.Tensor) -> np.ndarray:
    """Smallest faithful numpy dtype: bool->uint8, labels->uint8/int16/int32, floats->float32."""
    if arr.dtype == torch.bool:
        return arr.numpy().astype(np.uint8)
    if torch.is_floating_point(arr):
        return arr.to(torch.float32).numpy()
    lo, hi = (int(arr.min()), int(arr.max())) if arr.numel() else (0, 0)
    for dt in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr.numpy().astype(dt)
    return arr.numpy().astype(np.int64)


def _write(arr: np.ndarray, path: Path, src: dict, affine: np.ndarray, sdims: int) -> None:
    low = path.name.lower()
    if low.endswith((".png", ".jpg", ".jpeg")):
        _write_png(arr, path, sdims)
    elif low.endswith((".nii", ".nii.gz")):
        _write_nifti(arr, path, src, affine, sdims)
    elif low.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        _write_itk(arr, path, affine, sdims)
    else:
        raise ValueError(f"{path}: unsupported output format; use .nii.gz, .nrrd, .mha or .png")


def _write_png(arr: np.ndarray, path: Path, sdims: int) -> None:
    from PIL import Image

    if sdims != 2:
        raise ValueError(f"{path}: PNG/JPEG output needs a 2D image; use .nii.gz for volumes")
    if arr.shape[0] not in (1, 3):
        raise ValueError(f"{path}: PNG needs 1 or 3 channels, got {arr.shape[0]}")
    img = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if img.dtype.kind == "f":
        if img.min() < 0 or img.max() > 1:
            raise ValueError(f"{path}: float data must be in [0, 1] for PNG (got {img.min():.3g}..{img.max():.3g}); use .nii.gz")
        img = np.round(img * 255).astype(np.uint8)
    elif img.dtype == np.uint8 and img.max() <= 1 and arr.shape[0] == 1:
        img = img * np.uint8(255)  # binary mask -> 0/255, visible in any viewer
    elif img.max() > 255 or img.min() < 0:
        if img.min() < 0 or img.max() > 65535 or arr.shape[0] != 1:
            raise ValueError(f"{path}: values out of PNG range; use .nii.gz")
        img = img.astype(np.uint16)
    else:
        img = img.astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def _write_nifti(arr: np.ndarray, path: Path, src: dict, affine: np.ndarray, sdims: int) -> None:
    import nibabel as nib

    if sdims == 2:
        _write_itk(arr, path, affine, sdims)
        return
    vol = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    block = src.get("header") if src.get("format") == "nifti" else None
    if block is not None:
        hdr = header_bytes_to_nifti_header(block, src.get("header_class", "Nifti1Header"))
        cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(vol, affine=None, header=hdr)
        img.header.set_data_dtype(vol.dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = 0
        img.header["cal_max"] = 0
        if vol.ndim == 3:
            img.header["intent_code"] = 0
    else:
        img = nib.Nifti1Image(vol, affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_itk(arr: np.ndarray, path: Path, affine: np.ndarray, sdims: int) -> None:
    import SimpleITK as sitk

    if sdims == 3:
        np_arr = np.transpose(arr, (3, 2, 1, 0))  # (K, J, I, C)
        aff = affine
    else:
        np_arr = np.moveaxis(arr, 0, -1)  # (rows, cols, C)
        aff = affine[:, [1, 0, 2, 3]]  # our (rows, cols) -> ITK (i=cols, j=rows)
    vec = np_arr.shape[-1] > 1
    img = sitk.GetImageFromArray(np.ascontiguousarray(np_arr if vec else np_arr[..., 0]), isVector=vec)
    origin, spacing, direction = geometry.affine_to_itk(aff, sdims)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def write_seg_nrrd(
    labels: torch.Tensor | np.ndarray,
    path: str | Path,
    like: Any = None,
    *,
    names: Mapping[int, str],
    colours: Mapping[int, Sequence[int]],
    affine: np.ndarray | None = None,
) -> Path:
    """Write a label map as a Slicer ``.seg.nrrd`` (atomically), on the grid of the file ``like`` came from.

    Args:
        labels: ``(*spatial)`` or ``(1, *spatial)`` integer labels on ``like``'s grid (3D).
        path: output file, ``*.seg.nrrd``.
        like: the image from :func:`medcnn.load` the labels belong to (as :func:`medcnn.save`).
        names: label value -> segment name.
        colours: label value -> RGB 0..255.
        affine: RAS affine when there is no ``like``.

    Returns:
        The written path.

    Raises:
        ValueError: not a ``.seg.nrrd`` name, a 2D label map, or what :func:`medcnn.save` refuses.
    """
    import SimpleITK as sitk  # deferred: keeps `import medcnn` light

    path = Path(path)
    if not is_seg_nrrd(path):
        raise ValueError(f"{path}: a Slicer segmentation file name ends with {SEG_NRRD_SUFFIX}")
    with atomic_path(path) as tmp:
        plain = Path(str(tmp) + ".nrrd")  # save() picks the format from the suffix
        save(labels, plain, like, affine=affine)
        img = sitk.ReadImage(str(plain))
        plain.unlink()
        if img.GetDimension() != 3:
            raise ValueError(f"{path}: a Slicer segmentation here is a 3D label map, got {img.GetDimension()}D")
        arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))  # ITK (k, j, i) -> (i, j, k)
        for key, value in segment_fields(arr, names, colours).items():
            img.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(tmp))
        writer.SetImageIO("NrrdImageIO")
        writer.UseCompressionOn()
        writer.Execute(img)
    logger.debug("wrote %s", path)
    return path
