"""The training engine behind ``medcnn train``: one CPU, one GPU, or many (``torchrun``, DDP).

The ``Trainer`` is task-agnostic: what differs between tasks (targets, output channels, patch and
augmentation chain, loss, validation metrics, the metric that picks ``best.pt``) comes from the
config's task, a :class:`~medcnn.engine.tasks.base.TrainingTask` looked up by name in
:mod:`medcnn.engine.tasks` (segmentation: :mod:`medcnn.engine.tasks.segmentation`, classification:
:mod:`medcnn.engine.tasks.classification`). Cases are preprocessed once and kept in memory (or
preprocessed when drawn, ``data.cache: false``).

Every epoch is seeded from (seed, epoch, rank), so ``--resume`` after a crash repeats exactly what
an uninterrupted run would do. ``last.pt`` (resumable) and ``best.pt`` are written atomically by
rank 0; a NaN/Inf loss stops the run with a clear message and leaves the last good checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm.auto import tqdm

from medcnn.engine.checkpoint import checkpoint_path, load_checkpoint, network_on_meta, save_checkpoint, state_mismatch
from medcnn.device import cpu_has_native_bf16, resolve_device
from medcnn.engine.data import find_records, fixed_split, read_case_list, split_subjects
from medcnn.errors import ConfigError, MedcnnError
from medcnn.io.atomic import write_text_atomic
from medcnn.io.memory import over_limit
from medcnn.engine.tasks.base import TrainingTask
from medcnn.metrics.labels import BRATS2023, label_mapping, remap_labels, unexpected_labels
from medcnn.models import create_model, model_arguments
from medcnn.preprocessing import crop, load_for_model, prepare, square_resize

logger = logging.getLogger(__name__)


class TrainingError(MedcnnError):
    """Training cannot continue (non-finite loss, inconsistent resume...)."""


# --------------------------------------------------------------------------------- environment


class DistEnv:
    """Process-group facts for this process (single process when not launched by torchrun)."""

    def __init__(self, device_pref: str = "auto") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_pref, self.local_rank)
        self.started = False
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self.started = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def broadcast_flag(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, src=0)
        return bool(t.item())

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``: ``None`` means full fp32."""
    if setting == "off":
        return None
    if device.type == "cuda":
        if setting == "fp16":
            return torch.float16
        if setting == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if setting == "fp16":
        raise ConfigError("train.amp: fp16 autocast is for CUDA; use bf16 or off on CPU")
    if setting == "bf16" or (setting == "auto" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------- data


def regions_from_labels(label: torch.Tensor, regions: dict[str, list[int]]) -> torch.Tensor:
    """``(1, *spatial)`` integer labels -> ``(R, *spatial)`` float masks, one per region (in order)."""
    lab = label[0] if label.ndim > 1 and label.shape[0] == 1 else label
    return torch.stack([torch.isin(lab, torch.as_tensor(v, dtype=lab.dtype)) for v in regions.values()]).to(torch.float32)


class _ToRegionsd:
    """MONAI-style dict transform: replace ``label`` by its region masks."""

    def __init__(self, regions: dict[str, list[int]]) -> None:
        self.regions = regions

    def __call__(self, d: dict) -> dict:
        d = dict(d)
        lab = d["label"]
        lab = lab.as_tensor() if hasattr(lab, "as_tensor") else torch.as_tensor(lab)
        d["label"] = regions_from_labels(lab.round().to(torch.int64), self.regions)
        return d


class MaskedBCEWithLogits(nn.Module):
    """Multi-label binary cross-entropy that leaves unknown (NaN) labels out.

    Args:
        pos_weight: ``(K,)`` weight of positives per label (e.g. negatives/positives), or None.

    Shapes: logits and targets ``(B, K)``; returns a scalar (mean over known entries).
    """

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        t = torch.where(known, target, torch.zeros_like(target))
        pw = self.pos_weight if self.pos_weight.numel() else None
        loss = nn.functional.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, reduction="none")
        return (loss * known).sum() / known.sum().clamp_min(1)


class _Floatd:
    """Images kept as float16 (``data.cache: half``) back to float32 before augmentation."""

    def __call__(self, d: dict) -> dict:
        return {**d, "image": d["image"].float()}


_SAMPLE_KEYS = ("image", "label", "finding_mask", "map_known")


