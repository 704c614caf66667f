"""Mirroring test-time augmentation (nnU-Net style).

The prediction is averaged over every combination of flips of the chosen spatial axes: for
axes ``(0, 1, 2)`` that is 8 predictions (identity, 3 single flips, 3 pairs, all three). Each
prediction is flipped back before averaging, so a flip-equivariant predictor gives exactly its
plain prediction.

Wrap a network with :func:`mirror_predictor` to use it inside
:func:`~medcnn.inference.sliding_window_inference` (TTA per window, as nnU-Net does)::

    out = sliding_window_inference(x, 96, 2, mirror_predictor(net, axes=(0, 1, 2)))

``batched=True`` stacks the mirrored copies into one predictor call instead of one call per
copy: for small inputs on a CPU most of a call is fixed cost, so two copies cost little more than one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["flip_combinations", "flip_tta", "mirror_predictor"]


def _normalise_axes(axes: Sequence[int] | int | None, spatial_dims: int) -> tuple[int, ...]:
    """Spatial axes as sorted non-negative indices in ``[0, spatial_dims)``."""
    if axes is None:
        return tuple(range(spatial_dims))
    axes_seq = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for axis in axes_seq:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"flip axes must be ints (spatial axis indices); got {axes!r}")
        if not -spatial_dims <= axis < spatial_dims:
            raise ValueError(f"flip axis {axis} out of range for {spatial_dims} spatial axes")
        out.append(axis % spatial_dims)
    if len(set(out)) != len(out):
        raise ValueError(f"flip axes repeat: {axes!r}")
    return tuple(sorted(out))


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, identity first: ``(0, 1)`` -> ``[(), (0,), (1,), (0, 1)]``."""
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _unflip(out: torch.Tensor, dims: tuple[int, ...], in_ndim: int) -> torch.Tensor:
    """Undoes the flip on a predictor output: dense outputs are flipped back, vectors kept."""
    if not dims:
        return out
    if out.ndim == in_ndim:
        return torch.flip(out, dims)
    if out.ndim == 2:  # (B, K) classification logits: no spatial axes to flip back
        return out
    raise ValueError(
        f"cannot undo a flip on a predictor output of shape {tuple(out.shape)}: expected "
        f"{in_ndim} dims (B, C_out, *spatial) or 2 dims (B, K)"
    )


def _accumulate(total: Any, new: Any) -> Any:
    """``total + new`` for a tensor, tuple/list or dict of tensors (accumulated in >= fp32)."""
    if isinstance(new, torch.Tensor):
        if total is None:
            return new.to(torch.promote_types(new.dtype, torch.float32), copy=True)
        return total.add_(new)
    if isinstance(new, Mapping):
        if total is None:
            return {k: _accumulate(None, v) for k, v in new.items()}
        return {k: _accumulate(total[k], v) for k, v in new.items()}
    if isinstance(new, (tuple, list)):
        if total is None:
            return tuple(_accumulate(None, v) for v in new)
        return tuple(_accumulate(t, v) for t, v in zip(total, new))
    raise TypeError(f"predictor must return a tensor, tuple or dict of tensors; got {type(new).__name__}")


def _map(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map(fn, v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_map(fn, v) for v in value)
    raise TypeError(f"predictor must return a tensor, tuple or dict of tensors; got {type(value).__name__}")


def flip_tta(
    predictor: Callable[..., Any],
    inputs: torch.Tensor,
    axes: Sequence[int] | int | None = None,
    *,
    batched: bool = False,
    **kwargs: Any,
) -> Any:
    """Average of ``predictor`` over all flip combinations of the given spatial axes.

    Args:
        predictor: callable ``(B, C, *spatial) -> (B, C_out, *spatial)`` (dense outputs are
            flipped back), or ``-> (B, K)`` (averaged as they are); tuples/dicts of these work.
        inputs: ``(B, C, *spatial)`` batch.
        axes: spatial axes to mirror, indexed from 0 over the spatial axes only (``0`` is the
            first axis after the channel); negative values count from the end. ``None``: all.
        **kwargs: passed on to ``predictor``.

    Returns:
        The mean prediction, same structure and shapes as ``predictor``'s, in fp32 (or wider
        when the predictor returns fp64). ``2 ** len(axes)`` predictor calls.

    Raises:
        ValueError: for invalid axes or inputs without spatial axes.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 3:
        raise ValueError("inputs must be a tensor (B, C, *spatial)")
    spatial = inputs.ndim - 2
    flip_axes = _normalise_axes(axes, spatial)
    combos = flip_combinations(flip_axes)
    if batched:
        dims_all = [tuple(a + 2 for a in combo) for combo in combos]
        out = predictor(torch.cat([torch.flip(inputs, d) if d else inputs for d in dims_all]), **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"flip_tta(batched=True) needs a predictor returning one tensor; got {type(out).__name__}")
        parts = out.to(torch.promote_types(out.dtype, torch.float32)).chunk(len(combos))
        return torch.stack([_unflip(t, d, inputs.ndim) for t, d in zip(parts, dims_all)]).mean(0)
    total: Any = None
    for combo in combos:
        dims = tuple(a + 2 for a in combo)
        x = torch.flip(inputs, dims) if dims else inputs
        out = predictor(x, **kwargs)
        total = _accumulate(total, _map(lambda t, d=dims: _unflip(t, d, inputs.ndim), out))
    scale = 1.0 / len(combos)
    return _map(lambda t: t.mul_(scale), total)


class _MirrorPredictor:
    """Picklable predictor wrapper returned by :func:`mirror_predictor`."""

    def __init__(self, predictor: Callable[..., Any], axes: Sequence[int] | int | None, batched: bool = False) -> None:
        if not callable(predictor):
            raise ValueError("predictor must be callable")
        if axes is not None:  # full range check needs the input's rank: done per call
            seq = (axes,) if isinstance(axes, int) else tuple(axes)
            if any(isinstance(a, bool) or not isinstance(a, int) for a in seq):
                raise ValueError(f"flip axes must be ints (spatial axis indices); got {axes!r}")
            if len(set(seq)) != len(seq):
                raise ValueError(f"flip axes repeat: {axes!r}")
            axes = seq
        self.predictor = predictor
        self.axes = axes
        self.batched = batched

    def __call__(self, inputs: torch.Tensor, **kwargs: Any) -> Any:
        return flip_tta(self.predictor, inputs, self.axes, batched=self.batched, **kwargs)

    def __repr__(self) -> str:
        return f"mirror_predictor({self.predictor!r}, axes={self.axes!r}, batched={self.batched})"


def mirror_predictor(
    predictor: Callable[..., Any], axes: Sequence[int] | int | None = None, *, batched: bool = False
) -> Callable[..., Any]:
    """Wraps ``predictor`` so that every call is mirrored (see :func:`flip_tta`).

    Args:
        predictor: callable ``(B, C, *spatial) -> (B, C_out, *spatial)``.
        axes: spatial axes to mirror (``None``: all spatial axes of each call's input).
        batched: one call on all mirrored copies (see :func:`flip_tta`).

    Returns:
        A callable with ``predictor``'s signature, usable as a sliding-window predictor.

    Raises:
        ValueError: when ``predictor`` is not callable or ``axes`` repeat.
    """
    return _MirrorPredictor(predictor, axes, batched)
