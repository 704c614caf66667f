"""``PromptableSegmenter``: box/point-prompted segmentation (MedSAM-style), DESIGN §3.

::

    seg = medcnn.PromptableSegmenter.from_pretrained("medsam_vit_b.pth")
    seg.set_image(img)                          # (C, H, W); expensive, once per image
    mask = seg.predict(box=(i0, j0, i1, j1))    # (H, W) bool; rows i0..i1-1, columns j0..j1-1
    labels = seg.predict(box=[b1, b2, b3])      # (H, W) int32 label map 0..3
    mask = seg.predict(box=b, points=[(i, j)], labels=[0])   # refine with a background click
    logits = seg.predict(box=b, return_logits=True)          # (H, W) float32, > 0 where the mask is

The work is split between this class, which validates prompts and turns them into a fixed
convention, and a *backend* that owns a model (:class:`PromptBackend`): MedSAM/SAM checkpoints
use :class:`~medcnn.prompt.medsam.MedSAMBackend`; the bundled light model plugs in as another
backend.
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


@runtime_checkable
class PromptBackend(Protocol):
    """What a model must provide to serve :class:`PromptableSegmenter` (2D images).

    Prompts reach the backend validated and in one convention: pixel indices of the image
    tensor's spatial axes ``(i, j)`` = (row, column); boxes ``(i0, j0, i1, j1)`` with the max
    exclusive.
    """

    name: str

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


def _as_tensor(image: Any) -> torch.Tensor:
    """Tensor/MetaTensor/array -> plain float32 CPU tensor (a copy-free view when possible)."""
    if isinstance(image, torch.Tensor):
        t = image.as_tensor() if hasattr(image, "as_tensor") else image
        return t.detach().to("cpu", torch.float32)
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"expected a real-valued image, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class PromptableSegmenter:
    """Segment an image from box and point prompts; the image embedding is computed once.

    Args:
        backend: the model behind the prompts (see :class:`PromptBackend`).
        name: the model's name or checkpoint path (for messages and provenance).
    """

    def __init__(self, backend: PromptBackend, *, name: str = "custom") -> None:
        self.backend = backend
        self.name = name
        self._shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str] | None = None, *, device: str | torch.device = "cpu"
    ) -> PromptableSegmenter:
        """Load a promptable model.

        Args:
            name_or_path: a bundled model name (``"medcnn-prompt"``, the default) or the path of
                an official MedSAM / SAM checkpoint (``.pth``/``.pt``: a ``segment_anything``
                ``Sam`` state_dict or ``{"model": state_dict}``).
            device: where the model runs (CPU by default).

        Returns:
            the segmenter.

        Raises:
            InputError: unknown name, missing or unusable checkpoint.
        """
        if name_or_path is None:
            name_or_path = DEFAULT_MODEL
        text = str(name_or_path)
        if text in BUNDLED_MODELS and not Path(text).is_file():
            raise InputError(
                None,
                f"bundled promptable model {text!r} is not available yet in this version; "
                "pass the path of a MedSAM/SAM checkpoint (e.g. medsam_vit_b.pth)",
            )
        path = Path(name_or_path)
        if not path.exists():
            raise InputError(path, f"no such checkpoint file, and not a bundled model name ({', '.join(BUNDLED_MODELS)})")
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
            image: ``(C, H, W)`` 2D image with C = 1 (grey) or 3 (RGB): a tensor, MetaTensor
                (as from :func:`medcnn.load`) or array. 3D volumes ``(C, D, H, W)`` are not
                supported yet.

        Raises:
            ValueError: wrong dimensionality or channel count, empty or non-finite image.
            NotImplementedError: a 3D volume.
        """
        x = _as_tensor(image)
        if x.ndim == 4:
            raise NotImplementedError(
                f"3D volumes (C, D, H, W) are not supported yet (got shape {tuple(x.shape)}); "
                "segment its slices x[:, k] one by one"
            )
        if x.ndim != 3:
            raise ValueError(f"expected a 2D image (C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] not in (1, 3):
            raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got shape {tuple(x.shape)}")
        if min(x.shape[1:]) < 1:
            raise ValueError(f"the image is empty: shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("the image contains NaN or Inf values")
        self._shape = None
        self.backend.set_image(x)
        self._shape = tuple(int(s) for s in x.shape[1:])
        logger.debug("%s: embedded an image of shape %s", self.name, tuple(x.shape))

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def _boxes(box: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
        """Validated ``(N, 4)`` boxes and whether several were given (a nested sequence)."""
        arr = np.asarray(box, dtype=np.float64) if not isinstance(box, torch.Tensor) else box.detach().cpu().double().numpy()
        dims = len(shape)
        several = arr.ndim == 2
        if arr.ndim not in (1, 2) or arr.shape[-1] != 2 * dims or (several and arr.shape[0] == 0):
            raise ValueError(
                f"box must be (i0, j0, i1, j1) or a list of them for a {dims}D image, got {np.asarray(box).tolist()}"
            )
        arr = arr.reshape(-1, 2 * dims)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"box coordinates must be finite, got {arr.tolist()}")
        h, w = shape
        for b in arr:
            i0, j0, i1, j1 = b.tolist()
            if not (i0 < i1 and j0 < j1):
                raise ValueError(f"empty box {tuple(b.tolist())}: need i0 < i1 and j0 < j1 (max is exclusive)")
            if i0 < 0 or j0 < 0 or i1 > h or j1 > w:
                raise ValueError(
                    f"box {tuple(b.tolist())} is outside the image of shape {shape}: "
                    f"need 0 <= i0 < i1 <= {h} and 0 <= j0 < j1 <= {w}"
                )
        return torch.from_numpy(arr), several

    @staticmethod
    def _points(points: Any, labels: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``(P, 2)`` points and ``(P,)`` labels (all 1 when ``labels`` is None)."""
        dims = len(shape)
        arr = np.asarray(points, dtype=np.float64)
        if arr.ndim == 1 and arr.shape[0] == dims:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != dims or arr.shape[0] == 0:
            raise ValueError(f"points must be a list of (i, j) for a {dims}D image, got {np.asarray(points).tolist()}")
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
    ) -> torch.Tensor:
        """Segment the current image from prompts (cheap; reuses the embedding of :meth:`set_image`).

        Coordinates index the image tensor's spatial axes: ``i`` = row (axis 1 of ``(C, H, W)``),
        ``j`` = column (axis 2). A box ``(i0, j0, i1, j1)`` covers rows ``i0 .. i1-1`` and columns
        ``j0 .. j1-1`` (max exclusive, like slicing ``image[:, i0:i1, j0:j1]``).

        Args:
            box: one box ``(i0, j0, i1, j1)``, or a list of boxes (one object each).
            points: ``[(i, j), ...]`` clicks refining the object (with at most one box).
            labels: per point, 1 foreground / 0 background (default: all foreground).
            mask_input: ``(H, W)`` prior: float logits (e.g. an earlier ``return_logits`` result)
                or a bool mask.
            return_logits: return float logits instead of a mask.

        Returns:
            one box (or points only): ``(H, W)`` bool mask, or ``(H, W)`` float32 logits.
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
        logits = self.backend.predict_logits(boxes=boxes, points=pts, labels=labs, mask_input=prior)
        if not several:
            logits = logits[0]
            return logits if return_logits else logits > 0
        if return_logits:
            return logits
        # Highest logit wins; flipping makes argmax (first maximum) prefer the later box on ties.
        n = logits.shape[0]
        best = (n - 1) - torch.argmax(torch.flip(logits, dims=[0]), dim=0)
        return torch.where(logits.amax(dim=0) > 0, best + 1, 0).to(torch.int32)

    def __repr__(self) -> str:
        return f"PromptableSegmenter(name={self.name!r}, backend={getattr(self.backend, 'name', '?')!r})"
