"""ViT image encoder of SAM / MedSAM (Kirillov et al. 2023; Ma et al. 2024), written for medcnn.

A plain ViT on 16x16 patches with an absolute position embedding, windowed self-attention
(with zero padding of the token grid to a multiple of the window) in most blocks and global
self-attention in a few, decomposed relative position biases (one table per spatial axis) in
every block, and a convolutional neck down to 256 channels. Parameter names and shapes follow
the ``segment_anything`` state_dict layout (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}``,
``neck.{0,1,2,3}``) so that official checkpoints load with ``strict=True``.

CPU inference is faster than a direct transcription of the paper's formulas while giving the
same numbers (float rounding aside):

* the relative position bias is added inside the ``q @ k^T`` product (``baddbmm``) and the
  attention is computed in query chunks, so the full ``(heads, N, N)`` attention matrix of a
  global block (12 x 4096 x 4096 floats = 800 MB for ViT-B at 1024x1024) is never materialised
  several times over;
* tokens of windowed blocks are projected to q/k/v *before* padding: a padding token is zero
  after the first LayerNorm, so its q/k/v equal the projection bias, and the output projection
  runs on the real tokens only (the padded grid is ~20 % larger at 64x64 tokens, window 14).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageEncoderViT", "LayerNorm2d", "MLPBlock"]

# Target number of attention-matrix elements per query chunk (heads * queries * keys): about
# 16 MB of float32, large enough for efficient BLAS calls, small enough to stay near the caches.
_CHUNK_ELEMENTS = 4 * 1024 * 1024


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor (per-pixel normalisation).

    Args:
        num_channels: ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between (``lin2(act(lin1(x))))``).

    Args:
        embedding_dim: input and output features.
        mlp_dim: hidden features.
        act: activation class (instantiated without arguments).
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., embedding_dim)`` -> ``(..., embedding_dim)``."""
        return self.lin2(self.act(self.lin1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``(B, C, H, W)`` -> ``(B, H/p, W/p, embed_dim)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H/p, W/p, embed_dim)`` (channels last)."""
        return self.proj(x).permute(0, 2, 3, 1)


def _relative_table(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        table: ``(L, C)`` learned embeddings of the offsets ``-(size-1) .. size-1``.
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.

    Returns:
        ``(q_size, k_size, C)``. When ``L`` does not match ``2 * max(q_size, k_size) - 1`` the
        table is linearly resampled to that length first.
    """
    length = 2 * max(q_size, k_size) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t()[None], size=length, mode="linear")[0].t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, device=table.device)[:, None] * q_scale
    k_pos = torch.arange(k_size, device=table.device)[None, :] * k_scale
    offset = (q_pos - k_pos) + (k_size - 1) * k_scale
    return table[offset.long()]


