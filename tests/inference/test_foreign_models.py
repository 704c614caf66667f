"""Others' weights: plain state dicts with --arch and MONAI bundle folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

import medcnn
from medcnn.errors import ConfigError, InputError
from medcnn.foreign.state_dict import parse_arch_args
from medcnn.models import create_model

ARGS = {"in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}


def _image(shape=(20, 18, 16), seed=0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.normal(40, 60, (1, *shape)), dtype=torch.float32)
    return MetaTensor(x, affine=torch.eye(4, dtype=torch.float64))


def _reference(net, x: torch.Tensor, roi) -> np.ndarray:
    with torch.no_grad():
        logits = sliding_window_inference(x[None], roi, 1, net.eval(), overlap=0.25, mode="gaussian")
    return logits[0].argmax(0).numpy()


def test_parse_arch_args():
    assert parse_arch_args('{"channels": [4, 8], "norm": "batch"}') == {"channels": [4, 8], "norm": "batch"}
    assert parse_arch_args("in_channels=4,channels=[16,32,64],dropout=0.1") == {"in_channels": 4, "channels": [16, 32, 64], "dropout": 0.1}
    assert parse_arch_args(["a=1", "b=[1, 2]"]) == {"a": 1, "b": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_arch_args("channels")
    with pytest.raises(ConfigError, match="JSON"):
        parse_arch_args("{bad json")
    with pytest.raises(ConfigError, match="twice"):
        parse_arch_args(["a=1", "a=2"])


def test_state_dict_with_arch_and_model_yaml(tmp_path):
    torch.manual_seed(0)
    net = create_model("unet", **ARGS)
    # a training script's file: weights nested under "state_dict" with DataParallel's "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, tmp_path / "w.pt")
    (tmp_path / "m.yaml").write_text("preprocess: {normalize: ct, ct_window: [-50, 150]}\n"
                                     "inference: {roi_size: [16, 16, 16], overlap: 0.25, mode: gaussian}\n"
                                     "labels: {names: {1: organ, 2: lesion}}\n")
    model = medcnn.load_model(tmp_path / "w.pt", arch="unet", arch_args=json.dumps(ARGS), config=tmp_path / "m.yaml")
    assert model.config["model"]["name"] == "unet" and model.config["labels"]["names"] == {"1": "organ", "2": "lesion"}
    assert model.config["preprocess"]["orientation"] is None and model.config["preprocess"]["crop_foreground"] is False
    img = _image()
    pred = model.predict(img)
    x = (img.as_tensor().clamp(-50, 150) + 50) / 200
    np.testing.assert_array_equal(pred[0].numpy(), _reference(net, x, [16, 16, 16]))


def test_state_dict_refusals(tmp_path):
    torch.manual_seed(0)
    torch.save(create_model("unet", **ARGS).state_dict(), tmp_path / "w.pt")
    cfg = {"inference": {"roi_size": [16, 16, 16]}}
    with pytest.raises(InputError, match=r"w\.pt.*do not fit.*missing|w\.pt.*do not fit.*shape"):
        medcnn.load_model(tmp_path / "w.pt", arch="unet", arch_args={**ARGS, "channels": [4, 16]}, config=cfg)
    with pytest.raises(ConfigError, match="unknown model"):
        medcnn.load_model(tmp_path / "w.pt", arch="no-such-net", config=cfg)
    with pytest.raises(ConfigError, match="roi_size"):
        medcnn.load_model(tmp_path / "w.pt", arch="unet", arch_args=ARGS)
    with pytest.raises(ConfigError, match="preprocess.spacng"):
        medcnn.load_model(tmp_path / "w.pt", arch="unet", arch_args=ARGS, config={**cfg, "preprocess": {"spacng": [1, 1, 1]}})
    torch.save({"net": _Obj()}, tmp_path / "pickled.pt")
    with pytest.raises(InputError, match="refused"):
        medcnn.load_model(tmp_path / "pickled.pt", arch="unet", arch_args=ARGS, config=cfg)
    with pytest.raises(ConfigError, match="foreign weights"):
        medcnn.load_model("brain-tumor", config=cfg)


class _Obj:
    """Any class: a weights_only load must refuse it."""


def _bundle(root: Path, network_def: dict | None = None, preprocessing: list | None = None) -> Path:
    """A MONAI-bundle-shaped folder: configs/inference.json, configs/metadata.json, models/model.pt."""
    folder = root / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    net_def = network_def or {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes",
                              "channels": [4, 8], "strides": [2], "num_res_units": 0}
    pre = preprocessing or [
        {"_target_": "LoadImaged", "keys": "image", "image_only": "$True"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    config = {
        "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'", "num_classes": 3, "pixdim": [1.0, 1.0, 1.0],
        "network_def": net_def, "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"}]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1}},
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen", "2": "liver"}}}}}))
    return folder


def test_monai_bundle(tmp_path):
    from monai.bundle import ConfigParser

    folder = _bundle(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    torch.manual_seed(1)
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    model = medcnn.load_model(folder)
    pre = model.config["preprocess"]
    assert (pre["orientation"], pre["spacing"], pre["normalize"], pre["ct_window"]) == ("RAS", [1.0, 1.0, 1.0], "ct", [-57.0, 164.0])
    assert model.config["inference"]["roi_size"] == [16, 16, 16] and model.config["inference"]["overlap"] == 0.5
    assert model.config["labels"]["names"] == {"1": "spleen", "2": "liver"} and pre["in_channels"] == 1
    assert model.path == folder / "models" / "model.pt"
    # an image already on the bundle's grid (RAS, 1 mm): medcnn's result is the bundle's network on the scaled image
    img = _image()
    img.affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    pred = model.predict(img)
    x = (img.as_tensor().clamp(-57, 164) + 57) / (164 + 57)
    with torch.no_grad():
        logits = sliding_window_inference(x[None], [16, 16, 16], 2, net.eval(), overlap=0.5, mode="constant")
    np.testing.assert_array_equal(pred[0].numpy(), logits[0].argmax(0).numpy())


@pytest.mark.parametrize("change, match", [
    ({"network_def": {"_target_": "UNet", "spatial_dims": "$__import__('os').getpid() and 3", "in_channels": 1,
                      "out_channels": 2, "channels": [4, 8], "strides": [2]}}, "expression"),
    ({"network_def": {"_target_": "os.system", "command": "true"}}, "not a MONAI component"),
    ({"preprocessing": [{"_target_": "Lambdad", "keys": "image", "func": "@pixdim"}]}, "Lambda is not understood"),
    ({"preprocessing": [{"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 1, "b_min": -1,
                         "b_max": 1, "clip": True}]}, "only to \\[0, 1\\]"),
])
def test_monai_bundle_refusals(tmp_path, change, match):
    folder = _bundle(tmp_path, **change)
    net = create_model("unet", in_channels=1, out_channels=3, channels=[4, 8], strides=[2], num_res_units=0)
    torch.save(net.state_dict(), folder / "models" / "model.pt")  # fits the default network_def
    with pytest.raises(InputError, match=match):
        medcnn.load_model(folder)


def test_monai_bundle_without_weights_and_with_own_config(tmp_path):
    folder = _bundle(tmp_path, preprocessing=[{"_target_": "Lambdad", "keys": "image", "func": "@pixdim"}])
    with pytest.raises(InputError, match="models/model.pt"):
        medcnn.load_model(folder)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "models" / "model.pt")
    # the model config's preprocess replaces the bundle's (whose Lambda medcnn cannot read)
    model = medcnn.load_model(folder, config={"preprocess": {"normalize": "zscore"}})
    assert model.config["preprocess"]["normalize"] == "zscore"


def test_cli_predict_with_arch(tmp_path):
    import nibabel as nib

    from medcnn.cli.main import cli

    torch.manual_seed(0)
    args = {**ARGS, "in_channels": 4, "out_channels": 4}
    torch.save(create_model("unet", **args).state_dict(), tmp_path / "w.pt")
    (tmp_path / "m.yaml").write_text("preprocess: {normalize: brain_mri}\ninference: {roi_size: [16, 16, 16]}\n")
    case = tmp_path / "cases" / "CASE1"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        nib.save(nib.Nifti1Image(rng.normal(100, 20, (18, 18, 18)).astype(np.float32), np.eye(4)), str(case / f"CASE1-{suffix}.nii.gz"))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["predict", "brain-tumor", str(case), "-o", str(out), "--model", str(tmp_path / "w.pt"),
                                   "--arch", "unet", "--arch-args", "in_channels=4,out_channels=4,channels=[4,8],strides=[2]",
                                   "--arch-args", "num_res_units=0", "--model-config", str(tmp_path / "m.yaml"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (out / "CASE1.nii.gz").is_file()
    run = json.loads((out / "run.json").read_text())
    assert "w.pt" in json.dumps(run["model"])
    bad = CliRunner().invoke(cli, ["predict", "brain-tumor", str(case), "-o", str(out), "--arch-args", "a=1"])
    assert bad.exit_code == 2
