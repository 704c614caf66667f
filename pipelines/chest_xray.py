"""Chest X-ray: finding probabilities, lung and heart masks, cardiothoracic ratio.

Three bundled models work together: ``chest-xray`` (multi-label DenseNet-121, one sigmoid per
finding), ``chest-xray-lungs`` (2D U-Net, lungs and heart channels) and ``chest-xray-nodule`` (2D
U-Net segmenting nodules at the radiograph's own pixel size, whose highest probability inside the
lungs is fused with the classifier's Nodule probability). Cases: every image file (PNG/JPEG at 8 or
16 bits, DICOM CR/DX with rescale, VOI LUT/window and MONOCHROME1 inversion applied by
:func:`medcnn.load`). Outputs per case:

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

Scoring a run, fitting the nodule fusion and merging generated sets: :mod:`medcnn.evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcnn import qc
from medcnn.cases import Case, find_image_cases
from medcnn.errors import InputError
from medcnn.inference import ood
from medcnn.io.atomic import write_png_atomic
from medcnn.io.dicom_seg import is_dicom_image, is_dicom_path, write_dicom_seg
from medcnn.io.readers import DICOM_SUFFIXES, IMAGE2D_SUFFIXES
from medcnn.metrics.segmentation import cardiothoracic_ratio
from medcnn.pipelines.base import Pipeline
from medcnn.pipelines.chest_xray_image import (MAX_CHROMA, OOD_REASONS, caption, load_radiograph, radiograph_stats,
                                               side_by_side)
from medcnn.pipelines.chest_xray_models import (FINDINGS, NODULE_CHANNEL, NODULE_LUNG_MARGIN_PX, ChestXrayModels,
                                                clean_lungs, detect_nodule, fuse_scores, load_chest_xray_models,
                                                nodule_score, segment_lungs_heart)

__all__ = ["FINDINGS", "MAX_CHROMA", "NODULE_CHANNEL", "NODULE_LUNG_MARGIN_PX", "OOD_REASONS", "PIPELINE",
           "ChestXrayModels", "ChestXrayPipeline", "clean_lungs", "detect_nodule", "fuse_scores",
           "load_chest_xray_models", "nodule_score", "radiograph_stats", "segment_lungs_heart"]


@dataclass(frozen=True)
class ChestXrayPipeline(Pipeline):
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
        return load_radiograph(case.inputs[0], series=case.extra.get("series"))

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
        panels = [caption(qc.image_overlay(img, label=label), f"{case.id}  lungs {row['lung_area_frac']:.2f}  CTR {row['ctr']}")]
        row.update(ood.EMPTY_FIELDS)
        if models.findings is not None:
            panels += self._findings(models, case, img, lungs, heart, row)
        qc.save_png(side_by_side(panels), out_dir / "qc" / f"{case.id}.png")
        write_png_atomic(out_dir / f"{case.id}_heart.png", np.where(heart, 255, 0).astype(np.uint8))
        write_png_atomic(out_dir / f"{case.id}_lungs.png", np.where(lungs, 255, 0).astype(np.uint8))
        if self.dicom_seg and is_dicom_image(img):
            write_dicom_seg(np.stack([lungs, heart]).astype(bool), out_dir / f"{case.id}.seg.dcm", like=img,
                            segment_names={1: "lungs", 2: "heart"}, algorithm="chest-xray-lungs")
        return row

    def _findings(self, models: ChestXrayModels, case: Case, img: Any, lungs: np.ndarray, heart: np.ndarray,
                  row: dict[str, Any]) -> list[np.ndarray]:
        """Put the finding probabilities (Nodule fused with the detector) and OOD flags in ``row``; the QC panels."""
        section = ood.section_of(models.findings.config)
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
        panels = []
        for k in [int(i) for i in np.argsort(probs)[::-1] if probs[i] >= self.threshold][: self.max_cam]:
            heat = models.findings.saliency(img, class_index=k)
            panels.append(caption(qc.image_overlay(img, heat=heat[0]), f"{classes[k]} p={probs[k]:.2f}"))
        if "nodule_detector" in row and probs[classes.index("Nodule")] >= self.threshold:  # where the detector sees it
            panels.append(caption(qc.image_overlay(img, heat=det), f"nodule detector (logit {row['nodule_detector']:.1f})"))
        return panels


PIPELINE = ChestXrayPipeline()

if __name__ == "__main__":  # the former `python -m medcnn.pipelines.chest_xray`, for one release
    raise SystemExit("moved: `medcnn evaluate-run chest-xray RUN DATA` (--fit-fusion: `medcnn calibrate fusion`, "
                     "--detector-data / --findings-data: `medcnn merge-sets detector|findings`); see their --help")
