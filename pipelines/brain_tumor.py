"""Brain-tumour segmentation: 4-contrast MRI (t1n, t1c, t2w, t2f) -> BraTS 2023 label map.

Outputs per case: ``<case>.nii.gz`` (1 NCR, 2 ED, 3 ET) on the grid of the t1n file,
``qc/<case>.png`` (t1c with the labels), and ``wt_ml, tc_ml, et_ml`` in ``summary.csv``
(WT = 1+2+3, TC = 1+3, ET = 3, volumes measured on the input grid). With ``dicom_seg`` (``--dicom-seg``)
and a DICOM t1n (the first contrast, the reference grid), also ``<case>.seg.dcm`` referencing its series.
``labels.json`` in the output folder names the label values with their QC colours; with ``statistics``
(``--statistics``), ``<case>_statistics.json`` holds per label and region the voxels, mL and each contrast's
intensity mean/std/percentiles inside it. Everything but discovery, the regions and the columns is the generic
segmentation pipeline's (:mod:`medcnn.pipelines.segment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medcnn.cases import BRAIN_CONTRASTS, find_brain_tumor_cases
from medcnn.metrics.segmentation import BRATS_REGIONS
from medcnn.pipelines.segment import SegmentPipeline


@dataclass(frozen=True)
class BrainTumorPipeline(SegmentPipeline):
    """``medcnn predict brain-tumor``."""

    name: str = "brain-tumor"
    model: str = "brain-tumor"
    fields: tuple[str, ...] = ("wt_ml", "tc_ml", "et_ml", "ood", "ood_score")
    channels: tuple[str, ...] = BRAIN_CONTRASTS
    modalities: tuple[str, ...] = ("MR",)
    qc_channel: int = 1  # t1c: enhancing tumour shows

    def discover(self, inputs):
        return find_brain_tumor_cases(inputs)

    def label_names(self, labels_cfg: dict | None) -> dict[int, str]:
        """``{value: name}`` of the model's labels (BraTS 2023 when the checkpoint names none)."""
        names = (labels_cfg or {}).get("names") or {1: "NCR", 2: "ED", 3: "ET"}
        return {int(k): str(v) for k, v in names.items()}

    def regions(self, names: Mapping[int, str]) -> dict[str, Any]:
        return dict(BRATS_REGIONS)

    def summary(self, volumes: Mapping[str, float], means: Mapping[str, float]) -> dict[str, Any]:
        return {f"{k.lower()}_ml": round(v, 3) for k, v in volumes.items()}

    def qc_figures(self, volumes: Mapping[str, float]) -> dict[str, float]:
        return {f"{k} mL": round(v, 2) for k, v in volumes.items()}


PIPELINE = BrainTumorPipeline()
