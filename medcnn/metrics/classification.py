"""Classification metrics (binary, multi-class, multi-label) and ROC / confusion-matrix plots.

Pure numpy, no scikit-learn: results match scikit-learn's ``roc_auc_score``, ``roc_curve``,
``confusion_matrix`` and ``balanced_accuracy_score``, but **arguments come prediction first,
reference second** (``f(probs, labels)``), as in the rest of :mod:`medcnn.metrics`
(``segmentation_metrics(pred, ref, ...)``). Torch tensors are accepted wherever arrays are.

Conventions:

* binary labels are 0/1; a binary prediction is ``probs >= threshold``;
* confusion matrices have one row per true class and one column per predicted class;
* undefined values (AUROC with one class absent, sensitivity without positives...) are ``nan``
  with a :class:`RuntimeWarning`, never an exception, so that a batch report still completes.

Plots are drawn with Pillow (no matplotlib dependency) and written atomically as PNG.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from medcnn.io.atomic import atomic_path

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

#: line colours of :func:`plot_roc` (the "tab10" palette), cycled
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


# ----------------------------------------------------------------------------- input checks


def _as_array(x: ArrayLike, name: str, ndim: int | None = 1) -> np.ndarray:
    """``x`` as a float64 numpy array of the given number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D, got shape {arr.shape}")
    return arr


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
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def balanced_accuracy(preds: ArrayLike, labels: ArrayLike, n_classes: int | None = None) -> float:
    """Mean per-class recall (sensitivity), over the classes present in ``labels``.

    Args:
        preds: predicted class indices ``(N,)``.
        labels: true class indices ``(N,)``.
        n_classes: number of classes; default inferred.

    Returns:
        Balanced accuracy in [0, 1] (scikit-learn's ``balanced_accuracy_score``).
    """
    cm = confusion_matrix(preds, labels, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if cm[:, ~present].sum() > 0:
        warnings.warn("some predicted classes never occur in labels; they are left out of balanced accuracy",
                      RuntimeWarning, stacklevel=2)
    return float(np.mean(np.diag(cm)[present] / support[present]))


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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ``(N,)``, ties sharing the mean of their ranks (float64)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    group_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _auc_or_nan(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based AUROC (Mann-Whitney U / (n_pos n_neg)); ``nan`` when a class is absent."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = float(ranks[labels == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of binary scores, ties counted as half (exact, rank-based).

    Equals the trapezoidal area under :func:`roc_curve` and scikit-learn's ``roc_auc_score``.

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
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1).astype(np.float64) - tps
    thresholds = s[last_of_value]
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    if fps[-1] <= 0 or tps[-1] <= 0:
        warnings.warn("only one class present in labels: the ROC curve is undefined (nan)", RuntimeWarning, stacklevel=2)
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
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


# ----------------------------------------------------------------------------- plots (Pillow)


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at about ``px`` pixels (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - x0), int(y1 - y0)


def _put(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, fill: Any, anchor: str = "mm") -> None:
    """Draw (possibly multi-line) ``text`` anchored at ``xy``.

    ``anchor`` is two letters like Pillow's: horizontal ``l``/``m``/``r`` then vertical
    ``t``/``m``/``b`` of the text's bounding box. Computed here rather than by Pillow, whose
    anchors do not work with the bitmap fallback font.
    """
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    fx = {"l": 0.0, "m": 0.5, "r": 1.0}[anchor[0]]
    fy = {"t": 0.0, "m": 0.5, "b": 1.0}[anchor[1]]
    x = xy[0] - x0 - fx * (x1 - x0)
    y = xy[1] - y0 - fy * (y1 - y0)
    draw.multiline_text((x, y), text, font=font, fill=fill, align="center")


def _vertical_text(img: Image.Image, center: tuple[int, int], text: str, font: Any, fill: Any) -> None:
    """Paste ``text`` rotated 90 degrees counter-clockwise, centred on ``center``."""
    probe = ImageDraw.Draw(img)
    w, h = _text_size(probe, text, font)
    tile = Image.new("RGBA", (w + 4, h + 8), (255, 255, 255, 0))
    _put(ImageDraw.Draw(tile), (2 + w / 2, 4 + h / 2), text, font, fill)
    tile = tile.rotate(90, expand=True)
    img.paste(tile, (int(center[0] - tile.width / 2), int(center[1] - tile.height / 2)), tile)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while len(text) > 1 and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 160 or h < 160:
        raise ValueError(f"size must be at least 160 x 160 pixels, got {size}")
    return w, h


def _save_png(img: Image.Image, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    logger.debug("wrote %s", path)
    return path


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]],
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (640, 640),
    title: str = "ROC curve",
) -> Path:
    """Draw ROC curves with a chance diagonal and a legend of AUC values; write a PNG.

    Args:
        curves: ``{name: (fpr, tpr, auc)}``, ``fpr``/``tpr`` ``(M,)`` in [0, 1] as from
            :func:`roc_curve`, ``auc`` a float (``nan`` is shown as "n/a").
        path: PNG file to write (atomically; folders are created).
        size: image ``(width, height)`` in pixels.
        title: text above the plot.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no curves, mismatched or non-finite coordinates, image too small.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    w, h = _check_size(size)
    checked: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    for name, item in curves.items():
        if len(item) != 3:
            raise ValueError(f"curve {name!r} must be (fpr, tpr, auc)")
        fpr, tpr = _as_array(item[0], f"{name} fpr"), _as_array(item[1], f"{name} tpr")
        if fpr.shape != tpr.shape or fpr.size == 0:
            raise ValueError(f"curve {name!r}: fpr and tpr must be non-empty and of equal length")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise ValueError(f"curve {name!r} has NaN/Inf points (only one class in its labels?)")
        checked.append((str(name), np.clip(fpr, 0, 1), np.clip(tpr, 0, 1), float(item[2])))

    scale = min(w, h) / 640.0
    font = _font(max(10, round(13 * scale)))
    title_font = _font(max(11, round(16 * scale)))
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    pad = max(4, round(6 * scale))
    text_h = _text_size(draw, "Ag", font)[1]
    tick_w = _text_size(draw, "0.0", font)[0]
    title_h = _text_size(draw, title, title_font)[1]
    left = pad + text_h + 2 * pad + tick_w + pad + 5
    bottom = h - (pad + text_h + 2 * pad + text_h + pad + 5)
    top, right = 2 * pad + title_h + pad, w - 3 * pad

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom - y * (bottom - top)

    grid, axis = (230, 230, 230), (60, 60, 60)
    for t in np.linspace(0.0, 1.0, 6):
        gx, _ = px(t, 0)
        _, gy = px(0, t)
        draw.line([(gx, top), (gx, bottom)], fill=grid)
        draw.line([(left, gy), (right, gy)], fill=grid)
        draw.line([(gx, bottom), (gx, bottom + 5)], fill=axis)
        draw.line([(left - 5, gy), (left, gy)], fill=axis)
        _put(draw, (gx, bottom + 8), f"{t:.1f}", font, axis, "mt")
        _put(draw, (left - 8, gy), f"{t:.1f}", font, axis, "rm")
    # chance diagonal, dashed
    n_dash = 40
    for i in range(0, n_dash, 2):
        draw.line([px(i / n_dash, i / n_dash), px((i + 1) / n_dash, (i + 1) / n_dash)], fill=(150, 150, 150), width=1)
    for i, (_, fpr, tpr, _) in enumerate(checked):
        pts = [px(float(x), float(y)) for x, y in zip(fpr, tpr)]
        if len(pts) == 1:
            pts = pts * 2
        draw.line(pts, fill=PALETTE[i % len(PALETTE)], width=max(2, round(2 * scale)), joint="curve")
    draw.rectangle([left, top, right, bottom], outline=axis, width=1)
    _put(draw, ((left + right) / 2, 2 * pad), title, title_font, (0, 0, 0), "mt")
    _put(draw, ((left + right) / 2, h - pad), "False positive rate (1 - specificity)", font, (0, 0, 0), "mb")
    _vertical_text(img, (pad + text_h // 2, (top + bottom) // 2), "True positive rate (sensitivity)", font, (0, 0, 0))

    # legend, lower right inside the axes
    entries = [f"{n} (AUC = {a:.3f})" if math.isfinite(a) else f"{n} (AUC = n/a)" for n, _, _, a in checked]
    line_h = max(_text_size(draw, "Ag", font)[1], 10) + int(8 * scale)
    swatch = int(22 * scale)
    max_text = int((right - left) * 0.75) - swatch
    entries = [_fit(draw, e, font, max_text) for e in entries]
    box_w = swatch + 18 + max(_text_size(draw, e, font)[0] for e in entries)
    box_h = line_h * len(entries) + 8
    bx1, by1 = right - 10, bottom - 10
    bx0, by0 = bx1 - box_w, by1 - box_h
    draw.rectangle([bx0, by0, bx1, by1], fill="white", outline=(180, 180, 180))
    for i, text in enumerate(entries):
        cy = by0 + 4 + line_h * i + line_h / 2
        color = PALETTE[i % len(PALETTE)]
        draw.line([(bx0 + 6, cy), (bx0 + 6 + swatch, cy)], fill=color, width=max(2, round(2 * scale)))
        _put(draw, (bx0 + 12 + swatch, cy), text, font, (0, 0, 0), "lm")
    return _save_png(img, path)


def plot_confusion(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (640, 640),
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix as a heat map with the count in every cell; write a PNG.

    Args:
        cm: ``(K, K)`` counts, rows = true class, columns = predicted class (as from
            :func:`confusion_matrix`).
        class_names: K class names, in index order.
        path: PNG file to write (atomically; folders are created).
        size: image ``(width, height)`` in pixels.
        normalize: colour by row fraction (recall) and print it under the count, instead of
            colouring by raw count.
        title: text above the plot.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``cm`` not square / negative / non-finite, wrong number of names, image too small.
    """
    m = _as_array(cm, "cm", 2)
    k = m.shape[0]
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"cm must be a non-empty square (K, K) matrix, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("cm must hold finite counts >= 0")
    if len(class_names) != k:
        raise ValueError(f"class_names must have {k} names, got {len(class_names)}")
    w, h = _check_size(size)
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        level = frac
    else:
        frac = None
        level = m / m.max() if m.max() > 0 else np.zeros_like(m)

    scale = min(w, h) / 640.0
    font = _font(max(10, round(13 * scale)))
    title_font = _font(max(11, round(16 * scale)))
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    pad = max(4, round(6 * scale))
    text_h = _text_size(draw, "Ag", font)[1]
    title_h = _text_size(draw, title, title_font)[1]
    name_w = min(max(_text_size(draw, str(n), font)[0] for n in class_names), int(0.25 * w))
    left = pad + text_h + 2 * pad + name_w + pad
    bottom = h - (pad + text_h + 3 * pad + text_h + pad)
    top, right = 2 * pad + title_h + 2 * pad, w - 3 * pad
    cw, ch = (right - left) / k, (bottom - top) / k
    cell_font = _font(max(8, min(round(16 * scale), int(ch / 3), int(cw / 4))))
    lo, hi = np.array([247.0, 251.0, 255.0]), np.array([8.0, 48.0, 107.0])  # "Blues"
    for i in range(k):
        for j in range(k):
            t = float(level[i, j])
            color = tuple(int(round(c)) for c in lo + (hi - lo) * t)
            x0, y0 = left + j * cw, top + i * ch
            draw.rectangle([x0, y0, x0 + cw, y0 + ch], fill=color, outline=(255, 255, 255))
            value = m[i, j]
            text = f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"
            if frac is not None:
                text += f"\n{100 * frac[i, j]:.0f}%"
            fill = (255, 255, 255) if t > 0.5 else (0, 0, 0)
            _put(draw, (x0 + cw / 2, y0 + ch / 2), text, cell_font, fill)
    draw.rectangle([left, top, right, bottom], outline=(60, 60, 60))
    for i, name in enumerate(class_names):
        label = _fit(draw, str(name), font, name_w)
        _put(draw, (left - 6, top + (i + 0.5) * ch), label, font, (0, 0, 0), "rm")
        col = _fit(draw, str(name), font, int(cw) - 4)
        _put(draw, (left + (i + 0.5) * cw, bottom + 6), col, font, (0, 0, 0), "mt")
    _put(draw, ((left + right) / 2, 2 * pad), title, title_font, (0, 0, 0), "mt")
    _put(draw, ((left + right) / 2, h - pad), "Predicted class", font, (0, 0, 0), "mb")
    _vertical_text(img, (pad + text_h // 2, (top + bottom) // 2), "True class", font, (0, 0, 0))
    return _save_png(img, path)
