"""The training-task registry: tasks plug in by class or by module path, imported only on use; a task defined
through the plugin API alone (a regression task here) trains with the engine's Trainer unchanged."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medcnn.engine.tasks import TaskRegistry, TrainingTask, get_task, register_task, task_names, unregister_task
from medcnn.errors import ConfigError


def test_builtin_tasks_resolve_and_prompt_lives_outside_the_engine():
    assert {"segmentation", "classification", "prompt"} <= set(task_names())
    from medcnn.engine.tasks.classification import ClassificationTask
    from medcnn.engine.tasks.segmentation import SegmentationTask
    from medcnn.engine.trainer import Trainer

    assert get_task("segmentation") is SegmentationTask and get_task("classification") is ClassificationTask
    assert issubclass(SegmentationTask, TrainingTask) and issubclass(ClassificationTask, TrainingTask)
    prompt = get_task("prompt")
    assert prompt.__module__ == "medcnn.prompt.train" and issubclass(prompt, Trainer)


class _ToyTrainer:
    def __init__(self, cfg, run_dir, **kwargs):
        self.cfg, self.run_dir, self.kwargs = cfg, run_dir, kwargs


def test_a_task_registered_by_path_is_imported_only_when_asked(monkeypatch):
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    reg = TaskRegistry()
    reg.register("lazy", "json.tool:main")
    assert "json.tool" not in sys.modules  # registering imports nothing
    assert callable(reg.get("lazy")) and "json.tool" in sys.modules
    reg.register("toy", _ToyTrainer)
    assert reg.get("toy") is _ToyTrainer and reg.names() == ("lazy", "toy")


def test_registry_refuses_unknown_duplicate_and_malformed_names():
    reg = TaskRegistry({"toy": _ToyTrainer})
    with pytest.raises(ConfigError, match="unknown task 'regression'.*toy"):
        reg.get("regression")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toy", _ToyTrainer)
    reg.register("toy", object, replace=True)
    assert reg.get("toy") is object
    with pytest.raises(ValueError, match="module:Attribute"):
        reg.register("bad", "no.colon.here")
    reg.unregister("toy")
    assert reg.names() == ()


# ------------------------------------------------------------------ a task added through the plugin API only


class _PrepareScalar:
    """Record -> ``{"image": (C, *size) float32, "label": (1,) float32, "case"}`` (picklable: a module-level class)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def __call__(self, rec: dict) -> dict:
        from medcnn.preprocessing import load_for_model, prepare

        x, _ = prepare(load_for_model(rec["image"], self.spec), self.spec)
        return {"image": x, "label": torch.tensor([float(rec["label"])]), "case": rec["case"]}


class RegressionTask(TrainingTask):
    """Predict one number per volume: MSE loss, mean absolute error picks best.pt (lower is better)."""

    name = "regression"
    model_task = "classification"  # a network with one (B, C) output per volume
    selection_metrics = ("mae",)
    higher_is_better = False
    curve_prefixes = ("mae",)

    def case_preparer(self, trainer):
        return _PrepareScalar(self.cfg["preprocess"])

    def out_channels(self, trainer):
        return 1

    def loss(self, trainer):
        return torch.nn.MSELoss()

    def loss_target(self, trainer, y):
        return y.float()

    def validate(self, trainer, net):
        errors = [float((net(it["image"][None].float()).float()[0] - it["label"]).abs().mean()) for it in trainer.val_items]
        return {"mae": sum(errors) / len(errors)}


@pytest.fixture
def regression_task():
    register_task("regression", RegressionTask)
    yield RegressionTask
    unregister_task("regression")


def _scalar_dataset(tmp_path: Path, n: int = 6) -> Path:
    """``n`` tiny random volumes (12^3) and a manifest whose label is each volume's mean intensity x 10."""
    rng = np.random.default_rng(0)
    rows = ["case,image,label"]
    for i in range(n):
        vol = rng.random((12, 12, 12), dtype=np.float32) * (i + 1)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"c{i}.nii.gz")
        rows.append(f"c{i},c{i}.nii.gz,{float(vol.mean()) * 10:.4f}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "task": "regression",
        "data": {"source": "manifest.csv", "format": "manifest", "channels": ["image"], "val_fraction": 0.34},
        "preprocess": {"orientation": None, "spacing": None, "normalize": "none", "crop_foreground": False,
                       "size": [12, 12, 12]},
        "model": {"name": "compact-cnn", "kwargs": {"channels": [4, 8], "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "augment": {"names": []}, "device": "cpu", "amp": "off"},
    }
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_plugin_task_trains_with_the_engine_unchanged(regression_task, tmp_path: Path) -> None:
    from medcnn.engine import load_checkpoint, train

    res = train(_scalar_dataset(tmp_path), run_dir=tmp_path / "run")
    hist = res["history"]
    assert [r["epoch"] for r in hist] == [1, 2] and all("mae" in r and "train_loss" in r for r in hist)
    maes = [r["mae"] for r in hist]
    # lower is better: best is the smaller MAE, not the larger
    assert res["best"] == pytest.approx(min(maes)) and res["best_epoch"] == 1 + maes.index(min(maes))
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["task"] == "regression" and best["model"]["kwargs"]["out_channels"] == 1
    assert best["metrics"]["mae"] == pytest.approx(min(maes)) and best["training"]["epoch"] == res["best_epoch"]
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["resume"]["next_epoch"] == 2 and len(last["training"]["history"]) == 2
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert "mae" in header and "dice_mean" not in header
    # export asks the task too: one output per volume, at the fixed input size
    from medcnn.engine.export import export_network

    doc = export_network(tmp_path / "run" / "best.pt", tmp_path / "regression.ts", "torchscript")
    assert doc["task"] == "regression" and doc["output"]["shape"] == ["batch", 1]
    assert doc["input"]["shape"] == ["batch", 1, 12, 12, 12] and doc["output"]["activation"] == "none"


def test_an_unknown_task_is_a_config_error_listing_the_registered_ones(regression_task, tmp_path: Path) -> None:
    from medcnn.engine.schema import load_train_config

    path = _scalar_dataset(tmp_path, n=2)
    path.write_text(path.read_text().replace("task: regression", "task: regresion"))
    with pytest.raises(ConfigError, match=r"config key 'task': 'regresion' is not a registered task; "
                                          r"registered: classification, prompt, regression, segmentation"):
        load_train_config(path)
    unregister_task("regression")
    path.write_text(path.read_text().replace("task: regresion", "task: regression"))
    with pytest.raises(ConfigError, match="'regression' is not a registered task"):
        load_train_config(path)
