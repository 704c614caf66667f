"""Plots with matplotlib: training curves, ROC curves (AUC in the legend), confusion matrices (the reliability
diagram is :func:`medcnn.metrics.classification.plot_reliability`, next to the ECE it shows).

Each plot is a :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, so no global figure state
and no display needed), rendered at exactly the requested pixel size and written atomically as a PNG
without metadata chunks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from medcnn.io.atomic import atomic_path

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, Sequence[float], Any]

#: line colours (matplotlib's "tab10" palette), cycled
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
_DPI = 100


def as_float_array(x: Any, name: str, ndim: int | None = 1) -> np.ndarray:
    """``x`` (array, tensor or sequence) as a float64 numpy array with ``ndim`` dimensions.

    Raises:
        ValueError: wrong number of dimensions (the message names ``name``).
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D, got shape {arr.shape}")
    return arr


def _colour(i: int) -> tuple[float, float, float]:
    r, g, b = PALETTE[i % len(PALETTE)]
    return r / 255.0, g / 255.0, b / 255.0


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 160 or h < 160:
        raise ValueError(f"size must be at least 160 x 160 pixels, got {size}")
    return w, h


def new_figure(width_px: int, height_px: int) -> Any:
    """A white Figure of exactly ``width_px x height_px`` pixels on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` and write it as an RGB PNG atomically (Pillow: no text chunks)."""
    from PIL import Image

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    logger.debug("wrote %s", path)
    return path


# ------------------------------------------------------------------------------------- line plots


def line_plot(
    panels: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    xlabel: str = "",
    ylabels: Sequence[str] | None = None,
    size: tuple[int, int] = (520, 380),
    diagonal: Sequence[bool] | None = None,
    limits: Sequence[tuple[float, float, float, float] | None] | None = None,
) -> Path:
    """Draw one or more panels of line series side by side (e.g. training curves) and write a PNG atomically.

    Args:
        panels: one mapping per panel, ``{series name: (xs, ys)}``; NaNs break lines.
        path: output ``.png``.
        titles: panel titles.
        xlabel: x-axis label (all panels).
        ylabels: y-axis label per panel.
        size: ``(width, height)`` of each panel in pixels.
        diagonal: draw the ``y = x`` chance line in a panel (ROC plots).
        limits: ``(x0, x1, y0, y1)`` per panel, or ``None`` to fit the data.

    Returns:
        ``path``.
    """
    w, h = check_size(size)
    fig = new_figure(w * max(len(panels), 1), h)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for p, (ax, series) in enumerate(zip(axes, panels)):
        for i, (name, (xs, ys)) in enumerate(series.items()):
            x, y = as_float_array(xs, f"{name} x"), as_float_array(ys, f"{name} y")
            marker = "o" if np.isfinite(y).sum() <= 12 else None
            ax.plot(x, y, color=_colour(i), linewidth=1.8, marker=marker, markersize=3, label=str(name))
        if diagonal and p < len(diagonal) and diagonal[p]:
            ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        if limits and p < len(limits) and limits[p] is not None:
            x0, x1, y0, y1 = limits[p]
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        if titles and p < len(titles):
            ax.set_title(titles[p], fontsize=10)
        if ylabels and p < len(ylabels):
            ax.set_ylabel(ylabels[p])
        ax.set_xlabel(xlabel)
        ax.grid(True, color="0.9")
        if series:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------- ROC, calibration, confusion


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]],
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (640, 640),
    title: str = "ROC curve",
) -> Path:
    """Draw ROC curves with a chance diagonal and the AUC of each curve in the legend; write a PNG.

    Args:
        curves: ``{name: (fpr, tpr, auc)}``, ``fpr``/``tpr`` ``(M,)`` in [0, 1] as from
            :func:`medcnn.metrics.roc_curve`, ``auc`` a float (``nan`` is shown as "n/a").
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
    w, h = check_size(size)
    checked: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    for name, item in curves.items():
        if len(item) != 3:
            raise ValueError(f"curve {name!r} must be (fpr, tpr, auc)")
        fpr, tpr = as_float_array(item[0], f"{name} fpr"), as_float_array(item[1], f"{name} tpr")
        if fpr.shape != tpr.shape or fpr.size == 0:
            raise ValueError(f"curve {name!r}: fpr and tpr must be non-empty and of equal length")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise ValueError(f"curve {name!r} has NaN/Inf points (only one class in its labels?)")
        checked.append((str(name), np.clip(fpr, 0, 1), np.clip(tpr, 0, 1), float(item[2])))
    fig = new_figure(w, h)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for i, (name, fpr, tpr, auc) in enumerate(checked):
        auc_txt = "n/a" if math.isnan(auc) else f"{auc:.3f}"
        ax.plot(fpr, tpr, color=_colour(i), linewidth=2, label=f"{name} (AUC {auc_txt})", drawstyle="default")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="0.9")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (640, 640),
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix as a heat map with a colour bar and the count in every cell; write a PNG.

    Args:
        cm: ``(K, K)`` counts, rows = true class, columns = predicted class (as from
            :func:`medcnn.metrics.confusion_matrix`).
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
    m = as_float_array(cm, "cm", 2)
    k = m.shape[0]
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"cm must be a non-empty square (K, K) matrix, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("cm must hold finite counts >= 0")
    if len(class_names) != k:
        raise ValueError(f"class_names must have {k} names, got {len(class_names)}")
    w, h = check_size(size)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    level = frac if normalize else m
    fig = new_figure(w, h)
    ax = fig.subplots()
    im = ax.imshow(level, cmap="Blues", vmin=0, vmax=1 if normalize else max(float(m.max()), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class" if normalize else "cases")
    names = [str(n) if len(str(n)) <= 18 else str(n)[:17] + "…" for n in class_names]
    ax.set_xticks(range(k), names, rotation=30 if max(map(len, names)) > 6 else 0, ha="right" if max(map(len, names)) > 6 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    cut = 0.5 * (1 if normalize else max(float(m.max()), 1.0))
    for i in range(k):
        for j in range(k):
            txt = f"{int(m[i, j])}" + (f"\n{frac[i, j]:.2f}" if normalize else "")
            ax.text(j, i, txt, ha="center", va="center", fontsize=10, color="white" if level[i, j] > cut else "black")
    fig.tight_layout()
    return save_figure(fig, path)
