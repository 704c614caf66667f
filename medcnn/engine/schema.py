"""The schema of ``medcnn train`` configs (see ``configs/*.yaml`` for complete examples)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medcnn.engine.config import NONE, REQUIRED, Field, deep_merge, fraction, parse_overrides, positive, probability, read_yaml, validate
from medcnn.errors import ConfigError

_NUM = (int, float)


def _registered_task(name: str) -> str | None:
    """Check helper: ``name`` is a registered training task (read at validation time: plugins may add tasks)."""
    from medcnn.engine.tasks import task_names

    names = task_names()
    return None if name in names else f"is not a registered task; registered: {', '.join(names)}"


TRAIN_SCHEMA: dict[str, Any] = {
    "task": Field((str,), "segmentation", check=_registered_task,
                  help="what the model predicts: a task registered in medcnn.engine.tasks (segmentation, "
                       "classification, prompt: promptable 2D segmentation, medcnn.prompt; plugins add more)"),
    "name": Field((str, NONE), None, help="run name (default: the config file name)"),
    "seed": Field((int,), 0),
    "data": {
        "source": Field((str,), REQUIRED, path=True,
                        help="manifest CSV, folder with dataset.json (MSD/nnU-Net), folder of case folders, or BIDS folder"),
        "format": Field((str,), "auto", choices=("auto", "manifest", "msd", "brats", "bids", "chexpert", "nih"),
                        help="chexpert / nih: multi-label chest X-ray label CSVs (file or folder holding labels.csv / nih_labels.csv)"),
        "images": Field((str, NONE), None, path=True, help="chexpert / nih: folder the image references are relative to"),
        "uncertainty": Field((str,), "ignore", choices=("ignore", "zeros", "ones"),
                             help="chexpert: what an uncertain (-1) label means; ignore = left out of loss and metrics"),
        "masks": Field((list, NONE), None, help="segmentation manifest: binary mask columns, one output channel each"),
        "finding_masks": Field((str, NONE), None,
                               help="chexpert / nih: where each present finding's mask is, relative to the label CSV's folder, "
                                    "with {case} (the image file's stem) and {finding}, e.g. masks/{case}_{finding}.png "
                                    "(what medcnn generate chest-xray writes); trains the map head of "
                                    "model.kwargs.finding_maps: true"),
        "channels": Field((list, NONE), None, help="manifest columns holding the input channels, in order"),
        "label": Field((str,), "label", help="manifest column of the label map / class label"),
        "labels": Field((str, dict, NONE), None,
                        help="segmentation: label convention of the label files (brats2021, brats2023, nnunet-brats, a "
                             "YAML map {name: value} or {value: value}, or the map itself), remapped onto labels.names "
                             "(BraTS 2023 when unset); null: the files use labels.names' values (BraTS 2021 case folders "
                             "are recognised by their file names)"),
        "subject": Field((str,), "subject", help="manifest column identifying the subject (splits never cut a subject)"),
        "classes": Field((list, NONE), None, help="classification: class names in label order, e.g. [CN, AD]; "
                                                  "chexpert/nih: the findings (multi-label)"),
        "val_fraction": Field(_NUM, 0.2, check=fraction),
        "folds": Field((int, NONE), None, check=positive, help="k for k-fold cross-validation (null: one split)"),
        "fold": Field((int,), 0),
        "val_cases": Field((str, NONE), None,
                           help="a fixed validation set instead of val_fraction: a checkpoint (path or bundled name) "
                                "whose training.val_cases to reuse, or a text file of case ids (one per line); their "
                                "subjects' cases validate, all other cases train (fine-tuning on more data while "
                                "keeping the same held-out cases)"),
        "max_cases": Field((int, NONE), None, check=positive, help="use only the first N training subjects (smoke runs)"),
        "cache": Field((bool, str), True, choices=(True, False, "half"),
                       help="preprocessed training cases: true = kept in memory (float32); half = kept as float16 "
                            "(half the memory, e.g. 8 instead of 16 GB for 1280 brain-tumour cases); false = "
                            "preprocessed each time a case is drawn (least memory, slow: give data.num_workers)"),
        "num_workers": Field((int,), 0),
    },
    "preprocess": {
        "orientation": Field((str, NONE), "RAS"),
        "spacing": Field((list, NONE), None, check=positive, help="voxel size in mm the model works at"),
        "normalize": Field((str,), "brain_mri", choices=("brain_mri", "ct", "zscore", "minmax", "none")),
        "ct_window": Field((list, str, NONE), None),
        "ct_zscore": Field((list, NONE), None),  # [mean, std] HU: global z-score after the ct_window clip
        "crop_foreground": Field((bool,), True, help="crop to the non-zero bounding box (brain/head)"),
        "crop_threshold": Field(_NUM, 0.0, check=fraction,
                                help="foreground = above this fraction of the 99.5th percentile (0: non-zero)"),
        "size": Field((list, NONE), None, help="classification: pad/crop the (cropped) volume to this size"),
        "square_size": Field((int, NONE), None, check=positive,
                             help="2D: pad to a square, then resize to N x N (chest X-ray input)"),
    },
    "model": {
        "name": Field((str,), REQUIRED, help="a name from medcnn.models.list_models()"),
        "kwargs": {"*": Field((int, float, str, bool, list, dict, NONE))},
        "init": Field((str, NONE), None,
                      help="start from these weights: a medcnn checkpoint path or a bundled model name (fine-tuning)"),
    },
    "labels": {
        "names": {"*": Field((str,))},
        "regions": {"*": Field((list,))},
    },
    "train": {
        "epochs": Field((int,), 100, check=positive),
        "batch_size": Field((int,), 2, check=positive),
        "patch_size": Field((list, NONE), None, check=positive),
        "samples_per_case": Field((int,), 2, check=positive),
        "foreground_ratio": Field(_NUM, 0.67, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
        "loss": Field((str,), "dicece", choices=("dicece", "dicefocal", "ce", "bce", "focal")),
        "dice_batch": Field((bool,), False,
                            help="segmentation: one Dice over the whole batch per channel (nnU-Net's batch Dice) "
                                 "instead of one per patch; for small, often absent targets (an empty patch "
                                 "otherwise scores Dice loss 1 for any false-positive voxel)"),
        "class_weights": Field((str, list, NONE), None, help="'balanced' or a list of weights (classification)"),
        "optimizer": Field((str,), "adamw", choices=("adamw", "adam", "sgd")),
        "lr": Field(_NUM, 1e-3, check=positive),
        "weight_decay": Field(_NUM, 1e-5),
        "momentum": Field(_NUM, 0.99),
        "scheduler": Field((str,), "cosine", choices=("cosine", "poly", "none")),
        "warmup_epochs": Field((int,), 0),
        "grad_clip": Field(_NUM + (NONE,), 12.0),
        "amp": Field((str,), "auto", choices=("auto", "bf16", "fp16", "off")),
        "channels_last": Field((bool,), False),
        "compile": Field((bool,), False, help="torch.compile the network for the training steps (validation and "
                                              "checkpoints use the plain module); costs a compile at the first steps"),
        "map_loss_weight": Field(_NUM, 1.0, help="weight of the finding-map loss (data.finding_masks) next to the label loss"),
        "map_loss": Field((str,), "bce", choices=("bce", "balanced"),
                          help="finding-map loss: bce (every cell alike) or balanced (a finding's cells and the "
                               "other cells weigh half each per image, for findings of a few cells such as nodules)"),
        "augment": {
            "names": Field((list,), ["spatial", "intensity", "noise"]),
            "strength": Field(_NUM, 0.5),
            "prob": Field(_NUM, 0.3),
            "options": {"*": {}},
        },
        "val_every": Field((int,), 1, check=positive),
        "early_stopping": Field((int, NONE), None, check=positive, help="stop after N validations without improvement"),
        "max_steps_per_epoch": Field((int, NONE), None, check=positive),
        "tensorboard": Field((bool,), False),
        "device": Field((str,), "auto"),
    },
    "prompt": {
        "crop_size": Field((int,), 96, check=positive, help="side of the square network input read around a prompt"),
        "margin": Field(_NUM, 0.15, help="context around the prompt: this fraction of its extent per axis ..."),
        "margin_max": Field(_NUM, 0.05, help="... plus this fraction of its longer side ..."),
        "margin_px": Field(_NUM, 4.0, help="... plus this many pixels"),
        "box_jitter": Field(_NUM, 1.0, check=positive, help="scale of the simulated box errors (1 = the default, a few percent of the size)"),
        "box_tight_prob": Field(_NUM, 0.0, check=probability, help="share of box prompts given as the object's exact bounding box"),
        "exact_channel": Field((bool,), False, help="a sixth input channel tells the network that a box is exact (those "
                                                   "box_tight_prob prompts; predict(exact_box=True)); from a 5-channel "
                                                   "model.init its weights start at zero"),
        "point_prob": Field(_NUM, 0.3, check=probability, help="share of box prompts that also get clicks"),
        "prior_prob": Field(_NUM, 0.15, check=probability, help="share of box prompts that also get a rough prior mask"),
        "points_only_prob": Field(_NUM, 0.12, check=probability, help="share of prompts made of clicks alone"),
        "val_objects": Field((int,), 4, check=positive, help="validation: objects scored per held-out image"),
        "calibrate": Field((bool,), True, help="at each validation, choose the logit offset (-2..6) that maximises the "
                                              "held-out images' box Dice and store it with the model (prompt.logit_offset)"),
    },
    "inference": {
        "roi_size": Field((list, NONE), None, check=positive),
        "sw_batch_size": Field((int,), 2, check=positive),
        "overlap": Field(_NUM, 0.25, check=fraction),
        "mode": Field((str,), "gaussian", choices=("gaussian", "constant")),
        "tta": Field((bool,), False, help="mirror test-time augmentation: average over flips of tta_axes"),
        "tta_axes": Field((list, NONE), None,
                          check=lambda v: None if all(isinstance(a, int) and not isinstance(a, bool) for a in v) else "expected a list of axis indices",
                          help="spatial axes mirrored by tta (null: all; e.g. [0], left-right on a RAS grid)"),
        "min_component_ml": Field(_NUM + (NONE,), None),
        "region_min_ml": {"*": Field(_NUM, check=lambda v: None if v >= 0 else "must be >= 0")},
        "fill_holes": Field((bool,), False, help="fill holes each predicted region encloses (region models)"),
        "threshold": Field(_NUM + (NONE,), None, check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
                           help="binary decision threshold (classification)"),
        "score_fusion": Field((list, NONE), None,
                              check=lambda v: None if len(v) == 3 and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                                          for a in v) else "expected [w_classifier, w_detector, bias]",
                              help="detector models (chest-xray nodule): a finding's probability becomes "
                                   "sigmoid(w_classifier * classifier logit + w_detector * detector score + bias), "
                                   "weights fitted on validation cases (medcnn export --set)"),
    },
}


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a training config.

    Args:
        path: YAML file.
        overrides: ``key=value`` strings from ``--set``.

    Returns:
        The validated config with defaults filled and paths resolved (``cfg["_path"]`` records
        the file).

    Raises:
        ConfigError: naming the offending key.
    """
    path = Path(path)
    raw = read_yaml(path)
    if overrides:
        raw = deep_merge(raw, _cwd_paths(parse_overrides(overrides), TRAIN_SCHEMA))
    cfg = validate(raw, TRAIN_SCHEMA, base_dir=path.parent.resolve())
    _check_label_convention(cfg, path.parent.resolve())
    _cross_checks(cfg)
    cfg["name"] = cfg["name"] or path.stem
    cfg["_path"] = str(path)
    return cfg


