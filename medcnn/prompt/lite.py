"""The bundled light promptable model (``"medcnn-prompt"``): a small 2D U-Net on a crop around the prompt.

MedSAM embeds the whole image once at 1024x1024 with a ViT-B (seconds per slice on a CPU) and
decodes each prompt from that embedding at 256x256. The light model inverts
the trade: each prompt selects a region (the box, grown by a margin), the region is resampled to
``crop_size x crop_size`` (96 in the bundled model) and a 1.6M-parameter U-Net reads it together
with the prompt rendered as images. Objects of any size are thus seen at the same resolution, and
the per-prompt cost is one small network pass (see ``benchmarks/bench_prompt.py``) while
:meth:`LitePromptBackend.set_image` only keeps a grey copy of the image.

Network input, ``(5, S, S)`` per prompt, ``(6, S, S)`` with the exact-box channel (:func:`prompt_inputs`):

0. the image crop, normalised by its own 1st and 99th percentiles (so CT, MR, X-ray and
   photographs look alike to the model);
1. the box, 1 inside (0 everywhere when there is no box);
2. positive clicks, Gaussian spots (sigma 2 px in the crop);
3. negative clicks, likewise;
4. the prior mask (``sigmoid`` of ``mask_input``; 0 when none is given);
5. only in networks trained with ``prompt.exact_channel``: 1 everywhere when the box is the
   object's exact bounding box (``predict(..., exact_box=True)``), else 0. Hand-drawn boxes are
   loose by a few per cent; a box taken from an annotation touches the object on all four sides,
   and a network told which it has need not trade one for the other.

The output logits ``(1, S, S)``, plus the checkpoint's logit offset (fixed, or chosen per box prompt
from the crop's logits: :mod:`medcnn.prompt.offsets`), are resampled back onto the region of the image
(:func:`paste_logits`); outside the region the logit is ``-20``. With the checkpoint's
``inference.tta`` the logits are first averaged over mirror images of the crop
(:func:`medcnn.inference.tta.flip_tta`, one batched network call). The same functions build the
training samples (:mod:`medcnn.prompt.train`), so training and inference see identical geometry.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcnn.inference.tta import mirror_predictor
from medcnn.prompt.offsets import OffsetModel, offset_features

__all__ = ["CropSpec", "LitePromptBackend", "clip_to_box", "crop_region", "extract", "optimised_cpu_network",
           "paste_logits", "prompt_inputs"]

logger = logging.getLogger(__name__)

IN_CHANNELS = 5
_OUTSIDE_LOGIT = -20.0
_POINT_SIGMA = 2.0  # px in the crop


@dataclass(frozen=True)
class CropSpec:
    """How a prompt becomes a network input (stored in the checkpoint's ``prompt`` entry).

    Attributes:
        size: side of the square network input ``S``.
        margin: context added on each side of the prompt's extent, as a fraction of that
            extent along the same axis ...
        margin_max: ... plus this fraction of the extent's longer side ...
        margin_px: ... plus this many pixels.
        logit_offset: added to the network's logits before they are pasted back (the mask is
            ``logits > 0``): the calibration chosen on held-out images while training
            (:mod:`medcnn.prompt.train`); needed because networks trained with Dice + BCE on soft
            crop targets draw masks too tight at offset 0.
        logit_offset_exact: the offset for exact boxes (``exact_box``; masks then also kept inside
            the box), calibrated on held-out exact boxes; ``None``: ``logit_offset``.
        exact_channel: the network reads a sixth channel saying the box is exact.
        offset_model, offset_model_exact: per-prompt offsets for drawn and exact boxes
            (:mod:`medcnn.prompt.offsets`) used instead of the fixed ones for box prompts without
            clicks or prior masks; ``None``: the fixed offset.
    """

    size: int = 96
    margin: float = 0.15
    margin_max: float = 0.05
    margin_px: float = 4.0
    logit_offset: float = 0.0
    logit_offset_exact: float | None = None
    exact_channel: bool = False
    offset_model: OffsetModel | None = None
    offset_model_exact: OffsetModel | None = None

    @property
    def in_channels(self) -> int:
        """Channels of the network input (5, or 6 with :attr:`exact_channel`)."""
        return IN_CHANNELS + int(self.exact_channel)

    def offset(self, exact_box: bool = False) -> float:
        """The logit offset for a loose (hand-drawn) or an exact box."""
        return self.logit_offset_exact if exact_box and self.logit_offset_exact is not None else self.logit_offset

    def adaptive(self, exact_box: bool = False) -> OffsetModel | None:
        """The per-prompt offset model for a drawn or an exact box (``None``: the fixed offset)."""
        return self.offset_model_exact if exact_box else self.offset_model

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CropSpec:
        d = dict(d or {})
        models = d.get("offset_model") or {}
        adaptive = {k: None if models.get(k) is None else OffsetModel.from_dict(models[k]) for k in ("drawn", "exact")}
        return cls(size=int(d.get("crop_size", d.get("size", 96))), margin=float(d.get("margin", 0.15)),
                   margin_max=float(d.get("margin_max", 0.05)), margin_px=float(d.get("margin_px", 4.0)),
                   logit_offset=float(d.get("logit_offset", 0.0)),
                   logit_offset_exact=None if d.get("logit_offset_exact") is None else float(d["logit_offset_exact"]),
                   exact_channel=bool(d.get("exact_channel", False)), offset_model=adaptive["drawn"],
                   offset_model_exact=adaptive["exact"])

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``prompt`` section (what :meth:`from_dict` reads back)."""
        out = {"crop_size": self.size, "margin": self.margin, "margin_max": self.margin_max,
               "margin_px": self.margin_px, "logit_offset": self.logit_offset,
               "logit_offset_exact": self.logit_offset_exact, "exact_channel": self.exact_channel}
        if self.offset_model is not None or self.offset_model_exact is not None:
            out["offset_model"] = {k: None if m is None else m.to_dict()
                                   for k, m in (("drawn", self.offset_model), ("exact", self.offset_model_exact))}
        return out


