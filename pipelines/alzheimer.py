"""Alzheimer's disease vs cognitively normal from a T1 MRI, with a saliency map.

Cases (DESIGN §3): every T1 image file or DICOM series folder; BIDS
``sub-*/[ses-*/]anat/*_T1w.nii.gz`` gives ids ``sub-XX[_ses-YY]``. Outputs per case:
``<case>_saliency.nii.gz`` (Grad-CAM of the predicted class, [0, 1], on the T1's own grid),
``qc/<case>.png`` (the T1 in three planes with the map overlaid) and ``p_ad, label`` in ``summary.csv``: ``p_ad`` is the model's probability of AD,
``label`` is ``AD`` when ``p_ad`` reaches the decision threshold stored in the checkpoint
(``inference.threshold`` or ``labels.threshold``; 0.5 when absent), else ``CN``.

:func:`evaluate_summary` scores such a ``summary.csv`` against a BIDS ``participants.tsv``
(subject-level metrics, ROC curve and confusion matrix):

    python -m medcnn.pipelines.alzheimer runs/alzheimer/test/summary.csv data/ad_test/participants.tsv -o runs/alzheimer/test
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
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

logger = logging.getLogger(__name__)

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


def _subject_of(case: str) -> str:
    """``sub-XX`` of a case id ``sub-XX[_ses-YY]`` (other ids are their own subject)."""
    m = re.match(r"^(sub-[A-Za-z0-9]+)", case)
    return m.group(1) if m else case


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
    with open(participants, newline="", encoding="utf-8") as fh:
        people = list(csv.DictReader(fh, delimiter="\t"))
    if not people or "participant_id" not in people[0] or label_column not in people[0]:
        have = ", ".join(people[0]) if people else "no rows"
        raise InputError(participants, f"needs the columns participant_id and {label_column} (has: {have})")
    truth = {r["participant_id"]: r[label_column].strip() for r in people}
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
        dx = truth.get(_subject_of(r["case"]))
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcnn.pipelines.alzheimer SUMMARY PARTICIPANTS [-o DIR]``: print the headline metrics."""
    ap = argparse.ArgumentParser(prog="python -m medcnn.pipelines.alzheimer", description=evaluate_summary.__doc__.split("\n")[0])
    ap.add_argument("summary", help="summary.csv of medcnn predict alzheimer")
    ap.add_argument("participants", help="participants.tsv with the true diagnoses")
    ap.add_argument("-o", "--out-dir", default=None, help="write metrics.json, roc.png and confusion.png here")
    ap.add_argument("--threshold", type=float, default=0.5, help="decision threshold on p_ad (default 0.5)")
    ap.add_argument("--label-column", default="diagnosis")
    args = ap.parse_args(argv)
    rep = evaluate_summary(args.summary, args.participants, args.out_dir, label_column=args.label_column, threshold=args.threshold)
    keys = ("n", "n_positive", "n_negative", "auroc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "ece")
    sys.stdout.write(json.dumps({k: rep[k] for k in keys} | {"confusion_matrix [[TN, FP], [FN, TP]]": rep["confusion_matrix"],
                                                            "errors": rep["errors"]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