def _cwd_paths(over: dict, schema: dict) -> dict:
    """Make relative path values given on the command line (``--set data.source=data/x``) relative to the
    current folder, as every other command-line path; paths written in the YAML stay relative to the file."""
    out = dict(over)
    for key, value in over.items():
        spec = schema.get(key)
        if isinstance(value, dict) and isinstance(spec, dict):
            out[key] = _cwd_paths(value, spec)
        elif isinstance(spec, Field) and spec.path and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            out[key] = str(Path.cwd() / value)
    return out


def label_target(cfg: dict) -> dict[str, int]:
    """``{name: value}`` a segmentation model is trained on: ``labels.names`` inverted, else BraTS 2023."""
    from medcnn.metrics.labels import BRATS2023

    names = cfg["labels"]["names"]
    return {str(v): int(k) for k, v in names.items()} if names else dict(BRATS2023)


def _check_label_convention(cfg: dict, base_dir: Path) -> None:
    """Resolve a relative YAML ``data.labels`` (against ``base_dir``, the config's folder, else the current folder)
    and check that it maps onto the model's labels."""
    from medcnn.metrics.labels import CONVENTIONS, label_mapping

    spec = cfg["data"].get("labels")
    if spec is None:
        return
    if isinstance(spec, str) and spec not in CONVENTIONS and not Path(spec).expanduser().is_absolute():
        here = (base_dir / spec).expanduser()
        cfg["data"]["labels"] = spec = str((here if here.exists() else Path.cwd() / spec).resolve())
    try:
        label_mapping(spec, label_target(cfg))
    except ValueError as exc:
        raise ConfigError(f"config key 'data.labels': {exc}") from None


