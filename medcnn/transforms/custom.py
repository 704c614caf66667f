"""The few dictionary transforms that MONAI lacks, written in MONAI's style.

Each one exists because no MONAI transform does the job (the reason is given per class):

- :class:`ThickSliced` / :class:`RandThickSliced`: thick-slice (anisotropic) resolution loss along
  one axis. MONAI's ``RandSimulateLowResolutiond`` only zooms all axes by the same factor.
- :class:`MaskedNormalizeIntensityd`: z-score inside one brain mask shared by all channels.
  ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` derives the mask per channel.
- :class:`SquarePadOrCropd`: centred pad (or crop) to a square/cube whose side depends on each
  image. ``SpatialPadd`` / ``CenterSpatialCropd`` need a fixed size at construction.
- :class:`RandKSpaceSpiked`: k-space spikes whose amplitude is *relative* to the image, so that a
  ``strength`` can scale it. ``RandKSpaceSpikeNoised`` takes absolute log-intensities.

Random transforms follow TorchIO's split: ``randomize`` samples the parameters from ``self.R``
(seedable through ``Compose.set_random_state``), then a deterministic twin applies them.

All transforms take dicts of ``(C, *spatial)`` tensors (normally ``monai.data.MetaTensor`` with an
``.affine``) and return tensors of the same type, dtype and metadata.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Crop,
    InvertibleTransform,
    KSpaceSpikeNoise,
    MapTransform,
    Pad,
    RandomizableTransform,
)
from monai.utils import convert_to_dst_type

from medcnn.errors import ConfigError
from medcnn.transforms._checks import check_choice

logger = logging.getLogger(__name__)

__all__ = [
    "MaskedNormalizeIntensityd",
    "RandKSpaceSpiked",
    "RandThickSliced",
    "SquarePadOrCropd",
    "ThickSliced",
    "masked_zscore",
    "thick_slice",
]

_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _plain(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A plain ``torch.Tensor`` view of ``img`` (MetaTensor metadata dropped)."""
    if isinstance(img, np.ndarray):
        return torch.as_tensor(img)
    return img.as_tensor() if hasattr(img, "as_tensor") else img


def _normalise_axis(axis: int, spatial_dims: int) -> int:
    if not -spatial_dims <= axis < spatial_dims:
        raise ValueError(f"axis {axis} is out of range for an image with {spatial_dims} spatial dimensions")
    return axis % spatial_dims


# --------------------------------------------------------------------------------------------------
# thick slices


