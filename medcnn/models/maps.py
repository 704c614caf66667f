"""Classifiers that also score *where* each output is: a finding map next to the global logit.

A chest X-ray finding such as a 6 mm nodule covers a few cells of the last feature map; learnt
from image labels alone, a DenseNet on a few thousand radiographs does not find it (the bundled
model stayed at chance for nodules, consolidation and pneumothorax). When the training data hold
masks of the findings (``data.finding_masks``; ``medcnn generate chest-xray`` writes them), a 1x1
convolution on the last feature map gives one logit per cell and finding, supervised by those
masks, and its log-sum-exp pooling is added to the global classifier's logit, so the localised
evidence reaches the image-level probability directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import DenseNet121
from torch import nn

__all__ = ["DenseNetWithMaps", "finding_map_loss", "lse_pool"]


def lse_pool(maps: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling over the spatial axes, normalised so that a constant map pools to itself.

    Args:
        maps: ``(B, K, *spatial)`` logits per cell.
        r: sharpness (large: the maximum; small: the mean).

    Returns:
        ``(B, K)``: ``(logsumexp(r * maps) - log(n_cells)) / r``.
    """
    flat = maps.flatten(2)
    return (torch.logsumexp(r * flat, dim=-1) - math.log(flat.shape[-1])) / r


class DenseNetWithMaps(DenseNet121):
    """MONAI DenseNet-121 plus a finding-map head (the ``densenet121`` registry entry with
    ``finding_maps=True``).

    ``forward(x)`` returns ``(B, K)`` logits: the DenseNet's own (global average pooling + linear)
    plus :func:`lse_pool` of ``maps = conv1x1(relu(features))``, ``(B, K, *spatial / 32)``.
    ``forward(x, return_maps=True)`` returns ``(logits, maps)`` for training. The head starts at
    zero, so a checkpoint of the plain DenseNet-121 (``model.init``) gives the same logits at first.

    Args:
        lse_r: sharpness of the pooling of the maps.
        **kwargs: :class:`monai.networks.nets.DenseNet121` arguments.
    """

    #: parameters that a checkpoint of the plain network lacks (``model.init`` accepts that)
    init_optional_prefixes: tuple[str, ...] = ("map_head.",)

    def __init__(self, *, lse_r: float = 5.0, **kwargs) -> None:
        super().__init__(**kwargs)
        out = self.class_layers.out
        self.map_head = Conv[Conv.CONV, int(kwargs.get("spatial_dims", 3))](out.in_features, out.out_features, kernel_size=1)
        nn.init.zeros_(self.map_head.weight)
        nn.init.zeros_(self.map_head.bias)
        self.lse_r = float(lse_r)

    def forward(self, x: torch.Tensor, return_maps: bool = False):  # type: ignore[override]
        h = self.class_layers.relu(self.features(x))  # the layer Grad-CAM reads (as in DenseNet121)
        maps = self.map_head(h)
        pooled = self.class_layers.flatten(self.class_layers.pool(h))
        logits = self.class_layers.out(pooled) + lse_pool(maps, self.lse_r)
        return (logits, maps) if return_maps else logits


def finding_map_loss(maps: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of finding maps against masks, over the (image, finding) pairs whose mask is known.

    A cell's target is 1 where any pixel of the finding falls in it (max pooling of the mask onto
    the map's grid), so a nodule smaller than a cell still marks its cell.

    Args:
        maps: ``(B, K, *map_spatial)`` logits per cell.
        masks: ``(B, K, *spatial)`` 0/1 masks at input resolution (all zero for an absent finding).
        known: ``(B, K)``: 1 where the mask is known (finding absent, or present with a mask), else 0.

    Returns:
        Scalar: mean over the known cells (0 when none is known).
    """
    pool = F.adaptive_max_pool2d if maps.ndim == 4 else F.adaptive_max_pool3d
    target = pool(masks.float(), maps.shape[2:])
    loss = F.binary_cross_entropy_with_logits(maps, target, reduction="none")
    weight = known.float().reshape(*known.shape, *([1] * (maps.ndim - 2))).expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1)
