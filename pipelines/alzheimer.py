"""Alzheimer's disease vs cognitively normal from a T1 MRI, with a saliency map.

Cases (DESIGN §3): every T1 image file or DICOM series folder; BIDS
``sub-*/[ses-*/]anat/*_T1w.nii.gz`` gives ids ``sub-XX[_ses-YY]``. Outputs per case:
``<case>_saliency.nii.gz`` (Grad-CAM of the predicted class, [0, 1], on the T1's own grid),
``qc/<case>.png`` (the T1 in three planes with the map overlaid) and ``p_ad, label`` in ``summary.csv``: ``p_ad`` is the model's probability of AD,
``label`` is ``AD`` when ``p_ad`` reaches the decision threshold stored in the checkpoint
(``inference.threshold`` or ``labels.threshold``; 0.5 when absent), else ``CN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medcnn import qc
from medcnn.cases import Case, find_image_cases
from medcnn.errors import InputError
from medcnn.io import load, save

#: class names the pipeline reports (the checkpoint's ``labels.classes`` must contain both)
POSITIVE, NEGATIVE = "AD", "CN"


def ad_index(config: dict[str, Any]) -> int:
    """Index of the AD class among the checkpoint's classes.

    Raises:
        InputError: the model was not trained on AD/CN classes.
    """
    classes = [str(c) for c in (config.get("labels") or {}).get("classes") or []]
    if POSITIVE not in classes or NEGATIVE not in classes:
        raise InputError(None, f"the model's classes are {classes or 'unknown'}; the alzheimer pipeline needs AD and CN")
    return classes.index(POSITIVE)


@dataclass(frozen=True)
class AlzheimerPipeline:
    """``medcnn predict alzheimer``.

    Attributes:
        saliency: ``"gradcam"`` (default) or ``"occlusion"`` (slower: one network pass per patch).
    """

    name: str = "alzheimer"
    model: str = "alzheimer"
    fields: tuple[str, ...] = ("p_ad", "label")
    saliency: str = "gradcam"

    def discover(self, inputs: Sequence[str | Path]) -> list[Case]:
        return find_image_cases(inputs)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.id}_saliency.nii.gz", out_dir / "qc" / f"{case.id}.png"]

    def load(self, case: Case) -> Any:
        img = load(case.inputs, series=case.extra.get("series"))
        if img.ndim != 4:
            raise InputError(case.inputs[0], f"expected a 3D T1 volume, got a {img.ndim - 1}D image")
        if img.shape[0] != 1:
            raise InputError(case.inputs[0], f"expected one T1 image, got {img.shape[0]} channels")
        return img

    def run(self, model: Any, case: Case, img: Any, out_dir: Path) -> dict[str, Any]:
        k = ad_index(model.config)
        probs = model.predict_proba(img)
        p_ad = float(probs[k])
        label = POSITIVE if p_ad >= model.decision_threshold else NEGATIVE
        explained = k if label == POSITIVE else model.config["labels"]["classes"].index(NEGATIVE)
        heat = model.saliency(img, class_index=explained, method=self.saliency)
        qc.save_png(qc.volume_montage(img[0], img.affine.numpy(), heat=heat[0]), out_dir / "qc" / f"{case.id}.png")
        save(heat.as_tensor().to(torch.float32), out_dir / f"{case.id}_saliency.nii.gz", like=img)
        return {"p_ad": round(p_ad, 4), "label": label}


PIPELINE = AlzheimerPipeline()
