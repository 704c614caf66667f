"""Property tests of medcnn.transforms: presets, augmentation families and the custom transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, NormalizeIntensityd

from medcnn.transforms import (
    AUGMENTATIONS,
    CT_WINDOWS,
    PRESETS,
    RandKSpaceSpiked,
    RandThickSliced,
    ThickSliced,
    augmentation_preset,
    brain_mri_preset,
    build_preset,
    chest_xray_preset,
    ct_preset,
    resample_preset,
    spatial_augmentation,
    thick_slice,
)

INTENSITY_ONLY = ("intensity", "noise", "mri_artifacts", "resolution")
AFFINE_3D = torch.tensor(
    [[-1.5, 0.0, 0.0, 20.0], [0.0, 1.0, 0.0, -10.0], [0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)
AFFINE_2D = torch.tensor([[0.5, 0.0, 3.0], [0.0, 0.5, -2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _blob_labels(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """(1, *shape) float32 label map with values {0, 1, 2, 3}: nested/overlapping balls."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    out = np.zeros(shape, dtype=np.float32)
    n = min(shape)
    for value in (1, 2, 3):
        centre = rng.uniform(0.3 * n, 0.7 * n, size=len(shape)).reshape((-1,) + (1,) * len(shape))
        radius = rng.uniform(0.15 * n, 0.3 * n)
        out[((grid - centre) ** 2).sum(0) < radius**2] = value
    return torch.from_numpy(out)[None]


