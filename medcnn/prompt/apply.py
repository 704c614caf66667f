"""``medcnn prompt``: prompt a model on an image file and write the mask on the file's own grid.

::

    from medcnn.prompt.apply import prompt_file
    info = prompt_file("ct.nii.gz", "liver.nii.gz", boxes=[(40, 60, 30, 120, 150, 70)], model="medsam_vit_b.pth")

2D images (PNG/JPEG, a DICOM radiograph, a single slice) give a PNG with the input's rows x cols
(0/255 for one object, labels 1..N for several boxes); volumes give a label map that overlays the
input in 3D Slicer (``medcnn.save(..., like=img)``). An output name ending ``.seg.dcm`` writes a DICOM
Segmentation instead (DICOM inputs only), referencing the input's series and instances, one segment
per box (``object N``, coded as tissue; algorithm type SEMIAUTOMATIC). Volumes are segmented slice by slice along
``slice_axis`` (default: the axis with the coarsest spacing, i.e. the through-plane axis of an
axial/coronal/sagittal stack; the last axis on a tie), by propagation from each box's central
slice (:meth:`medcnn.prompt.PromptableSegmenter.predict`). Coordinates always index the loaded
image's axes ``(i, j[, k])`` as :func:`medcnn.load` returns them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn import qc
from medcnn.errors import InputError
from medcnn.io import geometry, load, save
from medcnn.io.atomic import full_suffix, write_png_atomic
from medcnn.io.dicom_seg import SEG_SUFFIX, is_dicom_image, is_seg_path, write_dicom_seg
from medcnn.io.api import write_seg_nrrd
from medcnn.io.slicer import is_seg_nrrd

logger = logging.getLogger(__name__)


#: a mask filling more of its box than this (2D, 3D) is suspect: objects fill far less of their own bounding box
#: (an ellipse 0.79, an ellipsoid 0.52; the 893 dev objects of ``medcnn generate prompt``: median 0.66, 99th
#: percentile 0.86 in 2D; the largest tumour part of 56 generated brain-tumour volumes: 0.20-0.49 in 3D), so a
#: near-full box usually means it spans several objects or the object has no clear edge (the box around all three
#: tumour parts of sample case BraTS-GLI-00000-000, FLAIR, bundled model: fill 0.83, Dice 0.16)
FULL_BOX_FILL = {2: 0.95, 3: 0.75}


def box_fill(mask: torch.Tensor, box: Sequence[float], value: int | None = None) -> float:
    """Share of the box ``(i0, j0[, k0], i1, j1[, k1])`` (max exclusive) that ``mask`` covers.

    Args:
        mask: ``(H, W)`` or ``(D, H, W)`` label map or binary mask.
        box: the box in ``mask``'s axes.
        value: count only this label (default: any non-zero).
    """
    sd = mask.ndim
    lo = [max(0, int(np.floor(float(v)))) for v in box[:sd]]
    hi = [min(n, int(np.ceil(float(v)))) for v, n in zip(box[sd:], mask.shape)]
    region = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    if region.numel() == 0:
        return 0.0
    hit = region > 0 if value is None else region == value
    return float(hit.sum()) / region.numel()


def _order(values: Sequence[float], perm: Sequence[int]) -> list[float]:
    return [float(values[p]) for p in perm]


def _write_palette_png(path: Path, labels: np.ndarray) -> None:
    """A label map ``(H, W)`` uint8 as a palette PNG: the values stay 1..n, viewers show the QC colours."""
    from PIL import Image

    from medcnn.io.atomic import atomic_path

    palette = [0, 0, 0]
    for v in range(1, 256):
        palette.extend(qc.label_colour(v))
    im = Image.fromarray(labels, mode="P")
    im.putpalette(palette)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def prompt_file(
    image: str | Path,
    out: str | Path,
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    labels: Sequence[int] | None = None,
    model: Any = None,
    slice_axis: int | None = None,
    qc_path: str | Path | None = None,
    exact_box: bool = False,
    qc_convention: str = "radiological",
) -> dict[str, Any]:
    """Segment the object(s) the prompts point at and write the result next to nothing else.

    Args:
        image: an image file or DICOM series folder :func:`medcnn.load` reads.
        out: mask file to write (``.png`` for 2D images; ``.nii.gz``/``.nrrd``/``.mha`` for volumes;
            ``.seg.dcm``: a DICOM Segmentation, for DICOM inputs).
        boxes: ``(i0, j0, i1, j1)`` (2D) or ``(i0, j0, k0, i1, j1, k1)`` (3D), max exclusive.
        points: ``(i, j)`` / ``(i, j, k)`` clicks; ``labels`` 1 foreground, 0 background.
        labels: per point (default all 1).
        model: a :class:`~medcnn.prompt.PromptableSegmenter`, a checkpoint path or bundled name
            (``None``: the bundled model).
        slice_axis: volumes: the spatial axis (0, 1, 2) to propagate along (default: coarsest spacing).
        qc_path: PNG to draw the result on (default: ``out`` with ``_qc.png``; ``""`` for none).
        exact_box: the boxes are exact bounding boxes (see ``PromptableSegmenter.predict``).
        qc_convention: volumes' QC picture: ``"radiological"`` (default) or ``"neurological"``.

    Returns:
        ``{"out", "qc", "shape", "objects", "voxels", "volume_ml" (volumes) or "area_frac" (2D), "box_fill"}``
        (``box_fill``: per box, the share of it the mask covers; over :data:`FULL_BOX_FILL` it logs a warning).

    Raises:
        InputError: unreadable image, or a 2D output name for a volume (or the reverse).
        ValueError: malformed or out-of-image prompts.
    """
    from medcnn.prompt.segmenter import PromptableSegmenter

    image, out = Path(image), Path(out)
    img = load(image)
    sd = img.ndim - 1
    if img.shape[0] not in (1, 3):
        img = img[:1]
        logger.warning("%s: %d channels; prompting on the first", image, img.shape[0])
    is_png = out.name.lower().endswith((".png",))
    is_seg = is_seg_path(out)
    if is_seg and not is_dicom_image(img):
        raise InputError(out, f"a DICOM SEG output ({SEG_SUFFIX}) needs a DICOM input image; {image} is not DICOM")
    if sd == 3 and is_png:
        raise InputError(out, "a volume's mask needs a volume format (.nii.gz, .nrrd, .mha), not .png")
    if sd == 2 and not is_png and not is_seg and not out.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        raise InputError(out, "unknown output format; use .png (or .nii.gz) for a 2D image")
    seg = model if isinstance(model, PromptableSegmenter) else PromptableSegmenter.from_pretrained(model)
    data = img.as_tensor().float()
    perm = list(range(sd))
    if sd == 3:
        spacing = geometry.voxel_spacing(img.affine.numpy(), 3)
        axis = int(slice_axis) if slice_axis is not None else max(range(3), key=lambda a: (round(float(spacing[a]), 3), a))
        if axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        perm = [axis] + [a for a in range(3) if a != axis]
        data = data.permute(0, *(1 + p for p in perm))
    inv = list(np.argsort(perm))
    bx = None
    if boxes:
        bx = [_order(b[:sd], perm) + _order(b[sd:], perm) if len(b) == 2 * sd else list(b) for b in boxes]
    pts = None if not points else [_order(p, perm) if len(p) == sd else list(p) for p in points]
    seg.set_image(data)
    result = seg.predict(box=None if bx is None else (bx[0] if len(bx) == 1 else bx), points=pts, labels=labels,
                         exact_box=exact_box)
    lab = result.to(torch.uint8)
    if sd == 3:
        lab = lab.permute(*inv)
    n_obj = len(bx) if bx else 1
    info: dict[str, Any] = {"out": str(out), "shape": list(lab.shape), "objects": n_obj, "voxels": int((lab > 0).sum())}
    if bx:
        info["box_fill"] = [round(box_fill(result, b, k + 1 if n_obj > 1 else None), 3) for k, b in enumerate(bx)]
        for k, fill in enumerate(info["box_fill"]):
            if fill > FULL_BOX_FILL[sd]:
                logger.warning("%s: the mask fills %.0f %% of box %d %s: the box may span several objects, or the object "
                               "has no clear edge; draw a tighter box around one object or add --points",
                               image, 100 * fill, k + 1, boxes[k])
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_seg:
        write_dicom_seg(lab, out, like=img, segment_names={k: f"object {k}" for k in range(1, n_obj + 1)},
                        algorithm=f"medcnn-prompt {seg.name}", algorithm_type="SEMIAUTOMATIC")
    elif is_png:
        arr = lab.numpy().astype(np.uint8)
        if n_obj == 1:
            write_png_atomic(out, arr * 255)  # 0/255: visible in any viewer
        else:
            _write_palette_png(out, arr)  # values 1..n kept, shown in the QC colours
        info["area_frac"] = round(float((arr > 0).mean()), 5)
    elif is_seg_nrrd(out):  # Slicer segmentation: names and colours in the header
        write_seg_nrrd(lab, out, like=img, names={k: f"object {k}" for k in range(1, n_obj + 1)},
                       colours={k: qc.label_colour(k) for k in range(1, n_obj + 1)})
    else:
        save(lab[None], out, like=img)
    if sd == 3:
        vox_ml = float(np.prod(geometry.voxel_spacing(img.affine.numpy(), 3))) / 1000.0
        info["volume_ml"] = round(info["voxels"] * vox_ml, 3)
    suffix_len = len(SEG_SUFFIX) if is_seg else len(full_suffix(out))
    qc_out = Path(qc_path) if qc_path else out.parent / f"{out.name[: len(out.name) - suffix_len]}_qc.png"
    if qc_path != "":
        labels_np = lab.numpy()
        names = {k: f"object {k}" for k in range(1, n_obj + 1)}
        figures = {"mL": info["volume_ml"]} if "volume_ml" in info else {"area": info.get("area_frac", "")}
        box0 = boxes[0] if boxes and len(boxes) == 1 and len(boxes[0]) == 2 * sd else None
        if sd == 3:
            rgb = qc.volume_figure(img[0], img.affine.numpy(), label=labels_np, names=names, case_id=image.name,
                                   figures=figures, box=box0, convention=qc_convention)
        else:
            rgb = qc.image_figure(img, label=labels_np, names=names, case_id=image.name, figures=figures, box=box0)
        qc.save_png(rgb, qc_out)
        info["qc"] = str(qc_out)
    logger.debug("%s: %d object(s), %d voxels -> %s", image, n_obj, info["voxels"], out)
    return info
