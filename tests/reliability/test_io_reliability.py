"""Reading and geometry under hostile inputs: header/pixel mismatches, broken orientations, enhanced/SEG and
RT Dose geometry, radiographs sharing a series, bad NIfTI sforms/qforms and scaling, and ``medcnn convert``.

Every bad file is built here from small arrays or pydicom's shipped test files.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian

import medcnn
from medcnn import InputError
from medcnn.cases import find_image_cases
from medcnn.cli.main import cli
from medcnn.io import list_series
from medcnn.synth.dicom_series import write_dicom_series
from medcnn.synth.dicom_write import write_xray_dicom

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
_A = np.array([[2.0, 0, 0, -9], [0, 2.0, 0, -10], [0, 0, 3.0, -11], [0, 0, 0, 1]])


def _series(folder: Path, seed: int = 0) -> list[Path]:
    """A 20 x 24 x 12 MR series (2 x 2 x 3 mm), files IM0000.dcm... in slice order."""
    vol = np.random.default_rng(seed).normal(100, 10, (20, 24, 12)).astype(np.float32)
    return write_dicom_series(vol, _A, folder, shuffle_names=False, seed=seed)


def _edit(files: list[Path], **attrs) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(f)


def _patch_value(f: Path, placeholder: bytes, raw: bytes) -> None:
    """Replace the one occurrence of ``placeholder`` in the file by ``raw`` (same length): writes values
    pydicom refuses to encode (a non-numeric IS, an IS with two values)."""
    blob = f.read_bytes()
    assert blob.count(placeholder) == 1 and len(raw) == len(placeholder)
    f.write_bytes(blob.replace(placeholder, raw))


# ------------------------------------------------------------------ 6. header/pixel mismatch in a series


@pytest.mark.parametrize("what", ["rows", "columns", "bits"])
def test_series_header_larger_than_pixel_data_is_refused(tmp_path: Path, what: str) -> None:
    files = _series(tmp_path / "s")
    if what == "rows":
        _edit(files, Rows=28)
    elif what == "columns":
        _edit(files, Columns=30)
    else:
        _edit(files, BitsAllocated=32, BitsStored=32, HighBit=31)
    with pytest.raises(InputError, match=r"IM00\d\d\.dcm: .*pixel data") as exc:
        medcnn.load(tmp_path / "s")
    assert "\n" not in str(exc.value)


def test_series_with_one_short_slice_names_that_slice(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[5])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(files[5])
    with pytest.raises(InputError, match=r"IM0005\.dcm: .*960 bytes.*480"):
        medcnn.load(tmp_path / "s")


# ------------------------------------------------------------------ 7. broken ImageOrientationPatient

_BAD_IOP = {
    "nan": ["nan", 0, 0, 0, 1, 0],
    "inf": [1, 0, 0, 0, "inf", 0],
    "non_unit": [2, 0, 0, 0, 1, 0],
    "non_orthogonal": [1, 0, 0, 0.70710678, 0.70710678, 0],
    "zero": [0, 0, 0, 0, 0, 0],
}


@pytest.mark.parametrize("kind", sorted(_BAD_IOP))
def test_broken_orientation_is_refused_in_a_series(tmp_path: Path, kind: str) -> None:
    files = _series(tmp_path / "s")
    _edit(files[3:4] if kind == "nan" else files, ImageOrientationPatient=_BAD_IOP[kind])
    with pytest.raises(InputError, match=r"IM00\d\d\.dcm: .*ImageOrientationPatient"):
        medcnn.load(tmp_path / "s")


@pytest.mark.parametrize("kind", ["nan", "non_unit"])
def test_broken_orientation_is_refused_in_a_single_file(tmp_path: Path, kind: str) -> None:
    files = _series(tmp_path / "s")
    _edit(files[:1], ImageOrientationPatient=_BAD_IOP[kind])
    with pytest.raises(InputError, match=r"IM0000\.dcm: .*ImageOrientationPatient"):
        medcnn.load(files[0])


def test_nan_position_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    _edit(files[2:3], ImagePositionPatient=[0, "nan", 6])
    with pytest.raises(InputError, match=r"IM0002\.dcm: .*ImagePositionPatient"):
        medcnn.load(tmp_path / "s")


# ------------------------------------------------------------------ 8. enhanced / SEG and RT Dose geometry


def test_single_frame_seg_geometry_comes_from_the_functional_groups() -> None:
    img = medcnn.load(PYDICOM_DATA / "liver_1frame.dcm")
    assert tuple(img.shape) == (1, 512, 512, 1)
    aff = img.affine.numpy()
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [0.810547, 0.810547, 1.0], rtol=1e-5)
    # LPS (-235.2, -226.8, -128.69) in the file -> RAS
    np.testing.assert_allclose(aff[:3, 3], [235.2, 226.8, -128.69], atol=1e-4)
    np.testing.assert_allclose(aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)


def test_rt_dose_uses_grid_frame_offsets_and_dose_grid_scaling() -> None:
    path = PYDICOM_DATA / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    img = medcnn.load(path)
    assert tuple(img.shape) == (1, 10, 10, 15)
    aff = img.affine.numpy()
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [10.0, 10.0, 5.0])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(aff[:3, 3], ipp * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose((aff @ [0, 0, 14, 1])[2], ipp[2] + 70.0, atol=1e-4)
    # dose in Gy: stored values x DoseGridScaling (1e-6)
    stored = ds.pixel_array.astype(np.float64)  # (frames, rows, cols)
    np.testing.assert_allclose(img[0].numpy(), np.transpose(stored, (2, 1, 0)) * float(ds.DoseGridScaling), rtol=1e-6)


def test_rt_dose_with_absolute_frame_offsets(tmp_path: Path) -> None:
    """A GridFrameOffsetVector whose first value is not 0 holds the frames' z coordinates (PS3.3 C.8.8.3.2)."""
    ds = pydicom.dcmread(PYDICOM_DATA / "rtdose.dcm")
    z0 = float(ds.ImagePositionPatient[2])
    ds.GridFrameOffsetVector = [z0 - 5.0 * k for k in range(15)]  # decreasing z: frames are re-sorted
    ds.save_as(tmp_path / "dose.dcm")
    img = medcnn.load(tmp_path / "dose.dcm")
    aff = img.affine.numpy()
    np.testing.assert_allclose(aff[2, 2], 5.0)
    np.testing.assert_allclose(aff[2, 3], z0 - 70.0, atol=1e-4)
    stored = ds.pixel_array.astype(np.float64)[::-1]
    np.testing.assert_allclose(img[0].numpy(), np.transpose(stored, (2, 1, 0)) * 1e-6, rtol=1e-6)


