"""Task pipelines (installed as ``medcnn.pipelines``): thin compositions of medcnn parts.

Each pipeline module exposes ``PIPELINE``, an object with ``name``, ``fields``, ``model`` (the
bundled model name), ``discover``, ``outputs``, ``load`` and ``run`` (see :mod:`medcnn.batch`).
"""

from __future__ import annotations

import importlib
from typing import Any

from medcnn.errors import ConfigError

_MODULES = {
    "brain-tumor": "medcnn.pipelines.brain_tumor",
    "alzheimer": "medcnn.pipelines.alzheimer",
}


def available() -> list[str]:
    """Names accepted by ``medcnn predict``."""
    return sorted(_MODULES)


def get_pipeline(name: str) -> Any:
    """The pipeline object registered under ``name``.

    Raises:
        ConfigError: unknown name (lists the valid ones).
    """
    if name not in _MODULES:
        raise ConfigError(f"unknown pipeline {name!r}; available: {', '.join(available())}")
    return importlib.import_module(_MODULES[name]).PIPELINE
