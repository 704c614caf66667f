"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled as an
object, so ``torch.load(weights_only=True)`` reads it and a hostile file cannot run code):

``format``/``version``, ``medcnn_version``, ``task``, ``model`` (registry name + kwargs),
``state_dict``, ``preprocess`` (orientation, spacing, crop, normalisation, size), ``inference``
(roi, overlap, blending...), ``labels`` (names, regions, region_based, classes), ``metrics``
(validation figures of this checkpoint), ``training`` (epoch, config, history), and for resumable
``last.pt`` files ``resume`` (optimizer, scheduler, scaler, RNG states).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from medcnn._version import __version__
from medcnn.errors import InputError
from medcnn.io.atomic import atomic_path

logger = logging.getLogger(__name__)

FORMAT = "medcnn.checkpoint"
VERSION = 1


#: bundled checkpoint names -> file names in ``medcnn/data/models``
BUNDLED = {"brain-tumor": "brain_tumor.pt", "alzheimer": "alzheimer.pt", "chest-xray": "chest_xray.pt", "medcnn-prompt": "prompt.pt",
           "chest-xray-lungs": "chest_xray_lungs.pt", "chest-xray-nodule": "chest_xray_nodule.pt"}


def bundled_path(name: str) -> Path | None:
    """Path of a bundled checkpoint, or ``None`` if this install does not ship it."""
    fname = BUNDLED.get(name)
    if fname is None:
        return None
    res = importlib.resources.files("medcnn.data") / "models" / fname
    path = Path(str(res))
    return path if path.is_file() else None


