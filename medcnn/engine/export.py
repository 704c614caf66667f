"""Export a medcnn checkpoint's network as ONNX or TorchScript, with its inference contract as JSON.

The exported file holds the network alone (``(B, C, *spatial)`` preprocessed input -> logits). What
medcnn does around it -- resampling to the model grid, cropping, intensity normalisation, sliding
windows, mirror averaging, activation, label decisions -- is written to a JSON file beside it,
``FILE + ".json"`` (``bt.onnx`` -> ``bt.onnx.json``), so that another runtime can reproduce
:meth:`medcnn.predictor.Model.predict` from the file and the JSON alone.

Axes: the batch axis is always dynamic. Spatial axes are dynamic for fully convolutional networks
(segmentation and promptable U-Nets: any window size divisible by the network's total stride);
classifiers take the fixed input size of their preprocessing (``preprocess.size`` /
``square_size``), which their pooling was traced at.

ONNX export uses PyTorch's TorchScript-based exporter (``dynamo=False``: no ``onnxscript``
dependency); it needs the ``export`` extra (``pip install medcnn[export]``: onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcnn._version import __version__
from medcnn.engine.checkpoint import load_checkpoint, sha256
from medcnn.engine.tasks import TrainingTask, get_task, task_names
from medcnn.engine.tasks.segmentation import SegmentationTask
from medcnn.errors import ConfigError, InputError
from medcnn.io.atomic import atomic_path, write_text_atomic
from medcnn.models import create_model

logger = logging.getLogger(__name__)

#: formats of ``medcnn export --format``; "medcnn" is the compact checkpoint (:func:`export_checkpoint`)
FORMATS = ("medcnn", "onnx", "torchscript")
ONNX_OPSET = 17
#: what each ``preprocess.normalize`` name does (for the contract's readers)
NORMALISATION = {
    "brain_mri": "per-channel z-score over the voxels non-zero in any channel; background stays 0",
    "zscore": "per-channel z-score over the whole image",
    "ct": "clip to preprocess.ct_window (HU) and scale to [0, 1]; with ct_zscore [mean, std]: (clipped - mean) / std instead",
    "minmax": "per-channel 0.5-99.5 percentile scaling to [0, 1], clipped",
    "none": "none (the prompt model's channels are built by medcnn.prompt: image scaled to [0, 1], box and click maps)",
}


def contract_path(dest: str | Path) -> Path:
    """The JSON written beside an exported file: ``dest`` with ``.json`` appended."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".json")


