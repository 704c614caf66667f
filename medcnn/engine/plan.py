"""Dataset fingerprint and an automatic training plan (an ordinary medcnn config) for nnU-Net-layout data.

The fingerprint reads every case's header (spacing, size) and samples foreground voxels per channel (intensity
statistics), the plan turns it into target spacing, patch, batch, topology and normalisation under a memory budget.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.errors import ConfigError

log = logging.getLogger(__name__)

#: channel names that mark a CT dataset (dataset.json ``channel_names``)
_CT_NAMES = {"ct", "ct_hu", "hu", "computed tomography"}
#: per-case foreground voxels sampled for the intensity statistics
_SAMPLES_PER_CASE = 10_000
#: spacing ratio (coarse / fine) above which a dataset counts as anisotropic
ANISOTROPY = 3.0
#: most voxels in a CPU patch: a CPU step costs ~voxels x filters^2, and beyond this one epoch of a few dozen
#: cases takes many minutes on a few cores
CPU_MAX_PATCH_VOXELS = 64 ** 3


def _read(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def fingerprint(folder: Path, max_cases: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Fingerprint of a dataset folder in nnU-Net layout (``dataset.json``, ``imagesTr``, ``labelsTr``).

    Returns:
        dict with ``spacings`` / ``shapes`` (per case, first three axes), ``median_spacing``, ``median_shape``,
        ``anisotropy`` (coarse / fine median spacing), ``modality`` (``ct`` or ``mr``), ``channels`` (names),
        ``intensity`` (per channel: mean, std, p00_5, p99_5 of sampled foreground voxels), ``labels`` (names),
        ``class_volume_ml`` (per label: mean and std over the cases), ``spatial_dims`` (2 or 3), ``n_cases``,
        ``nonzero_fraction`` (median over cases of the first channel's non-zero voxel fraction).

    Raises:
        ConfigError: no ``dataset.json`` or no readable case.
    """
    from medcnn.engine.data import records_from_dataset_json

    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.exists():
        raise ConfigError(f"plan: {folder} has no dataset.json (nnU-Net layout: dataset.json, imagesTr, labelsTr)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    records = records_from_dataset_json(folder)
    if max_cases:
        records = records[:max_cases]
    names = meta.get("channel_names", meta.get("modality", {"0": "image"}))
    channels = [str(names[k]) for k in sorted(names, key=int)]
    labels = {int(v): str(k) for k, v in meta.get("labels", {}).items() if int(v) > 0}
    rng = np.random.default_rng(seed)
    spacings, shapes, samples, volumes, nonzero = [], [], [[] for _ in channels], {k: [] for k in labels}, []
    dims = 3
    for rec in records:
        lab, sp = _read(rec["label"])
        if lab.ndim == 2 or (lab.ndim == 3 and lab.shape[2] == 1):
            dims = 2
        shapes.append([int(s) for s in lab.shape[:3]])
        spacings.append(list(sp))
        fg = lab > 0
        voxel_ml = float(np.prod(sp[:dims])) / 1000.0
        for k in volumes:
            volumes[k].append(float((lab == k).sum()) * voxel_ml)
        imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        for c, p in enumerate(imgs[: len(channels)]):
            arr, _ = _read(p)
            if c == 0:
                nonzero.append(float((arr != 0).mean()))
            vals = arr[fg] if fg.any() else arr.ravel()
            if vals.size > _SAMPLES_PER_CASE:
                vals = rng.choice(vals, _SAMPLES_PER_CASE, replace=False)
            samples[c].append(vals)
    if not records:
        raise ConfigError(f"plan: no labelled cases in {folder}")
    intensity = []
    for c, parts in enumerate(samples):
        v = np.concatenate(parts) if parts else np.zeros(1, np.float32)
        intensity.append({"channel": channels[c], "mean": float(v.mean()), "std": float(v.std()),
                          "p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5))})
    med_sp = [float(x) for x in np.median(np.asarray(spacings), axis=0)][:dims]
    med_shape = [int(x) for x in np.median(np.asarray(shapes), axis=0)][:dims]
    modality = "ct" if any(n.strip().lower() in _CT_NAMES for n in channels) else "mr"
    return {
        "n_cases": len(records), "spatial_dims": dims, "channels": channels, "modality": modality,
        "spacings": [s[:dims] for s in spacings], "shapes": [s[:dims] for s in shapes],
        "median_spacing": med_sp, "median_shape": med_shape,
        "anisotropy": float(max(med_sp) / min(med_sp)), "intensity": intensity, "labels": labels,
        "nonzero_fraction": float(np.median(nonzero)) if nonzero else 1.0,
        "class_volume_ml": {labels[k]: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                            for k, v in volumes.items()},
    }


def target_spacing(fp: dict[str, Any]) -> list[float]:
    """Median spacing; on anisotropic data (ratio > 3) the coarse axis takes the 10th percentile of its spacings."""
    sp = list(fp["median_spacing"])
    if fp["anisotropy"] > ANISOTROPY:
        axis = int(np.argmax(sp))
        sp[axis] = float(np.percentile(np.asarray(fp["spacings"])[:, axis], 10))
    return [round(float(s), 4) for s in sp]


def activation_bytes(patch: list[int], filters: list[int], batch: int, spacing: list[float]) -> float:
    """Rough training memory of a DynUNet: ~8 float32 feature maps kept per level and channel (fwd + bwd)."""
    from medcnn.models.registry import nnunet_topology

    _kernels, strides = nnunet_topology(patch, spacing)
    size = [float(p) for p in patch]
    total = 0.0
    for level, st in enumerate(strides):
        size = [s / t for s, t in zip(size, st)]
        total += math.prod(size) * filters[min(level, len(filters) - 1)] * 2  # encoder + decoder
    return total * 8 * 4 * batch


def make_plan(fp: dict[str, Any], *, source: str, device: str = "cpu", memory_gb: float | None = None,
              epochs: int = 100, gpus: int = 1) -> dict[str, Any]:
    """A medcnn segmentation config (the keys of configs/*.yaml) from a fingerprint.

    Patch: the median image size at the target spacing, shrunk along its longest axis (in mm) until one sample
    fits the memory budget (default 8 GB on cuda, 2 GB on cpu); batch: as many samples as fit, 2 to 16. On cpu
    the network is narrower (16-128 filters) and a volume larger than :data:`CPU_MAX_PATCH_VOXELS` at the target
    spacing gets a coarser spacing, so that training fits hours, not days.
    """
    dims = fp["spatial_dims"]
    spacing = target_spacing(fp)
    budget = (memory_gb if memory_gb else (8.0 if device == "cuda" else 2.0)) * 1024 ** 3
    filters = [32, 64, 128, 256, 320, 320] if device == "cuda" else [16, 32, 64, 128, 128, 128]
    size = [int(round(n * s / t)) for n, s, t in zip(fp["median_shape"], fp["median_spacing"], spacing)]
    if device == "cpu" and dims == 3 and math.prod(size) > CPU_MAX_PATCH_VOXELS:
        # a low-resolution plan (nnU-Net's 3d_lowres idea): coarser spacing so that one patch still sees the
        # median image, instead of a full-resolution patch that sees a fraction of it
        f = (math.prod(size) / CPU_MAX_PATCH_VOXELS) ** (1 / 3)
        spacing = [round(float(t) * f, 4) for t in spacing]
        size = [int(round(n * s / t)) for n, s, t in zip(fp["median_shape"], fp["median_spacing"], spacing)]
        log.info("CPU plan: spacing coarsened %.2fx to %s so that a patch of <= %d voxels covers the median image",
                 f, spacing, CPU_MAX_PATCH_VOXELS)
    cap = 256 if dims == 3 else 1024
    patch = [max(8, min(cap, _round16(n))) for n in size]
    while activation_bytes(patch, filters, 2, spacing) > budget and max(patch) > 16:
        mm = [p * s for p, s in zip(patch, spacing)]
        i = int(np.argmax(mm))
        patch[i] = max(16, patch[i] - 16)
    per_sample = activation_bytes(patch, filters, 1, spacing)
    batch = int(max(2, min(16, budget // max(per_sample, 1.0))))
    if device == "cpu":
        batch = min(batch, 2)
    if fp["modality"] == "ct":
        st = fp["intensity"][0]
        norm = {"normalize": "ct", "ct_window": [round(st["p00_5"], 1), round(st["p99_5"], 1)],
                "ct_zscore": [round(st["mean"], 1), round(st["std"], 1)]}
    elif fp.get("nonzero_fraction", 1.0) < 0.75:
        # zero background (e.g. skull-stripped): z-score inside the non-zero voxels, background stays 0 (nnU-Net's
        # use_mask_for_norm rule: cropping to the non-zero box would drop over a quarter of the voxels)
        norm = {"normalize": "brain_mri"}
    else:
        norm = {"normalize": "zscore"}
    n_classes = max(fp["labels"]) if fp["labels"] else 1
    per_gpu = max(1, batch // max(1, gpus)) if gpus > 1 else batch
    return {
        "task": "segmentation", "seed": 0,
        "data": {"source": source, "val_fraction": 0.2, "num_workers": 1},
        "preprocess": {"orientation": "RAS", "spacing": spacing, **norm, "crop_foreground": fp["modality"] != "ct"},
        "model": {"name": "dynunet", "kwargs": {"patch_size": patch, "spacing": spacing,
                                                "filters": filters, "spatial_dims": dims,
                                                "in_channels": len(fp["channels"]), "out_channels": n_classes + 1}},
        "labels": {"names": {int(k): v for k, v in fp["labels"].items()}},
        "train": {"epochs": int(epochs), "batch_size": int(per_gpu), "patch_size": patch, "samples_per_case": 1,
                  "foreground_ratio": 0.33, "loss": "dicece", "optimizer": "adamw", "lr": 0.001,
                  "scheduler": "cosine", "amp": "auto",
                  "augment": {"names": ["spatial", "intensity", "noise"]
                              + (["mri_artifacts"] if fp["modality"] == "mr" else []),
                              "strength": 0.5, "prob": 0.2}},
        "inference": {"roi_size": patch, "sw_batch_size": 1 if device == "cpu" else 4, "overlap": 0.5,
                      "mode": "gaussian"},
    }


def _round16(n: int) -> int:
    return max(16, int(round(n / 16.0)) * 16)


def write_plan(cfg: dict[str, Any], fp: dict[str, Any], path: Path, gpus: int = 1) -> None:
    """Write the plan YAML (launch lines as comments) and ``fingerprint.json`` beside it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [
        "# Written by `medcnn plan`: an ordinary medcnn config, edit freely.",
        f"# fingerprint: {fp['n_cases']} cases, modality {fp['modality']}, median spacing {fp['median_spacing']}, "
        f"anisotropy {fp['anisotropy']:.2f} (details in fingerprint.json)",
        f"# train: medcnn train {path.name} -o runs/auto",
        f"# {gpus} GPUs: torchrun --nproc_per_node {gpus} -m medcnn.cli.main train {path.name} -o runs/auto "
        f"(train.batch_size is per GPU)",
    ]
    path.write_text("\n".join(head) + "\n" + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    (path.parent / "fingerprint.json").write_text(json.dumps(fp, indent=1), encoding="utf-8")


def plan_dataset(folder: Path, path: Path, *, device: str = "cpu", memory_gb: float | None = None,
                 epochs: int | None = None, gpus: int = 1) -> dict[str, Any]:
    """Fingerprint ``folder``, plan it and write the plan to ``path`` (``fingerprint.json`` beside); returns the plan."""
    fp = fingerprint(folder)
    extra = {} if epochs is None else {"epochs": epochs}
    cfg = make_plan(fp, source=str(Path(folder).resolve()), device=device, memory_gb=memory_gb, gpus=gpus, **extra)
    write_plan(cfg, fp, path, gpus=gpus)
    return cfg
