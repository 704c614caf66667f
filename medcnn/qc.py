"""QC pictures: slices of a scan with a label map or heat map overlaid, as RGB arrays / PNG files.

Volumes are shown in anatomical planes (axial, coronal, sagittal; neurological convention) after
reorienting to RAS, with the physical aspect ratio of the voxels, so anisotropic and oblique
inputs look right. Label colours follow the BraTS convention (NCR red, ED green, ET yellow).

Privacy: QC pictures hold image pixels only. No text (patient name, ID, dates, file names) is drawn
on them and the PNG files carry no metadata chunks, so nothing from a DICOM header can reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def volume_montage(
    image,
    affine: np.ndarray | None = None,
    label=None,
    heat=None,
    center: Sequence[int] | None = None,
    size: int = 256,
) -> np.ndarray:
    """Axial, coronal and sagittal slices side by side.

    Args:
        image: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` volume (the first channel is shown).
        affine: its ``(4, 4)`` RAS affine; the volume is reoriented to RAS for display.
        label: optional ``(X, Y, Z)`` label map on the same grid.
        heat: optional ``(X, Y, Z)`` heat map on the same grid (any range; scaled to [0, 1]).
        center: voxel to slice through; default: :func:`label_slices` of the label, else the volume centre.
        size: height in pixels of each panel.

    Returns:
        ``(size, W, 3)`` uint8 RGB montage.
    """
    vol = _to_numpy(image).astype(np.float32)
    if vol.ndim == 4:
        vol = vol[0]
    lab = None if label is None else _to_numpy(label).reshape(vol.shape[-3:]) if _to_numpy(label).size == vol.size else _to_numpy(label)[0]
    hm = None if heat is None else _to_numpy(heat).astype(np.float32).reshape(vol.shape)
    aff = np.eye(4) if affine is None else np.asarray(_to_numpy(affine), dtype=np.float64)
    stack = [vol] + ([lab.astype(np.float32)] if lab is not None else []) + ([hm] if hm is not None else [])
    t = torch.from_numpy(np.stack(stack))
    ras_aff, ras_shape = geometry.reorient_affine(aff, vol.shape, "RAS")
    t = geometry.resample(t, np.linalg.inv(aff) @ ras_aff, ras_shape, mode="nearest")
    vol = t[0].numpy()
    lab = t[1].numpy().astype(np.int64) if lab is not None else None
    hm = t[-1].numpy() if hm is not None else None
    if hm is not None:
        lo, hi = float(np.percentile(hm, 1)), float(np.percentile(hm, 99.9))
        hm = np.clip((hm - lo) / max(hi - lo, 1e-8), 0, 1)
    sp = geometry.voxel_spacing(ras_aff)
    g = window(vol)
    if center is None:
        center = label_slices(lab) if lab is not None and (lab > 0).any() else [s // 2 for s in vol.shape]
    cx, cy, cz = (int(np.clip(c, 0, s - 1)) for c, s in zip(center, vol.shape))
    panels = []
    # RAS axes shown with +x to the right and +y/+z up: neurological convention (patient's right on the right)
    planes = [
        (lambda a: a[:, :, cz], (sp[0], sp[1])),
        (lambda a: a[:, cy, :], (sp[0], sp[2])),
        (lambda a: a[cx, :, :], (sp[1], sp[2])),
    ]
    for i, (take, (s_row, s_col)) in enumerate(planes):
        gs = take(g)
        if min(gs.shape) < 2 and (panels or i + 1 < len(planes)):
            continue  # a single-slice volume has only one informative plane (a 1-voxel one still gets a panel)
        ls = take(lab) if lab is not None else None
        hs = take(hm) if hm is not None else None
        # arrays are (first axis, second axis); display with second axis up: transpose + flip
        def disp(a):
            return None if a is None else np.flipud(a.T)

        rgb = overlay(disp(gs), disp(ls), disp(hs))
        h_mm, w_mm = gs.shape[1] * s_col, gs.shape[0] * s_row
        w = int(np.clip(round(size * w_mm / max(h_mm, 1e-6)), 8, 4 * size))
        panels.append(_resize(rgb, size, w))
    gap = np.zeros((size, 4, 3), dtype=np.uint8)
    out = panels[0]
    for p in panels[1:]:
        out = np.concatenate([out, gap, p], axis=1)
    return out


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
