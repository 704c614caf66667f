"""Conventions other tools' users bring: -i, --device gpu/mps, --statistics, labels.json, Slicer .seg.nrrd,
SAM-order boxes (box_xyxy, --box-order xyxy) and the documented single-slice DICOM convention."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.data import MetaTensor
from PIL import Image

import medcnn
from medcnn.cli.main import cli
from medcnn.device import normalize_device_name
from medcnn.errors import ConfigError


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


# -------------------------------------------------------------------------------- devices


def test_device_aliases() -> None:
    assert normalize_device_name("gpu") == "cuda"
    assert normalize_device_name("GPU:1") == "cuda:1"
    assert normalize_device_name("cuda:0") == "cuda:0"
    assert normalize_device_name("mps") == "mps"
    for bad in ("tpu", "gpu:x", "cpu:1", "cuda:"):
        with pytest.raises(ConfigError, match="gpu:N or mps"):
            normalize_device_name(bad)


def test_predict_accepts_gpu_and_refuses_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict = {}

    def fake_load_models(pipe, refs, device=None):
        seen["device"] = device
        return object(), {}

    def fake_run_batch(pipe, model, inputs, out_dir, **kw):
        seen["inputs"] = [Path(p).name for p in inputs]
        return []

    monkeypatch.setattr("medcnn.pipelines.load_models", fake_load_models)
    monkeypatch.setattr("medcnn.batch.run_batch", fake_run_batch)
    res = _run("predict", "brain-tumor", "a", "-i", "b", "--input", "c", "-o", tmp_path / "o", "--device", "gpu:1")
    assert res.exit_code == 0, res.output
    assert seen == {"device": "cuda:1", "inputs": ["a", "b", "c"]}  # -i joins the positional inputs
    res = _run("predict", "brain-tumor", "-i", "b", "-o", tmp_path / "o", "--device", "tpu")
    assert res.exit_code == 2 and "gpu:N or mps" in res.output
    res = _run("predict", "brain-tumor", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "-i INPUT" in res.output
    res = _run("predict", "alzheimer", "-i", "b", "-o", tmp_path / "o", "--statistics")
    assert res.exit_code == 2 and "--statistics" in res.output


# ---------------------------------------------------------------------- statistics, labels.json


class _FakeModel:
    """Predicts a fixed label map; what BrainTumorPipeline.run needs of a model."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.config = {"labels": {"names": {1: "NCR", 2: "ED", 3: "ET"}}}
        self.network = torch.nn.Identity()

    def predict(self, img):
        return MetaTensor(torch.from_numpy(self.labels[None].astype(np.int64)), affine=img.affine)


def test_statistics_json_and_label_table(tmp_path: Path) -> None:
    from medcnn.cases import Case
    from medcnn.pipelines import get_pipeline

    shape = (10, 8, 6)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 1  # 8 voxels
    labels[5:7, 2:4, 2:5] = 3  # 12 voxels
    img = np.zeros((4, *shape), dtype=np.float32)
    for c in range(4):
        img[c] = c + 1.0
    img[1][labels == 3] = 10.0  # t1c bright in ET
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    paths = []
    for c, name in enumerate(("t1n", "t1c", "t2w", "t2f")):
        paths.append(tmp_path / "in" / f"c-{name}.nii.gz")
        paths[-1].parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(img[c], affine), str(paths[-1]))
    import dataclasses

    pipe = dataclasses.replace(get_pipeline("brain-tumor"), statistics=True)
    case = Case(id="c", inputs=paths)
    out = tmp_path / "out"
    (out / "qc").mkdir(parents=True)
    assert out / "c_statistics.json" in pipe.outputs(case, out)
    pipe.run(_FakeModel(labels), case, pipe.load(case), out)
    stats = json.loads((out / "c_statistics.json").read_text())
    assert stats["channels"] == ["t1n", "t1c", "t2w", "t2f"]
    assert stats["labels"]["NCR"]["voxels"] == 8 and stats["labels"]["NCR"]["volume_ml"] == pytest.approx(8 * 3e-3)
    assert stats["labels"]["ED"]["voxels"] == 0 and stats["labels"]["ED"]["intensity"]["t1n"]["mean"] is None
    et = stats["labels"]["ET"]
    assert et["value"] == 3 and et["voxels"] == 12
    assert et["intensity"]["t1c"]["mean"] == pytest.approx(10.0) and et["intensity"]["t2f"]["p95"] == pytest.approx(4.0)
    assert stats["regions"]["TC"]["voxels"] == 20 and stats["regions"]["TC"]["volume_ml"] == pytest.approx(0.06)
    table = json.loads((out / "labels.json").read_text())
    assert [(r["value"], r["name"]) for r in table["labels"]] == [(1, "NCR"), (2, "ED"), (3, "ET")]
    assert all(len(r["color"]) == 3 and r["color_hex"].startswith("#") for r in table["labels"])


# --------------------------------------------------------------------------------- Slicer .seg.nrrd


def _nrrd_header(path: Path) -> str:
    raw = path.read_bytes()
    return raw[: raw.index(b"\n\n")].decode("latin-1")


