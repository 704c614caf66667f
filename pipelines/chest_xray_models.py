"""The chest X-ray pipeline's networks and what it computes from their outputs (masks, nodule score, fusion)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medcnn.errors import InputError

#: the bundled classifier's findings, spelled as in CheXpert / TorchXRayVision
FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax")
NODULE_CHANNEL = "nodule"  # the nodule detector's one output channel (``data.masks: [nodule]``)
#: the detector's score is its highest probability within the lung mask grown by this many pixels
NODULE_LUNG_MARGIN_PX = 5
_LOGIT_EPS = 1e-7  # probabilities clipped to [eps, 1 - eps] before the logit (float32 cannot tell 1 - 6e-8 from 1)


@dataclass
class ChestXrayModels:
    """The networks of the pipeline (any may be ``None`` when the others alone are wanted).

    Attributes:
        findings: multi-label classifier (:class:`medcnn.predictor.Model`), or None.
        lungs: lung/heart segmenter (:class:`medcnn.predictor.Model`), or None.
        nodule: nodule detector (:class:`medcnn.predictor.Model`), or None.
    """

    findings: Any = None
    lungs: Any = None
    nodule: Any = None

    def info(self) -> dict[str, Any]:
        """Provenance of the checkpoints for ``run.json``."""
        roles = (("findings", self.findings), ("lungs", self.lungs), ("nodule", self.nodule))
        return {role: m.provenance() for role, m in roles if m is not None}


def load_chest_xray_models(refs: Sequence[str] | str | None = None, device: str | None = None) -> ChestXrayModels:
    """Load the findings, lung and nodule models.

    Args:
        refs: bundled names or checkpoint paths; each replaces the bundled model of its task
            (a classification checkpoint the findings model; a segmentation one with a ``nodule``
            channel the nodule detector, any other segmentation one the lung model).
            ``None``: the bundled models.
        device: passed to :func:`medcnn.load_model`.

    The bundled nodule detector joins the bundled findings model only: a findings model of your own keeps its
    Nodule probability unless a detector is given too.

    Raises:
        InputError: a checkpoint that is missing, unsafe, or of a kind the pipeline cannot use.
    """
    from medcnn.predictor import bundled_path, load_model

    models = ChestXrayModels()
    for ref in [refs] if isinstance(refs, str) else list(refs or []):
        m = load_model(ref, device=device)
        if m.task == "classification":
            if not m.config["labels"].get("multilabel"):
                raise InputError(ref, "the chest-xray pipeline needs a multi-label findings classifier")
            models.findings = m
        elif list(m.config["labels"].get("channels") or []) == [NODULE_CHANNEL]:
            models.nodule = m
        else:
            models.lungs = m
    if models.findings is None:
        models.findings = load_model("chest-xray", device=device)
        if models.nodule is None and bundled_path("chest-xray-nodule") is not None:
            models.nodule = load_model("chest-xray-nodule", device=device)
    if models.lungs is None:
        models.lungs = load_model("chest-xray-lungs", device=device)
    channels = list(models.lungs.config["labels"].get("channels") or [])
    if "lungs" not in channels:
        raise InputError(models.lungs.path, f"the segmentation model's channels are {channels or 'unnamed'}; "
                                            "the chest-xray pipeline needs a 'lungs' channel (data.masks: [lungs, heart])")
    return models


def logit(p: float) -> float:
    """``log(p / (1 - p))`` of ``p`` clipped to [1e-7, 1 - 1e-7]."""
    p = min(max(float(p), _LOGIT_EPS), 1.0 - _LOGIT_EPS)
    return math.log(p / (1.0 - p))


def nodule_score(prob: np.ndarray, lungs: np.ndarray) -> float:
    """A radiograph's nodule score: the logit of the detector's highest probability inside the (grown) lungs.

    The logit, not the probability: a detector's per-pixel probability is not a per-radiograph one (the
    fusion weights map it), and a Dice-trained detector puts 0.9999 on rib crossings and 0.999999 on nodules,
    which a probability rounded for ``summary.csv`` would not tell apart.

    Args:
        prob: ``(H, W)`` nodule probability on the input pixel grid.
        lungs: ``(H, W)`` bool lung mask on the same grid (all False: the whole image counts).

    Returns: a logit in about [-16, 16].
    """
    if lungs.any():
        prob = np.where(ndimage.binary_dilation(lungs, iterations=NODULE_LUNG_MARGIN_PX), prob, 0.0)
    return logit(float(prob.max()))


def fuse_scores(p_classifier: float, detector_logit: float, weights: Sequence[float] | None = None) -> float:
    """A finding's probability from a classifier's probability and a detector's score (a logit).

    ``sigmoid(w_c * logit(p_classifier) + w_d * detector_logit + b)`` with ``weights = (w_c, w_d, b)``, fitted
    by logistic regression on validation radiographs neither model trained on (the nodule checkpoint's
    ``inference.score_fusion``, :func:`medcnn.evaluation.chest_xray_fusion.fit_score_fusion`); ``None``: the
    plain mean of the two logits, ``(0.5, 0.5, 0)``.
    """
    w_c, w_d, b = (0.5, 0.5, 0.0) if weights is None else (float(w) for w in weights)
    z = w_c * logit(p_classifier) + w_d * float(detector_logit) + b
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def segment_lungs_heart(models: ChestXrayModels, img: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` bool lung mask (:func:`clean_lungs`) and heart mask (largest component) on ``img``'s grid."""
    seg = models.lungs.predict(img, probabilities=True)
    channels = list(models.lungs.config["labels"]["channels"])
    lungs = clean_lungs(seg[channels.index("lungs")].numpy() >= 0.5)
    heart = seg[channels.index("heart")].numpy() >= 0.5 if "heart" in channels else np.zeros_like(lungs)
    if heart.any():  # the cardiac silhouette is one blob: keep its largest component
        lab, n = ndimage.label(heart)
        if n > 1:
            heart = lab == 1 + int(np.argmax(ndimage.sum_labels(heart, lab, index=np.arange(1, n + 1))))
    return lungs, heart


def detect_nodule(models: ChestXrayModels, img: Any, lungs: np.ndarray) -> tuple[float, np.ndarray]:
    """The nodule detector's score (:func:`nodule_score`) and its ``(H, W)`` probability map on ``img``'s grid."""
    det = models.nodule.predict(img, probabilities=True)[0].numpy()
    return nodule_score(det, lungs), det


def clean_lungs(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components of an ``(H, W)`` bool lung mask (right and left lung), fill holes."""
    lab, n = ndimage.label(mask)
    if n > 2:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        keep = 1 + np.argsort(sizes)[::-1][:2]
        # a second component far smaller than the first is noise, not a lung
        keep = [k for k in keep if sizes[k - 1] >= 0.1 * sizes.max()]
        mask = np.isin(lab, keep)
    return ndimage.binary_fill_holes(mask)
