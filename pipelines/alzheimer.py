"""Alzheimer's disease vs cognitively normal from a T1 MRI, with a saliency map.

Cases: every T1 image file or DICOM series folder; BIDS
``sub-*/[ses-*/]anat/*_T1w.nii.gz`` gives ids ``sub-XX[_ses-YY]``. Outputs per case:
``<case>_saliency.nii.gz`` (Grad-CAM of the predicted class, [0, 1], on the T1's own grid),
``qc/<case>.png`` (the T1 in three planes with the map overlaid) and ``p_ad, label`` in ``summary.csv``: ``p_ad`` is the model's probability of AD,
``label`` is ``AD`` when ``p_ad`` reaches the decision threshold stored in the checkpoint
(``inference.threshold`` or ``labels.threshold``; 0.5 when absent), else ``CN``.

:func:`medcnn.evaluation.alzheimer.evaluate_summary` scores such a ``summary.csv`` against a BIDS
``participants.tsv`` (subject-level metrics, ROC curve and confusion matrix):

    medcnn evaluate-run alzheimer runs/alzheimer/test/summary.csv data/ad_test/participants.tsv -o runs/alzheimer/test
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
from medcnn.inference import ood
from medcnn.io import load, save
from medcnn.pipelines.base import Pipeline

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
class AlzheimerPipeline(Pipeline):
    """``medcnn predict alzheimer``.

    Attributes:
        saliency: ``"gradcam"`` (default) or ``"occlusion"`` (slower: one network pass per patch).
    """

    name: str = "alzheimer"
    model: str = "alzheimer"
    fields: tuple[str, ...] = ("p_ad", "label", "ood", "ood_score")
    saliency: str = "gradcam"
    qc_convention: str = "radiological"  # QC picture: radiological (patient's left on the right) or neurological
    #: smallest robust scales of the OOD image statistics (foreground on the volume's faces: 5 % of a face)
    ood_min_scale: tuple[tuple[str, float], ...] = (("face_fg", 0.05),)

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

    def check_model(self, model: Any) -> None:
        """Refuse, once before any case, a checkpoint that is not an AD/CN classifier (e.g. another task's).

        Raises:
            InputError: names the checkpoint file.
        """
        if model.task != "classification":
            raise InputError(model.path, f"is a {model.task} model; the alzheimer pipeline needs an AD/CN classifier")
        try:
            ad_index(model.config)
        except InputError as exc:
            raise InputError(model.path, exc.reason) from None

    def ood_model(self, model: Any) -> Any:
        """The model whose checkpoint holds the OOD statistics (``medcnn ood-fit``)."""
        return model

    def ood_layer(self, model: Any, img: Any) -> str:
        """The layer whose pooled output the OOD feature distance uses (the network's bottleneck)."""
        return ood.choose_layer(model.network, model.prepare_input(img)[0][None].to(model.device))

    def ood_stats(self, model: Any, case: Case, img: Any) -> tuple[dict[str, float], list[str]]:
        """Image statistics of the network input and hard reasons (DICOM tags) for the OOD flag.

        Statistics: the foreground fraction of the normalised input (above the crop threshold), intensity
        quantiles inside it and the fraction above 0.9 (a probability map saturates), the extent in mm of the
        foreground box on the model grid and the largest foreground fraction on a face of the volume (a
        cropped field of view is short along some axis and cuts the brain at a face).
        """
        x, info, grid = model.prepare_input(img)
        spec = model.config["preprocess"]
        thr = float(spec.get("crop_threshold") or 0.0)
        fg = x[0] > thr
        stats = {"fg_frac": float(fg.float().mean())}
        stats |= ood.quantiles(x[0][fg], (0.05, 0.25, 0.5, 0.75, 0.95), "fg_")
        stats["fg_above90"] = float((x[0][fg] > 0.9).float().mean()) if fg.any() else 0.0  # a saturated map, not a T1
        for ax, ((a, b), mm) in enumerate(zip(info["box"], spec.get("spacing") or [1.0] * 3)):
            stats[f"extent{ax}_mm"] = float((b - a) * float(mm))
        stats["face_fg"] = ood.face_fraction(grid[0], thr)
        return stats, ood.dicom_reasons(case.inputs[0], modalities=("MR",))

    def ood_measure(self, model: Any, case: Case, img: Any, layer: str | None) -> tuple[dict[str, float], Any, list[str]]:
        """``(image statistics, (D,) pooled features at layer, hard reasons)`` of one case."""
        with ood.FeatureTap(model.network, layer) as tap:
            model.predict_proba(img)
        stats, reasons = self.ood_stats(model, case, img)
        return stats, tap.features, reasons

    def run(self, model: Any, case: Case, img: Any, out_dir: Path) -> dict[str, Any]:
        k = ad_index(model.config)
        probs, flags = ood.forward_and_judge(model.network, ood.section_of(model.config), lambda: model.predict_proba(img),
                                             case.id, lambda: self.ood_stats(model, case, img))
        p_ad = float(probs[k])
        label = POSITIVE if p_ad >= model.decision_threshold else NEGATIVE
        explained = k if label == POSITIVE else model.config["labels"]["classes"].index(NEGATIVE)
        heat = model.saliency(img, class_index=explained, method=self.saliency)
        qc.save_png(qc.volume_figure(img[0], img.affine.numpy(), heat=heat[0], case_id=case.id,
                                     figures={"p(AD)": round(p_ad, 3), "class": label, "saliency": self.saliency},
                                     convention=self.qc_convention), out_dir / "qc" / f"{case.id}.png")
        save(heat.as_tensor().to(torch.float32), out_dir / f"{case.id}_saliency.nii.gz", like=img)
        return {"p_ad": round(p_ad, 4), "label": label, **flags}


PIPELINE = AlzheimerPipeline()


if __name__ == "__main__":  # the former `python -m medcnn.pipelines.alzheimer`, for one release
    raise SystemExit("moved: `medcnn evaluate-run alzheimer SUMMARY PARTICIPANTS` (see its --help)")
