"""Radiograph reading, image statistics for the OOD flag and QC panels of the chest X-ray pipeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.errors import InputError
from medcnn.inference import ood
from medcnn.io import load

#: an RGB input whose mean chroma (over its dynamic range) exceeds this is a colour image, not a radiograph
MAX_CHROMA = 0.02
#: ``img.meta`` key of the hard OOD reasons found while loading (DICOM tags, colour)
OOD_REASONS = "medcnn_ood_reasons"


def load_radiograph(path: str | Path, series: str | None = None) -> Any:
    """A ``(1, H, W)`` grey-level radiograph (RGB exports averaged), its hard OOD reasons in ``meta[OOD_REASONS]``.

    Raises:
        InputError: not a 2D grey-level image, smaller than 32 pixels, or constant.
    """
    img = load(path, series=series)
    if img.ndim != 3:
        raise InputError(path, f"expected a 2D radiograph, got a {img.ndim - 1}D image")
    reasons = ood.dicom_reasons(path, modalities=ood.RADIOGRAPH_MODALITIES, body_parts=("CHEST", "THORAX"))
    if img.shape[0] in (3, 4):
        chroma = ood.colourfulness(img[:3])
        if chroma > MAX_CHROMA:
            reasons.append(f"an RGB image with colour (chroma {chroma:.3f}), not a grey-level radiograph")
    if img.shape[0] == 3:  # RGB export of a radiograph: grey levels
        img = img.mean(0, keepdim=True)
    elif img.shape[0] != 1:
        raise InputError(path, f"expected a grey-level radiograph, got {img.shape[0]} channels")
    if min(img.shape[1:]) < 32:
        raise InputError(path, f"image of {img.shape[1]}x{img.shape[2]} pixels is too small for a radiograph")
    if float(img.max()) == float(img.min()):  # blank export / failed acquisition: nothing to read
        raise InputError(path, f"constant image (every pixel {float(img.min()):g}): not a radiograph")
    img.meta[OOD_REASONS] = reasons
    return img


def radiograph_stats(img: Any, lungs: np.ndarray, heart: np.ndarray) -> dict[str, float]:
    """Image statistics of a radiograph for the OOD flag.

    Args:
        img: ``(1, H, W)`` the loaded radiograph.
        lungs: ``(H, W)`` bool lung mask; heart: the same for the heart.

    Returns:
        Intensity quantiles after min-max normalisation (the findings model's), the fractions of near-black
        and near-white pixels, ``log(rows / cols)``, the left-right mirror correlation and mean gradient of a
        128 x 128 copy, the lung and heart area fractions and the left/right lung balance.
    """
    import torch

    a = np.asarray(img[0], dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    small = torch.nn.functional.interpolate(torch.as_tensor(a)[None, None], size=(128, 128), mode="area")[0, 0].numpy()
    stats = ood.quantiles(small, (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99), "")
    stats["dark_frac"] = float((small < 0.05).mean())
    stats["bright_frac"] = float((small > 0.95).mean())
    stats["log_aspect"] = math.log(a.shape[0] / a.shape[1])
    mirror = np.corrcoef(small.ravel(), small[:, ::-1].ravel())[0, 1]
    stats["mirror_corr"] = float(np.nan_to_num(mirror))
    gy, gx = np.gradient(small)
    stats["gradient"] = float(np.hypot(gx, gy).mean())
    stats["lung_frac"] = float(lungs.mean())
    stats["heart_frac"] = float(heart.mean())
    half = lungs.shape[1] // 2
    left, right = float(lungs[:, :half].sum()), float(lungs[:, half:].sum())
    stats["lung_balance"] = abs(left - right) / (left + right) if left + right else 1.0
    return stats


def caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture with ``text`` written in its top-left corner (white on black)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 7 * len(text), 16], fill=(0, 0, 0))
    d.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(im)


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """``(H, W, 3)`` panels of any heights in one row, 4 black pixels apart (padded below to the tallest)."""
    height = max(p.shape[0] for p in panels)
    return np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels], axis=1)
