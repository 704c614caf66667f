"""Geometry matrix: save(mask, like=load(src, ...)) lands exactly on the source grid, checked with SimpleITK."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medcnn
from medcnn.io import geometry
from medcnn.synth.dicom_series import write_dicom_series

from imgtools import ORIENTATIONS, assert_same_geometry, make_sitk, series_geometry, sitk_geometry

LOAD_OPTIONS = {
    "stored": {},
    "ras": {"orientation": "RAS"},
    "lps": {"orientation": "LPS"},
    "ras-1.5mm": {"orientation": "RAS", "spacing": (1.5, 1.5, 1.5)},
    "2mm": {"spacing": 2.0},
    "aniso": {"orientation": "PIL", "spacing": (0.7, 2.2, 1.1)},
}
FORMATS = (".nii.gz", ".nrrd", ".mha", "dicom")


def _write_source(tmp: Path, fmt: str, kind: str) -> tuple[Path, tuple, np.ndarray]:
    img = make_sitk(kind=kind, seed=ORIENTATIONS.index(kind))
    arr_ijk = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    if fmt == "dicom":
        aff = geometry.itk_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
        folder = tmp / "series"
        write_dicom_series(np.round(arr_ijk), aff, folder, modality="CT")
        # DICOM stacks slices along the normal of the slice plane, so a left-handed source grid comes
        # back flipped along k: the reference is what SimpleITK's own series reader returns.
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        ref = np.transpose(sitk.GetArrayFromImage(reader.Execute()), (2, 1, 0))
        return folder, series_geometry(folder), ref
    path = tmp / f"src{fmt}"
    sitk.WriteImage(img, str(path))
    return path, sitk_geometry(path), arr_ijk


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ORIENTATIONS)
def test_roundtrip_geometry_matrix(tmp_path: Path, fmt: str, kind: str) -> None:
    src, src_geo, arr_ijk = _write_source(tmp_path, fmt, kind)
    ref_mask = arr_ijk > 400
    for name, opts in LOAD_OPTIONS.items():
        img = medcnn.load(src, **opts)
        assert img.dtype == torch.float32 and img.ndim == 4
        mask = (img[0] > 400).to(torch.uint8)
        outs = [tmp_path / f"{name}.nii.gz", tmp_path / f"{name}.nrrd"]
        for out in outs:
            medcnn.save(mask, out, like=img)
            assert_same_geometry(sitk_geometry(out), src_geo)
        back = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(outs[1]))), (2, 1, 0)).astype(bool)
        if "spacing" not in opts:
            # pure reorientation is a permutation: the round trip is voxel-exact
            np.testing.assert_array_equal(back, ref_mask)
        else:
            inter = (back & ref_mask).sum()
            dice = 2 * inter / (back.sum() + ref_mask.sum())
            assert dice > 0.75, f"{name}: round-trip Dice {dice:.3f}"


@pytest.mark.parametrize("kind", ORIENTATIONS)
def test_affine_matches_sitk_physical_points(tmp_path: Path, kind: str) -> None:
    img = make_sitk(kind=kind)
    path = tmp_path / "a.nrrd"
    sitk.WriteImage(img, str(path))
    for opts in ({}, {"orientation": "RAS"}):
        loaded = medcnn.load(path, **opts)
        aff = loaded.affine.numpy()
        stored_aff = loaded.meta["medcnn_source"]["affine"]
        for idx in [(0, 0, 0), (5, 3, 2), (22, 18, 10)]:
            lps = np.array(img.TransformIndexToPhysicalPoint(idx))
            ras = lps * np.array([-1, -1, 1])
            np.testing.assert_allclose((stored_aff @ np.r_[idx, 1])[:3], ras, atol=1e-6)
        # value at a voxel of the (reoriented) grid equals the source value at the same world point
        src = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
        for new_idx in [(0, 0, 0), (3, 4, 5), tuple(s - 1 for s in loaded.shape[1:])]:
            world = aff @ np.r_[new_idx, 1]
            old = np.linalg.solve(stored_aff, world)[:3]
            old_i = tuple(int(round(v)) for v in old)
            np.testing.assert_allclose(old, old_i, atol=1e-6)
            assert float(loaded[(0, *new_idx)]) == pytest.approx(float(src[old_i]))


def test_respacing_samples_the_right_world_points(tmp_path: Path) -> None:
    """Resampled values of a linear ramp equal the ramp evaluated at the new voxel centres."""
    img = make_sitk(size=(30, 26, 14), kind="oblique-permuted")
    arr = np.zeros(sitk.GetArrayFromImage(img).shape, np.float32)
    a = np.array([0.3, -0.2, 0.5])
    for idx in np.ndindex(*img.GetSize()):
        arr[idx[::-1]] = a @ np.array(img.TransformIndexToPhysicalPoint(idx))
    ramp = sitk.GetImageFromArray(arr)
    ramp.CopyInformation(img)
    path = tmp_path / "ramp.mha"
    sitk.WriteImage(ramp, str(path))
    loaded = medcnn.load(path, spacing=(1.7, 1.1, 2.3), orientation="RAS")
    aff = loaded.affine.numpy()
    shape = loaded.shape[1:]
    idx = np.stack(np.meshgrid(*[np.arange(2, s - 2) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world_ras = idx @ aff[:3, :3].T + aff[:3, 3]
    expect = (world_ras * np.array([-1, -1, 1])) @ a
    got = loaded[0].numpy()[tuple(idx.T)]
    np.testing.assert_allclose(got, expect, atol=1e-3)


def test_respace_shape_and_spacing(tmp_path: Path) -> None:
    img = make_sitk(size=(40, 30, 10), spacing=(0.5, 0.8, 4.0), kind="identity")
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(path))
    loaded = medcnn.load(path, spacing=1.0)
    assert tuple(loaded.shape[1:]) == (20, 24, 40)
    np.testing.assert_allclose(geometry.voxel_spacing(loaded.affine.numpy()), [1.0, 1.0, 1.0], atol=1e-9)


def test_float_image_roundtrip_is_linear_and_exact_without_resampling(tmp_path: Path) -> None:
    img = make_sitk(kind="oblique")
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(path))
    loaded = medcnn.load(path, orientation="RAS")
    out = tmp_path / "b.nii.gz"
    medcnn.save(loaded, out)  # an image from load saves back onto its own source grid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(img))


def _nibabel_data(name: str) -> Path:
    return Path(nib.__file__).parent / "tests" / "data" / name


@pytest.mark.parametrize(
    "name", ["anatomical.nii", "reoriented_anat_moved.nii", "resampled_anat_moved.nii", "standard.nii.gz", "example_nifti2.nii.gz"]
)
def test_real_nifti_files_roundtrip(tmp_path: Path, name: str) -> None:
    """Files we did not make (nibabel's test data): geometry and header survive load/save."""
    src = _nibabel_data(name)
    if not src.exists():
        pytest.skip(f"nibabel test file {name} not shipped")
    shutil.copy(src, tmp_path / name)
    src = tmp_path / name
    ref = nib.load(str(src))
    sitk_reads_it = not isinstance(ref, nib.Nifti2Image)  # SimpleITK has no NIfTI-2 reader
    for opts in ({}, {"orientation": "RAS", "spacing": 2.5}):
        img = medcnn.load(src, nonfinite="zero", **opts)  # SPM outputs hold NaN outside the brain
        mask = (img[:1] > float(img[:1].mean())).to(torch.uint8)
        out = tmp_path / "mask.nii.gz"
        medcnn.save(mask, out, like=img)
        got = nib.load(str(out))
        assert got.shape[:3] == ref.shape[:3]
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
        assert type(got.header) is type(ref.header)
        if sitk_reads_it:
            assert_same_geometry(sitk_geometry(out), sitk_geometry(src))
        if not opts:
            data = np.asanyarray(ref.dataobj)
            data = np.nan_to_num(data if data.ndim == 3 else data[..., 0])
            np.testing.assert_array_equal(np.asanyarray(got.dataobj).astype(bool), data > float(img[:1].mean()))


def test_nifti_with_different_qform_and_sform_keeps_both(tmp_path: Path) -> None:
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    q = np.diag([2.0, 2.0, 3.0, 1.0])
    s = q.copy()
    s[:3, :3] = geometry.itk_to_affine((0, 0, 0), (2, 2, 3), tuple(np.eye(3)[[1, 0, 2]].ravel()))[:3, :3]
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(q, code=1)
    img.header.set_sform(s, code=2)
    src = tmp_path / "qs.nii.gz"
    nib.save(img, src)
    loaded = medcnn.load(src, orientation="RAS", spacing=1.0)
    out = tmp_path / "out.nii.gz"
    medcnn.save((loaded > 100).to(torch.uint8), out, like=loaded)
    hdr = nib.load(str(out)).header
    np.testing.assert_allclose(hdr.get_qform(), img.header.get_qform(), atol=1e-5)
    np.testing.assert_allclose(hdr.get_sform(), img.header.get_sform(), atol=1e-5)
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 2
    assert_same_geometry(sitk_geometry(out), sitk_geometry(src))


def test_save_rejects_wrong_shape(tmp_path: Path) -> None:
    img = make_sitk(kind="identity")
    path = tmp_path / "a.nii.gz"
    sitk.WriteImage(img, str(path))
    loaded = medcnn.load(path)
    with pytest.raises(ValueError, match="does not match"):
        medcnn.save(torch.zeros(3, 3, 3), tmp_path / "m.nii.gz", like=loaded)


def test_save_multichannel_and_float_probabilities(tmp_path: Path) -> None:
    img = make_sitk(kind="flipped")
    path = tmp_path / "a.mha"
    sitk.WriteImage(img, str(path))
    loaded = medcnn.load(path, orientation="RAS", spacing=1.0)
    probs = torch.stack([loaded[0] / loaded.max(), 1 - loaded[0] / loaded.max()])
    out = tmp_path / "p.nii.gz"
    medcnn.save(probs, out, like=loaded)
    got = nib.load(str(out))
    assert got.shape == (*img.GetSize(), 2)
    assert got.get_data_dtype() == np.float32
