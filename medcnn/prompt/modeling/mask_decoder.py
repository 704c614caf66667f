"""SAM's mask decoder (Kirillov et al. 2023), written for medcnn.

A two-way transformer lets output tokens (one IoU token, ``1 + num_multimask_outputs`` mask
tokens) and prompt tokens attend to the image embedding and the image embedding attend back to
the tokens. The image embedding is then upscaled 4x by transposed convolutions, and each mask
token, through its own 3-layer MLP ("hypernetwork"), gives the weights of a dot product with the
upscaled embedding: one low-resolution mask per token. A small MLP on the IoU token predicts
each mask's quality.

Parameter names follow the ``segment_anything`` state_dict layout (``transformer.layers.N``,
``transformer.final_attn_token_to_image``, ``iou_token``, ``mask_tokens``,
``output_upscaling``, ``output_hypernetworks_mlps``, ``iou_prediction_head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcnn.prompt.modeling.image_encoder import LayerNorm2d, MLPBlock

__all__ = ["MLP", "MaskDecoder", "TwoWayTransformer"]


class TokenAttention(nn.Module):
    """Multi-head attention with q/k/v projections to ``dim / downsample_rate`` features.

    Args:
        embedding_dim: input and output features.
        num_heads: attention heads.
        downsample_rate: reduction of the internal features.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"internal dim {self.internal_dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, heads, N, C / heads)``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of ``q (B, Nq, C)`` over ``k, v (B, Nk, C)``; returns ``(B, Nq, C)``."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """Tokens self-attend, attend to the image, pass an MLP; then the image attends to the tokens.

    Args:
        embedding_dim: features of tokens and image embedding.
        num_heads: attention heads.
        mlp_dim: hidden features of the token MLP.
        activation: activation class of the token MLP.
        attention_downsample_rate: feature reduction of the cross attentions.
        skip_first_layer_pe: the first self-attention sees the tokens without their positional
            encoding (and replaces them instead of adding a residual) -- SAM's first layer.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One two-way step.

        Args:
            queries: ``(B, Nt, C)`` tokens.
            keys: ``(B, Ni, C)`` flattened image embedding.
            query_pe: ``(B, Nt, C)`` token positional encodings (the original prompt tokens).
            key_pe: ``(B, Ni, C)`` image positional encodings.

        Returns:
            updated ``queries (B, Nt, C)`` and ``keys (B, Ni, C)``.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` and a final token-to-image attention.

    Args:
        depth: number of blocks (2).
        embedding_dim: features (256).
        num_heads: attention heads (8).
        mlp_dim: hidden features of the token MLPs (2048).
        activation: activation class of the token MLPs.
        attention_downsample_rate: feature reduction of the cross attentions (2).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer.

        Args:
            image_embedding: ``(B, C, H, W)``.
            image_pe: ``(B, C, H, W)`` positional encoding of the image grid.
            point_embedding: ``(B, Nt, C)`` output + prompt tokens.

        Returns:
            tokens ``(B, Nt, C)`` and image features ``(B, H * W, C)``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them.

    Args:
        input_dim: input features.
        hidden_dim: hidden features.
        output_dim: output features.
        num_layers: linear layers.
        sigmoid_output: apply a sigmoid to the output.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim)`` -> ``(..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding and prompt embeddings.

    Args:
        transformer_dim: features of the transformer (256).
        transformer: the :class:`TwoWayTransformer`.
        num_multimask_outputs: masks of the ambiguity-aware output (3); one more token gives
            the single-mask output.
        activation: activation class of the upscaling.
        iou_head_depth: linear layers of the IoU head (3).
        iou_head_hidden_dim: hidden features of the IoU head (256).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: ``(1, C, He, We)`` embedding of one image (shared by all prompts),
                or ``(B, C, He, We)`` one per prompt.
            image_pe: ``(1, C, He, We)`` positional encoding of the embedding grid.
            sparse_prompt_embeddings: ``(B, Nt, C)`` point/box tokens.
            dense_prompt_embeddings: ``(B, C, He, We)`` mask embeddings.
            multimask_output: return the 3 ambiguity-aware masks instead of the single one.

        Returns:
            low-resolution mask logits ``(B, M, 4 He, 4 We)`` and IoU predictions ``(B, M)``,
            ``M`` = 3 with ``multimask_output`` else 1.
        """
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' outputs: ``(B, num_mask_tokens, 4 He, 4 We)`` logits, ``(B, num_mask_tokens)`` IoU."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        if image_embeddings.shape[0] == b:
            src = image_embeddings
        else:
            src = torch.repeat_interleave(image_embeddings, b, dim=0)
        src = src + dense_prompt_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        _, cu, hu, wu = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_out)
