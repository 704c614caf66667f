"""Named transform presets built from MONAI dictionary transforms.

Inputs are dicts of ``(C, *spatial)`` float32 ``monai.data.MetaTensor`` (what :func:`medcnn.load`
returns); image keys default to ``"image"`` and label keys to ``"label"``. Every preset returns a
``monai.transforms.Compose``.

Model-grid preprocessing (the ``preprocess`` spec stored in every checkpoint, applied identically at
training and inference time): :func:`load_for_model`, :func:`prepare` and its inverses
:func:`restore_to_box` / :func:`uncrop`, in :mod:`medcnn.transforms.model_grid` (also importable as
``medcnn.preprocessing``). Named CT windows, one table for both stacks: :data:`CT_WINDOWS`.

Preprocessing presets (deterministic): :func:`ct_preset`, :func:`brain_mri_preset`,
:func:`chest_xray_preset`, :func:`resample_preset`; by name through :data:`PRESETS` /
:func:`build_preset`.

Training augmentation (random, ``strength`` in [0, 1] with 0 = identity, ``prob`` per transform):
the families in :data:`AUGMENTATIONS` (``spatial``, ``intensity``, ``noise``, ``mri_artifacts``,
``resolution``), composed by :func:`augmentation_preset`.

Transforms MONAI lacks live in :mod:`medcnn.transforms.custom` (thick slices, masked z-score with a
shared mask, pad/crop to square, relative k-space spikes).

Example:
    >>> from medcnn.transforms import brain_mri_preset, augmentation_preset
    >>> pre = brain_mri_preset()
    >>> aug = augmentation_preset(["spatial", "intensity"], strength=0.5)
    >>> aug.set_random_state(0)
    >>> sample = aug(pre({"image": image, "label": label}))
"""

from __future__ import annotations

from medcnn.transforms.augment import (
    AUGMENTATIONS,
    augmentation_preset,
    intensity_augmentation,
    mri_artifact_augmentation,
    noise_augmentation,
    resolution_augmentation,
    spatial_augmentation,
)
from medcnn.transforms.custom import (
    MaskedNormalizeIntensityd,
    RandKSpaceSpiked,
    RandThickSliced,
    SquarePadOrCropd,
    ThickSliced,
    masked_zscore,
    thick_slice,
)
from medcnn.transforms.windows import CT_WINDOWS
from medcnn.transforms.model_grid import (
    load_for_model,
    prepare,
    restore_to_box,
    uncrop,
)
from medcnn.transforms.presets import (
    PRESETS,
    brain_mri_preset,
    build_preset,
    chest_xray_preset,
    ct_preset,
    resample_preset,
)

__all__ = [
    "AUGMENTATIONS",
    "CT_WINDOWS",
    "PRESETS",
    "MaskedNormalizeIntensityd",
    "RandKSpaceSpiked",
    "RandThickSliced",
    "SquarePadOrCropd",
    "ThickSliced",
    "augmentation_preset",
    "brain_mri_preset",
    "build_preset",
    "chest_xray_preset",
    "ct_preset",
    "intensity_augmentation",
    "load_for_model",
    "masked_zscore",
    "mri_artifact_augmentation",
    "noise_augmentation",
    "prepare",
    "resample_preset",
    "resolution_augmentation",
    "restore_to_box",
    "spatial_augmentation",
    "thick_slice",
    "uncrop",
]
