"""Scoring a ``medcnn predict alzheimer`` run against a BIDS ``participants.tsv`` (subject-level metrics).

::

    medcnn evaluate-run alzheimer runs/alzheimer/test/summary.csv data/ad_test/participants.tsv -o runs/alzheimer/test
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from medcnn.errors import InputError
from medcnn.pipelines.alzheimer import NEGATIVE, POSITIVE

logger = logging.getLogger(__name__)

#: the headline metrics ``medcnn evaluate-run alzheimer`` prints (with the confusion matrix and the errors)
HEADLINE = ("n", "n_positive", "n_negative", "auroc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "ece")


def subject_of(case: str) -> str:
    """``sub-XX`` of a case id ``sub-XX[_ses-YY]`` (other ids are their own subject)."""
    m = re.match(r"^(sub-[A-Za-z0-9]+)", case)
    return m.group(1) if m else case


def read_diagnoses(participants: str | Path, label_column: str = "diagnosis") -> dict[str, str]:
    """``{participant_id: diagnosis}`` of a BIDS ``participants.tsv``.

    Raises:
        InputError: the file lacks ``participant_id`` or ``label_column``.
    """
    with open(participants, newline="", encoding="utf-8") as fh:
        people = list(csv.DictReader(fh, delimiter="\t"))
    if not people or "participant_id" not in people[0] or label_column not in people[0]:
        have = ", ".join(people[0]) if people else "no rows"
        raise InputError(participants, f"needs the columns participant_id and {label_column} (has: {have})")
    return {r["participant_id"]: (r[label_column] or "").strip() for r in people}


def evaluate_summary(summary: str | Path, participants: str | Path, out_dir: str | Path | None = None, *,
                     label_column: str = "diagnosis", threshold: float = 0.5) -> dict[str, Any]:
    """Score a ``medcnn predict alzheimer`` run against the diagnoses of a ``participants.tsv``.

    Every ``ok`` row of ``summary.csv`` is matched to its subject (``sub-XX`` of ``sub-XX[_ses-YY]``);
    rows whose subject has no diagnosis, or a diagnosis other than AD/CN, are left out and counted.
    Metrics are per image (one image per subject in the generated test sets, so per subject there).

    Args:
        summary: the run's ``summary.csv`` (columns ``case, status, p_ad``).
        participants: BIDS ``participants.tsv`` (``participant_id`` and ``label_column``).
        out_dir: if given, ``metrics.json``, ``roc.png`` and ``confusion.png`` are written there.
        label_column: the diagnosis column (values ``AD``/``CN``).
        threshold: operating point on ``p_ad`` (use the model's decision threshold; 0.5 unless the
            checkpoint sets ``inference.threshold``).

    Returns:
        :func:`medcnn.metrics.binary_report` of ``p_ad`` against AD=1/CN=0 (``auroc``,
        ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``confusion_matrix`` ...), plus
        ``n_failed`` (rows not ``ok``), ``n_unmatched`` and ``errors`` (``[[case, true, p_ad], ...]``
        for the misclassified images).

    Raises:
        InputError: a file lacks the needed columns, or no row can be scored.
    """
    from medcnn.metrics import binary_report

    summary, participants = Path(summary), Path(participants)
    truth = read_diagnoses(participants, label_column)
    with open(summary, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"case", "status", "p_ad"} <= set(rows[0]):
        raise InputError(summary, "needs the columns case, status and p_ad (a medcnn predict alzheimer summary)")
    cases, probs, labels = [], [], []
    failed = unmatched = 0
    for r in rows:
        if r["status"] != "ok":
            failed += 1
            continue
        dx = truth.get(subject_of(r["case"]))
        if dx not in (POSITIVE, NEGATIVE):
            unmatched += 1
            continue
        cases.append(r["case"])
        probs.append(float(r["p_ad"]))
        labels.append(1 if dx == POSITIVE else 0)
    if not cases:
        raise InputError(summary, f"no ok row matches a subject with diagnosis AD or CN in {participants}")
    if failed or unmatched:
        logger.warning("%s: %d row(s) not ok and %d without an AD/CN diagnosis left out", summary, failed, unmatched)
    report = binary_report(probs, labels, threshold=threshold)
    report["n_failed"], report["n_unmatched"] = failed, unmatched
    report["errors"] = [[c, POSITIVE if y else NEGATIVE, p] for c, p, y in zip(cases, probs, labels)
                        if (p >= threshold) != bool(y)]
    if out_dir is not None:
        from medcnn.io.atomic import write_text_atomic
        from medcnn.plotting import plot_confusion, plot_roc

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
        if math.isfinite(report["auroc"]):
            plot_roc({"held-out": (report["roc"]["fpr"], report["roc"]["tpr"], report["auroc"])}, out / "roc.png")
        plot_confusion(report["confusion_matrix"], [NEGATIVE, POSITIVE], out / "confusion.png")
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics ``medcnn evaluate-run alzheimer`` prints: :data:`HEADLINE`, the confusion matrix, the errors."""
    return {k: report[k] for k in HEADLINE} | {"confusion_matrix [[TN, FP], [FN, TP]]": report["confusion_matrix"],
                                               "errors": report["errors"]}
