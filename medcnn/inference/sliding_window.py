"""Sliding-window inference: a drop-in for :func:`monai.inferers.sliding_window_inference`.

The window grid follows MONAI's rule exactly (same padding, same scan interval, same window
order), so ``precision="fp32"`` reproduces MONAI's output to float rounding (tests hold it to
1e-4). What differs is the bookkeeping around the network:

* the window batch is gathered by slicing into one reused buffer (no ``torch.cat`` of copies);
* the output is one preallocated accumulator (fp32 or wider) and the weight normaliser is built
  once per *window position*, not per window and image;
* when the windows tile the image without overlap nothing is weighted or divided at all (the
  predictions are copied in place); with ``mode="constant"`` the voxel counts are the outer
  product of per-axis counts, so no count map is accumulated window by window, and the
  predictions are never multiplied by a map of ones;
* the predictor runs under :func:`torch.inference_mode` and, on request, under
  :func:`torch.autocast` (``precision="bf16"``/``"fp16"``/``"auto"``), while outputs are always
  accumulated in fp32;
* the network input may be handed over in ``channels_last`` memory format.

The code is split so that each part can be optimised on its own: :class:`_WindowPlan` (where the
windows are), :func:`_gather_windows` (how a batch of windows is built) and :class:`_Blender`
(how predictions are accumulated and normalised).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map
from tqdm.auto import tqdm

from medcnn.device import cpu_has_native_bf16
from medcnn.inference.fast_conv import CpuConvMode, onednn_available

__all__ = [
    "Precision",
    "cpu_has_native_bf16",
    "resolve_precision",
    "sliding_window_inference",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16", "auto"]

_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_BLEND_MODES = ("constant", "gaussian")
_PAD_MODES = ("constant", "reflect", "replicate", "circular")
# MONAI's sliding_window_inference options that this implementation does not provide; passing
# them must not silently end up as keyword arguments of the predictor.
_UNSUPPORTED_MONAI_KWARGS = ("process_fn", "condition")
# MONAI memory options that do not change the result; accepted and ignored.
_IGNORED_MONAI_KWARGS = ("buffer_steps", "buffer_dim")


# --------------------------------------------------------------------------------------------
# precision and memory format
# --------------------------------------------------------------------------------------------
def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype to use for ``precision`` on ``device`` (``None``: plain fp32).

    ``"auto"`` picks bf16 on CUDA devices with compute capability >= 8.0 (Ampere and later),
    fp16 on older CUDA devices, bf16 on CPUs with native bf16 (see :func:`cpu_has_native_bf16`)
    and fp32 everywhere else.

    Args:
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
        device: the device the predictor runs on.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.

    Raises:
        ValueError: for an unknown ``precision``.
    """
    if precision in _PRECISIONS:
        return _PRECISIONS[precision]
    if precision != "auto":
        raise ValueError(f"precision must be one of fp32, bf16, fp16, auto; got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for ``None`` (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _channels_last_format(ndim: int) -> torch.memory_format | None:
    """The channels-last memory format for a tensor of ``ndim`` dims (``None``: none exists)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def _module_is_channels_last(predictor: Callable[..., Any], ndim: int) -> bool:
    """Whether ``predictor`` is a module whose ``ndim``-dim weights were put in channels-last."""
    fmt = _channels_last_format(ndim)
    if fmt is None or not isinstance(predictor, torch.nn.Module):
        return False
    for param in predictor.parameters():
        # weights with one input channel or 1x1 kernels are both formats at once: skip them
        if param.ndim == ndim and not param.is_contiguous() and param.is_contiguous(memory_format=fmt):
            return True
    return False


def _resolve_memory_format(
    channels_last: bool | str, predictor: Callable[..., Any], ndim: int
) -> torch.memory_format:
    """Memory format of the window batch handed to the predictor.

    ``"auto"`` follows the network: channels-last when ``predictor`` is an ``nn.Module`` whose
    convolution weights are already channels-last (``model.to(memory_format=...)``), since then
    a contiguous input would be converted at every layer; contiguous otherwise. Converting only
    the input makes the first layer pay a layout reorder without sparing the others (slower on CPU),
    so it is never done behind the user's back.
    """
    fmt = _channels_last_format(ndim)
    if channels_last == "auto":
        use = _module_is_channels_last(predictor, ndim)
    elif isinstance(channels_last, bool):
        use = channels_last
    else:
        raise ValueError(f"channels_last must be True, False or 'auto'; got {channels_last!r}")
    if use and fmt is None:
        logger.debug("channels_last ignored for a %d-dim input", ndim)
    return fmt if (use and fmt is not None) else torch.contiguous_format


# --------------------------------------------------------------------------------------------
# window plan
# --------------------------------------------------------------------------------------------
def _resolve_roi(roi_size: Sequence[int | None] | int, image_size: Sequence[int]) -> tuple[int, ...]:
    """ROI per spatial axis; ``None`` or non-positive entries mean the full image size."""
    nd = len(image_size)
    if not isinstance(roi_size, Sequence):
        roi = [roi_size] * nd
    else:
        roi = list(roi_size)
        if len(roi) != nd:
            raise ValueError(
                f"roi_size {tuple(roi_size)} has {len(roi)} axes but the inputs have {nd} spatial "
                f"axes (inputs must be (B, C, *spatial); channel-last data needs EnsureChannelFirst)"
            )
    out = []
    for r, s in zip(roi, image_size):
        if r is None or int(r) <= 0:
            out.append(int(s))
        else:
            out.append(int(r))
    return tuple(out)


def _axis_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """Window start offsets along one axis of length ``size >= roi`` (MONAI's rule).

    The scan interval is ``int(roi * (1 - overlap))`` (at least 1), or ``roi`` when the axis is
    exactly one window long; the last window is shifted back so that it ends on the border.
    """
    if roi == size:
        return (0,)
    interval = max(int(roi * (1 - overlap)), 1)
    n = -(-(size - roi) // interval) + 1  # windows needed to reach the far border
    return tuple(min(i * interval, size - roi) for i in range(n))


@dataclass(frozen=True)
class _WindowPlan:
    """Where the windows are.

    Attributes:
        image_size: spatial size of the inputs.
        roi_size: spatial size of one window.
        pad: ``(before, after)`` padding per spatial axis (non-zero where the image is smaller
            than the window).
        axis_starts: window start offsets per spatial axis, in padded coordinates.
    """

    image_size: tuple[int, ...]
    roi_size: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    axis_starts: tuple[tuple[int, ...], ...]

    @classmethod
    def build(
        cls, image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]
    ) -> _WindowPlan:
        pad = []
        for s, r in zip(image_size, roi_size):
            diff = max(r - s, 0)
            pad.append((diff // 2, diff - diff // 2))
        padded = [s + b + a for s, (b, a) in zip(image_size, pad)]
        starts = tuple(_axis_starts(p, r, o) for p, r, o in zip(padded, roi_size, overlap))
        return cls(tuple(image_size), tuple(roi_size), tuple(pad), starts)

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(s + b + a for s, (b, a) in zip(self.image_size, self.pad))

    @property
    def needs_padding(self) -> bool:
        return any(b or a for b, a in self.pad)

    @property
    def num_windows(self) -> int:
        return math.prod(len(s) for s in self.axis_starts)

    def window_starts(self) -> list[tuple[int, ...]]:
        """Start corner of every window, in C order (last axis fastest), as MONAI orders them."""
        return list(itertools.product(*self.axis_starts))

    def window_slices(self) -> list[tuple[slice, ...]]:
        """Spatial slices of every window (padded coordinates)."""
        return [
            tuple(slice(s, s + r) for s, r in zip(corner, self.roi_size)) for corner in self.window_starts()
        ]


# --------------------------------------------------------------------------------------------
# blending
# --------------------------------------------------------------------------------------------
def _axis_intervals(starts: Sequence[int], roi: int, zoom: float) -> list[tuple[int, int]]:
    """Window extents along one axis in output coordinates (``zoom`` = output/input size)."""
    if zoom == 1.0:
        return [(s, s + roi) for s in starts]
    return [(int(s * zoom), int((s + roi) * zoom)) for s in starts]


class _Blender:
    """Accumulates the predictions of one predictor output into one preallocated buffer.

    Three strategies, chosen once from the plan:

    * ``"tile"``: windows partition the output exactly (no overlap): predictions are copied in,
      nothing is weighted or divided (``(p * w) / w == p``);
    * ``"count"``: constant weights: predictions are summed, then divided once by the voxel
      counts, which are the outer product of per-axis counts (never accumulated per window);
    * ``"weighted"``: an importance map ``w``: ``sum(p * w)`` is accumulated and divided once by
      ``sum(w)``, accumulated once per window position.

    Args:
        plan: the window plan.
        batch_size: ``B`` of the inputs.
        channels: ``C_out`` of this output.
        window_shape: spatial shape of this output for one window (may differ from the roi).
        weight: ``(*roi)`` importance map on the predictor's device, or ``None`` for constant.
        device: device of the stitched output.
        dtype: accumulation dtype (fp32 or wider).
    """

    def __init__(
        self,
        plan: _WindowPlan,
        batch_size: int,
        channels: int,
        window_shape: Sequence[int],
        weight: torch.Tensor | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.plan = plan
        self.device = device
        roi = plan.roi_size
        self.zoom = tuple(w / r for w, r in zip(window_shape, roi))
        self.out_size = tuple(int(p * z) for p, z in zip(plan.padded_size, self.zoom))
        intervals = [_axis_intervals(st, r, z) for st, r, z in zip(plan.axis_starts, roi, self.zoom)]
        for axis, (ivs, w) in enumerate(zip(intervals, window_shape)):
            if any(b - a != w for a, b in ivs):
                raise ValueError(
                    f"predictor output window {tuple(window_shape)} is not an integer zoom of roi "
                    f"{roi} on axis {axis}; choose roi_size/overlap so that the scaled windows are whole"
                )
        self.intervals = intervals
        tiles = all(
            ivs[0][0] == 0 and ivs[-1][1] == size and all(a2 == b1 for (_, b1), (a2, _) in zip(ivs, ivs[1:]))
            for ivs, size in zip(intervals, self.out_size)
        )
        if tiles:
            self.strategy = "tile"
        elif weight is None:
            self.strategy = "count"
        else:
            self.strategy = "weighted"

        self.weight: torch.Tensor | None = None
        if self.strategy == "weighted" and weight is not None:
            w = weight.to(torch.float32)
            if tuple(w.shape) != tuple(window_shape):
                w = F.interpolate(w[None, None], size=tuple(window_shape), mode="nearest-exact")[0, 0]
            self.weight = w  # (*window) on the predictor's device

        alloc = torch.empty if self.strategy == "tile" else torch.zeros
        self.out = alloc((batch_size, channels, *self.out_size), dtype=dtype, device=device)
        self._window_slices = [
            tuple(slice(a, b) for a, b in corner) for corner in itertools.product(*intervals)
        ]

    def add(self, pred: torch.Tensor, windows: Sequence[tuple[int, int]]) -> None:
        """Adds a batch of window predictions.

        Args:
            pred: ``(n, C_out, *window)`` predictions (any float dtype, predictor's device).
            windows: ``(batch index, window index)`` of each of the ``n`` predictions.
        """
        out = self.out
        if self.strategy == "tile":
            for p, (b, k) in zip(pred, windows):
                out[(b, slice(None), *self._window_slices[k])].copy_(p)
            return
        if self.strategy == "weighted" and pred.device == out.device:
            w = self.weight
            for p, (b, k) in zip(pred, windows):
                out[(b, slice(None), *self._window_slices[k])].addcmul_(p, w)
            return
        if self.strategy == "weighted":
            pred = pred.to(torch.float32) * self.weight
        if pred.device != out.device:
            pred = pred.to(out.device)
        for p, (b, k) in zip(pred, windows):
            out[(b, slice(None), *self._window_slices[k])].add_(p)

    def _axis_factors(self) -> list[torch.Tensor] | None:
        """Per-axis factors whose outer product is the normaliser, or ``None`` when the weight
        map is not separable (then :meth:`_divide` sums the windows' weights slab by slab).

        Windows sit on a Cartesian grid, so for a separable weight ``w(x) = prod_a w_a(x_a)``
        (constant weights, or a user's separable map) ``sum_windows w(x - s) = prod_a sum_{s_a} w_a(x_a - s_a)``:
        no full-size map is accumulated window by window.
        """
        nd = len(self.out_size)
        if self.strategy == "count":
            lines = [torch.ones(b - a) for (a, b) in (ivs[0] for ivs in self.intervals)]
            scale = 1.0
        else:
            w = self.weight.detach().to("cpu", torch.float64)
            peak = float(w.max())
            if peak <= 0:
                return None
            lines = [w.amax(dim=tuple(d for d in range(nd) if d != a)) for a in range(nd)]
            approx = lines[0]
            for line in lines[1:]:
                approx = approx[..., None] * line
            approx = approx / peak ** (nd - 1)
            if not torch.allclose(approx, w, rtol=1e-5, atol=1e-7 * peak):
                return None
            scale = peak ** (nd - 1)
        factors = []
        for axis, (ivs, size, line) in enumerate(zip(self.intervals, self.out_size, lines)):
            acc = torch.zeros(size, dtype=torch.float64)
            for a, b in ivs:
                acc[a:b] += line
            if axis == 0:
                acc = acc / scale
            factors.append(acc)
        return factors

    def _divide(self) -> None:
        """Divides the accumulated sums by the summed window weights, in place, slab by slab
        along the first spatial axis: no full-size normaliser is ever allocated."""
        if self.strategy == "tile":
            return
        out = self.out
        nd = len(self.out_size)
        factors = self._axis_factors()
        if factors is not None:
            inner = torch.ones((), dtype=torch.float64)
            for f in factors[1:]:
                inner = inner[..., None] * f
            inner = inner.to(self.device, out.dtype)
            first = factors[0].to(out.dtype)
            if bool((first == 1).all()) and bool((inner == 1).all()):
                return
            step = max(1, (1 << 22) // max(1, inner.numel()))
            for a in range(0, self.out_size[0], step):
                b = min(a + step, self.out_size[0])
                out[:, :, a:b].div_(first[a:b].to(self.device).view(-1, *([1] * (nd - 1))) * inner)
            return
        # not separable (e.g. MONAI's Gaussian, clamped at 1e-3 near the window edges): sum the
        # weights of the windows that cross each slab
        w = self.weight.to(self.device, out.dtype)
        inner_numel = math.prod(self.out_size[1:])
        step = max(1, (1 << 22) // max(1, inner_numel))
        for a in range(0, self.out_size[0], step):
            b = min(a + step, self.out_size[0])
            total = torch.zeros((b - a, *self.out_size[1:]), dtype=out.dtype, device=self.device)
            for sl in self._window_slices:
                lo, hi = max(a, sl[0].start), min(b, sl[0].stop)
                if lo < hi:
                    total[(slice(lo - a, hi - a), *sl[1:])] += w[lo - sl[0].start : hi - sl[0].start]
            out[:, :, a:b].div_(total)

    def finalize(self) -> torch.Tensor:
        """The blended output ``(B, C_out, *out_spatial)``, cropped back to the input grid."""
        self._divide()
        if not self.plan.needs_padding:
            return self.out
        crop = []
        for (before, _), size, z in zip(self.plan.pad, self.plan.image_size, self.zoom):
            crop.append(slice(int(round(before * z)), int(round((before + size) * z))))
        return self.out[(slice(None), slice(None), *crop)]


# --------------------------------------------------------------------------------------------
# predictor output structure
# --------------------------------------------------------------------------------------------
def _flatten_output(out: Any) -> tuple[list[Any] | None, bool, tuple[torch.Tensor, ...]]:
    """``(dict keys or None, was_a_plain_tensor, tensors)`` of a predictor output."""
    if isinstance(out, torch.Tensor):
        return None, True, (out,)
    if isinstance(out, Mapping):
        keys = sorted(out.keys())
        return keys, False, tuple(out[k] for k in keys)
    if isinstance(out, (tuple, list)):
        return None, False, tuple(out)
    raise TypeError(f"predictor must return a tensor, a tuple or a dict of tensors; got {type(out).__name__}")


def _pack_output(keys: list[Any] | None, single: bool, tensors: list[torch.Tensor]) -> Any:
    if keys is not None:
        return dict(zip(keys, tensors))
    if single:
        return tensors[0]
    return tuple(tensors)


# --------------------------------------------------------------------------------------------
# window gathering
# --------------------------------------------------------------------------------------------
def _gather_windows(
    source: torch.Tensor,
    windows: Sequence[tuple[int, int]],
    slices: Sequence[tuple[slice, ...]],
    buffer: torch.Tensor,
    staging: torch.Tensor | None,
) -> torch.Tensor:
    """Copies ``len(windows)`` windows of ``source`` into the front of ``buffer``.

    Args:
        source: ``(B, C, *padded)`` inputs.
        windows: ``(batch index, window index)`` pairs.
        slices: spatial slices of every window index.
        buffer: ``(sw_batch_size, C, *roi)`` reused window batch on the predictor's device.
        staging: same-shaped buffer on ``source``'s device when the devices differ, so that the
            windows cross to the predictor's device in one transfer.

    Returns:
        ``buffer[:n]``, a view.
    """
    n = len(windows)
    target = staging if staging is not None else buffer
    for i, (b, k) in enumerate(windows):
        target[i].copy_(source[(b, slice(None), *slices[k])])
    if staging is not None:
        buffer[:n].copy_(staging[:n])
    return buffer[:n]


def _make_blenders(
    preds: Sequence[Any],
    n: int,
    plan: _WindowPlan,
    batch_size: int,
    weight: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> list[_Blender]:
    """One :class:`_Blender` per predictor output, sized from the first batch of predictions."""
    nd = len(plan.roi_size)
    blenders = []
    for pred in preds:
        if not isinstance(pred, torch.Tensor) or pred.ndim != nd + 2 or pred.shape[0] != n:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(f"predictor output must be (n={n}, C_out, *{nd} spatial) tensors; got {got}")
        blenders.append(_Blender(plan, batch_size, pred.shape[1], pred.shape[2:], weight, device, dtype))
    if not blenders:
        raise ValueError("predictor returned no tensors")
    logger.debug("blending strategies: %s", [bl.strategy for bl in blenders])
    return blenders


def _predict(
    predictor: Callable[..., Any],
    batch: torch.Tensor,
    coords: list[list[slice]] | None,
    kwargs: dict[str, Any],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    conv_mode: CpuConvMode | None = None,
) -> Any:
    """One predictor call on a window batch, under inference mode, (optionally) autocast and
    (optionally) the oneDNN convolution routing of :class:`CpuConvMode`."""
    mode = conv_mode if conv_mode is not None else contextlib.nullcontext()
    with torch.inference_mode(), _autocast(device, autocast_dtype), mode:
        if coords is not None:
            return predictor(batch, coords, **kwargs)
        return predictor(batch, **kwargs)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int | None] | int,
    sw_batch_size: int,
    predictor: Callable[..., Any],
    overlap: Sequence[float] | float = 0.25,
    mode: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    roi_weight_map: torch.Tensor | None = None,
    *,
    precision: Precision = "fp32",
    channels_last: bool | Literal["auto"] = "auto",
    fast_cpu_conv: bool = True,
    with_coord: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
    """Runs ``predictor`` over overlapping windows of ``inputs`` and blends the results.

    Same positional arguments and results as :func:`monai.inferers.sliding_window_inference`
    (the window grid, padding and blending rules are MONAI's), with fp32 accumulation, mixed
    precision and fewer copies. With ``precision="fp32"`` the output equals MONAI's to float
    rounding.

    Args:
        inputs: ``(B, C, *spatial)`` image batch, 2D ``(B, C, H, W)`` or 3D ``(B, C, D, H, W)``;
            a ``MetaTensor`` gives a ``MetaTensor`` back with the same metadata.
        roi_size: window size per spatial axis, or one int for all; ``None``/non-positive entries
            mean the full image size along that axis.
        sw_batch_size: number of windows per predictor call (windows of different images of
            the batch may share a call).
        predictor: callable ``(n, C, *roi) -> (n, C_out, *roi_out)`` (or a tuple/dict of such
            tensors; each output may be an integer zoom of the roi). Extra ``kwargs`` are passed
            on. It is called under ``torch.inference_mode()``.
        overlap: fraction of overlap between neighbouring windows, per axis or one for all,
            in ``[0, 1)``.
        mode: ``"constant"`` (equal weights) or ``"gaussian"`` (less weight near window edges).
        sigma_scale: Gaussian sigma as a fraction of the window size (``mode="gaussian"``).
        padding_mode: ``"constant"``, ``"reflect"``, ``"replicate"`` or ``"circular"``: how the
            image is padded along axes where it is smaller than the window (the output is
            cropped back).
        cval: fill value for ``padding_mode="constant"``.
        sw_device: device the predictor runs on (default: the inputs' device).
        device: device of the stitched output (default: the inputs' device).
        progress: show a ``tqdm`` progress bar over window batches.
        roi_weight_map: ``(*roi)`` non-negative importance map to use instead of ``mode``'s.
        precision: ``"fp32"`` (default, matches MONAI), ``"bf16"`` or ``"fp16"`` (predictor
            runs under ``torch.autocast`` on ``sw_device``), or ``"auto"`` (see
            :func:`resolve_precision`). Outputs are accumulated in fp32 in every case.
        channels_last: hand the predictor its window batch in ``channels_last``/
            ``channels_last_3d`` memory format: ``True``, ``False``, or ``"auto"`` (only when
            ``predictor`` is a module whose weights are channels-last already; converting the
            input alone measured slower on CPU).
        fast_cpu_conv: when the predictor runs on CPU in fp32, route its 3D convolutions to
            oneDNN and its small stride-2 transposed convolutions to a sub-pixel form
            (:class:`medcnn.inference.fast_conv.CpuConvMode`): same results to float rounding,
            2-3x faster for a batch-1 MONAI U-Net on CPU. ``False`` leaves PyTorch's choice.
        with_coord: call ``predictor(window_batch, coords, **kwargs)`` where ``coords`` lists,
            per window, ``[slice(b, b+1), slice(None), *spatial slices]`` in padded coordinates
            (MONAI's convention).
        **kwargs: passed on to ``predictor``. MONAI's ``buffer_steps``/``buffer_dim`` are accepted
            and ignored (they only trade speed for memory); ``process_fn`` and ``condition`` are
            not supported.

    Returns:
        ``(B, C_out, *spatial_out)`` on ``device`` (a tuple or dict of them when the predictor
        returns one), in the inputs' dtype when that is a floating dtype, else fp32.

    Raises:
        ValueError: for invalid arguments (shapes, overlap, mode, precision...).
        NotImplementedError: for MONAI's ``process_fn``/``condition`` options.
    """
    for name in _UNSUPPORTED_MONAI_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"medcnn.sliding_window_inference does not support MONAI's {name}=")
        kwargs.pop(name, None)
    for name in _IGNORED_MONAI_KWARGS:
        kwargs.pop(name, None)

    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor (B, C, *spatial); got {type(inputs).__name__}")
    if inputs.ndim < 3:
        raise ValueError(f"inputs must be (B, C, *spatial); got shape {tuple(inputs.shape)}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int; got {sw_batch_size!r}")
    if not callable(predictor):
        raise ValueError("predictor must be callable")
    mode = str(getattr(mode, "value", mode))
    if mode not in _BLEND_MODES:
        raise ValueError(f"mode must be one of {_BLEND_MODES}; got {mode!r}")
    padding_mode = str(getattr(padding_mode, "value", padding_mode))
    if padding_mode not in _PAD_MODES:
        raise ValueError(f"padding_mode must be one of {_PAD_MODES}; got {padding_mode!r}")

    batch_size, in_channels, *image_size = inputs.shape
    nd = len(image_size)
    overlaps = tuple(float(o) for o in (overlap if isinstance(overlap, Sequence) else [overlap] * nd))
    if len(overlaps) != nd:
        raise ValueError(f"overlap needs one value or {nd} values; got {overlap!r}")
    if any(not 0.0 <= o < 1.0 for o in overlaps):
        raise ValueError(f"overlap must be in [0, 1); got {overlap!r}")
    roi = _resolve_roi(roi_size, image_size)

    meta_source = inputs if isinstance(inputs, MetaTensor) else None
    x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
    in_device = x.device
    out_device = torch.device(device) if device is not None else in_device
    win_device = torch.device(sw_device) if sw_device is not None else in_device
    autocast_dtype = resolve_precision(precision, win_device)
    memory_format = _resolve_memory_format(channels_last, predictor, x.ndim)
    acc_dtype = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
    out_dtype = x.dtype if x.is_floating_point() else torch.float32

    plan = _WindowPlan.build(image_size, roi, overlaps)
    if plan.needs_padding:
        flat_pad = [p for b, a in reversed(plan.pad) for p in (b, a)]
        x = F.pad(x, flat_pad, mode=padding_mode, value=cval if padding_mode == "constant" else None)

    weight: torch.Tensor | None = None
    if roi_weight_map is not None:
        weight = torch.as_tensor(roi_weight_map, device=win_device, dtype=torch.float32)
        if weight.ndim > nd and all(d == 1 for d in weight.shape[:-nd]):
            weight = weight.reshape(weight.shape[-nd:])  # (1, 1, *roi) -> (*roi)
        if tuple(weight.shape) != roi:
            raise ValueError(f"roi_weight_map has shape {tuple(weight.shape)}, expected {roi}")
    elif mode == "gaussian":
        weight = compute_importance_map(
            roi, mode="gaussian", sigma_scale=sigma_scale, device=win_device, dtype=torch.float32
        )

    slices = plan.window_slices()
    num_win = len(slices)
    total = num_win * batch_size
    n_buf = min(sw_batch_size, total)
    buffer = torch.empty(
        (n_buf, in_channels, *roi), dtype=x.dtype, device=win_device, memory_format=memory_format
    )
    staging = None
    if win_device != x.device:
        staging = torch.empty((n_buf, in_channels, *roi), dtype=x.dtype, device=x.device)

    logger.debug(
        "sliding window: inputs %s, roi %s, overlap %s, %d windows/image (axes %s), pad %s, "
        "sw_batch %d, mode %s, precision %s -> %s, memory format %s, sw_device %s, device %s",
        tuple(inputs.shape), roi, overlaps, num_win, [len(s) for s in plan.axis_starts], plan.pad,
        sw_batch_size, mode, precision, autocast_dtype, memory_format, win_device, out_device,
    )

    conv_mode = None
    if fast_cpu_conv and win_device.type == "cpu" and autocast_dtype is None and onednn_available():
        conv_mode = CpuConvMode()

    blenders: list[_Blender] = []
    structure: tuple[list[Any] | None, bool] | None = None
    starts = range(0, total, sw_batch_size)
    with torch.no_grad():
        for start in tqdm(starts, disable=not progress, desc="sliding window", unit="batch"):
            windows = [divmod(i, num_win) for i in range(start, min(start + sw_batch_size, total))]
            batch = _gather_windows(x, windows, slices, buffer, staging)
            coords = [[slice(b, b + 1), slice(None), *slices[k]] for b, k in windows] if with_coord else None
            keys, single, preds = _flatten_output(
                _predict(predictor, batch, coords, kwargs, win_device, autocast_dtype, conv_mode)
            )
            if structure is None:
                structure = (keys, single)
                blenders = _make_blenders(preds, len(windows), plan, batch_size, weight, out_device, acc_dtype)
            elif len(preds) != len(blenders):
                raise ValueError("predictor returned a different number of outputs between calls")
            for i, blender in enumerate(blenders):
                blender.add(preds[i], windows)
            del preds  # free this batch's predictions before the next call allocates new ones

    results = []
    for blender in blenders:
        out = blender.finalize()
        if out.dtype != out_dtype:
            out = out.to(out_dtype)
        if meta_source is not None:
            out = MetaTensor(out).copy_meta_from(meta_source)
        results.append(out)
    keys, single = structure if structure is not None else (None, True)
    return _pack_output(keys, single, results)
