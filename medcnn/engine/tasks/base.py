"""The interface of a training task: what :class:`~medcnn.engine.trainer.Trainer` asks instead of branching on names.

A task supplies the pieces that differ between, say, segmentation and classification -- how records become
training items, the network's output channels, the patch/augmentation chain, the loss, the validation metrics,
which metric picks ``best.pt`` (and whether higher is better), extra checkpoint fields and the export
contract -- while the ``Trainer`` owns everything shared (splits, DDP, AMP, optimiser, schedule, resume,
checkpoints, logs, the NaN guard).

Every hook receives the running trainer (``trainer``): it reads ``trainer.cfg``, ``trainer.t`` (the
``train`` section), ``trainer.train_recs``/``val_recs``, ``trainer.train_items``/``val_items``,
``trainer.env`` (device, rank), ``trainer.spatial_dims`` and may set task state on it
(``trainer.multilabel``, ``trainer.mask_names``, which the checkpoint's ``labels`` section records).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn


class TrainingTask(ABC):
    """One ``task:`` of ``medcnn train``; subclass it and register it with :func:`medcnn.engine.tasks.register_task`.

    Class attributes:
        name: the ``task:`` value (also written as the checkpoint's ``"task"``).
        model_task: the family of networks it trains (``medcnn.models.model_task``): ``"segmentation"`` for dense
            ``(B, C, *spatial)`` logits, ``"classification"`` for ``(B, C)`` logits; the config's ``model.name``
            must be one of them.
        selection_metrics: validation metric keys, in order of preference; the first finite one picks ``best.pt``.
        higher_is_better: direction of the selection metric.
        curve_prefixes: history keys starting with one of these are drawn in ``curves.png``.
        samples_per_case_key: true when a training case gives ``train.samples_per_case`` patches per step.
        dense_output: the network's output keeps the input's spatial axes (export: spatial axes are dynamic).
    """

    name: ClassVar[str] = ""
    model_task: ClassVar[str] = "segmentation"
    selection_metrics: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[bool] = True
    curve_prefixes: ClassVar[tuple[str, ...]] = ()
    samples_per_case_key: ClassVar[bool] = False
    dense_output: ClassVar[bool] = False

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    # -- config ----------------------------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Task-specific cross-checks of a validated config (may fill derived defaults in place).

        Raises:
            ConfigError: naming the offending key.
        """

    # -- data ------------------------------------------------------------------------------------

    def prepare_records(self, trainer: Any, recs: list[dict]) -> list | None:
        """Check the records (and set task state on ``trainer``) before the split; returns the per-case strata
        the split balances (or None)."""
        return None

    @abstractmethod
    def case_preparer(self, trainer: Any) -> Callable[[dict], dict]:
        """A picklable callable: record -> ``{"image": (C, *spatial) float32, "label": target, "case": id}``."""

    @abstractmethod
    def out_channels(self, trainer: Any) -> int:
        """The network's ``out_channels`` (default of ``model.kwargs.out_channels``)."""

    def sample_transforms(self, trainer: Any) -> tuple[list, tuple[str, ...] | None, list]:
        """``(before, label_keys, after)``: transforms before the augmentation preset, the keys it moves with
        the image (None: image only), and transforms after it."""
        return [], None, []

    # -- optimisation ----------------------------------------------------------------------------

    @abstractmethod
    def loss(self, trainer: Any) -> nn.Module:
        """The loss module: ``loss(logits.float(), self.loss_target(y))`` -> scalar."""

    def loss_target(self, trainer: Any, y: torch.Tensor) -> torch.Tensor:
        """The batch target as the loss takes it (default: class indices, int64)."""
        return y.long()

    # -- validation ------------------------------------------------------------------------------

    @abstractmethod
    def validate(self, trainer: Any, net: nn.Module) -> dict[str, float]:
        """Validation metrics of ``net`` (eval mode, the plain module) on ``trainer.val_items``."""

    def select(self, metrics: dict[str, float]) -> float:
        """The selection score of one validation: the first finite :attr:`selection_metrics` value, else the
        worst score (never an improvement)."""
        for key in self.selection_metrics:
            if key in metrics and math.isfinite(metrics[key]):
                return metrics[key]
        return self.worst()

    def worst(self) -> float:
        """The score before any validation."""
        return -math.inf if self.higher_is_better else math.inf

    def is_better(self, score: float, best: float) -> bool:
        """``score`` improves on ``best`` (strictly)."""
        return score > best if self.higher_is_better else score < best

    def curve_keys(self, keys: Sequence[str]) -> list[str]:
        """History keys drawn as validation curves."""
        return [k for k in keys if k.startswith(self.curve_prefixes)] if self.curve_prefixes else []

    # -- checkpoints and export ------------------------------------------------------------------

    def checkpoint_fields(self, trainer: Any) -> dict[str, Any]:
        """Extra top-level checkpoint entries (default: none); the shared ones are written by the trainer."""
        return {}

    @classmethod
    def export_window(cls, ck: dict[str, Any], spatial_dims: int) -> list[int] | None:
        """The spatial input size to export a checkpoint at (None: the sliding window, else 64 per axis); a network
        with one output per input (not :attr:`dense_output`) takes its fixed ``preprocess.size``/``square_size``."""
        pre = ck.get("preprocess") or {}
        if cls.dense_output:
            return None
        if pre.get("size"):
            return [int(s) for s in pre["size"]][:spatial_dims]
        if pre.get("square_size"):
            return [int(pre["square_size"])] * spatial_dims
        return None

    @classmethod
    def export_activation(cls, ck: dict[str, Any]) -> dict[str, Any]:
        """How the exported logits become the task's output (the contract's ``output`` entries)."""
        return {"activation": "none", "decision": "the logits are the prediction"}


__all__ = ["TrainingTask"]
