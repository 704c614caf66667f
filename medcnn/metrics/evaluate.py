"""Evaluate a folder of predicted label maps against reference segmentations.

Pairs ``<case>.nii.gz`` predictions with their references, computes
:func:`~medcnn.metrics.segmentation.segmentation_metrics` per case and region, and writes one CSV
row per case and region plus a mean row per region. A case that cannot be evaluated (missing file,
unreadable file, mismatched grid) gets a row saying why; it never stops the others.

Reference layouts recognised for case ``<case>`` in a reference folder ``REF``:

* ``REF/<case>.nii.gz`` (or ``.nii``)
* ``REF/<case>/<case>-seg.nii.gz`` (BraTS 2023) and ``REF/<case>/<case>_seg.nii.gz`` (BraTS 2021)
* ``REF/<case>_seg.nii.gz`` / ``REF/<case>-seg.nii.gz``
* ``REF/labelsTr/<case>.nii.gz`` / ``REF/labelsTs/<case>.nii.gz`` (nnU-Net / MSD dataset root)
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medcnn.errors import InputError
from medcnn.io.api import load
from medcnn.io.atomic import atomic_path
from medcnn.io.geometry import voxel_spacing
from medcnn.metrics.labels import LabelSpec, describe, label_mapping, remap_labels, unexpected_labels
from medcnn.metrics.segmentation import BRATS_REGIONS, METRIC_KEYS, RegionSpec, normalize_regions, segmentation_metrics

logger = logging.getLogger(__name__)

#: CSV columns, in order
COLUMNS: tuple[str, ...] = ("case", "region", *METRIC_KEYS, "status", "error")
#: NIfTI suffixes recognised as label maps
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: suffixes of reference files marking a segmentation next to images
SEG_SUFFIXES: tuple[str, ...] = ("-seg", "_seg")
#: nnU-Net / MSD label folders looked into inside a reference dataset root
LABEL_FOLDERS: tuple[str, ...] = ("labelsTr", "labelsTs")
#: largest affine difference (rotation/scale part, then translation in mm) accepted as "same grid"
AFFINE_TOL: tuple[float, float] = (1e-3, 1e-2)


def _case_id(path: Path) -> str | None:
    """``case`` of ``case.nii.gz`` / ``case.nii``; ``None`` for other files."""
    name = path.name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """``{case: path}`` of the NIfTI files directly in ``folder`` (hidden and temporary files skipped)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        case = _case_id(p)
        if case is not None:
            out.setdefault(case, p)
    return out


def _reference_candidates(ref: Path, case: str) -> list[Path]:
    """Where the reference of ``case`` may lie in folder ``ref``, most specific first."""
    cands: list[Path] = []
    for suf in NIFTI_SUFFIXES:
        cands.append(ref / f"{case}{suf}")
    for seg in SEG_SUFFIXES:
        for suf in NIFTI_SUFFIXES:
            cands.append(ref / case / f"{case}{seg}{suf}")
    for seg in SEG_SUFFIXES:
        for suf in NIFTI_SUFFIXES:
            cands.append(ref / f"{case}{seg}{suf}")
    for sub in LABEL_FOLDERS:
        for suf in NIFTI_SUFFIXES:
            cands.append(ref / sub / f"{case}{suf}")
    return cands


def find_reference(ref: Path, case: str) -> Path | None:
    """The reference label file of ``case`` in folder ``ref`` (see the module doc), or ``None``."""
    for cand in _reference_candidates(ref, case):
        if cand.is_file():
            return cand
    return None


def _reference_cases(ref: Path) -> dict[str, Path]:
    """Every reference case found in folder ``ref``: ``{case: path}``."""
    found: dict[str, Path] = {}
    for case, path in _nifti_files(ref).items():
        for seg in SEG_SUFFIXES:
            if case.endswith(seg) and len(case) > len(seg):
                case = case[: -len(seg)]
                break
        found.setdefault(case, path)
    for sub in sorted(p for p in ref.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name in LABEL_FOLDERS:
            for case, path in _nifti_files(sub).items():
                found.setdefault(case, path)
            continue
        hit = find_reference(ref, sub.name)
        if hit is not None and hit.parent == sub:
            found.setdefault(sub.name, hit)
    return found


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path | None, Path | None]]:
    """Pair predictions and references by case id.

    Args:
        pred: folder of ``<case>.nii.gz`` predictions, or one prediction file.
        ref: reference folder (layouts in the module doc), or one reference file.

    Returns:
        ``[(case, pred_path or None, ref_path or None)]`` sorted by case; ``None`` marks a missing
        side.

    Raises:
        InputError: a path does not exist, or ``pred`` is a folder while ``ref`` is a file.
    """
    pred, ref = Path(pred), Path(ref)
    for p, what in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise InputError(p, f"{what} path does not exist")
    if pred.is_file():
        case = _case_id(pred) or pred.name
        ref_path = ref if ref.is_file() else find_reference(ref, case)
        return [(case, pred, ref_path)]
    if ref.is_file():
        raise InputError(ref, "reference is a single file but the prediction is a folder; give a reference folder")
    preds = _nifti_files(pred)
    refs = _reference_cases(ref)
    pairs: list[tuple[str, Path | None, Path | None]] = []
    used: set[Path] = set()
    for case, p in preds.items():
        r = find_reference(ref, case)
        if r is not None:
            used.add(r.resolve())
        pairs.append((case, p, r))
    for case, r in refs.items():
        if case not in preds and r.resolve() not in used:
            pairs.append((case, None, r))
    return sorted(pairs, key=lambda t: t[0])


