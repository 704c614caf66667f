"""Model registry in the style of timm: ``@register_model``, ``create_model(name, **kwargs)``,
``list_models()``.

Every entry wraps a MONAI network (or a small network of our own where MONAI has none) behind a
factory with explicit keyword arguments and sensible defaults, so that a YAML config can name a
model and override a few arguments. Unknown names or arguments fail fast with the valid ones.
The registry maps names to factories; it is filled once at import time and only read afterwards.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medcnn.errors import ConfigError

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]
_FACTORIES: dict[str, ModelFactory] = {}
_TASKS: dict[str, str] = {}


def register_model(name: str, task: str = "segmentation") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory under ``name``.

    Args:
        name: registry name (lower case, dashes allowed).
        task: ``"segmentation"`` (dense logits, ``(B, out_channels, *spatial)``),
            ``"classification"`` (``(B, out_channels)`` logits) or ``"prompt"`` (promptable
            2D segmentation, see :mod:`medcnn.prompt.lite`).

    Raises:
        ValueError: the name is already taken (registries are not silently overwritten).
    """

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = fn
        _TASKS[name] = task
        return fn

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (optionally only those of one task), sorted."""
    return sorted(n for n in _FACTORIES if task is None or _TASKS[n] == task)


def model_task(name: str) -> str:
    """``"segmentation"``, ``"classification"`` or ``"prompt"`` for a registered name."""
    _check_name(name)
    return _TASKS[name]


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments a model accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
    _check_name(name)
    sig = inspect.signature(_FACTORIES[name])
    return {p.name: p.default for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: arguments of that model (see :func:`model_arguments`).

    Returns:
        The ``nn.Module`` (on CPU, float32, training mode).

    Raises:
        ConfigError: unknown name, unknown or missing argument (the message lists the valid ones).
    """
    _check_name(name)
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    missing = [k for k, v in valid.items() if v is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"model {name!r} needs argument(s) {', '.join(missing)}")
    try:
        net = _FACTORIES[name](**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:  # MONAI validates with asserts in places
        raise ConfigError(f"model {name!r}: invalid arguments {kwargs} ({exc})") from None
    logger.debug("created %s with %d parameters", name, sum(p.numel() for p in net.parameters()))
    return net


# ------------------------------------------------------------------------- segmentation models


@register_model("unet")
def unet(
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI residual U-Net. Input ``(B, in_channels, *spatial)``, each spatial size divisible by prod(strides)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout)


@register_model("segresnet")
def segresnet(
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018, BraTS winner). Spatial sizes divisible by 2**(len(blocks_down)-1)."""
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                     init_filters=init_filters, blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up),
                     dropout_prob=dropout_prob)


def nnunet_topology(patch_size: Sequence[int], spacing: Sequence[float] | None = None, min_size: int = 4,
                    max_levels: int = 6) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net-style kernel sizes and strides for a patch size and voxel spacing.

    Axes are downsampled (stride 2) while their size stays >= ``2 * min_size`` and their spacing is
    no more than twice the finest spacing (so thick-slice axes are pooled later, as nnU-Net does);
    such axes use kernel 1 until they are within a factor 2 of the finest spacing.

    Returns:
        ``(kernel_sizes, strides)`` lists, one entry per level, first stride all ones.
    """
    size = [int(s) for s in patch_size]
    sp = [1.0] * len(size) if spacing is None else [float(s) for s in spacing]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(size)]
    for _level in range(max_levels):
        finest = min(sp)
        kernels.append([3 if s <= 2 * finest else 1 for s in sp])
        stride = [2 if (sz >= 2 * min_size and s <= 2 * finest) else 1 for sz, s in zip(size, sp)]
        if all(s == 1 for s in stride):
            break
        strides.append(stride)
        size = [sz // st for sz, st in zip(size, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
    kernels.append([3 if s <= 2 * min(sp) else 1 for s in sp])
    kernels = kernels[: len(strides)]
    return kernels, strides


@register_model("dynunet")
def dynunet(
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    patch_size: Sequence[int] = (128, 128, 128),
    spacing: Sequence[float] | None = None,
    filters: Sequence[int] | None = (16, 32, 64, 128, 256, 320),
    deep_supervision: bool = False,
    res_block: bool = True,
) -> nn.Module:
    """nnU-Net-style DynUNet whose depth, kernels and strides follow the patch size and spacing."""
    from monai.networks.nets import DynUNet

    kernels, strides = nnunet_topology(patch_size[:spatial_dims], spacing)
    nlev = len(strides)
    filt = None if filters is None else list(filters)[:nlev]
    if filt is not None and len(filt) < nlev:
        filt = filt + [filt[-1]] * (nlev - len(filt))
    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, kernel_size=kernels,
                   strides=strides, upsample_kernel_size=strides[1:], filters=filt, deep_supervision=deep_supervision,
                   deep_supr_num=1, res_block=res_block)


