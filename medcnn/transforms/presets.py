"""Deterministic preprocessing presets built from MONAI dictionary transforms.

Every preset returns a ``monai.transforms.Compose`` that maps a dict of ``(C, *spatial)`` float32
``monai.data.MetaTensor`` (what :func:`medcnn.load` returns) to a dict of the same kind. Image keys
(``keys``, default ``"image"``) get intensity and spatial processing; label keys (``label_keys``,
default ``"label"``) get the same spatial processing with nearest-neighbour interpolation and are
never touched by intensity steps. Label keys are optional in the data (image-only dicts work).

Spatial steps are MONAI invertible transforms, so a prediction made on the preprocessed grid can be
mapped back with ``monai.transforms.Invertd(keys="pred", transform=preset, orig_keys="image")``.

Presets are also reachable by name (``PRESETS``, :func:`build_preset`) for YAML configs.

Example:
    >>> pre = ct_preset(window="lung")
    >>> out = pre({"image": ct})          # ct: MetaTensor (1, X, Y, Z) in HU
    >>> float(out["image"].min()) >= 0.0
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from monai.transforms import (
    Compose,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from medcnn.errors import ConfigError
from medcnn.transforms._checks import (
    KeysLike,
    as_keys,
    check_choice,
    check_kwargs,
    check_positive,
    check_range,
    image_and_label_keys,
)
from medcnn.transforms.custom import MaskedNormalizeIntensityd, SquarePadOrCropd
from medcnn.transforms.windows import CT_WINDOWS

logger = logging.getLogger(__name__)

__all__ = [
    "CT_WINDOWS",
    "PRESETS",
    "brain_mri_preset",
    "build_preset",
    "chest_xray_preset",
    "ct_preset",
    "resample_preset",
]

_AXCODE_PAIRS = ("LR", "AP", "SI")
# medcnn affines map voxels to RAS+ world (nibabel's convention, see medcnn.io.geometry). Passing
# MONAI's axis labels explicitly keeps that meaning whatever a MetaTensor's "space" says, and
# silences MONAI 1.5+'s FutureWarning about the changing default of ``Orientationd(labels=...)``.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _check_window(window: str | Sequence[float]) -> tuple[float, float]:
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ConfigError(
                f"ct_preset window: unknown name {window!r}; valid names: {', '.join(CT_WINDOWS)} "
                "or a (low, high) pair in HU"
            )
        return CT_WINDOWS[window]
    try:
        return check_range(window, "ct_preset window")
    except ConfigError as err:
        raise ConfigError(f"{err} (or one of the names: {', '.join(CT_WINDOWS)})") from None


def _check_axcodes(orientation: object, spatial_dims: int | None = None) -> str:
    """Validate orientation codes such as ``"RAS"`` (one letter per axis from L/R, A/P, S/I)."""
    if not isinstance(orientation, str) or not 2 <= len(orientation) <= 3:
        raise ConfigError(f"orientation must be 2 or 3 letters from L/R, A/P, S/I (e.g. 'RAS'), got {orientation!r}")
    code = orientation.upper()
    pairs = []
    for letter in code:
        pair = next((p for p in _AXCODE_PAIRS if letter in p), None)
        if pair is None:
            raise ConfigError(f"orientation {orientation!r}: letter {letter!r} is not one of L, R, A, P, S, I")
        pairs.append(pair)
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"orientation {orientation!r} uses the same axis twice; use one of L/R, A/P, S/I per axis")
    if spatial_dims is not None and len(code) != spatial_dims:
        raise ConfigError(f"orientation {orientation!r} has {len(code)} letters, expected {spatial_dims}")
    return code


def ct_preset(
    keys: KeysLike = "image",
    *,
    window: str | Sequence[float] = (-1000.0, 1000.0),
    out_range: Sequence[float] = (0.0, 1.0),
    clip: bool = True,
) -> Compose:
    """CT intensity window: HU in ``window`` mapped linearly onto ``out_range``.

    Args:
        keys: image key(s) holding ``(C, *spatial)`` CT in Hounsfield units. Labels are not listed
            here because they are never changed.
        window: ``(low, high)`` in HU, or a name from :data:`CT_WINDOWS` (``"soft_tissue"``,
            ``"lung"``, ``"bone"``, ``"brain"``).
        out_range: ``(low, high)`` output range; ``low < high``.
        clip: clip values outside the window to ``out_range`` (otherwise extrapolate linearly).

    Returns:
        ``Compose([ScaleIntensityRanged])``; output ``(C, *spatial)`` float32, same geometry.

    Raises:
        ConfigError: (a ``ValueError``) for an unknown window name or an invalid range.
    """
    image_keys = as_keys(keys, "keys")
    low, high = _check_window(window)
    b_min, b_max = check_range(out_range, "ct_preset out_range")
    return Compose(
        [ScaleIntensityRanged(image_keys, a_min=low, a_max=high, b_min=b_min, b_max=b_max, clip=bool(clip))]
    )


def brain_mri_preset(
    keys: KeysLike = "image",
    *,
    nonzero: bool = True,
    channel_wise: bool = True,
    mask_key: str | None = None,
) -> Compose:
    """Brain MRI z-score normalisation inside the brain.

    With ``nonzero=True`` the brain mask is the set of voxels that are non-zero in *any* channel of
    the image (skull-stripped data has an exact-zero background), or the mask under ``mask_key``.
    The same mask is used for every channel, so a contrast that happens to be 0 inside the brain is
    normalised over the same voxels as the others; MONAI's ``NormalizeIntensityd(nonzero=True)``
    would give that channel its own, smaller mask. Outside the mask the output is exactly 0.

    With ``nonzero=False`` (and no ``mask_key``) MONAI's ``NormalizeIntensityd`` normalises over
    the whole image.

    Args:
        keys: image key(s), each ``(C, *spatial)`` (e.g. C=4 for T1, T1c, T2, FLAIR).
        nonzero: normalise inside the brain mask (``True``) or over all voxels.
        channel_wise: statistics per channel (``True``) or pooled over channels.
        mask_key: optional key of a ``(1, *spatial)`` brain mask (> 0 inside) in the data dict;
            implies masked normalisation.

    Returns:
        A ``Compose`` with one normalisation transform; output ``(C, *spatial)`` float32,
        mean ~0 and std ~1 inside the mask per channel, 0 outside.

    Raises:
        ConfigError: for invalid keys.
    """
    image_keys = as_keys(keys, "keys")
    if mask_key is not None:
        (mask_key,) = as_keys(mask_key, "mask_key")
        if mask_key in image_keys:
            raise ConfigError(f"mask_key {mask_key!r} must not be one of the image keys {list(image_keys)}")
    if nonzero or mask_key is not None:
        transform = MaskedNormalizeIntensityd(image_keys, mask_key=mask_key, channel_wise=channel_wise)
    else:
        transform = NormalizeIntensityd(image_keys, nonzero=False, channel_wise=bool(channel_wise))
    return Compose([transform])


def chest_xray_preset(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    size: int = 512,
    square: str = "pad",
    percentiles: Sequence[float] = (0.5, 99.5),
    mean_std: Sequence[float] | None = None,
    image_mode: str = "area",
    orientation: str | None = None,
) -> Compose:
    """2D chest X-ray preprocessing to a ``size`` x ``size`` image in [0, 1].

    Steps, in order:

    1. optional reorientation (``Orientationd``) when ``orientation`` is given; it uses each
       MetaTensor's affine (a plain tensor counts as identity), so what the codes mean depends on
       how the loader filled the 2D affine. ``None`` keeps the pixel array's (rows, cols) order.
    2. per-image robust scaling (``ScaleIntensityRangePercentilesd``): the ``percentiles`` of all
       channels together map to 0 and 1, values outside are clipped.
    3. centred pad to a square with 0 (the image minimum after step 2), or centred crop to the
       shorter side (:class:`~medcnn.transforms.custom.SquarePadOrCropd`).
    4. resize (``Resized``) to ``(size, size)``: ``image_mode`` for images (``"area"`` averages when
       shrinking, the usual case for CXR; ``"bilinear"`` adds anti-aliasing when shrinking),
       ``"nearest"`` for labels, so binary masks stay binary.
    5. optional ``(x - mean) / std`` (``NormalizeIntensityd``) when ``mean_std`` is given.

    Steps 1, 3 and 4 are invertible (``Invertd``) to bring a prediction back to the input pixels.

    Args:
        keys: image key(s), each ``(C, H, W)`` (C is 1, or 3 for RGB files).
        label_keys: label key(s) ``(1, H, W)`` (e.g. lung masks); optional in the data.
        size: output side length in pixels, > 0.
        square: ``"pad"`` (keep the whole image) or ``"crop"`` (centre crop).
        percentiles: ``(low, high)`` percentiles in [0, 100] mapped to 0 and 1.
        mean_std: optional ``(mean, std)`` applied after scaling to [0, 1], std > 0.
        image_mode: ``"area"`` or ``"bilinear"`` interpolation for images.
        orientation: optional 2-letter axis codes for ``Orientationd`` (e.g. ``"RA"``).

    Returns:
        A ``Compose``; images ``(C, size, size)`` float32, labels ``(1, size, size)``.

    Raises:
        ConfigError: for invalid arguments (listing the valid options where there are few).
    """
    image_keys, seg_keys = image_and_label_keys(keys, label_keys)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"chest_xray_preset size must be a positive int, got {size!r}")
    square = check_choice(square, "chest_xray_preset square", SquarePadOrCropd.METHODS)
    image_mode = check_choice(image_mode, "chest_xray_preset image_mode", ("area", "bilinear"))
    p_low, p_high = check_range(percentiles, "chest_xray_preset percentiles")
    if p_low < 0 or p_high > 100:
        raise ConfigError(f"chest_xray_preset percentiles must lie in [0, 100], got {tuple(percentiles)!r}")

    transforms: list[Callable[..., Any]] = []
    if orientation is not None:
        axcodes = _check_axcodes(orientation, spatial_dims=2)
        transforms.append(Orientationd(image_keys, axcodes=axcodes, labels=_RAS_LABELS))
        if seg_keys:
            transforms.append(Orientationd(seg_keys, axcodes=axcodes, labels=_RAS_LABELS, allow_missing_keys=True))
    transforms.append(
        ScaleIntensityRangePercentilesd(
            image_keys, lower=p_low, upper=p_high, b_min=0.0, b_max=1.0, clip=True, channel_wise=False
        )
    )
    transforms.append(SquarePadOrCropd(image_keys, method=square, value=0.0))
    if seg_keys:
        transforms.append(SquarePadOrCropd(seg_keys, method=square, value=0.0, allow_missing_keys=True))
    transforms.append(
        Resized(image_keys, spatial_size=(size, size), mode=image_mode, anti_aliasing=image_mode == "bilinear")
    )
    if seg_keys:
        transforms.append(Resized(seg_keys, spatial_size=(size, size), mode="nearest", allow_missing_keys=True))
    if mean_std is not None:
        try:
            mean, std = (float(v) for v in mean_std)
        except (TypeError, ValueError):
            raise ConfigError(f"chest_xray_preset mean_std must be a pair (mean, std), got {mean_std!r}") from None
        if not math.isfinite(mean):
            raise ConfigError(f"chest_xray_preset mean_std: mean must be finite, got {mean}")
        check_positive(std, "chest_xray_preset mean_std std")
        transforms.append(NormalizeIntensityd(image_keys, subtrahend=mean, divisor=std))
    return Compose(transforms)


def resample_preset(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    spacing: float | Sequence[float] | None = None,
    orientation: str | None = "RAS",
) -> Compose:
    """Reorient and/or resample to a voxel spacing, using each MetaTensor's affine.

    ``Orientationd(axcodes=orientation)`` (a pure axis permutation/flip, no interpolation), then
    ``Spacingd(pixdim=spacing)`` with bilinear interpolation for images and nearest for labels
    (float32 output). Both are invertible (``Invertd``), which is how predictions go back to the
    input grid.

    Args:
        keys: image key(s), each ``(C, *spatial)`` with 2 or 3 spatial dims.
        label_keys: label key(s); optional in the data.
        spacing: target voxel size in world units (mm), one value for all axes or one per axis;
            ``None`` skips resampling.
        orientation: axis codes such as ``"RAS"`` (3D) or ``"RA"`` (2D); ``None`` skips it.

    Returns:
        A ``Compose``; outputs ``(C, *new_spatial)`` float32 with updated ``.affine``.

    Raises:
        ConfigError: if both steps are skipped or an argument is invalid.
    """
    image_keys, seg_keys = image_and_label_keys(keys, label_keys)
    if spacing is None and orientation is None:
        raise ConfigError("resample_preset needs spacing and/or orientation; both are None")
    transforms: list[Callable[..., Any]] = []
    if orientation is not None:
        axcodes = _check_axcodes(orientation)
        transforms.append(Orientationd(image_keys, axcodes=axcodes, labels=_RAS_LABELS))
        if seg_keys:
            transforms.append(Orientationd(seg_keys, axcodes=axcodes, labels=_RAS_LABELS, allow_missing_keys=True))
    if spacing is not None:
        values = [spacing] if isinstance(spacing, (int, float)) else list(spacing)
        if not 1 <= len(values) <= 3:
            raise ConfigError(f"resample_preset spacing must be one number or 2-3 numbers, got {spacing!r}")
        pixdim = tuple(check_positive(v, "resample_preset spacing") for v in values)
        pixdim_arg = pixdim[0] if isinstance(spacing, (int, float)) else pixdim
        transforms.append(Spacingd(image_keys, pixdim=pixdim_arg, mode="bilinear", dtype="float32"))
        if seg_keys:
            transforms.append(
                Spacingd(seg_keys, pixdim=pixdim_arg, mode="nearest", dtype="float32", allow_missing_keys=True)
            )
    return Compose(transforms)


PRESETS: Mapping[str, Callable[..., Compose]] = MappingProxyType(
    {
        "ct": ct_preset,
        "brain_mri": brain_mri_preset,
        "chest_xray": chest_xray_preset,
        "resample": resample_preset,
    }
)
"""Preprocessing presets by name (for configs): ``name -> factory(**kwargs) -> Compose``."""


def build_preset(name: str, **kwargs: Any) -> Compose:
    """Build a preprocessing preset by name, e.g. from a YAML config.

    Args:
        name: a key of :data:`PRESETS` (``"ct"``, ``"brain_mri"``, ``"chest_xray"``, ``"resample"``).
        **kwargs: the preset's keyword arguments.

    Returns:
        The preset's ``Compose``.

    Raises:
        ConfigError: (a ``ValueError``) for an unknown name or keyword argument, listing the valid
            ones, or an invalid value.
    """
    factory = PRESETS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown preprocessing preset {name!r}; valid names: {', '.join(PRESETS)}")
    check_kwargs(factory, kwargs, f"preset {name!r}")
    return factory(**kwargs)

