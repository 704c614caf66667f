"""A plain state dict plus a registry architecture: ``load_model(path, arch="unet", arch_args={...}, config=...)``.

The network is built with :func:`medcnn.models.create_model` from ``arch`` and ``arch_args``; the
weights must fit it exactly (strict). Spacing, orientation, normalisation, window size and labels
come from the model config (:mod:`medcnn.foreign.common`), since a bare state dict holds none of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from medcnn.errors import ConfigError
from medcnn.foreign.common import load_weights, model_config, read_model_config, read_state_dict
from medcnn.models import create_model
from medcnn.models.registry import model_task

logger = logging.getLogger(__name__)


def parse_arch_args(values: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--arch-args`` as a dict: one JSON object, and/or ``key=value`` items (values parsed as YAML,
    so ``channels=[16,32,64]`` is a list), several items separated by commas outside brackets or given
    as repeated options.

    Raises:
        ConfigError: invalid JSON, an item without ``=``, or a key given twice.
    """
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    items = [values] if isinstance(values, str) else list(values)
    out: dict[str, Any] = {}
    for item in items:
        text = item.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--arch-args: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(parsed, dict):
                raise ConfigError("--arch-args: the JSON must be an object")
            pairs = list(parsed.items())
        else:
            pairs = [_key_value(part) for part in _split_top_level(text)]
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"--arch-args: {key} given twice")
            out[key] = value
    return out


def _split_top_level(text: str) -> list[str]:
    """Split ``a=1,b=[1,2]`` at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (s.strip() for s in parts) if p]


def _key_value(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--arch-args: expected key=value or a JSON object, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_state_dict_model(path: str | Path, arch: str, arch_args: str | Sequence[str] | Mapping[str, Any] | None = None,
                          config: str | Path | Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``arch`` and load the weights in ``path`` into it.

    Args:
        path: a file holding a state dict (bare, or under ``state_dict``/``model``/...).
        arch: a name from :func:`medcnn.models.list_models`.
        arch_args: its keyword arguments (dict, JSON text or ``key=value`` items).
        config: the model YAML (path or mapping): ``preprocess``, ``inference`` (``roi_size`` is
            required for segmentation), ``labels``.

    Returns:
        ``(network, config)`` for :class:`medcnn.predictor.Model`.

    Raises:
        ConfigError: unknown architecture or argument, invalid model config.
        InputError: unreadable weights or weights that do not fit the network.
    """
    kwargs = parse_arch_args(arch_args)
    given = read_model_config(config)
    net = create_model(arch, **kwargs)
    load_weights(net, read_state_dict(path), path, f"the {arch} network built from --arch-args {kwargs}")
    task = model_task(arch)
    if task not in ("segmentation", "classification"):
        raise ConfigError(f"--arch {arch}: a {task} network cannot be loaded from a plain state dict here")
    found: dict[str, Any] = {}
    if "in_channels" in kwargs:
        found["preprocess"] = {"in_channels": int(kwargs["in_channels"])}
    cfg = model_config(task, {"name": arch, "kwargs": kwargs, "format": "state-dict"}, found, given)
    logger.debug("loaded %s weights from %s", arch, path)
    return net, cfg
