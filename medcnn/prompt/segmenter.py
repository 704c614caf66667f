"""``PromptableSegmenter``: box/point-prompted segmentation (MedSAM-style).

::

    seg = medcnn.PromptableSegmenter.from_pretrained("medsam_vit_b.pth")
    seg.set_image(img)                          # (C, H, W); expensive, once per image
    mask = seg.predict(box=(i0, j0, i1, j1))    # (H, W) bool; rows i0..i1-1, columns j0..j1-1
    labels = seg.predict(box=[b1, b2, b3])      # (H, W) int32 label map 0..3
    mask = seg.predict(box=b, points=[(i, j)], labels=[0])   # refine with a background click
    logits = seg.predict(box=b, return_logits=True)          # (H, W) float32, > 0 where the mask is

The work is split between this class, which validates prompts and turns them into a fixed
convention, and a *backend* that owns a model (:class:`PromptBackend`): MedSAM/SAM checkpoints
use :class:`~medcnn.prompt.medsam.MedSAMBackend`; the bundled light model (and models trained
with ``medcnn train configs/prompt.yaml``) use :class:`~medcnn.prompt.lite.LitePromptBackend`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from medcnn.errors import InputError

__all__ = ["BUNDLED_MODELS", "PromptBackend", "PromptableSegmenter"]

logger = logging.getLogger(__name__)

#: Names accepted by :meth:`PromptableSegmenter.from_pretrained` besides checkpoint paths.
BUNDLED_MODELS = ("medcnn-prompt",)
DEFAULT_MODEL = "medcnn-prompt"
# Logit used for a bool/integer ``mask_input`` (True -> +_MASK_LOGIT, False -> -_MASK_LOGIT).
_MASK_LOGIT = 10.0
# Logit of slices a 3D prompt did not reach.
_OUTSIDE = -100.0
# 3D propagation: each next slice's box is the previous slice's mask box, not grown; a side the new mask reaches is
# pushed out by _PROPAGATION_STEP (fraction of the extent, at least 2 px) and the slice redone, at most
# _PROPAGATION_RETRIES times: growing every box instead lets spill compound slice after slice.
_PROPAGATION_STEP = 0.05
_PROPAGATION_RETRIES = 1


def _mask_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """``(i0, j0, i1, j1)`` bounding box of a non-empty ``(H, W)`` bool mask, max exclusive."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return float(rows[0]), float(cols[0]), float(rows[-1]) + 1, float(cols[-1]) + 1


def _grow_touching_sides(mask: torch.Tensor, box: torch.Tensor, limit: tuple[float, float, float, float]
                         ) -> torch.Tensor | None:
    """``box`` (i0, j0, i1, j1) with each side that ``mask`` (H, W) reaches pushed out, within ``limit``; None if none."""
    if not bool(mask.any()):
        return None
    r0, c0, r1, c1 = _mask_box(mask)
    i0, j0, i1, j1 = (float(v) for v in box.tolist())
    gi = max(2.0, _PROPAGATION_STEP * (i1 - i0))
    gj = max(2.0, _PROPAGATION_STEP * (j1 - j0))
    new = [i0, j0, i1, j1]
    if r0 <= np.ceil(i0):
        new[0] = max(limit[0], i0 - gi)
    if c0 <= np.ceil(j0):
        new[1] = max(limit[1], j0 - gj)
    if r1 >= np.floor(i1):
        new[2] = min(limit[2], i1 + gi)
    if c1 >= np.floor(j1):
        new[3] = min(limit[3], j1 + gj)
    if new == [i0, j0, i1, j1]:
        return None
    return torch.tensor(new, dtype=torch.float64)