def crop_region(shape: tuple[int, int], spec: CropSpec, box: Any = None, points: Any = None,
                prior: torch.Tensor | None = None) -> tuple[int, int, int, int]:
    """The image region a prompt is read from: ``(r0, c0, r1, c1)``, max exclusive, inside the image.

    The prompt's extent is the box (or, without one, the prior mask's bounding box), grown to
    include every click; it gets a margin on each side (see :class:`CropSpec`). Clicks alone
    read the whole image.

    Args:
        shape: image ``(H, W)``.
        spec: crop settings.
        box: ``(i0, j0, i1, j1)`` (continuous pixel coordinates, max exclusive) or ``None``.
        points: ``(P, 2)`` ``(i, j)`` pixel indices or ``None``.
        prior: ``(H, W)`` logits or ``None``.
    """
    h, w = shape
    lo = hi = None
    if box is not None:
        b = [float(v) for v in box]
        lo, hi = np.array(b[:2]), np.array(b[2:])
    elif prior is not None and bool((prior > 0).any()):
        rows = torch.nonzero((prior > 0).any(1)).flatten()
        cols = torch.nonzero((prior > 0).any(0)).flatten()
        lo = np.array([float(rows[0]), float(cols[0])])
        hi = np.array([float(rows[-1]) + 1, float(cols[-1]) + 1])
    if lo is None:
        return 0, 0, h, w
    if points is not None and len(points):
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0) + 1)
    ext = hi - lo
    pad = spec.margin * ext + spec.margin_max * ext.max() + spec.margin_px
    r0, c0 = (max(0, math.floor(v)) for v in lo - pad)
    r1, c1 = min(h, math.ceil(hi[0] + pad[0])), min(w, math.ceil(hi[1] + pad[1]))
    return int(r0), int(c0), int(max(r1, r0 + 1)), int(max(c1, c0 + 1))