def check_region_min_ml(inference: dict, regions: dict) -> None:
    """Every region named in ``inference.region_min_ml`` exists in ``regions`` and has one label to fall back to.

    Raises:
        ConfigError: naming the key, e.g. ``inference.region_min_ml.EX: unknown region``.
    """
    from medcnn.inference.postprocess import region_fallback_label

    for region in inference.get("region_min_ml") or {}:
        try:
            region_fallback_label(region, regions)
        except ValueError as exc:
            raise ConfigError(f"config key 'inference.region_min_ml.{region}': {exc}") from None


def _cross_checks(cfg: dict) -> None:
    from medcnn.engine.tasks import TrainingTask, get_task
    from medcnn.models import list_models, model_task

    task = get_task(cfg["task"])
    defined = isinstance(task, type) and issubclass(task, TrainingTask)
    name = cfg["model"]["name"]
    if name not in list_models():
        raise ConfigError(f"config key 'model.name': unknown model {name!r}; available: {', '.join(list_models())}")
    family = task.model_task if defined else cfg["task"]
    if model_task(name) != family:
        raise ConfigError(f"config key 'model.name': {name!r} is a {model_task(name)} model but task is {cfg['task']!r}")
    t = cfg["train"]
    if defined:
        task.check_config(cfg)
    elif cfg["task"] == "prompt":  # a Trainer subclass outside the engine; its checks stay here until it defines them
        if t["loss"] not in ("dicece",):
            raise ConfigError(f"config key 'train.loss': prompt models train with dicece, not {t['loss']!r}")
    sp = cfg["preprocess"]["spacing"]
    if sp is not None and len(sp) not in (2, 3):
        raise ConfigError(f"config key 'preprocess.spacing': expected 2 or 3 values, got {sp}")
    _check_sizes(cfg)
    data = cfg["data"]
    if data["finding_masks"] is not None:
        if cfg["task"] != "classification":
            raise ConfigError("config key 'data.finding_masks': only for multi-label classification (chexpert / nih data)")
        if "{finding}" not in data["finding_masks"]:
            raise ConfigError(f"config key 'data.finding_masks': {data['finding_masks']!r} needs a {{finding}} placeholder, "
                              "e.g. masks/{case}_{finding}.png")
        if not cfg["model"]["kwargs"].get("finding_maps"):
            raise ConfigError("config key 'data.finding_masks': the masks train a finding-map head; "
                              "set model.kwargs.finding_maps: true (densenet121)")
    if data["folds"] is not None and not 0 <= data["fold"] < data["folds"]:
        raise ConfigError(f"config key 'data.fold': {data['fold']} not in [0, {data['folds']})")
    unknown_aug = set(t["augment"]["names"]) - {"spatial", "intensity", "noise", "mri_artifacts", "resolution"}
    if unknown_aug:
        raise ConfigError(f"config key 'train.augment.names': unknown {sorted(unknown_aug)}; valid: spatial, intensity, noise, mri_artifacts, resolution")


