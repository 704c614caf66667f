"""``task: segmentation``: dense labels (or nested regions, or binary mask channels) per voxel.

Cases are preprocessed once onto the model grid; each step draws ``train.samples_per_case``
foreground-balanced patches per case and optimises Dice+CE (or Dice+focal, or BCE on sigmoid outputs);
validation is sliding-window Dice per label, region or mask channel, and ``dice_mean`` picks ``best.pt``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medcnn.engine.tasks.base import TrainingTask
from medcnn.errors import ConfigError


class SegmentationTask(TrainingTask):
    """Label maps, nested regions (``labels.regions``, sigmoid per region) or mask columns (``data.masks``)."""

    name: ClassVar[str] = "segmentation"
    model_task: ClassVar[str] = "segmentation"
    selection_metrics: ClassVar[tuple[str, ...]] = ("dice_mean",)
    curve_prefixes: ClassVar[tuple[str, ...]] = ("dice_",)
    samples_per_case_key: ClassVar[bool] = True
    dense_output: ClassVar[bool] = True

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Patch size given, a loss that fits the outputs, valid regions; ``inference.roi_size`` defaults to the patch."""
        from medcnn.engine.schema import check_region_min_ml

        t = cfg["train"]
        if t["patch_size"] is None:
            raise ConfigError("missing required config key 'train.patch_size' for segmentation")
        sigmoid = bool(cfg["labels"]["regions"]) or bool(cfg["data"].get("masks"))
        if t["loss"] == "bce" and not sigmoid:
            raise ConfigError("config key 'train.loss': bce needs sigmoid outputs (data.masks or labels.regions); "
                              "a label map trains with dicece or dicefocal")
        if t["loss"] not in ("dicece", "dicefocal", "bce"):
            raise ConfigError(f"config key 'train.loss': {t['loss']!r} is for classification; use dicece, dicefocal "
                              "or (sigmoid outputs) bce")
        for region, labels in cfg["labels"]["regions"].items():
            if not labels or not all(isinstance(v, int) and v > 0 for v in labels):
                raise ConfigError(f"config key 'labels.regions.{region}': expected a list of positive label values")
        if cfg["inference"]["roi_size"] is None:
            cfg["inference"]["roi_size"] = list(t["patch_size"])
        check_region_min_ml(cfg["inference"], cfg["labels"]["regions"])

    # -- data ------------------------------------------------------------------------------------

    def prepare_records(self, trainer: Any, recs: list[dict]) -> list | None:
        trainer.multilabel = False
        trainer.mask_names = list(self.cfg["data"]["masks"] or [])
        return None

    def case_preparer(self, trainer: Any) -> Callable[[dict], dict]:
        from medcnn.engine.schema import label_target
        from medcnn.engine.trainer import _PrepareCase

        cfg = self.cfg
        label_values = None
        if not trainer.mask_names:
            declared = [int(k) for k in cfg["labels"]["names"]] + [v for r in cfg["labels"]["regions"].values() for v in r]
            label_values = sorted(set(declared)) or None
        return _PrepareCase(self.name, cfg["preprocess"], None, trainer.map_classes, half=cfg["data"]["cache"] == "half",
                            labels=cfg["data"].get("labels"), label_target=label_target(cfg), label_values=label_values)

    def out_channels(self, trainer: Any) -> int:
        if trainer.mask_names:
            return len(trainer.mask_names)
        regions = self.cfg["labels"]["regions"]
        if regions:
            return len(regions)
        names = self.cfg["labels"]["names"]
        if names:
            return max(int(k) for k in names) + 1
        if self.cfg["data"]["cache"] is False:
            raise ConfigError("data.cache false: give labels.names or labels.regions (the number of outputs is "
                              "otherwise read from the preprocessed labels)")
        return int(max(int(it["label"].max()) for it in trainer.train_items)) + 1

    def sample_transforms(self, trainer: Any) -> tuple[list, tuple[str, ...] | None, list]:
        from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

        from medcnn.engine.trainer import _ToRegionsd

        t = trainer.t
        patch = list(t["patch_size"])
        r = float(t["foreground_ratio"])
        before = [
            SpatialPadd(keys=["image", "label"], spatial_size=patch),
            RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch, pos=r, neg=1 - r,
                                   num_samples=t["samples_per_case"], allow_smaller=False),
        ]
        after = [_ToRegionsd(self.cfg["labels"]["regions"])] if self.cfg["labels"]["regions"] else []
        return before, ("label",), after

    # -- optimisation ----------------------------------------------------------------------------

    def loss(self, trainer: Any) -> nn.Module:
        from monai.losses import DiceCELoss, DiceFocalLoss

        name = trainer.t["loss"]
        region = bool(trainer.cfg["labels"]["regions"]) or bool(trainer.mask_names)
        if name == "bce":  # sigmoid outputs only (schema): per-voxel BCE, no Dice term
            return nn.BCEWithLogitsLoss()
        common: dict[str, Any] = {"sigmoid": True} if region else {"softmax": True, "to_onehot_y": True}
        common["batch"] = bool(trainer.t["dice_batch"])
        if name == "dicefocal":
            return DiceFocalLoss(smooth_nr=1e-5, smooth_dr=1e-5, **common)
        return DiceCELoss(smooth_nr=1e-5, smooth_dr=1e-5, **common)

    def loss_target(self, trainer: Any, y: torch.Tensor) -> torch.Tensor:
        return y.float()

    # -- validation ------------------------------------------------------------------------------

    def validate(self, trainer: Any, net: nn.Module) -> dict[str, float]:
        """Dice per label or region (``dice_<name>``) and their mean (``dice_mean``), sliding-window."""
        from medcnn.metrics.segmentation import dice_score

        if trainer.mask_names:
            return self._validate_masks(trainer, net)
        cfg = self.cfg
        regions = cfg["labels"]["regions"] or {str(v): [int(k)] for k, v in cfg["labels"]["names"].items()}
        if not regions:
            regions = {f"label{k}": [k] for k in range(1, trainer._out_channels())}
        scores: dict[str, list[float]] = {k: [] for k in regions}
        for it in trainer.val_items:
            logits = trainer._val_logits(net, it["image"])
            if cfg["labels"]["regions"]:
                pred_masks = logits > 0
            else:
                lab = logits.argmax(0)
                pred_masks = torch.stack([torch.isin(lab, torch.as_tensor(v)) for v in regions.values()])
            ref = it["label"][0].to(torch.int64)
            for i, (name, vals) in enumerate(regions.items()):
                scores[name].append(dice_score(pred_masks[i], torch.isin(ref, torch.as_tensor(vals))))
        out = {f"dice_{k}": float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
        out["dice_mean"] = float(np.nanmean(list(out.values()))) if out else float("nan")
        return out

    @staticmethod
    def _validate_masks(trainer: Any, net: nn.Module) -> dict[str, float]:
        """Dice per mask channel (``data.masks``) at the model's input size."""
        from medcnn.metrics.segmentation import dice_score

        scores: dict[str, list[float]] = {k: [] for k in trainer.mask_names}
        for it in trainer.val_items:
            pred = trainer._val_logits(net, it["image"]) > 0
            ref = it["label"].bool()
            for i, name in enumerate(trainer.mask_names):
                scores[name].append(dice_score(pred[i], ref[i]))
        out = {f"dice_{k}": float(np.mean(v)) for k, v in scores.items()}
        out["dice_mean"] = float(np.mean(list(out.values())))
        return out

    # -- export ----------------------------------------------------------------------------------

    @classmethod
    def export_activation(cls, ck: dict[str, Any]) -> dict[str, Any]:
        labels = ck.get("labels") or {}
        if labels.get("region_based"):
            regions = labels.get("regions") or {}
            channels = list(regions) if regions else list(labels.get("channels") or [])
            return {"activation": "sigmoid", "over": "each output channel (nested or overlapping regions)",
                    "channels": channels,
                    "decision": "region masks > 0.5" + ("; BraTS labels rebuilt from the nested regions" if regions else ""),
                    "regions": regions}
        return {"activation": "softmax", "over": "the channel axis (1)", "decision": "argmax over channels = label value"}


__all__ = ["SegmentationTask"]
