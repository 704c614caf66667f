"""SAM's prompt encoder (Kirillov et al. 2023), written for medcnn.

Sparse prompts (points, box corners) become tokens: a random Fourier feature encoding of the
normalised position plus a learned embedding of the prompt's kind (negative point, positive
point, top-left corner, bottom-right corner, or "not a point" padding). A dense prompt (a
low-resolution mask) is downscaled 4x by a small convnet to the image-embedding grid; without
one a learned "no mask" embedding fills that grid.

Coordinates follow SAM: ``(x, y)`` = (column, row) in pixels of the encoder's input image
(e.g. 1024x1024); a pixel's centre is at ``+0.5``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medcnn.prompt.modeling.image_encoder import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Tancik et al. 2020).

    ``pe(x, y) = [sin(2 pi G^T u), cos(2 pi G^T u)]`` with ``u = 2 * (x, y) / size - 1`` and a
    fixed Gaussian matrix ``G`` of shape ``(2, num_pos_feats)`` (a buffer saved in checkpoints).

    Args:
        num_pos_feats: frequencies; the encoding has ``2 * num_pos_feats`` features.
        scale: standard deviation of ``G`` (1 when ``None`` or not positive).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] -> ``(..., 2 * num_pos_feats)``."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an ``(H, W)`` grid: returns ``(2 * num_pos_feats, H, W)``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        x = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)  # (H, W, 2)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encoding of points.

        Args:
            coords: ``(B, N, 2)`` pixel coordinates ``(x, y)`` (not modified).
            image_size: ``(H, W)`` of the image the coordinates refer to.

        Returns:
            ``(B, N, 2 * num_pos_feats)``.
        """
        scale = torch.tensor([image_size[1], image_size[0]], dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder(nn.Module):
    """Encodes points, boxes and masks for the mask decoder.

    Args:
        embed_dim: prompt token features (256).
        image_embedding_size: ``(H, W)`` of the image embedding (64x64 for a 1024 input).
        input_image_size: ``(H, W)`` of the encoder's input image (1024x1024).
        mask_in_chans: hidden channels of the mask downscaling convnet (16).
        activation: activation class of the mask downscaling convnet.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left corner, 3: box bottom-right corner
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: ``(1, embed_dim, H, W)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)`` points, ``(B, N)`` labels (1 pos, 0 neg, -1 padding) -> ``(B, N [+1], C)``."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        emb = emb + torch.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        emb = emb + torch.where(labels == 1, self.point_embeddings[1].weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` or ``(B, 1, 4)`` boxes ``(x0, y0, x1, y1)`` -> ``(B, 2, C)`` corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_kind = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corner_kind

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, masks: torch.Tensor | None
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords (B, N, 2), labels (B, N))`` or ``None``; coordinates ``(x, y)`` in
                input-image pixels, labels 1 (foreground) / 0 (background).
            boxes: ``(B, 4)`` or ``(B, 1, 4)`` boxes ``(x0, y0, x1, y1)`` or ``None``.
            masks: ``(B, 1, 4 * He, 4 * We)`` low-resolution mask logits or ``None``.

        Returns:
            sparse ``(B, N_tokens, embed_dim)`` and dense ``(B, embed_dim, He, We)`` embeddings.
        """
        bs = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        sparse = torch.empty((bs, 0, self.embed_dim), dtype=weight.dtype, device=weight.device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            he, we = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, he, we)
        return sparse, dense
