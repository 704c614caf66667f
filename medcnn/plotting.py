"""Plots drawn with Pillow (training curves, ROC curves, confusion matrices): no matplotlib dependency.

Every figure is written atomically as PNG."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medcnn.io.atomic import atomic_path

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, Sequence[float], Any]

#: line colours (the "tab10" palette), cycled
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * step:
        if t >= lo - 1e-9 * step:
            ticks.append(round(t, 10))
        t += step
    return ticks or [lo, hi]


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
    """Draw one or more panels of line series side by side and write a PNG atomically.

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
    font = _font(11)
    w, h = size
    img = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 58, 14, 26, 40
    for p, series in enumerate(panels):
        ox = p * w
        xs_all = np.concatenate([np.asarray(v[0], float) for v in series.values()]) if series else np.array([0.0, 1.0])
        ys_all = np.concatenate([np.asarray(v[1], float) for v in series.values()]) if series else np.array([0.0, 1.0])
        fin_x, fin_y = xs_all[np.isfinite(xs_all)], ys_all[np.isfinite(ys_all)]
        lim = limits[p] if limits is not None and limits[p] is not None else None
        x0, x1 = (lim[0], lim[1]) if lim else ((float(fin_x.min()), float(fin_x.max())) if fin_x.size else (0.0, 1.0))
        y0, y1 = (lim[2], lim[3]) if lim else ((float(fin_y.min()), float(fin_y.max())) if fin_y.size else (0.0, 1.0))
        if x1 <= x0:
            x1 = x0 + 1.0
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        pad = 0.0 if lim else 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad
        px0, px1, py0, py1 = ox + left, ox + w - right, h - bottom, top

        def tx(x: float) -> float:
            return px0 + (x - x0) / (x1 - x0) * (px1 - px0)

        def ty(y: float) -> float:
            return py0 + (y - y0) / (y1 - y0) * (py1 - py0)

        draw.rectangle([px0, py1, px1, py0], outline=(0, 0, 0))
        for t in _nice_ticks(x0, x1):
            draw.line([tx(t), py0, tx(t), py0 + 4], fill=(0, 0, 0))
            draw.text((tx(t) - 10, py0 + 6), f"{t:g}", fill=(0, 0, 0), font=font)
        for t in _nice_ticks(y0, y1):
            draw.line([px0 - 4, ty(t), px0, ty(t)], fill=(0, 0, 0))
            draw.line([px0, ty(t), px1, ty(t)], fill=(232, 232, 232))
            draw.text((ox + 4, ty(t) - 6), f"{t:.4g}", fill=(0, 0, 0), font=font)
        if diagonal is not None and diagonal[p]:
            draw.line([tx(max(x0, y0)), ty(max(x0, y0)), tx(min(x1, y1)), ty(min(x1, y1))], fill=(160, 160, 160))
        for i, (name, (xs, ys)) in enumerate(series.items()):
            col = PALETTE[i % len(PALETTE)]
            pts: list[tuple[float, float]] = []
            for x, y in zip(np.asarray(xs, float), np.asarray(ys, float)):
                if math.isfinite(x) and math.isfinite(y):
                    pts.append((tx(x), ty(y)))
                else:
                    if len(pts) > 1:
                        draw.line(pts, fill=col, width=2)
                    pts = []
            if len(pts) > 1:
                draw.line(pts, fill=col, width=2)
            elif len(pts) == 1:
                draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=col)
            draw.text((px0 + 8, py1 + 6 + 12 * i), name, fill=col, font=font)
        if titles:
            draw.text((px0, 6), titles[p], fill=(0, 0, 0), font=font)
        if xlabel:
            draw.text(((px0 + px1) / 2 - 3 * len(xlabel), h - 16), xlabel, fill=(0, 0, 0), font=font)
        if ylabels:
            draw.text((px1 - 6 * len(ylabels[p]), py1 - 14), ylabels[p], fill=(90, 90, 90), font=font)
    return _save_png(img, path)


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


# ------------------------------------------------------------------------- ROC and confusion


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


def _canvas(w: int, h: int) -> tuple[Image.Image, ImageDraw.ImageDraw, float, Any, Any, int, int]:
    """White ``w x h`` image with fonts and spacing scaled to its size (``scale`` = 1 at 640 px).

    Returns:
        ``(img, draw, scale, font, title_font, pad, text_height)``.
    """
    scale = min(w, h) / 640.0
    font = _font(max(10, round(13 * scale)))
    title_font = _font(max(11, round(16 * scale)))
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    pad = max(4, round(6 * scale))
    return img, draw, scale, font, title_font, pad, _text_size(draw, "Ag", font)[1]


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
        fpr, tpr = as_float_array(item[0], f"{name} fpr"), as_float_array(item[1], f"{name} tpr")
        if fpr.shape != tpr.shape or fpr.size == 0:
            raise ValueError(f"curve {name!r}: fpr and tpr must be non-empty and of equal length")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise ValueError(f"curve {name!r} has NaN/Inf points (only one class in its labels?)")
        checked.append((str(name), np.clip(fpr, 0, 1), np.clip(tpr, 0, 1), float(item[2])))

    img, draw, scale, font, title_font, pad, text_h = _canvas(w, h)
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
    m = as_float_array(cm, "cm", 2)
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

    img, draw, scale, font, title_font, pad, text_h = _canvas(w, h)
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