class _PrepareCase:
    """Preprocess one record into a training item (picklable, so that it can run in DataLoader workers
    when ``data.cache`` is false); ``half`` keeps the image ``(C, *spatial)`` as float16; ``keys``, if
    given, are the only ones kept."""

    def __init__(self, task: str, spec: dict, classes: list[str] | None, map_classes: Sequence[int], half: bool = False,
                 keys: Sequence[str] | None = None, labels: Any = None, label_target: dict[str, int] | None = None,
                 label_values: Sequence[int] | None = None) -> None:
        self.task, self.spec, self.classes, self.map_classes = task, spec, classes, list(map_classes)
        self.half, self.keys = half, keys
        # label convention of the files (data.labels, else the record's own), the model's labels and the values allowed
        self.labels, self.label_target, self.label_values = labels, label_target, label_values

    def _label_map(self, rec: dict) -> dict[int, int] | None:
        spec = self.labels if self.labels is not None else rec.get("labels")
        return None if spec is None else label_mapping(spec, self.label_target or dict(BRATS2023))

    def __call__(self, rec: dict) -> dict:
        if self.task == "classification":
            out = _prepare_cls_case(rec, self.spec, self.classes or [], self.map_classes)
        else:
            out = _prepare_seg_case(rec, self.spec, self._label_map(rec), self.label_values)
        if self.half:
            out["image"] = out["image"].to(torch.float16)
        return out if self.keys is None else {k: out[k] for k in self.keys if k in out}


class _KeepKeys:
    """A case preparer whose items keep only ``keys`` (picklable when the preparer is)."""

    def __init__(self, prepare: Any, keys: Sequence[str]) -> None:
        self.prepare, self.keys = prepare, tuple(keys)

    def __call__(self, rec: dict) -> dict:
        out = self.prepare(rec)
        return {k: out[k] for k in self.keys if k in out}


class _Plaind:
    """Drop MetaTensor wrappers (faster math in the training step)."""

    def __call__(self, d: dict) -> dict:
        return {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in d.items()}


def _prepare_seg_case(rec: dict, spec: dict, label_map: dict[int, int] | None = None,
                      label_values: Sequence[int] | None = None) -> dict:
    """Image and target on the model grid: ``(C, *spatial)`` float32 and ``(1, *spatial)`` uint8 labels,
    or ``(R, *spatial)`` uint8 binary masks when the record lists several mask files (``data.masks``).

    A label map is remapped by ``label_map`` (file value -> model value); without one, a value outside
    ``label_values`` (when given) is refused, naming the file and the values."""
    img = load_for_model(rec["image"], spec)
    several = isinstance(rec["label"], list)
    given = [f for f in rec["label"] if f is not None] if several else [rec["label"]]
    if given:
        lab = load_for_model(given, spec, mode="nearest")
        _check_same_grid(lab, img, given[0], "label")
    if several and len(given) < len(rec["label"]):  # blank manifest cells: all-zero masks
        full = torch.zeros((len(rec["label"]), *img.shape[1:]), dtype=torch.float32)
        present = [i for i, f in enumerate(rec["label"]) if f is not None]
        if present:
            full[present] = lab.as_tensor().float()
        lab = full
    x, info = prepare(img, spec)
    if several:
        return {"image": x, "label": _masks_like_input(lab, info, spec), "case": rec["case"]}
    y = crop(lab.as_tensor(), info["box"]).round().to(torch.int64)
    y = _model_labels(y, rec["label"], label_map, label_values).to(torch.uint8)
    if info.get("square"):  # an integer label map: resize each label's mask, keep the most covered label per pixel
        values = torch.unique(y)
        onehot = torch.stack([(y[0] == v) for v in values]).to(torch.float32)
        cover = square_resize(onehot, int(spec["square_size"]))[0]
        y = values[cover.argmax(0)][None].to(torch.uint8)
    return {"image": x, "label": y, "case": rec["case"]}


def _model_labels(y: torch.Tensor, where: str, label_map: dict[int, int] | None, label_values: Sequence[int] | None) -> torch.Tensor:
    """Integer labels ``(1, *spatial)`` in the model's values: remapped, or checked against ``label_values``."""
    try:
        if label_map is not None:
            return remap_labels(y, label_map, str(where))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if label_values:
        bad = unexpected_labels(y, label_values)
        if bad:
            raise ConfigError(f"{where}: label value(s) {', '.join(map(str, bad))} not among the model's labels "
                              f"{sorted(set(label_values))}; set data.labels (brats2021 for ET = 4, nnunet-brats, a YAML map)")
    return y


def _check_same_grid(target: torch.Tensor, img: torch.Tensor, where: str, what: str) -> None:
    """Raise ConfigError (naming the file ``where``) when a target ``(R, *grid)`` is not on the image's grid."""
    if tuple(target.shape[1:]) != tuple(img.shape[1:]):
        raise ConfigError(f"{where}: {what} grid {tuple(target.shape[1:])} does not match image {tuple(img.shape[1:])}")


def _masks_like_input(masks: torch.Tensor, info: dict, spec: dict) -> torch.Tensor:
    """Binary masks ``(R, *grid)`` on the model grid -> ``(R, *input)`` uint8, cropped and resized as
    :func:`prepare` did to the image (``info``)."""
    y = (crop(masks.as_tensor() if hasattr(masks, "as_tensor") else masks, info["box"]) > 0).to(torch.uint8)
    if info.get("square"):
        y, _ = square_resize(y, int(spec["square_size"]), label=True)
    return y


