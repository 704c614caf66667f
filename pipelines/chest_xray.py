"""Chest X-ray: finding probabilities, lung and heart masks, cardiothoracic ratio.

Three bundled models work together: ``chest-xray`` (multi-label DenseNet-121, one sigmoid per
finding), ``chest-xray-lungs`` (2D U-Net, lungs and heart channels) and ``chest-xray-nodule`` (2D
U-Net segmenting nodules at the radiograph's own pixel size, whose highest probability inside the
lungs is fused with the classifier's Nodule probability). Cases (DESIGN §3): every
image file (PNG/JPEG at 8 or 16 bits, DICOM CR/DX with rescale, VOI LUT/window and MONOCHROME1
inversion applied by :func:`medcnn.load`). Outputs per case:

* ``<case>_lungs.png`` and ``<case>_heart.png``: 0/255 masks with the rows x cols of the input
  pixel array (probabilities are brought back to the input grid, then thresholded at 0.5; the
  lung mask keeps its two largest components and fills holes);
* ``qc/<case>.png``: the radiograph with lung (red) and heart (green) outlines, plus one Grad-CAM
  panel per finding at or above its threshold and the detector's nodule map when Nodule is;
* ``summary.csv``: one probability column per finding, ``lung_area_frac`` (lung pixels / image
  pixels), ``ctr`` (cardiothoracic ratio: heart width / widest lung span) and ``nodule_detector``
  (the logit of the detector's highest probability in the lungs; ``Nodule`` is then a
  logistic fusion of it with the classifier's logit, weights from the detector checkpoint);
* with ``dicom_seg`` (``--dicom-seg``) and a DICOM radiograph: ``<case>.seg.dcm``, a DICOM
  Segmentation of the lungs and heart masks (segments 1, 2; they may overlap) referencing that image.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medcnn import qc
from medcnn.cases import Case, find_image_cases
from medcnn.errors import InputError
from medcnn.inference import ood
from medcnn.io import load
from medcnn.io.atomic import write_csv_atomic, write_png_atomic, write_text_atomic
from medcnn.io.dicom_seg import is_dicom_image, is_dicom_path, write_dicom_seg
from medcnn.io.readers import DICOM_SUFFIXES, IMAGE2D_SUFFIXES
from medcnn.metrics.segmentation import cardiothoracic_ratio

logger = logging.getLogger(__name__)

#: the bundled classifier's findings, spelled as in CheXpert / TorchXRayVision
FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax")


@dataclass
class ChestXrayModels:
    """The two networks of the pipeline (either may be ``None`` when only the other is wanted).

    Attributes:
        findings: multi-label classifier (:class:`medcnn.predictor.Model`), or None.
        lungs: lung/heart segmenter (:class:`medcnn.predictor.Model`), or None.
    """

    findings: Any = None
    lungs: Any = None
    nodule: Any = None

    def info(self) -> dict[str, Any]:
        """Provenance of the checkpoints for ``run.json``."""
        out: dict[str, Any] = {}
        for role, m in (("findings", self.findings), ("lungs", self.lungs), ("nodule", self.nodule)):
            if m is not None:
                out[role] = m.provenance()
        return out


def load_chest_xray_models(refs: Sequence[str] | str | None = None, device: str | None = None) -> ChestXrayModels:
    """Load the findings and lung models.

    Args:
        refs: bundled names or checkpoint paths; each replaces the bundled model of its task
            (a classification checkpoint the findings model; a segmentation one with a ``nodule``
            channel the nodule detector, any other segmentation one the lung model).
            ``None``: the bundled models.
        device: passed to :func:`medcnn.load_model`.

    The bundled nodule detector (``chest-xray-nodule``) joins the bundled findings model only: a
    findings model of your own keeps its Nodule probability unless a detector is given too.

    Raises:
        InputError: a checkpoint that is missing, unsafe, or of a kind the pipeline cannot use.
    """
    from medcnn.predictor import bundled_path, load_model

    models = ChestXrayModels()
    given = [refs] if isinstance(refs, str) else list(refs or [])
    for ref in given:
        m = load_model(ref, device=device)
        if m.task == "classification":
            if not m.config["labels"].get("multilabel"):
                raise InputError(ref, "the chest-xray pipeline needs a multi-label findings classifier")
            models.findings = m
        elif list(m.config["labels"].get("channels") or []) == [NODULE_CHANNEL]:
            models.nodule = m
        else:
            models.lungs = m
    if models.findings is None:
        models.findings = load_model("chest-xray", device=device)
        if models.nodule is None and bundled_path("chest-xray-nodule") is not None:
            models.nodule = load_model("chest-xray-nodule", device=device)
    if models.lungs is None:
        models.lungs = load_model("chest-xray-lungs", device=device)
    channels = list(models.lungs.config["labels"].get("channels") or [])
    if "lungs" not in channels:
        raise InputError(models.lungs.path, f"the segmentation model's channels are {channels or 'unnamed'}; "
                                            "the chest-xray pipeline needs a 'lungs' channel (data.masks: [lungs, heart])")
    return models


#: the nodule detector's one output channel (``data.masks: [nodule]``)
NODULE_CHANNEL = "nodule"
#: the detector's score is its highest probability within the lung mask grown by this many pixels
NODULE_LUNG_MARGIN_PX = 5


#: detector probabilities are clipped to [eps, 1 - eps] before the logit (float32 cannot tell 1 - 6e-8 from 1)
_LOGIT_EPS = 1e-7


def _logit(p: float) -> float:
    p = min(max(float(p), _LOGIT_EPS), 1.0 - _LOGIT_EPS)
    return math.log(p / (1.0 - p))


def nodule_score(prob: np.ndarray, lungs: np.ndarray) -> float:
    """A radiograph's nodule score: the logit of the detector's highest probability inside the (grown) lungs.

    The logit, not the probability: a detector's per-pixel probability is not a per-radiograph one (the
    fusion weights map it), and a Dice-trained detector puts 0.9999 on rib crossings and 0.999999 on nodules,
    which a probability rounded for ``summary.csv`` would not tell apart.

    Args:
        prob: ``(H, W)`` nodule probability on the input pixel grid.
        lungs: ``(H, W)`` bool lung mask on the same grid (all False: the whole image counts).

    Returns:
        A logit in about [-16, 16].
    """
    if lungs.any():
        prob = np.where(ndimage.binary_dilation(lungs, iterations=NODULE_LUNG_MARGIN_PX), prob, 0.0)
    return _logit(float(prob.max()))


def fuse_scores(p_classifier: float, detector_logit: float, weights: Sequence[float] | None = None) -> float:
    """A finding's probability from a classifier's probability and a detector's score (a logit).

    ``sigmoid(w_c * logit(p_classifier) + w_d * detector_logit + b)`` with ``weights = (w_c, w_d, b)``, fitted
    by logistic regression on validation radiographs neither model trained on (the nodule checkpoint's
    ``inference.score_fusion``); ``None``: the plain mean of the two logits, ``(0.5, 0.5, 0)``.
    """
    w_c, w_d, b = (0.5, 0.5, 0.0) if weights is None else (float(w) for w in weights)
    z = w_c * _logit(p_classifier) + w_d * float(detector_logit) + b
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def fit_score_fusion(p_classifier: Sequence[float], detector_logits: Sequence[float], labels: Sequence[int],
                     l2: float = 5e-5, iterations: int = 50) -> list[float]:
    """Weights ``(w_c, w_d, b)`` of :func:`fuse_scores` by logistic regression (Newton's method).

    Args:
        p_classifier: ``(N,)`` the classifier's probabilities on held-out cases.
        detector_logits: ``(N,)`` the detector's scores (:func:`nodule_score`) on the same cases.
        labels: ``(N,)`` 0/1.
        l2: ridge penalty on the two weights (not the bias), as scikit-learn's ``1 / (2 C)``.

    Returns:
        ``[w_c, w_d, b]`` rounded to 4 decimals (what ``inference.score_fusion`` stores).

    Raises:
        ValueError: fewer than two cases, or a single class.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.size < 2 or y.min() == y.max():
        raise ValueError("fitting the fusion needs positive and negative cases")
    x = np.stack([np.array([_logit(p) for p in p_classifier]), np.asarray(detector_logits, dtype=np.float64),
                  np.ones_like(y)], axis=1)
    reg = np.diag([2.0 * l2, 2.0 * l2, 0.0])
    w = np.zeros(3)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -700, 700)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return [round(float(v), 4) for v in w]


