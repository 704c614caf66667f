"""DICOM reading on top of pydicom (headers, single/multi-frame pixels) and SimpleITK (series).

* A folder is scanned with pydicom (headers only), grouped by SeriesInstanceUID; non-image objects
  (SR, RTSTRUCT, presentation states, ...) are ignored. Several image series in one folder are
  refused with a message listing them (pass ``series=`` to pick one, or let the pipelines split
  them into cases with :func:`list_series`).
* A series is checked (one orientation, one matrix size, evenly spaced slices, no missing slice)
  and read with SimpleITK's GDCM series reader, which sorts nothing itself: medcnn sorts the files
  along the slice normal.
* A single file is read with pydicom: projection radiographs (CR, DX, MG, ...) become 2D
  ``(rows, cols)`` images with modality rescale, then VOI LUT or window, then MONOCHROME1
  inversion so that higher always means denser; cross-sectional files (CT/MR slices, enhanced
  multi-frame) become 3D volumes with their patient geometry.
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
    "SamplesPerPixel", "BitsAllocated",
]


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
    """

    uid: str
    files: list[Path] = field(default_factory=list)
    modality: str = ""
    description: str = ""
    number: int | None = None
    unreadable: list[Path] = field(default_factory=list)

    def label(self) -> str:
        """One-line description used in messages (no patient data)."""
        desc = f" '{self.description}'" if self.description else ""
        num = f"#{self.number} " if self.number is not None else ""
        return f"{num}{self.modality or '?'}{desc} ({len(self.files)} files, uid {self.uid})"


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
        info = series.get(uid)
        if info is None:
            num = ds.get("SeriesNumber")
            info = SeriesInfo(
                uid=uid,
                modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "")),
                number=int(num) if num not in (None, "") else None,
            )
            series[uid] = info
        info.files.append(f)
    if not series:
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
        for info in series.values():
            info.unreadable = list(broken)
    return sorted(series.values(), key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))


def select_series(folder: Path, series: str | int | None) -> SeriesInfo:
    """The one series to read from ``folder``: the only one, or the one named by UID or index."""
    found = list_series(folder)
    if series is None:
        if len(found) == 1:
            return found[0]
        listing = "; ".join(f"[{i}] {s.label()}" for i, s in enumerate(found))
        raise InputError(
            folder, f"folder holds {len(found)} DICOM series, pick one with series=UID or index: {listing}"
        )
    if isinstance(series, int):
        if not 0 <= series < len(found):
            raise InputError(folder, f"series index {series} out of range (folder holds {len(found)} series)")
        return found[series]
    for s in found:
        if s.uid == str(series):
            return s
    raise InputError(folder, f"no series with SeriesInstanceUID {series}")


