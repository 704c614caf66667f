"""CT organ segmentation: one CT volume (HU) -> liver, spleen, kidneys, lungs, pancreas and aorta.

Label values and names are TotalSegmentator's (``medcnn.synth.ct_organs.LABELS``). Outputs as for the generic
segmentation pipeline (:mod:`medcnn.pipelines.segment`): ``<case>.nii.gz`` on the input grid, ``qc/<case>.png``,
``labels.json``; the summary has one ``<organ>_ml`` column per organ (measured on the input grid). A DICOM input
whose Modality is not CT is flagged out of distribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medcnn.errors import InputError
from medcnn.pipelines.segment import SegmentPipeline
from medcnn.synth.ct_organs import LABELS

ORGANS: dict[int, str] = {v: k for k, v in LABELS.items() if v > 0}


@dataclass(frozen=True)
class CtOrgansPipeline(SegmentPipeline):
    """``medcnn predict ct-organs``."""

    name: str = "ct-organs"
    model: str = "ct-organs"
    fields: tuple[str, ...] = (*(f"{n}_ml" for n in ORGANS.values()), "ood", "ood_score")
    channels: tuple[str, ...] = ("CT",)
    modalities: tuple[str, ...] = ("CT",)

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

    def summary(self, volumes: Mapping[str, float]) -> dict[str, Any]:
        return {f"{k}_ml": round(v, 1) for k, v in volumes.items()}


PIPELINE = CtOrgansPipeline()
