"""Small line plots drawn with Pillow (training curves, ROC curves), so matplotlib is not needed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medcnn.io.atomic import atomic_path

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
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
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
