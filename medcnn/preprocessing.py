"""Old import path of the model-grid preprocessing; it lives in :mod:`medcnn.transforms.model_grid`."""

from __future__ import annotations

from medcnn.transforms.model_grid import (
    CT_WINDOWS,
    crop,
    foreground_box,
    load_for_model,
    normalize,
    pad_or_crop_to,
    prepare,
    restore_to_box,
    square_resize,
    square_restore,
    uncrop,
)

__all__ = [
    "CT_WINDOWS", "crop", "foreground_box", "load_for_model", "normalize", "pad_or_crop_to", "prepare",
    "restore_to_box", "square_resize", "square_restore", "uncrop",
]
