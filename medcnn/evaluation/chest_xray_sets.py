"""Merging generated chest X-ray sets into one training set (``medcnn merge-sets``).

::

    medcnn merge-sets detector data/cxr_det data/cxr_train3 data/cxr_nod7:s7-
    medcnn merge-sets findings data/cxr_cls data/cxr_train3 data/cxr_nod7:s7-
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from medcnn.errors import InputError
from medcnn.io.atomic import write_csv_atomic
from medcnn.pipelines.chest_xray_models import FINDINGS


def training_info(ref: str) -> dict:
    """A checkpoint's (bundled name or path) ``training`` section: split, case lists, history."""
    from medcnn.engine.checkpoint import checkpoint_path, load_checkpoint

    return load_checkpoint(checkpoint_path(ref) or ref).get("training") or {}


def _set_table(folder: str | Path, name: str, cols: list[str] | None) -> tuple[list[dict[str, str]], list[str]]:
    """The rows and columns of a generated set's ``name`` CSV; ``cols``: the first set's columns, which it must match.

    Raises:
        InputError: no such file in ``folder``, or other columns than ``cols``.
    """
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(folder, f"no {name} (expected a `medcnn generate chest-xray` folder)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        if cols is not None and fields != cols:
            raise InputError(path, f"its columns differ from the first set's ({', '.join(cols)})")
        return list(reader), fields


def detector_manifest(out_dir: str | Path, sources: Sequence[tuple[str | Path, str]],
                      findings: str = "chest-xray") -> tuple[int, int]:
    """Write ``out_dir/manifest.csv``: the cases of several generated sets, to train a nodule detector on.

    The findings model's validation cases are left out (so that :func:`medcnn.evaluation.chest_xray_fusion.fusion_data` can fit the fusion on
    them); image and mask paths are rewritten relative to ``out_dir``.

    Args:
        out_dir: where the merged manifest goes.
        sources: ``(folder, prefix)`` per set (``medcnn generate chest-xray`` folders); ``prefix`` is put before
            the set's case and subject names so that two sets' ``cxr-00001`` stay apart (``""`` for the set the
            findings model trained on, whose names its validation list uses).
        findings: the findings model (bundled name or checkpoint) whose ``training.val_cases`` are left out.

    Returns:
        ``(cases written, of them with a nodule)``.

    Raises:
        InputError: a folder without ``manifest.csv``, or sets with different columns.
    """
    val = set(training_info(findings).get("val_cases") or [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    cols: list[str] | None = None
    for folder, prefix in sources:
        set_rows, cols = _set_table(folder, "manifest.csv", cols)
        for r in set_rows:
            r["case"], r["subject"] = prefix + r["case"], prefix + r["subject"]
            if r["case"] in val:
                continue
            for key in ("image", "lungs", "heart", "nodule"):
                if r.get(key):
                    r[key] = Path(os.path.relpath(Path(folder) / r[key], out)).as_posix()
            rows.append(r)
    write_csv_atomic(out / "manifest.csv", cols or [], rows)
    return len(rows), sum(r.get("Nodule") == "1" for r in rows)


def findings_data(out_dir: str | Path, sources: Sequence[tuple[str | Path, str]]) -> tuple[int, int]:
    """Write ``out_dir/labels.csv`` (CheXpert layout) merging several generated sets, to train the findings model on.

    Each set's images and finding masks are linked (copied where links are not allowed) into ``out_dir/images``
    and ``out_dir/masks`` under ``prefix + name``, and its ``Patient`` names get the prefix too, so that two
    sets' ``cxr-00001`` / ``patient00001`` stay apart; ``data.finding_masks: masks/{case}_{finding}.png`` then
    finds the masks. Nothing is left out: hold the findings model's validation cases out with
    ``data.val_cases`` (e.g. ``--set data.val_cases=chest-xray``).

    Args:
        out_dir: the new folder (``labels.csv``, ``images/``, ``masks/``).
        sources: ``(folder, prefix)`` per set (``medcnn generate chest-xray`` folders: ``labels.csv``, ``masks/``).

    Returns:
        ``(radiographs written, finding masks linked)``.

    Raises:
        InputError: a folder without ``labels.csv``, sets with different columns, two radiographs of one name, or
            ``out_dir`` being one of the sets (its files would be replaced by links).
    """
    import shutil

    out = Path(out_dir)
    for folder, _ in sources:
        if out.resolve() == Path(folder).resolve():
            raise InputError(out, "the merged folder must not be one of the sets it merges (its images would be "
                                  "replaced by links)")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    def link(src: Path, dst: Path) -> None:
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            dst.symlink_to(os.path.relpath(src, dst.parent))
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(src, dst)

    rows: list[dict[str, str]] = []
    cols: list[str] | None = None
    names: set[str] = set()
    n_masks = 0
    for folder, prefix in sources:
        set_rows, cols = _set_table(folder, "labels.csv", cols)
        stems: set[str] = set()
        for r in set_rows:
            stems.add(Path(r["Path"]).stem)
            name = prefix + Path(r["Path"]).name
            if name in names:
                raise InputError(Path(folder) / "labels.csv",
                                 f"a second radiograph named {name}: give the sets different prefixes")
            names.add(name)
            link(Path(folder) / r["Path"], out / "images" / name)
            r["Path"], r["Patient"] = f"images/{name}", prefix + r["Patient"]
            rows.append(r)
        for m in sorted((Path(folder) / "masks").glob("*.png")):
            case, _, finding = m.stem.rpartition("_")
            if case in stems and finding in FINDINGS:
                link(m, out / "masks" / f"{prefix}{m.name}")
                n_masks += 1
    write_csv_atomic(out / "labels.csv", cols or [], rows)
    return len(rows), n_masks