def _network(ck: dict[str, Any], path: Path) -> nn.Module:
    net = create_model(ck["model"]["name"], **ck["model"]["kwargs"])
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in ck["state_dict"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit the {ck['model']['name']} network it describes ({str(exc)[:200]})") from None
    return net.eval()


def _spatial_dims(ck: dict[str, Any]) -> int:
    return int(ck["model"]["kwargs"].get("spatial_dims", 3))


def _task_class(ck: dict[str, Any]) -> type[TrainingTask] | None:
    """The registered :class:`TrainingTask` of a checkpoint's ``task`` (None: unregistered, or a whole-``Trainer``
    task such as ``prompt``, whose contract is written here)."""
    name = ck.get("task")
    if not isinstance(name, str) or name not in task_names():
        return None
    target = get_task(name)
    return target if isinstance(target, type) and issubclass(target, TrainingTask) else None


def dynamic_spatial(ck: dict[str, Any]) -> bool:
    """True when the exported network takes any spatial size (fully convolutional: segmentation, prompt)."""
    task = _task_class(ck)
    return task.dense_output if task is not None else ck.get("task") == "prompt"


def default_window(ck: dict[str, Any]) -> list[int]:
    """The spatial input size the network is exported at: its sliding window, fixed input size or prompt crop."""
    sd = _spatial_dims(ck)
    inf = ck.get("inference") or {}
    if ck.get("task") == "prompt":
        return [int((ck.get("prompt") or {}).get("crop_size", 96))] * sd
    task = _task_class(ck)
    window = task.export_window(ck, sd) if task is not None else None
    if window is not None:
        return window
    if inf.get("roi_size"):
        return [int(s) for s in inf["roi_size"]][:sd]
    return [64] * sd


def _activation(ck: dict[str, Any]) -> dict[str, Any]:
    if ck.get("task") == "prompt":
        return {"activation": "sigmoid", "decision": "mask = logits + prompt.logit_offset > 0 (see prompt)"}
    # a checkpoint of an unregistered task reads as segmentation, the engine's first task
    return (_task_class(ck) or SegmentationTask).export_activation(ck)


def inference_contract(ck: dict[str, Any], fmt: str, file: Path, window: Sequence[int], source: Path) -> dict[str, Any]:
    """Everything needed to use the exported network outside medcnn, as a JSON-ready dict.

    Args:
        ck: the medcnn checkpoint dict.
        fmt: ``"onnx"`` or ``"torchscript"``.
        file: the exported file.
        window: spatial size the network was exported at.
        source: the checkpoint file.
    """
    pre = dict(ck.get("preprocess") or {})
    sd = _spatial_dims(ck)
    dyn = dynamic_spatial(ck)
    names = list(pre.get("channel_names") or [])
    spatial = ["i", "j", "k"][:sd] if sd == 3 else ["rows", "cols"]
    shape: list[Any] = ["batch", int(ck["model"]["kwargs"].get("in_channels", len(names) or 1))]
    shape += [f"{a} (any)" for a in spatial] if dyn else [int(s) for s in window]
    out_channels = int(ck["model"]["kwargs"].get("out_channels", 1))
    task = _task_class(ck)
    dense_out = task.dense_output if task is not None else True
    out_shape: list[Any] = ["batch", out_channels] + ([f"{a} (as input)" for a in spatial] if dense_out else [])
    prompt = {k: v for k, v in (ck.get("prompt") or {}).items() if not k.startswith("offset_model")}
    doc = {
        "format": fmt,
        "file": file.name,
        "medcnn_version": __version__,
        "source_checkpoint": {"path": str(source), "sha256": sha256(source)},
        "task": ck.get("task"),
        "network": ck["model"],
        "input": {
            "name": "image", "dtype": "float32", "layout": "NCDHW" if sd == 3 else "NCHW",
            "axis_order": ("medcnn voxel order (i, j, k) of the model grid (after reorientation to preprocess.orientation)"
                           if sd == 3 else "(rows, cols) of the pixel array"),
            "channels": names, "shape": shape,
            "example_spatial_size": [int(s) for s in window],
            "spatial_multiple": _total_stride(ck) if dyn else None,
        },
        "output": {"name": "logits", "dtype": "float32", "shape": out_shape, **_activation(ck)},
        "preprocess": {
            "orientation": pre.get("orientation"), "spacing_mm": pre.get("spacing"),
            "normalize": pre.get("normalize"), "normalize_means": NORMALISATION.get(str(pre.get("normalize")), ""),
            "ct_window": pre.get("ct_window"), "ct_zscore": pre.get("ct_zscore"), "crop_foreground": pre.get("crop_foreground"),
            "crop_threshold": pre.get("crop_threshold"), "size": pre.get("size"), "square_size": pre.get("square_size"),
            "order": "resample to spacing/orientation -> crop foreground -> normalize -> pad/crop to size or letterbox to square_size",
        },
        "inference": {**(ck.get("inference") or {}),
                      "notes": "sliding windows of roi_size with overlap and mode (gaussian/constant) blending; tta mirrors "
                               "the input over tta_axes (all spatial axes when null) and averages the logits"},
        "labels": ck.get("labels") or {},
    }
    if prompt:
        doc["prompt"] = prompt
    return doc


def _total_stride(ck: dict[str, Any]) -> int:
    strides = ck["model"]["kwargs"].get("strides") or []
    total = 1
    for s in strides:
        total *= int(s if not isinstance(s, (list, tuple)) else max(s))
    return total


def _example(ck: dict[str, Any], window: Sequence[int], batch: int = 1) -> torch.Tensor:
    c = int(ck["model"]["kwargs"].get("in_channels", 1))
    return torch.randn(batch, c, *[int(s) for s in window], generator=torch.Generator().manual_seed(0))


def _binned_mean(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling as explicit bin means with static bounds (same bins as PyTorch's:
    ``[floor(i n / m), ceil((i + 1) n / m))``): ONNX has no adaptive pooling, and the legacy exporter
    refuses output sizes that come from tensor shapes or bins of uneven width."""
    sd = x.ndim - 2
    sizes = [int(size)] * sd if isinstance(size, int) else [int(s) if s is not None else int(n) for s, n in zip(size, x.shape[2:])]
    out = x
    for axis, m in enumerate(sizes):
        d, n = 2 + axis, int(x.shape[2 + axis])
        out = torch.cat([out.narrow(d, (i * n) // m, -(-(i + 1) * n // m) - (i * n) // m).mean(d, keepdim=True)
                         for i in range(m)], d)
    return out


@contextlib.contextmanager
def _static_adaptive_pooling() -> Iterator[None]:
    """Within the block, ``F.adaptive_avg_pool2d/3d`` compute :func:`_binned_mean` (export of fixed-size classifiers only)."""
    import torch.nn.functional as F

    saved = F.adaptive_avg_pool2d, F.adaptive_avg_pool3d
    F.adaptive_avg_pool2d = F.adaptive_avg_pool3d = _binned_mean
    try:
        yield
    finally:
        F.adaptive_avg_pool2d, F.adaptive_avg_pool3d = saved


def _export_onnx(net: nn.Module, example: torch.Tensor, tmp: Path, dynamic: bool) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise ConfigError("--format onnx needs the onnx package: pip install 'medcnn[export]'") from None
    spatial = range(2, example.ndim)
    axes = {0: "batch", **({a: f"s{a - 2}" for a in spatial} if dynamic else {})}  # logits keep the input's spatial axes
    pooling = contextlib.nullcontext() if dynamic else _static_adaptive_pooling()
    with warnings.catch_warnings(), pooling, torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and instance-norm training-mode notes
        torch.onnx.export(net, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=ONNX_OPSET, dynamo=False)


def _export_torchscript(net: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python values becoming constants
        traced = torch.jit.trace(net, (example,), check_trace=False)
    traced.save(str(tmp))


def export_network(checkpoint: str | Path, dest: str | Path, fmt: str, *, window: Sequence[int] | None = None) -> dict[str, Any]:
    """Export the network of a medcnn checkpoint as ONNX or TorchScript, and its contract as ``dest + ".json"``.

    Args:
        checkpoint: a medcnn checkpoint file (``medcnn train`` / ``medcnn export`` output or a bundled model).
        dest: the exported file (``.onnx`` / ``.pt``); both files are written atomically.
        fmt: ``"onnx"`` or ``"torchscript"``.
        window: spatial size to export at (default :func:`default_window`: the sliding window, the fixed
            input size of a classifier, or the prompt crop). Classifiers keep this size; U-Nets take any
            size divisible by their total stride.

    Returns:
        The contract written to the JSON (see :func:`inference_contract`).

    Raises:
        ConfigError: unknown format, or onnx not installed.
        InputError: unreadable checkpoint or weights that do not fit.
    """
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"format must be onnx or torchscript here (medcnn: export_checkpoint), got {fmt!r}")
    src, dest = Path(checkpoint), Path(dest)
    ck = load_checkpoint(src)
    net = _network(ck, src)
    win = [int(s) for s in (window or default_window(ck))]
    if len(win) != _spatial_dims(ck):
        raise ConfigError(f"window needs {_spatial_dims(ck)} sizes for this network, got {win}")
    example = _example(ck, win)
    with atomic_path(dest) as tmp:
        if fmt == "onnx":
            _export_onnx(net, example, tmp, dynamic_spatial(ck))
        else:
            _export_torchscript(net, example, tmp)
    doc = inference_contract(ck, fmt, dest, win, src)
    write_text_atomic(contract_path(dest), json.dumps(doc, indent=2, default=str) + "\n")
    logger.debug("exported %s (%s) as %s -> %s (+ %s)", src, ck["model"]["name"], fmt, dest, contract_path(dest).name)
    return doc