@register_model("swinunetr")
def swinunetr(
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    use_checkpoint: bool = False,
) -> nn.Module:
    """MONAI SwinUNETR. Spatial sizes divisible by 32."""
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, depths=tuple(depths),
                     num_heads=tuple(num_heads), use_checkpoint=use_checkpoint, spatial_dims=spatial_dims)


@register_model("unetr")
def unetr(
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    spatial_dims: int = 3,
    img_size: Sequence[int] = (96, 96, 96),
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
) -> nn.Module:
    """MONAI UNETR (ViT encoder); needs the fixed input size ``img_size``."""
    from monai.networks.nets import UNETR

    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size)[:spatial_dims],
                 feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
                 spatial_dims=spatial_dims)


# ------------------------------------------------------------------------ classification models


@register_model("densenet121", task="classification")
def densenet121(*, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 3, dropout_prob: float = 0.0,
                growth_rate: int = 32, init_features: int = 64, finding_maps: bool = False,
                map_stride: int = 32) -> nn.Module:
    """MONAI DenseNet-121 (2D or 3D; dense blocks of 6-12-24-16 layers). Output ``(B, out_channels)`` logits.

    ``growth_rate=16, init_features=32`` keeps the 121-layer topology at about a quarter of the
    parameters and compute (1.8 M parameters), what CPU training on a few thousand images can afford.
    ``finding_maps=True`` adds a map head scoring each cell of the last feature map per output, which
    training supervises with masks (``data.finding_masks``; :class:`medcnn.models.maps.DenseNetWithMaps`);
    ``map_stride`` (32, 16 or 8) sets that map's cell size in input pixels (ignored without the map, so
    that ``--set model.kwargs.finding_maps=false`` alone turns the map off).
    """
    kwargs = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, dropout_prob=dropout_prob,
                  growth_rate=growth_rate, init_features=init_features)
    if finding_maps:
        from medcnn.models.maps import DenseNetWithMaps

        return DenseNetWithMaps(map_stride=map_stride, **kwargs)
    from monai.networks.nets import DenseNet121

    return DenseNet121(**kwargs)


@register_model("resnet18", task="classification")
def resnet18(*, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 3, widen_factor: float = 1.0) -> nn.Module:
    """MONAI ResNet-18 (2D or 3D). Output ``(B, out_channels)`` logits."""
    from monai.networks.nets import ResNet

    return ResNet(block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512], spatial_dims=spatial_dims,
                  n_input_channels=in_channels, num_classes=out_channels, widen_factor=widen_factor, conv1_t_stride=2)


