"""Brain-tumour segmentation: 4-contrast MRI (t1n, t1c, t2w, t2f) -> BraTS 2023 label map.

Outputs per case: ``<case>.nii.gz`` (1 NCR, 2 ED, 3 ET) on the grid of the t1n file,
``qc/<case>.png`` (t1c with the labels), and ``wt_ml, tc_ml, et_ml`` in ``summary.csv``
(WT = 1+2+3, TC = 1+3, ET = 3, volumes measured on the input grid). With ``dicom_seg`` (``--dicom-seg``)
and a DICOM t1n (the first contrast, the reference grid), also ``<case>.seg.dcm`` referencing its series.
``labels.json`` in the output folder names the label values with their QC colours; with ``statistics``
(``--statistics``), ``<case>_statistics.json`` holds per label and region the voxels, mL and each contrast's
intensity mean/std/percentiles inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn import qc
from medcnn.cases import BRAIN_CONTRASTS, Case, find_brain_tumor_cases
from medcnn.errors import InputError
from medcnn.inference import ood
from medcnn.io import geometry, load, save
from medcnn.io.dicom_seg import is_dicom_image, is_dicom_path, segment_names, write_dicom_seg
from medcnn.metrics.segmentation import BRATS_REGIONS, region_volumes_ml
from medcnn.metrics.statistics import label_statistics, write_statistics
from medcnn.pipelines.base import Pipeline
from medcnn.preprocessing import prepare


@dataclass(frozen=True)
class BrainTumorPipeline(Pipeline):
    """``medcnn predict brain-tumor``."""

    name: str = "brain-tumor"
    model: str = "brain-tumor"
    fields: tuple[str, ...] = ("wt_ml", "tc_ml", "et_ml", "ood", "ood_score")
    dicom_seg: bool = False  # also write <case>.seg.dcm when the t1n (reference) input is DICOM
    statistics: bool = False  # also write <case>_statistics.json (per label: volume, intensities per contrast)
    qc_convention: str = "radiological"  # QC picture: radiological (patient's left on the right) or neurological

    def discover(self, inputs):
        return find_brain_tumor_cases(inputs)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        seg = [out_dir / f"{case.id}.seg.dcm"] if self.dicom_seg and case.inputs and is_dicom_path(case.inputs[0]) else []
        stats = [out_dir / f"{case.id}_statistics.json"] if self.statistics else []
        return [out_dir / f"{case.id}.nii.gz", out_dir / "qc" / f"{case.id}.png", *seg, *stats]

    def load(self, case: Case):
        return load(case.inputs, spatial_dims=3)

    def check_model(self, model: Any) -> None:
        """Refuse, once before any case, a checkpoint that is not a 4-contrast segmentation model.

        Raises:
            InputError: names the checkpoint file.
        """
        if model.task != "segmentation":
            raise InputError(model.path, f"is a {model.task} model; the brain-tumor pipeline needs a segmentation model")
        channels = model.config["preprocess"].get("in_channels")
        if channels not in (None, len(BRAIN_CONTRASTS)):
            raise InputError(model.path, f"takes {channels} input channel(s); the brain-tumor pipeline gives "
                                         f"{len(BRAIN_CONTRASTS)} ({', '.join(BRAIN_CONTRASTS)})")

    def ood_model(self, model: Any) -> Any:
        """The model whose checkpoint holds the OOD statistics (``medcnn ood-fit``)."""
        return model

    def ood_layer(self, model: Any, img: Any) -> str:
        """The U-Net's bottleneck, found on one sliding window of zeros."""
        roi = model.config["inference"]["roi_size"]
        return ood.choose_layer(model.network, torch.zeros(1, img.shape[0], *roi, device=model.device))

    def ood_stats(self, model: Any, case: Case, img: Any) -> tuple[dict[str, float], list[str]]:
        """Image statistics for the OOD flag: on the model grid, the foreground (non-zero in any contrast)
        fraction of its box and the box's extent in mm, per contrast the normalised intensity quantiles in
        the foreground, and the correlations between contrasts (a brain has its own pattern)."""
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
        return stats, ood.dicom_reasons(case.inputs[0], modalities=("MR",))

    def ood_measure(self, model: Any, case: Case, img: Any, layer: str | None) -> tuple[dict[str, float], Any, list[str]]:
        """``(image statistics, (D,) pooled features at layer, hard reasons)`` of one case."""
        with ood.FeatureTap(model.network, layer) as tap:
            model.predict(img)
        stats, reasons = self.ood_stats(model, case, img)
        return stats, tap.features, reasons

    def run(self, model: Any, case: Case, img, out_dir: Path) -> dict[str, Any]:
        pred, flags = ood.forward_and_judge(model.network, ood.section_of(model.config), lambda: model.predict(img),
                                            case.id, lambda: self.ood_stats(model, case, img))
        labels = pred[0].numpy().astype(np.uint8)
        save(pred.as_tensor().to(torch.uint8), out_dir / f"{case.id}.nii.gz", like=img)
        if self.dicom_seg and is_dicom_image(img):
            write_dicom_seg(pred, out_dir / f"{case.id}.seg.dcm", like=img, algorithm=self.name,
                            segment_names=segment_names(model.config.get("labels")))
        names = _label_names(model.config.get("labels"))
        qc.write_label_table(out_dir / "labels.json", names)  # names and colours of the label maps' values
        if self.statistics:
            write_statistics(out_dir / f"{case.id}_statistics.json", label_statistics(
                labels, img, geometry.voxel_spacing(img.affine.numpy()), names, BRAIN_CONTRASTS, BRATS_REGIONS))
        vols = region_volumes_ml(labels, geometry.voxel_spacing(img.affine.numpy()), BRATS_REGIONS)
        qc.save_png(qc.volume_figure(img[1], img.affine.numpy(), label=labels, names=names, case_id=case.id,
                                     figures={f"{k} mL": round(v, 2) for k, v in vols.items()},
                                     convention=self.qc_convention), out_dir / "qc" / f"{case.id}.png")
        return {**{f"{k.lower()}_ml": round(v, 3) for k, v in vols.items()}, **flags}


def _label_names(labels_cfg: dict | None) -> dict[int, str]:
    """``{value: name}`` of the model's labels (BraTS 2023 when the checkpoint names none)."""
    names = (labels_cfg or {}).get("names") or {1: "NCR", 2: "ED", 3: "ET"}
    return {int(k): str(v) for k, v in names.items()}


PIPELINE = BrainTumorPipeline()
