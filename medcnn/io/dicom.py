"""DICOM reading on top of pydicom (headers, single/multi-frame pixels) and SimpleITK (series).

* A folder is scanned with pydicom (headers only), grouped by SeriesInstanceUID; non-image objects
  (SR, RTSTRUCT, presentation states, ...) are ignored. Projection images (single-frame CR, DX,
  MG, XA, ..., or files without patient geometry) are never grouped: each is its own entry, even
  when several share a SeriesInstanceUID (PA + lateral). Several image series in one folder are
  refused with a message listing them (pass ``series=`` to pick one, or let the pipelines split
  them into cases with :func:`list_series`).
* A series is checked slice by slice (finite position, unit orthogonal orientation, pixel data as
  long as Rows x Columns x BitsAllocated promise; one orientation, one matrix size, evenly spaced
  slices, no missing slice) and read with SimpleITK's GDCM series reader, which sorts nothing
  itself: medcnn sorts the files along the slice normal.
* A single file is read with pydicom: projection radiographs (CR, DX, MG, ...) become 2D
  ``(rows, cols)`` images with modality rescale, then VOI LUT or window, then MONOCHROME1
  inversion so that higher always means denser; cross-sectional files (CT/MR slices, enhanced
  multi-frame and single-frame SEG with their functional groups, RT Dose with its
  GridFrameOffsetVector and DoseGridScaling) become 3D volumes with their patient geometry; frames
  that are not one evenly spaced stack are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcnn.errors import InputError
from medcnn.io.geometry import affine_2d, itk_to_affine
from medcnn.io.memory import MemoryLimit, check_memory

logger = logging.getLogger(__name__)

#: modalities that are projection images (2D) rather than cross sections
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX", "RG", "DR"})
_HEADER_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "Rows", "Columns",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "NumberOfFrames", "InstanceNumber",
    "SamplesPerPixel", "BitsAllocated", "SharedFunctionalGroupsSequence",
]
#: what a pixel-data length check needs besides the header tags
_PIXEL_TAGS = ["PixelData", "PhotometricInterpretation", "BitsStored", "PixelRepresentation"]
#: modalities whose images are cross sections even when a file lacks its patient geometry (it is then refused)
_CROSS_SECTIONAL = frozenset({"CT", "MR", "PT", "NM"})
#: direction cosines of ImageOrientationPatient must be unit length and orthogonal within this
_ORIENTATION_TOL = 1e-2


@dataclass
class SeriesInfo:
    """One image series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        files: image files of the series (unsorted).
        modality: DICOM Modality (``""`` if absent).
        description: SeriesDescription (``""`` if absent).
        number: SeriesNumber or ``None``.
        unreadable: DICOM files of the same folder that could not be parsed (they may be slices
            of this series: named when the series turns out to miss slices).
        projection: a single projection image (radiograph, or a file without patient geometry):
            such files are never grouped into a volume, even when they share a SeriesInstanceUID.
    """

    uid: str
    files: list[Path] = field(default_factory=list)
    modality: str = ""
    description: str = ""
    number: int | None = None
    unreadable: list[Path] = field(default_factory=list)
    projection: bool = False

    def label(self) -> str:
        """One-line description used in messages (no patient data)."""
        desc = f" '{self.description}'" if self.description else ""
        num = f"#{self.number} " if self.number is not None else ""
        what = self.files[0].name if self.projection and self.files else f"{len(self.files)} files"
        return f"{num}{self.modality or '?'}{desc} ({what}, uid {self.uid})"


def is_dicom_file(path: Path) -> bool:
    """True if ``path`` starts with a DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dcmread(path: Path, **kwargs):
    """``pydicom.dcmread`` that also accepts files without the 128-byte preamble.

    Raises:
        pydicom.errors.InvalidDicomError: the file is not DICOM at all.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPClassUID" not in ds and "Modality" not in ds and "Rows" not in ds:
            raise
        return ds


def _read_header(path: Path):
    return dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)


def list_series(folder: str | Path, recursive: bool = True) -> list[SeriesInfo]:
    """Group the DICOM image files below ``folder`` by SeriesInstanceUID.

    Args:
        folder: a folder; hidden files skipped.
        recursive: also search sub-folders.

    Returns:
        Image series sorted by series number then UID. Non-DICOM files and DICOM objects
        without pixel data (SR, RTSTRUCT, ...) are skipped.

    Raises:
        InputError: ``folder`` has no readable DICOM image at all (the reason says what it found).
    """
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(folder, "folder is empty")
    series: dict[str, SeriesInfo] = {}
    single: list[SeriesInfo] = []  # projection images, one entry per file
    non_image: dict[str, int] = {}
    n_not_dicom = 0
    broken: list[Path] = []
    for f in files:
        try:
            ds = _read_header(f)
        except InvalidDicomError:
            n_not_dicom += 1
            continue
        except Exception as exc:  # noqa: BLE001 - any parse failure means "unreadable file"
            logger.debug("unreadable DICOM %s: %s", f, type(exc).__name__)
            broken.append(f)
            continue
        if "Rows" not in ds or "Columns" not in ds:
            if "Modality" not in ds and "SOPClassUID" not in ds:  # file meta only: cut short after the preamble
                logger.debug("truncated DICOM %s: no dataset after the file meta", f)
                broken.append(f)
                continue
            mod = str(ds.get("Modality", "unknown"))
            non_image[mod] = non_image.get(mod, 0) + 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
        if _is_projection(ds):  # radiographs (PA + lateral, one film in two syntaxes...) stay separate images
            single.append(SeriesInfo(uid=uid, files=[f], modality=str(ds.get("Modality", "")),
                                     description=str(ds.get("SeriesDescription", "")),
                                     number=_optional_int(ds, "SeriesNumber", f), projection=True))
            continue
        info = series.get(uid)
        if info is None:
            info = SeriesInfo(
                uid=uid,
                modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "")),
                number=_optional_int(ds, "SeriesNumber", f),
            )
            series[uid] = info
        info.files.append(f)
    found_series = [*series.values(), *single]
    if not found_series:
        parts = []
        if non_image:
            parts.append("only non-image DICOM objects (" + ", ".join(f"{v} {k}" for k, v in sorted(non_image.items())) + ")")
        if broken:
            parts.append(f"{len(broken)} unreadable DICOM file(s)")
        if n_not_dicom:
            parts.append(f"{n_not_dicom} non-DICOM file(s)")
        raise InputError(folder, "no DICOM image series found: " + "; ".join(parts or ["no files"]))
    if broken:
        logger.warning("%s: skipped %d unreadable DICOM file(s): %s", folder, len(broken), _names(broken))
        for info in found_series:
            info.unreadable = list(broken)
    return sorted(found_series, key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid, s.files[0].name))


def select_series(folder: Path, series: str | int | None) -> SeriesInfo:
    """The one series to read from ``folder``: the only one, or the one named by UID or index."""
    found = list_series(folder)
    if series is None:
        if len(found) == 1:
            return found[0]
        if all(s.projection for s in found):
            names = ", ".join(s.files[0].name for s in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
            raise InputError(
                folder,
                f"folder holds {len(found)} separate projection images (2D radiographs are not slices of a volume): "
                f"{names}; load each file on its own, or pick one with series=index",
            )
        listing = "; ".join(f"[{i}] {s.label()}" for i, s in enumerate(found))
        raise InputError(
            folder, f"folder holds {len(found)} DICOM series, pick one with series=UID or index: {listing}"
        )
    if isinstance(series, int):
        if not 0 <= series < len(found):
            raise InputError(folder, f"series index {series} out of range (folder holds {len(found)} series)")
        return found[series]
    matches = [s for s in found if s.uid == str(series)]
    if len(matches) > 1:
        raise InputError(
            folder,
            f"SeriesInstanceUID {series} holds {len(matches)} separate projection images "
            f"({_names([s.files[0] for s in matches], 10)}); load each file on its own, or pick one with series=index",
        )
    if matches:
        return matches[0]
    raise InputError(folder, f"no series with SeriesInstanceUID {series}")


def _floats(v: Iterable | None) -> np.ndarray | None:
    if v is None:
        return None
    try:
        return np.asarray([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _raw_text(ds, name: str) -> str:
    """The value of attribute ``name`` as text, for messages (works for values pydicom cannot convert)."""
    try:
        elem = ds.get_item(name, keep_deferred=True)
    except (KeyError, ValueError, TypeError):
        return "?"
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \0")
    return str(value)


def _int_attr(ds, name: str, default: int | None, path: Path) -> int | None:
    """An integer attribute (``default`` when absent or empty).

    Raises:
        InputError: the value is not one integer (e.g. NumberOfFrames ``'1A'``), naming ``path``.
    """
    try:
        value = ds.get(name)
        if value is None or value == "":
            return default
        if not float(value).is_integer():  # float() of a multi-valued element raises TypeError
            raise ValueError(value)
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(path, f"invalid {name} {_raw_text(ds, name)!r} (expected one integer)") from None


def _optional_int(ds, name: str, path: Path) -> int | None:
    """An integer attribute that may be broken without harm (SeriesNumber): ``None`` when not one integer."""
    try:
        return _int_attr(ds, name, None, path)
    except InputError as exc:
        logger.debug("%s", exc)
        return None


def _is_projection(ds) -> bool:
    """A single-frame projection image: a radiograph modality, or a file without any patient geometry."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return False  # refused with its reason when read
    if frames > 1 or "SharedFunctionalGroupsSequence" in ds:
        return False
    modality = str(ds.get("Modality", "")).upper()
    if modality in PROJECTION_MODALITIES:
        return True
    no_geometry = "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
    return no_geometry and modality not in _CROSS_SECTIONAL