def _prepare_cls_case(rec: dict, spec: dict, classes: list[str], map_classes: Sequence[int] = ()) -> dict:
    """Network input and target of a classification case; with ``map_classes`` (multi-label data with
    ``data.finding_masks``) also ``finding_mask`` ``(K, *input)`` uint8 and ``map_known`` ``(K,)``: 1 where
    that finding's map target is known (absent: all zero; present: its mask), 0 where it is not."""
    img = load_for_model(rec["image"], spec)
    x, info = prepare(img, spec)
    label = rec["label"]
    if isinstance(label, list):  # multi-label: 0/1 per finding, NaN = unknown (left out of loss and metrics)
        out = {"image": x, "label": torch.tensor(label, dtype=torch.float32), "case": rec["case"]}
        if map_classes:
            known = torch.zeros(len(label), dtype=torch.float32)
            fmask = torch.zeros((len(label), *x.shape[1:]), dtype=torch.uint8)
            present = [i for i in map_classes if label[i] == 1.0 and rec["finding_masks"][i]]
            for i in map_classes:
                known[i] = 1.0 if (label[i] == 0.0 or i in present) else 0.0
            if present:
                masks = load_for_model([rec["finding_masks"][i] for i in present], spec, mode="nearest")
                _check_same_grid(masks, img, rec["finding_masks"][present[0]], "mask")
                fmask[present] = _masks_like_input(masks, info, spec)
            out["finding_mask"], out["map_known"] = fmask, known
        return out
    if label not in classes:
        raise ConfigError(f"case {rec['case']}: label {label!r} not in data.classes {classes}")
    return {"image": x, "label": torch.tensor(classes.index(label), dtype=torch.long), "case": rec["case"]}


