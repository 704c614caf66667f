"""``medcnn predict ... --dicom-seg``: a SEG beside the label map whenever the reference image is DICOM."""

from __future__ import annotations

import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from relyhelp import head_volume, tiny_models  # noqa: E402

import medcnn  # noqa: E402
from medcnn.cli.main import cli  # noqa: E402
from medcnn.io.dicom_seg import source_files  # noqa: E402
from medcnn.synth.dicom_series import write_dicom_series  # noqa: E402
from medcnn.synth.dicom_write import write_xray_dicom  # noqa: E402


def _uids(img) -> list[str]:
    return [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files(img)]


def test_brain_tumor_dicom_contrasts_get_a_seg_of_the_t1n_series(tmp_path: Path) -> None:
    case = tmp_path / "cases" / "case01"
    vol, aff = head_volume(shape=(16, 18, 14), spacing=4.0)
    for i, tag in enumerate(("t1n", "t1c", "t2w", "t2f")):
        write_dicom_series(vol * (1 + 0.1 * i), aff, case / f"case01-{tag}", series_number=i + 1, seed=i)
    model = tiny_models("brain-tumor", tmp_path / "models")[0]
    runner = CliRunner()
    res = runner.invoke(cli, ["predict", "brain-tumor", str(case), "-o", str(tmp_path / "out"), "--model", str(model),
                              "--device", "cpu", "--dicom-seg"])
    assert res.exit_code == 0, res.output
    nifti = np.asarray(nib.load(str(tmp_path / "out" / "case01.nii.gz")).dataobj)
    seg = hd.seg.segread(tmp_path / "out" / "case01.seg.dcm")
    t1n = medcnn.load(case / "case01-t1n")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(source_files(t1n)[0]).SeriesInstanceUID
    assert [seg.get_segment_description(s).segment_label for s in (1, 2, 3)] == ["necrotic tumour core", "edema", "enhancing tumour"]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=_uids(t1n), segment_numbers=[1, 2, 3],
                                           assert_missing_frames_are_empty=True)
    frames = np.transpose(nifti, (2, 1, 0))
    for s in (1, 2, 3):
        np.testing.assert_array_equal(px[..., s - 1].astype(bool), frames == s)
    plain = runner.invoke(cli, ["predict", "brain-tumor", str(case), "-o", str(tmp_path / "plain"), "--model", str(model),
                                "--device", "cpu"])
    assert plain.exit_code == 0 and not (tmp_path / "plain" / "case01.seg.dcm").exists()


def test_chest_xray_dicom_radiograph_gets_lungs_and_heart_segments(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dx = write_xray_dicom(tmp_path / "images" / "cxr01.dcm", rng.integers(0, 4000, (64, 56)).astype(np.uint16))
    Image.fromarray(rng.integers(0, 255, (64, 56)).astype(np.uint8)).save(tmp_path / "images" / "cxr02.png")
    models = tiny_models("chest-xray", tmp_path / "models")
    args = ["predict", "chest-xray", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--device", "cpu", "--dicom-seg"]
    for m in models:
        args += ["--model", str(m)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "out" / "cxr02.seg.dcm").exists()  # a PNG has nothing to reference
    seg = hd.seg.segread(tmp_path / "out" / "cxr01.seg.dcm")
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[pydicom.dcmread(dx).SOPInstanceUID],
                                           segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    for s, part in ((1, "lungs"), (2, "heart")):
        png = np.asarray(Image.open(tmp_path / "out" / f"cxr01_{part}.png")) > 0
        np.testing.assert_array_equal(px[0, ..., s - 1].astype(bool), png)


def test_dicom_seg_refused_for_a_pipeline_without_label_maps(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["predict", "alzheimer", str(tmp_path), "-o", str(tmp_path / "out"), "--dicom-seg"])
    assert res.exit_code == 2 and "writes no label map" in res.output
