"""Config validation: unknown keys, wrong types, missing files, overrides — all named in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcnn import ConfigError
from medcnn.engine.config import parse_overrides
from medcnn.engine.schema import load_train_config


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


BASE = """
data: {source: data}
model: {name: unet}
train: {patch_size: [32, 32, 32]}
"""


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_train_config(_write(tmp_path, BASE))
    assert cfg["data"]["source"] == str((tmp_path / "data").resolve())
    assert cfg["train"]["lr"] == pytest.approx(1e-3)
    assert cfg["inference"]["roi_size"] == [32, 32, 32]
    assert cfg["name"] == "cfg"


@pytest.mark.parametrize(
    "extra,pattern",
    [
        ("train: {patch_size: [32, 32, 32], lr: abc}", r"'train\.lr': expected number"),
        ("train: {patch_size: [32, 32, 32], learning_rate: 0.1}", r"unknown config key 'train\.learning_rate'"),
        ("trian: {}", r"unknown config key 'trian'.*did you mean 'train'"),
        ("train: {patch_size: [32, 32, 32], optimizer: rmsprop}", r"'train\.optimizer'.*not one of"),
        ("train: {patch_size: [32, 32, 32], epochs: 0}", r"'train\.epochs'.*must be > 0"),
        ("train: {patch_size: [32, 32, 32], loss: bce}", r"'train\.loss': bce needs sigmoid outputs"),
        ("train: {patch_size: [32, 32, 32], loss: focal}", r"'train\.loss': 'focal' is for classification"),
        ("train: {patch_size: [32, 32, 32]}\nprompt: {box_tight_prob: 1.5}", r"'prompt\.box_tight_prob'.*must be in \[0, 1\]"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, pattern: str) -> None:
    text = BASE.replace("train: {patch_size: [32, 32, 32]}", "") + extra
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(_write(tmp_path, text))


def test_probabilities_accept_one(tmp_path: Path) -> None:
    cfg = load_train_config(_write(tmp_path, BASE + "prompt: {box_tight_prob: 1.0, point_prob: 1.0}\n"))
    assert cfg["prompt"]["box_tight_prob"] == 1.0 and cfg["prompt"]["point_prob"] == 1.0
    with pytest.raises(ConfigError, match=r"'data\.val_fraction'.*must be in \[0, 1\)"):  # a split still needs training cases
        load_train_config(_write(tmp_path, BASE.replace("{source: data}", "{source: data, val_fraction: 1.0}")))


def test_missing_file_and_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'data\.source': no such file"):
        load_train_config(_write(tmp_path, BASE.replace("source: data", "source: nowhere")))
    with pytest.raises(ConfigError, match=r"unknown model 'unte'.*segresnet"):
        load_train_config(_write(tmp_path, BASE.replace("name: unet", "name: unte")))
    with pytest.raises(ConfigError, match="missing required config key 'model.name'"):
        load_train_config(_write(tmp_path, BASE.replace("model: {name: unet}", "")))
    with pytest.raises(ConfigError, match="classification model"):
        load_train_config(_write(tmp_path, BASE.replace("name: unet", "name: densenet121")))


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML \(line 3"):
        load_train_config(_write(tmp_path, "data:\n  source: x\n bad: indent: here\n"))


def test_overrides(tmp_path: Path) -> None:
    assert parse_overrides(["train.lr=0.01", "model.kwargs.channels=[8,16]", "name=x"]) == {
        "train": {"lr": 0.01}, "model": {"kwargs": {"channels": [8, 16]}}, "name": "x"}
    cfg = load_train_config(_write(tmp_path, BASE), ["train.lr=0.01", "train.augment.names=[]"])
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["augment"]["names"] == []
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_train_config(_write(tmp_path, BASE), ["train.lrr=1"])


def test_bundled_configs_validate(repo_root: Path) -> None:
    for cfg_path in sorted((repo_root / "configs").glob("*.yaml")):
        cfg = load_train_config(cfg_path, ["data.source=."])
        assert cfg["model"]["name"]


def test_command_line_paths_are_relative_to_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    """``--set data.source=data/x`` means ./data/x, as any command-line path; YAML paths stay file-relative."""
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (tmp_path / "data" / "x").mkdir(parents=True)
    (cfg_dir / "y").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(_write(cfg_dir, BASE), ["data.source=data/x"])
    assert Path(cfg["data"]["source"]) == (tmp_path / "data" / "x").resolve()
    with pytest.raises(ConfigError, match="data.source"):
        load_train_config(_write(cfg_dir, BASE), ["data.source=y"])  # ./y does not exist; configs/y would
