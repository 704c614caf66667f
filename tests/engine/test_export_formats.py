"""``medcnn export --format onnx|torchscript``: every bundled network gives its logits within 1e-3, plus the contract JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import medcnn
from medcnn.cli.main import cli
from medcnn.engine.export import contract_path, export_network
from medcnn.predictor import bundled_path

#: (bundled name, export window, window the exported file is run on: another size for the U-Nets' dynamic axes)
NETWORKS = [
    ("brain-tumor", [32, 32, 32], [48, 32, 32]),
    ("alzheimer", None, None),  # a classifier: fixed input size of its preprocessing (56, 68, 56)
    ("chest-xray", [64, 64], [64, 64]),
    ("chest-xray-lungs", [32, 32], [48, 32]),
    ("chest-xray-nodule", [32, 32], [32, 48]),
    ("medcnn-prompt", [32, 32], [48, 48]),
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name,window,run_window", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_exported_network_matches_logits(tmp_path: Path, name: str, window, run_window, fmt: str) -> None:
    dest = tmp_path / f"net.{fmt}"
    doc = export_network(bundled_path(name), dest, fmt, window=window)
    model = medcnn.load_model(name)
    c = int(model.config["model"]["kwargs"]["in_channels"])
    size = run_window or doc["input"]["example_spatial_size"]
    x = torch.randn(2, c, *size, generator=torch.Generator().manual_seed(1))  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        ref = model.network(x).numpy()
    if fmt == "onnx":
        onnx.checker.check_model(str(dest))
        out = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x.numpy()})[0]
    else:
        with torch.no_grad():
            out = torch.jit.load(str(dest), map_location="cpu")(x).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0)
    saved = json.loads(contract_path(dest).read_text())
    assert saved["input"]["channels"] == model.config["preprocess"]["channel_names"]
    assert saved["preprocess"]["spacing_mm"] == model.config["preprocess"]["spacing"]
    assert saved["inference"]["roi_size"] == model.config["inference"]["roi_size"]
    assert saved["labels"] == json.loads(json.dumps(model.config["labels"]))


def test_contract_says_how_to_read_the_outputs(tmp_path: Path) -> None:
    bt = export_network(bundled_path("brain-tumor"), tmp_path / "bt.onnx", "onnx", window=[32, 32, 32])
    assert contract_path(tmp_path / "bt.onnx") == tmp_path / "bt.onnx.json"
    assert bt["output"]["activation"] == "sigmoid" and bt["output"]["channels"] == ["WT", "TC", "ET"]
    assert bt["input"]["channels"] == ["t1n", "t1c", "t2w", "t2f"] and bt["input"]["layout"] == "NCDHW"
    assert bt["preprocess"]["orientation"] == "RAS" and bt["preprocess"]["normalize"] == "brain_mri"
    assert bt["inference"]["overlap"] == 0.5 and bt["inference"]["tta"] is True
    ad = export_network(bundled_path("alzheimer"), tmp_path / "ad.pt", "torchscript")
    assert ad["output"]["activation"] == "softmax" and ad["output"]["classes"] == ["CN", "AD"]
    assert ad["input"]["shape"] == ["batch", 1, 56, 68, 56]


def test_cli_formats_and_refused_options(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "chest-xray-lungs", "--format", "torchscript", "-o", str(tmp_path / "lungs.pt")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lungs.pt").is_file() and (tmp_path / "lungs.pt.json").is_file()
    assert json.loads((tmp_path / "lungs.pt.json").read_text())["format"] == "torchscript"
    bad = runner.invoke(cli, ["export", "chest-xray-lungs", "--format", "onnx", "-o", str(tmp_path / "x.onnx"), "--full-precision"])
    assert bad.exit_code == 2 and "--format medcnn only" in bad.output
    default = runner.invoke(cli, ["export", "chest-xray-lungs", "-o", str(tmp_path / "lungs_medcnn.pt")])
    assert default.exit_code == 0, default.output
    assert medcnn.load_model(tmp_path / "lungs_medcnn.pt").config["task"] == "segmentation"
    assert not (tmp_path / "lungs_medcnn.pt.json").exists()  # a medcnn checkpoint carries its contract inside