@pytest.mark.parametrize("offsets", [[0, 5, 10, 20, 25], "short"])
def test_rt_dose_with_uneven_or_inconsistent_offsets_is_refused(tmp_path: Path, offsets) -> None:
    ds = pydicom.dcmread(PYDICOM_DATA / "rtdose.dcm")
    ds.GridFrameOffsetVector = [5.0 * k for k in range(10)] if offsets == "short" else offsets + [30 + 5.0 * k for k in range(10)]
    ds.save_as(tmp_path / "dose.dcm")
    with pytest.raises(InputError, match=r"dose\.dcm: .*GridFrameOffsetVector"):
        medcnn.load(tmp_path / "dose.dcm")


# ------------------------------------------------------------------ 9. radiographs sharing a series


def _radiograph(path: Path, seed: int, series_uid: str | None = None, **kw) -> Path:
    rng = np.random.default_rng(seed)
    px = rng.integers(200, 3800, (64, 48)).astype(np.uint16)
    return write_xray_dicom(path, px, modality="CR", series_instance_uid=series_uid, window_center=2000,
                            window_width=4000, **kw)


def test_radiographs_sharing_a_series_are_separate_cases(tmp_path: Path) -> None:
    uid = pydicom.uid.generate_uid()
    d = tmp_path / "study"
    _radiograph(d / "pa.dcm", 1, uid, view_position="PA")
    _radiograph(d / "lateral.dcm", 2, uid, view_position="LL", instance_number=2)
    # the same film again in another transfer syntax
    ds = pydicom.dcmread(d / "pa.dcm")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(d / "pa_implicit.dcm", implicit_vr=True, little_endian=True)
    assert all(len(s.files) == 1 for s in list_series(d))
    cases = find_image_cases([d], bids=False)
    assert sorted(c.id for c in cases) == ["lateral", "pa", "pa_implicit"]
    assert all(c.inputs[0].is_file() for c in cases)
    for c in cases:
        assert medcnn.load(c.inputs[0]).ndim == 3  # (1, rows, cols)
    with pytest.raises(InputError, match=r"separate .*lateral\.dcm.*pa\.dcm.*pa_implicit\.dcm") as exc:
        medcnn.load(d)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="separate"):
        medcnn.load(d, series=uid)
    assert tuple(medcnn.load(d, series=0).shape) == (1, 64, 48)


