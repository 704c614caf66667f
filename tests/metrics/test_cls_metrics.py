"""Classification metrics against scikit-learn (test-only oracle) and hand examples; PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcnn.io.atomic import TMP_MARK
from medcnn.metrics import (
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

skm = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_curve_equal_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    # few distinct values -> many ties, within and across classes
    s = np.round(y * rng.uniform(0, 1.5) + rng.normal(0, 1, n), int(rng.integers(0, 2)))
    assert abs(roc_auc(s, y) - skm.roc_auc_score(y, s)) < 1e-9
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(s, y, drop_intermediate=drop)
        efpr, etpr, ethr = skm.roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(fpr, efpr, atol=1e-12)
        np.testing.assert_allclose(tpr, etpr, atol=1e-12)
        assert thr[0] == np.inf
        np.testing.assert_array_equal(thr[1:], ethr[1:])
        trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
        assert abs(trapezoid(tpr, fpr) - roc_auc(s, y)) < 1e-9


def test_roc_auc_hand_values_and_tensors() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # all tied
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([True, False])) == 1.0
    assert roc_auc([1.0, 2.0, 3.0], [1, 0, 0]) == 0.0


def test_roc_auc_single_class_is_nan_with_warning() -> None:
    with pytest.warns(RuntimeWarning, match="one class"):
        assert math.isnan(roc_auc([0.1, 0.2, 0.9], [1, 1, 1]))
    with pytest.warns(RuntimeWarning):
        fpr, tpr, _ = roc_curve([0.1, 0.2], [0, 0])
    assert np.isnan(tpr).all() and not np.isnan(fpr).any()


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error([0.1, 1.2], [0, 1])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.1, 0.2], [0, 1], n_bins=0)
    with pytest.raises(ValueError, match="threshold"):
        binary_report([0.1, 0.9], [0, 1], threshold=2.0)
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0.5, 1], [0, 1])


def test_thresholded_metrics_hand_example() -> None:
    preds = [1, 1, 0, 0, 1, 0, 1, 0, 0, 0]
    labels = [1, 0, 0, 0, 1, 1, 1, 0, 0, 1]
    # TP: idx 0,4,6 = 3; FN: idx 5,9 = 2; FP: idx 1 = 1; TN: idx 2,3,7,8 = 4
    cm = confusion_matrix(preds, labels)
    np.testing.assert_array_equal(cm, [[4, 1], [2, 3]])
    sens, spec = sensitivity_specificity(preds, labels)
    assert (sens, spec) == (pytest.approx(3 / 5), pytest.approx(4 / 5))
    assert balanced_accuracy(preds, labels) == pytest.approx(0.7)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(sensitivity_specificity([0, 1], [0, 0])[0])


def test_multiclass_confusion_and_balanced_accuracy_equal_sklearn(rng: np.random.Generator) -> None:
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    np.testing.assert_array_equal(confusion_matrix(p, y), skm.confusion_matrix(y, p))
    assert balanced_accuracy(p, y) == pytest.approx(skm.balanced_accuracy_score(y, p), abs=1e-12)
    assert confusion_matrix([0, 1], [1, 1], n_classes=5).shape == (5, 5)


def test_ece_calibrated_small_overconfident_large(rng: np.random.Generator) -> None:
    p = rng.random(40000)
    y = (rng.random(40000) < p).astype(int)
    calibrated = expected_calibration_error(p, y)
    assert calibrated < 0.015
    overconfident = np.where(p > 0.5, 0.99, 0.01)  # true frequency in each half is 0.75 / 0.25
    assert expected_calibration_error(overconfident, y) == pytest.approx(0.24, abs=0.02)
    # hand example, 10 bins: (0.2 vs 1/2) and (0.9 vs 1) each on half the cases
    assert expected_calibration_error([0.2, 0.2, 0.9, 0.9], [0, 1, 1, 1], n_bins=10) == pytest.approx(0.2)
    # multi-class, top-label confidence: always 0.7 confident, right 70 % of the time
    probs = np.tile([0.7, 0.2, 0.1], (1000, 1))
    labels = np.where(np.arange(1000) < 700, 0, 1)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, np.ones(1000, int)) == pytest.approx(0.7)


def test_multilabel_auroc_ignores_nan_labels(rng: np.random.Generator) -> None:
    n, k = 300, 3
    labels = rng.integers(0, 2, (n, k)).astype(float)
    probs = np.clip(labels * 0.3 + rng.random((n, k)) * 0.7, 0, 1)
    labels[rng.random((n, k)) < 0.3] = np.nan
    # nan labels carry "perfect-looking" scores that would change the AUROC if not ignored
    probs[np.isnan(labels)] = 1.0
    labels[:, 2] = np.where(np.isnan(labels[:, 2]), np.nan, 1.0)  # one class only among the known
    with pytest.warns(RuntimeWarning, match="Edema"):
        out = multilabel_auroc(probs, labels, names=["Atelectasis", "Effusion", "Edema"])
    for j, name in enumerate(["Atelectasis", "Effusion"]):
        known = ~np.isnan(labels[:, j])
        expected = skm.roc_auc_score(labels[known, j], probs[known, j])
        assert out["per_finding"][name] == pytest.approx(expected, abs=1e-9)
        assert out["n_labelled"][name] == known.sum()
    assert math.isnan(out["per_finding"]["Edema"])
    assert out["mean"] == pytest.approx(np.mean([out["per_finding"]["Atelectasis"], out["per_finding"]["Effusion"]]))
    default = multilabel_auroc(probs[:, :2], labels[:, :2])
    assert list(default["per_finding"]) == ["finding_0", "finding_1"]
    with pytest.raises(ValueError, match="0, 1 or nan"):
        multilabel_auroc(probs, np.full((n, k), 2.0))


def test_binary_report_aggregates_and_serialises(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 500)
    p = np.clip(0.35 * y + 0.65 * rng.random(500), 0, 1)
    rep = binary_report(p, y, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert rep["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert rep["n"] == 500 and rep["n_positive"] == int(y.sum())
    assert rep["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    assert rep["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert rep["specificity"] == pytest.approx(tn / (tn + fp))
    assert rep["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert rep["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert rep["ece"] == pytest.approx(expected_calibration_error(p, y))
    assert rep["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert len(rep["roc"]["fpr"]) == len(rep["roc"]["tpr"]) >= 2
    json.dumps(rep)
    with pytest.warns(RuntimeWarning, match="single class"):
        one = binary_report([0.2, 0.7], [1, 1])
    assert math.isnan(one["auroc"]) and math.isnan(one["specificity"]) and one["sensitivity"] == 0.5


def _check_png(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # axes, text, curves: not a blank canvas
    assert not [p for p in path.parent.iterdir() if TMP_MARK in p.name]


def test_plot_roc_writes_png(tmp_path: Path, rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 200)
    curves = {}
    for name, noise in (("good", 0.3), ("weak", 1.0)):
        s = y + rng.normal(0, noise, 200)
        fpr, tpr, _ = roc_curve(s, y)
        curves[name] = (fpr, tpr, roc_auc(s, y))
    curves["undefined auc"] = ([0.0, 1.0], [0.0, 1.0], float("nan"))
    out = plot_roc(curves, tmp_path / "sub" / "roc.png")
    assert out == tmp_path / "sub" / "roc.png"
    _check_png(out, (640, 640))
    _check_png(plot_roc({"a": curves["good"]}, tmp_path / "small.png", size=(320, 240)), (320, 240))
    with Image.open(out) as im:  # the first curve's colour (tab:blue) is on the image
        assert (31, 119, 180) in {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 16)}
    with pytest.raises(ValueError, match="at least one"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="equal length"):
        plot_roc({"bad": ([0, 1], [0, 0.5, 1], 0.5)}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_confusion_writes_png(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 2], [4, 40, 9], [0, 1, 33]])
    out = plot_confusion(cm, ["CN", "MCI", "AD"], tmp_path / "cm.png")
    _check_png(out, (640, 640))
    _check_png(plot_confusion(cm, ["CN", "MCI", "a very long class name"], tmp_path / "cmn.png",
                              size=(500, 420), normalize=True), (500, 420))
    with pytest.raises(ValueError, match="names"):
        plot_confusion(cm, ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="square"):
        plot_confusion(cm[:2], ["a", "b"], tmp_path / "bad.png")
