"""Case discovery rules of DESIGN §3."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcnn import InputError
from medcnn.cases import find_brain_tumor_cases, find_image_cases
from medcnn.synth.dicom_series import write_dicom_series


def _touch_nii(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    return path


def test_brats2023_brats2021_and_nnunet(tmp_path: Path) -> None:
    for c in ("t1n", "t1c", "t2w", "t2f", "seg"):
        _touch_nii(tmp_path / "all" / "BraTS-GLI-00001-000" / f"BraTS-GLI-00001-000-{c}.nii.gz")
    for c in ("t1", "t1ce", "t2", "flair", "seg"):
        _touch_nii(tmp_path / "all" / "BraTS2021_00002" / f"BraTS2021_00002_{c}.nii.gz")
    for i in range(4):
        _touch_nii(tmp_path / "nn" / f"CASE7_{i:04d}.nii.gz")
    cases = find_brain_tumor_cases([tmp_path / "all", tmp_path / "nn"])
    assert [c.id for c in cases] == ["BraTS-GLI-00001-000", "BraTS2021_00002", "CASE7"]
    b23, b21, nn = cases
    assert [p.name.split("-")[-1] for p in b23.inputs] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]
    assert b23.label is not None and b23.label.name.endswith("-seg.nii.gz")
    assert [p.name.split("_")[-1] for p in b21.inputs] == ["t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "flair.nii.gz"]
    assert [p.name for p in nn.inputs] == [f"CASE7_{i:04d}.nii.gz" for i in range(4)]
    assert all(c.error is None for c in cases)


def test_brain_case_missing_contrast_is_reported_not_dropped(tmp_path: Path) -> None:
    for c in ("t1n", "t1c", "t2w"):
        _touch_nii(tmp_path / "X" / f"X-{c}.nii.gz")
    (case,) = find_brain_tumor_cases([tmp_path / "X"])
    assert case.error is not None and "t2f" in case.error


def test_brain_no_case(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no brain-tumour case"):
        find_brain_tumor_cases([tmp_path / "empty"])


def test_bids_ids_and_dicom_series_cases(tmp_path: Path) -> None:
    _touch_nii(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _touch_nii(tmp_path / "bids" / "sub-02" / "ses-b" / "anat" / "sub-02_ses-b_T1w.nii.gz")
    _touch_nii(tmp_path / "bids" / "sub-02" / "ses-b" / "anat" / "sub-02_ses-b_label-mask.nii.gz")
    vol = np.ones((4, 4, 3), np.float32)
    write_dicom_series(vol, np.eye(4), tmp_path / "dcm" / "patientA", series_number=2)
    write_dicom_series(vol, np.eye(4), tmp_path / "dcm" / "patientA", series_number=4, seed=5, name_prefix="S4_")
    write_dicom_series(vol, np.eye(4), tmp_path / "dcm" / "patientB")
    cases = find_image_cases([tmp_path / "bids", tmp_path / "dcm"])
    ids = [c.id for c in cases]
    assert "sub-01" in ids and "sub-02_ses-b" in ids
    assert not any("mask" in i for i in ids)
    assert "patientB" in ids
    assert {"patientA_s2", "patientA_s4"} <= set(ids)
    a2 = next(c for c in cases if c.id == "patientA_s2")
    assert a2.extra["series"]


def test_image_cases_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        find_image_cases([tmp_path / "nothing"])


def test_annotation_folders_are_skipped_unless_named(tmp_path: Path) -> None:
    """A generated / nnU-Net-style dataset folder: its scans are cases, its masks/ and labelsTr/ are not;
    naming the mask folder itself still finds its images."""
    from PIL import Image

    grey = np.full((40, 40), 100, np.uint8)
    for rel in ["ds/images/cxr-1.png", "ds/images/cxr-2.png", "ds/masks/cxr-1_Nodule.png", "ds/Masks/cxr-2_Effusion.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(tmp_path / rel)
    _touch_nii(tmp_path / "ds" / "imagesTr" / "case_0000.nii.gz")
    _touch_nii(tmp_path / "ds" / "labelsTr" / "case.nii.gz")
    ids = [c.id for c in find_image_cases([tmp_path / "ds"])]
    assert ids == ["case_0000", "cxr-1", "cxr-2"]
    assert [c.id for c in find_image_cases([tmp_path / "ds" / "masks"])] == ["cxr-1_Nodule"]
