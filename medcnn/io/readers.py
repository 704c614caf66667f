"""Format detection and readers returning channel-first arrays with their geometry.

Each reader returns a :class:`RawImage`: the stored voxels (not resampled), the RAS affine, and a
``source`` record that :func:`medcnn.save` uses to write results back onto exactly this grid.
No header is parsed by hand: NIfTI goes through nibabel, NRRD/MHA/MHD through SimpleITK, DICOM
through pydicom/SimpleITK (:mod:`medcnn.io.dicom`), PNG/JPEG through Pillow. The one shortcut: the
voxel block of a ``.nii.gz`` (at the offset, dtype and shape nibabel reads from the header) is
decompressed straight into its final array, with python-isal's ISA-L inflate when it is installed
(:func:`_gunzip_into`); see ``benchmarks/bench_load.py`` for the figures.

NIfTI volumes keep the file's Fortran (``i`` fastest) memory layout: ``RawImage.array`` is then a
transposed view, not C-contiguous. Making it contiguous costs a full transposing copy that
:func:`medcnn.load` folds into its resampling or float32 conversion instead.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcnn.errors import InputError, MedcnnError
from medcnn.io import dicom
from medcnn.io.slicer import reader_segments
from medcnn.io.geometry import affine_2d, itk_to_affine
from medcnn.io.memory import MemoryLimit, check_memory

try:  # ISA-L inflate is about twice as fast as zlib on CT volumes
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - optional speed-up, stdlib zlib otherwise
    _fast_zlib = None

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: formats people try that we refuse with a hint
UNSUPPORTED_HINTS = {
    ".mnc": "MINC is not supported; convert it to NIfTI (e.g. with nibabel or mnc2nii)",
    ".par": "Philips PAR/REC is not supported; convert it to NIfTI (e.g. with dcm2niix or nibabel's parrec2nii)",
    ".rec": "Philips PAR/REC is not supported; convert it to NIfTI (e.g. with dcm2niix or nibabel's parrec2nii)",
    ".mgz": "FreeSurfer MGZ is not supported; convert it to NIfTI (mri_convert)",
    ".mgh": "FreeSurfer MGH is not supported; convert it to NIfTI (mri_convert)",
    ".tif": "TIFF is not supported; save the image as PNG",
    ".tiff": "TIFF is not supported; save the image as PNG",
}
SUPPORTED = "NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd), DICOM file or series folder, PNG/JPEG"
#: largest compression ratio gzip (deflate) can reach; a header promising more data than that is lying
_MAX_GZIP_RATIO = 1032
#: voxel sizes (mm) outside this range mean a broken header, not an image (1e5 mm = 100 m)
_MIN_VOXEL_MM, _MAX_VOXEL_MM = 1e-6, 1e5


@dataclass
class RawImage:
    """Voxels as stored in the file(s), channel first, with geometry.

    Attributes:
        array: ``(C, *spatial)`` numpy array, stored dtype (or floating point after scaling); not
            necessarily C-contiguous (NIfTI data keep the file's Fortran layout).
        affine: ``(4, 4)`` RAS voxel->world affine of the spatial axes.
        spatial_dims: 2 or 3.
        source: what :func:`medcnn.save` needs to write onto this grid (format, shape, affine,
            NIfTI header bytes when the source was NIfTI).
    """

    array: np.ndarray
    affine: np.ndarray
    spatial_dims: int
    source: dict = field(default_factory=dict)
    #: ``(slope, intercept)`` still to apply (``array * slope + intercept``) when the reader was
    #: asked to defer the NIfTI scaling (``read_raw(..., defer_scaling=True)``); ``None`` otherwise
    scaling: tuple[float, float] | None = None


def detect_format(path: Path) -> str:
    """One of ``nifti``, ``itk``, ``image2d``, ``dicom``, ``dicom-folder``.

    Raises:
        InputError: missing path, known-unsupported or unrecognised format.
    """
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return "dicom-folder"
    name = path.name.lower()
    for suffixes, fmt in ((NIFTI_SUFFIXES, "nifti"), (ITK_SUFFIXES, "itk"), (IMAGE2D_SUFFIXES, "image2d"), (DICOM_SUFFIXES, "dicom")):
        if name.endswith(suffixes):
            return fmt
    for suf, hint in UNSUPPORTED_HINTS.items():
        if name.endswith(suf) or name.endswith(suf + ".gz"):
            raise InputError(path, hint)
    if dicom.is_dicom_file(path):
        return "dicom"
    raise InputError(path, f"unrecognised file format; supported: {SUPPORTED}")


def _check_nonempty(path: Path) -> None:
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def read_nifti(path: Path, max_memory: MemoryLimit = None, *, defer_scaling: bool = False) -> RawImage:
    """Read NIfTI-1/2 (or Analyze pair) with nibabel; 4D/5D data become channels.

    Args:
        path: the file.
        max_memory: memory limit (see :mod:`medcnn.io.memory`).
        defer_scaling: return the stored values and the header's ``(slope, intercept)`` in
            ``RawImage.scaling`` instead of applying them (what :func:`medcnn.load` does: it scales
            once, in float32, after resampling, which gives the same values as scaling first).

    Raises:
        InputError: unreadable, truncated, empty or too large for ``max_memory`` (see
            :mod:`medcnn.io.memory`), complex-valued, wrong dimensionality.
    """
    import nibabel as nib

    _check_nonempty(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise InputError(path, f"not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair, nib.Nifti2Pair, nib.AnalyzeImage)):
        raise InputError(path, f"unsupported image type {type(img).__name__}")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 0 or any(s == 0 for s in shape):
        raise InputError(path, f"image has no voxels (shape {shape})")
    affine = _nifti_affine(path, img)
    _check_declared_size(path, shape, img.get_data_dtype().itemsize)
    # nibabel moves scl_slope/scl_inter from the header (reset to NaN) to the data proxy on load
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    scaled = (slope, inter) != (1.0, 0.0)
    defer = scaled and defer_scaling
    itemsize = img.get_data_dtype().itemsize
    check_memory(path, shape, 8 if scaled and not defer else itemsize, max_memory)
    try:
        data = _nifti_voxels(path, img)  # stored values, or None where nibabel reads them
        if data is None:
            data = img.dataobj.get_unscaled() if defer else np.asanyarray(img.dataobj)
        elif scaled and not defer:
            data = _apply_scaling(data, img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError, _FastZlibError) as exc:
        raise InputError(path, f"file is truncated or corrupt ({_short(exc)})") from None
    scaling = (float(slope), float(inter)) if defer else None
    if data.dtype.kind == "c":
        raise InputError(path, "complex-valued images are not supported")
    if data.dtype.fields is not None:  # RGB NIfTI
        data = np.stack([data[n] for n in data.dtype.names], axis=-1)
        shape = data.shape
    if len(shape) < 2:
        raise InputError(path, f"image is {len(shape)}D (shape {shape}); expected a 3D volume")
    if len(shape) == 2:
        arr = data[None, :, :, None]
    elif len(shape) == 3:
        arr = data[None]
    elif len(shape) == 4:
        arr = np.moveaxis(data, 3, 0)
    elif len(shape) == 5 and shape[3] == 1:  # NIfTI vector intent: (X, Y, Z, 1, C)
        arr = np.moveaxis(data[:, :, :, 0, :], 3, 0)
    else:
        raise InputError(path, f"image is {len(shape)}D (shape {shape}); expected 3D, or 4D with channels last")
    hdr = img.header
    src = {
        "format": "nifti",
        "header": hdr.binaryblock if hasattr(hdr, "binaryblock") else None,
        "header_class": type(hdr).__name__,
    }
    # no np.ascontiguousarray: the transposing copy (1.8 s for 512x512x300 int16) is left to load(),
    # which folds it into the resampling or the float32 conversion it does anyway
    return RawImage(arr, affine, 3, src, scaling)


def _affine_problem(affine: np.ndarray) -> str | None:
    """What makes a voxel->world affine unusable (``None`` when it is fine): NaN/Inf, singular, absurd voxels."""
    m = affine[:3, :3]
    if not np.isfinite(affine).all():
        return "holds NaN/Inf values"
    sizes = np.linalg.norm(m, axis=0)
    if sizes.min() < _MIN_VOXEL_MM or abs(np.linalg.det(m)) < 1e-6 * float(np.prod(sizes)):
        return "is singular (a zero voxel size, or two axes along one line)"
    if sizes.max() > _MAX_VOXEL_MM:
        return f"gives an implausible voxel size of {sizes.max():.3g} mm"
    return None


def _nifti_affine(path: Path, img) -> np.ndarray:
    """The voxel->world affine of a NIfTI/Analyze image, checked; falls back to the other form when one is bad.

    nibabel's order of preference is kept (sform, then qform, then pixdim). When the preferred form
    is unusable (NaN/Inf, singular, absurd voxel sizes) and the other is fine, the other is used with
    a warning, and the header kept for outputs is repaired so that results carry only the good one.

    Returns:
        ``(4, 4)`` float64 RAS affine.

    Raises:
        InputError: no usable geometry at all (the message says what is wrong with each form).
    """
    import nibabel as nib

    hdr = img.header
    if not isinstance(hdr, nib.Nifti1Header):  # Analyze: pixdim only (Nifti2Header is a Nifti1Header)
        aff = np.asarray(img.affine, dtype=np.float64)
        problem = _affine_problem(aff)
        if problem:
            raise InputError(path, f"unusable geometry: the pixdim voxel sizes {problem}")
        return aff
    forms: list[tuple[str, np.ndarray | None, str | None]] = []
    s_code, q_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if s_code > 0:
        forms.append(("sform", hdr.get_sform(), None))
    if q_code > 0:
        try:
            forms.append(("qform", hdr.get_qform(), None))
        except ValueError:  # quaternion b, c, d of norm > 1
            forms.append(("qform", None, "has an invalid quaternion"))
    if not forms:
        aff = np.asarray(hdr.get_base_affine(), dtype=np.float64)
        problem = _affine_problem(aff)
        if problem:
            raise InputError(path, f"unusable geometry: no sform/qform, and the pixdim voxel sizes {problem}")
        return aff
    checked = [(name, aff, why or _affine_problem(np.asarray(aff, dtype=np.float64))) for name, aff, why in forms]
    good = [(name, np.asarray(aff, dtype=np.float64)) for name, aff, why in checked if why is None]
    if not good:
        raise InputError(path, "unusable geometry: " + "; ".join(f"the {name} {why}" for name, _, why in checked))
    name, aff = good[0]
    for bad, _, why in checked:
        if why is not None:
            logger.warning("%s: the %s %s; using the %s instead", path, bad, why, name)
            # outputs inherit this header (medcnn.save): leave only the good geometry in it
            if bad == "sform":
                hdr.set_sform(aff, code=q_code)
            else:
                hdr.set_qform(aff, code=0)
    return aff


def _nifti_voxels(path: Path, img) -> np.ndarray | None:
    """The stored (unscaled) voxels of a NIfTI image, or ``None`` to let nibabel read them.

    A single-file ``.nii.gz`` is inflated straight into its final array (no intermediate buffers,
    so several times faster than nibabel's reader). Uncompressed files use nibabel's memory map; everything else (Analyze pairs,
    ``.img.gz``) nibabel's reader.
    """
    from nibabel.arrayproxy import ArrayProxy

    proxy = img.dataobj
    if not isinstance(proxy, ArrayProxy):
        return None
    if not path.name.lower().endswith(".nii.gz"):
        return proxy.get_unscaled() if path.name.lower().endswith(".nii") else None
    image_file = img.file_map["image"].filename
    if image_file is None or Path(image_file).resolve() != path.resolve():
        return None
    dtype = np.dtype(proxy.dtype)
    shape = tuple(int(s) for s in proxy.shape)
    order = getattr(proxy, "order", "F")
    flat = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
    _gunzip_into(path, memoryview(flat).cast("B"), int(proxy.offset))
    # Fortran order: the first index varies fastest; a transposed view of the C-order buffer
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


class _NoFastZlib(Exception):
    """Placeholder for ``isal_zlib.error`` when python-isal is not installed (never raised)."""


_FastZlibError = _fast_zlib.error if _fast_zlib is not None else _NoFastZlib


def _gunzip_into(path: Path, out: memoryview, skip: int, chunk: int = 1 << 20) -> None:
    """Inflate gzip ``path`` (one or several members) into ``out``, after discarding ``skip`` bytes.

    The last member's CRC-32 trailer is checked too, which nibabel's reader does not do: corrupt
    deflate data is refused instead of loaded as garbage. Inflate computes the CRC as it goes, so
    for a NIfTI file (voxels end the stream) this costs reading the 8 trailer bytes. Input is read in
    1 MiB chunks, which stay in cache (larger ones are slower).

    Raises:
        EOFError: the stream ends before ``out`` is full (truncated file).
        zlib.error, isal_zlib.error, OSError: corrupt data (including a CRC mismatch).
    """
    zmod = _fast_zlib if _fast_zlib is not None else zlib
    need = skip + len(out)
    done = 0  # decompressed bytes so far (including the skipped ones)
    dec = zmod.decompressobj(31)  # wbits 31: gzip wrapper
    data = b""
    with open(path, "rb", buffering=0) as fh:

        def more() -> bytes:
            got = fh.read(chunk)
            if not got and done < need:
                raise EOFError(f"compressed stream ended after {max(done - skip, 0)} of {len(out)} bytes of voxel data")
            if not got:
                raise EOFError("compressed stream ended before its gzip trailer (CRC)")
            return got

        while done < need:
            data = data or more()
            piece = dec.decompress(data, need - done)
            n = len(piece)
            if n:
                lo = done - skip
                if lo >= 0:
                    out[lo : lo + n] = piece
                elif lo + n > 0:
                    out[: lo + n] = piece[-lo:]
                done += n
            if dec.eof:  # end of a gzip member: what follows may be another member
                if done >= need:
                    return  # the last member ended with the voxels: its CRC has been checked
                data = dec.unused_data
                dec = zmod.decompressobj(31)
            else:
                data = dec.unconsumed_tail
        # voxels complete: read on to the member's end to check its CRC. Inflated bytes past the
        # voxels (corrupt data, or an odd writer) are discarded, up to the voxels' own size; past
        # that the rest is left unchecked, as nibabel leaves all of it
        extra = 0
        while not dec.eof and extra <= len(out):
            data = data or more()
            extra += len(dec.decompress(data, chunk))
            data = dec.unconsumed_tail


def _apply_scaling(data: np.ndarray, proxy) -> np.ndarray:
    """The NIfTI scaling as nibabel applies it (``ArrayProxy._get_scaled``), on already read voxels."""
    from nibabel.volumeutils import apply_read_scaling

    slope = np.asanyarray(proxy.slope)
    inter = np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return apply_read_scaling(data, slope, inter)


def _check_declared_size(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a header that promises more data than the file can hold (truncation / hostile header)."""
    need = int(np.prod(shape, dtype=np.float64)) * itemsize
    have = path.stat().st_size
    name = path.name.lower()
    compressed = name.endswith(".gz")
    if compressed and need > have * _MAX_GZIP_RATIO + 65536:
        raise InputError(
            path, f"header declares {shape} voxels ({need / 2**20:.0f} MiB) but the compressed file has only {have} bytes: truncated or corrupt"
        )
    if not compressed and name.endswith(".nii") and need > have:
        raise InputError(path, f"header declares {need} bytes of voxels but the file has {have}: truncated")


def read_itk(path: Path, max_memory: MemoryLimit = None) -> RawImage:
    """Read NRRD / MetaImage (and anything else SimpleITK reads) with SimpleITK.

    The header is read first (``ReadImageInformation``) and checked against ``max_memory``.
    """
    import SimpleITK as sitk


    _check_nonempty(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        if any(s == 0 for s in size):
            raise InputError(path, f"image has no voxels (size {size})")
        check_memory(path, (*size, reader.GetNumberOfComponents()), _itk_itemsize(reader.GetPixelID()), max_memory)
        img = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(path, f"not readable by SimpleITK ({_short(exc, itk=True)})") from None
    dim = img.GetDimension()
    ncomp = img.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(img)
    if arr.dtype.kind == "c":
        raise InputError(path, "complex-valued images are not supported")
    if dim == 2:
        arr = np.moveaxis(arr, -1, 0) if ncomp > 1 else arr[None]
        origin, spacing, direction = img.GetOrigin(), img.GetSpacing(), img.GetDirection()
        # our 2D axes are (rows, cols) = ITK (j, i): swap the two index axes
        aff = itk_to_affine(origin, spacing, direction)
        aff = aff[:, [1, 0, 2, 3]]
        src = {"format": "itk", "itk": {"origin": origin, "spacing": spacing, "direction": direction}}
        return RawImage(np.ascontiguousarray(arr), aff, 2, src)
    if dim == 4:
        if ncomp > 1:
            raise InputError(path, "4D vector images are not supported")
        # (T, Z, Y, X) -> (T, X, Y, Z); geometry of the first three axes
        arr = np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)))
        o, s, dmat = img.GetOrigin(), img.GetSpacing(), np.asarray(img.GetDirection()).reshape(4, 4)
        aff = itk_to_affine(o[:3], s[:3], dmat[:3, :3].ravel())
        src = {"format": "itk"}
        return RawImage(arr, aff, 3, src)
    if dim != 3:
        raise InputError(path, f"image is {dim}D; expected a 2D image or 3D volume")
    arr = np.moveaxis(arr, -1, 0) if ncomp > 1 else arr[None]
    arr = np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)))
    aff = itk_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    segments = reader_segments(reader)  # a Slicer .seg.nrrd: its segment names and colours
    return RawImage(arr, aff, 3, {"format": "itk", **({"segments": segments} if segments else {})})