def test_files_without_patient_geometry_are_not_grouped(tmp_path: Path) -> None:
    """Secondary-capture-like files (modality OT, no IPP/IOP) of one series: 2D cases, not a failed volume."""
    uid = pydicom.uid.generate_uid()
    for k in range(2):
        p = _radiograph(tmp_path / "sc" / f"img{k}.dcm", k, uid)
        ds = pydicom.dcmread(p)
        ds.Modality = "OT"
        ds.save_as(p)
    assert sorted(c.id for c in find_image_cases([tmp_path / "sc"], bids=False)) == ["img0", "img1"]


# ------------------------------------------------------------------ 12. bad NIfTI geometry


def _nifti(path: Path, fix=None, data: np.ndarray | None = None, slope: float | None = None) -> Path:
    """Write header + voxels by hand: nibabel's writer would repair the header we want broken."""
    vol = np.random.default_rng(0).normal(100, 10, (10, 11, 12)).astype(np.float32) if data is None else data
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(vol.shape)
    hdr.set_data_dtype(vol.dtype)
    hdr.set_qform(_A, 1)
    hdr.set_sform(_A, 1)
    hdr["vox_offset"] = 352
    if slope is not None:
        hdr["scl_slope"], hdr["scl_inter"] = slope, 0.0
    if fix is not None:
        fix(hdr)
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + vol.tobytes(order="F"))
    return path


def _sform_nan(h):
    h["srow_x"][0] = np.nan


def _sform_inf(h):
    h["srow_y"][3] = np.inf


def _sform_zero(h):
    for r in ("srow_x", "srow_y", "srow_z"):
        h[r][:] = 0


def _qform_nan(h):
    h["quatern_b"] = np.nan


def _sform_huge(h):
    h["srow_x"][0] = 1e6


def _pixdim_huge(h):
    h["pixdim"][1] = 1e6


def _sform_singular(h):
    h["srow_y"][:3] = h["srow_x"][:3]  # two axes point the same way


@pytest.mark.parametrize(
    "fix, reason",
    [
        (lambda h: (_sform_nan(h), _qform_nan(h)), r"sform .*NaN.*qform .*NaN"),
        (lambda h: (_sform_zero(h), h.__setitem__("qform_code", 0)), r"sform .*singular"),
        (lambda h: (_sform_singular(h), h.__setitem__("qform_code", 0)), r"sform .*singular"),
        (lambda h: (_sform_huge(h), _pixdim_huge(h)), r"sform .*1e\+06 mm.*qform .*1e\+06 mm"),
        (lambda h: (_qform_nan(h), h.__setitem__("sform_code", 0)), r"qform .*NaN"),
        (lambda h: (h.__setitem__("sform_code", 0), h.__setitem__("qform_code", 0), h["pixdim"].__setitem__(2, np.nan)),
         r"pixdim .*NaN"),
    ],
    ids=["both_nan", "sform_zero", "sform_singular", "both_huge", "qform_nan_only", "pixdim_nan"],
)
def test_unusable_nifti_geometry_is_refused(tmp_path: Path, fix, reason: str) -> None:
    p = _nifti(tmp_path / "bad geometry.nii.gz", fix)
    with pytest.raises(InputError, match=reason) as exc:
        medcnn.load(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "\n" not in msg


@pytest.mark.parametrize("bad, good", [(_sform_nan, "qform"), (_sform_inf, "qform"), (_sform_huge, "qform"),
                                       (_qform_nan, "sform")])
def test_nifti_falls_back_to_the_other_form(tmp_path: Path, caplog, bad, good: str) -> None:
    p = _nifti(tmp_path / "one bad form.nii.gz", bad)
    with caplog.at_level(logging.WARNING, logger="medcnn"):
        img = medcnn.load(p)
    np.testing.assert_allclose(img.affine.numpy(), _A, atol=1e-5)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(p.name in m and f"using the {good}" in m for m in said), said
    # results written on this grid carry the good geometry only
    out = medcnn.save((img[0] > 100).to(torch.uint8), tmp_path / "mask.nii.gz", like=img)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, _A, atol=1e-5)
    assert np.isfinite(back.header.get_qform()).all() and np.isfinite(back.header.get_sform()).all()


def test_scaling_overflow_to_inf_is_refused(tmp_path: Path) -> None:
    data = np.arange(10 * 11 * 12, dtype=np.int16).reshape(10, 11, 12)
    p = _nifti(tmp_path / "scaled.nii.gz", data=data, slope=1e38)
    with pytest.raises(InputError, match=r"scaled\.nii\.gz: .*scl_slope"):
        medcnn.load(p)
    with pytest.raises(InputError, match=r"scaled\.nii\.gz: .*scl_slope"):
        medcnn.load([p, p])  # the channel-stacking path too


