"""k-fold cross-validation by subject for binary classification (e.g. AD vs CN).

:func:`cross_validate` trains one model per fold with :func:`medcnn.engine.train`
(``data.folds=k``, ``data.fold=i``: stratified, seeded, all images of a subject in one fold),
then scores each fold's best checkpoint on that fold's validation images exactly as users will
run it (:meth:`medcnn.predictor.Model.predict_proba` on the image files), and pools the
predictions of all folds. Outputs in ``out_dir``:

* ``fold<i>/``: the training run (``best.pt``, ``last.pt``, ``log.csv``...) plus ``roc.png`` and
  ``confusion.png`` of that fold's validation subjects;
* ``predictions.csv``: ``subject, case, fold, label, p_<positive>, pred``, one row per image;
* ``crossval.csv``: one row per fold and a ``pooled`` row (AUROC, balanced accuracy,
  sensitivity, specificity, accuracy, ECE, Brier, confusion counts);
* ``roc.png`` (every fold and the pooled curve) and ``confusion.png`` (pooled).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.errors import ConfigError
from medcnn.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

#: metric columns of crossval.csv (besides fold, n, n_positive, n_negative and the confusion counts)
METRICS = ("auroc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "ece", "brier")


def _fold_overrides(overrides: Sequence[str] | None, folds: int, fold: int) -> list[str]:
    kept = [o for o in (overrides or []) if not o.split("=", 1)[0].strip() in ("data.folds", "data.fold")]
    return [*kept, f"data.folds={folds}", f"data.fold={fold}"]


def _validation_records(cfg: dict) -> tuple[list[dict], list[str]]:
    """The validation records of the fold a validated config describes, split as the trainer does."""
    from medcnn.engine.data import find_records, split_subjects

    recs = find_records(cfg["data"])
    classes = list(cfg["data"]["classes"] or sorted({r["label"] for r in recs}))
    d = cfg["data"]
    _, val_s = split_subjects([r["subject"] for r in recs], val_fraction=d["val_fraction"], seed=cfg["seed"],
                              folds=d["folds"], fold=d["fold"], strata=[r["label"] for r in recs])
    vs = set(val_s)
    return [r for r in recs if r["subject"] in vs], classes


def _positive_class(classes: Sequence[str], positive: str | None) -> str:
    if len(classes) != 2:
        raise ConfigError(f"cross_validate scores binary classifiers; data.classes has {len(classes)} classes: {list(classes)}")
    if positive is None:
        return "AD" if "AD" in classes else str(classes[1])
    if positive not in classes:
        raise ConfigError(f"positive class {positive!r} is not one of data.classes {list(classes)}")
    return positive


def _report(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    from medcnn.metrics import binary_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fold with one class: nan metrics, said in the log
        return binary_report(probs, labels, threshold=threshold)


def _row(fold: str | int, rep: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    (tn, fp), (fn, tp) = rep["confusion_matrix"]
    row: dict[str, Any] = {"fold": fold, "n": rep["n"], "n_positive": rep["n_positive"], "n_negative": rep["n_negative"],
                           "threshold": rep["threshold"]}
    row.update({k: float(rep[k]) for k in METRICS})
    row.update(tn=tn, fp=fp, fn=fn, tp=tp)
    row.update(extra or {})
    return row


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def _figures(curves: dict[str, tuple[list[float], list[float], float]], cm: list[list[int]], names: list[str],
             out: Path, title: str) -> None:
    from medcnn.plotting import plot_confusion, plot_roc

    finite = {k: v for k, v in curves.items() if np.isfinite(v[0]).all() and np.isfinite(v[1]).all()}
    if finite:
        plot_roc(finite, out / "roc.png", title=f"ROC curve ({title})")
    else:
        logger.warning("%s: no ROC curve (the labels hold a single class)", title)
    plot_confusion(np.asarray(cm), names, out / "confusion.png", title=f"Confusion matrix ({title})")


def cross_validate(
    config: str | Path,
    folds: int = 5,
    overrides: Sequence[str] | None = None,
    out_dir: str | Path = "runs/crossval",
    *,
    positive: str | None = None,
    device: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and evaluate a binary classifier with k-fold cross-validation by subject.

    Args:
        config: training YAML (``task: classification``, two classes).
        folds: k (>= 2).
        overrides: ``key=value`` overrides applied to every fold (``data.folds``/``data.fold``
            are set here and replaced if given).
        out_dir: output folder (one ``fold<i>`` run folder per fold + the files listed above).
        positive: the positive class name (default ``AD`` if among the classes, else the second).
        device: where the fold models are evaluated (default CPU; training uses ``train.device``).
        resume: continue folds from their ``last.pt`` (folds whose ``result.json`` exists are
            not retrained).

    Returns:
        ``{"folds": [row per fold], "pooled": row, "mean": {metric: mean over folds},
        "std": {metric: std}, "positive": name, "classes": [negative, positive],
        "out_dir": path}``; each row holds the metrics of :data:`METRICS`, counts and the
        confusion counts ``tn, fp, fn, tp``. Under ``torchrun`` only rank 0 evaluates; other
        ranks return ``{}``.

    Raises:
        ConfigError: invalid config, not classification, not binary, ``folds < 2``.
    """
    from medcnn.engine.schema import load_train_config
    from medcnn.engine.trainer import train
    from medcnn.io import load
    from medcnn.metrics import confusion_matrix
    from medcnn.predictor import load_model

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    out = Path(out_dir)
    cfg0 = load_train_config(config, _fold_overrides(overrides, folds, 0))  # fail fast, before any training
    if cfg0["task"] != "classification":
        raise ConfigError(f"cross_validate is for classification configs; {config} has task {cfg0['task']!r}")
    rank = int(os.environ.get("RANK", "0"))
    fold_rows: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    curves: dict[str, tuple[list[float], list[float], float]] = {}
    pos_name = neg_name = ""
    for i in range(folds):
        ov = _fold_overrides(overrides, folds, i)
        run = out / f"fold{i}"
        if resume and (run / "result.json").exists():
            logger.info("fold %d/%d: already trained (%s)", i + 1, folds, run)
        else:
            logger.info("fold %d/%d: training in %s", i + 1, folds, run)
            train(config, ov, run, resume=resume and (run / "last.pt").exists())
        if rank != 0:
            continue
        cfg = load_train_config(config, ov)
        val_recs, classes = _validation_records(cfg)
        pos_name = _positive_class(classes, positive)
        neg_name = next(c for c in classes if c != pos_name)
        best = run / "best.pt"
        if not best.exists():
            raise ConfigError(f"fold {i}: training left no {best} (no finite validation metric?)")
        model = load_model(best, device=device)
        stored = set(model.config.get("training", {}).get("val_cases") or [])
        if stored and stored != {r["case"] for r in val_recs}:
            raise ConfigError(f"fold {i}: the validation cases of {best} differ from this config's split "
                              "(data or config changed since training?)")
        k_pos = [str(c) for c in model.config["labels"]["classes"]].index(pos_name)
        probs, labels = [], []
        for r in val_recs:
            p = float(model.predict_proba(load(r["image"]))[k_pos])
            y = int(r["label"] == pos_name)
            probs.append(p)
            labels.append(y)
            predictions.append({"subject": r["subject"], "case": r["case"], "fold": i, "label": r["label"],
                                f"p_{pos_name.lower()}": round(p, 6),
                                "pred": pos_name if p >= model.decision_threshold else neg_name})
        rep = _report(np.asarray(probs), np.asarray(labels), model.decision_threshold)
        row = _row(i, rep, {"subjects": len({r["subject"] for r in val_recs}),
                            "best_epoch": model.config.get("training", {}).get("epoch")})
        fold_rows.append(row)
        curves[f"fold {i}"] = (rep["roc"]["fpr"], rep["roc"]["tpr"], rep["auroc"])
        _figures({f"fold {i}": curves[f"fold {i}"]}, rep["confusion_matrix"], [neg_name, pos_name], run, f"fold {i}")
        logger.info("fold %d: AUROC %.3f, balanced accuracy %.3f (%d images)", i, rep["auroc"], rep["balanced_accuracy"], rep["n"])
    if rank != 0:
        return {}
    subjects_seen: dict[str, int] = {}
    for p in predictions:
        if subjects_seen.setdefault(p["subject"], p["fold"]) != p["fold"]:  # cannot happen with split_subjects
            raise ConfigError(f"subject {p['subject']} was validated in folds {subjects_seen[p['subject']]} and {p['fold']}")
    p_key = f"p_{pos_name.lower()}"
    all_p = np.asarray([p[p_key] for p in predictions], dtype=np.float64)
    all_y = np.asarray([int(p["label"] == pos_name) for p in predictions])
    thresholds = {r["threshold"] for r in fold_rows}
    pooled_rep = _report(all_p, all_y, float(np.mean(list(thresholds))))
    pooled = _row("pooled", pooled_rep, {"subjects": len(subjects_seen)})
    # the pooled confusion matrix counts each fold's own decisions
    pred_y = np.asarray([int(p["pred"] == pos_name) for p in predictions])
    cm = confusion_matrix(pred_y, all_y, 2).tolist()
    (pooled["tn"], pooled["fp"]), (pooled["fn"], pooled["tp"]) = cm
    curves["pooled"] = (pooled_rep["roc"]["fpr"], pooled_rep["roc"]["tpr"], pooled_rep["auroc"])
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(predictions, out / "predictions.csv")
    _write_csv([*fold_rows, pooled], out / "crossval.csv")
    _figures(curves, cm, [neg_name, pos_name], out, f"{folds}-fold cross-validation")
    from medcnn.metrics.classification import plot_reliability

    plot_reliability(all_p, all_y, out / "reliability.png", title=f"Reliability ({folds}-fold cross-validation, pooled)")
    mean = {k: float(np.nanmean([r[k] for r in fold_rows])) if any(math.isfinite(r[k]) for r in fold_rows) else float("nan")
            for k in METRICS}
    std = {k: float(np.nanstd([r[k] for r in fold_rows])) if any(math.isfinite(r[k]) for r in fold_rows) else float("nan")
           for k in METRICS}
    result = {"folds": fold_rows, "pooled": pooled, "mean": mean, "std": std, "positive": pos_name,
              "classes": [neg_name, pos_name], "out_dir": str(out)}
    write_text_atomic(out / "crossval.json", json.dumps(result, indent=2, default=str) + "\n")
    logger.info("pooled over %d folds: AUROC %.3f, balanced accuracy %.3f (%d images, %d subjects)", folds,
                pooled["auroc"], pooled["balanced_accuracy"], pooled["n"], pooled["subjects"])
    return result
