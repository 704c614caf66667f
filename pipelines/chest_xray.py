"""Chest X-ray: finding probabilities, lung and heart masks, cardiothoracic ratio.

Two bundled models work together: ``chest-xray`` (multi-label DenseNet-121, one sigmoid per
finding) and ``chest-xray-lungs`` (2D U-Net, lungs and heart channels). Cases (DESIGN §3): every
image file (PNG/JPEG at 8 or 16 bits, DICOM CR/DX with rescale, VOI LUT/window and MONOCHROME1
inversion applied by :func:`medcnn.load`). Outputs per case:

* ``<case>_lungs.png`` and ``<case>_heart.png``: 0/255 masks with the rows x cols of the input
  pixel array (probabilities are brought back to the input grid, then thresholded at 0.5; the
  lung mask keeps its two largest components and fills holes);
* ``qc/<case>.png``: the radiograph with lung (red) and heart (green) outlines, plus one Grad-CAM
  panel per finding at or above its threshold;
* ``summary.csv``: one probability column per finding, ``lung_area_frac`` (lung pixels / image
  pixels) and ``ctr`` (cardiothoracic ratio: heart width / widest lung span).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medcnn import qc
from medcnn.cases import Case, find_image_cases
from medcnn.errors import InputError
from medcnn.io import load
from medcnn.io.atomic import TMP_MARK
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

    def info(self) -> dict[str, Any]:
        """Provenance of both checkpoints for ``run.json``."""
        out: dict[str, Any] = {}
        for role, m in (("findings", self.findings), ("lungs", self.lungs)):
            if m is not None:
                out[role] = {"path": str(m.path), "sha256": m.sha256, "network": m.config["model"],
                             "preprocess": m.config["preprocess"], "inference": m.config["inference"],
                             "metrics": m.config.get("metrics", {})}
        return out


def load_chest_xray_models(refs: Sequence[str] | str | None = None, device: str | None = None) -> ChestXrayModels:
    """Load the findings and lung models.

    Args:
        refs: bundled names or checkpoint paths; each replaces the bundled model of its task
            (a classification checkpoint the findings model, a segmentation one the lung model).
            ``None``: both bundled models.
        device: passed to :func:`medcnn.load_model`.

    Raises:
        InputError: a checkpoint that is missing, unsafe, or of a kind the pipeline cannot use.
    """
    from medcnn.predictor import load_model

    models = ChestXrayModels()
    given = [refs] if isinstance(refs, str) else list(refs or [])
    for ref in given:
        m = load_model(ref, device=device)
        if m.task == "classification":
            if not m.config["labels"].get("multilabel"):
                raise InputError(ref, "the chest-xray pipeline needs a multi-label findings classifier")
            models.findings = m
        else:
            models.lungs = m
    if models.findings is None:
        models.findings = load_model("chest-xray", device=device)
    if models.lungs is None:
        models.lungs = load_model("chest-xray-lungs", device=device)
    channels = list(models.lungs.config["labels"].get("channels") or [])
    if "lungs" not in channels:
        raise InputError(models.lungs.path, f"the segmentation model's channels are {channels or 'unnamed'}; "
                                            "the chest-xray pipeline needs a 'lungs' channel (data.masks: [lungs, heart])")
    return models


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


def _write_mask_png(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f"{path.stem}{TMP_MARK}{path.suffix}")
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
    tmp.replace(path)


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
    models: tuple[str, ...] = ("chest-xray", "chest-xray-lungs")
    fields: tuple[str, ...] = field(default=(*FINDINGS, "lung_area_frac", "ctr"))
    threshold: float = 0.5
    max_cam: int = 3

    def discover(self, inputs: Sequence[str | Path]) -> list[Case]:
        return find_image_cases(inputs, suffixes=IMAGE2D_SUFFIXES + DICOM_SUFFIXES, bids=False)

    def load_models(self, refs: Sequence[str] | str | None = None, device: str | None = None) -> ChestXrayModels:
        return load_chest_xray_models(refs, device)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.id}_lungs.png", out_dir / f"{case.id}_heart.png", out_dir / "qc" / f"{case.id}.png"]

    def load(self, case: Case) -> Any:
        path = case.inputs[0]
        img = load(path, series=case.extra.get("series"))
        if img.ndim != 3:
            raise InputError(path, f"expected a 2D radiograph, got a {img.ndim - 1}D image")
        if img.shape[0] == 3:  # RGB export of a radiograph: grey levels
            img = img.mean(0, keepdim=True)
        elif img.shape[0] != 1:
            raise InputError(path, f"expected a grey-level radiograph, got {img.shape[0]} channels")
        if min(img.shape[1:]) < 32:
            raise InputError(path, f"image of {img.shape[1]}x{img.shape[2]} pixels is too small for a radiograph")
        return img

    def run(self, models: ChestXrayModels, case: Case, img: Any, out_dir: Path) -> dict[str, Any]:
        row: dict[str, Any] = {}
        seg = models.lungs.predict(img, probabilities=True)
        channels = list(models.lungs.config["labels"]["channels"])
        lungs = clean_lungs(seg[channels.index("lungs")].numpy() >= 0.5)
        heart = seg[channels.index("heart")].numpy() >= 0.5 if "heart" in channels else np.zeros_like(lungs)
        if heart.any():  # the cardiac silhouette is one blob: keep its largest component
            lab, n = ndimage.label(heart)
            if n > 1:
                heart = lab == 1 + int(np.argmax(ndimage.sum_labels(heart, lab, index=np.arange(1, n + 1))))
        row["lung_area_frac"] = round(float(lungs.mean()), 4)
        ctr = cardiothoracic_ratio(lungs, heart)
        row["ctr"] = round(ctr, 4) if np.isfinite(ctr) else ""
        label = lungs.astype(np.uint8) + 2 * (heart & ~lungs).astype(np.uint8)
        panels = [_caption(qc.image_overlay(img, label=label), f"{case.id}  lungs {row['lung_area_frac']:.2f}  CTR {row['ctr']}")]
        if models.findings is not None:
            classes = list(models.findings.config["labels"]["classes"])
            probs = models.findings.predict_proba(img).numpy()
            row.update({c: round(float(p), 4) for c, p in zip(classes, probs)})
            for k in [int(i) for i in np.argsort(probs)[::-1] if probs[i] >= self.threshold][: self.max_cam]:
                heat = models.findings.saliency(img, class_index=k)
                panels.append(_caption(qc.image_overlay(img, heat=heat[0]), f"{classes[k]} p={probs[k]:.2f}"))
        height = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
        qc.save_png(np.concatenate(panels, axis=1), out_dir / "qc" / f"{case.id}.png")
        _write_mask_png(heart, out_dir / f"{case.id}_heart.png")
        _write_mask_png(lungs, out_dir / f"{case.id}_lungs.png")
        return row


PIPELINE = ChestXrayPipeline()

