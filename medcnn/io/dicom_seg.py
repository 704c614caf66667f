"""DICOM Segmentation (SEG) output with highdicom: label maps back to a PACS or a DICOM viewer.

A label map on the grid of an image that :func:`medcnn.load` read from DICOM (a series folder, a
single slice, an enhanced multi-frame file or a 2D radiograph) becomes one SEG instance that
references the source series and, frame for frame, the source instances (or the frames of a
multi-frame source). The SEG's frames are exactly the label map that :func:`medcnn.save` writes
on the source grid, one ``rows x columns`` frame per source slice:

* volumes are ``(I, J, K)`` = (column, row, slice) in medcnn, so slice ``k``'s frame is
  ``labels[:, :, k].T``; the slice files come in the order of ``K`` (sorted along the normal);
* 2D radiographs are ``(rows, cols)`` already: one frame.

Every label value becomes one segment with a coded description (SNOMED CT from pydicom's code
dictionary where a code exists: tumour sub-regions, lungs, heart, lateral ventricles, nodules;
generic "tissue" otherwise). Source files that lack type-2 attributes (PatientBirthDate,
PatientSex, StudyID, AccessionNumber, ReferringPhysicianName, ...) are completed with empty values
on the in-memory copies read here; input files are never written. The SEG carries the source's
patient and study identity by design (that is what lets a PACS file it with the study).

::

    img = medcnn.load("ct_series/")
    labels = medcnn.load_model("...").predict(img)
    write_dicom_seg(labels, "out/case.seg.dcm", like=img, segment_names={1: "lungs", 2: "heart"})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnn._version import __version__
from medcnn.errors import InputError
from medcnn.io import geometry
from medcnn.io.api import SOURCE_KEY, PathLike
from medcnn.io.atomic import atomic_path

logger = logging.getLogger(__name__)

#: output names that mean "write a DICOM Segmentation"
SEG_SUFFIX = ".seg.dcm"
#: type-2 attributes highdicom copies from the source (present, possibly empty, in a valid file)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True)
class SegmentCode:
    """What a segment is, as DICOM codes (CID 7150 category, CID 7151 type) and a label.

    Attributes:
        label: SegmentLabel written in the SEG.
        category: SNOMED CT keyword of the segmented property category (``pydicom.sr.codedict.codes.SCT``).
        type: SNOMED CT keyword of the segmented property type.
    """

    label: str
    category: str
    type: str


_ABNORMAL = "MorphologicallyAbnormalStructure"
_ANATOMY = "AnatomicalStructure"
#: lower-case label names (medcnn's and common synonyms) -> codes
SEGMENT_CODES: dict[str, SegmentCode] = {}
for _names, _code in (
    (("ncr", "necrotic core", "necrotic tumour core", "necrotic tumor core", "necrosis"),
     SegmentCode("necrotic tumour core", _ABNORMAL, "Necrosis")),
    (("ed", "edema", "oedema", "peritumoral edema", "peritumoral oedema"), SegmentCode("edema", _ABNORMAL, "Edema")),
    (("et", "enhancing tumour", "enhancing tumor"), SegmentCode("enhancing tumour", _ABNORMAL, "Neoplasm")),
    (("tumour", "tumor", "neoplasm"), SegmentCode("tumour", _ABNORMAL, "Neoplasm")),
    (("lesion",), SegmentCode("lesion", _ABNORMAL, "Lesion")),
    (("nodule",), SegmentCode("nodule", _ABNORMAL, "Nodule")),
    (("lungs", "lung"), SegmentCode("lungs", _ANATOMY, "Lung")),
    (("heart",), SegmentCode("heart", _ANATOMY, "Heart")),
    (("ventricles", "lateral ventricles", "lateral ventricle"), SegmentCode("lateral ventricles", _ANATOMY, "LateralVentricle")),
    (("tissue",), SegmentCode("tissue", "Tissue", "Tissue")),
):
    for _n in _names:
        SEGMENT_CODES[_n] = _code


def segment_code(name: str) -> SegmentCode:
    """The coded description of a segment called ``name`` (case-insensitive; generic tissue when unknown).

    Example:
        >>> segment_code("ET").type
        'Neoplasm'
    """
    known = SEGMENT_CODES.get(str(name).strip().lower())
    return known if known is not None else SegmentCode(str(name), "Tissue", "Tissue")


def is_seg_path(path: PathLike) -> bool:
    """True for output names ending in ``.seg.dcm`` (case-insensitive)."""
    return str(path).lower().endswith(SEG_SUFFIX)


def is_dicom_path(path: PathLike) -> bool:
    """True when ``path`` is a DICOM file or folder (what :func:`medcnn.load` reads as DICOM), without reading pixels."""
    from medcnn.io.readers import detect_format

    try:
        return detect_format(Path(path)) in ("dicom", "dicom-folder")
    except (InputError, OSError):  # unknown or unreadable: not a DICOM reference
        return False


def segment_names(labels_config: Mapping[str, Any] | None) -> dict[int, str]:
    """``{1: "NCR", ...}`` from a checkpoint's ``labels`` section (``names`` keyed by label value strings)."""
    names = (labels_config or {}).get("names") or {}
    return {int(k): str(v) for k, v in names.items() if str(k).lstrip("-").isdigit() and int(k) > 0}


