"""Write a volume as a DICOM series (one file per slice) with pydicom.

Used to build sample data and reader tests: the files carry full patient geometry
(ImagePositionPatient / ImageOrientationPatient / PixelSpacing) derived from the volume's RAS
affine, synthetic identifiers only, and optional rescale slope/intercept.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    modality: str = "MR",
    series_description: str = "synthetic",
    series_number: int = 1,
    rescale: tuple[float, float] | None = None,
    study_uid: str | None = None,
    shuffle_names: bool = True,
    seed: int = 0,
    name_prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` as one DICOM file per slice along its third axis.

    Args:
        volume: ``(I, J, K)`` array in ITK index order (I = columns, J = rows, K = slices).
        affine: ``(4, 4)`` RAS affine of ``volume``; its first two columns must be orthogonal.
        folder: output folder (created).
        modality: ``"MR"`` or ``"CT"``.
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        rescale: ``(slope, intercept)``: stored = round((value - intercept) / slope); ``None``
            stores rounded values directly (int16).
        study_uid: StudyInstanceUID to share between series (new one if ``None``).
        shuffle_names: name files in a random order (readers must sort by position, not name).
        seed: seed for the shuffling and UIDs' randomness.
        name_prefix: file names are ``<prefix><number>.dcm``; give series sharing a folder different prefixes.

    Returns:
        The written file paths, slice order (k = 0 first).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (I, J, K), got shape {vol.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dx, dy = np.linalg.norm(col_step), np.linalg.norm(row_step)
    iop = np.concatenate([col_step / dx, row_step / dy])
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    stored = np.round((vol - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this rescale")
    stored = stored.astype(np.int16)
    # UIDs derived from the seed and content: regenerating the same series gives the same files
    tag = f"{seed}:{series_number}:{series_description}:{vol.shape}:{float(np.asarray(vol, dtype=np.float64).sum()):.6g}"
    study = study_uid or generate_uid(entropy_srcs=[tag, "study"])
    series = generate_uid(entropy_srcs=[tag, "series"])
    frame_of_ref = generate_uid(entropy_srcs=[tag, "frame"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(vol.shape[2]) if shuffle_names else np.arange(vol.shape[2])
    date = datetime.date(2020, 1, 1).strftime("%Y%m%d")
    paths = []
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, "instance", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{name_prefix}{int(order[k]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName = "SYNTH^CASE"
        ds.PatientID = "SYNTH0000"
        ds.StudyDate = ds.SeriesDate = date
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (lps[:3, 3] + k * slice_step)]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if rescale is not None:
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = f"{intercept:g}"
            if modality == "CT":
                ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d-slice %s series to %s", vol.shape[2], modality, folder)
    return paths
