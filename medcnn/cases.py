"""Case discovery: turn the paths a user passes on the command line into named cases.

Rules:

* brain tumour: a folder holding four contrasts with BraTS 2023 suffixes (``-t1n -t1c -t2w -t2f``),
  BraTS 2021 suffixes (``_t1 _t1ce _t2 _flair``), or nnU-Net ``CASE_0000..0003`` files in a flat
  folder (0000 t1n, 0001 t1c, 0002 t2w, 0003 t2f). Case id: folder name or CASE prefix. A contrast
  may also be a DICOM series sub-folder or ``.dcm`` file with the same suffix (``case/CASE-t1n/``).
* single-image tasks (Alzheimer's T1, chest X-ray): every image file, every DICOM series folder;
  BIDS ``sub-*/[ses-*/]anat/*_T1w.nii.gz`` gives ids ``sub-XX[_ses-YY]``.

Case ids come from file and folder names only, never from DICOM patient attributes. Ids are unique
within one discovery: the same files reached twice (a folder given twice, a symlink to a folder already
searched) are one case; different inputs under one id (``siteA/case001`` and ``siteB/case001``, two
DICOM series of one folder with the same SeriesNumber) keep the id for the first in command-line and
sorted-folder order and become ``<id>_2``, ``<id>_3``... for the others, with a warning. Each real
folder is searched once (symlink loops end there).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medcnn.errors import InputError
from medcnn.io import dicom
from medcnn.io.atomic import TMP_MARK
from medcnn.io.readers import DICOM_SUFFIXES, IMAGE2D_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, UNSUPPORTED_HINTS

logger = logging.getLogger(__name__)

BRAIN_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
_BRATS23 = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f"}
_BRATS21 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_NNUNET = {"0000": "t1n", "0001": "t1c", "0002": "t2w", "0003": "t2f"}
_VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
#: sub-folders of a searched folder that hold annotations, not scans (generated and nnU-Net / MSD datasets);
#: find_image_cases skips them unless the folder itself is named as an input
ANNOTATION_DIRS = frozenset({"masks", "labels", "labelstr", "labelsts", "segmentations"})
_LABEL_WORDS = ("seg", "label", "labels", "mask")
#: image formats medcnn refuses with a hint (MINC, PAR/REC...): such files become cases that fail with
#: that hint instead of being silently ignored
_REFUSED_SUFFIXES = tuple(UNSUPPORTED_HINTS)


@dataclass
class Case:
    """One unit of work for a pipeline.

    Attributes:
        id: case identifier used for output names (from file/folder names).
        inputs: input paths in the order the pipeline expects (e.g. t1n, t1c, t2w, t2f).
        label: reference label file if one was found next to the inputs.
        error: set when discovery already knows the case cannot run (e.g. a contrast is missing).
        extra: free-form details (e.g. BIDS subject/session; ``labels``: the label convention of ``label``
            when it is not BraTS 2023, e.g. ``"brats2021"`` for a case with BraTS 2021 file names).
    """

    id: str
    inputs: list[Path]
    label: Path | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suf in sorted(_VOLUME_SUFFIXES + IMAGE2D_SUFFIXES + DICOM_SUFFIXES + _REFUSED_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


class _CaseIds:
    """Cases by unique id: the same inputs twice are one case, other inputs under a taken id get ``<id>_N``."""

    def __init__(self) -> None:
        self.by_id: dict[str, Case] = {}
        self._keys: set[tuple] = set()
        self.reached = 0  # cases found, the same files found again included

    def add(self, case: Case) -> None:
        self.reached += 1
        key = (tuple(os.path.realpath(p) for p in case.inputs), case.extra.get("series"))
        if key in self._keys:  # the same files reached again (a symlink, an input given twice)
            return
        self._keys.add(key)
        cid, n = case.id, 2
        while cid in self.by_id:
            cid = f"{case.id}_{n}"
            n += 1
        if cid != case.id:
            logger.warning("%s: case id %r is already taken by %s; this case is named %r", _where(case), case.id,
                           _where(self.by_id[case.id]), cid)
            case.id = cid
        self.by_id[cid] = case

    def sorted(self) -> list[Case]:
        return [self.by_id[k] for k in sorted(self.by_id)]


def _where(case: Case) -> str:
    if not case.inputs:
        return case.id
    first = Path(case.inputs[0])
    where = str(first if first.is_dir() else first.parent)
    return where + (f" (series {case.extra['series']})" if case.extra.get("series") else "")


def _real_first(p: Path) -> tuple[bool, str]:
    """Sort key: real files and folders before symlinks to them (so that cases keep their real names)."""
    return p.is_symlink(), p.name


def _first_visit(folder: Path, visited: set[str]) -> bool:
    """True the first time the real folder behind ``folder`` is seen (symlinks resolved)."""
    real = os.path.realpath(folder)
    if real in visited:
        logger.debug("skipping %s: %s was searched already", folder, real)
        return False
    visited.add(real)
    return True


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and TMP_MARK not in p.name)


def _brain_case_from_folder(folder: Path) -> Case | None:
    """A BraTS-style case folder (2023 or 2021 suffixes), or None if it is not one."""
    found: dict[str, Path] = {}
    label = None
    brats21 = False
    dicom_dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    for f in _visible_files(folder) + dicom_dirs:
        stem = _strip_suffix(f.name)
        refused = f.name.lower().endswith(_REFUSED_SUFFIXES)  # e.g. a MINC contrast: fails with the format hint
        dicom_contrast = f.is_dir() or f.name.lower().endswith(DICOM_SUFFIXES)  # a series folder or a DICOM file
        if not f.name.lower().endswith(_VOLUME_SUFFIXES) and not refused and not dicom_contrast:
            continue
        m = re.search(r"[-_]([A-Za-z0-9]+)$", stem)
        if not m:
            continue
        tag = m.group(1).lower()
        if tag in _LABEL_WORDS:
            label = label if f.is_dir() else f
            continue
        key = _BRATS23.get(tag) if stem[m.start()] == "-" else None
        if key is None and tag in _BRATS21:
            brats21 = True
        key = key or _BRATS21.get(tag) or _BRATS23.get(tag)
        if key and (key not in found or (not refused and found[key].name.lower().endswith(_REFUSED_SUFFIXES))):
            found[key] = f
    if not found:
        return None
    case = Case(id=folder.name, inputs=[found[c] for c in BRAIN_CONTRASTS if c in found], label=label)
    if label is not None and brats21:  # BraTS 2021 names come with BraTS 2021 label values (ET = 4)
        case.extra["labels"] = "brats2021"
    missing = [c for c in BRAIN_CONTRASTS if c not in found]
    if missing:
        case.error = f"missing contrast(s) {', '.join(missing)} (need t1n, t1c, t2w, t2f)"
    return case


def _nnunet_cases(folder: Path) -> list[Case]:
    groups: dict[str, dict[str, Path]] = {}
    for f in _visible_files(folder):
        if not f.name.lower().endswith(_VOLUME_SUFFIXES):
            continue
        m = re.match(r"^(.*)_(\d{4})$", _strip_suffix(f.name))
        if m and m.group(2) in _NNUNET:
            groups.setdefault(m.group(1), {})[_NNUNET[m.group(2)]] = f
    cases = []
    labels_dir = folder.parent / "labelsTr" if folder.name == "imagesTr" else None
    for cid, chans in sorted(groups.items()):
        case = Case(id=cid, inputs=[chans[c] for c in BRAIN_CONTRASTS if c in chans])
        missing = [c for c in BRAIN_CONTRASTS if c not in chans]
        if missing:
            case.error = f"missing channel file(s) {', '.join(_NNUNET_REV[c] for c in missing)}"
        if labels_dir is not None:
            for suf in (".nii.gz", ".nii", ".nrrd", ".mha"):
                lab = labels_dir / f"{cid}{suf}"
                if lab.exists():
                    case.label = lab
                    break
        cases.append(case)
    return cases


_NNUNET_REV = {v: k for k, v in _NNUNET.items()}


def find_brain_tumor_cases(inputs: Sequence[str | Path]) -> list[Case]:
    """Discover 4-contrast brain MRI cases under the given paths.

    Args:
        inputs: case folders, folders of case folders, or nnU-Net flat folders.

    Returns:
        Cases sorted by id (the same files found twice are one case; another case under a taken id
        is renamed ``<id>_2``..., with a warning). A folder that looks like a case but lacks a
        contrast becomes a case with ``error`` set, so the batch reports it instead of skipping it.

    Raises:
        InputError: an input path does not exist or holds no case at all.
    """
    cases = _CaseIds()
    visited: set[str] = set()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "no such file or folder")
        found: list[Case] = []
        if p.is_dir():
            own = _brain_case_from_folder(p)
            if own is not None:
                found.append(own)
            found.extend(_nnunet_cases(p))
            if not found:
                for sub in sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")), key=_real_first):
                    if not _first_visit(sub, visited):
                        continue
                    c = _brain_case_from_folder(sub)
                    if c is not None:
                        found.append(c)
                    found.extend(_nnunet_cases(sub))
        if not found:
            raise InputError(
                p,
                "no brain-tumour case found: expected a folder with *-t1n/-t1c/-t2w/-t2f (BraTS 2023), "
                "*_t1/_t1ce/_t2/_flair (BraTS 2021) or CASE_0000..0003 (nnU-Net) files",
            )
        for c in found:
            cases.add(c)
    return cases.sorted()


def _is_image_file(p: Path, suffixes: Iterable[str]) -> bool:
    low = p.name.lower()
    if low.endswith(tuple(suffixes) + _REFUSED_SUFFIXES):
        return not _is_label_name(p)
    return dicom.is_dicom_file(p)


def _is_label_name(p: Path) -> bool:
    stem = _strip_suffix(p.name).lower()
    return bool(re.search(r"(^|[-_])(" + "|".join(_LABEL_WORDS) + r"|lungs|heart|saliency)$", stem))


def _bids_id(p: Path) -> str | None:
    m = re.match(r"^(sub-[A-Za-z0-9]+)(?:_(ses-[A-Za-z0-9]+))?.*_T1w$", _strip_suffix(p.name))
    if not m:
        return None
    return m.group(1) + (f"_{m.group(2)}" if m.group(2) else "")


def _has_dicom(folder: Path) -> bool:
    return any(dicom.is_dicom_file(f) for f in _visible_files(folder)[:20]) if folder.is_dir() else False


def find_image_cases(
    inputs: Sequence[str | Path], suffixes: Sequence[str] = _VOLUME_SUFFIXES + IMAGE2D_SUFFIXES + DICOM_SUFFIXES, bids: bool = True
) -> list[Case]:
    """Discover single-image cases: image files, DICOM series folders, BIDS T1w files.

    Args:
        inputs: files or folders (searched recursively).
        suffixes: image file endings to accept (DICOM files without an ending are sniffed).
        bids: name ``sub-*_T1w`` files by their BIDS subject/session.

    Returns:
        Cases sorted by id. A folder whose files are DICOM becomes one case per series (ids
        ``<folder>`` or ``<folder>_s<N>`` when it holds several series). Sub-folders named as
        annotation folders (:data:`ANNOTATION_DIRS`: ``masks``, ``labels``, ``labelsTr``, ...) are
        skipped (logged); name such a folder itself as an input to predict on its images.

    Raises:
        InputError: an input path does not exist or holds no image.
    """
    ids = _CaseIds()
    add = ids.add
    visited: set[str] = set()

    def visit_file(f: Path) -> None:
        bid = _bids_id(f) if bids else None
        if bid:
            add(Case(id=bid, inputs=[f], extra={"subject": bid.split("_")[0]}))
        else:
            add(Case(id=_strip_suffix(f.name), inputs=[f]))

    def visit_dir(d: Path) -> None:
        if not _first_visit(d, visited):
            return
        files = _visible_files(d)
        other_suffixes = tuple(s for s in suffixes if s not in DICOM_SUFFIXES)
        dcm = [f for f in files if not f.name.lower().endswith(other_suffixes) and dicom.is_dicom_file(f)]
        if dcm:
            try:
                series = dicom.list_series(d, recursive=False)
            except InputError as exc:
                add(Case(id=d.name, inputs=[d], error=exc.reason))
                series = []
            multi = [s for s in series if len(s.files) > 1]
            numbers = [s.number for s in multi if s.number is not None]
            for dup in sorted({n for n in numbers if numbers.count(n) > 1}):
                logger.warning("%s: %d series share SeriesNumber %s; each is a case of its own (ids %s_s%s, %s_s%s_2...)",
                               d, numbers.count(dup), dup, d.name, dup, d.name, dup)
            for s in series:
                if len(s.files) == 1:  # a radiograph, a multi-frame file or a lone slice: a case of its own
                    visit_file(s.files[0])
                    continue
                num = s.number if s.number is not None else multi.index(s)
                sid = d.name if len(multi) == 1 else f"{d.name}_s{num}"
                add(Case(id=sid, inputs=[d], extra={"series": s.uid}))
            files = [f for f in files if f not in dcm]
        for f in sorted(files, key=_real_first):
            if _is_image_file(f, suffixes):
                visit_file(f)
        for sub in sorted((x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".")), key=_real_first):
            if sub.name.lower() in ANNOTATION_DIRS:
                logger.info("skipping %s: an annotation folder, not scans (name it as an input to predict on it)", sub)
                continue
            visit_dir(sub)

    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "no such file or folder")
        searched = p.is_dir() and os.path.realpath(p) in visited  # given twice, or inside an earlier input
        before = ids.reached
        if p.is_dir():
            visit_dir(p)
        else:
            visit_file(p)
        if ids.reached == before and not searched:
            raise InputError(p, "no image found (looked for NIfTI, NRRD, MHA, DICOM, PNG, JPEG)")
    return ids.sorted()