def _training_info(ref: str) -> dict:
    """A checkpoint's (bundled name or path) ``training`` section: split, case lists, history."""
    from medcnn.engine.checkpoint import checkpoint_path, load_checkpoint

    return load_checkpoint(checkpoint_path(ref) or ref).get("training") or {}


def fusion_data(detector: str, data_dir: str | Path, findings: str = "chest-xray", lungs: str = "chest-xray-lungs",
                progress: bool = True) -> tuple[list[float], list[float], list[int]]:
    """Classifier probability, detector score and Nodule label of the findings model's validation radiographs.

    The cases are the findings checkpoint's ``training.val_cases``, looked up in ``data_dir/manifest.csv`` (a
    generated set: ``case``, ``image``, ``Nodule``). The detector may have trained on other data too, but not on
    these cases: a detector checkpoint listing any of them in its ``training.train_case_ids`` is refused.

    Raises:
        InputError: a validation case the detector trained on, or none of them in the manifest.
    """
    from tqdm.auto import tqdm

    val = set(_training_info(findings).get("val_cases") or [])
    trained = _training_info(detector).get("train_case_ids")
    if trained is None:
        logger.warning("%s does not list its training cases (an older checkpoint): make sure it never trained on "
                       "the findings model's validation cases", detector)
    seen = val & set(trained or [])
    if seen:
        raise InputError(detector, f"it trained on {len(seen)} of the findings model's validation cases "
                                   f"(e.g. {sorted(seen)[0]}); the fusion must be fitted on cases neither model saw")
    with open(Path(data_dir) / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["case"] in val]
    if not rows:
        raise InputError(findings, f"none of its validation cases is in {data_dir}/manifest.csv")
    models = load_chest_xray_models([findings, lungs, detector])
    k = list(models.findings.config["labels"]["classes"]).index("Nodule")
    p_cls, scores, labels = [], [], []
    for r in tqdm(rows, desc="fusion data", unit="radiograph", disable=not progress):
        img = load(Path(data_dir) / r["image"])
        p_cls.append(float(models.findings.predict_proba(img)[k]))
        scores.append(detect_nodule(models, img, segment_lungs_heart(models, img)[0])[0])
        labels.append(int(r["Nodule"]))
    return p_cls, scores, labels


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

    The findings model's validation cases are left out (so that :func:`fusion_data` can fit the fusion on
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
    val = set(_training_info(findings).get("val_cases") or [])
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