class CompactCNN(nn.Module):
    """A small VGG-like 3D/2D CNN (conv-norm-act-pool stages, global average pooling).

    Args:
        in_channels: input channels.
        out_channels: number of logits.
        spatial_dims: 2 or 3.
        channels: width of each stage; each stage halves the spatial size (max pooling).
        dropout: dropout before the linear head.
        stem_stride: stride of the very first convolution. 2 halves the input grid before any
            feature map is stored at full resolution, which makes a training step several times
            cheaper on CPU (the full-resolution stage dominates the cost) at the price of one
            fewer resolution level: the last stage (where Grad-CAM looks) is ``stem_stride`` times
            coarser for the same number of stages.
        norm: ``"instance"`` or ``"batch"`` normalisation after every convolution. Instance norm
            makes every feature map zero-mean/unit-variance per image, so a global average of the
            last stage keeps little more than the shape of each map's value distribution; batch
            norm (running statistics at inference) keeps how much of a feature an image has, which
            is what whole-image classification (e.g. ventricle size) needs.
        pool_grid: the head averages the last stage over a ``pool_grid`` per axis grid of cells
            (adaptive average pooling) and feeds all cells to the linear layer. 1 is global
            average pooling; 2 or 3 keep coarse position (centre vs. rim of a centred brain), so
            an instance-normalised network can still compare regions (ventricles vs. elsewhere).
        mask_threshold: if set, the last stage's features are zeroed (module ``gate``, which
            Grad-CAM then looks at) in every cell whose input, averaged over the cell, is at most
            this value (the channels' maximum): the head and the saliency maps only see cells
            that hold the body (brain or head), never the zero padding or air around it. The
            value is on the normalised input's scale (0.1 for min-max inputs with a zero
            background).

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, out_channels)``; each spatial size must be at least
        ``stem_stride * 2 ** (len(channels) - 1)`` so that the last stage keeps one voxel.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3,
                 channels: Sequence[int] = (8, 16, 32, 64, 128), dropout: float = 0.2, stem_stride: int = 1,
                 norm: str = "instance", pool_grid: int = 1, mask_threshold: float | None = None) -> None:
        super().__init__()
        if mask_threshold is not None and (isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float))):
            raise ValueError(f"mask_threshold must be a number or None, got {mask_threshold!r}")
        if isinstance(pool_grid, bool) or not isinstance(pool_grid, int) or pool_grid < 1:
            raise ValueError(f"pool_grid must be a positive int, got {pool_grid!r}")
        if isinstance(stem_stride, bool) or not isinstance(stem_stride, int) or stem_stride < 1:
            raise ValueError(f"stem_stride must be a positive int, got {stem_stride!r}")
        if not channels:
            raise ValueError("channels must name at least one stage width")
        norms = {"instance": (nn.InstanceNorm2d, nn.InstanceNorm3d), "batch": (nn.BatchNorm2d, nn.BatchNorm3d)}
        if norm not in norms:
            raise ValueError(f"norm must be one of {', '.join(norms)}, got {norm!r}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm_layer = norms[norm][1 if spatial_dims == 3 else 0]
        pool = nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers += [conv(c_in, c, 3, stride=stem_stride if i == 0 else 1, padding=1, bias=False), norm_layer(c, affine=True),
                       nn.LeakyReLU(0.01, inplace=True),
                       conv(c, c, 3, padding=1, bias=False), norm_layer(c, affine=True), nn.LeakyReLU(0.01, inplace=True),
                       pool(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * pool_grid**spatial_dims, out_channels))
        self.spatial_dims = spatial_dims
        self.pool_grid = pool_grid
        self.mask_threshold = None if mask_threshold is None else float(mask_threshold)
        self.gate = _Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask_threshold is None:
            f = self.features(x)
        else:
            f = self.features[:-1](x)  # up to the last activation; features[-1] is the last pooling
            pool = nn.functional.adaptive_avg_pool3d if self.spatial_dims == 3 else nn.functional.adaptive_avg_pool2d
            with torch.no_grad():
                body = pool(x.amax(1, keepdim=True).float(), f.shape[2:]) > self.mask_threshold
            f = self.features[-1](self.gate(f, body.to(f.dtype)))
        if self.pool_grid == 1:
            f = f.flatten(2).mean(-1)
        else:
            pool = nn.functional.adaptive_avg_pool3d if self.spatial_dims == 3 else nn.functional.adaptive_avg_pool2d
            f = pool(f, self.pool_grid).flatten(1)
        return self.head(f)


class _Gate(nn.Module):
    """``features * mask``: a named module, so that Grad-CAM can look at the gated features."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return features * mask


@register_model("compact-cnn", task="classification")
def compact_cnn(*, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 3,
                channels: Sequence[int] = (8, 16, 32, 64, 128), dropout: float = 0.2, stem_stride: int = 1,
                norm: str = "instance", pool_grid: int = 1, mask_threshold: float | None = None) -> nn.Module:
    """Our compact CNN (:class:`CompactCNN`), a fast baseline for 3D classification on CPU.

    ``stem_stride=2`` makes the first convolution strided (about 4x cheaper per step on CPU for
    whole-brain inputs); ``norm="batch"`` or ``pool_grid`` > 1 keep what a global average of
    instance-normalised features loses; ``mask_threshold`` keeps the head (and Grad-CAM) off the
    background (see :class:`CompactCNN`).
    """
    return CompactCNN(in_channels, out_channels, spatial_dims, tuple(channels), dropout, stem_stride, norm, pool_grid,
                      mask_threshold)


# ------------------------------------------------------------------------- promptable models


@register_model("prompt-unet", task="prompt")
def prompt_unet(*, in_channels: int = 5, out_channels: int = 1, spatial_dims: int = 2,
                channels: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                num_res_units: int = 1, norm: str = "batch") -> nn.Module:
    """The light promptable model (:mod:`medcnn.prompt.lite`): a MONAI residual 2D U-Net reading
    ``(B, 5, S, S)`` = image crop + box + positive/negative clicks + prior mask, returning
    ``(B, 1, S, S)`` mask logits. Batch norm folds into the convolutions at inference."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, norm=norm)