def thick_slice(img: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Simulate slices ``factor`` times thicker along one spatial axis, keeping the shape.

    The axis is box-averaged down to ``round(n / factor)`` samples (``area`` interpolation: each new
    slice integrates the signal of the old slices it covers, as a thick acquisition does) and
    linearly interpolated back to ``n`` samples. Other axes are untouched (linear interpolation at
    an unchanged size is exact).

    Args:
        img: ``(C, *spatial)`` tensor with 1 to 3 spatial dimensions.
        axis: spatial axis (0 is the first axis after the channel; negative counts from the end).
        factor: slice thickness in voxels, >= 1. ``factor`` values that do not change the number of
            samples (``round(n / factor) == n``) return ``img`` unchanged.

    Returns:
        Tensor of the same shape, type, dtype and metadata as ``img``.

    Raises:
        ValueError: if the axis is out of range, ``factor < 1`` or ``img`` has no spatial axes.
    """
    spatial = tuple(int(s) for s in img.shape[1:])
    if not 1 <= len(spatial) <= 3:
        raise ValueError(
            f"thick_slice expects a (C, *spatial) tensor with 1-3 spatial dims, got shape {tuple(img.shape)}"
        )
    if not factor >= 1.0:
        raise ValueError(f"thick-slice factor must be >= 1, got {factor}")
    axis = _normalise_axis(axis, len(spatial))
    n = spatial[axis]
    m = max(1, int(round(n / factor)))
    if m >= n:
        return img
    x = _plain(img).unsqueeze(0)
    work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x = x.to(work_dtype)
    down_size = list(spatial)
    down_size[axis] = m
    down = F.interpolate(x, size=down_size, mode="area")
    up = F.interpolate(down, size=spatial, mode=_LINEAR_MODES[len(spatial)], align_corners=False)
    out, *_ = convert_to_dst_type(up[0], dst=img)
    return out


class ThickSliced(MapTransform):
    """Deterministic thick-slice simulation along one axis (see :func:`thick_slice`).

    Intensity-like: the shape and geometry do not change, so it is meant for images only — never
    give it label keys. MONAI has only the isotropic ``SimulateLowResolution``.

    Args:
        keys: image keys; each value is ``(C, *spatial)``.
        axis: spatial axis (0 = first axis after the channel).
        factor: slice thickness in voxels, >= 1 (1 = identity).
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    def __init__(self, keys: KeysCollection, axis: int, factor: float, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ConfigError(f"ThickSliced: axis must be an int, got {axis!r}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1.0 or math.isinf(factor):
            raise ConfigError(f"ThickSliced: factor must be a finite number >= 1, got {factor!r}")
        self.axis = axis
        self.factor = float(factor)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = thick_slice(d[key], self.axis, self.factor)
        return d


class RandThickSliced(RandomizableTransform, MapTransform):
    """Random thick slices: samples an axis and a thickness, then applies :class:`ThickSliced`.

    The same axis and factor are used for every key of one call (multi-key images stay consistent).

    Args:
        keys: image keys (never labels).
        prob: probability of applying the transform.
        factor_range: ``(low, high)`` thickness in voxels, sampled uniformly; ``low >= 1``.
        axes: spatial axes to choose from (uniformly); ``None`` means all of them.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        factor_range: tuple[float, float] = (1.5, 4.0),
        axes: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = factor_range
        if not 1.0 <= low <= high or math.isinf(high):
            raise ConfigError(
                f"RandThickSliced: factor_range must be (low, high) with 1 <= low <= high, got {factor_range!r}"
            )
        self.factor_range = (float(low), float(high))
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        if self.axes is not None and not self.axes:
            raise ConfigError("RandThickSliced: axes must be None (all axes) or a non-empty sequence")
        self._axis = 0
        self._factor = 1.0

    def randomize(self, spatial_dims: int) -> None:  # type: ignore[override]
        """Sample whether to apply, the axis and the thickness.

        Args:
            spatial_dims: number of spatial dimensions of the data.
        """
        super().randomize(None)
        if not self._do_transform:
            return
        axes = self.axes if self.axes is not None else tuple(range(spatial_dims))
        self._axis = int(axes[self.R.randint(len(axes))])
        self._factor = float(self.R.uniform(*self.factor_range))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first_key = self.first_key(d)
        if first_key == ():
            return d
        self.randomize(d[first_key].ndim - 1)
        if not self._do_transform:
            return d
        twin = ThickSliced(self.keys, self._axis, self._factor, allow_missing_keys=self.allow_missing_keys)
        return twin(d)


# --------------------------------------------------------------------------------------------------
# masked z-score


def masked_zscore(
    img: torch.Tensor, mask: torch.Tensor | None = None, channel_wise: bool = True
) -> torch.Tensor:
    """Z-score ``img`` inside ``mask``; voxels outside the mask become 0.

    Args:
        img: ``(C, *spatial)`` tensor.
        mask: ``(*spatial)`` or ``(1, *spatial)`` tensor, foreground where > 0. ``None`` uses the
            voxels that are non-zero in *any* channel, the same mask for every channel.
        channel_wise: statistics per channel (``True``) or pooled over all channels.

    Returns:
        Tensor like ``img`` (same type, dtype and metadata). Statistics are computed in float64;
        a constant region keeps std 1 (as in MONAI), an empty mask gives all zeros (logged).

    Raises:
        ValueError: if the mask's spatial shape differs from the image's.
    """
    x = _plain(img)
    spatial = tuple(x.shape[1:])
    if mask is None:
        m = (x != 0).any(dim=0)
    else:
        m = _plain(mask)
        if m.ndim == len(spatial) + 1 and m.shape[0] == 1:
            m = m[0]
        if tuple(m.shape) != spatial:
            raise ValueError(f"mask shape {tuple(m.shape)} does not match the image's spatial shape {spatial}")
        m = m > 0
    x64 = x.to(torch.float64)
    out = torch.zeros_like(x64)
    if not bool(m.any()):
        logger.warning("masked_zscore: the mask is empty; returning zeros")
    else:
        groups = [[c] for c in range(x.shape[0])] if channel_wise else [list(range(x.shape[0]))]
        for channels in groups:
            values = x64[channels][:, m]
            mean = values.mean()
            std = values.std(unbiased=False)
            if std == 0:
                std = torch.ones_like(std)
            out[channels] = torch.where(m, (x64[channels] - mean) / std, torch.zeros((), dtype=torch.float64))
    result, *_ = convert_to_dst_type(out, dst=img)
    return result


class MaskedNormalizeIntensityd(MapTransform):
    """Z-score normalisation inside a brain mask shared by all channels of an image.

    Why not ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: MONAI takes each channel's own
    non-zero voxels, so a contrast that is exactly 0 somewhere inside the brain (e.g. a
    skull-stripped T2 with a zeroed lesion, or a clipped FLAIR) gets a smaller mask, different
    statistics, and zeros that stay 0 instead of mapping to ``(0 - mean) / std``. Here the mask is
    the union of non-zero voxels over channels (or an explicit mask), identical for every channel.

    Args:
        keys: image keys; each value is ``(C, *spatial)``.
        mask_key: optional key of a ``(1, *spatial)`` brain mask in the same dict; ``None`` derives
            the mask from non-zero voxels of any channel.
        channel_wise: per-channel statistics (default) or pooled over channels.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = None,
        channel_wise: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.channel_wise = bool(channel_wise)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise KeyError(f"MaskedNormalizeIntensityd: mask key {self.mask_key!r} not in data (keys: {list(d)})")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = masked_zscore(d[key], mask, self.channel_wise)
        return d


# --------------------------------------------------------------------------------------------------
# pad / crop to a square


class SquarePadOrCropd(MapTransform, InvertibleTransform):
    """Centred pad (or crop) of every spatial axis to the longest (shortest) one.

    MONAI's ``SpatialPadd``/``CenterSpatialCropd`` need the target size when they are built; here
    it depends on each image. The work is done by MONAI's ``Pad``/``Crop`` (which take the amounts
    at call time), so the operation is recorded in the MetaTensor (affine updated) and ``inverse``
    undoes it, e.g. through ``monai.transforms.Invertd`` or ``Compose.inverse``. Odd differences
    put the extra voxel after the image, as ``SpatialPad(method="symmetric")`` does.

    Args:
        keys: keys to pad/crop; each value is ``(C, *spatial)``.
        method: ``"pad"`` (pad to the longest side) or ``"crop"`` (crop to the shortest side).
        value: constant used for padding.
        allow_missing_keys: skip absent keys.
    """

    METHODS = ("pad", "crop")

    def __init__(
        self, keys: KeysCollection, method: str = "pad", value: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = check_choice(method, "SquarePadOrCropd method", self.METHODS)
        self.value = float(value)
        # One instance each: MONAI matches an inverse to the instance that recorded the forward op.
        self._padder = Pad(mode="constant", value=self.value)
        self._cropper = Crop()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            spatial = tuple(int(s) for s in d[key].shape[1:])
            if self.method == "pad":
                side = max(spatial)
                to_pad = [(0, 0)] + [((side - n) // 2, side - n - (side - n) // 2) for n in spatial]
                d[key] = self._padder(d[key], to_pad=to_pad)
            else:
                side = min(spatial)
                slices = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n in spatial)
                d[key] = self._cropper(d[key], slices=slices)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        op = self._padder if self.method == "pad" else self._cropper
        for key in self.key_iterator(d):
            d[key] = op.inverse(d[key])
        return d


# --------------------------------------------------------------------------------------------------
# k-space spikes


class RandKSpaceSpiked(RandomizableTransform, MapTransform):
    """k-space spike (herringbone) artefact with an amplitude relative to the image.

    For each channel a k-space location is sampled (never the DC term) and its magnitude replaced
    so that the resulting stripe pattern has amplitude ``a * std(channel)`` with ``a`` sampled from
    ``amplitude_range``; then MONAI's deterministic ``KSpaceSpikeNoise`` applies it. MONAI's own
    ``RandKSpaceSpikeNoised`` takes absolute log-intensities, which cannot be scaled by a
    strength without knowing the image. Each key and channel gets its own spike (contrasts are
    separate acquisitions).

    Args:
        keys: image keys (never labels); each value is ``(C, *spatial)`` with 2 or 3 spatial dims.
        prob: probability of applying the transform (to all keys of a call).
        amplitude_range: ``(low, high)`` stripe amplitude in units of the channel's std, >= 0.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        amplitude_range: tuple[float, float] = (0.1, 0.3),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = amplitude_range
        if not 0.0 <= low <= high or math.isinf(high):
            raise ConfigError(
                "RandKSpaceSpiked: amplitude_range must be (low, high) with 0 <= low <= high, "
                f"got {amplitude_range!r}"
            )
        self.amplitude_range = (float(low), float(high))
        self._params: list[tuple[list[tuple[int, ...]], list[float]]] = []

    def randomize(self, shapes: Sequence[Sequence[int]]) -> None:  # type: ignore[override]
        """Sample whether to apply and, per key and channel, a location and a relative amplitude.

        Args:
            shapes: ``(C, *spatial)`` shape of each key's image, in key order.
        """
        super().randomize(None)
        self._params = []
        if not self._do_transform:
            return
        for shape in shapes:
            spatial = tuple(int(s) for s in shape[1:])
            centre = tuple(s // 2 for s in spatial)  # DC after fftshift
            locs, amps = [], []
            for channel in range(int(shape[0])):
                loc = tuple(int(self.R.randint(0, s)) for s in spatial)
                if loc == centre:  # a spike on DC only changes the mean: move it one step
                    loc = ((loc[0] + 1) % spatial[0],) + loc[1:]
                locs.append((channel,) + loc)
                amps.append(float(self.R.uniform(*self.amplitude_range)))
            self._params.append((locs, amps))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize([d[k].shape for k in keys])
        if not self._do_transform:
            return d
        for key, (locs, amps) in zip(keys, self._params):
            x = _plain(d[key]).to(torch.float64)
            n_voxels = float(np.prod(x.shape[1:]))
            log_intensities = []
            for (channel, *_), amp in zip(locs, amps):
                std = float(x[channel].std(unbiased=False)) or 1.0
                # ifft of a lone k-space coefficient of magnitude A is a wave of amplitude A / N.
                log_intensities.append(math.log(max(amp * std * n_voxels, 1e-12)))
            d[key] = KSpaceSpikeNoise(locs, log_intensities)(d[key])
        return d
