"""``medcnn demo``: run over ``sample_data/`` and write a summary table and QC pictures.

Each task folder of ``sample_data/`` is discovered with the same case rules as ``medcnn predict``
(``prompt/`` goes through the bundled promptable model, one box per reference object);
every case is loaded with its geometry and drawn (with its reference label where one ships), and
one row per case goes to ``summary.csv``. A case that fails is reported in its row and on stderr;
the others still run.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from medcnn import qc
from medcnn._version import __version__
from medcnn.cases import Case, find_brain_tumor_cases, find_image_cases
from medcnn.errors import InputError, MedcnnError
from medcnn.io import geometry, load, write_text_atomic
from medcnn.io.atomic import write_csv_atomic
from medcnn.metrics.segmentation import dice_score

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = ["task", "case", "inputs", "status", "error", "result", "shape", "spacing_mm", "orientation", "min", "max", "qc"]


@dataclass(frozen=True)
class DemoTask:
    """One folder of sample data and how to find its cases."""

    name: str
    folder: str
    discover: Callable[[list[Path]], list[Case]]


def _find_masks(case: Case) -> Path | None:
    """Reference lung mask for a chest X-ray case (``masks/<case>_lungs.png`` next to ``images/``)."""
    img = case.inputs[0]
    for folder in (img.parent / "masks", img.parent.parent / "masks"):
        cand = folder / f"{case.id}_lungs.png"
        if cand.exists():
            return cand
    return None


TASKS = (
    DemoTask("brain-tumor", "brain-tumor", lambda p: find_brain_tumor_cases(p)),
    DemoTask("alzheimer", "alzheimer", lambda p: find_image_cases(p)),
    DemoTask("chest-xray", "chest-xray/images", lambda p: find_image_cases(p)),
    DemoTask("dicom", "dicom", lambda p: find_image_cases(p)),
)


def _row(task: str, case: Case) -> dict:
    return {"task": task, "case": case.id, "inputs": ";".join(str(p) for p in case.inputs), "status": "ok", "error": ""}


def _process(task: str, case: Case, qc_dir: Path) -> dict:
    row = _row(task, case)
    if case.error:
        raise InputError(case.inputs[0].parent if case.inputs else None, case.error)
    img = load(case.inputs, series=case.extra.get("series"))
    sd = int(img.meta["medcnn_source"]["spatial_dims"])
    aff = img.affine.numpy()
    row["shape"] = "x".join(str(s) for s in img.shape)
    row["spacing_mm"] = "x".join(f"{s:.2f}" for s in geometry.voxel_spacing(aff, sd))
    row["orientation"] = geometry.axcodes(aff) if sd == 3 else "2D"
    row["min"], row["max"] = f"{float(img.min()):.4g}", f"{float(img.max()):.4g}"
    label = None
    if case.label is not None:
        label = load(case.label, mode="nearest")[0]
        if tuple(label.shape) != tuple(img.shape[1:]):
            raise InputError(case.label, f"label grid {tuple(label.shape)} does not match image {tuple(img.shape[1:])}")
        if case.extra.get("labels"):  # drawn in BraTS 2023 colours whatever the file's convention
            from medcnn.metrics.labels import label_mapping, remap_labels

            label = remap_labels(label.round(), label_mapping(case.extra["labels"]), str(case.label))
    elif task == "chest-xray":
        m = _find_masks(case)
        if m is not None:
            label = (load(m)[0] > 0).to(dtype=img.dtype)
    names = {1: "NCR", 2: "ED", 3: "ET"} if task == "brain-tumor" and label is not None else None
    if sd == 3:
        shown = img[1] if img.shape[0] == 4 else img[0]  # t1c for brain-tumour cases
        rgb = qc.volume_figure(shown, aff, label=label, names=names, case_id=case.id)
    else:
        rgb = qc.image_figure(img, label=label, names={1: "lungs"} if label is not None else None, case_id=case.id)
    out = qc_dir / f"{task}_{case.id}.png"
    qc.save_png(rgb, out)
    row["qc"] = str(out.relative_to(qc_dir.parent))
    return row


def _run_pipeline(task: str, folder: Path, out_dir: Path) -> list[dict] | None:
    """Run ``medcnn predict <task>`` with its bundled model on the sample folder (None if not available)."""
    from medcnn.batch import run_batch
    from medcnn.pipelines import available, bundled_models, get_pipeline, load_models
    from medcnn.predictor import bundled_path

    if task not in available():
        return None
    pipe = get_pipeline(task)
    if any(bundled_path(name) is None for name in bundled_models(pipe)):
        logger.warning("%s: no bundled model in this install; showing the inputs only", task)
        return None
    model, info = load_models(pipe)
    sub = out_dir / task
    results = run_batch(pipe, model, [folder], sub, overwrite=True, model_info=info, progress=False)
    cases = {c.id: c for c in pipe.discover([folder])}
    rows = []
    for r in results:
        fields = {k: r.get(k, "") for k in pipe.fields}
        result = " ".join(f"{k}={v}" for k, v in fields.items() if v != "")
        case = cases.get(r["case"])
        if r["status"] == "ok" and case is not None and case.label is not None:
            result += " " + _reference_scores(sub / f"{case.id}.nii.gz", case.label, case.extra.get("labels"))
        elif r["status"] == "ok" and case is not None and task == "chest-xray" and _find_masks(case) is not None:
            result += " " + _mask_dice(sub / f"{case.id}_lungs.png", _find_masks(case))
        rows.append({"task": task, "case": r["case"], "inputs": r["inputs"], "status": r["status"], "error": r["error"],
                     "result": result.strip(), "qc": f"{task}/qc/{r['case']}.png"})
    return rows


def _run_prompt(folder: Path, out_dir: Path) -> list[dict] | None:
    """The bundled promptable model on ``sample_data/prompt``: one box per object (the bounding box of its
    reference mask, so given as exact: ``exact_box``), the label map and a QC picture per image, box-prompt Dice
    against the reference."""
    import numpy as np

    from medcnn.engine.data import records_from_manifest
    from medcnn.predictor import bundled_path
    from medcnn.prompt import PromptableSegmenter
    from medcnn.prompt.apply import prompt_file
    from medcnn.prompt.train import object_bbox

    manifest = folder / "manifest.csv"
    if not manifest.is_file() or bundled_path("medcnn-prompt") is None:
        return None
    seg = PromptableSegmenter.from_pretrained()
    rows = []
    for rec in records_from_manifest(manifest, None, "label", "subject"):
        row = {"task": "prompt", "case": rec["case"], "inputs": rec["image"][0], "status": "ok", "error": ""}
        try:
            ref = load(rec["label"], mode="nearest")[0].numpy().round().astype(np.int64)
            objs = [v for v in np.unique(ref) if v > 0]
            boxes = [tuple(object_bbox(ref == v)) for v in objs]
            out = out_dir / "prompt" / f"{rec['case']}_mask.png"
            info = prompt_file(rec["image"][0], out, boxes=boxes, model=seg, exact_box=True,
                               qc_path=out_dir / "qc" / f"prompt_{rec['case']}.png")
            pred = _png_labels(out)
            if len(objs) == 1:
                pred = (pred > 0).astype(np.int64)
            dice = [dice_score(pred == k + 1, ref == v) for k, v in enumerate(objs)]
            row.update(result=f"objects={len(objs)} dice_box={np.mean(dice):.3f}", shape="x".join(map(str, info["shape"])),
                       qc=f"qc/prompt_{rec['case']}.png")
        except MedcnnError as exc:
            row.update(status="error", error=str(exc))
            logger.error("prompt/%s: %s", rec["case"], exc)
        rows.append(row)
    return rows


def _png_labels(path: Path) -> np.ndarray:
    """Label values of a mask PNG: a palette PNG's indices (several objects), else 0/255 grey -> 0/1."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im).astype(np.int64)
        return arr if im.mode == "P" else (arr > 0).astype(np.int64)


