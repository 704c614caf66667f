"""QC pictures: slices of a scan with a label map or heat map overlaid, as RGB arrays / PNG files.

Volumes are shown in anatomical planes (axial, coronal, sagittal) after reorienting to RAS, with the
physical aspect ratio of the voxels, so anisotropic and oblique inputs look right, in the radiological
convention by default (patient's left on the image's right, as radiologists read CT/MR and chest films;
``convention="neurological"`` mirrors it). :func:`volume_figure` / :func:`image_figure` (matplotlib) add
the side markers (R/L, A/P, S/I, from the affine), a legend of the label colours, the case id with the
case's figures, and the prompt box. Label colours follow the BraTS convention (NCR red, ED green, ET yellow).

Privacy: the only text on a QC picture is the case id (from file and folder names, as in summary.csv),
the case's computed figures and the markers; nothing from a DICOM header (patient name, ID, dates) is
drawn, and the PNG files carry no metadata chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn.io import geometry
from medcnn.io.atomic import atomic_path

#: RGB colours for label values 1, 2, 3, ... (cycled)
LABEL_COLOURS = np.array(
    [[230, 40, 40], [40, 200, 60], [250, 220, 40], [60, 120, 250], [230, 60, 230], [40, 220, 220]], dtype=np.float32
)


def label_colour(value: int) -> tuple[int, int, int]:
    """RGB (0..255) of label ``value`` >= 1 in the QC pictures, the label tables and ``.seg.nrrd`` files."""
    r, g, b = LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]
    return int(r), int(g), int(b)


def label_table(names: dict[int, str]) -> dict:
    """A colour table of a label map: ``{"background": 0, "labels": [{"value", "name", "color", "color_hex"}]}``.

    Args:
        names: label value (>= 1) -> name, e.g. ``{1: "NCR", 2: "ED", 3: "ET"}``.
    """
    rows = []
    for value in sorted(int(v) for v in names):
        rgb = label_colour(value)
        rows.append({"value": value, "name": str(names[value] if value in names else names[str(value)]),
                     "color": list(rgb), "color_hex": "#{:02x}{:02x}{:02x}".format(*rgb)})
    return {"background": 0, "labels": rows}


def write_label_table(path: str | Path, names: dict[int, str]) -> Path:
    """Write :func:`label_table` as JSON (atomically), e.g. ``OUT/labels.json`` beside the label maps."""
    import json

    from medcnn.io.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(label_table(names), indent=2) + "\n")
    return path


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if torch.is_floating_point(x) else x.detach().cpu().numpy()
    return np.asarray(x)


def window(img: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] between robust percentiles of the non-zero voxels. Same shape as ``img``."""
    vals = img[img != 0] if (img != 0).any() else img.ravel()
    lo, hi = np.percentile(vals, [lo_pct, hi_pct]) if vals.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def overlay(
    grey: np.ndarray, label: np.ndarray | None = None, heat: np.ndarray | None = None, alpha: float = 0.45
) -> np.ndarray:
    """Blend a [0, 1] grey slice with a label map and/or a [0, 1] heat map.

    Args:
        grey: ``(H, W)`` floats in [0, 1].
        label: ``(H, W)`` integer labels (0 = background) or ``None``.
        heat: ``(H, W)`` floats in [0, 1] (e.g. saliency) or ``None``.
        alpha: opacity of the overlay.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32) * 255.0
    if heat is not None:
        h = np.clip(heat, 0, 1)[..., None]
        hot = np.concatenate([np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], -1) * 255.0
        rgb = rgb * (1 - alpha * h) + hot * (alpha * h)
    if label is not None:
        lab = label.astype(np.int64)
        fg = lab > 0
        if fg.any():
            col = LABEL_COLOURS[(lab[fg] - 1) % len(LABEL_COLOURS)]
            rgb[fg] = rgb[fg] * (1 - alpha) + col * alpha
            # outline for visibility
            edge = fg & ~(np.roll(fg, 1, 0) & np.roll(fg, -1, 0) & np.roll(fg, 1, 1) & np.roll(fg, -1, 1))
            rgb[edge] = LABEL_COLOURS[(lab[edge] - 1) % len(LABEL_COLOURS)]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _resize(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((max(1, w), max(1, h)), Image.Resampling.BILINEAR))


def label_slices(label: np.ndarray) -> list[int]:
    """For each axis of a 3D label map, the slice showing the most label values, then the most labelled voxels.

    The centroid of all labels (the earlier choice) can miss a small inner region: a tumour whose
    8 mL core sits off the centre of 113 mL of oedema was shown through the oedema only.

    Args:
        label: ``(X, Y, Z)`` integer label map with at least one non-zero voxel.

    Returns:
        ``[x, y, z]`` slice indices (each chosen on its own; the panels are independent).
    """
    lab = np.asarray(label).astype(np.int64, copy=False)
    coords = np.nonzero(lab > 0)
    values = lab[coords]
    _, code = np.unique(values, return_inverse=True)  # labels renumbered 0..V-1
    n_values = int(code.max()) + 1
    out = []
    for ax, n in enumerate(lab.shape):
        pairs = np.unique(coords[ax].astype(np.int64) * n_values + code.reshape(-1))
        distinct = np.bincount(pairs // n_values, minlength=n)  # label values present in each slice
        area = np.bincount(coords[ax], minlength=n)
        out.append(int(np.argmax(distinct * (len(values) + 1) + area)))
    return out


#: display conventions of volume pictures: radiological (patient's left on the image's right, as a radiologist
#: reads) or neurological (patient's left on the image's left)
CONVENTIONS: tuple[str, ...] = ("radiological", "neurological")


@dataclass
class Panel:
    """One displayed slice: arrays ``(H, W)`` as shown (rows down), pixel size and the edge markers.

    Attributes:
        grey: ``(H, W)`` floats in [0, 1].
        label: ``(H, W)`` integer labels or ``None``; heat: ``(H, W)`` in [0, 1] or ``None``.
        box: ``(H, W)`` bool prompt box (filled) or ``None``.
        pixel_mm: ``(height, width)`` of a pixel in mm (the aspect ratio shown).
        markers: letters at the ``(left, right, top, bottom)`` edges, e.g. ``("R", "L", "A", "P")``.
    """

    grey: np.ndarray
    label: np.ndarray | None
    heat: np.ndarray | None
    box: np.ndarray | None
    pixel_mm: tuple[float, float]
    markers: tuple[str, str, str, str]


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")


def volume_panels(
    image,
    affine: np.ndarray | None = None,
    label=None,
    heat=None,
    center: Sequence[int] | None = None,
    convention: str = "radiological",
    box: Sequence[float] | None = None,
    value_range: tuple[float, float] | None = None,
) -> list[Panel]:
    """Axial, coronal and sagittal slices of a volume, reoriented to RAS, in a display convention.

    Args:
        image: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` volume (the first channel is shown).
        affine: its ``(4, 4)`` RAS affine (the markers come from it); identity if ``None``.
        label: optional ``(X, Y, Z)`` label map on the same grid; heat: optional heat map (any range).
        center: voxel to slice through; default: :func:`label_slices` of the label, else the volume centre.
        convention: ``"radiological"`` (default: patient's right on the image's left; sagittal anterior on the
            left, as PACS and 3D Slicer show it) or ``"neurological"`` (patient's right on the right).
        box: optional ``(i0, j0, k0, i1, j1, k1)`` prompt box in the volume's voxel indices (max exclusive).
        value_range: ``(low, high)`` shown black to white (e.g. a CT window in HU); default: the 0.5-99.5
            percentiles of the non-zero voxels.

    Returns:
        The informative panels (a single-slice volume has one).
    """
    _check_convention(convention)
    vol = _to_numpy(image).astype(np.float32)
    if vol.ndim == 4:
        vol = vol[0]
    lab = None if label is None else _to_numpy(label).reshape(vol.shape[-3:]) if _to_numpy(label).size == vol.size else _to_numpy(label)[0]
    hm = None if heat is None else _to_numpy(heat).astype(np.float32).reshape(vol.shape)
    bx = None
    if box is not None:
        b = [int(round(float(v))) for v in box]
        bx = np.zeros(vol.shape, dtype=np.float32)
        bx[b[0]:b[3], b[1]:b[4], b[2]:b[5]] = 1.0
    aff = np.eye(4) if affine is None else np.asarray(_to_numpy(affine), dtype=np.float64)
    extra = [a for a in (lab, hm, bx) if a is not None]
    t = torch.from_numpy(np.stack([vol] + [a.astype(np.float32) for a in extra]))
    ras_aff, ras_shape = geometry.reorient_affine(aff, vol.shape, "RAS")
    t = geometry.resample(t, np.linalg.inv(aff) @ ras_aff, ras_shape, mode="nearest")
    vol = t[0].numpy()
    k = 1
    if lab is not None:
        lab, k = t[k].numpy().astype(np.int64), k + 1
    if hm is not None:
        hm, k = t[k].numpy(), k + 1
        lo, hi = float(np.percentile(hm, 1)), float(np.percentile(hm, 99.9))
        hm = np.clip((hm - lo) / max(hi - lo, 1e-8), 0, 1)
    if bx is not None:
        bx = t[k].numpy() > 0.5
    sp = geometry.voxel_spacing(ras_aff)
    g = window(vol) if value_range is None else np.clip((vol - value_range[0]) / max(value_range[1] - value_range[0], 1e-8), 0.0, 1.0)
    if center is None:
        if lab is not None and (lab > 0).any():
            center = label_slices(lab)
        elif bx is not None and bx.any():
            center = [int(np.mean(np.nonzero(bx.any(axis=tuple(a for a in range(3) if a != ax)))[0])) for ax in range(3)]
        else:
            center = [s // 2 for s in vol.shape]
    cx, cy, cz = (int(np.clip(c, 0, s - 1)) for c, s in zip(center, vol.shape))
    radio = convention == "radiological"
    # (slice, (first-axis mm, second-axis mm), markers (left, right, top, bottom) in the neurological layout)
    planes = [
        (lambda a: a[:, :, cz], (sp[0], sp[1]), ("L", "R", "A", "P")),
        (lambda a: a[:, cy, :], (sp[0], sp[2]), ("L", "R", "S", "I")),
        (lambda a: a[cx, :, :], (sp[1], sp[2]), ("P", "A", "S", "I")),
    ]
    panels: list[Panel] = []
    for i, (take, (s_first, s_second), marks) in enumerate(planes):
        gs = take(g)
        if min(gs.shape) < 2 and (panels or i + 1 < len(planes)):
            continue  # a single-slice volume has only one informative plane (a 1-voxel one still gets a panel)

        def disp(a, take=take):
            # RAS slice (first axis, second axis) -> rows = second axis upwards, cols = first axis rightwards;
            # radiological: mirror left-right (every panel shows the patient as if facing the viewer / from the left)
            if a is None:
                return None
            out = np.flipud(take(a).T)
            return np.fliplr(out) if radio else out

        left, right, top, bottom = marks
        if radio:
            left, right = right, left
        panels.append(Panel(disp(g), disp(lab), disp(hm), disp(bx), (float(s_second), float(s_first)),
                            (left, right, top, bottom)))
    return panels


def volume_montage(
    image,
    affine: np.ndarray | None = None,
    label=None,
    heat=None,
    center: Sequence[int] | None = None,
    size: int = 256,
    convention: str = "radiological",
) -> np.ndarray:
    """Axial, coronal and sagittal slices side by side, without text (see :func:`volume_figure` for a labelled one).

    Args:
        image: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` volume (the first channel is shown).
        affine: its ``(4, 4)`` RAS affine; the volume is reoriented to RAS for display.
        label: optional ``(X, Y, Z)`` label map on the same grid.
        heat: optional ``(X, Y, Z)`` heat map on the same grid (any range; scaled to [0, 1]).
        center: voxel to slice through; default: :func:`label_slices` of the label, else the volume centre.
        size: height in pixels of each panel.
        convention: ``"radiological"`` (default) or ``"neurological"`` (see :func:`volume_panels`).

    Returns:
        ``(size, W, 3)`` uint8 RGB montage.
    """
    out = None
    gap = np.zeros((size, 4, 3), dtype=np.uint8)
    for p in volume_panels(image, affine, label, heat, center, convention):
        rgb = overlay(p.grey, p.label, p.heat)
        h_mm, w_mm = p.grey.shape[0] * p.pixel_mm[0], p.grey.shape[1] * p.pixel_mm[1]
        w = int(np.clip(round(size * w_mm / max(h_mm, 1e-6)), 8, 4 * size))
        rgb = _resize(rgb, size, w)
        out = rgb if out is None else np.concatenate([out, gap, rgb], axis=1)
    return out


def _figure_rgb(panels: list[Panel], title: str | None, legend: Mapping[int, str] | None, height_px: int = 300) -> np.ndarray:
    """Render panels with matplotlib (a Figure, no pyplot state): markers, prompt box outline, legend, title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ratios = [max(p.grey.shape[1] * p.pixel_mm[1], 1e-6) / max(p.grey.shape[0] * p.pixel_mm[0], 1e-6) for p in panels]
    ratios = [float(np.clip(r, 0.2, 5.0)) for r in ratios]
    dpi = 100
    top_in = 0.45 if title else 0.1
    bottom_in = 0.4 if legend else 0.1
    panel_in = height_px / dpi
    fig = Figure(figsize=(max(panel_in * sum(ratios) + 0.1 * len(panels), 3.0), panel_in + top_in + bottom_in),
                 dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": ratios, "wspace": 0.03}, squeeze=False)[0]
    fig.subplots_adjust(left=0.005, right=0.995, top=1 - top_in / fig.get_figheight(),
                        bottom=bottom_in / fig.get_figheight())
    txt = {"color": "yellow", "fontsize": 12, "fontweight": "bold"}
    for ax, p in zip(axes, panels):
        h, w = p.grey.shape
        ax.imshow(overlay(p.grey, p.label, p.heat), interpolation="nearest", aspect=p.pixel_mm[0] / p.pixel_mm[1],
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.set_axis_off()
        left, right, top, bottom = p.markers
        ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **txt)
        ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **txt)
        ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **txt)
        ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **txt)
        if p.box is not None and p.box.any():
            from matplotlib.patches import Rectangle

            rows, cols = np.nonzero(p.box.any(1))[0], np.nonzero(p.box.any(0))[0]
            ax.add_patch(Rectangle((cols[0] - 0.5, rows[0] - 0.5), cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1,
                                   fill=False, edgecolor="cyan", linewidth=1.5, linestyle="--"))
    if title:
        fig.suptitle(title, color="white", fontsize=11, y=1 - 0.08 / fig.get_figheight(), va="top")
    if legend:
        handles = [Patch(facecolor=np.asarray(label_colour(v)) / 255.0, edgecolor="white", label=f"{v} {name}")
                   for v, name in sorted(legend.items())]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
                   labelcolor="white", handlelength=1.2, borderaxespad=0.2)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def caption(case_id: str | None, figures: Mapping[str, Any] | None = None) -> str:
    """``"case  WT 12.3 mL  p(AD) 0.83"``: the case id and its figures as printed on a QC picture."""
    parts = [str(case_id)] if case_id else []
    for k, v in (figures or {}).items():
        parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return "   ".join(parts)