def _smooth_image(shape: tuple[int, ...], channels: int, seed: int = 0) -> torch.Tensor:
    """(C, *shape) float32 smooth positive image in about [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, channels) + tuple(max(2, s // 4) for s in shape), generator=gen)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=False)[0]


def _case(spatial_dims: int, channels: int = 2) -> dict[str, MetaTensor]:
    shape = (32, 32, 32) if spatial_dims == 3 else (64, 64)
    affine = AFFINE_3D if spatial_dims == 3 else AFFINE_2D
    label = _blob_labels(shape)
    image = _smooth_image(shape, channels) + 0.5 * label / 3.0
    return {"image": MetaTensor(image, affine=affine.clone()), "label": MetaTensor(label, affine=affine.clone())}


def _copy(data: dict[str, MetaTensor]) -> dict[str, MetaTensor]:
    return {k: v.clone() for k, v in data.items()}


def _run(transform: Compose, data: dict[str, MetaTensor], seed: int = 0) -> dict[str, torch.Tensor]:
    transform.set_random_state(seed)
    return transform(_copy(data))


# --------------------------------------------------------------------------------------------------
# augmentation families


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_zero_strength_is_exact_identity(name: str, spatial_dims: int) -> None:
    data = _case(spatial_dims)
    aug = AUGMENTATIONS[name](strength=0.0, prob=1.0, spatial_dims=spatial_dims)
    assert isinstance(aug, Compose)
    out = _run(aug, data)
    for key in ("image", "label"):
        assert torch.equal(out[key], data[key]), key
        assert torch.equal(out[key].affine, data[key].affine)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_zero_strength_preset_of_all_families_is_identity(spatial_dims: int) -> None:
    data = _case(spatial_dims)
    out = _run(augmentation_preset(list(AUGMENTATIONS), strength=0.0, prob=1.0, spatial_dims=spatial_dims), data)
    assert torch.equal(out["image"], data["image"]) and torch.equal(out["label"], data["label"])


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_nonzero_strength_changes_image_and_keeps_meta(name: str, spatial_dims: int) -> None:
    data = _case(spatial_dims)
    out = _run(AUGMENTATIONS[name](strength=0.5, prob=1.0, spatial_dims=spatial_dims), data)
    image = out["image"]
    assert isinstance(image, MetaTensor) and isinstance(out["label"], MetaTensor)
    assert image.shape == data["image"].shape and image.dtype == torch.float32
    assert torch.isfinite(image).all()
    assert (image - data["image"]).abs().mean() > 1e-3
    if name in INTENSITY_ONLY:
        assert torch.equal(out["label"], data["label"])
        assert torch.equal(image.affine, data["image"].affine)
    else:  # MONAI composes flips/affines into .affine, the same for image and label
        assert image.affine.shape == data["image"].affine.shape
        assert torch.allclose(image.affine, out["label"].affine)


@pytest.mark.parametrize("name", INTENSITY_ONLY)
def test_change_grows_with_strength(name: str) -> None:
    data = _case(3)

    def mean_change(strength: float) -> float:
        aug = AUGMENTATIONS[name](strength=strength, prob=1.0, spatial_dims=3)
        return float(np.mean([(_run(aug, data, seed)["image"] - data["image"]).abs().mean() for seed in range(4)]))

    weak, strong = mean_change(0.1), mean_change(1.0)
    assert 0 < weak < strong


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spatial_keeps_labels_integer_and_aligned(spatial_dims: int) -> None:
    data = _case(spatial_dims, channels=1)
    # An image equal to its label map must still equal the label after the transform.
    data["image"] = data["label"].clone()
    labels_before = set(torch.unique(data["label"]).tolist())
    aug = spatial_augmentation(strength=1.0, prob=1.0, spatial_dims=spatial_dims)
    for seed in range(3):
        out = _run(aug, data, seed)
        label = out["label"]
        assert torch.equal(label, label.round()), "labels must stay integer-valued"
        assert set(torch.unique(label).tolist()) <= labels_before, "no new label values"
        assert (label != data["label"]).float().mean() > 0.01, "the label should have moved"
        agreement = (out["image"].round() == label).float().mean()
        assert agreement > 0.95, f"image/label misaligned: {agreement:.3f}"


def test_spatial_works_without_label_and_with_several_keys() -> None:
    data = _case(3)
    aug = spatial_augmentation(keys=("t1", "t2"), label_keys="seg", strength=1.0, prob=1.0)
    out = _run(aug, {"t1": data["image"][:1], "t2": data["image"][:1].clone()})
    assert torch.equal(out["t1"], out["t2"]), "both image keys get the same random geometry"
    assert "seg" not in out


def test_seeded_compose_is_reproducible() -> None:
    data = _case(3)
    names = ["spatial", "mri_artifacts", "resolution", "intensity", "noise"]
    first = _run(augmentation_preset(names, strength=0.7, prob=0.7), data, seed=123)
    again = _run(augmentation_preset(names, strength=0.7, prob=0.7), data, seed=123)
    other = _run(augmentation_preset(names, strength=0.7, prob=0.7), data, seed=124)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["image"], other["image"])


def test_augmentation_preset_options_are_passed_on() -> None:
    aug = augmentation_preset(["spatial", "noise"], options={"spatial": {"flip_axes": (), "elastic": False}})
    kinds = [type(t).__name__ for t in aug.transforms]
    assert "RandFlipd" not in kinds and "Rand3DElasticd" not in kinds and "RandAffined" in kinds


# --------------------------------------------------------------------------------------------------
# custom transforms


def test_thick_slice_averages_along_one_axis_only() -> None:
    ramp = torch.arange(32, dtype=torch.float32)
    along0 = MetaTensor(ramp.view(1, 32, 1, 1).expand(1, 32, 8, 8).clone(), affine=AFFINE_3D)
    # Constant along axis 2: thick slices along axis 2 change nothing.
    assert torch.allclose(thick_slice(along0, axis=2, factor=4.0), along0, atol=1e-6)
    # Along axis 0 a step edge gets blurred over a few voxels; far from it nothing changes.
    step = (along0 > 15.5).float()
    out = ThickSliced("image", axis=0, factor=4.0)({"image": step})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, step.affine)
    assert out.shape == step.shape
    assert ((out > 0.01) & (out < 0.99)).any()
    assert torch.allclose(out[:, :10], step[:, :10], atol=1e-6)
    assert torch.allclose(out[:, -10:], step[:, -10:], atol=1e-6)
    assert float(out.mean()) == pytest.approx(float(step.mean()), abs=0.02)
    assert torch.equal(thick_slice(step, axis=0, factor=1.0), step)


def test_rand_thick_slice_calls_its_deterministic_twin() -> None:
    image = MetaTensor(_smooth_image((16, 16, 16), 1), affine=AFFINE_3D)
    rand = RandThickSliced("image", prob=1.0, factor_range=(2.0, 3.0), axes=(1,))
    rand.set_random_state(7)
    out = rand({"image": image})["image"]
    assert rand._axis == 1 and 2.0 <= rand._factor <= 3.0
    twin = ThickSliced("image", axis=rand._axis, factor=rand._factor)({"image": image})["image"]
    assert torch.equal(out, twin)


def test_kspace_spike_amplitude_is_relative_to_the_image() -> None:
    image = MetaTensor(_smooth_image((16, 16, 16), 1), affine=AFFINE_3D)
    spikes = RandKSpaceSpiked("image", prob=1.0, amplitude_range=(0.3, 0.3))
    diffs = []
    for scale in (1.0, 10.0):
        spikes.set_random_state(0)
        diffs.append((spikes({"image": image * scale})["image"] - image * scale).abs().mean())
    assert diffs[0] > 0
    assert math.isclose(float(diffs[1]), 10 * float(diffs[0]), rel_tol=1e-3)


# --------------------------------------------------------------------------------------------------
# preprocessing presets


def test_ct_preset_clips_window_and_maps_to_out_range() -> None:
    hu = torch.linspace(-2000, 3000, 5001).view(1, 5001, 1, 1)
    data = {"image": MetaTensor(hu, affine=AFFINE_3D), "label": MetaTensor(torch.ones_like(hu), affine=AFFINE_3D)}
    out = ct_preset()(_copy(data))
    image = out["image"]
    assert isinstance(image, MetaTensor) and torch.equal(image.affine, data["image"].affine)
    assert image.min() == 0.0 and image.max() == 1.0
    value_at = {v: float(image[0, int(v + 2000), 0, 0]) for v in (-1000, 0, 500, 1000)}
    assert value_at == pytest.approx({-1000: 0.0, 0: 0.5, 500: 0.75, 1000: 1.0}, abs=1e-6)
    assert torch.equal(out["label"], data["label"])

    low, high = CT_WINDOWS["lung"]
    lung = ct_preset(window="lung", out_range=(-1.0, 1.0))(_copy(data))["image"]
    assert float(lung[0, int(low + 2000), 0, 0]) == pytest.approx(-1.0)
    assert float(lung[0, int(high + 2000), 0, 0]) == pytest.approx(1.0)
    assert lung.min() == -1.0 and lung.max() == 1.0

    unclipped = ct_preset(window=(-1000, 1000), clip=False)(_copy(data))["image"]
    assert float(unclipped.max()) == pytest.approx(2.0) and float(unclipped.min()) == pytest.approx(-0.5)


def test_brain_mri_preset_zscores_inside_a_shared_mask() -> None:
    shape = (24, 24, 24)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    brain = ((grid - 11.5) ** 2).sum(0) < 9.0**2
    gen = torch.Generator().manual_seed(0)
    image = torch.zeros((2,) + shape)
    image[0][brain] = 100 + 20 * torch.rand(int(brain.sum()), generator=gen)
    image[1][brain] = 5 + 2 * torch.rand(int(brain.sum()), generator=gen)
    hole = brain & (grid[0] < 8)  # channel 1 is exactly zero in part of the brain
    image[1][hole] = 0.0
    data = {"image": MetaTensor(image, affine=AFFINE_3D)}

    out = brain_mri_preset()(_copy(data))["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert torch.equal(out[:, ~brain], torch.zeros_like(out[:, ~brain])), "background stays exactly 0"
    for channel in range(2):
        inside = out[channel][brain].double()
        assert abs(float(inside.mean())) < 1e-5
        assert float(inside.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    # The zeros inside the brain are normalised like any brain voxel (shared mask), unlike MONAI's
    # per-channel nonzero mask, which leaves them at 0.
    assert (out[1][hole] < -1.0).all()
    monai_out = NormalizeIntensityd("image", nonzero=True, channel_wise=True)(_copy(data))["image"]
    assert (monai_out[1][hole] == 0).all()

    masked = brain_mri_preset(mask_key="brain")(
        {"image": data["image"].clone(), "brain": MetaTensor(brain[None].float(), affine=AFFINE_3D)}
    )["image"]
    assert torch.allclose(masked, out, atol=1e-6)

    whole = brain_mri_preset(nonzero=False)(_copy(data))["image"]
    assert abs(float(whole[0].mean())) < 1e-4 and float(whole[0].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("square", ["pad", "crop"])
@pytest.mark.parametrize("shape", [(80, 50), (40, 96)])
def test_chest_xray_preset_square_output_and_binary_labels(square: str, shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    image = 4000 * torch.rand((1,) + shape, generator=gen)
    label = torch.zeros((1,) + shape)
    label[:, shape[0] // 4 : 3 * shape[0] // 4, shape[1] // 4 : 3 * shape[1] // 4] = 1
    data = {"image": MetaTensor(image, affine=AFFINE_2D), "label": MetaTensor(label, affine=AFFINE_2D)}
    preset = chest_xray_preset(size=64, square=square)
    out = preset(_copy(data))
    assert out["image"].shape == (1, 64, 64) and out["label"].shape == (1, 64, 64)
    assert isinstance(out["image"], MetaTensor) and out["image"].affine.shape == (3, 3)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    if square == "pad":  # the padded band is the image minimum (0)
        long_axis = int(np.argmax(shape))
        border = out["image"][0, :, 0] if long_axis == 0 else out["image"][0, 0, :]
        assert torch.equal(border, torch.zeros_like(border))

    # The spatial steps invert: a prediction on the 64x64 grid maps back onto the input pixels.
    pred = {**out, "pred": out["label"].clone()}
    back = Invertd(keys="pred", transform=preset, orig_keys="image", nearest_interp=True)(pred)["pred"]
    assert back.shape == label.shape
    if square == "pad":
        assert (back == label).float().mean() > 0.97
    assert torch.allclose(back.affine.double(), AFFINE_2D, atol=1e-6)


def test_chest_xray_preset_mean_std() -> None:
    image = MetaTensor(torch.linspace(0, 1, 64 * 64).view(1, 64, 64), affine=AFFINE_2D)
    out = chest_xray_preset(size=32, percentiles=(0, 100), mean_std=(0.5, 0.25))({"image": image})["image"]
    assert out.shape == (1, 32, 32)
    assert float(out.min()) == pytest.approx(-2.0, abs=0.05) and float(out.max()) == pytest.approx(2.0, abs=0.05)


def test_resample_preset_reorients_and_resamples() -> None:
    data = _case(3, channels=1)  # affine: spacing (1.5, 1, 2), first axis flipped (L)
    out = resample_preset(spacing=1.0)(_copy(data))
    image, label = out["image"], out["label"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert torch.allclose(image.affine[:3, :3].double(), torch.eye(3, dtype=torch.float64), atol=1e-6)  # RAS, 1 mm
    assert image.shape[1:] == label.shape[1:]
    assert abs(image.shape[1] - 48) <= 1 and image.shape[2] == 32 and abs(image.shape[3] - 64) <= 1
    assert torch.equal(label, label.round())
    assert set(torch.unique(label).tolist()) <= set(torch.unique(data["label"]).tolist())
    only_orientation = resample_preset(orientation="LAS", spacing=None)(_copy(data))["image"]
    assert torch.equal(only_orientation, data["image"])  # already LAS
    assert torch.equal(resample_preset(orientation="RAS")(_copy(data))["image"], data["image"].flip(1))


def test_build_preset_by_name() -> None:
    assert set(PRESETS) == {"ct", "brain_mri", "chest_xray", "resample"}
    preset = build_preset("ct", window="bone")
    assert isinstance(preset, Compose)


# --------------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: ct_preset(window="liver"), "soft_tissue, lung, bone, brain"),
        (lambda: ct_preset(window=(100, -100)), "low < high"),
        (lambda: ct_preset(window=(0,)), "pair"),
        (lambda: ct_preset(out_range=(1, 1)), "low < high"),
        (lambda: augmentation_preset(["spatial", "blur"]), "spatial, intensity, noise, mri_artifacts, resolution"),
        (lambda: augmentation_preset([]), "valid names"),
        (lambda: augmentation_preset(["noise", "noise"]), "repeat"),
        (lambda: augmentation_preset(["noise"], options={"spatial": {}}), "not in names"),
        (lambda: augmentation_preset(["noise"], options={"noise": {"sigma": 1}}), "noise_kind"),
        (lambda: augmentation_preset(["noise"], strength=1.5), "strength"),
        (lambda: spatial_augmentation(strength=-0.1), "strength"),
        (lambda: spatial_augmentation(strength=float("nan")), "strength"),
        (lambda: spatial_augmentation(prob=2.0), "prob"),
        (lambda: spatial_augmentation(spatial_dims=4), "spatial_dims"),
        (lambda: spatial_augmentation(flip_axes=(3,)), "flip_axes"),
        (lambda: spatial_augmentation(padding_mode="wrap"), "zeros, border, reflection"),
        (lambda: AUGMENTATIONS["noise"](noise_kind="poisson"), "gaussian, rician, any"),
        (lambda: build_preset("mri"), "ct, brain_mri, chest_xray, resample"),
        (lambda: build_preset("ct", windw="lung"), "window"),
        (lambda: chest_xray_preset(square="stretch"), "pad, crop"),
        (lambda: chest_xray_preset(size=0), "size"),
        (lambda: chest_xray_preset(image_mode="cubic"), "area, bilinear"),
        (lambda: resample_preset(spacing=None, orientation=None), "spacing"),
        (lambda: resample_preset(spacing=(1.0, -1.0, 1.0)), "spacing"),
        (lambda: resample_preset(orientation="RRS"), "orientation"),
        (lambda: ct_preset(keys=("image", "image")), "unique"),
        (lambda: spatial_augmentation(keys="image", label_keys="image"), "overlap"),
    ],
)
def test_bad_arguments_raise_value_error(call, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert fragment in str(info.value)
