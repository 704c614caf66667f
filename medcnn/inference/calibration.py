"""Temperature scaling: a classifier checkpoint's ``calibration`` section (Guo et al. 2017).

A classifier's probabilities become ``softmax(logits / T)`` (``sigmoid(logits / T)`` per label for
multi-label models) when its checkpoint carries::

    "calibration": {"method": "temperature", "version": 1, "temperature": T, ...}

``T > 0`` keeps the ranking of cases and the argmax (and, for two classes, which side of 0.5 a case
falls), so AUROC and decisions at 0.5 are unchanged; only how confident the probabilities are moves.
``T`` is fitted by :func:`fit_temperature` (minimum negative log-likelihood over ``log T``) on held-out,
labelled cases of the model's training generator, never on test data; a multi-label model may hold one
``T`` per label (a list). Without the section the probabilities are exactly the uncalibrated ones.
The section holds plain numbers, strings and lists, so ``torch.load(weights_only=True)`` reads it.

    medcnn calibrate temperature alzheimer data/ad_cal -o alzheimer_cal.pt
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn.errors import InputError

logger = logging.getLogger(__name__)

#: checkpoint key of the section
CALIBRATION_KEY = "calibration"
#: version of the section's layout
CALIBRATION_VERSION = 1
#: the temperatures the fit may choose (a fit at a bound says the data cannot settle T)
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def _valid_t(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
            and math.isfinite(float(value)) and float(value) > 0)


def check_section(section: Any, path: str | Path | None = None, n_classes: int | None = None,
                  multilabel: bool = False) -> dict[str, Any] | None:
    """Validate a checkpoint's ``calibration`` section.

    Args:
        section: the section (``None``: no calibration).
        path: the checkpoint, named in errors.
        n_classes: number of network outputs (checks the length of a per-label temperature list).
        multilabel: a sigmoid-per-label model (only those may hold one temperature per label).

    Returns:
        The section, or ``None`` when absent.

    Raises:
        InputError: not a mapping, an unknown method, or a temperature that is not a finite number > 0.
    """
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise InputError(path, f"calibration section must be a mapping, got {type(section).__name__}")
    method = section.get("method", "temperature")
    if method != "temperature":
        raise InputError(path, f"calibration method {method!r} is unknown (this medcnn applies 'temperature')")
    t = section.get("temperature")
    if isinstance(t, (list, tuple)):
        if not multilabel:
            raise InputError(path, "calibration.temperature is a list, but only multi-label models take one per label")
        if n_classes is not None and len(t) != n_classes:
            raise InputError(path, f"calibration.temperature has {len(t)} values for {n_classes} labels")
        bad = [v for v in t if not _valid_t(v)]
    else:
        bad = [] if _valid_t(t) else [t]
    if bad or (isinstance(t, (list, tuple)) and not t):
        raise InputError(path, f"calibration.temperature must be a finite number > 0 (or one per label), got {t!r}")
    return dict(section)


def temperature_of(config: Mapping[str, Any]) -> torch.Tensor | None:
    """The temperature of a model config (``Model.config``): a scalar or ``(K,)`` float32 tensor, ``None`` when absent."""
    section = config.get(CALIBRATION_KEY)
    if section is None:
        return None
    t = section["temperature"]
    return torch.tensor([float(v) for v in t] if isinstance(t, (list, tuple)) else float(t), dtype=torch.float32)


def scale_logits(logits: torch.Tensor, temperature: torch.Tensor | float | None) -> torch.Tensor:
    """``(..., K)`` logits divided by the temperature (scalar or ``(K,)``); unchanged when it is ``None``."""
    if temperature is None:
        return logits
    return logits / torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)


def probabilities(logits: np.ndarray, temperature: float | np.ndarray = 1.0, multilabel: bool = False) -> np.ndarray:
    """``(N, K)`` logits -> float64 probabilities at ``temperature``: softmax over K, or sigmoid per label."""
    from scipy.special import expit, softmax

    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    return expit(z) if multilabel else softmax(z, axis=-1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float | np.ndarray = 1.0, multilabel: bool = False) -> float:
    """Mean negative log-likelihood of ``labels`` under ``logits / temperature``.

    Args:
        logits: ``(N, K)``.
        labels: ``(N,)`` class indices (softmax) or ``(N, K)`` 0/1 (multi-label; mean over cases and labels).
        temperature: scalar, or ``(K,)`` for multi-label.
        multilabel: sigmoid per label instead of softmax.
    """
    from scipy.special import log_expit, log_softmax

    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    if multilabel:
        y = np.asarray(labels, dtype=np.float64)
        return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).mean())
    y = np.asarray(labels, dtype=np.int64)
    return float(-log_softmax(z, axis=-1)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, multilabel: bool = False) -> float:
    """The temperature minimising :func:`nll` on held-out cases (bounded search over ``log T``).

    Args:
        logits: ``(N, K)`` uncalibrated network outputs (``(N,)`` is taken as one label of a multi-label model).
        labels: ``(N,)`` class indices, or ``(N, K)`` 0/1 for multi-label.
        multilabel: sigmoid per label (one temperature shared by every column given).

    Returns:
        ``T`` in ``[0.05, 20]``.

    Raises:
        ValueError: empty or mismatched inputs, non-finite logits.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z, labels, multilabel = z[:, None], np.asarray(labels)[:, None], True
    if z.ndim != 2 or len(z) == 0 or len(z) != len(labels):
        raise ValueError(f"need (N, K) logits and N labels, got {z.shape} and {len(labels)}")
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or Inf")
    res = minimize_scalar(lambda s: nll(z, labels, math.exp(s), multilabel), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    t = math.exp(float(res.x))
    if min(abs(res.x - b) for b in LOG_T_BOUNDS) < 1e-3:  # separable data pushes T to 0; constant outputs to infinity
        logger.warning("the fitted temperature %.3g sits at its bound: the fitting cases cannot settle it", t)
    return t


def section(temperature: float | Sequence[float], *, n_fit: int, report: Mapping[str, Any] | None = None,
            data: Sequence[str | Path] = ()) -> dict[str, Any]:
    """A ``calibration`` checkpoint section (plain numbers, strings and lists).

    Args:
        temperature: ``T``, or one per label.
        n_fit: number of fitting cases.
        report: figures of the fit to keep (e.g. ``{"nll": [before, after], "ece": [before, after]}``).
        data: the fitting folders (provenance).
    """
    t = [float(v) for v in temperature] if isinstance(temperature, (list, tuple, np.ndarray)) else float(temperature)
    out = {"method": "temperature", "version": CALIBRATION_VERSION, "temperature": t, "n_fit": int(n_fit),
           "data": [str(d) for d in data]}
    if report:
        out["fit"] = {k: [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v) for k, v in report.items()}
    return out