def volume_figure(
    image,
    affine: np.ndarray | None = None,
    label=None,
    heat=None,
    *,
    names: Mapping[int, str] | None = None,
    case_id: str | None = None,
    figures: Mapping[str, Any] | None = None,
    box: Sequence[float] | None = None,
    convention: str = "radiological",
    center: Sequence[int] | None = None,
    height_px: int = 300,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """A QC picture a radiologist reads: three planes with orientation markers, legend, case id and figures.

    Args:
        image, affine, label, heat, center, convention, box: as :func:`volume_panels`.
        names: label value -> name for the legend (default: the values present).
        case_id: printed at the top, with ``figures`` (e.g. ``{"WT mL": 12.3, "p(AD)": 0.83}``).
        height_px: height of the panels in pixels.
        value_range: ``(low, high)`` shown black to white (a CT window in HU); default: robust percentiles.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    panels = volume_panels(image, affine, label, heat, center, convention, box, value_range)
    legend = _legend(label, names)
    title = caption(case_id, figures)
    if title:
        title += f"   [{convention}]"
    return _figure_rgb(panels, title, legend, height_px)


def image_figure(
    image,
    label=None,
    heat=None,
    *,
    names: Mapping[int, str] | None = None,
    case_id: str | None = None,
    figures: Mapping[str, Any] | None = None,
    box: Sequence[float] | None = None,
    height_px: int = 400,
) -> np.ndarray:
    """A 2D image ``(C, H, W)``/``(H, W)`` as stored (a radiograph's own, radiological, layout) with legend, case
    id, figures and the prompt box ``(i0, j0, i1, j1)`` outlined. No side markers: a pixel array has no patient
    geometry to name them from."""
    img = _to_numpy(image).astype(np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] != 3 else img.mean(0)
    lab = None if label is None else _to_numpy(label).reshape(img.shape)
    hm = None if heat is None else _to_numpy(heat).astype(np.float32).reshape(img.shape)
    bx = None
    if box is not None:
        b = [int(round(float(v))) for v in box]
        bx = np.zeros(img.shape, dtype=bool)
        bx[b[0]:b[2], b[1]:b[3]] = True
    scale = min(1.0, 1024 / max(img.shape))
    panel = Panel(window(img, 0.1, 99.9), lab, hm, bx, (1.0, 1.0), ("", "", "", ""))
    if scale < 1:  # large films: draw at most 1024 pixels a side (labels nearest, box kept)
        step = int(np.ceil(1 / scale))
        panel = Panel(panel.grey[::step, ::step], None if lab is None else lab[::step, ::step],
                      None if hm is None else hm[::step, ::step], None if bx is None else bx[::step, ::step],
                      (1.0, 1.0), panel.markers)
    return _figure_rgb([panel], caption(case_id, figures) or None, _legend(label, names), height_px)


def _legend(label, names: Mapping[int, str] | None) -> dict[int, str] | None:
    """``{value: name}`` for the legend: the names given, else the label values present."""
    if names:
        return {int(k): str(v) for k, v in names.items()}
    if label is None:
        return None
    values = [int(v) for v in np.unique(_to_numpy(label)) if v > 0]
    return {v: f"label {v}" for v in values} or None


def image_overlay(image, label=None, heat=None, max_size: int = 512) -> np.ndarray:
    """A 2D image ``(C, H, W)`` or ``(H, W)`` with optional label / heat overlay, as ``(h, w, 3)`` uint8."""
    img = _to_numpy(image).astype(np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] != 3 else img.mean(0)
    lab = None if label is None else _to_numpy(label).reshape(img.shape)
    hm = None if heat is None else _to_numpy(heat).astype(np.float32).reshape(img.shape)
    rgb = overlay(window(img, 0.1, 99.9), lab, hm)
    scale = max_size / max(rgb.shape[:2])
    if scale < 1:
        rgb = _resize(rgb, int(rgb.shape[0] * scale), int(rgb.shape[1] * scale))
    return rgb


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