def is_dicom_image(img: Any) -> bool:
    """True when ``img`` (from :func:`medcnn.load`) was read from DICOM, so that a SEG can reference it."""
    meta = getattr(img, "meta", None)
    return isinstance(meta, dict) and (meta.get(SOURCE_KEY) or {}).get("format") == "dicom"


def source_files(img: Any) -> list[Path]:
    """The DICOM files ``img`` was read from, in the order of its slices (one file for a single image).

    Args:
        img: a ``MetaTensor`` from :func:`medcnn.load` of a DICOM folder or file (for several
            channels: the first path's series).

    Raises:
        InputError: ``img`` does not come from DICOM.
    """
    src = (getattr(img, "meta", None) or {}).get(SOURCE_KEY) or {}
    first = (src.get("paths") or [None])[0]
    if src.get("format") != "dicom":
        raise InputError(first, f"not a DICOM image ({src.get('format', 'unknown')} source): a DICOM SEG needs DICOM source images")
    files = src.get("files")
    if files:
        return [Path(f) for f in files]
    return [Path(first)]


def _on_source_grid(labels: torch.Tensor | np.ndarray, like: Any, stack: bool) -> np.ndarray:
    """``labels`` on ``like``'s current grid -> ``(C, *source spatial)`` int64 on the source file's grid
    (nearest neighbour, as :func:`medcnn.save` maps label maps back)."""
    src = like.meta[SOURCE_KEY]
    sdims = int(src["spatial_dims"])
    arr = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if hasattr(arr, "as_tensor"):
        arr = arr.as_tensor()
    if arr.ndim == sdims:
        arr = arr[None]
    cur_shape = tuple(int(s) for s in like.shape[-sdims:])
    if arr.ndim != sdims + 1 or tuple(arr.shape[1:]) != cur_shape:
        raise ValueError(f"labels of shape {tuple(arr.shape)} do not fit the image grid {cur_shape}")
    if arr.shape[0] != 1 and not stack:
        raise ValueError(f"a label map is (1, *spatial), got {arr.shape[0]} channels (boolean masks: one per segment)")
    if torch.is_floating_point(arr) and not torch.equal(arr, arr.round()):
        raise ValueError("labels must be integers (a label map), not probabilities")
    arr = arr.to(torch.int64)
    cur_affine = like.affine.detach().cpu().numpy() if isinstance(like.affine, torch.Tensor) else np.asarray(like.affine)
    src_affine = np.asarray(src["affine"], dtype=np.float64)
    src_shape = tuple(int(s) for s in src["spatial_shape"])
    m = np.linalg.inv(np.asarray(cur_affine, dtype=np.float64)) @ src_affine
    if not (np.allclose(m, np.eye(4), atol=1e-6) and cur_shape == src_shape):
        arr = geometry.resample(arr, m, src_shape, mode="nearest")
    return arr.numpy()


def label_frames(labels: np.ndarray, spatial_dims: int, frame_order: list[int] | None = None) -> np.ndarray:
    """Source-grid label map -> DICOM frames ``(F, rows, cols)`` in the order of the source frames.

    Args:
        labels: ``(I, J, K)`` (column, row, slice) volume or ``(rows, cols)`` image.
        spatial_dims: 3 or 2.
        frame_order: multi-frame sources: ``frame_order[k]`` is the stored frame of slice ``k``.

    Returns:
        ``(K, rows, cols)`` for volumes (frame ``f`` is stored frame ``f`` of the source), ``(1, rows, cols)`` for 2D.
    """
    if spatial_dims == 2:
        return np.ascontiguousarray(labels[None])
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))  # (K, rows = J, cols = I)
    if frame_order is not None:
        stored = np.empty_like(frames)
        stored[np.asarray(frame_order)] = frames
        frames = stored
    return frames


def _read_sources(files: list[Path]) -> list[Any]:
    """The source datasets (headers only), completed with empty type-2 attributes where missing."""
    from medcnn.io.dicom import dcmread

    out = []
    for f in files:
        try:
            ds = dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure: the reference cannot be built
            raise InputError(f, f"cannot read the DICOM source for the SEG ({type(exc).__name__}: {exc})") from None
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not str(ds.get(key, "") or ""):
                raise InputError(f, f"source lacks {key}: a DICOM SEG cannot reference it")
        missing = [k for k in _TYPE2 if k not in ds or ds[k].value is None or not _conformant(ds, k)]
        for key in missing:
            setattr(ds, key, "")
        if missing:
            logger.debug("%s: empty (missing or malformed) type-2 attributes for the SEG: %s", f, ", ".join(missing))
        out.append(ds)
    return out