def _reference_scores(pred_path: Path, ref_path: Path, labels: str | None = None) -> str:
    """``dice_WT=... dice_TC=... dice_ET=...`` of a predicted label map against its reference (whose label
    convention is ``labels``, e.g. ``brats2021``; None: BraTS 2023)."""
    from medcnn.validation import region_dice

    pred = load(pred_path, mode="nearest")[0].numpy().round().astype("int64")
    return " ".join(f"{k}={v:.3f}" for k, v in region_dice(pred, ref_path, labels=labels).items())


def _mask_dice(pred_path: Path, ref_path: Path) -> str:
    """``dice_lungs=...`` of a predicted 0/255 mask against its reference mask."""
    return f"dice_lungs={dice_score(load(pred_path)[0].numpy() > 0, load(ref_path)[0].numpy() > 0):.3f}"


def run_demo(data_dir: str | Path, out_dir: str | Path) -> list[dict]:
    """Process every sample case; write ``summary.csv``, ``qc/*.png`` and ``run.json``.

    Args:
        data_dir: the ``sample_data/`` folder.
        out_dir: output folder (created).

    Returns:
        The summary rows (one dict per case, ``status`` ok or error).

    Raises:
        InputError: ``data_dir`` does not exist or holds none of the task folders.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "sample data folder not found (pass --data, or regenerate it with "
                                   "`medcnn generate sample -o sample_data`)")
    qc_dir = out_dir / "qc"
    qc_dir.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, Case]] = []
    rows: list[dict] = []
    for task in TASKS:
        folder = data_dir / task.folder
        if not folder.exists():
            logger.warning("%s: no %s sample data here, skipped", folder, task.name)
            continue
        try:
            todo.extend((task.name, c) for c in task.discover([folder]))
        except MedcnnError as exc:
            rows.append({"task": task.name, "case": folder.name, "inputs": str(folder), "status": "error", "error": str(exc)})
            logger.error("%s", exc)
    if not todo and not rows:
        raise InputError(data_dir, "no sample data found (expected brain-tumor/, alzheimer/, chest-xray/, dicom/)")
    t0 = time.perf_counter()
    for task in {name for name, _ in todo}:
        pipe_rows = _run_pipeline(task, data_dir / next(t.folder for t in TASKS if t.name == task), out_dir)
        if pipe_rows is not None:
            rows.extend(pipe_rows)
            todo = [(name, c) for name, c in todo if name != task]
    prompt_rows = _run_prompt(data_dir / "prompt", out_dir) if (data_dir / "prompt").is_dir() else None
    rows.extend(prompt_rows or [])
    for task, case in tqdm(todo, desc="demo", unit="case", disable=None):
        try:
            rows.append(_process(task, case, qc_dir))
        except MedcnnError as exc:
            row = _row(task, case)
            row.update(status="error", error=str(exc))
            rows.append(row)
            logger.error("%s/%s: %s", task, case.id, exc)
    write_csv_atomic(out_dir / "summary.csv", SUMMARY_FIELDS, rows)
    run = {
        "medcnn_version": __version__,
        "command": "demo",
        "data": str(data_dir),
        "python": platform.python_version(),
        "n_cases": len(rows),
        "n_ok": sum(r["status"] == "ok" for r in rows),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_text_atomic(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return rows


def summarize(rows: list[dict]) -> str:
    """A short human-readable table of the rows (task, case, status, shape)."""
    lines = [f"{'task':<12} {'case':<22} {'status':<7} result / shape"]
    for r in rows:
        detail = r.get("result") or f"{r.get('shape', '')} {r.get('orientation', '')}"
        if r["status"] == "error":
            detail = r.get("error", "")
        lines.append(f"{r['task']:<12} {r['case'][:22]:<22} {r['status']:<7} {detail}")
    n_ok = sum(r["status"] == "ok" for r in rows)
    lines.append(f"{n_ok}/{len(rows)} cases ok")
    return "\n".join(lines)


__all__ = ["TASKS", "run_demo", "summarize"]