def read_image2d(path: Path, max_memory: MemoryLimit = None) -> RawImage:
    """Read PNG/JPEG (8 or 16 bit, grey or colour) with Pillow as ``(C, rows, cols)``.

    The size in the file header is checked against ``max_memory`` (and Pillow's own
    decompression-bomb limit) before the pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    _check_nonempty(path)
    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            check_memory(path, (im.size[1], im.size[0], bands), 2 if im.mode.startswith("I;16") else 4, max_memory)
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(im, dtype=np.uint16)
            elif mode in ("I", "F"):
                arr = np.asarray(im)
            elif mode in ("1", "L", "P", "LA", "PA"):
                if mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
                    mode = im.mode
                if mode in ("1", "L", "LA"):
                    im = im.convert("L")
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
    except MedcnnError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not a readable PNG/JPEG image") from None
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"image header claims too many pixels, refused as a possible decompression bomb ({_short(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"image file is truncated or corrupt ({_short(exc)})") from None
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        chans = np.moveaxis(arr, -1, 0)
        if chans.shape[0] == 3 and (chans[0] == chans[1]).all() and (chans[1] == chans[2]).all():
            chans = chans[:1]  # grey stored as RGB
        arr = chans
    else:
        arr = arr[None]
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(path, "image has no pixels")
    return RawImage(np.ascontiguousarray(arr), affine_2d(), 2, {"format": "image2d"})


def read_dicom(path: Path, series: str | int | None = None, max_memory: MemoryLimit = None) -> RawImage:
    """Read a DICOM file or series folder (see :mod:`medcnn.io.dicom`)."""
    if path.is_dir():
        arr, aff, info = dicom.read_series(path, series, max_memory=max_memory)
    else:
        _check_nonempty(path)
        arr, aff, info = dicom.read_file(path, max_memory=max_memory)
    sd = int(info.pop("spatial_dims", 3 if arr.ndim == 4 else 2))
    info["format"] = "dicom"
    return RawImage(arr, aff, sd, info)


def read_raw(
    path: str | Path, series: str | int | None = None, max_memory: MemoryLimit = None, *, defer_scaling: bool = False
) -> RawImage:
    """Read any supported file or folder without resampling.

    Args:
        path: file or DICOM folder.
        series: DICOM series to pick in a folder holding several (UID or index).
        max_memory: memory limit (bytes or ``"8G"``; see :mod:`medcnn.io.memory`), checked
            against the header before any voxel is read.
        defer_scaling: NIfTI only: leave the header's slope/intercept to the caller
            (``RawImage.scaling``) instead of applying them.

    Raises:
        InputError: for every failure, with the path and the reason.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "nifti":
        raw = read_nifti(path, max_memory, defer_scaling=defer_scaling)
    elif fmt == "itk":
        raw = read_itk(path, max_memory)
    elif fmt == "image2d":
        raw = read_image2d(path, max_memory)
    else:
        raw = read_dicom(path, series, max_memory)
    raw.source.setdefault("format", fmt)
    return raw


def _itk_itemsize(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type (8 when it cannot be told)."""
    import SimpleITK as sitk

    m = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(pixel_id))
    return max(1, int(m.group(1)) // 8) if m else 8


def _short(exc: BaseException, itk: bool = False) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if itk:  # ITK messages are multi-line with C++ file names; keep the useful line
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        useful = [ln for ln in lines if "Description:" in ln or "Could not create IO object" in ln]
        msg = (useful[-1] if useful else lines[-1]) if lines else msg
        msg = msg.replace("Description:", "").strip()
    msg = msg.splitlines()[0] if msg else msg
    return msg[:200]


def header_bytes_to_nifti_header(block: bytes, header_class: str):
    """Rebuild a nibabel header from the bytes kept in ``source['header']``."""
    import nibabel as nib

    cls = {"Nifti1Header": nib.Nifti1Header, "Nifti2Header": nib.Nifti2Header}.get(header_class, nib.Nifti1Header)
    return cls.from_fileobj(io.BytesIO(block))
