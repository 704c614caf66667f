"""Classifiers that also score *where* each output is: a finding map next to the global logit.

A chest X-ray finding such as a 6 mm nodule covers a few cells of the last feature map; learnt
from image labels alone, a DenseNet on a few thousand radiographs does not find it (the bundled
model stayed at chance for nodules, consolidation and pneumothorax). When the training data hold
masks of the findings (``data.finding_masks``; ``medcnn generate chest-xray`` writes them), a 1x1
convolution on the last feature map gives one logit per cell and finding, supervised by those
masks, and its log-sum-exp pooling is added to the global classifier's logit, so the localised
evidence reaches the image-level probability directly. ``map_stride`` 16 or 8 puts the map on a
finer grid (a head on an earlier dense block) for findings smaller than a 32-pixel cell.
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
    With ``map_stride`` 16 or 8 the map is on that finer grid: a second 1x1 convolution on the
    (normalised) output of dense block 3 or 2 plus the coarse map repeated over the finer cells, so
    that a small finding (a 4-20 px nodule at 256 px) marks its own cell instead of a 32 px one.
    ``forward(x, return_maps=True)`` returns ``(logits, maps)`` for training. The head starts at
    zero, so a checkpoint of the plain DenseNet-121 (``model.init``) gives the same logits at first.

    Args:
        lse_r: sharpness of the pooling of the maps.
        map_stride: 32 (the last feature map), 16 or 8 (a finer map, see above).
        **kwargs: :class:`monai.networks.nets.DenseNet121` arguments.
    """

    #: parameters that a checkpoint of the plain network lacks (``model.init`` accepts that)
    init_optional_prefixes: tuple[str, ...] = ("map_head.", "map_head_fine.")

    #: transition layer whose input (after its batch norm and ReLU) feeds the finer head, per map stride
    _FINE_LEVEL = {16: "transition3", 8: "transition2"}

    def __init__(self, *, lse_r: float = 5.0, map_stride: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        out = self.class_layers.out
        conv = Conv[Conv.CONV, int(kwargs.get("spatial_dims", 3))]
        self.map_head = conv(out.in_features, out.out_features, kernel_size=1)
        nn.init.zeros_(self.map_head.weight)
        nn.init.zeros_(self.map_head.bias)
        if int(map_stride) not in (32, *self._FINE_LEVEL):
            raise ValueError(f"map_stride must be 32, 16 or 8, got {map_stride}")
        self.fine_level = self._FINE_LEVEL.get(int(map_stride))
        if self.fine_level is not None:
            fine_channels = getattr(self.features, self.fine_level).norm.num_features
            self.map_head_fine = conv(fine_channels, out.out_features, kernel_size=1)
            nn.init.zeros_(self.map_head_fine.weight)
            nn.init.zeros_(self.map_head_fine.bias)
        self.lse_r = float(lse_r)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last feature map and, with a finer map, the normalised input of :attr:`fine_level`."""
        fine = None
        for name, layer in self.features.named_children():
            if name == self.fine_level:  # the transition's own norm + ReLU, computed once for both uses
                fine = layer.relu(layer.norm(x))
                x = layer.pool(layer.conv(fine))
            else:
                x = layer(x)
        return x, fine

    def forward(self, x: torch.Tensor, return_maps: bool = False):  # type: ignore[override]
        feats, fine = self._features(x)
        h = self.class_layers.relu(feats)  # the layer Grad-CAM reads (as in DenseNet121)
        maps = self.map_head(h)
        if fine is not None:  # coarse cells spread over the finer grid, plus the finer head's own evidence
            maps = self.map_head_fine(fine) + F.interpolate(maps, size=fine.shape[2:], mode="nearest")
        pooled = self.class_layers.flatten(self.class_layers.pool(h))
        logits = self.class_layers.out(pooled) + lse_pool(maps, self.lse_r)
        return (logits, maps) if return_maps else logits


def finding_map_loss(maps: torch.Tensor, masks: torch.Tensor, known: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Binary cross-entropy of finding maps against masks, over the (image, finding) pairs whose mask is known.

    A cell's target is 1 where any pixel of the finding falls in it (max pooling of the mask onto
    the map's grid), so a nodule smaller than a cell still marks its cell.

    Args:
        maps: ``(B, K, *map_spatial)`` logits per cell.
        masks: ``(B, K, *spatial)`` 0/1 masks at input resolution (all zero for an absent finding).
        known: ``(B, K)``: 1 where the mask is known (finding absent, or present with a mask), else 0.
        balanced: weigh each pair's finding cells and its other cells equally (half each) instead of
            every cell alike. A 6 mm nodule marks 1-4 of 256 cells: in the plain mean its cells are
            outweighed about 100:1 by the cells around it, and a model trained that way never learnt to
            mark them (nodule map no better than chance on its own training images).

    Returns:
        Scalar: mean over the known cells (``balanced``: over the known pairs) (0 when none is known).
    """
    pool = F.adaptive_max_pool2d if maps.ndim == 4 else F.adaptive_max_pool3d
    target = pool(masks.float(), maps.shape[2:])
    loss = F.binary_cross_entropy_with_logits(maps, target, reduction="none")
    known = known.float()
    if balanced:
        spatial = tuple(range(2, maps.ndim))
        n_cells = float(target[0, 0].numel())
        n_pos = target.sum(spatial, keepdim=True)
        has_pos = (n_pos > 0).float()
        w_pos = 0.5 / n_pos.clamp_min(1.0)
        w_neg = (1.0 - 0.5 * has_pos) / (n_cells - n_pos).clamp_min(1.0)
        per_pair = (loss * torch.where(target > 0, w_pos, w_neg)).sum(spatial)
        return (per_pair * known).sum() / known.sum().clamp_min(1)
    weight = known.reshape(*known.shape, *([1] * (maps.ndim - 2))).expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1)
