"""Libraries for what they do (matplotlib plots, scikit-learn metrics), the dependency/extras split, and the
sample data and bundled configs found from the installed package (any working folder)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medcnn.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_dependencies_and_extras() -> None:
    proj = _pyproject()["project"]
    core = _names(proj["dependencies"])
    assert {"matplotlib", "scikit-learn"} <= core
    assert "pylibjpeg-libjpeg" not in core  # GPLv3: only in the jpeg extra of an Apache-2.0 package
    extras = proj["optional-dependencies"]
    assert "pylibjpeg-libjpeg" in _names(extras["jpeg"]) and "pylibjpeg-libjpeg" in _names(extras["test"])
    readme = (REPO / "README.md").read_text()
    for extra in extras:  # every extra is documented
        assert f"medcnn[{extra}]" in readme, extra


def test_metrics_are_scikit_learns() -> None:
    import sklearn.metrics as skm

    from medcnn.metrics import classification as C

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.3 + rng.random(300), 2)  # ties
    assert C.roc_auc(s, y) == skm.roc_auc_score(y, s)
    for a, b in zip(C.roc_curve(s, y), skm.roc_curve(y, s)):
        np.testing.assert_array_equal(a, b)
    p = rng.integers(0, 3, 300)
    t = rng.integers(0, 3, 300)
    assert C.balanced_accuracy(p, t) == skm.balanced_accuracy_score(t, p)
    assert C.skm is skm  # the module computes with scikit-learn, not a copy of it


def _distinct(img: np.ndarray) -> int:
    return len({tuple(c) for c in img.reshape(-1, 3)})


def test_matplotlib_plots(tmp_path: Path) -> None:
    from medcnn.metrics.classification import plot_confusion, plot_reliability, plot_roc, roc_auc, roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    prob = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1)
    out = plot_reliability(prob, y, tmp_path / "rel.png", size=(480, 480))
    with Image.open(out) as im:
        assert im.size == (480, 480) and not im.info  # no metadata chunks
        rgb = np.asarray(im.convert("RGB"))
    assert _distinct(rgb) > 50
    cm = plot_confusion(np.array([[40, 10], [5, 45]]), ["CN", "AD"], tmp_path / "cm.png")
    strip = np.asarray(Image.open(cm).convert("RGB"))[100:540, -110:]  # the colour bar at the right
    blues = {tuple(c) for c in strip.reshape(-1, 3).astype(int) if c[2] > c[0] + 20}
    assert len(blues) > 40, "no colour bar"
    fpr, tpr, _ = roc_curve(prob, y)
    plot_roc({"model": (fpr, tpr, roc_auc(prob, y))}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="0/1"):
        plot_reliability(prob, y * 2, tmp_path / "x.png")


def test_plotting_module_draws_with_matplotlib() -> None:
    text = (REPO / "medcnn" / "plotting.py").read_text()
    assert "matplotlib.figure" in text and "ImageDraw" not in text and "pyplot" not in text.replace("no pyplot", "")


def test_demo_finds_the_installed_sample_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medcnn.sample_data import sample_data_dir

    seen = {}

    def fake_run_demo(data_dir, out_dir):
        seen["data"] = Path(data_dir)
        return []

    monkeypatch.setattr("medcnn.demo.run_demo", fake_run_demo)
    monkeypatch.chdir(tmp_path)  # not the repository root
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert seen["data"] == sample_data_dir() and (seen["data"] / "brain-tumor").is_dir()


def test_bundled_configs_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medcnn.configs import config_dir
    from medcnn.engine.schema import load_train_config

    seen = {}

    def fake_train(config, overrides, run_dir, **kw):
        seen["config"] = Path(config)
        return {"best": 0.0, "best_epoch": 0, "run_dir": str(run_dir)}

    monkeypatch.setattr("medcnn.engine.train", fake_train)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["train", "configs/brain_tumor.yaml", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert seen["config"] == config_dir() / "brain_tumor.yaml"
    # its data.source (../sample_data/brain-tumor) is the installed sample data, next to the configs
    cfg = load_train_config(seen["config"])
    assert Path(cfg["data"]["source"]).is_dir()
