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


def test_bce_loss_charges_each_false_positive_pixel() -> None:
    """train.loss: bce (sigmoid outputs): per-pixel cross-entropy, so a detector's stray positives cost in
    proportion to their number, with no Dice term that a large true positive can mask."""
    host = SimpleNamespace(task="segmentation", t={"loss": "bce", "dice_batch": False},
                           cfg={"labels": {"regions": {}}}, mask_names=["nodule"])
    loss = Trainer._loss(host)
    target = torch.zeros(1, 1, 16, 16)
    target[0, 0, 4:10, 4:10] = 1
    clean = torch.where(target > 0, 8.0, -8.0)
    one_fp, four_fp = clean.clone(), clean.clone()
    one_fp[0, 0, 0, 0] = 8.0
    four_fp[0, 0, 0, :4] = 8.0
    base, l1, l4 = loss(clean, target).item(), loss(one_fp, target).item(), loss(four_fp, target).item()
    assert base < 1e-3
    assert abs((l4 - base) / (l1 - base) - 4.0) < 0.01   # exactly per pixel: 4 false positives cost 4x one
    assert abs((l1 - base) - 8.0 / 256) < 1e-3           # each costs its logit / number of pixels

