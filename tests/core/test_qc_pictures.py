"""QC pictures a radiologist reads: radiological convention by default (switchable), side markers from the affine,
legend, case id and figures, the prompt box drawn; prompt masks visible in any viewer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medcnn import qc
from medcnn.cli.main import cli


def _left_marked_volume() -> np.ndarray:
    """A (X, Y, Z) volume, RAS voxel axes: a bright block on the patient's left (small x)."""
    vol = np.full((30, 32, 20), 10.0, dtype=np.float32)
    vol[2:8, 10:20, 5:15] = 100.0
    return vol


def _bright_side(grey: np.ndarray) -> str:
    half = grey.shape[1] // 2
    return "left" if grey[:, :half].mean() > grey[:, half:].mean() else "right"


def test_radiological_by_default_neurological_on_request() -> None:
    vol = _left_marked_volume()
    ras = np.eye(4)
    axial, coronal, sagittal = qc.volume_panels(vol, ras)
    # radiological: the patient's left is on the image's right, and the markers say so
    assert _bright_side(axial.grey) == "right" and axial.markers == ("R", "L", "A", "P")
    assert _bright_side(coronal.grey) == "right" and coronal.markers == ("R", "L", "S", "I")
    assert sagittal.markers == ("A", "P", "S", "I")
    n_axial, n_coronal, n_sag = qc.volume_panels(vol, ras, convention="neurological")
    assert _bright_side(n_axial.grey) == "left" and n_axial.markers == ("L", "R", "A", "P")
    assert n_sag.markers == ("P", "A", "S", "I")
    with pytest.raises(ValueError, match="radiological"):
        qc.volume_panels(vol, ras, convention="upside-down")


def test_markers_follow_the_affine_not_the_voxel_order() -> None:
    vol = _left_marked_volume()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel x now runs to the patient's left: the block is on the right
    axial = qc.volume_panels(vol, lps)[0]
    assert _bright_side(axial.grey) == "left" and axial.markers[0] == "R"
    np.testing.assert_array_equal(qc.volume_panels(vol[::-1, ::-1], lps)[0].grey, qc.volume_panels(vol, np.eye(4))[0].grey)


def _has_colour(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool((np.abs(rgb.astype(int) - np.asarray(colour)).max(-1) <= tol).any())


def test_figure_has_title_legend_and_box() -> None:
    vol = _left_marked_volume()
    lab = np.zeros(vol.shape, dtype=np.uint8)
    lab[3:7, 12:18, 8:12] = 2
    plain = qc.volume_figure(vol, np.eye(4), label=lab)
    titled = qc.volume_figure(vol, np.eye(4), label=lab, names={1: "NCR", 2: "ED", 3: "ET"}, case_id="case1",
                              figures={"WT mL": 1.5})
    assert plain.shape[0] < titled.shape[0]  # a title row only with a case id
    top = titled[:30]
    assert (top.max(-1) > 200).sum() > 50  # white title text
    bottom = titled[-35:]
    for v in (1, 2, 3):  # the legend shows every named label's colour, absent ones too
        assert _has_colour(bottom, qc.label_colour(v)), v
    boxed = qc.volume_figure(vol, np.eye(4), box=(2, 10, 5, 8, 20, 15))
    assert _has_colour(boxed, (0, 255, 255), tol=30) and not _has_colour(plain, (0, 255, 255), tol=30)
    flat = qc.image_figure(np.random.default_rng(0).random((60, 40)), box=(10, 5, 30, 20), case_id="cxr")
    assert _has_colour(flat, (0, 255, 255), tol=30)


def test_prompt_qc_and_masks_visible(tmp_path: Path) -> None:
    img = np.full((80, 96), 30, dtype=np.uint8)
    img[10:30, 10:40] = 220
    img[45:70, 50:85] = 200
    Image.fromarray(img).save(tmp_path / "x.png")
    res = CliRunner().invoke(cli, ["prompt", str(tmp_path / "x.png"), "--box", "8,8,32,42", "--box", "43,48,72,87",
                                   "-o", str(tmp_path / "two.png")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "two.png") as im:
        assert im.mode == "P"  # values 1, 2 kept, shown in colour by any viewer
        values = set(np.unique(np.asarray(im)).tolist())
        assert values == {0, 1, 2}
        assert tuple(im.getpalette()[3:6]) == qc.label_colour(1)
    res = CliRunner().invoke(cli, ["prompt", str(tmp_path / "x.png"), "--box", "8,8,32,42", "-o", str(tmp_path / "one.png")])
    assert res.exit_code == 0, res.output
    assert set(np.unique(np.asarray(Image.open(tmp_path / "one.png"))).tolist()) == {0, 255}
    pic = np.asarray(Image.open(tmp_path / "one_qc.png").convert("RGB"))
    assert _has_colour(pic, (0, 255, 255), tol=30)  # the prompt box is drawn


def test_prompt_volume_qc_convention_option(tmp_path: Path) -> None:
    vol = np.full((24, 24, 8), 20.0, dtype=np.float32)
    vol[2:10, 8:18, 2:6] = 200.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))
    for conv in ("radiological", "neurological"):
        res = CliRunner().invoke(cli, ["prompt", str(tmp_path / "v.nii.gz"), "--box", "1,7,2,11,19,6", "-o",
                                       str(tmp_path / f"{conv}.nii.gz"), "--qc-convention", conv])
        assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(tmp_path / "radiological_qc.png"))
    b = np.asarray(Image.open(tmp_path / "neurological_qc.png"))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_predict_passes_qc_convention(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = {}
    monkeypatch.setattr("medcnn.pipelines.load_models", lambda pipe, refs, device=None: (object(), {}))

    def fake_run_batch(pipe, model, inputs, out_dir, **kw):
        seen["conv"] = pipe.qc_convention
        return []

    monkeypatch.setattr("medcnn.batch.run_batch", fake_run_batch)
    res = CliRunner().invoke(cli, ["predict", "alzheimer", "-i", "x", "-o", str(tmp_path / "o"), "--qc-convention",
                                   "neurological"])
    assert res.exit_code == 0, res.output
    assert seen["conv"] == "neurological"
    res = CliRunner().invoke(cli, ["predict", "chest-xray", "-i", "x", "-o", str(tmp_path / "o"), "--qc-convention",
                                   "neurological"])
    assert res.exit_code == 2 and "radiographs" in res.output
