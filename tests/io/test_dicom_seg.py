"""DICOM SEG output: read back with highdicom, masks equal per segment and frame, references correct."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import medcnn
from medcnn.cli.main import cli
from medcnn.errors import InputError
from medcnn.io.dicom_seg import segment_code, source_files, write_dicom_seg
from medcnn.synth.dicom_series import write_dicom_series
from medcnn.synth.dicom_write import write_xray_dicom


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _series(folder: Path, shape=(20, 16, 6), seed: int = 0) -> list[Path]:
    aff = np.diag([-1.2, -1.0, 2.0, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    vol = np.random.default_rng(seed).integers(0, 100, shape).astype(float)
    return write_dicom_series(vol, aff, folder, seed=seed)  # shuffled file names: order comes from positions


def _labels(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:8, 2:9, 1:4] = 1
    lab[10:15, 5:12, 2:5] = 3
    lab[0, 0, 0] = 2
    return lab


def _pixels(seg, uids: list[str], n_segments: int) -> np.ndarray:
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=list(range(1, n_segments + 1)),
                                             assert_missing_frames_are_empty=True)


def test_series_round_trip_references_and_codes(tmp_path: Path) -> None:
    files = _series(tmp_path / "series")
    before = _digest(files)
    img = medcnn.load(tmp_path / "series")
    lab = _labels(tuple(img.shape[1:]))
    out = write_dicom_seg(torch.as_tensor(lab)[None], tmp_path / "out" / "case.seg.dcm", like=img,
                          segment_names={1: "NCR", 2: "ED", 3: "ET"}, algorithm="brain-tumor")
    seg = hd.seg.segread(out)
    srcs = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files(img)]
    uids = [s.SOPInstanceUID for s in srcs]
    # the slice files in the volume's K order (sorted by position, not by their shuffled names)
    assert [float(s.ImagePositionPatient[2]) for s in srcs] == sorted(float(s.ImagePositionPatient[2]) for s in srcs)
    px = _pixels(seg, uids, 3)
    frames = np.transpose(lab, (2, 1, 0))  # (K, rows, cols)
    for s in (1, 2, 3):
        np.testing.assert_array_equal(px[..., s - 1].astype(bool), frames == s)
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == srcs[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == set(uids)
    assert seg.StudyInstanceUID == srcs[0].StudyInstanceUID and seg.FrameOfReferenceUID == srcs[0].FrameOfReferenceUID
    types = [seg.get_segment_description(s).segmented_property_type.value for s in (1, 2, 3)]
    assert types == ["6574001", "79654002", "108369006"]  # SNOMED CT necrosis, edema, neoplasm
    assert seg.get_segment_description(3).segment_label == "enhancing tumour"
    assert _digest(files) == before  # type-2 attributes were filled on in-memory copies only


def test_seg_equals_nifti_output_on_a_resampled_grid(tmp_path: Path) -> None:
    _series(tmp_path / "series", seed=1)
    img = medcnn.load(tmp_path / "series", spacing=1.5, orientation="RAS")
    lab = torch.zeros(img.shape[1:], dtype=torch.uint8)
    lab[2:9, 3:10, 2:6] = 1
    medcnn.save(lab, tmp_path / "mask.nii.gz", like=img)
    write_dicom_seg(lab, tmp_path / "mask.seg.dcm", like=img, segment_names={1: "lesion"})
    nifti = np.asarray(nib.load(str(tmp_path / "mask.nii.gz")).dataobj)  # (I, J, K) on the source grid
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files(img)]
    px = _pixels(hd.seg.segread(tmp_path / "mask.seg.dcm"), uids, 1)
    assert nifti.any()
    np.testing.assert_array_equal(px[..., 0].astype(bool), np.transpose(nifti, (2, 1, 0)) == 1)


def test_pydicom_file_without_type2_attributes(tmp_path: Path) -> None:
    src = Path(shutil.copy(get_testdata_file("ExplVR_BigEnd.dcm"), tmp_path / "us.dcm"))
    ds = pydicom.dcmread(src)
    assert "PatientBirthDate" not in ds and "StudyID" not in ds and "AccessionNumber" not in ds
    before = _digest([src])
    img = medcnn.load(src)
    lab = torch.zeros(img.shape[1:], dtype=torch.uint8)  # (rows, cols)
    lab[10:30, 20:50] = 1
    write_dicom_seg(lab, tmp_path / "us.seg.dcm", like=img, segment_names={1: "lesion"})
    seg = hd.seg.segread(tmp_path / "us.seg.dcm")
    px = _pixels(seg, [ds.SOPInstanceUID], 1)
    np.testing.assert_array_equal(px[0, ..., 0].astype(bool), lab.numpy() == 1)
    assert seg.PatientBirthDate == "" and seg.StudyID == ""
    assert seg.get_segment_description(1).segmented_property_type.value == "52988006"  # lesion
    assert _digest([src]) == before


def test_radiograph_overlapping_masks(tmp_path: Path) -> None:
    dx = write_xray_dicom(tmp_path / "cxr.dcm", np.random.default_rng(0).integers(0, 4000, (64, 48)).astype(np.uint16))
    img = medcnn.load(dx)
    lungs = torch.zeros(64, 48, dtype=torch.bool)
    heart = torch.zeros(64, 48, dtype=torch.bool)
    lungs[10:50, 5:40] = True
    heart[30:60, 20:30] = True  # overlaps the lungs
    write_dicom_seg(torch.stack([lungs, heart]), tmp_path / "cxr.seg.dcm", like=img, segment_names={1: "lungs", 2: "heart"})
    seg = hd.seg.segread(tmp_path / "cxr.seg.dcm")
    px = _pixels(seg, [pydicom.dcmread(dx).SOPInstanceUID], 2)
    np.testing.assert_array_equal(px[0, ..., 0].astype(bool), lungs.numpy())
    np.testing.assert_array_equal(px[0, ..., 1].astype(bool), heart.numpy())
    assert [seg.get_segment_description(s).segmented_property_type.value for s in (1, 2)] == ["39607008", "80891009"]


def test_multiframe_source_frames_in_stored_order(tmp_path: Path) -> None:
    from test_dicom import _enhanced_mr, _oblique_affine

    rng = np.random.default_rng(3)
    vol = (rng.integers(0, 500, (16, 12, 7)) * 2 - 10).astype(np.float32)
    order = rng.permutation(7)
    path = _enhanced_mr(tmp_path / "enh.dcm", vol, _oblique_affine(), order)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.save_as(path)
    img = medcnn.load(path)
    lab = torch.zeros(img.shape[1:], dtype=torch.uint8)
    lab[3:9, 2:7, 1:5] = 1
    lab[:, :, 6] = 2
    write_dicom_seg(lab, tmp_path / "enh.seg.dcm", like=img)
    seg = hd.seg.segread(tmp_path / "enh.seg.dcm")
    for f in range(int(seg.NumberOfFrames)):
        fg = seg.PerFrameFunctionalGroupsSequence[f]
        stored = int(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber) - 1
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = int(order[stored])  # stored frame j holds slice order[j]
        np.testing.assert_array_equal(seg.pixel_array[f].astype(bool), lab.numpy()[:, :, k].T == number)


def test_refused_for_non_dicom_and_mismatched_labels(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), str(tmp_path / "t1.nii.gz"))
    img = medcnn.load(tmp_path / "t1.nii.gz")
    with pytest.raises(InputError, match="not a DICOM image"):
        write_dicom_seg(torch.zeros(8, 8, 4, dtype=torch.uint8), tmp_path / "x.seg.dcm", like=img)
    _series(tmp_path / "series")
    dimg = medcnn.load(tmp_path / "series")
    with pytest.raises(ValueError, match="do not fit"):
        write_dicom_seg(torch.zeros(5, 5, 5, dtype=torch.uint8), tmp_path / "x.seg.dcm", like=dimg)
    assert not (tmp_path / "x.seg.dcm").exists()


def test_empty_label_map_gives_one_empty_segment(tmp_path: Path) -> None:
    _series(tmp_path / "series")
    img = medcnn.load(tmp_path / "series")
    write_dicom_seg(torch.zeros(img.shape[1:], dtype=torch.uint8), tmp_path / "empty.seg.dcm", like=img)
    seg = hd.seg.segread(tmp_path / "empty.seg.dcm")
    assert len(seg.SegmentSequence) == 1
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files(img)]
    assert not _pixels(seg, uids, 1).any()


def test_segment_codes() -> None:
    assert segment_code("NCR").type == "Necrosis" and segment_code("ed").type == "Edema"
    assert segment_code("ET").type == "Neoplasm" and segment_code("lungs").type == "Lung"
    assert segment_code("heart").type == "Heart" and segment_code("lateral ventricles").type == "LateralVentricle"
    unknown = segment_code("object 2")
    assert (unknown.label, unknown.category, unknown.type) == ("object 2", "Tissue", "Tissue")


def test_prompt_cli_writes_seg_equal_to_nifti(tmp_path: Path) -> None:
    aff = np.diag([-1.0, -1.0, 2.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (40, 40, 5)], indexing="ij"))
    vol = np.where(((grid[0] - 20) ** 2 + (grid[1] - 18) ** 2) < 64, 200.0, 20.0)
    write_dicom_series(vol, aff, tmp_path / "series")
    runner = CliRunner()
    box = ["--box", "10,8,1,31,29,4"]
    r1 = runner.invoke(cli, ["prompt", str(tmp_path / "series"), *box, "-o", str(tmp_path / "obj.seg.dcm")])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(cli, ["prompt", str(tmp_path / "series"), *box, "-o", str(tmp_path / "obj.nii.gz")])
    assert r2.exit_code == 0, r2.output
    assert (tmp_path / "obj_qc.png").exists()
    nifti = np.asarray(nib.load(str(tmp_path / "obj.nii.gz")).dataobj)
    img = medcnn.load(tmp_path / "series")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files(img)]
    seg = hd.seg.segread(tmp_path / "obj.seg.dcm")
    assert nifti.any() and str(seg.SegmentSequence[0].SegmentAlgorithmType) == "SEMIAUTOMATIC"
    np.testing.assert_array_equal(_pixels(seg, uids, 1)[..., 0].astype(bool), np.transpose(nifti, (2, 1, 0)) > 0)
    r3 = runner.invoke(cli, ["prompt", str(tmp_path / "obj.nii.gz"), *box, "-o", str(tmp_path / "bad.seg.dcm")])
    assert r3.exit_code != 0 and "needs a DICOM input" in r3.output
