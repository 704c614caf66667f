"""Task pipelines (installed as ``medcnn.pipelines``): thin compositions of medcnn parts.

Each pipeline module exposes ``PIPELINE``, an object with ``name``, ``fields``, ``model`` (the
bundled model name), ``discover``, ``outputs``, ``load`` and ``run`` (see :mod:`medcnn.batch`).
A pipeline that needs several networks also has ``models`` (all bundled names) and
``load_models(refs, device)``; :func:`load_models` is the one entry point for both kinds.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from medcnn.errors import ConfigError

_MODULES = {
    "brain-tumor": "medcnn.pipelines.brain_tumor",
    "alzheimer": "medcnn.pipelines.alzheimer",
    "chest-xray": "medcnn.pipelines.chest_xray",
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


def bundled_models(pipeline: Any) -> list[str]:
    """Bundled model names a pipeline runs with by default."""
    return list(getattr(pipeline, "models", None) or [pipeline.model])


def load_models(pipeline: Any, refs: Sequence[str] | str | None = None, device: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The model object ``pipeline.run`` expects, and its provenance for ``run.json``.

    Args:
        pipeline: from :func:`get_pipeline`.
        refs: ``--model`` value(s): bundled names or checkpoint paths (``None``: the bundled models).
        device: device name.

    Returns:
        ``(model, info)``; ``info`` holds name, path, sha256, network, preprocess, inference and metrics
        (per role for multi-model pipelines).

    Raises:
        InputError: a missing or unusable checkpoint.
    """
    from medcnn.predictor import load_model

    if hasattr(pipeline, "load_models"):
        model = pipeline.load_models(refs, device)
        return model, {"name": refs or bundled_models(pipeline), **model.info()}
    given = [refs] if isinstance(refs, str) else list(refs or [])
    if len(given) > 1:
        raise ConfigError(f"the {pipeline.name} pipeline takes one --model, got {len(given)}")
    ref = given[0] if given else pipeline.model
    model = load_model(ref, device=device)
    return model, {"name": ref, **model.provenance()}
