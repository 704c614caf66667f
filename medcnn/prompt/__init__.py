"""Promptable segmentation (MedSAM-style): box/point prompts on 2D images.

::

    from medcnn.prompt import PromptableSegmenter, load_medsam
    seg = PromptableSegmenter.from_pretrained("medsam_vit_b.pth")   # official MedSAM ViT-B
    seg.set_image(img)                                              # (C, H, W)
    mask = seg.predict(box=(i0, j0, i1, j1))                        # (H, W) bool

``medcnn.prompt.modeling`` holds the SAM architecture (state_dict-compatible with
``segment_anything``); ``medcnn.prompt.medsam`` the checkpoint loader and MedSAM's reference
preprocessing/inference.
"""

from __future__ import annotations

from medcnn.prompt.medsam import MedSAMBackend, infer_sam_config, load_medsam, medsam_preprocess
from medcnn.prompt.modeling import Sam, SamConfig, build_sam
from medcnn.prompt.segmenter import BUNDLED_MODELS, PromptableSegmenter, PromptBackend

__all__ = [
    "BUNDLED_MODELS", "MedSAMBackend", "PromptBackend", "PromptableSegmenter", "Sam", "SamConfig", "build_sam",
    "infer_sam_config", "load_medsam", "medsam_preprocess",
]