def test_prompt_refuses_a_nan_affine_and_writes_nothing(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "nan.nii.gz", lambda h: (_sform_nan(h), _qform_nan(h)))
    out = tmp_path / "mask.nii.gz"
    res = CliRunner().invoke(cli, ["prompt", str(p), "--box", "2,2,2,8,8,8", "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert "nan.nii.gz" in res.output and "sform" in res.output and "Traceback" not in res.output
    assert not out.exists()


# ------------------------------------------------------------------ 14. smaller ones


@pytest.mark.parametrize("raw", [b"abc de", b"1\\2   "], ids=["non_numeric", "multi_valued"])
def test_odd_series_number_does_not_abort_discovery(tmp_path: Path, raw: bytes) -> None:
    files = _series(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesNumber = 987654
        ds.save_as(f)
        _patch_value(f, b"987654", raw)
    (found,) = list_series(tmp_path / "s")
    assert found.number is None
    assert [c.id for c in find_image_cases([tmp_path / "s"], bids=False)] == ["s"]
    assert tuple(medcnn.load(tmp_path / "s").shape) == (1, 20, 24, 12)


def test_invalid_number_of_frames_names_the_file(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.NumberOfFrames = 7919
        ds.save_as(f)
        _patch_value(f, b"7919", b"1A  ")
    with pytest.raises(InputError, match=r"IM00\d\d\.dcm: .*NumberOfFrames '1A'"):
        medcnn.load(tmp_path / "s")
    with pytest.raises(InputError, match=r"IM0000\.dcm: .*NumberOfFrames '1A'"):
        medcnn.load(files[0])


@pytest.mark.parametrize("kind", ["png", "dcm"])
def test_constant_radiograph_is_refused_by_chest_xray(tmp_path: Path, kind: str) -> None:
    from medcnn.cases import Case
    from medcnn.pipelines import get_pipeline

    if kind == "png":
        p = tmp_path / "blank.png"
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    else:
        p = write_xray_dicom(tmp_path / "blank.dcm", np.full((64, 64), 700, np.uint16), modality="DX")
    with pytest.raises(InputError, match=r"blank\.(png|dcm): constant image"):
        get_pipeline("chest-xray").load(Case(id="blank", inputs=[p]))


@pytest.mark.parametrize("spacing", ["0", "-1", "nan"])
def test_convert_refuses_a_non_positive_spacing(tmp_path: Path, spacing: str) -> None:
    p = _nifti(tmp_path / "t1.nii.gz")
    res = CliRunner().invoke(cli, ["convert", str(p), str(tmp_path / "o.nii.gz"), "--spacing", spacing])
    assert res.exit_code == 2, res.output
    assert "--spacing" in res.output and not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("fmt", ["dcm-mono1", "dcm-mono2"])
def test_convert_generated_radiograph_to_png(tmp_path: Path, fmt: str) -> None:
    gen = CliRunner().invoke(cli, ["generate", "chest-xray", "-n", "1", "--seed", "3", "-o", str(tmp_path / "g"),
                                   "--formats", fmt])
    assert gen.exit_code == 0, gen.output
    (dcm,) = (tmp_path / "g").rglob("*.dcm")
    res = CliRunner().invoke(cli, ["convert", str(dcm), str(tmp_path / "cxr.png")])
    assert res.exit_code == 0, res.output
    png = np.asarray(Image.open(tmp_path / "cxr.png"))
    img = medcnn.load(dcm)[0].numpy()
    assert png.shape == img.shape and png.dtype in (np.uint8, np.uint16)
    assert png.max() > png.min()
    # the same picture: a monotone (here linear) map of the loaded values, dense = bright kept
    assert np.corrcoef(png.ravel().astype(np.float64), img.ravel())[0, 1] > 0.999


def test_convert_volume_to_png_is_a_clear_error(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "t1.nii.gz")
    res = CliRunner().invoke(cli, ["convert", str(p), str(tmp_path / "o.png")])
    assert res.exit_code in (1, 2) and "2D" in res.output and "Traceback" not in res.output


def test_prompt_output_the_image_cannot_have_stays_a_usage_error(tmp_path: Path) -> None:
    """Only an unusable IMAGE is exit 1; a volume asked to become a .png is still a usage error (exit 2)."""
    p = _nifti(tmp_path / "vol.nii.gz")
    res = CliRunner().invoke(cli, ["prompt", str(p), "--box", "2,2,2,8,8,8", "-o", str(tmp_path / "mask.png")])
    assert res.exit_code == 2 and "volume format" in res.output, res.output
