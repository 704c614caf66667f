"""Held-out scoring of a ``medcnn predict chest-xray`` run against a generated (or same-layout) dataset.

::

    medcnn evaluate-run chest-xray runs/cxr_test data/cxr_test -o runs/cxr_test/eval
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.errors import InputError
from medcnn.io import load
from medcnn.io.atomic import write_text_atomic
from medcnn.pipelines.chest_xray_models import FINDINGS

logger = logging.getLogger(__name__)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


#: diameter bins (mm) of :func:`evaluate_run`'s AUROC by lesion size: the generator draws 6-30 mm nodules
#: (log-uniform), so these bins hold similar numbers of them; edit per finding for other data
SIZE_BINS_MM: dict[str, tuple[float, ...]] = {"Nodule": (0.0, 8.0, 12.0, 18.0, math.inf)}


def largest_diameter_mm(mask: np.ndarray, spacing_mm: float = 1.0) -> float:
    """Equivalent diameter of a binary mask's largest connected component, ``2 sqrt(area / pi)``.

    Args:
        mask: ``(H, W)`` boolean mask.
        spacing_mm: pixel size (square pixels).

    Returns:
        The diameter in mm (0 for an empty mask).
    """
    from medcnn.inference.postprocess import keep_largest_component

    area = float(np.count_nonzero(keep_largest_component(mask)))
    return 2.0 * math.sqrt(area / math.pi) * spacing_mm


def _auroc_by_size(sizes: dict[str, dict[int, float]], probs: np.ndarray, labels: np.ndarray, findings: list[str],
                   bins: dict[str, Sequence[float]]) -> dict[str, list[dict[str, Any]]]:
    """Per finding and size bin: AUROC of the positives of that size against every negative."""
    from medcnn.metrics import roc_auc

    out: dict[str, list[dict[str, Any]]] = {}
    for f, diam in sizes.items():
        j = findings.index(f)
        neg = np.flatnonzero(labels[:, j] == 0)
        edges = bins[f]
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            pos = [i for i, d in diam.items() if lo <= d < hi]
            auc = None  # no positive of this size (JSON null)
            if pos and len(neg):
                idx = np.concatenate([np.asarray(pos), neg])
                auc = round(roc_auc(probs[idx, j], labels[idx, j]), 4)
            rows.append({"diameter_mm": f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}", "positives": len(pos),
                         "auroc": auc})
        out[f] = rows
    return out


def evaluate_run(out_dir: str | Path, data_dir: str | Path, report_dir: str | Path | None = None, *,
                 finding_masks: str = "masks/{case}_{finding}.png",
                 size_bins_mm: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Score a ``medcnn predict chest-xray`` run against a generated (or same-layout) dataset.

    Args:
        out_dir: the run's folder (``summary.csv``, ``<case>_lungs.png``, ``<case>_heart.png``).
        data_dir: the dataset folder with ``manifest.csv`` (``case``, ``lungs``, ``heart`` mask paths,
            ``ctr`` and one 0/1 column per finding; ``pixel_spacing_mm`` for the sizes below, else they are in pixels).
        report_dir: if given, ``metrics.json``, ``per_case.csv`` and ``roc.png`` are written there.
        finding_masks: where a positive case's finding mask lies, relative to ``data_dir``
            (what ``medcnn generate chest-xray`` writes).
        size_bins_mm: per finding, diameter bin edges for the AUROC by lesion size (default
            :data:`SIZE_BINS_MM`); a finding's positives without a mask file are left out of it.

    Returns:
        ``{"n", "n_failed", "auroc": {finding: value}, "auroc_mean", "dice_lungs_mean", "dice_lungs_min",
        "dice_heart_mean", "ctr_mae", "worst_lungs": [[case, dice], ...]}`` (Dice on the input pixel grid),
        plus ``"auroc_by_size": {finding: [{"diameter_mm", "positives", "auroc"}, ...]}`` where masks exist
        (the diameter of the largest component, :func:`largest_diameter_mm`).

    Raises:
        InputError: missing files or no case to score.
    """
    from medcnn.metrics import multilabel_auroc, roc_curve
    from medcnn.plotting import plot_roc

    out_dir, data_dir = Path(out_dir), Path(data_dir)
    for p in (out_dir / "summary.csv", data_dir / "manifest.csv"):
        if not p.is_file():
            raise InputError(p, "not found")
    with open(out_dir / "summary.csv", newline="", encoding="utf-8") as fh:
        summary = {r["case"]: r for r in csv.DictReader(fh)}
    with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    findings = [f for f in FINDINGS if manifest and f in manifest[0] and f in next(iter(summary.values()), {})]
    per_case, probs, labels = [], [], []
    bins = SIZE_BINS_MM if size_bins_mm is None else size_bins_mm
    sizes: dict[str, dict[int, float]] = {f: {} for f in findings if f in bins}
    n_failed = 0
    for m in manifest:
        r = summary.get(m["case"])
        if r is None or r["status"] not in ("ok", "skipped"):
            n_failed += r is not None
            continue
        row: dict[str, Any] = {"case": m["case"], "format": m.get("format", "")}
        for part in ("lungs", "heart"):
            pred_p, ref_p = out_dir / f"{m['case']}_{part}.png", data_dir / m[part]
            if pred_p.is_file() and ref_p.is_file():
                row[f"dice_{part}"] = round(_dice(np.asarray(load(pred_p)[0]) > 0, np.asarray(load(ref_p)[0]) > 0), 4)
        if r.get("ctr") and m.get("ctr"):
            row["ctr_error"] = round(abs(float(r["ctr"]) - float(m["ctr"])), 4)
        if findings:
            for f in sizes:
                mask_p = data_dir / finding_masks.format(case=m["case"], finding=f)
                if float(m[f]) == 1 and mask_p.is_file():
                    spacing = float(m.get("pixel_spacing_mm") or 1.0)
                    sizes[f][len(probs)] = largest_diameter_mm(np.asarray(load(mask_p)[0]) > 0, spacing)
            probs.append([float(r[f]) for f in findings])
            labels.append([float(m[f]) for f in findings])
        per_case.append(row)
    if not per_case:
        raise InputError(out_dir, "no case of the run matches the dataset's manifest")
    rep: dict[str, Any] = {"n": len(per_case), "n_failed": n_failed}
    for part in ("lungs", "heart"):
        vals = [c[f"dice_{part}"] for c in per_case if f"dice_{part}" in c]
        if vals:
            rep[f"dice_{part}_mean"] = round(float(np.mean(vals)), 4)
            rep[f"dice_{part}_median"] = round(float(np.median(vals)), 4)
            rep[f"dice_{part}_min"] = round(float(np.min(vals)), 4)
    errs = [c["ctr_error"] for c in per_case if "ctr_error" in c]
    if errs:
        rep["ctr_mae"] = round(float(np.mean(errs)), 4)
    scored = [c for c in per_case if "dice_lungs" in c]  # none when the run or the data hold no lung masks
    rep["worst_lungs"] = [[c["case"], c["dice_lungs"]] for c in sorted(scored, key=lambda c: c["dice_lungs"])[:5]]
    curves = {}
    if findings:
        p, y = np.asarray(probs), np.asarray(labels)
        with warnings.catch_warnings():  # a small set may lack positives of a finding: reported as nan + a log line
            warnings.simplefilter("ignore", RuntimeWarning)
            auc = multilabel_auroc(p, y, findings)
        undefined = [f for f, v in auc["per_finding"].items() if math.isnan(v)]
        if undefined:
            logger.warning("AUROC undefined (one class only among these cases) for: %s", ", ".join(undefined))
        rep["auroc"] = {k: round(v, 4) for k, v in auc["per_finding"].items()}
        rep["auroc_mean"] = round(auc["mean"], 4)
        sizes = {f: d for f, d in sizes.items() if d}
        if sizes:
            rep["auroc_by_size"] = _auroc_by_size(sizes, p, y, findings, bins)
        for j, f in enumerate(findings):
            if len(np.unique(y[:, j])) == 2:
                fpr, tpr, _ = roc_curve(p[:, j], y[:, j])
                curves[f] = (fpr, tpr, auc["per_finding"][f])
    if report_dir is not None:
        rd = Path(report_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_text_atomic(rd / "metrics.json", json.dumps(rep, indent=2) + "\n")
        cols = sorted({k for c in per_case for k in c}, key=lambda k: (k != "case", k))
        lines = [",".join(cols)] + [",".join(str(c.get(k, "")) for k in cols) for c in per_case]
        write_text_atomic(rd / "per_case.csv", "\n".join(lines) + "\n")
        if curves:
            plot_roc(curves, rd / "roc.png", title="Chest X-ray findings (held-out)")
    return rep
