"""Write a 2D radiograph as a DICOM CR or DX file (and read one back the reference way).

Files written here are plain, valid single-frame DICOM Part 10 files in Explicit VR Little
Endian: 16 bits allocated, ``bits_stored`` between 10 and 16, unsigned, one sample per pixel.
They carry what a correct reader needs to turn stored values into a display image:

1. the Modality LUT as *Rescale Slope/Intercept* (DX requires 1 and 0; CR may use others);
2. the VOI LUT as *Window Center/Width* (with *VOI LUT Function* LINEAR, LINEAR_EXACT or
   SIGMOID) or as a *VOI LUT Sequence* table;
3. *Photometric Interpretation*: for ``MONOCHROME1`` the stored values are inverted (the
   lowest value is displayed white), so the reader must invert after the VOI LUT.

:func:`reference_display` is that reader, used by the tests: rescale, then VOI, then invert
MONOCHROME1, then scale to ``[0, 1]`` so that higher always means brighter/denser.

Nothing here looks like a real person: the patient name is ``SYNTH^CASE`` unless the caller
passes another synthetic one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

logger = logging.getLogger(__name__)

#: SOP Class UIDs of the two radiography storage classes this module writes.
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
_MODALITIES = ("CR", "DX")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_VIEWS = ("PA", "AP", "LL", "RL", "")


def _ds_str(value: float) -> str:
    """Format a float as a DICOM Decimal String (at most 16 characters)."""
    for digits in (10, 8, 6, 4):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value!r} as a DICOM decimal string")


def write_xray_dicom(
    path: str | os.PathLike[str],
    pixels_stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    bits_stored: int = 12,
    rescale_slope: float | None = 1.0,
    rescale_intercept: float | None = 0.0,
    window_center: float | Sequence[float] | None = None,
    window_width: float | Sequence[float] | None = None,
    voi_lut_function: str | None = None,
    voi_lut: np.ndarray | None = None,
    voi_lut_first_mapped: int = 0,
    voi_lut_bits: int = 16,
    pixel_spacing: tuple[float, float] = (0.2, 0.2),
    view_position: str = "PA",
    patient_name: str = "SYNTH^CASE",
    patient_id: str = "SYNTH-0000",
    patient_sex: str = "O",
    patient_age: int | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    study_id: str = "1",
    series_number: int = 1,
    instance_number: int = 1,
    burned_in_annotation: bool = False,
) -> Path:
    """Write one radiograph as a DICOM CR or DX (For Presentation) file.

    The file is written atomically (temporary file in the same folder, then renamed).

    Args:
        path: output file path (parent folders are created).
        pixels_stored: stored pixel values, shape (rows, cols), unsigned integers that fit in
            ``bits_stored`` bits. They are written as they are: for ``MONOCHROME1`` the caller
            passes already-inverted values (low stored value = dense = displayed white).
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        modality: ``"CR"`` (Computed Radiography Image Storage; spacing goes to
            *Pixel Spacing*) or ``"DX"`` (Digital X-Ray Image Storage - For Presentation;
            spacing goes to *Imager Pixel Spacing*; rescale must be slope 1, intercept 0).
        bits_stored: 10 to 16.
        rescale_slope: *Rescale Slope*; ``None`` (with ``rescale_intercept=None``) omits the
            modality rescale, which only CR allows.
        rescale_intercept: *Rescale Intercept*.
        window_center: *Window Center* in modality (rescaled) units; one value or several.
        window_width: *Window Width*, same count as ``window_center``.
        voi_lut_function: *VOI LUT Function* (LINEAR, LINEAR_EXACT or SIGMOID); ``None`` omits
            it (LINEAR by default).
        voi_lut: optional VOI LUT table, shape (n_entries,), ``n_entries <= 65536``, values
            below ``2**voi_lut_bits``; written as a *VOI LUT Sequence* item. Input values are
            modality values, so the rescale must give integers (slope 1, integer intercept).
        voi_lut_first_mapped: first modality value mapped by ``voi_lut`` (0..65535).
        voi_lut_bits: bits per LUT entry, 8 or 10 to 16.
        pixel_spacing: (row spacing, column spacing) in mm at the detector.
        view_position: *View Position*, e.g. ``"PA"`` or ``"AP"``.
        patient_name: synthetic patient name.
        patient_id: synthetic patient ID.
        patient_sex: ``"M"``, ``"F"`` or ``"O"``.
        patient_age: age in years, or ``None`` to leave it empty.
        study_instance_uid: Study Instance UID (a new one from
            :func:`pydicom.uid.generate_uid` when ``None``).
        series_instance_uid: Series Instance UID (new when ``None``).
        sop_instance_uid: SOP Instance UID (new when ``None``).
        study_id: *Study ID*.
        series_number: *Series Number*.
        instance_number: *Instance Number*.
        burned_in_annotation: whether text (e.g. a lead marker) is burned into the pixels.

    Returns:
        The path written.

    Raises:
        ValueError: if an argument is invalid (shape, dtype/range, enumerated values, LUT).
    """
    path = Path(path)
    pixels = np.asarray(pixels_stored)
    bits_stored = _check_image(pixels, photometric, modality, bits_stored)
    _check_rescale(modality, rescale_slope, rescale_intercept)
    centers, widths = _check_windows(window_center, window_width, voi_lut_function)
    lut = _check_voi_lut(voi_lut, voi_lut_bits, voi_lut_first_mapped, rescale_slope, rescale_intercept)
    if not centers and lut is None:
        logger.debug("%s: no VOI given; readers will show the full stored range", path)
    spacing = tuple(float(v) for v in pixel_spacing)
    if len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"pixel_spacing must be two positive numbers, got {pixel_spacing!r}")
    if view_position not in _VIEWS:
        raise ValueError(f"view_position must be one of {_VIEWS}, got {view_position!r}")
    if patient_sex not in ("M", "F", "O"):
        raise ValueError(f"patient_sex must be 'M', 'F' or 'O', got {patient_sex!r}")

    ds = _new_dataset(path, modality, sop_instance_uid or generate_uid())
    _set_patient_study(ds, modality=modality, view_position=view_position, patient_name=patient_name,
                       patient_id=patient_id, patient_sex=patient_sex, patient_age=patient_age,
                       study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid,
                       study_id=study_id, series_number=series_number, instance_number=instance_number,
                       burned_in_annotation=burned_in_annotation)
    _set_image(ds, pixels, modality=modality, photometric=photometric, bits_stored=bits_stored, spacing=spacing,
               rescale_slope=rescale_slope, rescale_intercept=rescale_intercept, centers=centers, widths=widths,
               voi_lut_function=voi_lut_function)
    if lut is not None:
        ds.VOILUTSequence = DicomSequence([_voi_lut_item(lut, voi_lut_first_mapped, voi_lut_bits)])
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    _save_atomic(ds, path)
    logger.debug("wrote %s (%s %s, %d bits)", path, modality, photometric, bits_stored)
    return path


def _check_image(pixels: np.ndarray, photometric: str, modality: str, bits_stored: Any) -> int:
    """Validate the (rows, cols) stored pixels against the enumerated image attributes.

    Returns:
        ``bits_stored`` as an int.

    Raises:
        ValueError: bad shape, photometric, modality, bit depth, dtype or value range.
    """
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"pixels_stored must be 2D (rows, cols), got shape {pixels.shape}")
    if photometric not in _PHOTOMETRIC:
        raise ValueError(f"photometric must be one of {_PHOTOMETRIC}, got {photometric!r}")
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be one of {_MODALITIES}, got {modality!r}")
    if not isinstance(bits_stored, (int, np.integer)) or not 10 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored must be an integer in 10..16, got {bits_stored!r}")
    bits_stored = int(bits_stored)
    if not (np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == bool):
        raise ValueError(f"pixels_stored must hold integers, got dtype {pixels.dtype}")
    if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) >= 2**bits_stored):
        raise ValueError(
            f"pixels_stored values must lie in [0, {2**bits_stored - 1}] for "
            f"bits_stored={bits_stored}, got [{int(pixels.min())}, {int(pixels.max())}]"
        )
    return bits_stored


def _check_rescale(modality: str, slope: float | None, intercept: float | None) -> None:
    """Validate the modality rescale (DX allows only the identity).

    Raises:
        ValueError: only one of the two given, a non-identity DX rescale, or a zero/non-finite slope.
    """
    if (slope is None) != (intercept is None):
        raise ValueError("give both rescale_slope and rescale_intercept, or neither")
    if modality == "DX" and (slope != 1.0 or intercept != 0.0):
        raise ValueError("DX images require rescale_slope=1 and rescale_intercept=0")
    if slope is not None and not (np.isfinite(slope) and slope != 0):
        raise ValueError(f"rescale_slope must be finite and non-zero, got {slope!r}")


def _check_windows(window_center: float | Sequence[float] | None, window_width: float | Sequence[float] | None,
                   voi_lut_function: str | None) -> tuple[list[float], list[float]]:
    """Validate the VOI windows and function.

    Returns:
        (centers, widths), empty lists without a window.

    Raises:
        ValueError: unpaired or invalid windows, or an unknown VOI LUT function.
    """
    if (window_center is None) != (window_width is None):
        raise ValueError("give both window_center and window_width, or neither")
    centers: list[float] = []
    widths: list[float] = []
    if window_center is not None and window_width is not None:
        centers = [float(v) for v in np.atleast_1d(window_center)]
        widths = [float(v) for v in np.atleast_1d(window_width)]
        if len(centers) != len(widths) or not centers:
            raise ValueError("window_center and window_width must have the same length")
        if not all(np.isfinite(centers)) or any(not np.isfinite(w) or w <= 0 for w in widths):
            raise ValueError("window centers must be finite and window widths positive")
        if (voi_lut_function or "LINEAR") == "LINEAR" and any(w < 1 for w in widths):
            raise ValueError("a LINEAR window needs window_width >= 1")
    if voi_lut_function is not None and voi_lut_function not in _VOI_FUNCTIONS:
        raise ValueError(f"voi_lut_function must be one of {_VOI_FUNCTIONS}")
    return centers, widths


def _check_voi_lut(voi_lut: np.ndarray | None, bits: int, first_mapped: int, slope: float | None,
                   intercept: float | None) -> np.ndarray | None:
    """Validate the optional VOI LUT table.

    Returns:
        The table as an (n_entries,) array, or None.

    Raises:
        ValueError: bad size, bit depth, values, first mapped value, or non-integer modality values.
    """
    if voi_lut is None:
        return None
    lut = np.asarray(voi_lut)
    if lut.ndim != 1 or not 1 <= lut.size <= 65536:
        raise ValueError("voi_lut must be 1D with 1..65536 entries")
    if bits != 8 and not 10 <= bits <= 16:
        raise ValueError(f"voi_lut_bits must be 8 or 10..16, got {bits}")
    if int(lut.min()) < 0 or int(lut.max()) >= 2**bits:
        raise ValueError(f"voi_lut values must lie in [0, {2**bits - 1}]")
    if not 0 <= first_mapped <= 65535:
        raise ValueError("voi_lut_first_mapped must lie in 0..65535")
    if slope not in (None, 1.0) or (intercept is not None and float(intercept) != int(intercept)):
        raise ValueError("a VOI LUT table needs integer modality values (slope 1)")
    return lut


def _new_dataset(path: Path, modality: str, sop_uid: str) -> FileDataset:
    """Empty CR or DX (For Presentation) dataset with its file meta information and SOP identity."""
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_PRESENTATION
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDCNN_SYNTH"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _set_patient_study(ds: FileDataset, *, modality: str, view_position: str, patient_name: str, patient_id: str,
                       patient_sex: str, patient_age: int | None, study_instance_uid: str | None,
                       series_instance_uid: str | None, study_id: str, series_number: int, instance_number: int,
                       burned_in_annotation: bool) -> None:
    """Set the patient, study and series attributes (synthetic identifiers, empty dates) in place."""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "medcnn synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC CHEST"
    ds.SeriesDescription = f"CHEST {view_position}".strip()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    if patient_age is not None:
        ds.PatientAge = f"{int(np.clip(patient_age, 0, 999)):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyID = study_id
    ds.SeriesNumber = int(series_number)
    ds.InstanceNumber = int(instance_number)
    # Displayed as usual for a frontal chest film: patient's left on the viewer's right.
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.LossyImageCompression = "00"


def _set_image(ds: FileDataset, pixels: np.ndarray, *, modality: str, photometric: str, bits_stored: int,
               spacing: tuple[float, ...], rescale_slope: float | None, rescale_intercept: float | None,
               centers: Sequence[float], widths: Sequence[float], voi_lut_function: str | None) -> None:
    """Set the spacing, image pixel description, rescale and windows of (rows, cols) ``pixels`` in place."""
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [_ds_str(v) for v in spacing]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
        ds.RescaleType = "US"
    else:
        ds.PixelSpacing = [_ds_str(v) for v in spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale_slope is not None and rescale_intercept is not None:
        ds.RescaleIntercept = _ds_str(float(rescale_intercept))
        ds.RescaleSlope = _ds_str(float(rescale_slope))
    if centers:
        ds.WindowCenter = [_ds_str(v) for v in centers] if len(centers) > 1 else _ds_str(centers[0])
        ds.WindowWidth = [_ds_str(v) for v in widths] if len(widths) > 1 else _ds_str(widths[0])
        if voi_lut_function is not None:
            ds.VOILUTFunction = voi_lut_function


def _voi_lut_item(lut: np.ndarray, first_mapped: int, bits: int) -> pydicom.Dataset:
    """One VOI LUT Sequence item holding the (n_entries,) table ``lut``."""
    item = pydicom.Dataset()
    n_entries = int(lut.size)
    # both elements have ambiguous VRs (US/SS, US/OW): state US explicitly
    item.add_new(0x00283002, "US", [n_entries % 65536, int(first_mapped), int(bits)])
    item.LUTExplanation = "SYNTH TONE CURVE"
    if 2 * n_entries <= 0xFFFE:
        item.add_new(0x00283006, "US", [int(v) for v in lut.astype(np.int64)])
    else:  # too long for a 16-bit length field: OW, little endian like the file
        item.add_new(0x00283006, "OW", np.ascontiguousarray(lut, dtype="<u2").tobytes())
    return item


def _save_atomic(ds: FileDataset, path: Path) -> None:
    """Save ``ds`` to a temporary file in ``path``'s folder (created), then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reference_display(ds: pydicom.Dataset | str | os.PathLike[str]) -> np.ndarray:
    """Read a radiograph the reference way: rescale, VOI, invert MONOCHROME1, scale to [0, 1].

    Args:
        ds: a dataset, or a path to a DICOM file.

    Returns:
        float64 array (rows, cols) in [0, 1] where higher means brighter (denser).
    """
    if not isinstance(ds, pydicom.Dataset):
        ds = pydicom.dcmread(ds)
    arr = ds.pixel_array
    arr = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence"):
        # LUT input values are integers; cast so that pydicom indexes the table exactly.
        arr = np.rint(arr).astype(np.int64)
        out = apply_voi_lut(arr, ds).astype(np.float64)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_voi_lut(arr, ds).astype(np.float64)
        slope = float(ds.get("RescaleSlope", 1.0))
        inter = float(ds.get("RescaleIntercept", 0.0))
        ends = [inter, (2 ** int(ds.BitsStored) - 1) * slope + inter]
        lo, hi = min(ends), max(ends)
    else:
        out = arr.astype(np.float64)
        lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / max(hi - lo, 1e-12)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0)