def _floats(v: Iterable | None) -> np.ndarray | None:
    if v is None:
        return None
    try:
        return np.asarray([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _pixel_spacing(ds) -> np.ndarray | None:
    """(row spacing, column spacing) in mm from PixelSpacing, else ImagerPixelSpacing."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(ds.get(tag))
        if ps is not None and len(ps) == 2 and (ps > 0).all():
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
        ds = _read_header(f)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(f, f"multi-frame file ({frames} frames) inside a multi-file series; load it on its own")
        ipp = _floats(ds.get("ImagePositionPatient"))
        iop = _floats(ds.get("ImageOrientationPatient"))
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            raise InputError(f, "slice lacks ImagePositionPatient/ImageOrientationPatient; cannot build a volume")
        rows.append((f, ipp, iop, (int(ds.Rows), int(ds.Columns))))
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
        with ``modality``, ``series_uid`` and the ITK geometry.
    """
    import SimpleITK as sitk

    info = select_series(folder, series)
    if len(info.files) == 1:
        return read_file(info.files[0], max_memory=max_memory)
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
    return arr, affine, {"format": "dicom", "modality": info.modality, "series_uid": info.uid, "n_files": len(files)}


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
    return vol, affine, {"format": "dicom", "modality": info.modality, "series_uid": info.uid, "n_files": len(files)}


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


def _frame_geometry(ds) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(IOP, PixelSpacing, per-frame IPPs) of an enhanced multi-frame dataset (None when absent)."""

    def _first(seq_owner, seq_name, attr):
        seq = seq_owner.get(seq_name)
        if seq:
            return _floats(seq[0].get(attr))
        return None

    shared = ds.get("SharedFunctionalGroupsSequence")
    shared0 = shared[0] if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    iop = _first(shared0, "PlaneOrientationSequence", "ImageOrientationPatient") if shared0 is not None else None
    ps = _first(shared0, "PixelMeasuresSequence", "PixelSpacing") if shared0 is not None else None
    if iop is None and per:
        iop = _first(per[0], "PlaneOrientationSequence", "ImageOrientationPatient")
    if ps is None and per:
        ps = _first(per[0], "PixelMeasuresSequence", "PixelSpacing")
    ipps = None
    if per:
        pos = [_first(fg, "PlanePositionSequence", "ImagePositionPatient") for fg in per]
        if all(p is not None and len(p) == 3 for p in pos):
            ipps = np.stack(pos)
    if iop is None:
        iop = _floats(ds.get("ImageOrientationPatient"))
    if ps is None:
        ps = _floats(ds.get("PixelSpacing"))
    return iop, ps, ipps


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
        ["spatial_dims"] == 2``); everything else gives ``(C, I, J, K)`` volumes in ITK index order.

    Raises:
        InputError: not DICOM, no pixel data, undecodable pixels.
    """
    import pydicom
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
    try:
        dims = (int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1))
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "DICOM image lacks valid Rows/Columns/NumberOfFrames attributes") from None
    check_memory(path, dims, max(1, bits // 8), max_memory, what="DICOM image")
    try:
        px = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder missing, truncated pixel data...
        raise InputError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    modality = str(ds.get("Modality", "")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    info: dict = {"format": "dicom", "modality": modality, "series_uid": str(ds.get("SeriesInstanceUID", ""))}
    has_geometry = "ImagePositionPatient" in ds or "SharedFunctionalGroupsSequence" in ds
    if frames == 1 and (modality in PROJECTION_MODALITIES or not has_geometry):
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
    if frames > 1:
        slope, icpt = _enhanced_rescale(ds)
        vol = np.asarray(px, dtype=np.float32) * slope + icpt  # (F, rows, cols)
        iop, ps, ipps = _frame_geometry(ds)
        if iop is None or len(iop) != 6:
            iop = np.array([1.0, 0, 0, 0, 1.0, 0])
        normal = np.cross(iop[:3], iop[3:])
        if ipps is not None:
            order = np.argsort(ipps @ normal, kind="stable")
            vol, ipps = vol[order], ipps[order]
            first, last = ipps[0], ipps[-1]
        else:
            first, last = _floats(ds.get("ImagePositionPatient")), None
            if first is None:
                first = np.zeros(3)
        geo = pydicom.Dataset()
        geo.ImageOrientationPatient = list(iop)
        if ps is not None:
            geo.PixelSpacing = list(ps)
        sbs = ds.get("SpacingBetweenSlices")
        affine = _patient_affine(geo, first, last, frames, spacing_k=float(sbs) if sbs else None)
        arr = np.transpose(vol, (2, 1, 0))[None]
    else:
        vol = np.asarray(apply_modality_lut(px, ds), dtype=np.float32)  # (rows, cols)
        ipp = _floats(ds.get("ImagePositionPatient"))
        affine = _patient_affine(ds, ipp if ipp is not None else np.zeros(3), None, 1)
        arr = np.transpose(vol, (1, 0))[None, :, :, None]
    info["spatial_dims"] = 3
    return np.ascontiguousarray(arr), affine, info
