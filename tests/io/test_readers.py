"""Readers: every supported format loads with the right shape/axes, every bad input raises InputError."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

import medcnn
from medcnn import InputError
from medcnn.io import geometry


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_nifti_axes_follow_nibabel(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(7, 5, 3)).astype(np.float32)
    aff = np.diag([1.5, 2.0, 3.0, 1.0])
    img = medcnn.load(_nifti(tmp_path / "a.nii.gz", data, aff))
    assert isinstance(img, medcnn.io.api.MetaTensor)
    assert tuple(img.shape) == (1, 7, 5, 3)
    np.testing.assert_array_equal(img[0].numpy(), data)
    np.testing.assert_allclose(img.affine.numpy(), aff)


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    im = nib.Nifti1Image(data, np.eye(4))
    im.header.set_slope_inter(0.5, -3.0)
    nib.save(im, str(tmp_path / "s.nii"))
    out = medcnn.load(tmp_path / "s.nii")
    np.testing.assert_allclose(out[0].numpy(), data * 0.5 - 3.0)


def test_nrrd_and_mha_axes_follow_itk_index_order(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).normal(size=(3, 5, 7)).astype(np.float32)  # numpy (k, j, i)
    img = sitk.GetImageFromArray(arr)
    for ext in (".nrrd", ".mha", ".mhd"):
        p = tmp_path / f"a{ext}"
        sitk.WriteImage(img, str(p))
        out = medcnn.load(p)
        assert tuple(out.shape) == (1, 7, 5, 3)
        np.testing.assert_array_equal(out[0].numpy(), np.transpose(arr, (2, 1, 0)))


def test_multichannel_stack_and_mismatch(tmp_path: Path) -> None:
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    files = [_nifti(tmp_path / f"c{i}.nii.gz", np.full((4, 5, 6), i, np.float32), aff) for i in range(4)]
    img = medcnn.load(files)
    assert tuple(img.shape) == (4, 4, 5, 6)
    assert [float(img[c].mean()) for c in range(4)] == [0.0, 1.0, 2.0, 3.0]
    bad_shape = _nifti(tmp_path / "bad.nii.gz", np.zeros((4, 5, 7), np.float32), aff)
    with pytest.raises(InputError, match="bad.nii.gz.*grid"):
        medcnn.load([files[0], bad_shape])
    shifted = aff.copy()
    shifted[0, 3] = 5.0
    bad_geo = _nifti(tmp_path / "moved.nii.gz", np.zeros((4, 5, 6), np.float32), shifted)
    with pytest.raises(InputError, match="moved.nii.gz.*geometry differs"):
        medcnn.load([files[0], bad_geo])


def test_4d_nifti_becomes_channels(tmp_path: Path) -> None:
    data = np.stack([np.full((3, 4, 5), v, np.float32) for v in (1, 2)], axis=-1)
    img = medcnn.load(_nifti(tmp_path / "4d.nii.gz", data))
    assert tuple(img.shape) == (2, 3, 4, 5)
    assert float(img[1].mean()) == 2.0


@pytest.mark.parametrize("bits", [8, 16])
def test_png_grey_8_and_16_bit(tmp_path: Path, bits: int) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16
    arr = (np.arange(30 * 20).reshape(30, 20) * (1 if bits == 8 else 97) % (2**bits)).astype(dtype)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    img = medcnn.load(p)
    assert tuple(img.shape) == (1, 30, 20)  # (C, rows, cols)
    np.testing.assert_array_equal(img[0].numpy(), arr.astype(np.float32))
    assert img.meta["medcnn_source"]["spatial_dims"] == 2


def test_rgb_jpeg_and_grey_rgb_png(tmp_path: Path) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    assert tuple(medcnn.load(tmp_path / "c.jpg").shape) == (3, 16, 24)
    grey = np.repeat(np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)[..., None], 3, -1)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert tuple(medcnn.load(tmp_path / "g.png").shape) == (1, 16, 24)


def test_png_mask_roundtrip_same_pixel_grid(tmp_path: Path) -> None:
    arr = (np.random.default_rng(2).random((33, 47)) * 65535).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    img = medcnn.load(tmp_path / "x.png", spacing=(2.0, 3.0))
    assert tuple(img.shape) == (1, 16, 16)
    medcnn.save(img[0] > 30000, tmp_path / "m.png", like=img)
    back = np.asarray(Image.open(tmp_path / "m.png"))
    assert back.shape == (33, 47)
    assert set(np.unique(back)) <= {0, 255}


def test_spacing_validation(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="3 values"):
        medcnn.load(p, spacing=(1.0, 2.0))
    with pytest.raises(ValueError, match="orientation"):
        medcnn.load(p, orientation="RAX")


# ------------------------------------------------------------------------------- failure modes


def _expect_error(path: Path, pattern: str, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        medcnn.load(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert info.value.path == str(path)
    import re

    assert re.search(pattern, msg, re.I), f"{pattern!r} not in {msg!r}"
    assert "\n" not in msg
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.nii.gz", "no such file")


def test_empty_file(tmp_path: Path) -> None:
    for name in ("e.nii.gz", "e.nrrd", "e.png", "e.dcm"):
        p = tmp_path / name
        p.write_bytes(b"")
        _expect_error(p, "empty")


def test_truncated_nifti(tmp_path: Path) -> None:
    good = _nifti(tmp_path / "g.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
    blob = good.read_bytes()
    bad = tmp_path / "t.nii.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    _expect_error(bad, "truncated|corrupt")
    raw = _nifti(tmp_path / "r.nii", np.zeros((40, 40, 40), np.float32))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw.read_bytes()[:5000])
    _expect_error(cut, "truncated")


def test_random_bytes_and_text(tmp_path: Path) -> None:
    p = tmp_path / "noise.nii.gz"
    p.write_bytes(os.urandom(4096))
    _expect_error(p, "not a readable NIfTI|corrupt")
    q = tmp_path / "text.nii.gz"
    q.write_bytes(gzip.compress(b"hello, this is not an image\n" * 20))
    _expect_error(q, "not a readable NIfTI|corrupt")
    r = tmp_path / "notes.txt"
    r.write_text("not an image")
    _expect_error(r, "unrecognised file format")
    s = tmp_path / "fake.png"
    s.write_text("not a png")
    _expect_error(s, "not a readable PNG")


def test_huge_header(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.float32)
    p = tmp_path / "huge.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    _expect_error(p, "declares")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite(tmp_path: Path, value: float) -> None:
    data = np.ones((5, 5, 5), np.float32)
    data[1, 2, 3] = value
    p = _nifti(tmp_path / "nan.nii.gz", data)
    _expect_error(p, "1 of 125 voxels are NaN or Inf")
    fixed = medcnn.load(p, nonfinite="zero")
    assert float(fixed[0, 1, 2, 3]) == 0.0 and bool(torch.isfinite(fixed).all())
    allnan = _nifti(tmp_path / "allnan.nii.gz", np.full((3, 3, 3), np.nan, np.float32))
    _expect_error(allnan, "all voxels are NaN")


def test_wrong_dimensionality(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "vol.nii.gz", np.zeros((4, 4, 4), np.float32))
    _expect_error(p, "expected a 2D image", spatial_dims=2)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat.png")
    _expect_error(tmp_path / "flat.png", "expected a 3D", spatial_dims=3)
    six = tmp_path / "6d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2, 2), np.float32), np.eye(4)), str(six))
    _expect_error(six, "6D")


@pytest.mark.parametrize("name,pattern", [("x.mnc", "MINC"), ("x.PAR", "PAR/REC"), ("x.mgz", "MGZ")])
def test_unsupported_formats_name_the_format(tmp_path: Path, name: str, pattern: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\0" * 64)
    _expect_error(p, pattern)


def test_real_minc_and_parrec_from_nibabel_are_refused(tmp_path: Path) -> None:
    data = Path(nib.__file__).parent / "tests" / "data"
    for name in ("minc1_1_scale.mnc", "T1.PAR"):
        if (data / name).exists():
            with pytest.raises(InputError, match="not supported"):
                medcnn.load(data / name)


def test_non_ascii_and_spaces_in_path(tmp_path: Path) -> None:
    folder = tmp_path / "Patiënt ünïcode folder"
    folder.mkdir()
    p = _nifti(folder / "scan é 1.nii.gz", np.ones((3, 3, 3), np.float32))
    img = medcnn.load(p)
    out = folder / "résultat mask.nii.gz"
    medcnn.save(img[0] > 0, out, like=img)
    assert nib.load(str(out)).shape == (3, 3, 3)


def test_save_is_atomic_on_failure(tmp_path: Path) -> None:
    img = medcnn.load(_nifti(tmp_path / "a.nii.gz", np.ones((3, 3, 3), np.float32)))
    with pytest.raises(ValueError):
        medcnn.save(img[0] * 300.0, tmp_path / "x.png", like=img)  # 3D cannot be PNG
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert not (tmp_path / "x.png").exists()


def test_spatial_helpers() -> None:
    aff = geometry.itk_to_affine((1, 2, 3), (0.5, 0.7, 2.0), tuple(np.eye(3).ravel()))
    o, s, d = geometry.affine_to_itk(aff)
    np.testing.assert_allclose(o, (1, 2, 3))
    np.testing.assert_allclose(s, (0.5, 0.7, 2.0))
    assert geometry.axcodes(aff) == "LPS"


def test_gzip_checksum_mismatch_and_missing_trailer_are_refused(tmp_path: Path) -> None:
    """A .nii.gz whose CRC does not match, or that lost its 8-byte trailer, is corrupt — never silently loaded."""
    p = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.int16).reshape(20, 20, 10), np.eye(4)), p)
    raw = bytearray(p.read_bytes())
    bad_crc = tmp_path / "crc.nii.gz"
    raw_crc = bytearray(raw)
    raw_crc[-8] ^= 0xFF
    bad_crc.write_bytes(bytes(raw_crc))
    no_trailer = tmp_path / "trailer.nii.gz"
    no_trailer.write_bytes(bytes(raw[:-8]))
    for f in (bad_crc, no_trailer):
        with pytest.raises(InputError, match="truncated or corrupt"):
            medcnn.load(f)


def test_scaled_big_endian_and_multimember_gzip_load_exactly(tmp_path: Path) -> None:
    data = (np.arange(24 * 20 * 6).reshape(24, 20, 6) % 700).astype(">i2")
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.0, 1.0]))
    img.header.set_slope_inter(0.5, -100.0)
    p = tmp_path / "be.nii"
    nib.save(img, p)
    expected = data.astype(np.float64) * 0.5 - 100.0
    raw = p.read_bytes()
    gz = tmp_path / "multi.nii.gz"
    cut = len(raw) // 3
    gz.write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))  # two gzip members, as some tools write
    for f in (p, gz):
        got = medcnn.load(f)[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)
