"""``task: classification``: one label per volume (or a 0/1/unknown vector per finding, multi-label).

Whole volumes are padded/cropped to a fixed size; single-label data trains with cross-entropy (or
focal loss), optionally class-balanced, and validates with AUROC/balanced accuracy (two classes) or
accuracy; multi-label data (chexpert / nih) trains with a masked BCE and validates with AUROC per finding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medcnn.engine.tasks.base import TrainingTask
from medcnn.errors import ConfigError


class ClassificationTask(TrainingTask):
    """Class labels per case (``data.classes``), single- or multi-label."""

    name: ClassVar[str] = "classification"
    model_task: ClassVar[str] = "classification"
    selection_metrics: ClassVar[tuple[str, ...]] = ("auroc_mean", "auroc", "balanced_accuracy", "accuracy")
    curve_prefixes: ClassVar[tuple[str, ...]] = ("auroc", "balanced_accuracy", "accuracy")

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """A segmentation loss name (the default ``dicece``) means cross-entropy here."""
        t = cfg["train"]
        if t["loss"] in ("dicece", "dicefocal"):
            t["loss"] = "ce"

    # -- data ------------------------------------------------------------------------------------

    def prepare_records(self, trainer: Any, recs: list[dict]) -> list | None:
        """Multi-label when labels are lists; else fixes ``data.classes`` and stratifies the split by class."""
        cfg = self.cfg
        trainer.multilabel = isinstance(recs[0]["label"], list)
        trainer.mask_names = []
        if trainer.multilabel:
            if not cfg["data"]["classes"]:
                raise ConfigError("missing required config key 'data.classes' (finding names) for multi-label data")
            return None
        classes = cfg["data"]["classes"] or sorted({r["label"] for r in recs})
        cfg["data"]["classes"] = list(classes)
        unknown = sorted({f"{r['case']}: {r['label']!r}" for r in recs if r["label"] not in classes})
        if unknown:
            raise ConfigError(f"{len(unknown)} case(s) with a label not in data.classes {list(classes)}, e.g. {unknown[0]}")
        return [r["label"] for r in recs]

    def case_preparer(self, trainer: Any) -> Callable[[dict], dict]:
        from medcnn.engine.schema import label_target
        from medcnn.engine.trainer import _PrepareCase

        cfg = self.cfg
        return _PrepareCase(self.name, cfg["preprocess"], cfg["data"]["classes"], trainer.map_classes,
                            half=cfg["data"]["cache"] == "half", labels=cfg["data"].get("labels"),
                            label_target=label_target(cfg), label_values=None)

    def out_channels(self, trainer: Any) -> int:
        return len(self.cfg["data"]["classes"])

    def sample_transforms(self, trainer: Any) -> tuple[list, tuple[str, ...] | None, list]:
        return [], ("finding_mask",) if trainer.map_classes else None, []

    # -- optimisation ----------------------------------------------------------------------------

    def loss(self, trainer: Any) -> nn.Module:
        from medcnn.engine.trainer import MaskedBCEWithLogits

        name = trainer.t["loss"]
        cw = trainer.t["class_weights"]
        weights = None
        if trainer.multilabel:
            if name not in ("bce", "ce"):
                raise ConfigError(f"config key 'train.loss': multi-label data trains with bce, not {name!r}")
            pos_weight = None
            if cw == "balanced":  # negatives / positives per finding, from the training labels
                y = torch.tensor([r["label"] for r in trainer.train_recs], dtype=torch.float32)
                pos = torch.nansum(y, 0)
                neg = (~torch.isnan(y)).sum(0) - pos
                pos_weight = (neg / pos.clamp_min(1)).clamp(0.1, 20.0).to(torch.float32)
            elif isinstance(cw, list):
                pos_weight = torch.tensor(cw, dtype=torch.float32)
            return MaskedBCEWithLogits(pos_weight)
        if cw == "balanced":
            classes = trainer.cfg["data"]["classes"]
            counts = np.bincount([classes.index(r["label"]) for r in trainer.train_recs],
                                 minlength=trainer._out_channels()).astype(float)
            weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
        elif isinstance(cw, list):
            weights = torch.tensor(cw, dtype=torch.float32)
        if name == "focal":
            from monai.losses import FocalLoss

            return FocalLoss(to_onehot_y=True, use_softmax=True, weight=weights)
        return nn.CrossEntropyLoss(weight=weights.to(trainer.env.device) if weights is not None else None)

    def loss_target(self, trainer: Any, y: torch.Tensor) -> torch.Tensor:
        return y.float() if trainer.multilabel else y.long()

    # -- validation ------------------------------------------------------------------------------

    def validate(self, trainer: Any, net: nn.Module) -> dict[str, float]:
        """``auroc_<finding>``/``auroc_mean`` (multi-label), ``auroc``/``balanced_accuracy``/``sensitivity``/
        ``specificity`` (two classes) or ``accuracy``, from whole-volume logits ``(1, K)``."""
        from medcnn.metrics import binary_report

        probs, labels = [], []
        for it in trainer.val_items:
            x = it["image"][None].to(trainer.env.device).float()
            with trainer._autocast():
                logits = net(x)
            if trainer.multilabel:
                probs.append(torch.sigmoid(logits.float())[0].cpu().numpy())
                labels.append(it["label"].numpy())
                continue
            p = torch.softmax(logits.float(), dim=1)[0].cpu()
            probs.append(p.numpy())
            labels.append(int(it["label"]))
        if trainer.multilabel:
            from medcnn.metrics.classification import multilabel_auroc

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a finding absent from a small validation set
                rep = multilabel_auroc(np.stack(probs), np.stack(labels), self.cfg["data"]["classes"])
            out = {f"auroc_{k}": float(v) for k, v in rep["per_finding"].items()}
            out["auroc_mean"] = float(rep["mean"])
            return out
        probs_a, labels_a = np.stack(probs), np.asarray(labels)
        if probs_a.shape[1] == 2:
            rep = binary_report(probs_a[:, 1], labels_a)
            return {"auroc": float(rep["auroc"]), "balanced_accuracy": float(rep["balanced_accuracy"]),
                    "sensitivity": float(rep["sensitivity"]), "specificity": float(rep["specificity"])}
        acc = float((probs_a.argmax(1) == labels_a).mean())
        return {"accuracy": acc}

    # -- export ----------------------------------------------------------------------------------

    @classmethod
    def export_activation(cls, ck: dict[str, Any]) -> dict[str, Any]:
        labels = ck.get("labels") or {}
        if labels.get("multilabel"):
            return {"activation": "sigmoid", "over": "each class independently", "classes": labels.get("classes", [])}
        return {"activation": "softmax", "over": "the class axis (1)", "classes": labels.get("classes", [])}


__all__ = ["ClassificationTask"]
