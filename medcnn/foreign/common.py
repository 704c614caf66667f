"""What the foreign loaders share: the small model YAML (``--model-config``) and safe state-dict reading.

The model YAML holds the sections a medcnn checkpoint carries, with the training schema's keys::

    task: segmentation                 # or classification
    preprocess: {spacing: [1.5, 1.5, 2.0], orientation: RAS, normalize: ct, ct_window: [-57, 164]}
    inference: {roi_size: [96, 96, 96], overlap: 0.5, mode: gaussian}
    labels: {names: {1: spleen}}

Unlike a training config, unset preprocessing keys mean "do nothing": the stored orientation and
spacing are kept, no crop, no normalisation.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcnn.engine.config import NONE, Field, deep_merge, read_yaml, validate
from medcnn.engine.schema import TRAIN_SCHEMA
from medcnn.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

#: what a foreign model does where neither its own files nor the model YAML say otherwise
NEUTRAL_PREPROCESS: dict[str, Any] = {"orientation": None, "spacing": None, "normalize": "none", "crop_foreground": False}

MODEL_CONFIG_SCHEMA: dict[str, Any] = {
    "task": Field((str,), "segmentation", choices=("segmentation", "classification")),
    "preprocess": {**TRAIN_SCHEMA["preprocess"],
                   "in_channels": Field((int, NONE), None, help="channels the network reads (checked on input)"),
                   "channel_names": Field((list, NONE), None, help="names of the input channels, in order")},
    "inference": TRAIN_SCHEMA["inference"],
    "labels": {
        "names": {"*": Field((str,))},
        "regions": {"*": Field((list,))},
        "classes": Field((list, NONE), None, help="classification: class names in output order"),
        "multilabel": Field((bool,), False, help="classification: one sigmoid per class"),
    },
}

#: keys under which training scripts commonly nest the weights in a saved dict
_NESTED_KEYS = ("state_dict", "model", "network_weights", "model_state_dict", "net")


def read_model_config(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's model settings (a YAML file or the same mapping), checked against the schema; only
    the keys given are returned (defaults are filled later by :func:`model_config`).

    Raises:
        ConfigError: unreadable YAML, an unknown key (with a did-you-mean) or a value of the wrong type.
    """
    if config is None:
        return {}
    raw = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    if "labels" in raw and isinstance(raw["labels"], Mapping) and "names" in raw["labels"]:
        raw = {**raw, "labels": {**raw["labels"], "names": {str(k): v for k, v in dict(raw["labels"]["names"] or {}).items()}}}
    validate(raw, MODEL_CONFIG_SCHEMA, prefix="")
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}


def model_config(task: str, model: dict[str, Any], found: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """A complete medcnn model config: schema defaults < neutral preprocessing < what the foreign files
    say (``found``) < what the user gave (``given``, from :func:`read_model_config`).

    Returns:
        dict with ``task``, ``model``, ``preprocess``, ``inference``, ``labels``, ``metrics``, ``training``.

    Raises:
        ConfigError: the merged settings are invalid, or a segmentation model has no ``inference.roi_size``.
    """
    merged = deep_merge(deep_merge({"task": task, "preprocess": dict(NEUTRAL_PREPROCESS)}, found), given)
    cfg = validate(merged, MODEL_CONFIG_SCHEMA, prefix="")
    if cfg["task"] == "segmentation" and not cfg["inference"]["roi_size"]:
        raise ConfigError("inference.roi_size: the model's window size is not known; give it in the model config "
                          "(--model-config FILE with inference: {roi_size: [...]})")
    labels = cfg["labels"]
    labels["region_based"] = bool(labels.get("regions")) and cfg["task"] == "segmentation"
    labels.setdefault("channels", [])
    labels["classes"] = labels.get("classes") or []
    cfg["inference"].setdefault("precision", "fp32")
    return {"task": cfg["task"], "model": model, "preprocess": cfg["preprocess"], "inference": cfg["inference"],
            "labels": labels, "metrics": {}, "training": {}}


def safe_torch_load(path: Path, what: str, allowed: Sequence[Any] = (), beyond: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with ``allowed`` globals; every failure one line.

    Args:
        path: the file.
        what: what the file is, for messages ("weights file", "checkpoint").
        allowed: extra globals that ``weights_only`` may unpickle (plain data types only).
        beyond: words naming ``allowed`` in the refusal ("beyond numpy scalars").

    Raises:
        InputError: missing, pickled Python objects (refused), or unreadable.
    """
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(path, f"refused: the {what} contains pickled Python objects{beyond}, which could run code "
                               f"({str(exc).splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable PyTorch {what} ({str(exc).splitlines()[0][:160]})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a weights file, read with ``weights_only=True`` on the CPU.

    Accepts a bare state dict or one nested under a usual key (``state_dict``, ``model``,
    ``network_weights``...); DataParallel/DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes are
    removed.

    Raises:
        InputError: missing file, pickled Python objects (refused), unreadable, or no tensors found.
    """
    path = Path(path)
    data = safe_torch_load(path, "weights file")
    if isinstance(data, Mapping) and not _all_tensors(data):
        for key in _NESTED_KEYS:
            if isinstance(data.get(key), Mapping) and _all_tensors(data[key]):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data or not _all_tensors(data):
        raise InputError(path, "no state dict found (expected {name: tensor}, or one under "
                               f"{', '.join(repr(k) for k in _NESTED_KEYS)})")
    out = {}
    for name, value in data.items():
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value.float() if torch.is_floating_point(value) else value
    return out


def _all_tensors(d: Mapping[str, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def load_weights(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``network.load_state_dict(state, strict=True)``, failing with one line naming ``path``.

    Raises:
        InputError: missing/unexpected keys or shape mismatches (the first few named).
    """
    want = network.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise InputError(path, f"weights do not fit {what}: {'; '.join(parts)}")
    network.load_state_dict(dict(state), strict=True)