def _build_network(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``create_model(name, **kwargs)``, refused up front (naming ``model.kwargs``) when training it would need
    more memory than the limit: float32 weights, gradients and two optimizer moments, counted on the meta
    device before anything is allocated."""
    shapes = network_on_meta(name, kwargs)
    if shapes is not None:
        n = sum(v.numel() for v in shapes.values())
        too_big = over_limit(16 * n)
        if too_big:
            raise ConfigError(f"config key 'model.kwargs': the {name} network these settings build has {n:,} weights; "
                              f"training it (weights, gradients, optimizer state) {too_big}")
    try:
        return create_model(name, **kwargs)
    except RuntimeError as exc:  # a network that cannot be sized on the meta device, too large to allocate
        if "allocate" not in str(exc):
            raise
        raise ConfigError(f"config key 'model.kwargs': the {name} network these settings build does not fit in memory "
                          f"({str(exc).strip().splitlines()[0][:160]})") from None


# ------------------------------------------------------------------------------------ trainer


class _SubclassedTrainerTask(TrainingTask):
    """The definition of a task registered as a whole :class:`Trainer` subclass (``prompt``): the subclass overrides
    the data, loss and validation methods itself; selection and curves follow the built-in metric names."""

    selection_metrics = ("dice_mean", "auroc_mean", "auroc", "balanced_accuracy", "accuracy")
    curve_prefixes = ("dice_", "auroc", "balanced_accuracy", "accuracy")

    def _overridden(self, hook: str) -> Any:
        raise TypeError(f"task {self.cfg.get('task')!r} is a Trainer subclass: it must override Trainer.{hook}")

    def case_preparer(self, trainer: Any) -> Any:
        return self._overridden("_build_data")

    def out_channels(self, trainer: Any) -> int:
        return self._overridden("_out_channels")

    def loss(self, trainer: Any) -> nn.Module:
        return self._overridden("_loss")

    def validate(self, trainer: Any, net: nn.Module) -> dict[str, float]:
        return self._overridden("validate")


def task_definition(cfg: dict) -> TrainingTask:
    """The :class:`TrainingTask` for ``cfg["task"]``, from the registry (:mod:`medcnn.engine.tasks`).

    Raises:
        ConfigError: the task is not registered (naming the registered ones).
    """
    from medcnn.engine.tasks import get_task

    target = get_task(cfg["task"])
    if isinstance(target, type) and issubclass(target, TrainingTask):
        return target(cfg)
    return _SubclassedTrainerTask(cfg)


def _task_of(trainer: Any) -> TrainingTask:
    """``trainer.task_def``, or the registered definition of ``trainer.task`` for a partly built trainer."""
    task_def = getattr(trainer, "task_def", None)
    if task_def is not None:
        return task_def
    return task_definition({**getattr(trainer, "cfg", {}), "task": trainer.task})


class Trainer:
    """Train one model from a validated config (see :func:`medcnn.engine.schema.load_train_config`).

    Args:
        cfg: validated config.
        run_dir: output folder (checkpoints, logs, curves).
        resume: continue from ``run_dir/last.pt``.
        overwrite: the previous run's checkpoints and ``result.json`` in ``run_dir`` are removed once the
            data and the network are ready (just before the first epoch); see :func:`check_run_folder`.
        task_def: the task's definition (default: the :class:`TrainingTask` registered as ``cfg["task"]``).
    """

    def __init__(self, cfg: dict, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
                 task_def: TrainingTask | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.env = DistEnv(cfg["train"]["device"])
        self.task = cfg["task"]
        self.task_def = task_def if task_def is not None else task_definition(cfg)
        self.t = cfg["train"]
        self.multilabel = False
        self.mask_names: list[str] = []
        self.map_classes: list[int] = []
        self.history: list[dict] = []
        self.best = self.task_def.worst()
        self.best_epoch = -1
        self.bad_validations = 0
        self.start_epoch = 0

    # -- setup -------------------------------------------------------------------------------

    def _log_main(self, msg: str, *args: Any) -> None:
        if self.env.is_main:
            logger.info(msg, *args)

    def _build_data(self) -> None:
        cfg = self.cfg
        recs = find_records(cfg["data"])
        strata = self.task_def.prepare_records(self, recs)
        self._split_records(recs, strata)
        # findings whose map head is trained: those with at least one mask file (data.finding_masks)
        self.map_classes = sorted({i for r in recs for i, p in enumerate(r.get("finding_masks") or []) if p})
        if self.map_classes:
            self._log_main("finding maps trained for %s", ", ".join(cfg["data"]["classes"][i] for i in self.map_classes))
        cache = cfg["data"]["cache"]
        self._prepare = prep = self.task_def.case_preparer(self)
        if not self.train_recs:
            raise ConfigError("data: no training case after the split")
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            if cache is False:  # only the first case now (channels, dimensions); the rest when drawn
                self.train_items = [prep(self.train_recs[0])]
            else:
                self.train_items = list(tqdm(pool.map(prep, self.train_recs), total=len(self.train_recs),
                                             desc="preprocess train", disable=None if self.env.is_main else True))
            self.val_items = list(pool.map(prep, self.val_recs)) if self.env.is_main else []
        self.in_channels = int(self.train_items[0]["image"].shape[0])
        self.spatial_dims = self.train_items[0]["image"].ndim - 1

    def _split_records(self, recs: list[dict], strata: list | None = None) -> None:
        """Set ``train_recs``/``val_recs``: the configured split over subjects (never cutting one)."""
        d = self.cfg["data"]
        if d["val_cases"]:
            train_s, val_s = fixed_split(recs, read_case_list(d["val_cases"]), folds=d["folds"])
        else:
            train_s, val_s = split_subjects([r["subject"] for r in recs], val_fraction=d["val_fraction"],
                                            seed=self.cfg["seed"], folds=d["folds"], fold=d["fold"], strata=strata)
        if d["max_cases"]:
            train_s = train_s[: d["max_cases"]]
        ts, vs = set(train_s), set(val_s)
        self.train_recs = [r for r in recs if r["subject"] in ts]
        self.val_recs = [r for r in recs if r["subject"] in vs]
        if ts & vs:  # cannot happen by construction; guards against future edits
            raise TrainingError(f"subjects in both training and validation: {sorted(ts & vs)[:5]}")
        self._log_main("%d cases: %d training (%d subjects), %d validation (%d subjects)", len(recs), len(self.train_recs),
                       len(ts), len(self.val_recs), len(vs))

    def _out_channels(self) -> int:
        return self.task_def.out_channels(self)

    def _build_model(self) -> nn.Module:
        m = self.cfg["model"]
        kwargs = dict(m["kwargs"])
        valid = model_arguments(m["name"])
        kwargs.setdefault("in_channels", self.in_channels)
        kwargs.setdefault("out_channels", self._out_channels())
        if "spatial_dims" in valid:
            kwargs.setdefault("spatial_dims", self.spatial_dims)
        if "patch_size" in valid and self.t["patch_size"]:
            kwargs.setdefault("patch_size", list(self.t["patch_size"]))
        if "spacing" in valid and self.cfg["preprocess"]["spacing"]:
            kwargs.setdefault("spacing", list(self.cfg["preprocess"]["spacing"]))
        if "img_size" in valid and self.t["patch_size"]:
            kwargs.setdefault("img_size", list(self.t["patch_size"]))
        self.model_kwargs = kwargs
        net = _build_network(m["name"], kwargs)
        if m.get("init"):
            self._init_weights(net, m["init"])
        return net

    def _init_weights(self, net: nn.Module, ref: str) -> None:
        """Load ``model.init`` (checkpoint path or bundled name) into ``net``: fine-tuning starts there.

        Raises:
            ConfigError: the checkpoint holds another network or weights of other shapes.
        """
        path = checkpoint_path(ref)
        if path is None:
            raise ConfigError(f"config key 'model.init': {ref!r} is neither a checkpoint file nor a bundled model")
        ck = load_checkpoint(path, map_location="cpu")
        if ck["model"]["name"] != self.cfg["model"]["name"]:
            raise ConfigError(f"config key 'model.init': {path} holds a {ck['model']['name']} network, "
                              f"the config builds {self.cfg['model']['name']}")
        state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in ck["state_dict"].items()}
        # parts the network adds to a checkpoint's (e.g. a new finding-map head), or holds in another shape (a map
        # head on another level, after a map_stride change), may start fresh
        optional = tuple(getattr(net, "init_optional_prefixes", ()))
        for k, v in net.state_dict().items():
            if k.startswith(optional) and (k not in state or state[k].shape != v.shape):
                if k in state:
                    logger.info("model.init: %s is %s in %s and %s here; it starts fresh",
                                k, tuple(state[k].shape), path.name, tuple(v.shape))
                state[k] = v
        state = self._adapt_init_state(state, net, path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"config key 'model.init': weights of {path} do not fit this network "
                              f"({str(exc).splitlines()[0][:200]})") from None
        self._log_main("initialised %s from %s", self.cfg["model"]["name"], path)

    def _adapt_init_state(self, state: dict[str, torch.Tensor], net: nn.Module, path: Path) -> dict[str, torch.Tensor]:
        """Hook for tasks whose network may differ from ``model.init``'s in a known way (default: none)."""
        return state

    def _random_transforms(self):
        from monai.transforms import Compose

        from medcnn.transforms import augmentation_preset

        aug = self.t["augment"]
        tfs: list = [_Floatd()] if self.cfg["data"]["cache"] == "half" else []
        before, label_keys, after = self.task_def.sample_transforms(self)
        tfs += before
        if aug["names"]:
            tfs.append(augmentation_preset(list(aug["names"]), keys="image", label_keys=label_keys, strength=aug["strength"],
                                           prob=aug["prob"], spatial_dims=self.spatial_dims, options=aug["options"] or None))
        tfs += after
        tfs.append(_Plaind())
        return Compose(tfs)

    #: drop an incomplete last batch (subclasses whose samples are random draws)
    drop_last = False

    def _train_dataset(self) -> torch.utils.data.Dataset:
        """This epoch's training samples (``{"image", "label"}`` dicts)."""
        from monai.data import Dataset

        if self.cfg["data"]["cache"] is False:
            from monai.transforms import Compose

            prep = _KeepKeys(self._prepare, _SAMPLE_KEYS)  # _build_data's, keeping only the sample keys
            # one flat chain: the random transforms draw the same seeds as on cached items
            return Dataset(list(self.train_recs), transform=Compose([prep, *self.transforms.transforms]))
        return Dataset([{k: it[k] for k in _SAMPLE_KEYS if k in it} for it in self.train_items], transform=self.transforms)

    def _cases_per_step(self) -> int:
        per_case = self.t["samples_per_case"] if self.task_def.samples_per_case_key else 1
        return max(1, self.t["batch_size"] // per_case)

    def _loader(self, epoch: int):
        from monai.data import DataLoader

        ds = self._train_dataset()
        cases_per_step = self._cases_per_step()
        sampler = None
        if self.env.distributed:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(ds, num_replicas=self.env.world, rank=self.env.rank, shuffle=True, seed=self.cfg["seed"])
            sampler.set_epoch(epoch)
        g = torch.Generator()
        g.manual_seed(self.cfg["seed"] * 7919 + epoch)
        return DataLoader(ds, batch_size=cases_per_step, shuffle=sampler is None, sampler=sampler,
                          num_workers=self.cfg["data"]["num_workers"], generator=g, drop_last=self.drop_last,
                          persistent_workers=False)

    def _loss(self) -> nn.Module:
        """The task's loss module (:meth:`TrainingTask.loss`)."""
        return _task_of(self).loss(self)

    def _optimizer(self, params) -> torch.optim.Optimizer:
        t = self.t
        if t["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], nesterov=True, weight_decay=t["weight_decay"])
        if t["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])

    def _lr_factor(self, epoch: int) -> float:
        t = self.t
        e, total, warm = epoch, t["epochs"], t["warmup_epochs"]
        if warm and e < warm:
            return (e + 1) / (warm + 1)
        if t["scheduler"] == "cosine":
            span = max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * (e - warm) / span))
        if t["scheduler"] == "poly":
            return (1 - e / max(1, total)) ** 0.9
        return 1.0

    # -- checkpoints ---------------------------------------------------------------------------

    def _export(self, metrics: dict[str, float], epoch: int) -> dict:
        cfg = self.cfg
        net = self.net.module if hasattr(self.net, "module") else self.net
        ck = {
            "task": self.task,
            "model": {"name": cfg["model"]["name"], "kwargs": self.model_kwargs},
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "preprocess": dict(cfg["preprocess"], in_channels=self.in_channels, channel_names=self._channel_names()),
            "inference": dict(cfg["inference"]),
            "labels": {
                "names": {str(k): v for k, v in cfg["labels"]["names"].items()},
                "regions": {k: list(v) for k, v in cfg["labels"]["regions"].items()},
                "region_based": bool(cfg["labels"]["regions"]) or bool(self.mask_names),
                "channels": list(self.mask_names),
                "classes": list(cfg["data"]["classes"] or []),
                "multilabel": bool(self.multilabel),
            },
            "metrics": dict(metrics),
            "training": {"epoch": epoch, "name": cfg["name"], "config": _plain_config(cfg),
                         "history": list(self.history), "train_cases": len(self.train_recs),
                         "train_case_ids": [r["case"] for r in self.train_recs],
                         "val_cases": [r["case"] for r in self.val_recs]},
        }
        ck.update(self.task_def.checkpoint_fields(self))
        return ck

    def _channel_names(self) -> list[str]:
        ch = self.cfg["data"]["channels"]
        return list(ch) if ch else [f"channel{i}" for i in range(self.in_channels)]

    def _save_last(self, epoch: int) -> None:
        ck = self._export(self.history[-1] if self.history else {}, epoch + 1)  # epochs completed, as in best.pt
        ck["resume"] = {
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_validations": self.bad_validations,
            "next_epoch": epoch + 1,
        }
        save_checkpoint(ck, self.run_dir / "last.pt")

    def _restore(self) -> None:
        path = self.run_dir / "last.pt"
        if not path.exists():
            raise TrainingError(f"--resume: no {path} to continue from")
        ck = load_checkpoint(path, map_location="cpu")
        if ck["model"]["name"] != self.cfg["model"]["name"]:
            raise TrainingError(f"--resume: {path} holds a {ck['model']['name']} model, the config asks for {self.cfg['model']['name']}")
        net = self.net.module if hasattr(self.net, "module") else self.net
        problem = state_mismatch(net.state_dict(), ck["state_dict"])
        if problem:
            raise TrainingError(f"--resume: {path} holds a network of another architecture/shape than the config builds "
                                f"({problem}; model.kwargs changed?); resume with the run's own settings "
                                f"({self.run_dir / 'config.yaml'}) or train into another folder")
        r = ck.get("resume")
        if not isinstance(r, dict):
            raise TrainingError(f"--resume: {path} holds no resume state (an exported or best.pt checkpoint?); "
                                "train into another folder with model.init to start from its weights")
        try:
            net.load_state_dict(ck["state_dict"])
            self.opt.load_state_dict(r["optimizer"])
            if self.scaler is not None and r.get("scaler"):
                self.scaler.load_state_dict(r["scaler"])
            self.best, self.best_epoch = float(r["best"]), int(r["best_epoch"])
            self.bad_validations = int(r["bad_validations"])
            self.start_epoch = int(r["next_epoch"])
            self.history = list(ck["training"]["history"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:  # optimizer groups of another config...
            raise TrainingError(f"--resume: {path}: resume state does not fit this config ({type(exc).__name__}: "
                                f"{str(exc).strip()[:160]})") from None
        self._log_main("resumed from %s at epoch %d", path, self.start_epoch)

    # -- loops -------------------------------------------------------------------------------

    def _batches(self, loader) -> Iterator[tuple[torch.Tensor, Any]]:
        """``(x, y)`` per batch on the device; ``y`` is ``(labels, finding masks, map_known)`` when finding maps train."""
        dev = self.env.device
        for batch in loader:
            x = batch["image"].to(dev, non_blocking=True)
            y = batch["label"].to(dev, non_blocking=True)
            if self.t["channels_last"] and x.ndim in (4, 5):
                x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
            if "finding_mask" in batch:
                y = (y, batch["finding_mask"].to(dev, non_blocking=True), batch["map_known"].to(dev, non_blocking=True))
            yield x, y

    def _train_epoch(self, epoch: int) -> float:
        self.net.train()
        loader = self._loader(epoch)
        total, n = 0.0, 0
        cap = self.t["max_steps_per_epoch"]
        steps = len(loader) if cap is None else min(cap, len(loader))
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.t['epochs']}", unit="step", leave=False,
                   disable=None if self.env.is_main else True)
        with warnings.catch_warnings():
            # MONAI warns once per patch drawn from an image without foreground (blank mask cells: no nodule
            # in this radiograph; those images give background patches by design), and once per flat patch
            # (a collimator's black border) that the histogram-shift augmentation leaves as it is
            warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
            warnings.filterwarnings("ignore", message="The image's intensity is a single value", category=UserWarning)
            for step, (x, y) in enumerate(self._batches(loader)):
                if cap is not None and step >= cap:
                    break
                loss_value = self.train_step(x, y, epoch, step)
                total += loss_value
                n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4f}")
        bar.close()
        return total / max(n, 1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0, step: int = 0) -> float:
        """One optimisation step on a batch; returns the (all-reduced) loss value.

        Args:
            x: ``(B, C, *patch)`` network input on the training device.
            y: targets: ``(B, K, *patch)`` region masks, ``(B, 1, *patch)`` labels, or ``(B,)`` classes;
                or ``(labels (B, K), finding masks (B, K, *input), map_known (B, K))`` to train finding maps.
            epoch, step: where the step is (for the error message on a non-finite loss).

        Raises:
            TrainingError: the loss is NaN/Inf.
        """
        self.opt.zero_grad(set_to_none=True)
        maps_target = None
        if isinstance(y, (tuple, list)):
            y, *maps_target = y
        with self._autocast():
            out = self._step_net(x, return_maps=True) if maps_target else self._step_net(x)
        maps = None
        if maps_target:
            logits, maps = out
        else:
            logits = out[0] if isinstance(out, (list, tuple)) else out
        loss = self.loss_fn(logits.float(), self.task_def.loss_target(self, y))
        if maps is not None:
            from medcnn.models.maps import finding_map_loss

            loss = loss + self.t["map_loss_weight"] * finding_map_loss(maps.float(), *maps_target,
                                                                       balanced=self.t["map_loss"] == "balanced")
        loss_value = self.env.all_mean(float(loss.detach()))
        if not math.isfinite(loss_value):
            # last.pt is this run's (or the resumed run's) epoch `epoch` only if an epoch was completed or resumed
            saved = epoch > 0 and (epoch > self.start_epoch or self.resume) and (self.run_dir / "last.pt").is_file()
            where = (f"the last good checkpoints are in {self.run_dir} (last.pt: epoch {epoch}; best.pt)" if saved
                     else "no checkpoint was written yet")
            raise TrainingError(
                f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; stopping; {where}. "
                "Lower train.lr, check inputs for NaN/Inf, or set train.amp: off"
            )
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.t["grad_clip"])
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        return loss_value

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.amp)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation metrics on the held-out subjects (rank 0)."""
        self.net.eval()
        net = self.net.module if hasattr(self.net, "module") else self.net
        return self.task_def.validate(self, net)

    def _val_logits(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits ``(C, *spatial)`` (float32, CPU) of one validation image ``(C_in, *spatial)``,
        windowed as the config's ``inference`` section says."""
        from medcnn.inference import sliding_window_inference

        inf = self.cfg["inference"]
        with self._autocast():
            logits = sliding_window_inference(image[None].to(self.env.device).float(), inf["roi_size"],
                                              inf["sw_batch_size"], net, overlap=inf["overlap"], mode=inf["mode"])
        return logits.float()[0].cpu()

    def _select(self, metrics: dict[str, float]) -> float:
        """The score that picks ``best.pt`` (:meth:`TrainingTask.select`)."""
        return self.task_def.select(metrics)

    # -- outputs -------------------------------------------------------------------------------

    def _write_logs(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for row in self.history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(self.run_dir / "log.csv", buf.getvalue())
        from medcnn.plotting import line_plot

        ep = [r["epoch"] for r in self.history]
        loss = {"train loss": (ep, [r.get("train_loss", float("nan")) for r in self.history])}
        metric_keys = self.task_def.curve_keys(keys)
        val = {k: (ep, [r.get(k, float("nan")) for r in self.history]) for k in metric_keys}
        line_plot([loss, val] if val else [loss], self.run_dir / "curves.png", titles=["training loss", "validation"][: 2 if val else 1],
                  xlabel="epoch")

    def _tensorboard(self):
        if not self.t["tensorboard"] or not self.env.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard: install the 'tensorboard' package or set it to false") from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- main ----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the training; returns ``{"best": metric, "best_epoch": n, "history": [...], "run_dir": path}``."""
        try:
            return self._fit()
        finally:
            self.env.close()

    def setup(self) -> None:
        """Everything before the first epoch: run folder, data (preprocessed once, kept in memory),
        transforms, network, optimiser, loss, resume state. :meth:`fit` calls it; benchmarks call it
        and then :meth:`train_step` on batches of :meth:`_batches`."""
        cfg = self.cfg
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg["seed"])
        self._build_data()
        self.transforms = self._random_transforms()
        net = self._build_model().to(self.env.device)
        if self.t["channels_last"] and self.spatial_dims in (2, 3):
            net = net.to(memory_format=torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last)
        self.amp = amp_dtype(self.t["amp"], self.env.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.net = net
        self.opt = self._optimizer(net.parameters())
        if self.resume:
            self._restore()
        if self.env.is_main:  # after a refused --resume the run's own config.yaml stays
            if self.overwrite:
                _remove_previous_run(self.run_dir)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(_plain_config(cfg), sort_keys=False))
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(net, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None)
        # the training steps may run a compiled wrapper; validation, export and resume use the module itself
        self._step_net = torch.compile(self.net) if self.t["compile"] else self.net
        self.loss_fn = self._loss().to(self.env.device)
        self._log_main("model %s (%.2fM parameters) on %s, amp=%s, world=%d", cfg["model"]["name"],
                       sum(p.numel() for p in net.parameters()) / 1e6, self.env.device, self.amp, self.env.world)

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.setup()
        tb = self._tensorboard()
        stop = False
        for epoch in range(self.start_epoch, self.t["epochs"]):
            seed_everything(cfg["seed"] * 100003 + epoch * 1009 + self.env.rank)
            self.transforms.set_random_state(seed=(cfg["seed"] * 100003 + epoch * 1009 + self.env.rank) % (2**32))
            for g in self.opt.param_groups:
                g["lr"] = self.t["lr"] * self._lr_factor(epoch)
            t0 = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self.opt.param_groups[0]["lr"],
                                   "seconds": round(time.perf_counter() - t0, 2)}
            validate_now = (epoch + 1) % self.t["val_every"] == 0 or epoch + 1 == self.t["epochs"]
            improved = False
            if validate_now and self.env.is_main and self.val_items:
                metrics = self.validate()
                row.update(metrics)
                score = self._select(metrics)
                if self.task_def.is_better(score, self.best):
                    self.best, self.best_epoch, improved = score, epoch + 1, True
                    self.bad_validations = 0
                else:
                    self.bad_validations += 1
                patience = self.t["early_stopping"]
                stop = patience is not None and self.bad_validations >= patience
            if self.env.is_main:
                self.history.append(row)
                if improved:
                    save_checkpoint(self._export({k: v for k, v in row.items() if k not in ("lr", "seconds")}, epoch + 1),
                                    self.run_dir / "best.pt")
                elif self.best_epoch < 0 and (epoch + 1 == self.t["epochs"] or stop):
                    # no validation case, or none that gave a score (e.g. each finding of a tiny validation split
                    # has one class only, so no AUROC): best.pt is the last epoch
                    if self.val_items:
                        logger.warning("no validation gave a finite selection metric; best.pt is the last epoch")
                    save_checkpoint(self._export(row, epoch + 1), self.run_dir / "best.pt")
                self._save_last(epoch)
                self._write_logs()
                if tb is not None:
                    for k, v in row.items():
                        if isinstance(v, float):
                            tb.add_scalar(k, v, epoch + 1)
                msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                logger.info("%s%s", msg, " *" if improved else "")
            stop = self.env.broadcast_flag(stop)
            if stop:
                self._log_main("early stopping: no improvement in %d validations", self.t["early_stopping"])
                break
        self.env.barrier()
        if tb is not None:
            tb.close()
        result = {"best": self.best, "best_epoch": self.best_epoch, "history": self.history, "run_dir": str(self.run_dir)}
        if self.env.is_main:
            write_text_atomic(self.run_dir / "result.json", json.dumps({k: v for k, v in result.items() if k != "history"},
                                                                      indent=2) + "\n")
        return result


