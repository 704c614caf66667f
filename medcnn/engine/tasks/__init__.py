"""Training tasks registered by name: ``register_task``/``get_task``.

A task is what runs configs whose ``task:`` key names it: a :class:`~medcnn.engine.tasks.base.TrainingTask`
subclass (targets, loss, metrics, best-metric, export contract), which the engine's task-agnostic
:class:`~medcnn.engine.trainer.Trainer` runs, or a whole ``Trainer`` subclass (``prompt``) that overrides
its methods itself. It is registered either as the class or as a ``"module:attribute"`` path that is
imported only when a config asks for it, like an entry point: that lets a higher layer (``medcnn.prompt``,
a plugin) add a task without the engine importing it. ``docs/adding-a-task.md`` shows a worked example.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from medcnn.engine.tasks.base import TrainingTask
from medcnn.errors import ConfigError

# Built-in tasks, by module path so that importing this registry imports no trainer.
_BUILTIN: Mapping[str, str] = MappingProxyType({
    "segmentation": "medcnn.engine.tasks.segmentation:SegmentationTask",
    "classification": "medcnn.engine.tasks.classification:ClassificationTask",
    "prompt": "medcnn.prompt.train:PromptTrainer",
})


class TaskRegistry:
    """Names -> task classes (``TrainingTask`` or ``Trainer`` subclasses, or ``"module:attribute"`` paths resolved
    on first use)."""

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str, target: Any, *, replace: bool = False) -> None:
        """Register ``target`` (a task class or ``"module:attribute"``) under ``name``.

        Raises:
            ValueError: ``name`` is taken and ``replace`` is false, or ``target`` is a malformed path.
        """
        if name in self._entries and not replace:
            raise ValueError(f"task {name!r} is already registered (pass replace=True to override it)")
        if isinstance(target, str) and target.count(":") != 1:
            raise ValueError(f"task {name!r}: a path target reads 'package.module:Attribute', got {target!r}")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error when it is absent)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Registered task names, sorted."""
        return tuple(sorted(self._entries))

    def get(self, name: str) -> Any:
        """The task class registered as ``name``, importing its module when registered by path.

        Raises:
            ConfigError: ``name`` is not registered.
        """
        if name not in self._entries:
            raise ConfigError(f"config key 'task': unknown task {name!r}; registered: {', '.join(self.names())}")
        target = self._entries[name]
        if isinstance(target, str):
            module, attr = target.split(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target


# The process-wide registry: plugins add to it at import time, as entry points would.
TASKS = TaskRegistry(_BUILTIN)


def register_task(name: str, target: Any, *, replace: bool = False) -> None:
    """Register a training task (see :meth:`TaskRegistry.register`)."""
    TASKS.register(name, target, replace=replace)


def unregister_task(name: str) -> None:
    """Remove a training task (see :meth:`TaskRegistry.unregister`)."""
    TASKS.unregister(name)


def get_task(name: str) -> Any:
    """The task class for ``task: name`` (see :meth:`TaskRegistry.get`)."""
    return TASKS.get(name)


def task_names() -> tuple[str, ...]:
    """Registered task names, sorted."""
    return TASKS.names()


__all__ = ["TASKS", "TaskRegistry", "TrainingTask", "get_task", "register_task", "task_names", "unregister_task"]