def _nan_metrics() -> dict[str, float]:
    return {k: float("nan") for k in METRIC_KEYS}


def _load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Label map ``(*spatial)`` and its ``(4, 4)`` affine; one channel required."""
    img = load(path, mode="nearest")
    if img.shape[0] != 1:
        raise InputError(path, f"a label map must have one channel, got {img.shape[0]} (shape {tuple(img.shape)})")
    affine = np.asarray(img.affine, dtype=np.float64)
    return np.asarray(img[0].detach().cpu().numpy()), affine


def _grid_mismatch(p_shape: tuple[int, ...], p_aff: np.ndarray, r_shape: tuple[int, ...], r_aff: np.ndarray) -> str | None:
    """Why two grids differ, or ``None`` when they are the same grid."""
    if p_shape != r_shape:
        return f"grid mismatch: prediction shape {p_shape} != reference shape {r_shape}"
    diff = np.abs(p_aff - r_aff)
    if diff[:3, :3].max() > AFFINE_TOL[0] or diff[:3, 3].max() > AFFINE_TOL[1]:
        sp_p = np.round(voxel_spacing(p_aff, len(p_shape)), 4).tolist()
        sp_r = np.round(voxel_spacing(r_aff, len(r_shape)), 4).tolist()
        return (
            f"grid mismatch: prediction and reference affines differ by up to {diff.max():.4g} "
            f"(spacing {sp_p} vs {sp_r}, origin {np.round(p_aff[:3, 3], 3).tolist()} vs "
            f"{np.round(r_aff[:3, 3], 3).tolist()}); resample the prediction onto the reference grid"
        )
    return None


def _check_labels(arr: np.ndarray, path: Path, mapping: dict[int, int] | None, allowed: set[int], on_unknown: str) -> np.ndarray:
    """``arr`` remapped by ``mapping``; without one, values outside ``allowed`` raise or warn (``on_unknown``)."""
    if mapping is not None:
        return np.asarray(remap_labels(arr, mapping, str(path)))
    bad = unexpected_labels(arr, allowed)
    if bad:
        msg = (f"label value(s) {', '.join(map(str, bad))} outside the regions' labels {sorted(allowed)}"
               + ("; a BraTS 2021 reference (ET = 4) needs --labels brats2021" if 4 in bad else "")
               + "; give --labels (brats2021, nnunet-brats, MAP.yaml) or --region")
        if on_unknown == "error":
            raise InputError(path, msg)
        logger.warning("%s: %s (ignored)", path, msg)
    return arr


def _evaluate_case(
    case: str, pred: Path | None, ref: Path | None, regions: RegionSpec, nsd_tolerance_mm: float,
    maps: tuple[dict[int, int] | None, dict[int, int] | None] = (None, None), on_unknown: str = "warn",
) -> list[dict[str, Any]]:
    """Rows of one case, one per region; ``maps`` remap the (prediction, reference) label values."""

    def rows(status: str, error: str, metrics: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
        return [
            {"case": case, "region": name, **(metrics[name] if metrics else _nan_metrics()), "status": status, "error": error}
            for name in regions
        ]

    if pred is None:
        return rows("missing", f"no prediction for case {case} (reference {ref})")
    if ref is None:
        return rows("missing", f"no reference for case {case} (prediction {pred})")
    try:
        p, p_aff = _load_labels(pred)
        r, r_aff = _load_labels(ref)
        allowed = {v for labs in normalize_regions(regions).values() for v in labs}
        p = _check_labels(p, pred, maps[0], allowed, on_unknown)
        r = _check_labels(r, ref, maps[1], allowed, on_unknown)
        why = _grid_mismatch(tuple(p.shape), p_aff, tuple(r.shape), r_aff)
        if why is not None:
            raise InputError(pred, f"{why} ({ref})")
        metrics = segmentation_metrics(p, r, voxel_spacing(r_aff, r.ndim), regions, nsd_tolerance_mm)
    except Exception as exc:  # one bad case must not stop the batch; the row says why
        msg = str(exc) if isinstance(exc, InputError) else f"{pred}: {type(exc).__name__}: {exc}"
        logger.warning("case %s: %s", case, msg)
        logger.debug("case %s failed", case, exc_info=True)
        return rows("error", msg)
    return rows("ok", "", metrics)


def _mean_rows(rows: list[dict[str, Any]], regions: Iterable[str]) -> list[dict[str, Any]]:
    """One ``case = "mean"`` row per region, averaging the ``ok`` rows."""
    out = []
    for name in regions:
        mine = [r for r in rows if r["region"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        mean = {k: float(np.mean([r[k] for r in ok])) if ok else float("nan") for k in METRIC_KEYS}
        if not ok:
            status, error = "error", "no case could be evaluated"
        else:
            status = "ok"
            error = "" if len(ok) == len(mine) else f"mean over {len(ok)} of {len(mine)} cases (others missing or failed)"
        out.append({"case": "mean", "region": name, **mean, "status": status, "error": error})
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(round(v, 6))
    return str(v)


def write_rows_csv(rows: list[dict[str, Any]], out_csv: str | os.PathLike[str]) -> Path:
    """Write evaluation rows to ``out_csv`` atomically (columns :data:`COLUMNS`, floats to 6 decimals)."""
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([_fmt(row[c]) for c in COLUMNS])
    return out_csv


def evaluate_folders(
    pred: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    regions: RegionSpec = BRATS_REGIONS,
    nsd_tolerance_mm: float = 1.0,
    *,
    labels: LabelSpec | None = None,
    pred_labels: LabelSpec | None = None,
    on_unknown: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate predicted label maps against references, case by case and region by region.

    Args:
        pred: folder of predictions ``<case>.nii.gz`` (as written by ``medcnn predict``), or
            one prediction file.
        ref: reference folder (``<case>.nii.gz``, BraTS ``<case>/<case>-seg.nii.gz``,
            ``<case>_seg.nii.gz``, nnU-Net ``labelsTr/<case>.nii.gz``), or one reference file.
        out_csv: CSV to write (atomically).
        regions: region name -> label(s) (default BraTS 2023 WT/TC/ET).
        nsd_tolerance_mm: tolerance of the normalised surface Dice, mm.
        labels: label convention of the references (``brats2021``, ``brats2023``, ``nnunet-brats``, a YAML
            file or a mapping; :mod:`medcnn.metrics.labels`), remapped onto BraTS 2023 values before the
            regions are taken; ``None``: the references already use the regions' values.
        pred_labels: the same for the predictions (``None``: medcnn's own BraTS 2023 labels).
        on_unknown: without a convention, a label value outside the regions' labels fails the case
            (``"error"``, naming the values) or only logs a warning (``"warn"``); ``None``: error with the
            default BraTS regions, warn with regions of your own (which may leave labels out on purpose).

    Returns:
        The rows written: one per case and region with keys ``case, region, dice, hd95_mm,
        nsd, pred_ml, ref_ml, status, error`` (``status`` ``ok`` | ``missing`` | ``error``,
        metrics ``nan`` unless ok), then one ``case = "mean"`` row per region averaging the
        ``ok`` cases (its ``error`` says when some cases were left out).

    Raises:
        InputError: ``pred`` or ``ref`` does not exist, or a prediction folder with a reference file.
        ValueError: invalid ``regions`` or ``nsd_tolerance_mm``.

    Example:
        >>> rows = evaluate_folders("out/", "BraTS2023/val/", "out/metrics.csv")  # doctest: +SKIP
    """
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0, got {nsd_tolerance_mm}")
    if on_unknown is None:
        on_unknown = "error" if normalize_regions(regions) == normalize_regions(BRATS_REGIONS) else "warn"
    regions = normalize_regions(regions)
    if on_unknown not in ("error", "warn"):
        raise ValueError(f"on_unknown must be 'error' or 'warn', got {on_unknown!r}")
    maps = tuple(None if spec is None else label_mapping(spec) for spec in (pred_labels, labels))
    for what, m in zip(("prediction", "reference"), maps):
        if m is not None:
            logger.info("%s labels remapped %s", what, describe(m))
    pairs = pair_cases(Path(pred), Path(ref))
    if not pairs:
        logger.warning("no prediction or reference label maps found in %s / %s", pred, ref)
    rows: list[dict[str, Any]] = []
    for case, p, r in tqdm(pairs, desc="evaluate", unit="case", disable=None):
        logger.debug("case %s: prediction %s, reference %s", case, p, r)
        rows.extend(_evaluate_case(case, p, r, regions, nsd_tolerance_mm, maps, on_unknown))
    rows.extend(_mean_rows(rows, list(regions)))
    n_ok = len({r["case"] for r in rows if r["status"] == "ok" and r["case"] != "mean"})
    logger.info("evaluated %d of %d cases; wrote %s", n_ok, len(pairs), out_csv)
    write_rows_csv(rows, out_csv)
    return rows