def _check_sizes(cfg: dict) -> None:
    """Fixed input sizes are positive integers, one per axis of ``preprocess.spacing``, and each array they
    make fits the memory limit: a typo such as ``size: [5600, 6800, 5600]`` would otherwise try to allocate
    hundreds of GB for the first case.

    Raises:
        ConfigError: naming the key.
    """
    from medcnn.io.memory import over_limit

    pre, t, inf = cfg["preprocess"], cfg["train"], cfg["inference"]
    size, sp = pre["size"], pre["spacing"]
    if size is not None:
        if not size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise ConfigError(f"config key 'preprocess.size': expected positive integers (voxels per axis), got {size}")
        axes = (len(sp),) if sp is not None else (2, 3)
        if len(size) not in axes:
            raise ConfigError(f"config key 'preprocess.size': expected {' or '.join(map(str, axes))} values (one per axis "
                              f"of preprocess.spacing), got {size}")
    channels = max(1, len(cfg["data"].get("channels") or []))
    square = [pre["square_size"]] * 2 if pre["square_size"] else None
    for key, shape, per in (("preprocess.size", size, 1), ("preprocess.square_size", square, 1),
                            ("train.patch_size", t["patch_size"], t["batch_size"]),
                            ("inference.roi_size", inf["roi_size"], inf["sw_batch_size"])):
        if not shape or not all(isinstance(v, (int, float)) for v in shape):
            continue
        too_big = over_limit(int(math.prod(float(v) for v in shape) * channels * per * 4))
        if too_big:
            batch = f", {per} per batch" if per > 1 else ""
            raise ConfigError(f"config key '{key}': {shape} ({channels} channel(s){batch}, float32) {too_big}")
