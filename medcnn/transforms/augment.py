"""Random training augmentations, by family, scaled by one ``strength`` in [0, 1].

Every family factory has the same signature::

    factory(keys="image", *, label_keys="label", strength=0.5, prob=0.3, spatial_dims=3, **options)

and returns a ``monai.transforms.Compose`` of MONAI random dictionary transforms (plus
:mod:`medcnn.transforms.custom` where MONAI lacks one). Inputs are dicts of ``(C, *spatial)``
float32 ``MetaTensor``; outputs keep shape, dtype and metadata (only the ``spatial`` family
updates ``.affine``, see :func:`spatial_augmentation`).

Semantics shared by all families:

- ``strength`` scales every magnitude linearly from 0 (nothing) to 1 (the strongest setting we
  consider realistic). ``strength == 0`` returns an *empty* ``Compose``, so the output is exactly
  the input: MONAI's transforms at zero magnitude are identities only up to round-off (the
  FFT round trip of Gibbs noise, the min/max rescaling of gamma, resampling on an identity grid).
- ``prob`` is the probability that each individual transform of the family fires (flips are the
  exception: they have no magnitude, so each axis flips with probability ``prob * strength``).
- Intensity magnitudes are absolute and assume normalised images (z-scored MRI, CT/CXR in
  [0, 1]): apply the preprocessing presets first.
- Only ``spatial`` touches ``label_keys`` (nearest-neighbour interpolation, same random
  parameters as the images, so they stay aligned). All other families are intensity-only.
- Seeding: ``compose.set_random_state(seed)`` makes every draw reproducible.

:data:`AUGMENTATIONS` maps the family names to their factories and :func:`augmentation_preset`
composes several by name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from monai.transforms import (
    Compose,
    OneOf,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandGibbsNoised,
    RandHistogramShiftd,
    RandRicianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from medcnn.errors import ConfigError
from medcnn.transforms._checks import (
    KeysLike,
    check_choice,
    check_kwargs,
    check_positive,
    check_spatial_dims,
    check_unit_interval,
    image_and_label_keys,
)
from medcnn.transforms.custom import RandKSpaceSpiked, RandThickSliced

logger = logging.getLogger(__name__)

__all__ = [
    "AUGMENTATIONS",
    "augmentation_preset",
    "intensity_augmentation",
    "mri_artifact_augmentation",
    "noise_augmentation",
    "resolution_augmentation",
    "spatial_augmentation",
]

_PADDING_MODES = ("zeros", "border", "reflection")
_NOISE_KINDS = ("gaussian", "rician", "any")


def _common(
    keys: KeysLike, label_keys: KeysLike | None, strength: float, prob: float, spatial_dims: int
) -> tuple[tuple[str, ...], tuple[str, ...], float, float, int]:
    image_keys, labels = image_and_label_keys(keys, label_keys)
    return (
        image_keys,
        labels,
        check_unit_interval(strength, "strength"),
        check_unit_interval(prob, "prob"),
        check_spatial_dims(spatial_dims),
    )


def spatial_augmentation(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    flip_axes: Sequence[int] | None = None,
    max_rotation_deg: float = 15.0,
    max_scale: float = 0.15,
    max_shear: float = 0.1,
    max_translation: float = 4.0,
    elastic: bool = True,
    elastic_spacing: int = 32,
    padding_mode: str = "zeros",
) -> Compose:
    """Random flips, affine (rotation, scaling, shear, translation) and elastic deformation.

    Images use bilinear and labels nearest interpolation with the *same* sampled parameters, so
    labels keep their integer values and stay aligned with the images. Shapes are kept; MONAI
    composes each flip/affine into the MetaTensor's ``.affine`` (images and labels alike, so the
    pair stays consistent in world coordinates), while elastic deformation leaves it unchanged.

    At ``strength`` s: each axis in ``flip_axes`` flips with probability ``prob * s``
    (``RandFlipd``); ``RandAffined`` draws rotations in ``±s * max_rotation_deg`` per axis, scale
    ``1 ± s * max_scale``, shear ``± s * max_shear`` and translation ``± s * max_translation``
    voxels; the elastic field (``Rand3DElasticd``: smoothing sigma 5-8 voxels, magnitude
    ``(200 s, 400 s)``, i.e. mean displacement ~0.5-1 voxel at s=1, up to ~3; ``Rand2DElasticd``:
    control points every ``elastic_spacing`` pixels, offsets ``(2 s, 4 s)``: mean displacement
    ~2 pixels at s=1, up to ~6).

    Args:
        keys: image key(s), each ``(C, *spatial)``.
        label_keys: label key(s) ``(1, *spatial)`` with integer values; optional in the data.
        strength: magnitude in [0, 1]; 0 returns an empty (identity) ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3.
        flip_axes: spatial axes that may flip; ``None`` means all, ``()`` disables flips (e.g. for
            chest X-rays, where left and right are not interchangeable).
        max_rotation_deg: rotation at strength 1, degrees.
        max_scale: relative zoom at strength 1.
        max_shear: shear factor at strength 1.
        max_translation: translation at strength 1, voxels.
        elastic: add the elastic deformation.
        elastic_spacing: 2D only: control-point spacing in pixels.
        padding_mode: ``"zeros"`` (the background of normalised images and of labels),
            ``"border"`` or ``"reflection"``; used for images and labels alike.

    Returns:
        A ``Compose`` of MONAI random transforms.

    Raises:
        ConfigError: for invalid arguments.
    """
    image_keys, labels, s, prob, dims = _common(keys, label_keys, strength, prob, spatial_dims)
    padding_mode = check_choice(padding_mode, "padding_mode", _PADDING_MODES)
    for value, name in (
        (max_rotation_deg, "max_rotation_deg"),
        (max_scale, "max_scale"),
        (max_shear, "max_shear"),
        (max_translation, "max_translation"),
    ):
        check_positive(value, name, allow_zero=True)
    if isinstance(elastic_spacing, bool) or not isinstance(elastic_spacing, int) or elastic_spacing < 2:
        raise ConfigError(f"elastic_spacing must be an int >= 2, got {elastic_spacing!r}")
    axes = tuple(range(dims)) if flip_axes is None else tuple(flip_axes)
    for axis in axes:
        if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < dims:
            raise ConfigError(f"flip_axes must hold spatial axes in 0..{dims - 1}, got {list(axes)}")
    if s == 0.0:
        return Compose([])

    all_keys = image_keys + labels
    modes = ("bilinear",) * len(image_keys) + ("nearest",) * len(labels)
    # Labels are optional in the data: allow_missing_keys lets image-only dicts through.
    transforms: list[Callable[..., Any]] = [
        RandFlipd(all_keys, prob=prob * s, spatial_axis=axis, allow_missing_keys=True) for axis in axes
    ]
    rotation = math.radians(max_rotation_deg) * s
    transforms.append(
        RandAffined(
            all_keys,
            prob=prob,
            rotate_range=(rotation,) if dims == 2 else (rotation,) * 3,
            scale_range=(max_scale * s,) * dims,
            shear_range=(max_shear * s,) * (2 if dims == 2 else 6),
            translate_range=(max_translation * s,) * dims,
            mode=modes,
            padding_mode=padding_mode,
            allow_missing_keys=True,
        )
    )
    if elastic:
        if dims == 3:
            transforms.append(
                Rand3DElasticd(
                    all_keys,
                    sigma_range=(5.0, 8.0),
                    magnitude_range=(200.0 * s, 400.0 * s),
                    prob=prob,
                    mode=modes,
                    padding_mode=padding_mode,
                    allow_missing_keys=True,
                )
            )
        else:
            transforms.append(
                Rand2DElasticd(
                    all_keys,
                    spacing=(elastic_spacing, elastic_spacing),
                    magnitude_range=(2.0 * s, 4.0 * s),
                    prob=prob,
                    mode=modes,
                    padding_mode=padding_mode,
                    allow_missing_keys=True,
                )
            )
    return Compose(transforms)


def intensity_augmentation(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    max_scale: float = 0.25,
    max_shift: float = 0.1,
    max_gamma: float = 2.0,
    histogram_shift: bool = True,
) -> Compose:
    """Random brightness/contrast: scale, shift, gamma and a non-linear histogram shift.

    At ``strength`` s: ``RandScaleIntensityd`` multiplies by ``1 ± s * max_scale``;
    ``RandShiftIntensityd`` adds ``± s * max_shift``; ``RandAdjustContrastd`` applies a gamma in
    ``[1 / g, g]`` with ``g = 1 + s * (max_gamma - 1)``, keeping mean and std (``retain_stats``);
    ``RandHistogramShiftd`` moves control points of a piecewise-linear intensity map by at most
    one control-point spacing, so its magnitude is set through the number of points,
    ``(1 + 5 / s, 1 + 10 / s)``: 6-11 points at s=1, more and smaller moves below.

    Args:
        keys: image key(s), each ``(C, *spatial)``. Labels are never touched.
        label_keys: accepted for a uniform signature; never modified.
        strength: magnitude in [0, 1]; 0 returns an empty (identity) ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3 (validated; intensity transforms work on both).
        max_scale: relative intensity scaling at strength 1.
        max_shift: absolute intensity offset at strength 1.
        max_gamma: largest gamma at strength 1 (> 1; the smallest is its inverse).
        histogram_shift: include ``RandHistogramShiftd``.

    Returns:
        A ``Compose`` of MONAI random transforms.

    Raises:
        ConfigError: for invalid arguments.
    """
    image_keys, _, s, prob, _ = _common(keys, label_keys, strength, prob, spatial_dims)
    check_positive(max_scale, "max_scale", allow_zero=True)
    check_positive(max_shift, "max_shift", allow_zero=True)
    if check_positive(max_gamma, "max_gamma") < 1.0:
        raise ConfigError(f"max_gamma must be >= 1, got {max_gamma}")
    if s == 0.0:
        return Compose([])
    gamma = 1.0 + s * (max_gamma - 1.0)
    transforms: list[Callable[..., Any]] = [
        RandScaleIntensityd(image_keys, factors=max_scale * s, prob=prob),
        RandShiftIntensityd(image_keys, offsets=max_shift * s, prob=prob),
        RandAdjustContrastd(image_keys, gamma=(1.0 / gamma, gamma), retain_stats=True, prob=prob),
    ]
    if histogram_shift:
        points = (max(3, round(1 + 5 / s)), max(3, round(1 + 10 / s)))
        transforms.append(RandHistogramShiftd(image_keys, num_control_points=points, prob=prob))
    return Compose(transforms)


def noise_augmentation(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    noise_kind: str = "gaussian",
    max_std: float = 0.1,
    filters: bool = True,
) -> Compose:
    """Random additive noise, then either Gaussian smoothing or sharpening.

    At ``strength`` s: noise std drawn from ``[0, s * max_std]`` (``RandGaussianNoised``, absolute
    units) or, for ``"rician"``, relative to the image std (``RandRicianNoised(relative=True)``).
    Rician noise returns magnitudes (``sqrt((x + n1)^2 + n2^2) >= 0``), so it only makes sense on
    non-negative magnitude images, not on z-scored ones; ``"any"`` picks one of the two per call.
    Then ``OneOf``: ``RandGaussianSmoothd`` with sigma in ``[0.25 s, s]`` voxels, or
    ``RandGaussianSharpend`` (unsharp mask: sigma1 ``[0.25 s, 0.5 s]``, sigma2 0.5,
    alpha ``[2 s, 6 s]``).

    Args:
        keys: image key(s), each ``(C, *spatial)``. Labels are never touched.
        label_keys: accepted for a uniform signature; never modified.
        strength: magnitude in [0, 1]; 0 returns an empty (identity) ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3.
        noise_kind: ``"gaussian"``, ``"rician"`` or ``"any"``.
        max_std: noise std at strength 1.
        filters: include the smoothing/sharpening step.

    Returns:
        A ``Compose`` of MONAI random transforms.

    Raises:
        ConfigError: for invalid arguments.
    """
    image_keys, _, s, prob, _ = _common(keys, label_keys, strength, prob, spatial_dims)
    noise_kind = check_choice(noise_kind, "noise_kind", _NOISE_KINDS)
    check_positive(max_std, "max_std", allow_zero=True)
    if s == 0.0:
        return Compose([])
    std = max_std * s
    gaussian = RandGaussianNoised(image_keys, prob=prob, std=std)
    rician = RandRicianNoised(image_keys, prob=prob, std=std, relative=True, channel_wise=True)
    noise = {"gaussian": gaussian, "rician": rician}.get(noise_kind) or OneOf([gaussian, rician])
    transforms: list[Callable[..., Any]] = [noise]
    if filters:
        smooth_sigma = (0.25 * s, s)
        sharp_sigma = (0.25 * s, 0.5 * s)
        transforms.append(
            OneOf(
                [
                    RandGaussianSmoothd(
                        image_keys, sigma_x=smooth_sigma, sigma_y=smooth_sigma, sigma_z=smooth_sigma, prob=prob
                    ),
                    RandGaussianSharpend(
                        image_keys,
                        sigma1_x=sharp_sigma,
                        sigma1_y=sharp_sigma,
                        sigma1_z=sharp_sigma,
                        sigma2_x=0.5,
                        sigma2_y=0.5,
                        sigma2_z=0.5,
                        alpha=(2.0 * s, 6.0 * s),
                        prob=prob,
                    ),
                ]
            )
        )
    return Compose(transforms)


def mri_artifact_augmentation(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    bias_field: bool = True,
    gibbs: bool = True,
    spikes: bool = True,
) -> Compose:
    """MRI acquisition artefacts: bias field, Gibbs ringing and k-space spikes (images only).

    At ``strength`` s: ``RandBiasFieldd`` (degree-3 polynomial log-field, coefficients in
    ``±0.1 s``: multiplies intensities by roughly 0.65-1.45 at s=1); ``RandGibbsNoised`` with
    alpha in ``[0.1 s, 0.6 s]`` (fraction of k-space truncated); :class:`RandKSpaceSpiked` with a
    stripe amplitude of ``[0.05 s, 0.3 s]`` times the channel std (MONAI's
    ``RandKSpaceSpikeNoised`` takes absolute log-intensities, see its docstring).

    Args:
        keys: image key(s), each ``(C, *spatial)``. Labels are never touched.
        label_keys: accepted for a uniform signature; never modified.
        strength: magnitude in [0, 1]; 0 returns an empty (identity) ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3.
        bias_field: include the bias field.
        gibbs: include Gibbs ringing.
        spikes: include k-space spikes.

    Returns:
        A ``Compose`` of random transforms.

    Raises:
        ConfigError: for invalid arguments.
    """
    image_keys, _, s, prob, _ = _common(keys, label_keys, strength, prob, spatial_dims)
    if s == 0.0:
        return Compose([])
    transforms: list[Callable[..., Any]] = []
    if bias_field:
        transforms.append(RandBiasFieldd(image_keys, degree=3, coeff_range=(-0.1 * s, 0.1 * s), prob=prob))
    if gibbs:
        transforms.append(RandGibbsNoised(image_keys, alpha=(0.1 * s, 0.6 * s), prob=prob))
    if spikes:
        transforms.append(RandKSpaceSpiked(image_keys, amplitude_range=(0.05 * s, 0.3 * s), prob=prob))
    return Compose(transforms)


def resolution_augmentation(
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    thick_slice_axes: Sequence[int] | None = None,
    max_thickness: float = 5.0,
) -> Compose:
    """Lower resolution, isotropically or as thick slices, keeping the shape (images only).

    ``OneOf`` (equal odds, then each fires with ``prob``):

    - ``RandSimulateLowResolutiond``: all axes zoomed by a factor in ``[1 - 0.5 s, 1 - 0.1 s]``
      (``area`` down, linear up);
    - :class:`RandThickSliced`: one random axis from ``thick_slice_axes`` averaged over
      ``[1 + s, 1 + s * (max_thickness - 1)]`` voxels and interpolated back (MONAI has no
      anisotropic variant; clinical MRI/CT often has 3-6 mm slices).

    Args:
        keys: image key(s), each ``(C, *spatial)``. Labels are never touched (a thick-slice label
            would be fractional; the label keeps describing the true anatomy).
        label_keys: accepted for a uniform signature; never modified.
        strength: magnitude in [0, 1]; 0 returns an empty (identity) ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3.
        thick_slice_axes: spatial axes that may become thick; ``None`` means all.
        max_thickness: slice thickness in voxels at strength 1, >= 2.

    Returns:
        A ``Compose`` of random transforms.

    Raises:
        ConfigError: for invalid arguments.
    """
    image_keys, _, s, prob, dims = _common(keys, label_keys, strength, prob, spatial_dims)
    if check_positive(max_thickness, "max_thickness") < 2.0:
        raise ConfigError(f"max_thickness must be >= 2, got {max_thickness}")
    axes = None if thick_slice_axes is None else tuple(thick_slice_axes)
    if axes is not None:
        if not axes or any(isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < dims for a in axes):
            raise ConfigError(f"thick_slice_axes must be None or spatial axes in 0..{dims - 1}, got {list(axes)}")
    if s == 0.0:
        return Compose([])
    low_res = RandSimulateLowResolutiond(
        image_keys,
        prob=prob,
        downsample_mode="area",
        upsample_mode="trilinear" if dims == 3 else "bilinear",
        zoom_range=(1.0 - 0.5 * s, 1.0 - 0.1 * s),
    )
    thick = RandThickSliced(
        image_keys, prob=prob, factor_range=(1.0 + s, 1.0 + s * (max_thickness - 1.0)), axes=axes
    )
    return Compose([OneOf([low_res, thick])])


AUGMENTATIONS: Mapping[str, Callable[..., Compose]] = MappingProxyType(
    {
        "spatial": spatial_augmentation,
        "intensity": intensity_augmentation,
        "noise": noise_augmentation,
        "mri_artifacts": mri_artifact_augmentation,
        "resolution": resolution_augmentation,
    }
)
"""Augmentation families by name: ``name -> factory(keys, *, label_keys, strength, prob,
spatial_dims, **options) -> Compose``."""


def augmentation_preset(
    names: str | Sequence[str],
    keys: KeysLike = "image",
    *,
    label_keys: KeysLike | None = "label",
    strength: float = 0.5,
    prob: float = 0.3,
    spatial_dims: int = 3,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Compose:
    """Compose augmentation families by name, applied in the order given.

    A sensible order is ``["spatial", "mri_artifacts", "resolution", "intensity", "noise"]``
    (geometry first, acquisition effects next, noise last).

    Args:
        names: family name(s) from :data:`AUGMENTATIONS`, each at most once.
        keys: image key(s), each ``(C, *spatial)``.
        label_keys: label key(s) (moved by ``"spatial"`` only); optional in the data.
        strength: magnitude in [0, 1] shared by all families; 0 gives an empty ``Compose``.
        prob: probability of each transform.
        spatial_dims: 2 or 3.
        options: per-family extra keyword arguments, e.g.
            ``{"spatial": {"flip_axes": ()}, "noise": {"noise_kind": "rician"}}``.

    Returns:
        One flat ``Compose`` (``OneOf`` groups stay grouped); seed it with ``set_random_state``.

    Raises:
        ConfigError: (a ``ValueError``) for unknown or repeated names, unknown options, or
            invalid values, listing the valid choices.
    """
    name_list = [names] if isinstance(names, str) else list(names)
    valid = ", ".join(AUGMENTATIONS)
    if not name_list:
        raise ConfigError(f"augmentation_preset needs at least one name; valid names: {valid}")
    for name in name_list:
        if not isinstance(name, str) or name not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {name!r}; valid names: {valid}")
    if len(set(name_list)) != len(name_list):
        raise ConfigError(f"augmentation names must not repeat, got {name_list}")
    options = dict(options or {})
    extra = sorted(set(options) - set(name_list))
    if extra:
        raise ConfigError(f"options given for augmentation(s) {extra} that are not in names {name_list}")
    transforms: list[Callable[..., Any]] = []
    for name in name_list:
        factory = AUGMENTATIONS[name]
        family_options = dict(options.get(name) or {})
        reserved = sorted(set(family_options) & {"keys", "label_keys", "strength", "prob", "spatial_dims"})
        if reserved:
            raise ConfigError(f"options[{name!r}] must not set {reserved}; pass them to augmentation_preset")
        check_kwargs(factory, family_options, f"augmentation {name!r}")
        part = factory(
            keys,
            label_keys=label_keys,
            strength=strength,
            prob=prob,
            spatial_dims=spatial_dims,
            **family_options,
        )
        transforms.extend(part.transforms)
    logger.debug(
        "augmentation_preset %s (strength=%s, prob=%s): %d transforms", name_list, strength, prob, len(transforms)
    )
    return Compose(transforms)
