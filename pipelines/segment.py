"""Generic 3D segmentation: any single-channel volume -> the label map of a medcnn segmentation checkpoint.

``medcnn predict segment INPUTS -o OUT --model runs/auto/best.pt`` runs a model trained with
``medcnn train DATASET --auto`` (or any segmentation config) on NIfTI/NRRD/MHA files, DICOM series folders or
an nnU-Net ``imagesTs`` folder (``CASE_0000.nii.gz`` ids lose the channel suffix). Outputs per case:
``<case>.nii.gz`` (the model's label values) on the input grid, ``qc/<case>.png``, ``labels_ml`` in
``summary.csv`` (``name=mL`` per label, measured on the input grid), ``labels.json`` with names and QC colours,
and with ``dicom_seg`` / ``statistics`` as for brain-tumor. The task pipelines (brain-tumor, ct-organs) subclass
it and change discovery, the summary columns and the DICOM modality they expect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn import qc
from medcnn.cases import Case, find_image_cases
from medcnn.errors import InputError
from medcnn.inference import ood
from medcnn.io import geometry, load, save
from medcnn.io.dicom_seg import is_dicom_image, is_dicom_path, segment_names, write_dicom_seg
from medcnn.io.readers import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES
from medcnn.metrics.segmentation import region_masks, region_volumes_ml
from medcnn.metrics.statistics import label_statistics, write_statistics
from medcnn.pipelines.base import Pipeline
from medcnn.preprocessing import prepare

_VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass(frozen=True)
class SegmentPipeline(Pipeline):
    """``medcnn predict segment``: one input channel, the checkpoint's own labels."""

    name: str = "segment"
    model: str = "ct-organs"
    fields: tuple[str, ...] = ("labels_ml", "ood", "ood_score")
    dicom_seg: bool = False  # also write <case>.seg.dcm when the (reference) input is DICOM
    statistics: bool = False  # also write <case>_statistics.json (per label: volume, intensities)
    qc_convention: str = "radiological"  # QC picture: radiological (patient's left on the right) or neurological
    channels: tuple[str, ...] = ("image",)  # input channels, in the model's order
    modalities: tuple[str, ...] = ()  # DICOM Modality values expected (others are an OOD reason); () = any
    qc_channel: int = 0  # the channel drawn under the labels in the QC picture
    qc_windows: tuple[tuple[str, tuple[float, float] | None], ...] = (("", None),)  # (file suffix, value range)

    def discover(self, inputs):
        return _drop_channel_suffix(find_image_cases(inputs, suffixes=_VOLUME_SUFFIXES + DICOM_SUFFIXES, bids=False))

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        seg = [out_dir / f"{case.id}.seg.dcm"] if self.dicom_seg and case.inputs and is_dicom_path(case.inputs[0]) else []
        stats = [out_dir / f"{case.id}_statistics.json"] if self.statistics else []
        pictures = [out_dir / "qc" / f"{case.id}{suffix}.png" for suffix, _ in self.qc_windows]
        return [out_dir / f"{case.id}.nii.gz", *pictures, *seg, *stats]

    def load(self, case: Case):
        return load(case.inputs, spatial_dims=3)

    def check_model(self, model: Any) -> None:
        """Refuse, once before any case, a checkpoint that is not a segmentation model of this many channels.

        Raises:
            InputError: names the checkpoint file.
        """
        if model.task != "segmentation":
            raise InputError(model.path, f"is a {model.task} model; the {self.name} pipeline needs a segmentation model")
        channels = model.config["preprocess"].get("in_channels")
        if channels not in (None, len(self.channels)):
            raise InputError(model.path, f"takes {channels} input channel(s); the {self.name} pipeline gives "
                                         f"{len(self.channels)} ({', '.join(self.channels)})")

    def regions(self, names: Mapping[int, str]) -> dict[str, Any]:
        """Region name -> label value(s) whose volumes the summary reports (here: every label alone)."""
        return {name: value for value, name in names.items()}

    def summary(self, volumes: Mapping[str, float], means: Mapping[str, float]) -> dict[str, Any]:
        """The :attr:`fields` values (without ood) from the region volumes in mL and mean intensities."""
        return {"labels_ml": "; ".join(f"{k}={v:.1f}" for k, v in volumes.items())}

    def ood_model(self, model: Any) -> Any:
        """The model whose checkpoint holds the OOD statistics (``medcnn ood-fit``)."""
        return model

    def ood_layer(self, model: Any, img: Any) -> str:
        """The U-Net's bottleneck, found on one sliding window of zeros."""
        roi = model.config["inference"]["roi_size"]
        return ood.choose_layer(model.network, torch.zeros(1, img.shape[0], *roi, device=model.device))

    def ood_stats(self, model: Any, case: Case, img: Any) -> tuple[dict[str, float], list[str]]:
        """Image statistics for the OOD flag: on the model grid, the foreground (non-zero in any channel)
        fraction of its box and the box's extent in mm, per channel the normalised intensity quantiles in
        the foreground, and the correlations between channels (each anatomy has its own pattern)."""
        grid = model.model_grid(img)
        x, info = prepare(grid, model.config["preprocess"])
        fg = (x != 0).any(0)
        names = list(model.config["preprocess"].get("channel_names") or range(x.shape[0]))
        stats = {"fg_frac": float(fg.float().mean())}
        for ax, ((a, b), mm) in enumerate(zip(info["box"], geometry.voxel_spacing(grid.affine.numpy()))):
            stats[f"extent{ax}_mm"] = float((b - a) * float(mm))
        vals = x[:, fg].double()
        for c, name in enumerate(names):
            stats |= ood.quantiles(vals[c], (0.05, 0.5, 0.95), f"{name}_")
        if vals.shape[1] > 1:
            corr = torch.corrcoef(vals[:, :: max(1, vals.shape[1] // 200_000)])
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    stats[f"corr_{names[i]}_{names[j]}"] = float(torch.nan_to_num(corr[i, j]))
        reasons = ood.dicom_reasons(case.inputs[0], modalities=self.modalities) if self.modalities else []
        return stats, reasons

    def ood_measure(self, model: Any, case: Case, img: Any, layer: str | None) -> tuple[dict[str, float], Any, list[str]]:
        """``(image statistics, (D,) pooled features at layer, hard reasons)`` of one case."""
        with ood.FeatureTap(model.network, layer) as tap:
            model.predict(img)
        stats, reasons = self.ood_stats(model, case, img)
        return stats, tap.features, reasons

    def label_names(self, labels_cfg: dict | None) -> dict[int, str]:
        """``{value: name}`` of the model's labels (``label_<value>`` for values the checkpoint does not name)."""
        names = (labels_cfg or {}).get("names") or {}
        return {int(k): str(v) for k, v in names.items()}

    def run(self, model: Any, case: Case, img, out_dir: Path) -> dict[str, Any]:
        pred, flags = ood.forward_and_judge(model.network, ood.section_of(model.config), lambda: model.predict(img),
                                            case.id, lambda: self.ood_stats(model, case, img))
        labels = pred[0].numpy().astype(np.uint8)
        save(pred.as_tensor().to(torch.uint8), out_dir / f"{case.id}.nii.gz", like=img)
        if self.dicom_seg and is_dicom_image(img):
            write_dicom_seg(pred, out_dir / f"{case.id}.seg.dcm", like=img, algorithm=self.name,
                            segment_names=segment_names(model.config.get("labels")))
        names = self.label_names(model.config.get("labels"))
        if not names:  # a checkpoint without label names: number the classes it can output
            names = {v: f"label_{v}" for v in range(1, int(model.config["model"]["kwargs"].get("out_channels", 2)))}
        qc.write_label_table(out_dir / "labels.json", names)  # names and colours of the label maps' values
        spacing = geometry.voxel_spacing(img.affine.numpy())
        regions = self.regions(names)
        if self.statistics:
            write_statistics(out_dir / f"{case.id}_statistics.json",
                             label_statistics(labels, img, spacing, names, self.channels, regions))
        vols = region_volumes_ml(labels, spacing, regions)
        shown = img[self.qc_channel]
        for suffix, value_range in self.qc_windows:
            qc.save_png(qc.volume_figure(shown, img.affine.numpy(), label=labels, names=names, case_id=case.id,
                                         figures=self.qc_figures(vols), convention=self.qc_convention,
                                         value_range=value_range), out_dir / "qc" / f"{case.id}{suffix}.png")
        return {**self.summary(vols, _region_means(labels, shown, regions)), **flags}

    def qc_figures(self, volumes: Mapping[str, float]) -> dict[str, float]:
        """The figures printed on the QC picture."""
        return {f"{k} mL": round(v, 1) for k, v in volumes.items()}


def _region_means(labels: np.ndarray, image: Any, regions: Mapping[str, Any]) -> dict[str, float]:
    """Mean intensity of ``image`` (X, Y, Z) inside each region (NaN for an empty one)."""
    values = np.asarray(image, dtype=np.float64)
    return {name: float(values[m].mean()) if m.any() else float("nan") for name, m in region_masks(labels, regions).items()}


def _drop_channel_suffix(cases: list[Case]) -> list[Case]:
    """nnU-Net ``CASE_0000`` file ids -> ``CASE`` (single channel), unless that id is taken."""
    taken = {c.id for c in cases}
    for c in cases:
        m = re.match(r"^(.+)_0000$", c.id)
        if m and m.group(1) not in taken:
            taken.add(m.group(1))
            c.id = m.group(1)
    return cases


PIPELINE = SegmentPipeline()