class Attention(nn.Module):
    """Multi-head self-attention on a token grid with decomposed relative position biases.

    The attention logit of query ``(qh, qw)`` and key ``(kh, kw)`` is
    ``q.k / sqrt(d) + q.Rh[qh, kh] + q.Rw[qw, kw]`` (``Rh``/``Rw`` from ``rel_pos_h``/``rel_pos_w``).

    Args:
        dim: token features.
        num_heads: attention heads (``dim`` must be a multiple).
        qkv_bias: bias in the q/k/v projection.
        use_rel_pos: add the relative position biases.
        input_size: ``(H, W)`` token grid the tables are sized for (required with ``use_rel_pos``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from already projected tokens.

        Args:
            qkv: ``(B, H, W, 3 * dim)`` output of ``self.qkv``.

        Returns:
            ``(B, H, W, dim)`` attention output *before* ``self.proj``.
        """
        b, h, w, _ = qkv.shape
        n, heads = h * w, self.num_heads
        # (3, B * heads, N, head_dim)
        q, k, v = qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, -1).unbind(0)
        head_dim = q.shape[-1]
        if self.use_rel_pos:
            rh = _relative_table(self.rel_pos_h, h, h)  # (h, h, d)
            rw = _relative_table(self.rel_pos_w, w, w)  # (w, w, d)
            q_grid = q.reshape(b * heads, h, w, head_dim)
            rel_h = torch.einsum("bhwc,hkc->bhwk", q_grid, rh).contiguous()  # (BH, h, w, kh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", q_grid, rw).contiguous()  # (BH, h, w, kw)
        k_t = k.transpose(1, 2)  # (BH, d, N)
        out = torch.empty_like(q)
        # Chunks of whole query rows, so that the bias of a chunk is a slice of rel_h / rel_w.
        rows = max(1, min(h, _CHUNK_ELEMENTS // max(1, b * heads * w * n)))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            n0, n1 = r0 * w, r1 * w
            if self.use_rel_pos:
                bias = (rel_h[:, r0:r1, :, :, None] + rel_w[:, r0:r1, :, None, :]).reshape(b * heads, n1 - n0, n)
                logits = torch.baddbmm(bias, q[:, n0:n1], k_t, alpha=self.scale)
            else:
                logits = torch.bmm(q[:, n0:n1], k_t).mul_(self.scale)
            out[:, n0:n1] = torch.bmm(torch.softmax(logits, dim=-1), v)
        return out.view(b, heads, h, w, head_dim).permute(0, 2, 3, 1, 4).reshape(b, h, w, heads * head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, H, W, dim)``."""
        return self.proj(self.attend(self.qkv(x)))


def _to_windows(x: torch.Tensor, window: int, pad_value: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad a token grid to a multiple of ``window`` and cut it into windows.

    Args:
        x: ``(B, H, W, C)``.
        window: window side.
        pad_value: ``(C,)`` value of the padding tokens (zeros when ``None``).

    Returns:
        ``(B * nH * nW, window, window, C)`` windows and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        if pad_value is None:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        else:
            padded = pad_value.to(x.dtype).expand(b, h + ph, w + pw, c).clone()
            padded[:, :h, :w] = x
            x = padded
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def _from_windows(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: ``(B * nH * nW, window, window, C)`` -> ``(B, H, W, C)``."""
    hp, wp = padded
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, c)
    return x[:, : size[0], : size[1]]


class Block(nn.Module):
    """Transformer block: (windowed or global) attention and an MLP, both pre-norm residual.

    Args:
        dim: token features.
        num_heads: attention heads.
        mlp_ratio: hidden features of the MLP over ``dim``.
        qkv_bias: bias in the q/k/v projection.
        norm_eps: LayerNorm epsilon.
        use_rel_pos: relative position biases in the attention.
        window_size: attention window side; 0 for global attention.
        input_size: token grid ``(H, W)`` of the encoder (sizes the relative tables of global blocks).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim)`` -> ``(B, H, W, dim)``."""
        y = self.norm1(x)
        if self.window_size > 0:
            h, w = y.shape[1:3]
            qkv = self.attn.qkv(y)  # (B, H, W, 3 dim): project the real tokens only
            # A padding token is 0 after norm1, so its projection is the qkv bias.
            pad = self.attn.qkv.bias
            if pad is None:
                pad = torch.zeros(qkv.shape[-1], dtype=qkv.dtype, device=qkv.device)
            windows, padded = _to_windows(qkv, self.window_size, pad)
            y = _from_windows(self.attn.attend(windows), self.window_size, padded, (h, w))
            y = self.attn.proj(y)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder.

    Args:
        img_size: input side (square images), e.g. 1024.
        patch_size: patch side, e.g. 16.
        in_chans: input channels.
        embed_dim: token features (ViT-B 768, ViT-L 1024, ViT-H 1280).
        depth: number of blocks (12 / 24 / 32).
        num_heads: attention heads (12 / 16 / 16).
        mlp_ratio: MLP hidden features over ``embed_dim``.
        out_chans: channels of the output embedding (256).
        qkv_bias: bias in the q/k/v projections.
        norm_eps: LayerNorm epsilon of the blocks.
        use_abs_pos: learned absolute position embedding ``pos_embed``.
        use_rel_pos: decomposed relative position biases.
        window_size: window side of the windowed blocks (14).
        global_attn_indexes: blocks with global attention (ViT-B: 2, 5, 8, 11).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        global_set = set(int(i) for i in global_attn_indexes)
        self.global_attn_indexes = tuple(sorted(global_set))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_set else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding.

        Args:
            x: ``(B, in_chans, img_size, img_size)`` preprocessed images.

        Returns:
            ``(B, out_chans, img_size / patch_size, img_size / patch_size)``, e.g. ``(B, 256, 64, 64)``.
        """
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    @property
    def embedding_size(self) -> tuple[int, int]:
        """``(H, W)`` of the output embedding for a full-size input."""
        side = self.img_size // self.patch_size
        return side, side
