"""SAM / MedSAM architecture written for medcnn (state_dict layout of ``segment_anything``).

``build_sam("vit_b")`` gives an untrained ViT-B SAM; ``medcnn.prompt.medsam.load_medsam`` loads
an official MedSAM/SAM checkpoint into it.
"""

from __future__ import annotations

from medcnn.prompt.modeling.image_encoder import ImageEncoderViT, LayerNorm2d, MLPBlock
from medcnn.prompt.modeling.mask_decoder import MLP, MaskDecoder, TwoWayTransformer
from medcnn.prompt.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from medcnn.prompt.modeling.sam import SAM_PRESETS, Sam, SamConfig, build_sam

__all__ = [
    "MLP", "SAM_PRESETS", "ImageEncoderViT", "LayerNorm2d", "MLPBlock", "MaskDecoder", "PositionEmbeddingRandom",
    "PromptEncoder", "Sam", "SamConfig", "TwoWayTransformer", "build_sam",
]