def checkpoint_path(ref: str | Path) -> Path | None:
    """A checkpoint reference as a path: an existing file as given, else a bundled model's file (``None``: neither)."""
    return Path(ref) if Path(ref).is_file() else bundled_path(str(ref))


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` atomically (temp file + rename), adding format/version stamps."""
    path = Path(path)
    data = dict(ckpt)
    data.setdefault("format", FORMAT)
    data.setdefault("version", VERSION)
    data.setdefault("medcnn_version", __version__)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), shortened."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


#: how every file torch.save writes starts: a zip archive, or (legacy format, raw pickles) a pickle protocol byte
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
#: sections every medcnn checkpoint holds, each a mapping
_SECTIONS = ("model", "state_dict", "preprocess", "inference", "labels")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a medcnn checkpoint safely.

    Args:
        path: ``.pt`` file written by :func:`save_checkpoint` (or ``medcnn train``).
        map_location: device for the tensors (default CPU).

    Returns:
        The checkpoint dict.

    Raises:
        InputError: missing, empty or corrupt file, a file that needs unpickling arbitrary objects
            (refused: nothing in it is executed), not a medcnn checkpoint, a newer or non-integer
            version, missing or mistyped sections (``model``, ``state_dict``...), NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise InputError(path, "empty file (0 bytes), not a checkpoint")
    if not head.startswith(_TORCH_MAGIC):
        raise InputError(path, "not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(path, f"refused: the checkpoint contains pickled Python objects, which could run code "
                               f"({_first_line(exc)})") from None
    except Exception as exc:  # truncated zips, bad records...: torch raises many types, none of them user-facing
        raise InputError(path, f"not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, "not a medcnn checkpoint (no 'format: medcnn.checkpoint' entry)")
    version = data.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(path, f"checkpoint version must be an integer, got {version!r}")
    if version > VERSION:
        raise InputError(path, f"checkpoint version {version} is newer than this medcnn ({__version__}); upgrade medcnn")
    _check_structure(data, path)
    return data


def _check_structure(data: dict[str, Any], path: Path) -> None:
    """The sections later code indexes without looking: present, of the right types, weights finite."""
    if not isinstance(data.get("task"), str):
        raise InputError(path, f"not a usable medcnn checkpoint: 'task' must be a string, got {data.get('task')!r}"[:300])
    for key in _SECTIONS:
        if key not in data:
            raise InputError(path, f"not a usable medcnn checkpoint: no '{key}' section")
        if not isinstance(data[key], dict):
            raise InputError(path, f"not a usable medcnn checkpoint: '{key}' must be a mapping, got {type(data[key]).__name__}")
    for key in ("metrics", "training"):
        if key in data and not isinstance(data[key], dict):
            raise InputError(path, f"not a usable medcnn checkpoint: '{key}' must be a mapping, got {type(data[key]).__name__}")
    model = data["model"]
    if not isinstance(model.get("name"), str) or not isinstance(model.get("kwargs"), dict):
        raise InputError(path, "not a usable medcnn checkpoint: 'model' needs a 'name' string and a 'kwargs' mapping")
    for name, value in data["state_dict"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputError(path, f"not a usable medcnn checkpoint: state_dict entry {str(name)[:80]!r} is a "
                                   f"{type(value).__name__}, not a tensor")
        if torch.is_floating_point(value) and value.numel() and not bool(torch.isfinite(value).all()):
            raise InputError(path, f"weights contain NaN or Inf ({name}); the checkpoint is broken (a diverged "
                                   "training?): use another one")


class _NoValuesOnMeta(TorchFunctionMode):
    """Skip the in-place value writes of weight initialisers on meta tensors (there are no values): on the
    meta device they run through Python reference kernels whose first use imports torch._dynamo (seconds)."""

    _SKIPPED = frozenset({"normal_", "uniform_", "trunc_normal_", "erfinv_", "clamp_", "mul_", "add_", "sub_", "div_",
                          "fill_", "zero_", "copy_", "exponential_", "bernoulli_", "log_normal_", "cauchy_",
                          "geometric_", "random_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self._SKIPPED and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def network_on_meta(name: str, kwargs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The state dict ``create_model(name, **kwargs)`` would have, built on the meta device: shapes and dtypes,
    no memory allocated (so a network of absurd width can be refused before it exists).

    Returns:
        ``{key: meta tensor}``, or ``None`` for a network that cannot be built on the meta device (one whose
        constructor reads tensor values).

    Raises:
        ConfigError: unknown model or arguments (as :func:`medcnn.models.create_model`).
    """
    from medcnn.models import create_model

    try:
        with torch.device("meta"), _NoValuesOnMeta():
            net = create_model(name, **kwargs)
    except (RuntimeError, NotImplementedError) as exc:
        logger.debug("%s cannot be built on the meta device (%s); its size is not checked up front", name, exc)
        return None
    return dict(net.state_dict())


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict's tensors (meta tensors included: their shapes and dtypes)."""
    return sum(v.numel() * v.element_size() for v in state.values())


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """``None`` when ``given`` has exactly ``expected``'s keys and shapes, else the first difference in words."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        return f"{len(missing)} weight(s) missing, e.g. {missing[0]}"
    if unexpected:
        return f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[0]}"
    for k, v in expected.items():
        if tuple(given[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(given[k].shape)} in the file, {tuple(v.shape)} in the network"
    return None


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (recorded in run.json provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: largest finite float16 value: a tensor beyond it stays float32 in an fp16 export
_FP16_MAX = float(torch.finfo(torch.float16).max)


def _half_if_it_fits(name: str, v: torch.Tensor) -> torch.Tensor:
    """``v`` as float16, unless it is not floating point or holds values float16 cannot (they would turn
    to inf: batch-norm running variances reach 1e6 in the two-residual-unit prompt network)."""
    if not torch.is_floating_point(v):
        return v
    peak = float(v.detach().abs().max()) if v.numel() else 0.0
    if peak > _FP16_MAX:
        logger.info("export: %s stays float32 (values up to %.3g exceed float16's range)", name, peak)
        return v.float()
    return v.half()


def export_checkpoint(src: str | Path, dst: str | Path, *, half: bool = True,
                      inference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a compact inference checkpoint: no optimizer/resume state, float weights stored as fp16.

    fp16 storage halves the file; :func:`medcnn.predictor.load_model` casts the weights back to
    float32, so predictions change by far less than a voxel's label in practice (the export check in
    ``medcnn export --check`` measures it on real cases).

    Args:
        src: a ``best.pt``/``last.pt`` from ``medcnn train``.
        dst: output path.
        half: store floating-point tensors as float16 (those with values beyond float16's range stay
            float32).
        inference: inference settings to change in the export (e.g. ``{"tta": True}``), checked against
            the ``inference`` section of the training schema.

    Returns:
        The exported checkpoint dict.

    Raises:
        ConfigError: an unknown inference key or a value of the wrong type.
    """
    ck = load_checkpoint(src)
    if inference:
        from medcnn.engine.config import validate
        from medcnn.engine.schema import TRAIN_SCHEMA, check_region_min_ml

        schema = TRAIN_SCHEMA["inference"]
        current = dict(ck.get("inference", {}))
        stored = {k: v for k, v in current.items() if k in schema}
        ck["inference"] = {**current, **validate({**stored, **inference}, schema, prefix="inference.")}
        check_region_min_ml(ck["inference"], (ck.get("labels") or {}).get("regions") or {})
    ck.pop("resume", None)
    training = dict(ck.get("training", {}))
    training.pop("config", None)
    ck["training"] = training
    if half:
        ck["state_dict"] = {k: _half_if_it_fits(k, v) for k, v in ck["state_dict"].items()}
        ck["weights_dtype"] = "float16"
    save_checkpoint(ck, dst)
    return ck