def extract(plane: torch.Tensor, region: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., S, S)``: the region resampled (bilinear, anti-aliased when shrinking)."""
    r0, c0, r1, c1 = region
    sub = plane[..., r0:r1, c0:c1]
    lead = sub.shape[:-2]
    x = sub.reshape(1, -1, *sub.shape[-2:]).float()
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=bool(sub.shape[-1] > size or sub.shape[-2] > size))
    return out.reshape(*lead, size, size)


def _normalise(crop: torch.Tensor) -> torch.Tensor:
    """Crop intensities to about [0, 1] by its own 1st/99th percentiles (clamped to [-0.5, 1.5])."""
    flat = crop.flatten()
    if flat.numel() > 4096:  # percentiles of a strided subsample: same values within noise, 2x cheaper
        flat = flat[:: flat.numel() // 4096]
    # torch.quantile's definition (linear between order statistics) without its re-sort per q: one np.partition on CPU
    n = flat.numel()
    pos = torch.tensor([0.01, 0.99], dtype=torch.float64) * (n - 1)
    lo_i = pos.floor().long()
    hi_i = torch.clamp(lo_i + 1, max=n - 1)
    w = (pos - lo_i).to(flat.dtype)
    if flat.device.type == "cpu":
        v = torch.from_numpy(np.partition(flat.detach().numpy(), sorted({*lo_i.tolist(), *hi_i.tolist()})))
    else:
        v = flat.sort().values
    q = v[lo_i] * (1 - w) + v[hi_i] * w
    return ((crop - q[0]) / (q[1] - q[0]).clamp_min(1e-6)).clamp(-0.5, 1.5)


def prompt_inputs(image: torch.Tensor, region: tuple[int, int, int, int], spec: CropSpec, box: Any = None,
                  points: Any = None, labels: Any = None, prior: torch.Tensor | None = None,
                  exact: bool = False) -> torch.Tensor:
    """Render one prompt as the network input.

    Args:
        image: ``(H, W)`` float32 grey image.
        region: from :func:`crop_region`.
        spec: crop settings.
        box: ``(i0, j0, i1, j1)`` or ``None``.
        points: ``(P, 2)`` pixel indices ``(i, j)`` or ``None``.
        labels: ``(P,)`` 1 foreground / 0 background.
        prior: ``(H, W)`` logits or ``None``.
        exact: ``box`` is the object's exact bounding box (channel 5 of ``spec.exact_channel``
            networks; ignored by others).

    Returns:
        ``(5, S, S)`` float32, ``(6, S, S)`` with ``spec.exact_channel`` (see the module docstring).
    """
    s = spec.size
    r0, c0, r1, c1 = region
    sy, sx = (r1 - r0) / s, (c1 - c0) / s
    out = torch.zeros(spec.in_channels, s, s)
    if spec.exact_channel and exact and box is not None:
        out[IN_CHANNELS] = 1.0
    out[0] = _normalise(extract(image, region, s))
    # image coordinate of each crop pixel centre
    yi = r0 + (torch.arange(s, dtype=torch.float32) + 0.5) * sy
    xj = c0 + (torch.arange(s, dtype=torch.float32) + 0.5) * sx
    if box is not None:
        i0, j0, i1, j1 = (float(v) for v in box)
        out[1] = (((yi >= i0) & (yi < i1)).float()[:, None] * ((xj >= j0) & (xj < j1)).float()[None, :])
    if points is not None and len(points):
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2)
        labs = torch.ones(len(pts)) if labels is None else torch.as_tensor(np.asarray(labels)).reshape(-1).float()
        cy = (pts[:, 0] + 0.5 - r0) / sy - 0.5  # crop pixel coordinates
        cx = (pts[:, 1] + 0.5 - c0) / sx - 0.5
        grid = torch.arange(s, dtype=torch.float32)
        gy = torch.exp(-((grid[None, :] - cy[:, None]) ** 2) / (2 * _POINT_SIGMA**2))  # (P, S)
        gx = torch.exp(-((grid[None, :] - cx[:, None]) ** 2) / (2 * _POINT_SIGMA**2))
        spots = gy[:, :, None] * gx[:, None, :]  # (P, S, S)
        for ch, lab in ((2, 1.0), (3, 0.0)):
            sel = labs == lab
            if bool(sel.any()):
                out[ch] = spots[sel].amax(0)
    if prior is not None:
        out[4] = torch.sigmoid(extract(prior.float(), region, s))
    return out


def clip_to_box(logits: torch.Tensor, box: Sequence[float], fill: float = _OUTSIDE_LOGIT) -> torch.Tensor:
    """Logits with every pixel whose centre lies outside ``box`` set to ``fill`` (a new tensor).

    Args:
        logits: ``(..., *S)`` with ``k`` trailing spatial axes.
        box: ``(lo_1, ..., lo_k, hi_1, ..., hi_k)``, max exclusive (pixel ``i`` is inside when
            ``lo <= i + 0.5 < hi``, as the box channel of :func:`prompt_inputs` draws it).
    """
    k = len(box) // 2
    keep = tuple(slice(max(math.ceil(float(lo) - 0.5), 0), max(math.ceil(float(hi) - 0.5), 0))
                 for lo, hi in zip(box[:k], box[k:]))
    out = torch.full_like(logits, fill)
    out[(..., *keep)] = logits[(..., *keep)]
    return out


def paste_logits(logits: torch.Tensor, region: tuple[int, int, int, int], shape: tuple[int, int]) -> torch.Tensor:
    """``(S, S)`` crop logits -> ``(H, W)`` image logits (``-20`` outside the region)."""
    r0, c0, r1, c1 = region
    full = torch.full(shape, _OUTSIDE_LOGIT, dtype=torch.float32)
    full[r0:r1, c0:c1] = F.interpolate(logits[None, None].float(), size=(r1 - r0, c1 - c0), mode="bilinear",
                                       align_corners=False)[0, 0]
    return full


def optimised_cpu_network(net: nn.Module, in_channels: int, size: int, *, channels_last: bool = True,
                          onednn_fusion: bool = True) -> Any:
    """A frozen TorchScript trace of ``net`` for CPU inference (``net`` itself is left untouched).

    The trace folds batch norm into the convolutions and drops the Python overhead of MONAI's ~110
    modules (outputs equal within 6e-6; figures: ``benchmarks/bench_prompt.py --compare-trace``,
    ``benchmarks/RESULTS.md``):

    * ``channels_last``: the trace runs on a copy of the network in channels-last memory layout, fed
      channels-last inputs, so oneDNN's convolutions need no layout reorders between layers (about
      1.1x; logits within 2e-5 of the plain trace);
    * ``onednn_fusion``: each call runs with TorchScript's oneDNN Graph fuser switched on (convolution,
      PReLU and residual additions fused, identical outputs). The switch is
      process-wide in torch, so it is turned on for the call only and restored after it.

    Any failure keeps the eager network.

    Args:
        net: network mapping ``(N, in_channels, size, size)`` to ``(N, 1, size, size)`` logits.
        in_channels: channels of the network input.
        size: side of the square network input.

    Returns:
        a callable with ``net``'s signature.
    """
    import copy

    layout = torch.channels_last if channels_last else torch.contiguous_format
    fusion = onednn_fusion and all(hasattr(torch.jit, f) for f in ("enable_onednn_fusion", "onednn_fusion_enabled"))
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: still the fastest CPU path here
            example = torch.zeros(1, in_channels, size, size).contiguous(memory_format=layout)
            model = copy.deepcopy(net).eval().to(memory_format=layout) if channels_last else net.eval()
            traced = torch.jit.freeze(torch.jit.trace(model, example))
    except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason to fail
        logger.debug("prompt model stays eager (trace failed: %s)", exc)
        return net

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=layout)
        if not fusion:
            return traced(x).contiguous()
        before = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            return traced(x).contiguous()
        finally:
            torch.jit.enable_onednn_fusion(before)

    return run


class LitePromptBackend:
    """:class:`~medcnn.prompt.segmenter.PromptBackend` for the light crop model.

    Args:
        net: network mapping ``(N, C, S, S)`` to ``(N, 1, S, S)`` logits (``C = spec.in_channels``).
        spec: crop settings the network was trained with.
        device: where the network runs.
        optimize: on a CPU, run a frozen channels-last TorchScript trace of ``net`` with oneDNN fusion
            (:func:`optimised_cpu_network`).
        tta: average the logits over mirror images of each crop (the checkpoint's
            ``inference.tta``), all flips in one batched network call.
        tta_axes: crop axes mirrored by ``tta`` (``0`` rows, ``1`` columns; ``None``: both, four
            copies). The bundled model mirrors columns only: two copies cost little more than one, four twice as much.
    """

    name = "medcnn-prompt"
    supports_exact_box = True
    supports_per_prompt_offsets = True

    def __init__(self, net: nn.Module, spec: CropSpec, device: str | torch.device = "cpu", *, optimize: bool = True,
                 tta: bool = False, tta_axes: Sequence[int] | None = None) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.spec = spec
        self.image: torch.Tensor | None = None
        self.tta, self.tta_axes = bool(tta), (None if tta_axes is None else tuple(tta_axes))
        self._run: Any = self.net
        if optimize and self.device.type == "cpu":
            self._run = optimised_cpu_network(self.net, spec.in_channels, spec.size)
        if self.tta:
            self._run = mirror_predictor(self._run, self.tta_axes, batched=True)

    def set_image(self, image: torch.Tensor) -> None:
        """Keep the grey image ``(H, W)`` (RGB is averaged); ``image`` is ``(C, H, W)``."""
        self.image = (image.mean(0) if image.shape[0] == 3 else image[0]).float().contiguous()

    @torch.inference_mode()
    def predict_logits(self, *, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                       exact_box: bool = False, per_prompt_offsets: bool = True) -> torch.Tensor:
        """``(N, H, W)`` logits for ``N`` boxes (``N = 1`` without boxes); see ``PromptBackend``.

        ``exact_box``: the boxes are exact bounding boxes (the exact-box channel and offset of the
        checkpoint, where it has them; the caller keeps the mask inside the box). The offset added to
        the logits is the checkpoint's per-prompt offset model for prompts that are boxes alone
        (:mod:`medcnn.prompt.offsets`, where it has one, unless ``per_prompt_offsets`` is off), else its
        fixed offset.
        """
        regions, x, raw = self.crop_logits(boxes=boxes, points=points, labels=labels, mask_input=mask_input,
                                           exact_box=exact_box)
        fixed = self.spec.offset(exact_box)
        offsets = torch.full((len(raw),), fixed)
        model = self.spec.adaptive(exact_box)
        if per_prompt_offsets and model is not None and boxes is not None and points is None and mask_input is None:
            offsets = model.predict(self.offset_features(x, raw, boxes, exact_box), fixed)
        out = raw + offsets[:, None, None]
        return torch.stack([paste_logits(o, r, tuple(self.image.shape)) for o, r in zip(out, regions)])

    def offset_features(self, inputs: torch.Tensor, logits: torch.Tensor, boxes: torch.Tensor,
                        exact_box: bool = False) -> torch.Tensor:
        """:func:`~medcnn.prompt.offsets.offset_features` of box prompts from :meth:`crop_logits`' inputs and logits.

        Args:
            inputs: ``(N, C, S, S)`` network inputs (channel 1 is the box).
            logits: ``(N, S, S)`` raw crop logits.
            boxes: ``(N, 4)`` the boxes ``(i0, j0, i1, j1)`` in image pixels.
            exact_box: the boxes are exact (their fixed offset is the features' base).

        Returns:
            ``(N, F)`` float64.
        """
        return offset_features(logits, inputs[:, 1], boxes[:, 2:] - boxes[:, :2], self.spec.offset(exact_box))

    @torch.inference_mode()
    def crop_logits(self, *, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                    exact_box: bool = False) -> tuple[list[tuple[int, int, int, int]], torch.Tensor, torch.Tensor]:
        """The network's raw logits on each prompt's crop (no offset; mirror-TTA averaged where set).

        Returns:
            ``(regions, inputs, logits)``: each prompt's image region (:func:`crop_region`), the network
            inputs ``(N, C, S, S)`` and the logits ``(N, S, S)`` float32 on the CPU.
        """
        if self.image is None:
            raise RuntimeError("call set_image(image) before predict_logits()")
        shape = tuple(self.image.shape)
        pts = None if points is None else points.numpy()
        labs = None if labels is None else labels.numpy()
        regions, inputs = [], []
        for b in (boxes.tolist() if boxes is not None else [None]):
            region = crop_region(shape, self.spec, b, pts, mask_input)
            regions.append(region)
            inputs.append(prompt_inputs(self.image, region, self.spec, b, pts, labs, mask_input, exact=exact_box))
        x = torch.stack(inputs).to(self.device)
        return regions, x, self._run(x).float().cpu()[:, 0]