def test_seg_nrrd_written_with_segments_and_read_back(tmp_path: Path) -> None:
    from medcnn.io.api import write_seg_nrrd

    lab = np.zeros((12, 10, 8), dtype=np.uint8)
    lab[2:5, 3:6, 1:4] = 1
    lab[6:9, 2:4, 4:7] = 3
    affine = np.array([[-1.5, 0, 0, 10], [0, 1.0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "seg.nii.gz"))
    like = medcnn.load(tmp_path / "seg.nii.gz")
    out = write_seg_nrrd(like[0].round().to(torch.uint8), tmp_path / "case.seg.nrrd", like,
                         names={1: "NCR", 2: "ED", 3: "ET"}, colours={1: (230, 40, 40), 2: (40, 200, 60), 3: (250, 220, 40)})
    head = _nrrd_header(out)
    for key in ("Segment0_Name:=NCR", "Segment1_Name:=ED", "Segment2_Name:=ET", "Segment2_LabelValue:=3",
                "Segment0_Layer:=0", "Segment0_Color:=0.901961 0.156863 0.156863", "Segment0_Extent:=2 4 3 5 1 3",
                "Segmentation_MasterRepresentation:=Binary labelmap"):
        assert key in head, key
    back = medcnn.load(out)
    np.testing.assert_array_equal(back[0].numpy(), lab)
    np.testing.assert_allclose(back.affine.numpy(), like.affine.numpy(), atol=1e-5)
    assert [(s["value"], s["name"], s["color"]) for s in back.meta["segments"]] == [
        (1, "NCR", [230, 40, 40]), (2, "ED", [40, 200, 60]), (3, "ET", [250, 220, 40])]
    # convert keeps the names from a .seg.nrrd to another; a plain NIfTI source gets Label <n>
    res = _run("convert", "-i", out, "-o", tmp_path / "copy.seg.nrrd", "--labels")
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in medcnn.load(tmp_path / "copy.seg.nrrd").meta["segments"]] == ["NCR", "ED", "ET"]
    res = _run("convert", tmp_path / "seg.nii.gz", tmp_path / "plain.seg.nrrd", "--labels")
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in medcnn.load(tmp_path / "plain.seg.nrrd").meta["segments"]] == ["Label 1", "Label 3"]
    res = _run("convert", tmp_path / "seg.nii.gz", tmp_path / "x.seg.nrrd")
    assert res.exit_code == 2 and "--labels" in res.output
    res = _run("convert", "-i", tmp_path / "seg.nii.gz")
    assert res.exit_code == 2 and "SOURCE and DEST" in res.output


# ------------------------------------------------------------------------------------ SAM-order boxes


@pytest.fixture(scope="module")
def blob_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = np.full((96, 128), 30, dtype=np.uint8)
    img[20:50, 60:110] = 220  # rows 20..49, columns 60..109: wider than tall
    path = tmp_path_factory.mktemp("img") / "blob.png"
    Image.fromarray(img).save(path)
    return path


def test_box_xyxy_is_the_same_box_in_sam_order(blob_png: Path) -> None:
    from medcnn.prompt import PromptableSegmenter

    seg = PromptableSegmenter.from_pretrained()
    seg.set_image(medcnn.load(blob_png))
    ij = seg.predict(box=(18, 58, 52, 112))
    xy = seg.predict(box_xyxy=[58, 18, 112, 52])
    assert xy.dtype == torch.bool and torch.equal(ij, xy) and int(xy[30, 80]) == 1
    several = seg.predict(box_xyxy=[[58, 18, 112, 52], [0, 60, 40, 90]])
    assert torch.equal(several, seg.predict(box=[(18, 58, 52, 112), (60, 0, 90, 40)]))
    with pytest.raises(ValueError, match="not both"):
        seg.predict(box=(18, 58, 52, 112), box_xyxy=[58, 18, 112, 52])
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        seg.predict(box_xyxy=[1, 2, 3])


def test_prompt_cli_box_order_and_input_option(blob_png: Path, tmp_path: Path) -> None:
    res = _run("prompt", blob_png, "--box", "18,58,52,112", "-o", tmp_path / "ij.png")
    assert res.exit_code == 0, res.output
    res = _run("prompt", "-i", blob_png, "--box", "58,18,112,52", "--box-order", "xyxy", "-o", tmp_path / "xy.png",
               "--device", "cpu")
    assert res.exit_code == 0, res.output
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("ij.png", "xy.png"))
    assert a.max() == 255 and np.array_equal(a, b)
    res = _run("prompt", "-i", blob_png, "--box", "1,2,3,4,5,6", "--box-order", "xyxy", "-o", tmp_path / "z.png")
    assert res.exit_code == 2 and "4 numbers" in res.output
    res = _run("prompt", blob_png, "-i", blob_png, "--box", "18,58,52,112", "-o", tmp_path / "z.png")
    assert res.exit_code == 2 and "once" in res.output


def test_prompt_writes_slicer_seg_nrrd(tmp_path: Path) -> None:
    vol = np.full((24, 24, 8), 20.0, dtype=np.float32)
    vol[6:16, 8:18, 2:6] = 200.0
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), str(tmp_path / "v.nii.gz"))
    res = _run("prompt", tmp_path / "v.nii.gz", "--box", "5,7,2,17,19,6", "-o", tmp_path / "obj.seg.nrrd")
    assert res.exit_code == 0, res.output
    img = medcnn.load(tmp_path / "obj.seg.nrrd")
    assert [s["name"] for s in img.meta["segments"]] == ["object 1"] and int(img.max()) == 1


def test_single_slice_dicom_convention_is_documented() -> None:
    text = _run("prompt", "--help").output
    assert "Single-slice DICOM" in text and "i = column" in text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "Single-slice DICOM" in readme

