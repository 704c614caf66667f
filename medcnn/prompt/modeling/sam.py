"""The SAM model: image encoder + prompt encoder + mask decoder, and its size presets.

``Sam(image_encoder, prompt_encoder, mask_decoder)`` has exactly the state_dict layout of
``segment_anything.modeling.Sam`` (``pixel_mean``/``pixel_std`` are non-persistent buffers, as
there), so SAM and MedSAM checkpoints load into it with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from medcnn.prompt.modeling.image_encoder import ImageEncoderViT
from medcnn.prompt.modeling.mask_decoder import MaskDecoder, TwoWayTransformer
from medcnn.prompt.modeling.prompt_encoder import PromptEncoder

__all__ = ["SAM_PRESETS", "Sam", "SamConfig", "build_sam"]


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a SAM model (defaults: ViT-B, the MedSAM size).

    Attributes:
        img_size: encoder input side.
        patch_size: ViT patch side.
        in_chans: image channels.
        encoder_embed_dim: ViT token features.
        encoder_depth: ViT blocks.
        encoder_num_heads: ViT attention heads.
        encoder_global_attn_indexes: blocks with global attention.
        window_size: window side of the other blocks.
        mlp_ratio: ViT MLP hidden features over ``encoder_embed_dim``.
        prompt_embed_dim: features of the image embedding, prompt tokens and decoder.
        mask_in_chans: hidden channels of the mask-prompt downscaling.
        decoder_depth: two-way transformer blocks.
        decoder_num_heads: decoder attention heads.
        decoder_mlp_dim: hidden features of the decoder token MLPs.
        num_multimask_outputs: ambiguity-aware masks.
        iou_head_depth: linear layers of the IoU head.
        iou_head_hidden_dim: hidden features of the IoU head.
        pixel_mean: per-channel mean of SAM's own preprocessing (unused by MedSAM's).
        pixel_std: per-channel std of SAM's own preprocessing (unused by MedSAM's).
    """

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = field(default=(123.675, 116.28, 103.53))
    pixel_std: tuple[float, float, float] = field(default=(58.395, 57.12, 57.375))

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 / 16)."""
        return self.img_size // self.patch_size


SAM_PRESETS: dict[str, SamConfig] = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)
    ),
}


class Sam(nn.Module):
    """Segment Anything model.

    Args:
        image_encoder: image -> embedding ``(B, C, He, We)``.
        prompt_encoder: points/boxes/masks -> sparse and dense embeddings.
        mask_decoder: embeddings -> low-resolution mask logits and IoU predictions.
        pixel_mean: per-channel mean for :meth:`preprocess` (SAM's RGB ImageNet statistics x 255).
        pixel_std: per-channel std for :meth:`preprocess`.
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def img_size(self) -> int:
        """Side of the (square) encoder input."""
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """SAM's (not MedSAM's) normalisation: ``(B, 3, h, w)`` in [0, 255] with ``max(h, w) ==
        img_size`` -> standardised and zero-padded to ``(B, 3, img_size, img_size)``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, img_size, img_size)`` preprocessed images -> ``(B, C, He, We)`` embeddings."""
        return self.image_encoder(image)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        *,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder.

        Args:
            image_embeddings: ``(1, C, He, We)`` embedding of one image.
            points: ``(coords (B, N, 2), labels (B, N))`` with ``(x, y)`` in encoder-input pixels.
            boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in encoder-input pixels.
            mask_input: ``(B, 1, 4 He, 4 We)`` low-resolution mask logits.
            multimask_output: the 3 ambiguity-aware masks instead of the single one.

        Returns:
            low-resolution logits ``(B, M, 4 He, 4 We)`` and IoU predictions ``(B, M)``.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


def build_sam(config: SamConfig | str = "vit_b", **overrides: object) -> Sam:
    """Build an untrained :class:`Sam`.

    Args:
        config: a :class:`SamConfig` or a preset name (``vit_b``, ``vit_l``, ``vit_h``).
        **overrides: :class:`SamConfig` fields to change (e.g. ``encoder_depth=2`` for tests).

    Returns:
        the model (random weights, float32, CPU, train mode).

    Raises:
        ValueError: unknown preset or field name.
    """
    if isinstance(config, str):
        if config not in SAM_PRESETS:
            raise ValueError(f"unknown SAM preset {config!r}; valid: {', '.join(SAM_PRESETS)}")
        config = SAM_PRESETS[config]
    valid = set(SamConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown SamConfig field(s) {unknown}; valid: {', '.join(sorted(valid))}")
    config = replace(config, **overrides)  # type: ignore[arg-type]
    side = config.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            window_size=config.window_size,
            global_attn_indexes=config.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )
