"""Training data: find the cases of a dataset and split them by subject.

Sources (``data.format: auto`` picks by what the path holds):

* ``manifest``: a CSV with one row per case: input channel columns (``data.channels``), a label
  column, optional ``case`` and ``subject`` columns; paths relative to the CSV's folder;
* ``msd``: a folder with ``dataset.json`` — nnU-Net v2 (``channel_names``, ``file_ending``,
  ``imagesTr/CASE_XXXX``) or Medical Segmentation Decathlon (``training: [{image, label}]``);
* ``brats``: a folder of BraTS 2023/2021 case folders with ``-seg``/``_seg`` label files;
* ``bids``: a BIDS folder with ``participants.tsv`` (classification; ``data.label`` names the
  diagnosis column) and ``sub-*/[ses-*/]anat/*_T1w.nii.gz``;
* ``chexpert``: a CheXpert-style CSV (``Path`` + one column per finding holding 1/0/-1/blank),
  multi-label; ``-1`` (uncertain) follows ``data.uncertainty`` (``ignore``: left out of the loss
  and metrics, ``zeros``, ``ones``), blank (unmentioned) counts as 0 as in the CheXpert paper;
  subject from a ``Patient`` column or the ``patientNNNNN`` folder of the path;
* ``nih``: an NIH ChestX-ray14-style CSV (``Image Index``, ``Finding Labels`` joined by ``|`` or
  ``No Finding``, ``Patient ID``), multi-label; images looked up under ``data.images`` (default:
  the CSV's folder and its ``images`` subfolders).

Segmentation manifests may give several binary mask columns (``data.masks: [lungs, heart]``): the
target then has one channel per mask (overlapping structures, sigmoid per channel).

Splits are made over *subjects*, never cases: all sessions/timepoints of one subject land in the
same fold (:func:`split_subjects`, stratified for classification).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.cases import BRAIN_CONTRASTS, find_brain_tumor_cases
from medcnn.errors import ConfigError

logger = logging.getLogger(__name__)


def subject_of(case_id: str) -> str:
    """Subject id of a case id: BraTS 2023 ``BraTS-GLI-00012-001`` -> ``BraTS-GLI-00012`` (timepoint
    dropped), BIDS ``sub-01_ses-2`` -> ``sub-01``; otherwise the case id itself."""
    m = re.match(r"^(BraTS-[A-Za-z]+-\d+)-\d+$", case_id)
    if m:
        return m.group(1)
    m = re.match(r"^(sub-[A-Za-z0-9]+)(_ses-.*)?$", case_id)
    if m:
        return m.group(1)
    return case_id


def _file_stem(path: str | Path) -> str:
    """A file's name up to its first dot (``cxr-00001.png`` -> ``cxr-00001``, ``a.nii.gz`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def _resolve(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p))


def records_from_manifest(path: Path, channels: Sequence[str] | None, label: str, subject: str,
                          masks: Sequence[str] | None = None) -> list[dict]:
    """Rows of a manifest CSV as records ``{case, subject, image: [paths], label}``.

    With ``masks`` (column names of binary mask files), ``label`` is the list of those files instead
    of the ``label`` column; a blank cell (``None`` in the list) means an all-zero mask, for a
    structure absent from that image (e.g. no nodule).
    """
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"data.source: {path} has no rows")
    cols = list(rows[0])
    if channels is None:
        if "image" in cols:
            channels = ["image"]
        elif all(c in cols for c in BRAIN_CONTRASTS):
            channels = list(BRAIN_CONTRASTS)
        elif "t1" in cols:
            channels = ["t1"]
        else:
            raise ConfigError(f"data.channels: cannot guess the image columns of {path} (columns: {', '.join(cols)})")
    missing = [c for c in [*channels, *(masks or [label])] if c not in cols]
    if missing:
        raise ConfigError(f"data: column(s) {', '.join(missing)} not in {path} (columns: {', '.join(cols)})")
    base = path.parent
    out = []
    for i, r in enumerate(rows):
        case = r.get("case") or _file_stem(r[channels[0]]) or f"case{i:05d}"
        if masks:
            # a blank cell: the structure is absent from this image (an all-zero mask)
            lab_value: Any = [_resolve(base, r[c]) if (r[c] or "").strip() else None for c in masks]
        else:
            lab = r[label]
            lab_value = _resolve(base, lab) if lab and not _is_number(lab) and ("/" in lab or "." in lab) else lab
        out.append({
            "case": case,
            "subject": r.get(subject) or subject_of(case),
            "image": [_resolve(base, r[c]) for c in channels],
            "label": lab_value,
        })
    return out


#: alternative spellings of finding columns (CheXpert names on the right)
FINDING_ALIASES = {"Effusion": ("Pleural Effusion",), "Pleural Effusion": ("Effusion",)}
UNCERTAINTY_POLICIES = ("ignore", "zeros", "ones")


def _finding_column(name: str, cols: Sequence[str], path: Path) -> str:
    for c in (name, *FINDING_ALIASES.get(name, ())):
        if c in cols:
            return c
    raise ConfigError(f"data.classes: finding {name!r} is not a column of {path} (columns: {', '.join(cols)})")


def _image_locator(csv_path: Path, images: str | None):
    """Function mapping a CSV's image reference to an existing path (or the first candidate)."""
    roots = [Path(images)] if images else [csv_path.parent, csv_path.parent.parent, csv_path.parent / "images"]
    index: dict[str, Path] | None = None

    def locate(ref: str) -> str:
        nonlocal index
        p = Path(ref)
        if p.is_absolute():
            return str(p)
        for root in roots:
            if (root / p).exists():
                return str(root / p)
        if index is None:  # NIH ships images in images_001/images/... folders: look names up once
            index = {}
            for f in roots[0].rglob("*"):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm") and f.name not in index:
                    index[f.name] = f
        return str(index.get(p.name, roots[0] / p))

    return locate


def records_from_chexpert(path: Path, classes: Sequence[str], uncertainty: str = "ignore",
                          images: str | None = None) -> list[dict]:
    """Records of a CheXpert-style CSV: ``label`` is a list of floats per finding (NaN = ignored).

    Args:
        path: the CSV (``Path`` column + finding columns).
        classes: finding names, in output order (``Effusion`` also matches ``Pleural Effusion``).
        uncertainty: policy for ``-1`` labels: ``ignore`` (NaN), ``zeros`` or ``ones``.
        images: folder the paths are relative to (default: the CSV's folder, then its parent).
    """
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError(f"config key 'data.uncertainty': {uncertainty!r} is not one of {', '.join(UNCERTAINTY_POLICIES)}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"data.source: {path} has no rows")
    cols = list(rows[0])
    if "Path" not in cols:
        raise ConfigError(f"data.source: {path} has no 'Path' column (CheXpert layout); columns: {', '.join(cols)}")
    fcols = [_finding_column(c, cols, path) for c in classes]
    uncertain = {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[uncertainty]
    locate = _image_locator(path, images)
    out = []
    for r in rows:
        ref = r["Path"]
        m = re.search(r"(patient\d+)[/\\](study\d+)[/\\]([^/\\]+?)\.\w+$", ref)
        case = "_".join(m.groups()) if m else _file_stem(ref)
        subj = r.get("Patient") or (m.group(1) if m else subject_of(case))
        vec = []
        for c in fcols:
            v = (r.get(c) or "").strip()
            if v == "":
                vec.append(0.0)
            else:
                f = float(v)
                vec.append(uncertain if f < 0 else (1.0 if f > 0 else 0.0))
        out.append({"case": case, "subject": subj, "image": [locate(ref)], "label": vec})
    return out


def records_from_nih(path: Path, classes: Sequence[str], images: str | None = None) -> list[dict]:
    """Records of an NIH ChestX-ray14-style CSV: ``label`` is a 0/1 list per finding."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"data.source: {path} has no rows")
    cols = list(rows[0])
    need = [c for c in ("Image Index", "Finding Labels") if c not in cols]
    if need:
        raise ConfigError(f"data.source: {path} lacks column(s) {', '.join(need)} (NIH layout); columns: {', '.join(cols)}")
    locate = _image_locator(path, images)
    wanted = {c: {c, *FINDING_ALIASES.get(c, ())} for c in classes}
    out = []
    for r in rows:
        found = {f.strip() for f in r["Finding Labels"].split("|")} - {"No Finding", ""}
        case = _file_stem(r["Image Index"])
        pid = (r.get("Patient ID") or "").strip()
        out.append({"case": case, "subject": f"patient{pid}" if pid else subject_of(case),
                    "image": [locate(r["Image Index"])],
                    "label": [1.0 if found & names else 0.0 for names in wanted.values()]})
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def records_from_dataset_json(folder: Path) -> list[dict]:
    """Records of an nnU-Net v2 or MSD dataset folder.

    ``training`` entries, when the file lists them, give each case's ``label`` and its ``image``: one path
    (MSD: a 4D file holding every channel) or a list of paths, one file per channel (nnU-Net style, as
    ``medcnn generate brain-tumor --layout nnunet`` writes). Without them the cases are the label files of
    ``labelsTr`` and their ``imagesTr/CASE_XXXX`` channel files (nnU-Net v2).

    Raises:
        ConfigError: unreadable ``dataset.json``, a malformed entry or a file it names that does not exist
            (naming the file and the entry).
    """
    where = folder / "dataset.json"
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"data.source: {where} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"data.source: {where} must hold a JSON object, got {type(meta).__name__}")
    out = []
    training = meta.get("training")
    if training:
        if not isinstance(training, list):
            raise ConfigError(f"data.source: {where}: 'training' must be a list of {{image, label}} entries")
        for i, item in enumerate(training):
            out.append(_dataset_json_record(folder, where, i, item))
        return out
    ending = meta.get("file_ending", ".nii.gz")
    n_ch = len(meta.get("channel_names", meta.get("modality", {"0": "image"})))
    lab_dir, img_dir = folder / "labelsTr", folder / "imagesTr"
    for lab in sorted(lab_dir.glob(f"*{ending}")):
        case = lab.name[: -len(ending)]
        imgs = [img_dir / f"{case}_{c:04d}{ending}" for c in range(n_ch)]
        missing = [p.name for p in imgs if not p.exists()]
        if missing:
            raise ConfigError(f"data.source: {folder} lacks {', '.join(missing)} for case {case}")
        out.append({"case": case, "subject": subject_of(case), "image": [str(p) for p in imgs], "label": str(lab)})
    if not out:
        raise ConfigError(f"data.source: no labelled cases in {lab_dir}")
    return out


def _dataset_json_record(folder: Path, where: Path, i: int, item: Any) -> dict:
    """The record of ``training`` entry ``i`` of ``where`` (see :func:`records_from_dataset_json`)."""
    if not isinstance(item, dict) or "image" not in item or "label" not in item:
        raise ConfigError(f"data.source: {where}: training entry {i} needs an 'image' and a 'label', got {item!r}"[:300])
    images = [item["image"]] if isinstance(item["image"], str) else item["image"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise ConfigError(f"data.source: {where}: training entry {i}: 'image' must be a path or a list of paths "
                          f"(one per channel), got {item['image']!r}"[:300])
    if not isinstance(item["label"], str):
        raise ConfigError(f"data.source: {where}: training entry {i}: 'label' must be a path, got {item['label']!r}"[:300])
    paths = [_resolve(folder, p) for p in images]
    label = _resolve(folder, item["label"])
    missing = [p for p in (*paths, label) if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"data.source: {where}: training entry {i} names {missing[0]}, which does not exist")
    case = _file_stem(label)  # one label file per case; channel files carry a _0000 suffix
    return {"case": case, "subject": subject_of(case), "image": paths, "label": label}


def records_from_brats(folder: Path) -> list[dict]:
    """Records of a folder of BraTS case folders (cases without a label file are skipped)."""
    out = []
    for c in find_brain_tumor_cases([folder]):
        if c.error or c.label is None:
            logger.warning("%s: skipped for training (%s)", c.id, c.error or "no label file")
            continue
        rec = {"case": c.id, "subject": subject_of(c.id), "image": [str(p) for p in c.inputs], "label": str(c.label)}
        if c.extra.get("labels"):  # BraTS 2021 file names: BraTS 2021 label values
            rec["labels"] = c.extra["labels"]
        out.append(rec)
    return out


def records_from_bids(folder: Path, label_column: str) -> list[dict]:
    """Records of a BIDS folder: each T1w image with its subject's ``participants.tsv`` label."""
    tsv = folder / "participants.tsv"
    if not tsv.exists():
        raise ConfigError(f"data.source: {folder} has no participants.tsv")
    with open(tsv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or label_column not in rows[0]:
        raise ConfigError(f"data.label: column {label_column!r} not in {tsv} (columns: {', '.join(rows[0]) if rows else 'none'})")
    labels = {r["participant_id"]: r[label_column] for r in rows}
    out = []
    for img in sorted(folder.glob("sub-*/**/anat/*_T1w.nii*")):
        m = re.match(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?", img.name)
        if not m or m.group(1) not in labels:
            continue
        case = m.group(1) + (f"_{m.group(2)}" if m.group(2) else "")
        out.append({"case": case, "subject": m.group(1), "image": [str(img)], "label": labels[m.group(1)]})
    if not out:
        raise ConfigError(f"data.source: no sub-*/anat/*_T1w images with a participants.tsv entry in {folder}")
    return out


def find_records(data_cfg: dict) -> list[dict]:
    """All records of the dataset described by the ``data`` config section."""
    src = Path(data_cfg["source"])
    fmt = data_cfg["format"]
    if fmt == "auto":
        if src.is_file():
            fmt = "manifest"
        elif (src / "dataset.json").exists():
            fmt = "msd"
        elif (src / "participants.tsv").exists():
            fmt = "bids"
        elif (src / "manifest.csv").exists():
            fmt, src = "manifest", src / "manifest.csv"
        else:
            fmt = "brats"
    if fmt in ("chexpert", "nih") and src.is_dir():
        src = src / ("labels.csv" if fmt == "chexpert" else "nih_labels.csv")
    if fmt in ("chexpert", "nih") and not data_cfg.get("classes"):
        raise ConfigError(f"missing required config key 'data.classes' (the finding names) for data.format {fmt}")
    if fmt == "chexpert":
        recs = records_from_chexpert(src, data_cfg["classes"], data_cfg.get("uncertainty", "ignore"), data_cfg.get("images"))
    elif fmt == "nih":
        recs = records_from_nih(src, data_cfg["classes"], data_cfg.get("images"))
    elif fmt == "manifest":
        recs = records_from_manifest(src, data_cfg.get("channels"), data_cfg["label"], data_cfg["subject"],
                                     data_cfg.get("masks"))
    elif fmt == "msd":
        recs = records_from_dataset_json(src)
    elif fmt == "bids":
        recs = records_from_bids(src, data_cfg["label"] if data_cfg["label"] != "label" else "diagnosis")
    else:
        recs = records_from_brats(src)
    if not recs:
        raise ConfigError(f"data.source: no training cases found in {src}")
    if data_cfg.get("finding_masks"):
        if fmt not in ("chexpert", "nih"):
            raise ConfigError(f"config key 'data.finding_masks': only for chexpert / nih label CSVs, not data.format {fmt}")
        attach_finding_masks(recs, src.parent, data_cfg["finding_masks"], data_cfg["classes"])
    return recs


def attach_finding_masks(recs: list[dict], base: Path, pattern: str, classes: Sequence[str]) -> None:
    """Add ``rec["finding_masks"]``: per finding, the mask file of a present finding, or None.

    Args:
        recs: multi-label records (``label`` a list of 0/1/NaN per finding).
        base: folder the pattern is relative to (the label CSV's).
        pattern: e.g. ``masks/{case}_{finding}.png``; ``{case}`` is the image file's stem.
        classes: finding names, in label order.

    Raises:
        ConfigError: the pattern has an unknown placeholder, or no mask file exists at all.
    """
    def where(rec: dict, finding: str) -> Path:
        try:
            return base / pattern.format(case=_file_stem(rec["image"][0]), finding=finding)
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"config key 'data.finding_masks': unknown placeholder {exc} in {pattern!r}; "
                              "use {case} and {finding}") from None

    found = 0
    for rec in recs:
        present = [where(rec, name) if value == 1.0 else None for name, value in zip(classes, rec["label"])]
        rec["finding_masks"] = [str(p) if p is not None and p.is_file() else None for p in present]
        found += sum(p is not None for p in rec["finding_masks"])
    if not found:
        example = where(recs[0], classes[0])
        raise ConfigError(f"config key 'data.finding_masks': no mask file matches {pattern!r} under {base} (e.g. {example}); "
                          "set data.finding_masks: null to train on the labels alone")


def split_subjects(
    subjects: Sequence[str],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
    strata: Sequence[Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Split unique subject ids into training and validation sets.

    Args:
        subjects: subject id per case (duplicates allowed: several cases per subject).
        val_fraction: share of subjects for validation when ``folds`` is None.
        seed: shuffling seed.
        folds: k for k-fold cross-validation; ``fold`` picks the validation fold.
        fold: index of the validation fold.
        strata: a label per case (classification) to balance folds; a subject's stratum is the
            label of its first case.

    Returns:
        ``(train_subjects, val_subjects)``, disjoint, sorted.

    Raises:
        ValueError: a subject with cases of different strata, or too few subjects.
    """
    order: dict[str, Any] = {}
    for i, s in enumerate(subjects):
        st = strata[i] if strata is not None else 0
        if s in order and order[s] != st:
            raise ValueError(f"subject {s} has cases with different labels ({order[s]} and {st})")
        order.setdefault(s, st)
    uniq = sorted(order)
    if len(uniq) < 2:
        raise ValueError(f"need at least 2 subjects to split, got {len(uniq)}")
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[str]] = {}
    for s in uniq:
        groups.setdefault(order[s], []).append(s)
    k = folds if folds else None
    val: list[str] = []
    for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        perm = [members[i] for i in rng.permutation(len(members))]
        if k:
            val.extend(perm[fold::k])
        else:
            n_val = int(round(len(perm) * val_fraction))
            if val_fraction > 0 and n_val == 0 and len(perm) > 1:
                n_val = 1
            val.extend(perm[:n_val])
    val_set = set(val)
    train = [s for s in uniq if s not in val_set]
    if not train:
        raise ValueError("the split left no training subject")
    return sorted(train), sorted(val_set)


def kfold_subjects(subjects: Sequence[str], folds: int, seed: int = 0, strata: Sequence[Any] | None = None) -> list[list[str]]:
    """All k validation folds (each a sorted list of subjects); together they partition the subjects."""
    return [split_subjects(subjects, folds=folds, fold=f, seed=seed, strata=strata)[1] for f in range(folds)]


def read_case_list(ref: str | Path) -> list[str]:
    """Case ids from a text file (one per line; blank lines and ``#`` comments skipped) or from a checkpoint.

    Args:
        ref: a ``.txt`` file, or a medcnn checkpoint (path or bundled model name) whose
            ``training.val_cases`` (its validation cases) are returned.

    Raises:
        ConfigError: neither a readable file nor a bundled model, or a checkpoint without ``val_cases``.
    """
    from medcnn.engine.checkpoint import checkpoint_path, load_checkpoint

    path = checkpoint_path(ref)
    if path is None:
        raise ConfigError(f"config key 'data.val_cases': {ref!r} is neither a file nor a bundled model")
    if path.suffix == ".pt":
        cases = (load_checkpoint(path).get("training") or {}).get("val_cases")
        if not cases:
            raise ConfigError(f"config key 'data.val_cases': {path} lists no validation cases (training.val_cases)")
        return [str(c) for c in cases]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s for s in (ln.split("#", 1)[0].strip() for ln in lines) if s]


def fixed_split(recs: Sequence[dict], val_cases: Sequence[str], folds: int | None = None) -> tuple[list[str], list[str]]:
    """``(train_subjects, val_subjects)`` for a given validation case list (``data.val_cases``).

    The subjects of the listed cases validate (with all their cases: a split never cuts a subject); every
    other subject trains. Listed cases absent from ``recs`` are ignored (logged).

    Raises:
        ConfigError: with ``folds`` (the two choose the split differently), or no listed case present.
    """
    if folds:
        raise ConfigError("config keys 'data.val_cases' and 'data.folds' exclude each other")
    wanted = set(val_cases)
    val_s = sorted({r["subject"] for r in recs if r["case"] in wanted})
    if not val_s:
        raise ConfigError(f"config key 'data.val_cases': none of its {len(wanted)} cases is in the data "
                          f"(e.g. {sorted(wanted)[0] if wanted else 'an empty list'})")
    missing = len(wanted - {r["case"] for r in recs})
    if missing:
        logger.info("data.val_cases: %d of the %d listed cases are not in the data", missing, len(wanted))
    vs = set(val_s)
    train_s = sorted({r["subject"] for r in recs} - vs)
    if not train_s:
        raise ConfigError("config key 'data.val_cases': the split left no training subject")
    return train_s, val_s
