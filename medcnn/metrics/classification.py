"""Classification metrics (binary, multi-class, multi-label) and ROC / confusion-matrix / reliability plots.

The numbers are scikit-learn's (``roc_auc_score``, ``roc_curve``, ``confusion_matrix``,
``balanced_accuracy_score``); this module adds the conventions of :mod:`medcnn.metrics`: **arguments
come prediction first, reference second** (``f(probs, labels)``, as ``segmentation_metrics(pred, ref)``),
torch tensors are accepted wherever arrays are, inputs are checked with one clear error, and

* binary labels are 0/1; a binary prediction is ``probs >= threshold``;
* confusion matrices have one row per true class and one column per predicted class;
* undefined values (AUROC with one class absent, sensitivity without positives...) are ``nan``
  with a :class:`RuntimeWarning`, never an exception, so that a batch report still completes.

The expected calibration error is computed here: scikit-learn has the reliability curve
(``calibration_curve``) but no ECE. Plots are matplotlib's (:mod:`medcnn.plotting`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from sklearn import metrics as skm

from medcnn.plotting import PALETTE, plot_confusion, plot_roc  # noqa: F401 (re-exported)
from medcnn.plotting import check_size as _check_plot_size
from medcnn.plotting import as_float_array as _as_array

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

# ----------------------------------------------------------------------------- input checks


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{na} and {nb} must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError(f"{na} and {nb} are empty")


def _binary(x: ArrayLike, name: str) -> np.ndarray:
    """0/1 labels (bool, int or float holding 0 and 1) as an int64 vector ``(N,)``."""
    arr = _as_array(x, name)
    if not np.isin(arr, (0.0, 1.0)).all():
        bad = arr[~np.isin(arr, (0.0, 1.0))][:3]
        raise ValueError(f"{name} must be binary 0/1, found {bad.tolist()}")
    return arr.astype(np.int64)


def _scores(x: ArrayLike, name: str = "scores") -> np.ndarray:
    arr = _as_array(x, name)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _probabilities(x: ArrayLike, name: str = "probs", ndim: int | None = 1) -> np.ndarray:
    arr = _as_array(x, name, ndim)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must be probabilities in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def _class_ids(x: ArrayLike, name: str) -> np.ndarray:
    """Integer class indices >= 0 as an int64 vector ``(N,)``."""
    arr = _as_array(x, name)
    if not np.isfinite(arr).all() or not np.array_equal(arr, np.rint(arr)) or (arr < 0).any():
        raise ValueError(f"{name} must hold integer class indices >= 0")
    return arr.astype(np.int64)


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


# ----------------------------------------------------------------------------- thresholded metrics


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """Confusion matrix of predicted against true class indices.

    Args:
        preds: predicted class indices ``(N,)`` (0/1 for binary).
        labels: true class indices ``(N,)``.
        n_classes: number of classes K; default ``max(preds, labels) + 1``.

    Returns:
        ``(K, K)`` int64 array, ``cm[true, predicted]`` (scikit-learn's layout: for binary,
        ``[[TN, FP], [FN, TP]]``).
    """
    p, y = _class_ids(preds, "preds"), _class_ids(labels, "labels")
    _same_length(p, y, "preds", "labels")
    k = int(max(p.max(), y.max())) + 1 if n_classes is None else int(n_classes)
    if k < 1 or p.max() >= k or y.max() >= k:
        raise ValueError(f"n_classes={n_classes} is too small for class indices up to {max(p.max(), y.max())}")
    return skm.confusion_matrix(y, p, labels=np.arange(k)).astype(np.int64)


def balanced_accuracy(preds: ArrayLike, labels: ArrayLike, n_classes: int | None = None) -> float:
    """Mean per-class recall (sensitivity), over the classes present in ``labels``.

    Args:
        preds: predicted class indices ``(N,)``.
        labels: true class indices ``(N,)``.
        n_classes: number of classes; default inferred.

    Returns:
        Balanced accuracy in [0, 1] (scikit-learn's ``balanced_accuracy_score``).
    """
    p, y = _class_ids(preds, "preds"), _class_ids(labels, "labels")
    confusion_matrix(p, y, n_classes)  # same checks (lengths, n_classes) as the confusion matrix
    if not np.isin(p, y).all():
        warnings.warn("some predicted classes never occur in labels; they are left out of balanced accuracy",
                      RuntimeWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's own warning about those classes: ours above
        return float(skm.balanced_accuracy_score(y, p))


def sensitivity_specificity(preds: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Sensitivity (true-positive rate) and specificity (true-negative rate) of binary predictions.

    Args:
        preds: predicted 0/1 labels ``(N,)``.
        labels: true 0/1 labels ``(N,)``.

    Returns:
        ``(sensitivity, specificity)``; either is ``nan`` (with a warning) when ``labels`` has no
        positive / no negative case.
    """
    p, y = _binary(preds, "preds"), _binary(labels, "labels")
    _same_length(p, y, "preds", "labels")
    (tn, fp), (fn, tp) = confusion_matrix(p, y, 2)
    if tp + fn == 0 or tn + fp == 0:
        warnings.warn("labels hold a single class: sensitivity or specificity is undefined (nan)",
                      RuntimeWarning, stacklevel=2)
    return _div(tp, tp + fn), _div(tn, tn + fp)


# ----------------------------------------------------------------------------- ranking metrics


def _auc_or_nan(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's ``roc_auc_score``; ``nan`` (no warning here) when a class is absent."""
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(skm.roc_auc_score(labels, scores))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of binary scores, ties counted as half (scikit-learn's ``roc_auc_score``).

    Args:
        scores: scores or probabilities ``(N,)``, higher meaning more likely positive.
        labels: true 0/1 labels ``(N,)``.

    Returns:
        AUROC in [0, 1]; ``nan`` with a :class:`RuntimeWarning` when ``labels`` holds one class.
    """
    s, y = _scores(scores), _binary(labels, "labels")
    _same_length(s, y, "scores", "labels")
    auc = _auc_or_nan(s, y)
    if math.isnan(auc):
        warnings.warn("only one class present in labels: ROC AUC is undefined (nan)", RuntimeWarning, stacklevel=2)
    return auc


def roc_curve(
    scores: ArrayLike, labels: ArrayLike, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve.

    Args:
        scores: scores or probabilities ``(N,)``.
        labels: true 0/1 labels ``(N,)``.
        drop_intermediate: drop points lying on a straight segment between their neighbours
            (they do not change the curve's shape or area), as scikit-learn does by default.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(M,)`` float64: ``thresholds`` decreasing from
        ``inf`` (the point (0, 0)), each point predicting positive for ``scores >= threshold``.
        Identical to scikit-learn's ``roc_curve``. With no negatives (positives) ``fpr``
        (``tpr``) is all ``nan``, with a warning.
    """
    s, y = _scores(scores), _binary(labels, "labels")
    _same_length(s, y, "scores", "labels")
    if y.size == 0 or y.min() == y.max():
        warnings.warn("only one class present in labels: the ROC curve is undefined (nan)", RuntimeWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning: ours above
        fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=drop_intermediate)
    return fpr, tpr, thresholds


def multilabel_auroc(
    probs: ArrayLike, labels: ArrayLike, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-finding AUROC of multi-label predictions and their mean, ignoring unknown labels.

    Args:
        probs: scores ``(N, K)``, one column per finding.
        labels: ``(N, K)`` 0/1 labels with ``nan`` for unknown/unlabelled entries, which are
            left out of that finding's AUROC.
        names: K finding names (default ``finding_0``...).

    Returns:
        ``{"per_finding": {name: auroc}, "mean": float, "n_labelled": {name: int}}``. A finding
        whose labelled cases hold one class has AUROC ``nan`` (one warning names them all) and
        is left out of ``mean``; ``mean`` is ``nan`` when no finding has an AUROC.
    """
    s = _as_array(probs, "probs", 2)
    y = _as_array(labels, "labels", 2)
    if s.shape != y.shape:
        raise ValueError(f"probs and labels must have the same shape (N, K), got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("probs contains NaN or Inf")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or nan (unknown)")
    k = s.shape[1]
    names = [f"finding_{i}" for i in range(k)] if names is None else [str(n) for n in names]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"names must be {k} distinct names, got {names}")
    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for j, name in enumerate(names):
        m = known[:, j]
        counts[name] = int(m.sum())
        per[name] = _auc_or_nan(s[m, j], y[m, j].astype(np.int64)) if m.any() else float("nan")
    undefined = [n for n, v in per.items() if math.isnan(v)]
    if undefined:
        warnings.warn(f"AUROC undefined (labelled cases hold one class or none) for: {', '.join(undefined)}",
                      RuntimeWarning, stacklevel=2)
    valid = [v for v in per.values() if not math.isnan(v)]
    return {"per_finding": per, "mean": float(np.mean(valid)) if valid else float("nan"), "n_labelled": counts}


# ----------------------------------------------------------------------------- calibration


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins.

    ``ECE = sum_b (n_b / N) * |mean confidence_b - mean outcome_b|`` over bins ``((b-1)/B, b/B]``
    (0 falls in the first bin).

    Args:
        probs: either ``(N,)`` probabilities of the positive class, compared with the observed
            frequency of ``labels == 1`` (binary reliability diagram), or ``(N, K)`` class
            probabilities, whose top-label confidence is compared with accuracy (Guo et al. 2017).
        labels: ``(N,)`` 0/1 labels (binary) or class indices (multi-class).
        n_bins: number of bins B (>= 1).

    Returns:
        ECE in [0, 1].
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    p = _probabilities(probs, ndim=None)
    if p.ndim == 1:
        conf, outcome = p, _binary(labels, "labels").astype(np.float64)
    elif p.ndim == 2:
        y = _class_ids(labels, "labels")
        if y.size and y.max() >= p.shape[1]:
            raise ValueError(f"labels hold class {y.max()} but probs has {p.shape[1]} columns")
        conf, outcome = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    else:
        raise ValueError(f"probs must be (N,) or (N, K), got shape {p.shape}")
    _same_length(conf, outcome, "probs", "labels")
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins).astype(np.float64)
    gap = np.abs(np.bincount(idx, weights=conf, minlength=n_bins) - np.bincount(idx, weights=outcome, minlength=n_bins))
    return float(gap.sum() / n.sum())


def plot_reliability(
    probs: ArrayLike,
    labels: ArrayLike,
    path: str | PathLike[str],
    *,
    n_bins: int = 10,
    size: tuple[int, int] = (640, 640),
    title: str = "Reliability diagram",
) -> Path:
    """Reliability (calibration) diagram of binary probabilities: observed frequency against mean predicted
    probability per equal-width bin (scikit-learn's ``calibration_curve``), the diagonal, the ECE in the legend
    and a histogram of the predictions; write a PNG.

    Args:
        probs: ``(N,)`` probabilities of the positive class in [0, 1].
        labels: ``(N,)`` 0/1 labels.
        path: PNG file to write (atomically).
        n_bins: number of bins.
        size: image ``(width, height)`` in pixels.
        title: text above the plot.

    Returns:
        ``path``.

    Raises:
        ValueError: probabilities outside [0, 1], non-binary labels, mismatched lengths, image too small.
    """
    from sklearn.calibration import calibration_curve

    from medcnn.plotting import new_figure, save_figure

    p, y = _as_array(probs, "probs"), _as_array(labels, "labels")
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"probs and labels must be non-empty and of equal length, got {p.shape} and {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    w, h = _check_plot_size(size)
    ece = expected_calibration_error(p, y.astype(np.int64), n_bins=n_bins)
    frac, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    fig = new_figure(w, h)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.plot(mean_pred, frac, color=tuple(c / 255 for c in PALETTE[0]), marker="o", linewidth=2, label=f"model (ECE {ece:.3f}, {n_bins} bins)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of positives")
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="0.9")
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(p, bins=np.linspace(0, 1, n_bins + 1), color=tuple(c / 255 for c in PALETTE[0]), alpha=0.7)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("cases")
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report


def binary_report(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Every binary metric at once, JSON-serialisable.

    Args:
        probs: probabilities of the positive class ``(N,)`` in [0, 1].
        labels: true 0/1 labels ``(N,)``.
        threshold: operating point; a case is predicted positive when ``probs >= threshold``.

    Returns:
        Dictionary with ``n, n_positive, n_negative, threshold, auroc, accuracy,
        balanced_accuracy, sensitivity, specificity, ppv, npv, f1, ece, brier`` (floats; ``nan``
        where undefined), ``confusion_matrix`` (``[[TN, FP], [FN, TP]]``) and ``roc``
        (``{"fpr": [...], "tpr": [...]}``).
    """
    p = _probabilities(probs)
    y = _binary(labels, "labels")
    _same_length(p, y, "probs", "labels")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    pred = (p >= threshold).astype(np.int64)
    cm = confusion_matrix(pred, y, 2)
    (tn, fp), (fn, tp) = cm.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one summary warning below instead of several
        fpr, tpr, _ = roc_curve(p, y)
    single = tp + fn == 0 or tn + fp == 0
    if single:
        warnings.warn("labels hold a single class: AUROC, sensitivity/specificity and balanced accuracy are nan",
                      RuntimeWarning, stacklevel=2)
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    return {
        "n": int(y.size),
        "n_positive": int(tp + fn),
        "n_negative": int(tn + fp),
        "threshold": float(threshold),
        "auroc": _auc_or_nan(p, y),
        "accuracy": _div(tp + tn, y.size),
        "balanced_accuracy": float("nan") if single else (sens + spec) / 2.0,
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "ece": expected_calibration_error(p, y),
        "brier": float(np.mean((p - y) ** 2)),
        "confusion_matrix": cm.tolist(),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }
