"""Inference engine: sliding-window inference, test-time augmentation, post-processing.

* :func:`sliding_window_inference` -- drop-in for MONAI's, fp32-exact, optional bf16/fp16.
* :func:`flip_tta` / :func:`mirror_predictor` -- nnU-Net-style mirroring test-time augmentation.
* :mod:`medcnn.inference.postprocess` -- connected components and BraTS nested regions.
"""

from __future__ import annotations

from medcnn.inference.postprocess import (
    enforce_nested_regions,
    keep_largest_component,
    labels_to_regions,
    regions_to_labels,
    relabel_small_regions,
    remove_small_components,
)
from medcnn.inference.sliding_window import (
    Precision,
    cpu_has_native_bf16,
    resolve_precision,
    sliding_window_inference,
)
from medcnn.inference.tta import flip_tta, mirror_predictor

__all__ = [
    "Precision",
    "cpu_has_native_bf16",
    "enforce_nested_regions",
    "flip_tta",
    "keep_largest_component",
    "labels_to_regions",
    "mirror_predictor",
    "regions_to_labels",
    "relabel_small_regions",
    "remove_small_components",
    "resolve_precision",
    "sliding_window_inference",
]
