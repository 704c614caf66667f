"""CT organ segmentation: one CT volume (HU) -> liver, spleen, kidneys, lungs, pancreas and aorta.

Label values and names are TotalSegmentator's (``medcnn.synth.ct_organs.LABELS``). Outputs as for the generic
segmentation pipeline (:mod:`medcnn.pipelines.segment`): ``<case>.nii.gz`` on the input grid, ``qc/<case>.png``,
``labels.json``, and QC pictures in the soft-tissue (``qc/<case>.png``) and lung (``qc/<case>_lung.png``) windows;
the summary has ``<organ>_ml`` and ``<organ>_hu`` (mean HU) per organ, measured on the input grid. A DICOM input
whose Modality is not CT is flagged out of distribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medcnn.errors import InputError
from medcnn.pipelines.segment import SegmentPipeline
from medcnn.synth.ct_organs import LABELS
from medcnn.transforms.windows import CT_WINDOWS

ORGANS: dict[int, str] = {v: k for k, v in LABELS.items() if v > 0}


@dataclass(frozen=True)
class CtOrgansPipeline(SegmentPipeline):
    """``medcnn predict ct-organs``."""

    name: str = "ct-organs"
    model: str = "ct-organs"
    fields: tuple[str, ...] = (*(f"{n}_{unit}" for n in ORGANS.values() for unit in ("ml", "hu")), "ood", "ood_score")
    channels: tuple[str, ...] = ("CT",)
    modalities: tuple[str, ...] = ("CT",)
    qc_windows: tuple[tuple[str, tuple[float, float] | None], ...] = (("", CT_WINDOWS["soft_tissue"]), ("_lung", CT_WINDOWS["lung"]))

    def check_model(self, model: Any) -> None:
        """Refuse a checkpoint that is not a one-channel CT model with these organ labels.

        Raises:
            InputError: names the checkpoint file.
        """
        super().check_model(model)
        if model.config["preprocess"].get("normalize") != "ct":
            raise InputError(model.path, "does not take CT in HU (preprocess.normalize is not 'ct'); "
                                         "use `medcnn predict segment` for other models")
        names = self.label_names(model.config.get("labels"))
        if names and names != ORGANS:
            raise InputError(model.path, f"labels {names} are not the ct-organs labels {ORGANS}; "
                                         "use `medcnn predict segment` for other label sets")

    def label_names(self, labels_cfg: dict | None) -> dict[int, str]:
        return super().label_names(labels_cfg) or dict(ORGANS)

    def regions(self, names: Mapping[int, str]) -> dict[str, Any]:
        return {name: value for value, name in ORGANS.items()}

    def summary(self, volumes: Mapping[str, float], means: Mapping[str, float]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, ml in volumes.items():
            row[f"{name}_ml"] = round(ml, 1)
            row[f"{name}_hu"] = "" if ml == 0 else round(means[name], 1)  # mean HU on the input grid
        return row


PIPELINE = CtOrgansPipeline()
