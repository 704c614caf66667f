"""Held-out quality of a promptable model on a folder from ``medcnn generate prompt`` (or any manifest).

::

    medcnn evaluate-run prompt data/prompt_test --model medcnn/data/models/prompt.pt -o runs/prompt_eval.csv

Every object of every image (label value = object) is prompted the ways a user would, and the
mask is scored on the image's own pixel grid:

* ``box``: its tight bounding box;
* ``box_exact``: the same box declared exact (``predict(..., exact_box=True)``: the mask is kept
  inside it, and the model uses what it learnt of exact boxes);
* ``box_jitter``: a box drawn a little loose or tight (:func:`medcnn.prompt.train.jitter_box`);
* ``click``: one positive click at the object's most interior pixel;
* ``box_refine``: the jittered box, then one click in the largest error region (positive on a
  miss, negative on a false positive) with the first result as ``mask_input``.

The command prints mean Dice per mode overall and per ``source`` column (when the manifest has one) and
writes one row per object and mode.

``--volumes`` scores 3D box propagation on labelled volumes instead (:func:`evaluate_volumes`): the
largest connected part of each label map's foreground, prompted with its exact 3D box::

    medcnn evaluate-run prompt --volumes data/bt_dev     # generated brain-tumour volumes, FLAIR

``--real-t1`` scores real MRI intensities instead (:func:`evaluate_real_t1`): slices of the
vendored MNI152 T1 template, upsampled to 1 mm, each structure given its tight box::

    medcnn evaluate-run prompt --real-t1
    medcnn evaluate-run prompt --real-t1 --exact-box     # the boxes declared exact (also with --volumes)

:func:`calibrate_exact` chooses a light-model checkpoint's exact-box logit offset on DATA (images it
never trained on, e.g. its own validation images) and writes a copy of the checkpoint with it;
``medcnn train`` does the same at every validation::

    medcnn calibrate exact-box data/val_manifest.csv --model runs/prompt/best.pt -o calibrated.pt

:func:`fit_offsets` fits a light-model checkpoint's per-prompt offsets (:mod:`medcnn.prompt.offsets`) on DATA
(images neither the network nor your evaluation uses) and writes a copy of the checkpoint with them; the
command prints the cross-validated Dice of fixed and per-prompt offsets::

    medcnn calibrate offsets data/prompt_cal --model runs/prompt/best.pt -o adaptive.pt
    medcnn calibrate offsets data/cal_a data/cal_b --model runs/prompt/best.pt -o adaptive.pt
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medcnn.engine.data import find_records
from medcnn.inference.postprocess import keep_largest_component
from medcnn.prompt.segmenter import PromptableSegmenter
from medcnn.metrics.segmentation import dice_score
from medcnn.prompt.train import jitter_box, load_prompt_case, load_prompt_items, object_bbox, object_ids

logger = logging.getLogger(__name__)

MODES = ("box", "box_exact", "box_jitter", "click", "box_refine")
#: the template regions scored by :func:`evaluate_real_t1` (those the ``brain`` generator source cuts objects from)
T1_STRUCTURES = ("brain", "ventricles", "deep_gm", "hippocampus", "cerebellum", "brainstem")


def _interior(mask: np.ndarray) -> tuple[int, int]:
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(i), int(j)


def _correction(pred: np.ndarray, ref: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """A click in the larger error region: (pixel, 1) on a miss, (pixel, 0) on a false positive."""
    best = None
    for err, lab in ((ref & ~pred, 1), (pred & ~ref, 0)):
        if err.any():
            d = ndi.distance_transform_edt(np.pad(err, 1))[1:-1, 1:-1]
            if best is None or d.max() > best[0]:
                best = (float(d.max()), _interior(err), lab)
    return None if best is None else (best[1], best[2])


def _records(data: str | Path) -> list[dict]:
    """Cases of a folder or manifest with ``image`` and ``label`` columns (:func:`find_records`)."""
    return find_records({"source": str(data), "format": "auto", "channels": None, "label": "label", "subject": "subject",
                         "masks": None, "classes": None, "images": None, "uncertainty": "ignore"})


def evaluate(data: str | Path, model: str | None = None, *, max_objects: int | None = None,
             seed: int = 0) -> list[dict]:
    """Per-object Dice rows ``{case, source, object, area_px, mode, dice}`` (see the module docstring)."""
    recs = _records(data)
    sources = {}
    man = Path(data) / "manifest.csv" if Path(data).is_dir() else Path(data)
    with open(man, newline="") as fh:
        for r in csv.DictReader(fh):
            sources[r.get("case", "")] = r.get("source", "")
    seg = PromptableSegmenter.from_pretrained(model)
    rng = np.random.default_rng(seed)
    rows = []
    from tqdm.auto import tqdm

    for rec in tqdm(recs, desc="prompt evaluation", unit="image"):
        for sl in load_prompt_case(rec["image"][0], rec["label"]):
            seg.set_image(sl["image"].float()[None])
            for obj_id in object_ids(sl["label"])[:max_objects]:
                ref = (sl["label"] == obj_id).numpy()
                box = object_bbox(ref)
                loose = jitter_box(rng, box, ref.shape)
                out = {"box": seg.predict(box=box).numpy(), "box_exact": seg.predict(box=box, exact_box=True).numpy()}
                logits = seg.predict(box=loose, return_logits=True)
                out["box_jitter"] = logits.numpy() > 0
                out["click"] = seg.predict(points=[_interior(ref)], labels=[1]).numpy()
                fix = _correction(out["box_jitter"], ref)
                out["box_refine"] = out["box_jitter"] if fix is None else seg.predict(
                    box=loose, points=[fix[0]], labels=[fix[1]], mask_input=logits).numpy()
                for mode in MODES:
                    rows.append({"case": rec["case"], "source": sources.get(rec["case"], ""), "object": obj_id,
                                 "area_px": int(ref.sum()), "mode": mode, "dice": dice_score(out[mode], ref)})
    return rows


def _lite_checkpoint(model: str | Path, nothing: str) -> tuple[Path, Any]:
    """A light promptable checkpoint's path and backend, its per-prompt offset models off (fixed offsets only).

    Raises:
        InputError: not a checkpoint file or bundled name, or not a light promptable checkpoint (``nothing`` says
            what that means for the caller).
    """
    import dataclasses

    from medcnn.engine.checkpoint import checkpoint_path
    from medcnn.errors import InputError
    from medcnn.prompt.lite import LitePromptBackend

    path = checkpoint_path(str(model))
    if path is None:
        raise InputError(Path(model), "not a checkpoint file or bundled model name")
    backend = PromptableSegmenter.from_pretrained(path).backend
    if not isinstance(backend, LitePromptBackend):
        raise InputError(path, f"not a light promptable checkpoint (medcnn train, task: prompt): {nothing}")
    backend.spec = dataclasses.replace(backend.spec, offset_model=None, offset_model_exact=None)
    return path, backend


def calibrate_exact(data: str | Path, model: str | Path, out: str | Path, *, max_objects: int = 4) -> dict:
    """Choose a light promptable checkpoint's exact-box offset (``prompt.logit_offset_exact``) on held-out images.

    Every object of ``data`` (at most ``max_objects`` per image, as the training's validation) is given its
    exact box with each offset of :data:`~medcnn.prompt.train.CALIBRATION_OFFSETS`; the offset with the best
    mean Dice is written into a copy of the checkpoint at ``out`` (weights and everything else unchanged).

    Returns:
        ``{"offset", "dice", "objects"}``.

    Raises:
        InputError: ``model`` is not a light promptable checkpoint (MedSAM files have no offset).
    """
    import dataclasses

    from medcnn.engine.checkpoint import load_checkpoint, save_checkpoint
    from medcnn.errors import InputError
    from medcnn.prompt.train import CALIBRATION_OFFSETS, box_dice, calibrate_offset

    path, backend = _lite_checkpoint(model, "nothing to calibrate")
    backend.spec = dataclasses.replace(backend.spec, logit_offset=0.0, logit_offset_exact=None)
    items = [sl for rec in _records(data) for sl in load_prompt_items(rec["image"][0], rec["label"])]
    if not items:
        raise InputError(Path(data), "no image with an object to calibrate on")
    scores = box_dice(backend, items, max_objects=max_objects, offsets=CALIBRATION_OFFSETS, exact=True)
    k = calibrate_offset(scores, None, CALIBRATION_OFFSETS)
    ck = load_checkpoint(path)
    ck["prompt"] = {**ck.get("prompt", {}), "logit_offset_exact": float(CALIBRATION_OFFSETS[k])}
    if ck["prompt"].pop("offset_model", None) is not None:  # fitted around the old offset: now stale
        logger.warning("%s: its per-prompt offset models were fitted around the old offsets and are dropped from %s; "
                       "refit them with `medcnn calibrate offsets`", path, out)
    ck["metrics"] = {**ck.get("metrics", {}), "dice_box_exact": float(scores[:, k].mean()),
                     "logit_offset_exact": float(CALIBRATION_OFFSETS[k])}
    save_checkpoint(ck, out)
    logger.info("exact-box offset %.1f (Dice %.4f over %d objects) -> %s", CALIBRATION_OFFSETS[k], scores[:, k].mean(),
                len(scores), out)
    return {"offset": float(CALIBRATION_OFFSETS[k]), "dice": float(scores[:, k].mean()), "objects": len(scores)}


#: the offset grid :func:`fit_offsets` scores each object on
FIT_OFFSETS = tuple(np.arange(0.0, 6.001, 0.25).round(2).tolist())


def _offset_curves(backend, data: str | Path | list[str | Path], *, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per object and kind of box: :func:`~medcnn.prompt.offsets.offset_features` and Dice over :data:`FIT_OFFSETS`.

    Kinds: ``exact`` (the tight box declared exact: mask kept inside it), ``tight`` and ``jitter``
    (drawn boxes, :func:`~medcnn.prompt.train.jitter_box`). Returns ``{kind: {"features", "dice", "case"}}``.
    """
    from medcnn.prompt.lite import clip_to_box, paste_logits

    rng = np.random.default_rng(seed)
    grid = np.asarray(FIT_OFFSETS)
    got: dict[str, dict[str, list]] = {k: {"features": [], "dice": [], "case": []} for k in ("exact", "tight", "jitter")}
    from tqdm.auto import tqdm

    folders = [data] if isinstance(data, (str, Path)) else list(data)
    recs = [{**r, "case": f"{Path(d).name}/{r['case']}" if len(folders) > 1 else r["case"]}
            for d in folders for r in _records(d)]  # several folders: case ids kept apart by the folder's name
    for rec in tqdm(recs, desc="offset curves", unit="image"):
        for sl in load_prompt_case(rec["image"][0], rec["label"]):
            backend.set_image(sl["image"].float()[None])
            for obj_id in object_ids(sl["label"]):
                ref = (sl["label"] == obj_id).numpy()
                tight = object_bbox(ref)
                for kind, box, exact in (("exact", tight, True), ("tight", tight, False),
                                         ("jitter", jitter_box(rng, tight, ref.shape), False)):
                    b = torch.as_tensor(np.asarray(box, dtype=np.float64))[None]
                    regions, x, raw = backend.crop_logits(boxes=b, exact_box=exact)
                    full = paste_logits(raw[0], regions[0], ref.shape)
                    if exact:
                        full = clip_to_box(full, b[0].tolist())
                    got[kind]["features"].append(backend.offset_features(x, raw, b, exact)[0].numpy())
                    got[kind]["dice"].append([dice_score((full + o > 0).numpy(), ref) for o in grid])
                    got[kind]["case"].append(rec["case"])
    return {k: {f: np.asarray(v) for f, v in d.items()} for k, d in got.items()}


def _cross_validated(curves: dict[str, np.ndarray], base: float, folds: int = 5, alpha: float = 1.0) -> np.ndarray:
    """Each object's Dice with the offset predicted by a model fitted on the other folds (folds by case)."""
    from medcnn.prompt.offsets import fit_offset_model

    cases = sorted(set(curves["case"].tolist()))
    fold_of = {c: i % folds for i, c in enumerate(cases)}
    fold = np.array([fold_of[c] for c in curves["case"]])
    grid = np.asarray(FIT_OFFSETS)
    dice = np.empty(len(fold))
    for f in range(folds):
        test = fold == f
        model = fit_offset_model(curves["features"][~test], curves["dice"][~test], FIT_OFFSETS, base, alpha=alpha)
        off = model.predict(torch.from_numpy(curves["features"][test]), base).numpy()
        k = np.abs(grid[None] - off[:, None]).argmin(1)  # the grid's nearest offset (the grid is 0.25 apart)
        dice[test] = curves["dice"][test][np.arange(test.sum()), k]
    return dice


def fit_offsets(data: str | Path | list[str | Path], model: str | Path, out: str | Path, *, alpha: float = 1.0,
                seed: int = 0) -> dict:
    """Fit a light promptable checkpoint's per-prompt offset models on held-out images and write a copy with them.

    Every object of ``data`` (a folder or manifest, or a list of them) is prompted with its exact box
    (declared exact), its tight box and a jittered box (drawn); two
    :class:`~medcnn.prompt.offsets.OffsetModel` are fitted by ridge regression (``alpha``) to each
    object's best offset on its own image grid: one for exact boxes, one for drawn boxes (tight and
    jittered together, as a drawn box may be either). The copy at
    ``out`` stores them as ``prompt.offset_model`` (weights and everything else unchanged).

    Returns:
        ``{"objects", "exact": {...}, "tight": {...}, "jitter": {...}}``: per kind, the Dice with the fixed
        offset and the 5-fold cross-validated Dice with per-prompt offsets (folds by case), fitted on ``data``.

    Raises:
        InputError: ``model`` is not a light promptable checkpoint, or ``data`` holds too few objects.
    """
    from medcnn.engine.checkpoint import load_checkpoint, save_checkpoint
    from medcnn.errors import InputError
    from medcnn.prompt.offsets import fit_offset_model

    path, backend = _lite_checkpoint(model, "no offsets to fit")
    curves = _offset_curves(backend, data, seed=seed)
    n = len(curves["exact"]["dice"])
    if n < 50:
        raise InputError(Path(data if isinstance(data, (str, Path)) else data[0]),
                         f"{n} objects: too few to fit per-prompt offsets (use a few hundred images)")
    grid = list(FIT_OFFSETS)
    report: dict[str, Any] = {"objects": n}
    for kind in ("exact", "tight", "jitter"):
        base = backend.spec.offset(kind == "exact")
        k = int(np.argmin(np.abs(np.asarray(grid) - base)))
        report[kind] = {"fixed": float(curves[kind]["dice"][:, k].mean())}
    drawn = {f: np.concatenate([curves["tight"][f], curves["jitter"][f]]) for f in ("features", "dice", "case")}
    report["exact"]["adaptive_cv"] = float(_cross_validated(curves["exact"], backend.spec.offset(True), alpha=alpha).mean())
    cv = _cross_validated(drawn, backend.spec.offset(False), alpha=alpha)  # one drawn model for both kinds
    report["tight"]["adaptive_cv"], report["jitter"]["adaptive_cv"] = float(cv[:n].mean()), float(cv[n:].mean())
    exact_model = fit_offset_model(curves["exact"]["features"], curves["exact"]["dice"], grid, backend.spec.offset(True),
                                   alpha=alpha)
    drawn_model = fit_offset_model(drawn["features"], drawn["dice"], grid, backend.spec.offset(False), alpha=alpha)
    ck = load_checkpoint(path)
    ck["prompt"] = {**ck.get("prompt", {}), "offset_model": {"drawn": drawn_model.to_dict(), "exact": exact_model.to_dict()}}
    ck["metrics"] = {**ck.get("metrics", {}), "offset_model_fit": report}
    save_checkpoint(ck, out)
    logger.info("per-prompt offsets fitted on %d objects -> %s", n, out)
    return report


def evaluate_real_t1(model: str | None = None, *, zoom: float = 2.0, step: int = 2,
                     min_px: int = 40, exact_box: bool = False) -> list[dict]:
    """Box-prompt Dice on real T1 MRI: slices of the vendored MNI152 template (real intensities).

    Every ``step``-th slice along each axis is upsampled ``zoom`` times (bilinear; the 2 mm template
    becomes a 1 mm image, as T1 scans are usually acquired); each connected part (at least
    ``min_px`` pixels) of each structure of :data:`T1_STRUCTURES` (the template's region masks,
    :func:`medcnn.synth.anatomy.load_mni152`, resampled the same way and thresholded at 0.5) is
    prompted with its tight bounding box. The generated ``brain`` training images are cut from the
    same regions, but with piecewise-constant synthetic contrasts: what this measures is the
    transfer to real MRI intensities (partial volume, bias, real tissue texture).

    Args:
        model: checkpoint or bundled name (default: the bundled ``medcnn-prompt``).
        zoom: in-plane upsampling of each slice.
        step: slice stride along each axis.
        min_px: smallest object scored, in upsampled pixels.
        exact_box: declare the boxes exact (``predict(..., exact_box=True)``).

    Returns:
        Rows ``{axis, slice, structure, area_px, dice}``.
    """
    from medcnn.synth.anatomy import load_mni152

    anat = load_mni152()
    seg = PromptableSegmenter.from_pretrained(model)
    rows = []
    for axis in range(3):
        for k in range(0, anat.t1.shape[axis], step):
            masks = {}
            for name in T1_STRUCTURES:
                m = ndi.zoom(np.take(anat.regions[name], k, axis=axis).astype(np.float32), zoom, order=1) > 0.5
                lab, n = ndi.label(m)
                parts = [lab == i for i in range(1, n + 1)]
                masks[name] = [p for p in parts if p.sum() >= min_px]
            if not any(masks.values()):
                continue
            seg.set_image(torch.from_numpy(ndi.zoom(np.take(anat.t1, k, axis=axis), zoom, order=1))[None].float())
            for name, parts in masks.items():
                for ref in parts:
                    dice = dice_score(seg.predict(box=object_bbox(ref), exact_box=exact_box).numpy(), ref)
                    rows.append({"axis": axis, "slice": k, "structure": name, "area_px": int(ref.sum()), "dice": dice})
    return rows


def evaluate_volumes(data: str | Path, model: str | None = None, *, channel: int = -1,
                     exact_box: bool = False) -> list[dict]:
    """3D box-prompt Dice through slice-to-slice propagation, on labelled volumes.

    For each case of ``data`` (a folder or manifest :func:`medcnn.engine.data.find_records` reads,
    e.g. ``medcnn generate brain-tumor`` output) the largest connected part of the label map's
    foreground is prompted with its exact 3D box ``(i0, j0, k0, i1, j1, k1)`` on image channel
    ``channel`` (the file's own voxel axes, no reorientation; -1 = the last listed, FLAIR for the
    BraTS layout) and scored by Dice over the whole volume; ``exact_box`` declares the box exact.

    Returns:
        Rows ``{case, voxels, dice}``.
    """
    import nibabel as nib

    recs = _records(data)
    seg = PromptableSegmenter.from_pretrained(model)
    rows = []
    for rec in recs:
        ref = keep_largest_component(np.asarray(nib.load(rec["label"]).dataobj) > 0, connectivity=1)
        if not ref.any():
            logger.warning("%s: empty label map, skipped", rec["case"])
            continue
        idx = np.argwhere(ref)
        box = [int(v) for v in idx.min(0)] + [int(v) + 1 for v in idx.max(0)]
        img = np.asarray(nib.load(rec["image"][channel]).dataobj, dtype=np.float32)
        seg.set_image(torch.from_numpy(img)[None])
        rows.append({"case": rec["case"], "voxels": int(ref.sum()),
                     "dice": dice_score(seg.predict(box=box, exact_box=exact_box).numpy(), ref)})
    return rows


def summarise_volumes(rows: list[dict]) -> str:
    """A one-line summary (mean, median, lowest Dice) of :func:`evaluate_volumes`."""
    d = [r["dice"] for r in rows]
    return f"3D box Dice over {len(d)} volumes: mean {np.mean(d):.4f}, median {np.median(d):.4f}, lowest {np.min(d):.4f}"


def summarise_real_t1(rows: list[dict]) -> str:
    """A text table of mean (and lowest) box Dice per structure of :func:`evaluate_real_t1`."""
    lines = [f"{'structure':12s}{'mean':>8s}{'lowest':>8s}{'objects':>9s}"]
    for name in (*T1_STRUCTURES, "all"):
        d = [r["dice"] for r in rows if name in ("all", r["structure"])]
        if d:
            lines.append(f"{name:12s}{np.mean(d):8.4f}{np.min(d):8.4f}{len(d):9d}")
    return "\n".join(lines)


def summarise(rows: list[dict]) -> str:
    """A text table of mean Dice per mode, overall and per source."""
    groups = ["all"] + sorted({r["source"] for r in rows if r["source"]})
    lines = [f"{'':10s}" + "".join(f"{m:>12s}" for m in MODES) + f"{'objects':>10s}"]
    for g in groups:
        sel = [r for r in rows if g == "all" or r["source"] == g]
        means = [np.mean([r["dice"] for r in sel if r["mode"] == m]) for m in MODES]
        lines.append(f"{g:10s}" + "".join(f"{v:12.4f}" for v in means) + f"{len(sel) // len(MODES):10d}")
    return "\n".join(lines)


def summarise_offsets(report: dict[str, Any]) -> str:
    """A text table of :func:`fit_offsets`' Dice per kind of box: fixed offset against per-prompt (cross-validated)."""
    lines = [f"per-prompt offsets fitted on {report['objects']} objects",
             f"{'box':8s}{'fixed':>10s}{'per-prompt (5-fold CV)':>25s}"]
    lines += [f"{k:8s}{report[k]['fixed']:10.4f}{report[k]['adaptive_cv']:25.4f}" for k in ("exact", "tight", "jitter")]
    return "\n".join(lines)


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Write per-object rows (of :func:`evaluate`, :func:`evaluate_volumes`, :func:`evaluate_real_t1`) as a CSV."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