def _checked_orientation(iop: np.ndarray | None, path: Path) -> np.ndarray:
    """ImageOrientationPatient as 6 floats: two finite, unit-length, orthogonal direction cosines.

    Raises:
        InputError: missing, not 6 numbers, NaN/Inf, not unit vectors or not orthogonal (naming ``path``).
    """
    if iop is None or len(iop) != 6:
        raise InputError(path, "ImageOrientationPatient is missing or not 6 numbers; cannot place the image")
    shown = "\\".join(f"{v:g}" for v in iop)
    if not np.isfinite(iop).all():
        raise InputError(path, f"ImageOrientationPatient {shown} is not finite (NaN/Inf)")
    row, col = iop[:3], iop[3:]
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1)) > _ORIENTATION_TOL:
        raise InputError(path, f"ImageOrientationPatient {shown} does not hold unit direction cosines")
    if abs(float(row @ col)) > _ORIENTATION_TOL:
        raise InputError(path, f"ImageOrientationPatient {shown}: the row and column directions are not orthogonal")
    return iop


def _checked_position(ipp: np.ndarray | None, path: Path, name: str = "ImagePositionPatient") -> np.ndarray:
    """ImagePositionPatient as 3 finite floats.

    Raises:
        InputError: missing, not 3 numbers or NaN/Inf (naming ``path``).
    """
    if ipp is None or len(ipp) != 3:
        raise InputError(path, f"{name} is missing or not 3 numbers; cannot place the image")
    if not np.isfinite(ipp).all():
        raise InputError(path, f"{name} {'/'.join(f'{v:g}' for v in ipp)} is not finite (NaN/Inf)")
    return ipp