def segment_lungs_heart(models: ChestXrayModels, img: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` bool lung mask (:func:`clean_lungs`) and heart mask (largest component) on ``img``'s grid."""
    seg = models.lungs.predict(img, probabilities=True)
    channels = list(models.lungs.config["labels"]["channels"])
    lungs = clean_lungs(seg[channels.index("lungs")].numpy() >= 0.5)
    heart = seg[channels.index("heart")].numpy() >= 0.5 if "heart" in channels else np.zeros_like(lungs)
    if heart.any():  # the cardiac silhouette is one blob: keep its largest component
        lab, n = ndimage.label(heart)
        if n > 1:
            heart = lab == 1 + int(np.argmax(ndimage.sum_labels(heart, lab, index=np.arange(1, n + 1))))
    return lungs, heart


def detect_nodule(models: ChestXrayModels, img: Any, lungs: np.ndarray) -> tuple[float, np.ndarray]:
    """The nodule detector's score (:func:`nodule_score`) and its ``(H, W)`` probability map on ``img``'s grid."""
    det = models.nodule.predict(img, probabilities=True)[0].numpy()
    return nodule_score(det, lungs), det


def clean_lungs(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components of a lung mask (right and left lung) and fill holes.

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W)`` bool.
    """
    lab, n = ndimage.label(mask)
    if n > 2:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        keep = 1 + np.argsort(sizes)[::-1][:2]
        # a second component far smaller than the first is noise, not a lung
        keep = [k for k in keep if sizes[k - 1] >= 0.1 * sizes.max()]
        mask = np.isin(lab, keep)
    return ndimage.binary_fill_holes(mask)


#: an RGB input whose mean chroma (over its dynamic range) exceeds this is a colour image, not a radiograph
MAX_CHROMA = 0.02
#: ``img.meta`` key of the hard OOD reasons found while loading (DICOM tags, colour)
OOD_REASONS = "medcnn_ood_reasons"


def radiograph_stats(img: Any, lungs: np.ndarray, heart: np.ndarray) -> dict[str, float]:
    """Image statistics of a radiograph for the OOD flag.

    Args:
        img: ``(1, H, W)`` the loaded radiograph.
        lungs: ``(H, W)`` bool lung mask; heart: the same for the heart.

    Returns:
        Intensity quantiles after min-max normalisation (the findings model's), the fractions of near-black
        and near-white pixels, ``log(rows / cols)``, the left-right mirror correlation and mean gradient of a
        128 x 128 copy, the lung and heart area fractions and the left/right lung balance.
    """
    import torch

    a = np.asarray(img[0], dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    small = torch.nn.functional.interpolate(torch.as_tensor(a)[None, None], size=(128, 128), mode="area")[0, 0].numpy()
    stats = ood.quantiles(small, (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99), "")
    stats["dark_frac"] = float((small < 0.05).mean())
    stats["bright_frac"] = float((small > 0.95).mean())
    stats["log_aspect"] = math.log(a.shape[0] / a.shape[1])
    mirror = np.corrcoef(small.ravel(), small[:, ::-1].ravel())[0, 1]
    stats["mirror_corr"] = float(np.nan_to_num(mirror))
    gy, gx = np.gradient(small)
    stats["gradient"] = float(np.hypot(gx, gy).mean())
    stats["lung_frac"] = float(lungs.mean())
    stats["heart_frac"] = float(heart.mean())
    half = lungs.shape[1] // 2
    left, right = float(lungs[:, :half].sum()), float(lungs[:, half:].sum())
    stats["lung_balance"] = abs(left - right) / (left + right) if left + right else 1.0
    return stats


def _caption(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 7 * len(text), 16], fill=(0, 0, 0))
    d.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(im)


@dataclass(frozen=True)
class ChestXrayPipeline:
    """``medcnn predict chest-xray``.

    Attributes:
        threshold: probability at which a finding counts as present for the Grad-CAM panels.
        max_cam: at most this many Grad-CAM panels per case (most probable findings first).
    """

    name: str = "chest-xray"
    model: str = "chest-xray"
    models: tuple[str, ...] = ("chest-xray", "chest-xray-lungs", "chest-xray-nodule")
    fields: tuple[str, ...] = field(default=(*FINDINGS, "lung_area_frac", "ctr", "nodule_detector", "ood", "ood_score"))
    threshold: float = 0.5
    max_cam: int = 3
    dicom_seg: bool = False  # also write <case>.seg.dcm (lungs, heart) when the radiograph is DICOM

    def discover(self, inputs: Sequence[str | Path]) -> list[Case]:
        return find_image_cases(inputs, suffixes=IMAGE2D_SUFFIXES + DICOM_SUFFIXES, bids=False)

    def load_models(self, refs: Sequence[str] | str | None = None, device: str | None = None) -> ChestXrayModels:
        return load_chest_xray_models(refs, device)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        seg = [out_dir / f"{case.id}.seg.dcm"] if self.dicom_seg and case.inputs and is_dicom_path(case.inputs[0]) else []
        return [out_dir / f"{case.id}_lungs.png", out_dir / f"{case.id}_heart.png", out_dir / "qc" / f"{case.id}.png", *seg]

    def load(self, case: Case) -> Any:
        path = case.inputs[0]
        img = load(path, series=case.extra.get("series"))
        if img.ndim != 3:
            raise InputError(path, f"expected a 2D radiograph, got a {img.ndim - 1}D image")
        reasons = ood.dicom_reasons(path, modalities=ood.RADIOGRAPH_MODALITIES, body_parts=("CHEST", "THORAX"))
        if img.shape[0] in (3, 4):
            chroma = ood.colourfulness(img[:3])
            if chroma > MAX_CHROMA:
                reasons.append(f"an RGB image with colour (chroma {chroma:.3f}), not a grey-level radiograph")
        if img.shape[0] == 3:  # RGB export of a radiograph: grey levels
            img = img.mean(0, keepdim=True)
        elif img.shape[0] != 1:
            raise InputError(path, f"expected a grey-level radiograph, got {img.shape[0]} channels")
        if min(img.shape[1:]) < 32:
            raise InputError(path, f"image of {img.shape[1]}x{img.shape[2]} pixels is too small for a radiograph")
        if float(img.max()) == float(img.min()):  # blank export / failed acquisition: nothing to read
            raise InputError(path, f"constant image (every pixel {float(img.min()):g}): not a radiograph")
        img.meta[OOD_REASONS] = reasons
        return img

    def ood_model(self, models: ChestXrayModels) -> Any:
        """The model whose checkpoint holds the OOD statistics (``medcnn ood-fit``): the findings classifier."""
        if models.findings is None:
            raise InputError(None, "the chest-xray OOD statistics belong to a findings classifier; none is loaded")
        return models.findings

    def ood_layer(self, models: ChestXrayModels, img: Any) -> str:
        """The findings network's coarsest feature map."""
        m = self.ood_model(models)
        return ood.choose_layer(m.network, m.prepare_input(img)[0][None].to(m.device))

    def ood_measure(self, models: ChestXrayModels, case: Case, img: Any, layer: str | None) -> tuple[dict[str, float], Any, list[str]]:
        """``(image statistics, (D,) pooled findings features at layer, hard reasons)`` of one case."""
        with ood.FeatureTap(self.ood_model(models).network, layer) as tap:
            models.findings.predict_proba(img)
        lungs, heart = segment_lungs_heart(models, img)
        return radiograph_stats(img, lungs, heart), tap.features, list(img.meta.get(OOD_REASONS) or [])

    def run(self, models: ChestXrayModels, case: Case, img: Any, out_dir: Path) -> dict[str, Any]:
        row: dict[str, Any] = {}
        lungs, heart = segment_lungs_heart(models, img)
        row["lung_area_frac"] = round(float(lungs.mean()), 4)
        ctr = cardiothoracic_ratio(lungs, heart)
        row["ctr"] = round(ctr, 4) if np.isfinite(ctr) else ""
        label = lungs.astype(np.uint8) + 2 * (heart & ~lungs).astype(np.uint8)
        panels = [_caption(qc.image_overlay(img, label=label), f"{case.id}  lungs {row['lung_area_frac']:.2f}  CTR {row['ctr']}")]
        section = ood.section_of(models.findings.config) if models.findings is not None else None
        row.update(ood.EMPTY_FIELDS)
        if models.findings is not None:
            classes = list(models.findings.config["labels"]["classes"])
            with ood.FeatureTap(models.findings.network, (section or {}).get("layer")) as tap:
                probs = models.findings.predict_proba(img).numpy()
            if section:
                row.update(ood.judge(section, case.id, radiograph_stats(img, lungs, heart), tap.features,
                                     img.meta.get(OOD_REASONS) or []))
            if models.nodule is not None and "Nodule" in classes:
                score, det = detect_nodule(models, img, lungs)
                row["nodule_detector"] = round(score, 3)
                k = classes.index("Nodule")
                probs[k] = fuse_scores(float(probs[k]), score, models.nodule.config["inference"].get("score_fusion"))
            row.update({c: round(float(p), 4) for c, p in zip(classes, probs)})
            for k in [int(i) for i in np.argsort(probs)[::-1] if probs[i] >= self.threshold][: self.max_cam]:
                heat = models.findings.saliency(img, class_index=k)
                panels.append(_caption(qc.image_overlay(img, heat=heat[0]), f"{classes[k]} p={probs[k]:.2f}"))
            if "nodule_detector" in row and probs[classes.index("Nodule")] >= self.threshold:  # where the detector sees it
                panels.append(_caption(qc.image_overlay(img, heat=det), f"nodule detector (logit {row['nodule_detector']:.1f})"))
        height = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
        qc.save_png(np.concatenate(panels, axis=1), out_dir / "qc" / f"{case.id}.png")
        write_png_atomic(out_dir / f"{case.id}_heart.png", np.where(heart, 255, 0).astype(np.uint8))
        write_png_atomic(out_dir / f"{case.id}_lungs.png", np.where(lungs, 255, 0).astype(np.uint8))
        if self.dicom_seg and is_dicom_image(img):
            write_dicom_seg(np.stack([lungs, heart]).astype(bool), out_dir / f"{case.id}.seg.dcm", like=img,
                            segment_names={1: "lungs", 2: "heart"}, algorithm="chest-xray-lungs")
        return row


PIPELINE = ChestXrayPipeline()



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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medcnn.pipelines.chest_xray RUN_DIR DATA_DIR [-o REPORT_DIR]``: print held-out metrics;
    ``... --fit-fusion DETECTOR DATA_DIR``: fit the nodule fusion weights on the findings model's validation cases."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m medcnn.pipelines.chest_xray",
        description="Score a `medcnn predict chest-xray` run against a dataset's manifest.csv, or (--fit-fusion) fit "
                    "the weights that fuse a nodule detector with the findings classifier.",
        epilog="examples:\n  python -m medcnn.pipelines.chest_xray runs/cxr_test data/cxr_test -o runs/cxr_test/eval\n"
               "  python -m medcnn.pipelines.chest_xray --fit-fusion runs/cxr_nodule/last.pt data/cxr_train3\n"
               "  python -m medcnn.pipelines.chest_xray --detector-data data/cxr_det data/cxr_train3 data/cxr_nod7:s7-\n"
               "  python -m medcnn.pipelines.chest_xray --findings-data data/cxr_cls data/cxr_train3 data/cxr_nod7:s7-",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="the run folder; with --fit-fusion the detector checkpoint; with --detector-data / "
                                    "--findings-data the folder to write the merged set to")
    ap.add_argument("data_dir", help="the generated set (manifest.csv); with --detector-data / --findings-data the first "
                                     "of them")
    ap.add_argument("more", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("-o", "--output", default=None, help="write metrics.json, per_case.csv and roc.png here")
    ap.add_argument("--detector-data", action="store_true",
                    help="write RUN_DIR/manifest.csv merging the sets DATA_DIR[:PREFIX]... without the findings "
                         "model's validation cases (training data for a nodule detector)")
    ap.add_argument("--findings-data", action="store_true",
                    help="write RUN_DIR/labels.csv (CheXpert layout, images/ and masks/ linked) merging the sets "
                         "DATA_DIR[:PREFIX]... (training data for the findings model; hold its validation cases out "
                         "with --set data.val_cases=chest-xray)")
    ap.add_argument("--fit-fusion", action="store_true",
                    help="print inference.score_fusion for `medcnn export --set` (bundled findings and lung models)")
    args = ap.parse_args(argv)
    if sum((args.detector_data, args.findings_data, args.fit_fusion)) > 1:
        ap.error("--detector-data, --findings-data and --fit-fusion exclude each other")
    if args.detector_data or args.findings_data:
        def split(src: str) -> tuple[str, str]:  # FOLDER:PREFIX (a Windows drive's C:\\ is no prefix)
            head, sep, tail = src.rpartition(":")
            return (head, tail) if sep and head and not any(c in tail for c in "/\\") else (src, "")

        sources = [split(src) for src in [args.data_dir, *args.more]]
        if args.findings_data:
            n, n_masks = findings_data(args.run_dir, sources)
            sys.stdout.write(f"wrote {n} radiographs ({n_masks} finding masks) to {Path(args.run_dir) / 'labels.csv'}\n")
            return 0
        n, pos = detector_manifest(args.run_dir, sources)
        sys.stdout.write(f"wrote {n} cases ({pos} with a nodule) to {Path(args.run_dir) / 'manifest.csv'}\n")
        return 0
    if args.more:
        ap.error(f"unrecognized arguments: {' '.join(args.more)}")
    if args.fit_fusion:
        from medcnn.metrics import roc_auc

        p_cls, scores, labels = fusion_data(args.run_dir, args.data_dir)
        w = fit_score_fusion(p_cls, scores, labels)
        fused = [fuse_scores(p, s, w) for p, s in zip(p_cls, scores)]
        y = np.asarray(labels)
        sys.stdout.write(json.dumps({
            "n": len(labels), "positives": int(y.sum()), "score_fusion": w,
            "auroc": {"classifier": round(roc_auc(np.asarray(p_cls), y), 4),
                      "detector": round(roc_auc(np.asarray(scores), y), 4), "fused": round(roc_auc(np.asarray(fused), y), 4)},
            "export": f"medcnn export {args.run_dir} -o OUT.pt --set \"inference.score_fusion={json.dumps(w).replace(' ', '')}\"",
        }, indent=2) + "\n")
        return 0
    rep = evaluate_run(args.run_dir, args.data_dir, args.output)
    sys.stdout.write(json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
