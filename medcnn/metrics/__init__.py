"""Metrics: segmentation (Dice, HD95, NSD, volumes), classification (AUROC, ECE...) and folder evaluation.

Segmentation metrics are MONAI's, with BraTS conventions for empty masks and distances in mm::

    from medcnn.metrics import segmentation_metrics, evaluate_folders
    m = segmentation_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))        # {"WT": {"dice": ...}, ...}
    rows = evaluate_folders("preds/", "BraTS2023/", "metrics.csv")

Classification functions take the prediction first and the reference second (``f(probs, labels)``)
and match scikit-learn's numbers without depending on it.
"""

from __future__ import annotations

from medcnn.metrics.classification import (
    balanced_accuracy,
    binary_report,
    confusion_matrix,
    expected_calibration_error,
    multilabel_auroc,
    plot_confusion,
    plot_roc,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)
from medcnn.metrics.evaluate import evaluate_folders, find_reference, pair_cases
from medcnn.metrics.segmentation import (
    BRATS_HD95_PENALTY_MM,
    BRATS_REGIONS,
    dice_score,
    normalize_regions,
    region_masks,
    region_volumes_ml,
    segmentation_metrics,
)

__all__ = [
    "BRATS_HD95_PENALTY_MM",
    "BRATS_REGIONS",
    "balanced_accuracy",
    "binary_report",
    "confusion_matrix",
    "dice_score",
    "evaluate_folders",
    "expected_calibration_error",
    "find_reference",
    "multilabel_auroc",
    "normalize_regions",
    "pair_cases",
    "plot_confusion",
    "plot_roc",
    "region_masks",
    "region_volumes_ml",
    "roc_auc",
    "roc_curve",
    "segmentation_metrics",
    "sensitivity_specificity",
]