def _check_pixel_length(ds, path: Path) -> None:
    """Refuse native pixel data shorter than Rows x Columns x frames x samples x BitsAllocated promise.

    ``ds`` must be read with the pixel data deferred (``defer_size``), so that only its length is known.
    Encapsulated (compressed) data are left to the decoder.
    """
    from pydicom.pixels.utils import get_expected_length

    try:
        elem = ds.get_item("PixelData", keep_deferred=True)
    except KeyError:
        elem = None
    if elem is None:
        raise InputError(path, "slice has no pixel data")
    length = getattr(elem, "length", None)
    if length is None:  # already read
        length = len(elem.value or b"")
    if length == 0xFFFFFFFF:  # undefined length: encapsulated (compressed) frames
        return
    try:
        need = int(get_expected_length(ds, "bytes"))
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise InputError(path, f"invalid image attributes ({exc})") from None
    if length < need:
        raise InputError(
            path,
            f"header says {int(ds.Rows)}x{int(ds.Columns)} pixels of {int(ds.BitsAllocated)} bits ({need} bytes) "
            f"but the pixel data hold {length} bytes: Rows/Columns/BitsAllocated do not match the pixel data",
        )


def _pixel_spacing(ds) -> np.ndarray | None:
    """(row spacing, column spacing) in mm from PixelSpacing, else ImagerPixelSpacing (finite, > 0)."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(ds.get(tag))
        if ps is not None and len(ps) == 2 and np.isfinite(ps).all() and (ps > 0).all():
            return ps
    return None


def _sort_series(info: SeriesInfo, folder: Path) -> tuple[list[Path], float]:
    """Sort the files of a series along the slice normal and check the spacing.

    Returns:
        ``(sorted_files, slice_spacing_mm)``.

    Raises:
        InputError: mixed orientations/matrix sizes, duplicate or missing slices, uneven spacing.
    """
    rows = []
    for f in info.files:
        # every slice is checked: SimpleITK would zero-pad a slice whose header promises more pixels than it holds
        ds = dcmread(f, defer_size=256, specific_tags=[*_HEADER_TAGS, *_PIXEL_TAGS])
        frames = _int_attr(ds, "NumberOfFrames", 1, f)
        if frames > 1:
            raise InputError(f, f"multi-frame file ({frames} frames) inside a multi-file series; load it on its own")
        ipp = _floats(ds.get("ImagePositionPatient"))
        iop = _floats(ds.get("ImageOrientationPatient"))
        if ipp is None or iop is None:
            raise InputError(f, "slice lacks ImagePositionPatient/ImageOrientationPatient; cannot build a volume")
        ipp, iop = _checked_position(ipp, f), _checked_orientation(iop, f)
        size = (_int_attr(ds, "Rows", 0, f), _int_attr(ds, "Columns", 0, f))
        _check_pixel_length(ds, f)
        rows.append((f, ipp, iop, size))
    iop0 = rows[0][2]
    size0 = rows[0][3]
    for f, _, iop, size in rows:
        if np.abs(iop - iop0).max() > 1e-3:
            raise InputError(folder, f"series {info.uid} mixes slice orientations ({f.name} differs)")
        if size != size0:
            raise InputError(folder, f"series {info.uid} mixes matrix sizes {size0} and {size} ({f.name})")
    normal = np.cross(iop0[:3], iop0[3:])
    pos = np.array([float(r[1] @ normal) for r in rows])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    files = [rows[i][0] for i in order]
    if len(files) == 1:
        return files, 1.0
    gaps = np.diff(pos)
    if (gaps < 1e-3).any():
        i = int(np.flatnonzero(gaps < 1e-3)[0])
        raise InputError(folder, f"series {info.uid} has two slices at the same position ({files[i].name}, {files[i + 1].name})")
    step = float(np.median(gaps))
    if (gaps > 1.5 * step).any():
        i = int(np.flatnonzero(gaps > 1.5 * step)[0])
        missing = int(round(gaps[i] / step)) - 1
        hint = f"; unreadable (corrupt or truncated) file(s) in the folder: {_names(info.unreadable)}" if info.unreadable else ""
        raise InputError(
            folder,
            f"series {info.uid} is missing {missing} slice(s) between {files[i].name} and {files[i + 1].name} "
            f"(gap {gaps[i]:.2f} mm, spacing {step:.2f} mm){hint}",
        )
    if np.abs(gaps - step).max() > max(0.01 * step, 1e-2):
        raise InputError(
            folder,
            f"series {info.uid} has uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm); "
            "resample it or load the slices as separate images",
        )
    return files, step


def _names(paths: list[Path], n: int = 3) -> str:
    """``a.dcm, b.dcm, c.dcm and 4 more``."""
    shown = ", ".join(p.name for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def read_series(folder: Path, series: str | int | None = None, max_memory: MemoryLimit = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a DICOM series folder as a volume.

    The volume's size (rows x columns x files, from the headers) is checked against
    ``max_memory`` (see :mod:`medcnn.io.memory`) before any pixel is read.

    Returns:
        ``(array, affine, info)`` with ``array`` shaped ``(C, I, J, K)`` in ITK index order
        (I = columns, J = rows, K = slices sorted along the normal), the RAS affine, and a dict
        with ``modality``, ``series_uid``, ``n_files`` and ``files`` (the slice files in the order
        of K, which a DICOM Segmentation of the volume references).
    """
    import SimpleITK as sitk

    info = select_series(folder, series)
    if len(info.files) == 1:
        arr, affine, one = read_file(info.files[0], max_memory=max_memory)
        return arr, affine, {**one, "files": [str(info.files[0])]}
    files, _ = _sort_series(info, folder)
    h = _read_header(files[0])
    check_memory(folder, (int(h.Rows), int(h.Columns), len(files), int(h.get("SamplesPerPixel", 1) or 1)),
                 max(1, int(h.get("BitsAllocated", 16) or 16) // 8), max_memory, what="DICOM series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        logger.debug("SimpleITK failed on %s: %s; falling back to pydicom", folder, exc)
        return _read_series_pydicom(files, folder, info)
    arr = sitk.GetArrayFromImage(img)  # (K, J, I[, C])
    arr = _itk_array_to_channel_first(arr, img.GetNumberOfComponentsPerPixel(), 3)
    affine = itk_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    return arr, affine, {"format": "dicom", "modality": info.modality, "series_uid": info.uid, "n_files": len(files),
                         "files": [str(f) for f in files]}


def _itk_array_to_channel_first(arr: np.ndarray, ncomp: int, ndim: int) -> np.ndarray:
    """SimpleITK numpy (reversed spatial[, comp]) -> (C, *spatial) in our axis order."""
    if ncomp > 1:
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    if ndim == 3:
        return np.ascontiguousarray(np.transpose(arr, (0, 3, 2, 1)))
    return arr  # 2D: (rows, cols) is numpy order already


def _read_series_pydicom(files: list[Path], folder: Path, info: SeriesInfo) -> tuple[np.ndarray, np.ndarray, dict]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        try:
            px = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise InputError(f, f"cannot decode pixel data ({exc})") from None
        slices.append(np.asarray(apply_modality_lut(px, ds), dtype=np.float32))
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    vol = np.stack(slices, axis=-1)  # (rows, cols, K)
    vol = np.transpose(vol, (1, 0, 2))[None]
    ipp = [_floats(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient) for f in (files[0], files[-1])]
    affine = _patient_affine(ds0, ipp[0], ipp[1], len(files))
    return vol, affine, {"format": "dicom", "modality": info.modality, "series_uid": info.uid, "n_files": len(files),
                         "files": [str(f) for f in files]}


def _patient_affine(ds, first_ipp: np.ndarray, last_ipp: np.ndarray | None, n: int, spacing_k: float | None = None) -> np.ndarray:
    """RAS affine for index order (col, row, slice) from DICOM patient geometry."""
    iop = _floats(ds.get("ImageOrientationPatient"))
    ps = _pixel_spacing(ds)
    if iop is None or len(iop) != 6:
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    if ps is None or len(ps) != 2:
        ps = np.array([1.0, 1.0])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if last_ipp is not None and n > 1:
        step_vec = (last_ipp - first_ipp) / (n - 1)
    else:
        dz = spacing_k or float(ds.get("SpacingBetweenSlices", 0) or 0) or float(ds.get("SliceThickness", 1) or 1)
        step_vec = normal * dz
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # i: along a row = next column
    lps[:3, 1] = col_dir * ps[0]  # j: along a column = next row
    lps[:3, 2] = step_vec
    lps[:3, 3] = first_ipp if first_ipp is not None else 0.0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _voi_range(ds, voi_applied: str) -> tuple[float, float] | None:
    """Output range of the VOI step (PS3.3 C.11.2), used to invert MONOCHROME1 data-independently."""
    if voi_applied == "lut":
        desc = ds.VOILUTSequence[0].LUTDescriptor
        return 0.0, float(2 ** int(desc[2]) - 1)
    if voi_applied == "window":
        bits = int(ds.get("BitsStored", 16))
        if ds.get("ModalityLUTSequence"):
            return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        lo, hi = (0.0, 2.0**bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
        slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and icpt is not None:
            lo, hi = lo * float(slope) + float(icpt), hi * float(slope) + float(icpt)
        return float(lo), float(hi)
    return None


def radiograph_pixels(ds, px: np.ndarray, path: Path) -> tuple[np.ndarray, dict]:
    """Display-ready radiograph: modality rescale -> VOI LUT or window -> MONOCHROME1 inversion.

    Args:
        ds: the pydicom dataset.
        px: stored pixel array ``(rows, cols)``.
        path: file, for messages.

    Returns:
        ``(image, info)``: float32 ``(rows, cols)`` where higher means denser (bone bright,
        lungs dark), and what was applied.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        arr = apply_modality_lut(px, ds).astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - malformed rescale / modality LUT
        raise InputError(path, f"invalid modality LUT / rescale attributes ({exc})") from None
    voi = "none"
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        voi = "lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        voi = "window"
    if voi != "none":
        try:
            if voi == "lut" and np.array_equal(arr, np.round(arr)):
                arr = arr.astype(np.int64)  # LUTs are indexed by integer modality values
            arr = np.asarray(apply_voi_lut(arr, ds, index=0, prefer_lut=True), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - invalid window/LUT: show the modality values instead
            logger.warning("%s: ignoring invalid VOI LUT/window (%s)", path, exc)
            voi = "none"
    # MONOCHROME1 stores dense = dark: invert once. (DX requires Presentation LUT Shape INVERSE with
    # MONOCHROME1, which describes that same inversion, not a second one.) A MONOCHROME2 image with
    # Presentation LUT Shape INVERSE is displayed inverted too.
    shape = str(ds.get("PresentationLUTShape", "")).upper()
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
        rng = _voi_range(ds, voi)
        lo, hi = rng if rng is not None else (float(arr.min()), float(arr.max()))
        arr = (lo + hi) - arr
    return arr.astype(np.float32), {"photometric": photometric, "voi": voi}


def _frame_geometry(ds) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, float | None]:
    """(IOP, PixelSpacing, per-frame IPPs ``(F, 3)``, slice spacing) of an enhanced multi-frame dataset.

    Each comes from the shared functional groups, else the first frame's, else the top-level
    attribute; ``None`` when absent. The slice spacing is SpacingBetweenSlices, else SliceThickness.
    """

    def _first(seq_owner, seq_name, attr):
        seq = seq_owner.get(seq_name) if seq_owner is not None else None
        if seq:
            return _floats(seq[0].get(attr))
        return None

    shared = ds.get("SharedFunctionalGroupsSequence")
    shared0 = shared[0] if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    per0 = per[0] if per else None

    def _lookup(seq_name: str, attr: str) -> np.ndarray | None:
        for owner in (shared0, per0):
            v = _first(owner, seq_name, attr)
            if v is not None:
                return v
        return _floats(ds.get(attr))

    iop = _lookup("PlaneOrientationSequence", "ImageOrientationPatient")
    ps = _lookup("PixelMeasuresSequence", "PixelSpacing")
    dz = None
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        v = _lookup("PixelMeasuresSequence", attr)
        if v is not None and len(v) == 1 and np.isfinite(v[0]) and v[0] > 0:
            dz = float(v[0])
            break
    ipps = None
    if per:
        pos = [_first(fg, "PlanePositionSequence", "ImagePositionPatient") for fg in per]
        if all(p is not None and len(p) == 3 for p in pos):
            ipps = np.stack(pos)
    return iop, ps, ipps, dz


def _dose_scaling(ds, path: Path) -> float:
    """DoseGridScaling of an RT Dose (1 when absent): stored value x scaling = dose in DoseUnits."""
    raw = ds.get("DoseGridScaling")
    if raw in (None, ""):
        return 1.0
    g = _floats([raw])
    if g is None or not np.isfinite(g[0]) or g[0] <= 0:
        raise InputError(path, f"invalid DoseGridScaling {raw!r}")
    return float(g[0])


def _dose_positions(ds, iop: np.ndarray, frames: int, path: Path) -> np.ndarray:
    """Frame positions ``(F, 3)`` (LPS) of an RT Dose from its GridFrameOffsetVector (PS3.3 C.8.8.3.2).

    Offsets are along the slice normal from ImagePositionPatient when the first is 0; otherwise they
    are the frames' z coordinates, which the standard allows only for the identity orientation.
    """
    off = _floats(ds.get("GridFrameOffsetVector"))
    if off is None or not np.isfinite(off).all():
        raise InputError(path, "GridFrameOffsetVector is not a list of finite numbers")
    if len(off) != frames:
        raise InputError(path, f"GridFrameOffsetVector has {len(off)} values for {frames} frame(s)")
    ipp = _checked_position(_floats(ds.get("ImagePositionPatient")), path)
    if off[0] == 0:
        return ipp[None, :] + off[:, None] * np.cross(iop[:3], iop[3:])[None, :]
    if np.abs(iop - [1, 0, 0, 0, 1, 0]).max() > 1e-6:
        raise InputError(path, "GridFrameOffsetVector holds z coordinates (first value not 0) but the orientation is not axial")
    pos = np.repeat(ipp[None, :], frames, axis=0)
    pos[:, 2] = off
    return pos


def _check_frame_spacing(proj: np.ndarray, path: Path, source: str) -> None:
    """Refuse frames (sorted positions along the normal) that do not form one evenly spaced volume."""
    gaps = np.diff(proj)
    if (gaps < 1e-3).any():
        n_pos = 1 + int((gaps >= 1e-3).sum())
        raise InputError(
            path,
            f"{len(proj)} frames lie at only {n_pos} distinct positions ({source}): several frames per position "
            "(e.g. a SEG with several segments, or several phases) are not one volume",
        )
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > max(0.01 * step, 1e-2):
        raise InputError(
            path,
            f"frames are unevenly spaced along the slice normal ({source}: {gaps.min():.3g} to {gaps.max():.3g} mm); "
            "not one regular volume",
        )


def _volume_from_frames(ds, px: np.ndarray, frames: int, path: Path) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """Enhanced / multi-frame / RT Dose pixels as a volume.

    Args:
        ds: the dataset.
        px: decoded pixels ``(F, rows, cols)`` or ``(rows, cols)`` for one frame.
        frames: NumberOfFrames.
        path: file, for messages.

    Returns:
        ``(volume (I, J, K) float32, RAS affine, frame order)``; the order (stored frame of each
        slice ``k``) is ``None`` when the frames carry no positions.
    """
    import pydicom

    slope, icpt = _enhanced_rescale(ds)
    vol = np.asarray(px, dtype=np.float32).reshape(frames, *px.shape[-2:]) * slope + icpt  # (F, rows, cols)
    scaling = _dose_scaling(ds, path)
    if scaling != 1.0:
        vol *= np.float32(scaling)
    iop, ps, ipps, dz = _frame_geometry(ds)
    iop = np.array([1.0, 0, 0, 0, 1.0, 0]) if iop is None else _checked_orientation(iop, path)
    normal = np.cross(iop[:3], iop[3:])
    source = "per-frame ImagePositionPatient"
    if ipps is None and "GridFrameOffsetVector" in ds:
        ipps, source = _dose_positions(ds, iop, frames, path), "GridFrameOffsetVector"
    order = None
    if ipps is not None and len(ipps) != frames:
        if len(ipps) < frames:
            raise InputError(path, f"{source} gives {len(ipps)} positions for {frames} frames")
        logger.warning("%s: %d per-frame positions for %d frame(s); using the first %d", path, len(ipps), frames, frames)
        ipps = ipps[:frames]
    if ipps is not None:
        if not np.isfinite(ipps).all():
            raise InputError(path, f"{source} holds NaN/Inf positions")
        proj = ipps @ normal
        order = np.argsort(proj, kind="stable")
        vol, ipps = vol[order], ipps[order]
        if frames > 1:
            _check_frame_spacing(proj[order], path, source)
        first, last = ipps[0], (ipps[-1] if frames > 1 else None)
    else:
        ipp = _floats(ds.get("ImagePositionPatient"))
        first, last = (np.zeros(3) if ipp is None else _checked_position(ipp, path)), None
    geo = pydicom.Dataset()
    geo.ImageOrientationPatient = list(iop)
    if ps is not None:
        geo.PixelSpacing = list(ps)
    affine = _patient_affine(geo, first, last, frames, spacing_k=dz)
    return np.transpose(vol, (2, 1, 0)), affine, (None if order is None else [int(i) for i in order])


def _enhanced_rescale(ds) -> tuple[float, float]:
    for grp_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        grp = ds.get(grp_name)
        if grp:
            pvt = grp[0].get("PixelValueTransformationSequence")
            if pvt:
                return float(pvt[0].get("RescaleSlope", 1) or 1), float(pvt[0].get("RescaleIntercept", 0) or 0)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def read_file(path: Path, max_memory: MemoryLimit = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one DICOM file (single or multi-frame).

    Rows x columns x frames x samples from the header are checked against ``max_memory`` (see
    :mod:`medcnn.io.memory`) before the pixel data are decoded.

    Returns:
        ``(array, affine, info)``. Projection radiographs give ``(C, rows, cols)`` (``info
        ["spatial_dims"] == 2``); everything else gives ``(C, I, J, K)`` volumes in ITK index order
        (multi-frame files sorted along the slice normal: ``info["frame_order"][k]`` is the stored
        frame that became slice ``k``).

    Raises:
        InputError: not DICOM, no pixel data, undecodable pixels, invalid attributes (NumberOfFrames,
            orientation, position, RT Dose frame offsets), frames that are not one evenly spaced volume.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = dcmread(path)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, f"DICOM object has no image (Modality {ds.get('Modality', '?')}, e.g. a report or structure set)")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(path, "DICOM image lacks Rows/Columns attributes")
    frames = _int_attr(ds, "NumberOfFrames", 1, path)
    spp = _int_attr(ds, "SamplesPerPixel", 1, path)
    bits = _int_attr(ds, "BitsAllocated", 16, path)
    dims = (_int_attr(ds, "Rows", 0, path), _int_attr(ds, "Columns", 0, path), frames, spp)
    check_memory(path, dims, max(1, bits // 8), max_memory, what="DICOM image")
    try:
        px = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder missing, truncated pixel data...
        raise InputError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    modality = str(ds.get("Modality", "")).upper()
    info: dict = {"format": "dicom", "modality": modality, "series_uid": str(ds.get("SeriesInstanceUID", ""))}
    enhanced = "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds
    has_geometry = "ImagePositionPatient" in ds or enhanced
    if frames == 1 and not enhanced and (modality in PROJECTION_MODALITIES or not has_geometry):
        if spp > 1:  # colour secondary capture etc.: (rows, cols, 3) -> (3, rows, cols)
            arr = np.moveaxis(np.asarray(px, dtype=np.float32), -1, 0)
            extra = {"photometric": str(ds.get("PhotometricInterpretation", ""))}
        else:
            img, extra = radiograph_pixels(ds, px, path)
            arr = img[None]
        info.update(extra)
        ps = _pixel_spacing(ds)
        affine = affine_2d(*ps) if ps is not None and len(ps) == 2 else affine_2d()
        info["spatial_dims"] = 2
        return arr, affine, info
    if spp > 1:
        raise InputError(path, "colour cross-sectional DICOM volumes are not supported")
    if frames > 1 or enhanced or "GridFrameOffsetVector" in ds:
        vol, affine, order = _volume_from_frames(ds, px, frames, path)
        if order is not None:
            info["frame_order"] = order  # slice k of the volume is stored frame frame_order[k]
        arr = vol[None]
    else:
        vol = np.asarray(apply_modality_lut(px, ds), dtype=np.float32) * np.float32(_dose_scaling(ds, path))  # (rows, cols)
        ipp, iop = _floats(ds.get("ImagePositionPatient")), _floats(ds.get("ImageOrientationPatient"))
        if iop is not None:
            _checked_orientation(iop, path)
        ipp = np.zeros(3) if ipp is None else _checked_position(ipp, path)
        affine = _patient_affine(ds, ipp, None, 1)
        arr = np.transpose(vol, (1, 0))[None, :, :, None]
    info["spatial_dims"] = 3
    return np.ascontiguousarray(arr), affine, info
