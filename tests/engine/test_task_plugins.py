"""The training-task registry: tasks plug in by class or by module path, imported only on use."""

import sys

import pytest

from medcnn.engine.tasks import TaskRegistry, get_task, task_names
from medcnn.errors import ConfigError


def test_builtin_tasks_resolve_and_prompt_lives_outside_the_engine():
    assert {"segmentation", "classification", "prompt"} <= set(task_names())
    from medcnn.engine.trainer import Trainer

    assert get_task("segmentation") is Trainer and get_task("classification") is Trainer
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
