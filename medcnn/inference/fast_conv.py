"""Faster 3D convolutions on CPU for inference, without touching the network.

PyTorch picks a convolution backend per call with a heuristic tuned for 2D image batches: a 3D
convolution on a *single* volume (batch 1, the usual sliding-window case) with few channels
falls back to ``slow_conv3d`` (im2col + GEMM), several times slower than oneDNN (mkldnn) on
the layers of a MONAI U-Net; and a stride-2 transposed convolution with
few output channels (the top of every MONAI U-Net: 32 -> 3 classes) runs at a few GFLOP/s.

:class:`CpuConvMode` is a :class:`torch.overrides.TorchFunctionMode` that, while active,

* sends every float32 CPU ``conv3d`` to oneDNN (``aten::mkldnn_convolution``);
* computes a stride-2, kernel-3, padding-1, output-padding-1 ``conv_transpose3d`` with fewer
  than :data:`SUBPIXEL_MAX_OUT_CHANNELS` output channels as one ordinary 2x2x2 convolution with
  ``8 * C_out`` outputs (one per output parity, "sub-pixel" form) followed by a depth-to-space
  shuffle: the same sums, but with enough output channels for the vector units.

Everything else runs as it would without the mode. Results equal the default backends' to float
rounding (the tests hold them to 1e-4 on U-Nets). The mode holds per-weight caches, so create one
per inference call (it is cheap) rather than keeping one around.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["CpuConvMode", "SUBPIXEL_MAX_OUT_CHANNELS", "onednn_available", "subpixel_conv_transpose3d"]

logger = logging.getLogger(__name__)

#: transposed convolutions with fewer output channels than this use the sub-pixel form
SUBPIXEL_MAX_OUT_CHANNELS = 8

# output parity -> {tap offset on the (right-padded) input: index into the transposed kernel}
# for stride 2, kernel 3, padding 1: out[2m] = x[m] w[1]; out[2m+1] = x[m] w[2] + x[m+1] w[0]
_PARITY_TAPS = {0: {0: 1}, 1: {0: 2, 1: 0}}


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (mkldnn) enabled for CPU tensors."""
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _triple(value: Any) -> list[int] | None:
    """``value`` as three ints, or ``None`` when it is not an int / 3-sequence of ints (e.g. 'same')."""
    if isinstance(value, int):
        return [value] * 3
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return list(value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return [value[0]] * 3
    return None


def _subpixel_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kernel and bias of the sub-pixel form of a stride-2/kernel-3/padding-1 transposed conv.

    Args:
        weight: ``(C_in, C_out, 3, 3, 3)`` transposed-convolution weight.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(8 * C_out, C_in, 2, 2, 2)`` ordinary-convolution weight, output channel
        ``c * 8 + parity`` (parity = ``4 * pd + 2 * ph + pw``), and the bias repeated per parity.
    """
    c_in, c_out = weight.shape[:2]
    out = weight.new_zeros(c_out, 8, c_in, 2, 2, 2)
    for parity, (pd, ph, pw) in enumerate(itertools.product((0, 1), repeat=3)):
        for (jd, kd), (jh, kh), (jw, kw) in itertools.product(
            _PARITY_TAPS[pd].items(), _PARITY_TAPS[ph].items(), _PARITY_TAPS[pw].items()
        ):
            out[:, parity, :, jd, jh, jw] = weight[:, :, kd, kh, kw].t()
    return out.reshape(c_out * 8, c_in, 2, 2, 2), (None if bias is None else bias.repeat_interleave(8))


def subpixel_conv_transpose3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride=2, padding=1, output_padding=1)`` in sub-pixel form.

    Args:
        x: ``(N, C_in, D, H, W)`` float32.
        weight: ``(C_in, C_out, 3, 3, 3)``.
        bias: ``(C_out,)`` or ``None``.
        packed: the result of :func:`_subpixel_weight` for ``weight``/``bias`` (computed when ``None``).

    Returns:
        ``(N, C_out, 2D, 2H, 2W)``.
    """
    wc, bc = packed if packed is not None else _subpixel_weight(weight, bias)
    n, _, d, h, w = x.shape
    c_out = weight.shape[1]
    xp = F.pad(x, (0, 1, 0, 1, 0, 1))
    if onednn_available() and x.device.type == "cpu" and x.dtype == torch.float32:
        y = torch.ops.aten.mkldnn_convolution(xp, wc, bc, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
    else:
        y = F.conv3d(xp, wc, bc)
    # (N, C_out * 8, D, H, W) -> (N, C_out, D, 2, H, 2, W, 2) -> (N, C_out, 2D, 2H, 2W)
    y = y.view(n, c_out, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(n, c_out, 2 * d, 2 * h, 2 * w)


class CpuConvMode(TorchFunctionMode):
    """Routes float32 CPU 3D convolutions to faster kernels while active (see the module doc).

    Use around inference calls only (gradients are not supported through the rewritten
    transposed convolution's weight cache, so the mode steps aside when grad mode is on)::

        with torch.inference_mode(), CpuConvMode():
            out = net(x)   # x: (N, C, D, H, W) float32 on CPU
    """

    def __init__(self) -> None:
        super().__init__()
        # id(weight) -> (weight, its version, bias, packed); the weight is kept so that its id stays unique
        self._subpixel: dict[int, tuple[torch.Tensor, int, Any, tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.rerouted = 0

    def _applies(self, x: Any, w: Any) -> bool:
        return (
            isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
            and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and x.ndim == 5 and not torch.is_grad_enabled() and not x.is_mkldnn
        )

    def _conv3d(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = (None, None, None, 1, 0, 1, 1)
        a = dict(zip(names, defaults))
        a.update(zip(names, args))
        a.update(kwargs)
        x, w = a["input"], a["weight"]
        stride, pad, dil = _triple(a["stride"]), _triple(a["padding"]), _triple(a["dilation"])
        if not self._applies(x, w) or None in (stride, pad, dil) or not isinstance(a["groups"], int):
            return None
        self.rerouted += 1
        return torch.ops.aten.mkldnn_convolution(x, w, a["bias"], pad, stride, dil, a["groups"])

    def _conv_transpose3d(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
        defaults = (None, None, None, 1, 0, 0, 1, 1)
        a = dict(zip(names, defaults))
        a.update(zip(names, args))
        a.update(kwargs)
        x, w, b = a["input"], a["weight"], a["bias"]
        if not self._applies(x, w) or w.ndim != 5 or tuple(w.shape[2:]) != (3, 3, 3):
            return None
        if (_triple(a["stride"]) != [2, 2, 2] or _triple(a["padding"]) != [1, 1, 1]
                or _triple(a["output_padding"]) != [1, 1, 1] or _triple(a["dilation"]) != [1, 1, 1]
                or a["groups"] != 1 or w.shape[1] >= SUBPIXEL_MAX_OUT_CHANNELS):
            return None
        hit = self._subpixel.get(id(w))
        if hit is not None and hit[0] is w and hit[1] == w._version and hit[2] is b:
            packed = hit[3]
        else:
            packed = _subpixel_weight(w, b)
            self._subpixel[id(w)] = (w, w._version, b, packed)
        self.rerouted += 1
        return subpixel_conv_transpose3d(x, w, b, packed)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = None
        if func is torch.conv3d:
            out = self._conv3d(args, kwargs)
        elif func is torch.conv_transpose3d:
            out = self._conv_transpose3d(args, kwargs)
        if out is not None:
            return out
        return func(*args, **kwargs)
