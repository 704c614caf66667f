"""train.dice_batch: one Dice over the batch, so an empty patch with a stray positive voxel does not cost Dice loss 1."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from medcnn.engine.trainer import Trainer


def _loss(dice_batch: bool) -> torch.nn.Module:
    host = SimpleNamespace(task="segmentation", t={"loss": "dicece", "dice_batch": dice_batch},
                           cfg={"labels": {"regions": {}}}, mask_names=["nodule"])
    return Trainer._loss(host)


def test_batch_dice_forgives_a_stray_voxel_in_an_empty_patch() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[1, 0, 4:10, 4:10] = 1  # patch 0 holds no object, patch 1 a 6x6 one
    logits = torch.where(target > 0, 12.0, -12.0)
    logits[0, 0, 0, 0] = 12.0  # one false-positive pixel in the empty patch
    per_patch, batch = _loss(False)(logits, target).item(), _loss(True)(logits, target).item()
    # per patch: the empty patch's Dice is 0 -> about 0.5 of Dice loss; over the batch: 1 FP pixel against 36 TP
    assert per_patch > 0.45
    assert batch < 0.05