def _conformant(ds: Any, key: str) -> bool:
    """False for a date/time the SEG could not copy (e.g. StudyTime ``14:04:38``, a pre-standard form)."""
    from pydicom.valuerep import DA, TM

    value = ds[key].value
    parse = {"DA": DA, "TM": TM}.get(ds[key].VR)
    if parse is None or value in ("", None) or not isinstance(value, str):
        return True
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _descriptions(values: list[int], names: Mapping[int, str], algorithm: str, algorithm_type: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = None
    if algorithm_type != "MANUAL":
        algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=__version__,
                                                  family=codes.cid7162.ArtificialIntelligence)
    out = []
    for v in values:
        code = segment_code(names.get(v, f"segment {v}"))
        out.append(hd.seg.SegmentDescription(
            segment_number=v, segment_label=code.label[:64],
            segmented_property_category=getattr(codes.SCT, code.category),
            segmented_property_type=getattr(codes.SCT, code.type),
            algorithm_type=algorithm_type, algorithm_identification=algo,
        ))
    return out


def write_dicom_seg(
    labels: torch.Tensor | np.ndarray,
    path: PathLike,
    like: Any,
    *,
    segment_names: Mapping[int, str] | None = None,
    algorithm: str = "medcnn",
    algorithm_type: str = "AUTOMATIC",
    series_description: str | None = None,
    series_number: int = 901,
) -> Path:
    """Write a label map as a DICOM Segmentation referencing the DICOM image it belongs to.

    Args:
        labels: ``(*spatial)`` or ``(1, *spatial)`` integer label map on ``like``'s current grid
            (0 background, 1..N segments), as for :func:`medcnn.save`; or a boolean ``(S, *spatial)``
            stack of binary masks, one per segment ``1..S``, which may overlap.
        path: output file (conventionally ``*.seg.dcm``); written atomically.
        like: the ``MetaTensor`` that :func:`medcnn.load` returned for a DICOM folder or file.
        segment_names: label value -> name (``{1: "NCR", 2: "ED", 3: "ET"}``; coded through
            :func:`segment_code`). Segments 1..N (N the largest named or present label) are all
            written, empty ones too; labels without a name become ``"segment N"`` (generic tissue).
        algorithm: AlgorithmName of the segments (e.g. the model name).
        algorithm_type: ``"AUTOMATIC"`` (a model alone) or ``"SEMIAUTOMATIC"`` (a prompted model).
        series_description: SeriesDescription of the SEG (default ``"medcnn <algorithm>"``).
        series_number: SeriesNumber of the SEG.

    Returns:
        The written path.

    Raises:
        InputError: ``like`` is not a DICOM image, or a source file cannot be referenced.
        ValueError: ``labels`` does not fit ``like``'s grid, is not integer, holds negative values
            or more than 65535 segments.
    """
    import highdicom as hd

    path = Path(path)
    files = source_files(like)
    src = like.meta[SOURCE_KEY]
    sdims = int(src["spatial_dims"])
    stack = (labels.dtype == torch.bool) if isinstance(labels, torch.Tensor) else np.asarray(labels).dtype == bool
    grid = _on_source_grid(labels, like, stack)
    names = {int(k): str(v) for k, v in (segment_names or {}).items() if int(k) > 0}
    if stack:  # one binary mask per segment: they may overlap (lungs and heart on a radiograph)
        present = [c + 1 for c in range(grid.shape[0]) if grid[c].any()]
        top = max([grid.shape[0], *names])
        grid = np.concatenate([grid, np.zeros((top - grid.shape[0], *grid.shape[1:]), grid.dtype)]) if top > grid.shape[0] else grid
    else:
        grid = grid[0]
        if grid.size and grid.min() < 0:
            raise ValueError("labels must be >= 0 (0 = background)")
        present = sorted(int(v) for v in np.unique(grid) if v > 0)
        top = max([*names, *present], default=0)
    if top == 0:
        top, names = 1, {1: "tissue"}  # a SEG needs one segment: an empty one says "nothing found"
    if top > 65535:
        raise ValueError(f"label {top} is beyond DICOM SEG's 65535 segments")
    values = list(range(1, top + 1))  # SEG segment numbers run 1..N: unused labels become empty segments
    order = src.get("frame_order")
    if stack:
        frames = np.stack([label_frames(g, sdims, order) for g in grid], axis=-1).astype(bool)  # (F, rows, cols, S)
    else:
        frames = label_frames(grid, sdims, order).astype(np.uint8 if top < 256 else np.uint16)
    sources = _read_sources(files)
    if len(sources) > 1 and len(sources) != frames.shape[0]:
        raise InputError(files[0], f"{len(sources)} source files for {frames.shape[0]} slices; cannot pair them")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(values, names, algorithm, algorithm_type),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medcnn",
        manufacturer_model_name=str(algorithm)[:64],
        software_versions=__version__,
        device_serial_number="none",
        series_description=(series_description or f"medcnn {algorithm}")[:64],
        omit_empty_frames=bool(present),
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    logger.debug("wrote DICOM SEG %s: %d segment(s), %d frame(s) referencing %d file(s)", path, len(values),
                 int(seg.NumberOfFrames), len(files))
    return path
