"""DICOM: series folders, enhanced multi-frame, projection radiographs (rescale -> VOI -> MONOCHROME1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.spatial.transform import Rotation

import medcnn
from medcnn import InputError
from medcnn.io import list_series
from medcnn.synth.dicom_series import write_dicom_series

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"


def _phantom_radiograph(rows: int = 120, cols: int = 100) -> np.ndarray:
    """Density image: dark lungs (low), bright spine/bone (high), soft tissue in between."""
    r, c = np.mgrid[:rows, :cols]
    dens = np.full((rows, cols), 0.45)
    lung_l = ((r - 60) / 40) ** 2 + ((c - 28) / 16) ** 2 < 1
    lung_r = ((r - 60) / 40) ** 2 + ((c - 72) / 16) ** 2 < 1
    dens[lung_l | lung_r] = 0.12
    dens[:, 46:54] = 0.9  # spine
    return dens


def _xray_dataset(path: Path, density: np.ndarray, photometric: str, *, voi: str = "window",
                  modality: str = "CR", slope: float = 1.0, intercept: float = 0.0, bits: int = 12,
                  presentation: str | None = None) -> Path:
    maxv = 2**bits - 1
    stored_display = density * maxv  # MONOCHROME2 convention: dense = high
    if photometric == "MONOCHROME1":
        stored_display = maxv - stored_display
    stored = np.round((stored_display - intercept) / slope).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "123456"
    ds.PatientBirthDate = "19700101"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = density.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.ImagerPixelSpacing = ["0.175", "0.175"]
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    if voi == "window":
        ds.WindowCenter, ds.WindowWidth = f"{maxv / 2:g}", f"{maxv:g}"
    elif voi == "lut":
        item = pydicom.Dataset()
        n = 4096
        item.LUTDescriptor = [n, 0, 16]
        # a non-linear (gamma) VOI LUT over the modality range
        lut = np.round(65535 * (np.arange(n) / (n - 1)) ** 0.8).astype(np.uint16)
        item.add_new(0x00283006, "OW", lut.tobytes())  # LUTData
        ds.VOILUTSequence = Sequence([item])
    if presentation:
        ds.PresentationLUTShape = presentation
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _lungs_vs_spine(img: torch.Tensor) -> tuple[float, float]:
    a = img[0].numpy()
    return float(a[50:70, 20:36].mean()), float(a[:, 47:53].mean())


@pytest.mark.parametrize("voi", ["window", "lut", "none"])
@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_monochrome1_polarity_and_equivalence(tmp_path: Path, voi: str, modality: str) -> None:
    dens = _phantom_radiograph()
    m1 = medcnn.load(_xray_dataset(tmp_path / "m1.dcm", dens, "MONOCHROME1", voi=voi, modality=modality,
                                   presentation="INVERSE" if modality == "DX" else None))
    m2 = medcnn.load(_xray_dataset(tmp_path / "m2.dcm", dens, "MONOCHROME2", voi=voi, modality=modality))
    assert tuple(m1.shape) == (1, 120, 100)  # the full pixel grid, (rows, cols)
    lungs, spine = _lungs_vs_spine(m1)
    assert lungs < spine, "MONOCHROME1 radiograph loaded with inverted polarity"
    lungs2, spine2 = _lungs_vs_spine(m2)
    assert lungs2 < spine2
    corr = np.corrcoef(m1[0].numpy().ravel(), m2[0].numpy().ravel())[0, 1]
    # identical after a linear VOI; a non-linear LUT is applied before the inversion, so only close
    assert corr > (0.98 if voi == "lut" else 0.999)
    assert m1.meta["medcnn_source"]["spatial_dims"] == 2


def test_rescale_before_window(tmp_path: Path) -> None:
    dens = _phantom_radiograph()
    img = medcnn.load(_xray_dataset(tmp_path / "r.dcm", dens, "MONOCHROME1", slope=2.0, intercept=-100.0))
    lungs, spine = _lungs_vs_spine(img)
    assert lungs < spine


def test_monochrome2_presentation_inverse_is_inverted(tmp_path: Path) -> None:
    dens = _phantom_radiograph()
    inv = medcnn.load(_xray_dataset(tmp_path / "i.dcm", 1 - dens, "MONOCHROME2", presentation="INVERSE"))
    lungs, spine = _lungs_vs_spine(inv)
    assert lungs < spine


def test_radiograph_mask_png_on_pixel_grid(tmp_path: Path) -> None:
    img = medcnn.load(_xray_dataset(tmp_path / "x.dcm", _phantom_radiograph(), "MONOCHROME1"), spacing=(0.5, 0.5))
    assert tuple(img.shape) == (1, 42, 35)
    medcnn.save(img[0] < float(img.mean()), tmp_path / "lungs.png", like=img)
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "lungs.png")).shape == (120, 100)


def test_real_pydicom_ct_and_mr_files() -> None:
    ct = medcnn.load(PYDICOM_DATA / "CT_small.dcm")
    ds = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
    assert tuple(ct.shape) == (1, ds.Columns, ds.Rows, 1)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(ct[0, :, :, 0].numpy(), hu.T)
    # affine: voxel (i=col, j=row) -> ImagePositionPatient + steps along IOP (LPS -> RAS)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ps = [float(v) for v in ds.PixelSpacing]
    lps = ipp + 3 * iop[:3] * ps[1] + 5 * iop[3:] * ps[0]
    np.testing.assert_allclose((ct.affine.numpy() @ [3, 5, 0, 1])[:3], lps * [-1, -1, 1], atol=1e-4)
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):  # core decoders (MIT)
        mr = medcnn.load(PYDICOM_DATA / name)
        assert tuple(mr.shape) == (1, 64, 64, 1)
        assert float(mr.max()) > 1000


def test_jpeg_ls_dicom_with_the_jpeg_extra() -> None:
    pytest.importorskip("libjpeg", reason="JPEG / JPEG-LS DICOM decoding is the optional `jpeg` extra "
                                          "(pylibjpeg-libjpeg, GPLv3): pip install 'medcnn[jpeg]'")
    mr = medcnn.load(PYDICOM_DATA / "MR_small_jpeg_ls_lossless.dcm")
    assert tuple(mr.shape) == (1, 64, 64, 1) and float(mr.max()) > 1000


def test_truncated_and_non_image_dicom() -> None:
    with pytest.raises(InputError, match="MR_truncated.dcm.*pixel data"):
        medcnn.load(PYDICOM_DATA / "MR_truncated.dcm")
    with pytest.raises(InputError, match="rtstruct.dcm.*no image"):
        medcnn.load(PYDICOM_DATA / "rtstruct.dcm")


def test_folder_with_only_non_image_objects(tmp_path: Path) -> None:
    for name in ("rtstruct.dcm", "test-SR.dcm"):
        shutil.copy(PYDICOM_DATA / name, tmp_path / name)
    with pytest.raises(InputError, match="no DICOM image series.*non-image"):
        medcnn.load(tmp_path)


def _oblique_affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix() @ np.diag([0.8, 0.8, 2.5])
    aff[:3, 3] = [-30.0, 12.0, 45.0]
    return aff


def test_series_folder_with_ignored_extras(tmp_path: Path) -> None:
    vol = np.random.default_rng(0).integers(0, 1000, (24, 20, 9)).astype(np.float32)
    aff = _oblique_affine()
    write_dicom_series(vol, aff, tmp_path / "s", modality="MR")
    shutil.copy(PYDICOM_DATA / "test-SR.dcm", tmp_path / "s" / "report.dcm")
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    img = medcnn.load(tmp_path / "s")
    np.testing.assert_array_equal(img[0].numpy(), vol)
    np.testing.assert_allclose(img.affine.numpy(), aff, atol=1e-5)


def test_mixed_series_refused_with_listing_or_selected(tmp_path: Path) -> None:
    vol = np.ones((8, 8, 4), np.float32)
    write_dicom_series(vol, _oblique_affine(), tmp_path / "m", series_description="T1 axial", series_number=3)
    write_dicom_series(vol * 2, np.diag([1, 1, 3.0, 1]), tmp_path / "m", series_description="FLAIR", series_number=5,
                       name_prefix="FL")
    with pytest.raises(InputError, match=r"2 DICOM series.*T1 axial.*FLAIR"):
        medcnn.load(tmp_path / "m")
    series = list_series(tmp_path / "m")
    assert [s.number for s in series] == [3, 5]
    img = medcnn.load(tmp_path / "m", series=series[1].uid)
    assert float(img.mean()) == 2.0
    assert float(medcnn.load(tmp_path / "m", series=0).mean()) == 1.0


def test_missing_slice_and_uneven_spacing(tmp_path: Path) -> None:
    vol = np.ones((8, 8, 10), np.float32)
    files = write_dicom_series(vol, np.diag([1, 1, 2.0, 1]), tmp_path / "gap", shuffle_names=False)
    os.remove(files[4])
    with pytest.raises(InputError, match="missing 1 slice"):
        medcnn.load(tmp_path / "gap")
    files = write_dicom_series(vol, np.diag([1, 1, 2.0, 1]), tmp_path / "uneven", shuffle_names=False)
    ds = pydicom.dcmread(files[6])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.7]
    ds.save_as(files[6])
    with pytest.raises(InputError, match="uneven slice spacing"):
        medcnn.load(tmp_path / "uneven")


def _enhanced_mr(path: Path, vol: np.ndarray, aff: np.ndarray, order: np.ndarray) -> Path:
    """Enhanced MR (multi-frame) with per-frame positions, frames stored in a shuffled order."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = np.r_[lps[:3, 0] / dx, lps[:3, 1] / dy]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
    ds.NumberOfFrames = vol.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = pydicom.Dataset()
    pm = pydicom.Dataset()
    pm.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
    pm.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
    po = pydicom.Dataset()
    po.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    pvt = pydicom.Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "2", "-10", "US"
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        fg = pydicom.Dataset()
        pp = pydicom.Dataset()
        pp.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        fg.PlanePositionSequence = Sequence([pp])
        per.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    stored = np.round((vol + 10) / 2).astype(np.uint16)
    frames = np.stack([stored[:, :, k].T for k in order])
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_geometry_and_frame_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vol = (rng.integers(0, 500, (16, 12, 7)) * 2 - 10).astype(np.float32)
    aff = _oblique_affine()
    order = rng.permutation(7)
    img = medcnn.load(_enhanced_mr(tmp_path / "enh.dcm", vol, aff, order))
    assert tuple(img.shape) == (1, 16, 12, 7)
    np.testing.assert_allclose(img.affine.numpy(), aff, atol=1e-5)
    np.testing.assert_array_equal(img[0].numpy(), vol)
    out = tmp_path / "mask.nii.gz"
    rs = medcnn.load(tmp_path / "enh.dcm", orientation="RAS", spacing=1.0)
    medcnn.save((rs[0] > 400).to(torch.uint8), out, like=rs)
    import nibabel as nib

    np.testing.assert_allclose(nib.load(str(out)).affine, aff, atol=1e-4)