def _plain_config(cfg: dict) -> dict:
    """The config without private keys, as plain YAML/JSON-able data."""
    return json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, default=str))


#: files of a trained run that a new run into the same folder would replace
RUN_FILES = ("best.pt", "last.pt")


def check_run_folder(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a new run in a folder holding a trained one (``best.pt`` / ``last.pt``) unless told.

    Args:
        run_dir: the run folder.
        resume: continue the run there (``last.pt``): allowed.
        overwrite: replace it: allowed (the old checkpoints are removed just before the first epoch).

    Raises:
        ConfigError: both ``resume`` and ``overwrite``, or a trained run without either.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    found = [n for n in RUN_FILES if (Path(run_dir) / n).is_file()]
    if found and not resume and not overwrite:
        raise ConfigError(f"{run_dir} holds a trained run ({', '.join(found)}); give --resume to continue it, "
                          "--overwrite to replace it, or another output folder (-o)")


def _remove_previous_run(run_dir: Path) -> None:
    """Remove a previous run's checkpoints and result (``--overwrite``): nothing stale survives a crash of the new run."""
    gone = [n for n in (*RUN_FILES, "result.json") if (run_dir / n).is_file()]
    for name in gone:
        (run_dir / name).unlink()
    if gone:
        logger.warning("--overwrite: removed the previous run's %s from %s", ", ".join(gone), run_dir)


def train(config: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None,
          resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train from a YAML config (what ``medcnn train`` runs).

    Args:
        config: YAML file.
        overrides: ``key=value`` overrides.
        run_dir: output folder (default ``runs/<config name>``).
        resume: continue from ``run_dir/last.pt``.
        overwrite: replace a trained run in ``run_dir`` (without it, or ``resume``, a folder holding
            ``best.pt``/``last.pt`` is refused).

    Returns:
        Summary dict (best metric, best epoch, history, run_dir).

    Raises:
        ConfigError: an invalid config, or a trained run in ``run_dir`` without ``resume``/``overwrite``.
    """
    from medcnn.engine.schema import load_train_config

    if resume and overwrite:  # before reading the config: a usage error
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    cfg = load_train_config(config, overrides)
    out = Path(run_dir) if run_dir is not None else Path("runs") / cfg["name"]
    check_run_folder(out, resume=resume, overwrite=overwrite)
    from medcnn.engine.tasks import get_task

    target = get_task(cfg["task"])
    if isinstance(target, type) and issubclass(target, TrainingTask):
        return Trainer(cfg, out, resume=resume, overwrite=overwrite, task_def=target(cfg)).fit()
    return target(cfg, out, resume=resume, overwrite=overwrite).fit()
