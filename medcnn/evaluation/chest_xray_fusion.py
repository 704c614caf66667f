"""The weights fusing the chest X-ray nodule detector's score with the findings classifier's Nodule probability.

Fitted by logistic regression on the findings model's validation radiographs, which neither model trained on;
the result goes into the detector checkpoint's ``inference.score_fusion`` (read by
:func:`medcnn.pipelines.chest_xray_models.fuse_scores`)::

    medcnn calibrate fusion runs/cxr_nodule/last.pt data/cxr_train3
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcnn.errors import InputError
from medcnn.evaluation.chest_xray_sets import training_info
from medcnn.io import load
from medcnn.pipelines.chest_xray_models import detect_nodule, load_chest_xray_models, logit, segment_lungs_heart

logger = logging.getLogger(__name__)


def fit_score_fusion(p_classifier: Sequence[float], detector_logits: Sequence[float], labels: Sequence[int],
                     l2: float = 5e-5, iterations: int = 50) -> list[float]:
    """Weights ``(w_c, w_d, b)`` of :func:`~medcnn.pipelines.chest_xray_models.fuse_scores` by logistic regression (Newton's method).

    Args:
        p_classifier: ``(N,)`` the classifier's probabilities on held-out cases.
        detector_logits: ``(N,)`` the detector's scores (:func:`~medcnn.pipelines.chest_xray_models.nodule_score`) on the same cases.
        labels: ``(N,)`` 0/1.
        l2: ridge penalty on the two weights (not the bias), as scikit-learn's ``1 / (2 C)``.

    Returns:
        ``[w_c, w_d, b]`` rounded to 4 decimals (what ``inference.score_fusion`` stores).

    Raises:
        ValueError: fewer than two cases, or a single class.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.size < 2 or y.min() == y.max():
        raise ValueError("fitting the fusion needs positive and negative cases")
    x = np.stack([np.array([logit(p) for p in p_classifier]), np.asarray(detector_logits, dtype=np.float64),
                  np.ones_like(y)], axis=1)
    reg = np.diag([2.0 * l2, 2.0 * l2, 0.0])
    w = np.zeros(3)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -700, 700)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return [round(float(v), 4) for v in w]


def fusion_data(detector: str, data_dir: str | Path, findings: str = "chest-xray", lungs: str = "chest-xray-lungs",
                progress: bool = True) -> tuple[list[float], list[float], list[int]]:
    """Classifier probability, detector score and Nodule label of the findings model's validation radiographs.

    The cases are the findings checkpoint's ``training.val_cases``, looked up in ``data_dir/manifest.csv`` (a
    generated set: ``case``, ``image``, ``Nodule``). The detector may have trained on other data too, but not on
    these cases: a detector checkpoint listing any of them in its ``training.train_case_ids`` is refused.

    Raises:
        InputError: a validation case the detector trained on, or none of them in the manifest.
    """
    from tqdm.auto import tqdm

    val = set(training_info(findings).get("val_cases") or [])
    trained = training_info(detector).get("train_case_ids")
    if trained is None:
        logger.warning("%s does not list its training cases (an older checkpoint): make sure it never trained on "
                       "the findings model's validation cases", detector)
    seen = val & set(trained or [])
    if seen:
        raise InputError(detector, f"it trained on {len(seen)} of the findings model's validation cases "
                                   f"(e.g. {sorted(seen)[0]}); the fusion must be fitted on cases neither model saw")
    with open(Path(data_dir) / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["case"] in val]
    if not rows:
        raise InputError(findings, f"none of its validation cases is in {data_dir}/manifest.csv")
    models = load_chest_xray_models([findings, lungs, detector])
    k = list(models.findings.config["labels"]["classes"]).index("Nodule")
    p_cls, scores, labels = [], [], []
    for r in tqdm(rows, desc="fusion data", unit="radiograph", disable=not progress):
        img = load(Path(data_dir) / r["image"])
        p_cls.append(float(models.findings.predict_proba(img)[k]))
        scores.append(detect_nodule(models, img, segment_lungs_heart(models, img)[0])[0])
        labels.append(int(r["Nodule"]))
    return p_cls, scores, labels
