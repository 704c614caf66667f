"""evaluate_folders: pairing layouts, missing cases, grid mismatch, CSV and mean rows."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcnn.errors import InputError
from medcnn.io.atomic import TMP_MARK
from medcnn.metrics import evaluate_folders, pair_cases
from medcnn.metrics.evaluate import COLUMNS

SPACING = (1.5, 1.0, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (-10.0, 5.0, 3.0)


def tumor(shift: int = 0, shape: tuple[int, int, int] = (24, 24, 20)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4 + shift:16 + shift, 4:16, 4:14] = 2
    lab[6 + shift:12 + shift, 6:12, 6:12] = 1
    lab[8 + shift:10 + shift, 8:10, 8:10] = 3
    return lab


def write(path: Path, labels: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    # BraTS 2023 folder layout, perfect prediction
    write(ref / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", tumor())
    write(ref / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz", tumor() * 100)  # an image, not a label
    write(pred / "BraTS-GLI-00001-000.nii.gz", tumor())
    # <case>_seg layout, prediction shifted 2 voxels along axis 0 (1.5 mm voxels -> 3 mm)
    write(ref / "case2_seg.nii.gz", tumor())
    write(pred / "case2.nii.gz", tumor(shift=2))
    # nnU-Net labelsTr layout
    write(ref / "labelsTr" / "case3.nii.gz", tumor())
    write(pred / "case3.nii.gz", tumor())
    # plain <case>.nii.gz reference, prediction on another grid (shape)
    write(ref / "case4.nii.gz", tumor())
    write(pred / "case4.nii.gz", tumor(shape=(24, 24, 22)))
    # same shape, other spacing
    write(ref / "case5.nii.gz", tumor())
    write(pred / "case5.nii.gz", tumor(), np.diag([1.0, 1.0, 1.0, 1.0]))
    # prediction without reference, reference without prediction
    write(pred / "case6.nii.gz", tumor())
    write(ref / "case7" / "case7-seg.nii.gz", tumor())
    (pred / "summary.csv").write_text("case,status\n")
    return pred, ref


def by_case(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["case"], r["region"]): r for r in rows}


def test_pairing_layouts(folders: tuple[Path, Path]) -> None:
    pred, ref = folders
    pairs = {case: (p, r) for case, p, r in pair_cases(pred, ref)}
    assert sorted(pairs) == ["BraTS-GLI-00001-000", "case2", "case3", "case4", "case5", "case6", "case7"]
    assert pairs["BraTS-GLI-00001-000"][1].name == "BraTS-GLI-00001-000-seg.nii.gz"
    assert pairs["case2"][1].name == "case2_seg.nii.gz"
    assert pairs["case3"][1].parent.name == "labelsTr"
    assert pairs["case6"][1] is None
    assert pairs["case7"][0] is None and pairs["case7"][1].name == "case7-seg.nii.gz"


def test_evaluate_folders_rows_and_csv(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    out = tmp_path / "res" / "metrics.csv"
    rows = evaluate_folders(pred, ref, out)
    assert len(rows) == 7 * 3 + 3
    got = by_case(rows)
    for region in ("WT", "TC", "ET"):
        perfect = got[("BraTS-GLI-00001-000", region)]
        assert perfect["status"] == "ok" and perfect["error"] == ""
        assert (perfect["dice"], perfect["hd95_mm"], perfect["nsd"]) == (1.0, 0.0, 1.0)
        assert got[("case3", region)]["dice"] == 1.0
        shifted = got[("case2", region)]
        assert shifted["status"] == "ok"
        assert shifted["hd95_mm"] == pytest.approx(3.0)  # spacing taken from the affine
        assert shifted["nsd"] < 1.0
        for case in ("case4", "case5"):
            assert got[(case, region)]["status"] == "error"
            assert "grid mismatch" in got[(case, region)]["error"]
            assert math.isnan(got[(case, region)]["dice"])
        assert got[("case6", region)]["status"] == "missing" and "no reference" in got[("case6", region)]["error"]
        assert got[("case7", region)]["status"] == "missing" and "no prediction" in got[("case7", region)]["error"]
        mean = got[("mean", region)]
        ok = [got[(c, region)] for c in ("BraTS-GLI-00001-000", "case2", "case3")]
        assert mean["dice"] == pytest.approx(np.mean([r["dice"] for r in ok]))
        assert mean["status"] == "ok" and "3 of 7" in mean["error"]
    assert "shape (24, 24, 22)" in got[("case4", "WT")]["error"]
    assert "spacing" in got[("case5", "WT")]["error"]
    # WT of the reference: 12 x 12 x 10 voxels of 3 mm^3
    assert got[("case3", "WT")]["ref_ml"] == pytest.approx(1440 * 3.0 / 1000)
    assert got[("case2", "WT")]["dice"] == pytest.approx(10 / 12)

    with open(out, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == COLUMNS
    assert len(table) == len(rows)
    assert [r["case"] for r in table[-3:]] == ["mean"] * 3
    assert float(table[0]["dice"]) == 1.0
    assert table[-1]["dice"] != "" and not [p for p in out.parent.iterdir() if TMP_MARK in p.name]


def test_single_files_and_custom_regions(tmp_path: Path) -> None:
    p = write(tmp_path / "p" / "x.nii.gz", tumor(shift=1))
    r = write(tmp_path / "r" / "y_seg.nii.gz", tumor())
    rows = evaluate_folders(p, r, tmp_path / "one.csv", regions={"core": (1, 3)}, nsd_tolerance_mm=1.5)
    assert [(row["case"], row["region"], row["status"]) for row in rows] == [("x", "core", "ok"), ("mean", "core", "ok")]
    assert rows[0]["dice"] == pytest.approx(5 / 6)
    assert rows[0]["nsd"] == pytest.approx(1.0)  # 1 voxel = 1.5 mm shift, within tolerance
    assert rows[1]["dice"] == rows[0]["dice"]


def test_bad_paths_and_unreadable_case(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", tmp_path, tmp_path / "m.csv")
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    write(ref / "a.nii.gz", tumor())
    pred.mkdir()
    (pred / "a.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="folder"):
        evaluate_folders(pred, ref / "a.nii.gz", tmp_path / "m.csv")
    rows = evaluate_folders(pred, ref, tmp_path / "m.csv")
    assert rows[0]["status"] == "error" and "a.nii.gz" in rows[0]["error"]
    assert rows[-1]["case"] == "mean" and rows[-1]["status"] == "error" and math.isnan(rows[-1]["dice"])
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        evaluate_folders(pred, ref, tmp_path / "m.csv", nsd_tolerance_mm=-1)