@runtime_checkable
class PromptBackend(Protocol):
    """What a model must provide to serve :class:`PromptableSegmenter` (2D images).

    Prompts reach the backend validated and in one convention: pixel indices of the image
    tensor's spatial axes ``(i, j)`` = (row, column); boxes ``(i0, j0, i1, j1)`` with the max
    exclusive.
    """

    name: str
    #: ``predict_logits`` takes ``exact_box: bool`` (the boxes are exact bounding boxes). Backends without
    #: the attribute count as False; the segmenter keeps every exact box's mask inside the box either way.
    supports_exact_box: bool = False
    #: ``predict_logits`` takes ``per_prompt_offsets: bool``; the segmenter turns it off when it propagates
    #: a 3D volume slice by slice. Backends without the attribute count as False.
    supports_per_prompt_offsets: bool = False

    def set_image(self, image: torch.Tensor) -> None:
        """Compute and keep what every prompt needs (the image embedding).

        Args:
            image: ``(C, H, W)`` float32, finite.
        """

    def predict_logits(
        self,
        *,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode prompts on the current image.

        Args:
            boxes: ``(N, 4)`` float64 ``(i0, j0, i1, j1)``, or ``None``.
            points: ``(P, 2)`` float64 ``(i, j)`` (shared by every box), or ``None``.
            labels: ``(P,)`` int64, 1 foreground / 0 background (given with ``points``).
            mask_input: ``(H, W)`` float32 logits on the image grid, or ``None``.

        Returns:
            ``(N, H, W)`` float32 logits on the image grid (CPU), ``N = 1`` without boxes;
            the mask is ``logits > 0``.
        """

    # ``exact_box`` / ``per_prompt_offsets`` keywords are passed only to backends whose class declares them.


def _lite_backend(path: Path, device: str | torch.device, missing_ok: bool = False) -> PromptBackend | None:
    """A :class:`~medcnn.prompt.lite.LitePromptBackend` from a medcnn ``task: prompt`` checkpoint.

    With ``missing_ok``, files that are not medcnn checkpoints (e.g. MedSAM ``.pth`` state dicts)
    give ``None``; a medcnn checkpoint of another task is always an error.
    """
    from medcnn.engine.checkpoint import load_checkpoint
    from medcnn.predictor import network_from_checkpoint
    from medcnn.prompt.lite import CropSpec, LitePromptBackend

    try:
        ck = load_checkpoint(path, map_location="cpu")
    except InputError as exc:
        if missing_ok and "not a medcnn checkpoint" in str(exc):
            return None
        raise
    if ck.get("task") != "prompt":
        raise InputError(path, f"a medcnn {ck.get('task')} checkpoint, not a promptable model (task: prompt)")
    inf = ck.get("inference") or {}
    return LitePromptBackend(network_from_checkpoint(ck, path), CropSpec.from_dict(ck.get("prompt")), device=device,
                             tta=bool(inf.get("tta", False)), tta_axes=inf.get("tta_axes"))


def _as_tensor(image: Any) -> torch.Tensor:
    """Tensor/MetaTensor/array -> plain float32 CPU tensor (a copy-free view when possible)."""
    if isinstance(image, torch.Tensor):
        t = image.as_tensor() if hasattr(image, "as_tensor") else image
        return t.detach().to("cpu", torch.float32)
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"expected a real-valued image, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def xyxy_to_ij(box_xyxy: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor) -> list[list[float]]:
    """SAM-order 2D boxes ``[x0, y0, x1, y1]`` (x = column, y = row) -> medcnn's ``(i0, j0, i1, j1)`` (rows first).

    Args:
        box_xyxy: one box ``(4,)`` or several ``(N, 4)``.

    Returns:
        ``[y0, x0, y1, x1]`` for one box, ``[[y0, x0, y1, x1], ...]`` for several (the nesting is kept).

    Raises:
        ValueError: not 4 numbers per box.
    """
    arr = np.asarray(box_xyxy.detach().cpu() if isinstance(box_xyxy, torch.Tensor) else box_xyxy, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] != 4:
        raise ValueError(f"box_xyxy must be [x0, y0, x1, y1] (or N of them), got shape {tuple(arr.shape)}")
    return arr[..., [1, 0, 3, 2]].tolist()


class PromptableSegmenter:
    """Segment an image from box and point prompts; the image embedding is computed once.

    Args:
        backend: the model behind the prompts (see :class:`PromptBackend`).
        name: the model's name or checkpoint path (for messages and provenance).
    """

    def __init__(self, backend: PromptBackend, *, name: str = "custom") -> None:
        self.backend = backend
        self.name = name
        # capabilities are declared (PromptBackend), not read from signatures; third-party backends may omit them
        self._exact_kw = bool(getattr(backend, "supports_exact_box", False))
        # per-prompt offsets were fitted on single 2D boxes, so 3D propagation keeps the fixed offset
        self._slice_kw = {"per_prompt_offsets": False} if getattr(backend, "supports_per_prompt_offsets", False) else {}
        self._shape: tuple[int, ...] | None = None
        self._volume: torch.Tensor | None = None  # (C, D, H, W) of a 3D image; slices embedded on demand
        self._embedded: int | None = None  # slice index whose embedding the backend holds

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str] | None = None, *, device: str | torch.device = "cpu"
    ) -> PromptableSegmenter:
        """Load a promptable model.

        Args:
            name_or_path: a bundled model name (``"medcnn-prompt"``, the default: the light crop
                model of :mod:`medcnn.prompt.lite`), a checkpoint from ``medcnn train`` with
                ``task: prompt`` (e.g. fine-tuned with ``configs/prompt.yaml``), or the path of an
                official MedSAM / SAM checkpoint (``.pth``/``.pt``: a ``segment_anything`` ``Sam``
                state_dict or ``{"model": state_dict}``).
            device: where the model runs (CPU by default).

        Returns:
            the segmenter.

        Raises:
            InputError: unknown name, missing or unusable checkpoint.
        """
        if name_or_path is None:
            name_or_path = DEFAULT_MODEL
        text = str(name_or_path)
        path = Path(name_or_path)
        if text in BUNDLED_MODELS and not path.is_file():
            from medcnn.predictor import bundled_path

            found = bundled_path(text)
            if found is None:
                raise InputError(None, f"bundled promptable model {text!r} is not part of this install "
                                       "(medcnn/data/models/prompt.pt is missing); reinstall medcnn or pass a checkpoint path")
            return cls(_lite_backend(found, device), name=text)
        if not path.exists():
            raise InputError(path, f"no such checkpoint file, and not a bundled model name ({', '.join(BUNDLED_MODELS)})")
        lite = _lite_backend(path, device, missing_ok=True)
        if lite is not None:
            return cls(lite, name=str(path))
        from medcnn.prompt.medsam import MedSAMBackend, load_medsam

        model = load_medsam(path, map_location=device)
        return cls(MedSAMBackend(model), name=str(path))

    # ------------------------------------------------------------------ image
    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """Spatial shape ``(H, W)`` of the current image (``None`` before :meth:`set_image`)."""
        return self._shape

    def set_image(self, image: torch.Tensor | np.ndarray) -> None:
        """Embed an image (expensive; do it once, then call :meth:`predict` many times).

        Args:
            image: ``(C, H, W)`` 2D image or ``(C, D, H, W)`` volume, C = 1 (grey) or 3 (RGB): a
                tensor, MetaTensor (as from :func:`medcnn.load`) or array. A volume is segmented
                slice by slice along its first spatial axis ``D``; each slice is embedded when a
                prompt first reaches it (and the last one is kept), so setting a volume is cheap.

        Raises:
            ValueError: wrong dimensionality or channel count, empty or non-finite image.
        """
        x = _as_tensor(image)
        if x.ndim not in (3, 4):
            raise ValueError(f"expected a 2D image (C, H, W) or a volume (C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] not in (1, 3):
            raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got shape {tuple(x.shape)}")
        if min(x.shape[1:]) < 1:
            raise ValueError(f"the image is empty: shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("the image contains NaN or Inf values")
        self._shape = None
        self._volume, self._embedded = None, None
        if x.ndim == 4:
            self._volume = x
        else:
            self.backend.set_image(x)
        self._shape = tuple(int(s) for s in x.shape[1:])
        logger.debug("%s: set an image of shape %s", self.name, tuple(x.shape))

    def _embed_slice(self, d: int) -> None:
        if self._embedded != d:
            assert self._volume is not None  # internal invariant: only called for volumes
            self.backend.set_image(self._volume[:, d])
            self._embedded = d

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def _boxes(box: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
        """Validated ``(N, 4)`` boxes and whether several were given (a nested sequence)."""
        arr = np.asarray(box, dtype=np.float64) if not isinstance(box, torch.Tensor) else box.detach().cpu().double().numpy()
        dims = len(shape)
        several = arr.ndim == 2
        if arr.ndim not in (1, 2) or arr.shape[-1] != 2 * dims or (several and arr.shape[0] == 0):
            form = "(i0, j0, i1, j1)" if dims == 2 else "(i0, j0, k0, i1, j1, k1)"
            raise ValueError(f"box must be {form} or a list of them for a {dims}D image, got {np.asarray(box).tolist()}")
        arr = arr.reshape(-1, 2 * dims)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"box coordinates must be finite, got {arr.tolist()}")
        for b in arr:
            lo, hi = b[:dims], b[dims:]
            if not np.all(lo < hi):
                raise ValueError(f"empty box {tuple(b.tolist())}: need each min < max (max is exclusive)")
            if np.any(lo < 0) or np.any(hi > np.asarray(shape)):
                bounds = " and ".join(f"0 <= {a}0 < {a}1 <= {n}" for a, n in zip("ijk", shape))
                raise ValueError(f"box {tuple(b.tolist())} is outside the image of shape {shape}: need {bounds}")
        return torch.from_numpy(arr), several

    @staticmethod
    def _points(points: Any, labels: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``(P, 2)`` points and ``(P,)`` labels (all 1 when ``labels`` is None)."""
        dims = len(shape)
        arr = np.asarray(points, dtype=np.float64)
        if arr.ndim == 1 and arr.shape[0] == dims:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != dims or arr.shape[0] == 0:
            form = "(i, j)" if dims == 2 else "(i, j, k)"
            raise ValueError(f"points must be a list of {form} for a {dims}D image, got {np.asarray(points).tolist()}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("point coordinates must be finite")
        upper = np.asarray(shape, dtype=np.float64)
        outside = np.any((arr < 0) | (arr >= upper), axis=1)
        if outside.any():
            raise ValueError(f"point {tuple(arr[outside][0].tolist())} is outside the image of shape {shape}")
        if labels is None:
            lab = np.ones(arr.shape[0], dtype=np.int64)
        else:
            lab = np.asarray(labels).reshape(-1)
            if lab.shape[0] != arr.shape[0]:
                raise ValueError(f"got {arr.shape[0]} point(s) but {lab.shape[0]} label(s)")
            if not np.all(np.isin(lab, (0, 1))):
                raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {lab.tolist()}")
            lab = lab.astype(np.int64)
        return torch.from_numpy(arr), torch.from_numpy(lab)

    @staticmethod
    def _mask_input(mask_input: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """``(H, W)`` float32 logits from logits (float) or a mask (bool/integer: +-10)."""
        m = mask_input.detach().cpu() if isinstance(mask_input, torch.Tensor) else torch.as_tensor(np.asarray(mask_input))
        if m.ndim == len(shape) + 1 and m.shape[0] == 1:
            m = m[0]
        if tuple(m.shape) != shape:
            raise ValueError(f"mask_input must have the image's shape {shape}, got {tuple(m.shape)}")
        if m.dtype == torch.bool or not torch.is_floating_point(m):
            return torch.where(m.bool(), _MASK_LOGIT, -_MASK_LOGIT).float()
        m = m.float()
        if not torch.isfinite(m).all():
            raise ValueError("mask_input contains NaN or Inf values")
        return m

    def predict(
        self,
        box: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None = None,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        return_logits: bool = False,
        exact_box: bool = False,
        *,
        box_xyxy: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment the current image from prompts (cheap; reuses the embedding of :meth:`set_image`).

        Coordinates index the image tensor's spatial axes: ``i`` = row (axis 1 of ``(C, H, W)``),
        ``j`` = column (axis 2). A box ``(i0, j0, i1, j1)`` covers rows ``i0 .. i1-1`` and columns
        ``j0 .. j1-1`` (max exclusive, like slicing ``image[:, i0:i1, j0:j1]``). For a volume
        ``(C, D, H, W)`` boxes are ``(i0, j0, k0, i1, j1, k1)`` and points ``(i, j, k)`` with ``i``
        the slice index; the object is propagated slice by slice from the box's central slice
        (see :meth:`_propagate`), and points correct the slices they lie on.

        Args:
            box: one box ``(i0, j0, i1, j1)``, or a list of boxes (one object each).
            points: ``[(i, j), ...]`` clicks refining the object (with at most one box).
            labels: per point, 1 foreground / 0 background (default: all foreground).
            mask_input: ``(H, W)`` prior: float logits (e.g. an earlier ``return_logits`` result)
                or a bool mask.
            return_logits: return float logits instead of a mask.
            exact_box: each box is its object's exact bounding box (taken from an annotation or a
                mask, touching the object on all four sides), not drawn by hand: the mask is kept
                inside the box, and the light model uses its exact-box calibration (and input
                channel, where it was trained with one). Default ``False``: a drawn box, which may
                be a little loose or tight. For a volume, the mask is kept inside the 3D box.
            box_xyxy: instead of ``box``, 2D box(es) in SAM/MedSAM order ``[x0, y0, x1, y1]`` with
                ``x`` = column (``j``) and ``y`` = row (``i``): the same box as ``box=(y0, x0, y1, x1)``
                (same max-exclusive rule; a box made from a mask's inclusive min/max indices needs
                ``x1 + 1, y1 + 1`` to hold the mask's last row and column).

        Returns:
            one box (or points only): ``(H, W)`` bool mask, or ``(H, W)`` float32 logits
            (``(D, H, W)`` for a volume, likewise below).
            Several boxes: ``(H, W)`` int32 label map (0 background, ``n`` for the ``n``-th box;
            where objects overlap, the box with the highest probability wins, the later box on an
            exact tie), or ``(N, H, W)`` float32 logits. Tensors are on the CPU; ``logits > 0``
            is the mask.

        Raises:
            RuntimeError: :meth:`set_image` was not called.
            ValueError: no prompt, malformed prompts, boxes/points outside the image, empty box.
        """
        shape = self._shape
        if shape is None:
            raise RuntimeError("call set_image(image) before predict()")
        if box_xyxy is not None:
            if box is not None:
                raise ValueError("give box (i0, j0, i1, j1) or box_xyxy [x0, y0, x1, y1], not both")
            if self._volume is not None:
                raise ValueError("box_xyxy is for 2D images; give a volume's box as (i0, j0, k0, i1, j1, k1)")
            box = xyxy_to_ij(box_xyxy)
        if box is None and points is None:
            raise ValueError("give a box and/or points")
        if points is None and labels is not None:
            raise ValueError("labels were given without points")
        boxes, several = (None, False) if box is None else self._boxes(box, shape)
        pts, labs = (None, None) if points is None else self._points(points, labels, shape)
        if several and pts is not None and boxes is not None and boxes.shape[0] > 1:
            raise ValueError("points refine a single object: give them with one box, not several")
        prior = None if mask_input is None else self._mask_input(mask_input, shape)
        if several and prior is not None and boxes is not None and boxes.shape[0] > 1:
            raise ValueError("mask_input refines a single object: give it with one box, not several")
        if exact_box and boxes is None:
            raise ValueError("exact_box=True needs a box")
        if self._volume is not None:
            logits = torch.stack([self._propagate(None if boxes is None else b, pts, labs, prior)
                                  for b in (boxes if boxes is not None else [None])])
        else:
            extra = {"exact_box": True} if exact_box and self._exact_kw else {}
            logits = self.backend.predict_logits(boxes=boxes, points=pts, labels=labs, mask_input=prior, **extra)
        if exact_box:
            from medcnn.prompt.lite import clip_to_box

            logits = torch.stack([clip_to_box(lg, b.tolist(), fill=_OUTSIDE) for lg, b in zip(logits, boxes)])
        if not several:
            logits = logits[0]
            return logits if return_logits else logits > 0
        if return_logits:
            return logits
        # Highest logit wins; flipping makes argmax (first maximum) prefer the later box on ties.
        n = logits.shape[0]
        best = (n - 1) - torch.argmax(torch.flip(logits, dims=[0]), dim=0)
        return torch.where(logits.amax(dim=0) > 0, best + 1, 0).to(torch.int32)

    def _slice_logits(self, d: int, box2d: torch.Tensor | None, pts: torch.Tensor | None, labs: torch.Tensor | None,
                      prior: torch.Tensor | None) -> torch.Tensor:
        """``(H, W)`` logits of slice ``d`` from an in-plane box and the points lying on that slice."""
        on = None
        if pts is not None:
            on = torch.round(pts[:, 0]).long() == d
            if not bool(on.any()):
                on = None
        if box2d is None and on is None:
            return torch.full(self._shape[1:], _OUTSIDE, dtype=torch.float32)
        self._embed_slice(d)
        return self.backend.predict_logits(
            boxes=None if box2d is None else box2d[None],
            points=None if on is None else pts[on][:, 1:],
            labels=None if on is None else labs[on],
            mask_input=None if prior is None else prior[d],
            **self._slice_kw,
        )[0]

    def _propagate(self, box: torch.Tensor | None, pts: torch.Tensor | None, labs: torch.Tensor | None,
                   prior: torch.Tensor | None) -> torch.Tensor:
        """``(D, H, W)`` logits of one object in a volume.

        With a 3D box ``(i0, j0, k0, i1, j1, k1)``: the central slice ``(i0 + i1 - 1) // 2`` is
        segmented from the box's in-plane part; each next slice towards ``i0`` and ``i1 - 1`` gets
        the bounding box of the previous slice's (uncorrected) mask, kept inside the 3D box; a side
        the new mask reaches is pushed out and the slice redone (``_PROPAGATION_STEP``), so the
        box follows an object that grows or drifts without a margin that lets spill compound.
        Propagation stops on a side once a slice comes out empty. Points correct the slices they
        lie on (also outside the box's slice range) and only those. Without a box, only the slices holding
        points are segmented. Slices not segmented get logit -100.
        """
        d_n, h, w = self._shape
        out = torch.full((d_n, h, w), _OUTSIDE, dtype=torch.float32)
        point_slices = set() if pts is None else {int(v) for v in torch.round(pts[:, 0]).long().tolist()}
        if box is None:
            for d in sorted(point_slices):
                out[d] = self._slice_logits(d, None, pts, labs, prior)
            return out
        i0, j0, k0, i1, j1, k1 = (float(v) for v in box.tolist())
        lo_d, hi_d = int(np.floor(i0)), int(np.ceil(i1))
        centre = (lo_d + hi_d - 1) // 2
        inplane = torch.tensor([j0, k0, j1, k1], dtype=torch.float64)
        out[centre] = self._slice_logits(centre, inplane, pts, labs, prior)
        done = {centre}
        base_centre = out[centre] if centre not in point_slices else self._slice_logits(centre, inplane, None, None, prior)
        for step, stop in ((1, hi_d), (-1, lo_d - 1)):
            prev = base_centre > 0
            d = centre + step
            while d != stop and bool(prev.any()):
                r0, c0, r1, c1 = _mask_box(prev)
                nb = torch.tensor([max(j0, r0), max(k0, c0), min(j1, r1), min(k1, c1)], dtype=torch.float64)
                base = self._slice_logits(d, nb, None, None, prior)
                for _ in range(_PROPAGATION_RETRIES):  # the mask reaches a side of its box: the object may go on
                    grown = _grow_touching_sides(base > 0, nb, (j0, k0, j1, k1))
                    if grown is None:
                        break
                    nb = grown
                    base = self._slice_logits(d, nb, None, None, prior)
                # clicks correct this slice only; the next box comes from the uncorrected mask
                out[d] = base if d not in point_slices else self._slice_logits(d, nb, pts, labs, prior)
                done.add(d)
                prev = base > 0
                d += step
        for d in sorted(point_slices - done):  # clicks on slices propagation did not reach
            out[d] = self._slice_logits(d, None, pts, labs, prior)
        return out

    def __repr__(self) -> str:
        return f"PromptableSegmenter(name={self.name!r}, backend={getattr(self.backend, 'name', '?')!r})"
