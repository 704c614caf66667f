"""Write a volume as a DICOM series (one file per slice) with pydicom.

Used to build sample data and reader tests: the files carry full patient geometry
(ImagePositionPatient / ImageOrientationPatient / PixelSpacing) derived from the volume's RAS
affine, synthetic identifiers only, and optional rescale slope/intercept.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_DATE = datetime.date(2020, 1, 1).strftime("%Y%m%d")  # fixed: regenerated series stay byte-identical


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
    from pydicom.uid import generate_uid

    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (I, J, K), got shape {vol.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geom = _SeriesGeometry.from_affine(affine)
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    stored = np.round((vol - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this rescale")
    stored = stored.astype(np.int16)
    # UIDs derived from the seed and content: regenerating the same series gives the same files
    tag = f"{seed}:{series_number}:{series_description}:{vol.shape}:{float(np.asarray(vol, dtype=np.float64).sum()):.6g}"
    series_attrs = {
        "Modality": modality,
        "StudyInstanceUID": study_uid or generate_uid(entropy_srcs=[tag, "study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=[tag, "series"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[tag, "frame"]),
        "SeriesDescription": series_description,
        "SeriesNumber": series_number,
    }
    rng = np.random.default_rng(seed)
    order = rng.permutation(vol.shape[2]) if shuffle_names else np.arange(vol.shape[2])
    paths = []
    for k in range(vol.shape[2]):
        path = folder / f"{name_prefix}{int(order[k]):04d}.dcm"
        ds = _slice_dataset(path, modality, generate_uid(entropy_srcs=[tag, "instance", str(k)]))
        for key, value in series_attrs.items():
            setattr(ds, key, value)
        ds.InstanceNumber = k + 1
        geom.set_slice(ds, k)
        _set_slice_pixels(ds, stored[:, :, k], modality, rescale)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d-slice %s series to %s", vol.shape[2], modality, folder)
    return paths


@dataclass(frozen=True)
class _SeriesGeometry:
    """Patient geometry of a series, in LPS mm.

    Attributes:
        lps: (4, 4) voxel -> LPS affine.
        iop: (6,) ImageOrientationPatient (unit column and row directions).
        dx, dy: column and row spacing (mm).
    """

    lps: np.ndarray
    iop: np.ndarray
    dx: float
    dy: float

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> _SeriesGeometry:
        """Geometry of a volume with the (4, 4) RAS ``affine``."""
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
        col_step, row_step = lps[:3, 0], lps[:3, 1]
        dx, dy = np.linalg.norm(col_step), np.linalg.norm(row_step)
        return cls(lps=lps, iop=np.concatenate([col_step / dx, row_step / dy]), dx=dx, dy=dy)

    def set_slice(self, ds: Any, k: int) -> None:
        """Set the orientation, position, spacing and thickness of slice ``k`` on ``ds``."""
        slice_step = self.lps[:3, 2]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in self.iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (self.lps[:3, 3] + k * slice_step)]
        ds.PixelSpacing = [f"{self.dy:.6f}", f"{self.dx:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"


def _slice_dataset(path: Path, modality: str, sop_uid: str) -> Any:
    """Dataset of one slice file with its file meta information, SOP identity and synthetic patient."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "SYNTH^CASE"
    ds.PatientID = "SYNTH0000"
    ds.StudyDate = ds.SeriesDate = _DATE
    return ds


def _set_slice_pixels(ds: Any, stored: np.ndarray, modality: str, rescale: tuple[float, float] | None) -> None:
    """Set the int16 pixel data of one (I, J) slice ``stored`` (written as rows = J) and its rescale."""
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[0])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if rescale is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if modality == "CT":
            ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # (rows, cols)
