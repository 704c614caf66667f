"""nnU-Net v2 model folders: the preprocessing pieces, a tiny random model folder, and (where nnunetv2 is
installed) the prediction against nnU-Net's own predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import medcnn
from medcnn.errors import InputError
from medcnn.foreign import nnunet as nn_

# ----------------------------------------------------------------------------- pieces (no nnU-Net needed)


def test_nonzero_crop_fills_holes_and_keeps_the_box():
    data = np.zeros((2, 10, 9, 8), np.float32)
    data[0, 2:7, 3:8, 1:6] = 5.0
    data[0, 4, 5, 3] = 0.0  # a hole inside: still foreground
    data[1, 8, 4, 4] = -1.0  # another channel widens the box
    cropped, mask, box = nn_.nonzero_crop(data)
    assert box == [(2, 9), (3, 8), (1, 6)]
    assert cropped.shape == (2, 7, 5, 5)
    assert mask[2, 2, 2] and mask.sum() == 5 * 5 * 5 + 1
    empty = nn_.nonzero_crop(np.zeros((1, 4, 5, 6), np.float32))
    assert empty[2] == [(0, 4), (0, 5), (0, 6)]


def test_normalisation_schemes():
    rng = np.random.default_rng(0)
    data = np.zeros((2, 8, 8, 8), np.float32)
    data[:, 2:6, 2:6, 2:6] = rng.normal(100, 20, (2, 4, 4, 4))
    mask = data[0] != 0
    props = {"1": {"percentile_00_5": 80.0, "percentile_99_5": 120.0, "mean": 100.0, "std": 10.0}}
    out = nn_.normalize_channels(data, mask, ["ZScoreNormalization", "CTNormalization"], [True, False], props)
    assert abs(out[0][mask].mean()) < 1e-5 and abs(out[0][mask].std() - 1) < 1e-5
    assert (out[0][~mask] == 0).all()  # outside the mask untouched
    assert out[1].min() >= -2.0 - 1e-6 and out[1].max() <= 2.0 + 1e-6  # clipped to 80..120, then (x-100)/10
    np.testing.assert_allclose(out[1][~mask], (80.0 - 100.0) / 10.0)
    whole = nn_.normalize_channels(data[:1], mask, ["ZScoreNormalization"], [False], {})
    assert abs(whole.mean()) < 1e-5 and abs(whole.std() - 1) < 1e-4
    with pytest.raises(ValueError, match="not implemented"):
        nn_.normalize_channels(data[:1], mask, ["MyOwnNormalization"], [False], {})


def test_separate_z_rules():
    assert nn_.separate_axis([4.0, 1.0, 1.0], [2.0, 1.0, 1.0]) == 0  # source anisotropic
    assert nn_.separate_axis([1.0, 1.0, 1.0], [1.0, 1.0, 3.5]) == 2  # target anisotropic
    assert nn_.separate_axis([1.0, 1.2, 1.1], [1.0, 1.0, 1.0]) is None
    assert nn_.separate_axis([0.24, 1.25, 1.25], [1.0, 1.0, 1.0]) is None  # two low-resolution axes
    assert nn_.separate_axis([1.0, 1.0, 1.5], [1.0, 1.0, 1.0], force=True) == 2
    assert nn_.separate_axis([4.0, 1.0, 1.0], [1.0, 1.0, 1.0], force=False) is None
    assert nn_.target_shape((10, 20, 30), (4.0, 1.0, 1.5), (2.0, 1.0, 1.0)) == [20, 20, 45]


def test_resample_separate_z_is_inplane_then_nearest_along_z():
    from skimage.transform import resize

    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 3, 6, 5)).astype(np.float32)
    out = nn_.resample(data, (6, 12, 10), (4.0, 1.0, 1.0), (2.0, 0.5, 0.5), order=3, order_z=0)
    assert out.shape == (1, 6, 12, 10) and out.dtype == np.float32
    inplane = [resize(data[0, z].astype(np.float64), (12, 10), order=3, mode="edge", anti_aliasing=False) for z in range(3)]
    for z in range(6):  # pixel-centre nearest: 0,0,1,1,2,2
        np.testing.assert_allclose(out[0, z], inplane[z // 2], atol=1e-5)
    same = nn_.resample(data, (3, 6, 5), (4.0, 1.0, 1.0), (4.0, 1.0, 1.0))
    np.testing.assert_array_equal(same, data)
    iso = nn_.resample(data, (3, 12, 10), (1.0, 1.0, 1.0), (1.0, 0.5, 0.5), order=1)
    np.testing.assert_allclose(iso[0], resize(data[0].astype(np.float64), (3, 12, 10), order=1, mode="edge",
                                              anti_aliasing=False), atol=1e-5)


def test_window_starts_gaussian_and_blending():
    assert nn_.window_starts(110, 64) == [0, 23, 46]
    assert nn_.window_starts(64, 64) == [0]
    assert nn_.window_starts(100, 64) == [0, 18, 36]
    g = nn_.gaussian_importance((9, 8, 7))
    assert float(g.max()) == pytest.approx(10.0) and float(g[4, 4, 3]) == pytest.approx(10.0) and float(g.min()) > 0
    x = torch.randn(1, 21, 19, 17)
    # a predictor that copies its input: blending must give the input back exactly
    out = nn_.sliding_window_logits(x, lambda b: b.repeat(1, 2, 1, 1, 1), (9, 8, 7), num_classes=2, sw_batch_size=3)
    torch.testing.assert_close(out, x.repeat(2, 1, 1, 1))
    padded, crop = nn_.pad_to_patch(torch.ones(2, 5, 9, 3), (8, 8, 8))
    assert padded.shape == (2, 8, 9, 8) and padded[crop].shape == (2, 5, 9, 3) and float(padded.sum()) == 2 * 5 * 9 * 3


def test_mirroring_averages_every_flip_combination():
    calls = []

    def net(x):
        calls.append(x)
        return x

    out = nn_.mirrored(net, [0, 1, 2])(torch.arange(8.0).view(1, 1, 2, 2, 2))
    assert len(calls) == 8
    torch.testing.assert_close(out, torch.arange(8.0).view(1, 1, 2, 2, 2))


# ----------------------------------------------------------------------------- a tiny model folder


def _plans(transpose=(1, 0, 2), regions: bool = False) -> tuple[dict, dict]:
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 16, 16], "median_image_size_in_voxels": [20, 20, 20], "spacing": [1.2, 2.0, 1.0],
        "normalization_schemes": ["CTNormalization", "ZScoreNormalization"], "use_mask_for_norm": [False, True],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    backward = [int(i) for i in np.argsort(transpose)]
    plans = {"dataset_name": "Dataset900_Tiny", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [20, 20, 20],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": list(transpose), "transpose_backward": backward,
             "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {
                 "0": {"max": 300.0, "mean": 80.0, "median": 70.0, "min": -20.0, "percentile_00_5": 0.0,
                       "percentile_99_5": 200.0, "std": 40.0},
                 "1": {"max": 900.0, "mean": 400.0, "median": 390.0, "min": 10.0, "percentile_00_5": 50.0,
                       "percentile_99_5": 800.0, "std": 100.0}}}
    labels = ({"background": 0, "whole": [1, 2], "core": 2} if regions else {"background": 0, "organ": 1, "lesion": 2})
    dataset = {"channel_names": {"0": "CT", "1": "T2"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    if regions:
        dataset["regions_class_order"] = [1, 2]
    return plans, dataset


def make_model_folder(root: Path, transpose=(1, 0, 2), regions: bool = False, seed: int = 0) -> Path:
    """``root/nnUNetTrainer__nnUNetPlans__3d_fullres`` with plans, dataset and a random-init fold_0 checkpoint
    laid out as nnU-Net writes it (numpy scalars in the training log included)."""
    pytest.importorskip("dynamic_network_architectures")
    plans, dataset = _plans(transpose, regions)
    folder = root / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(seed)
    net = nn_.build_network(nn_.read_plan(folder), folder / "plans.json")
    for m in net.modules():  # spread the random logits: clear decisions, few near-ties
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.normal_(m.weight, std=0.3)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                "logging": {"mean_fg_dice": [np.float32(0.5)], "ema_fg_dice": [np.float64(0.4)]},
                "_best_ema": np.float64(0.4), "current_epoch": 1,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                              "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _image(seed: int = 0) -> MetaTensor:
    """A 2-channel (CT-like, MR-like) volume with zero background, anisotropic, on a flipped grid."""
    rng = np.random.default_rng(seed)
    shape = (22, 19, 9)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = (grid ** 2).sum(0) < 0.8
    ct = np.where(body, 60 + 60 * grid[0] + rng.normal(0, 10, shape), 0.0)
    mr = np.where(body, 400 - 150 * grid[1] + rng.normal(0, 30, shape), 0.0)
    affine = np.diag([-1.1, 0.9, 3.6, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    return MetaTensor(torch.as_tensor(np.stack([ct, mr]), dtype=torch.float32), affine=torch.as_tensor(affine))


def test_tiny_model_folder_predicts_on_the_input_grid(tmp_path):
    folder = make_model_folder(tmp_path)
    model = medcnn.load_model(folder)
    assert type(model).__name__ == "NnUNetModel"
    assert model.config["inference"]["tta_axes"] == [0, 1, 2] and model.config["labels"]["names"] == {"1": "organ", "2": "lesion"}
    img = _image()
    pred = model.predict(img)
    assert pred.shape == (1, 22, 19, 9) and pred.dtype == torch.int64
    assert set(np.unique(pred.numpy())) <= {0, 1, 2}
    torch.testing.assert_close(pred.affine, img.affine)
    _, _, box = nn_.nonzero_crop(img.numpy())
    inside = np.zeros(pred.shape[1:], bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert (pred[0].numpy()[~inside] == 0).all() and inside.sum() < inside.size  # outside the crop box: background
    probs = model.predict(img, probabilities=True)
    assert probs.shape == (3, 22, 19, 9)
    torch.testing.assert_close(probs.sum(0), torch.ones(22, 19, 9), atol=1e-5, rtol=0)
    assert model.provenance()["sha256"] and model.provenance()["network"]["format"] == "nnunet"
    remapped = medcnn.load_model(folder, config={"label_map": {1: 2, 2: 1}}).predict(img)
    np.testing.assert_array_equal(remapped.numpy() == 2, pred.numpy() == 1)


def test_refusals(tmp_path):
    folder = make_model_folder(tmp_path)
    with pytest.raises(InputError, match="channel"):
        medcnn.load_model(folder).predict(_image()[:1])
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InputError, match="refused"):
        medcnn.load_model(folder)
    other = make_model_folder(tmp_path / "b")
    torch.save({"network_weights": {}, "evil": _Unpicklable()}, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match="refused"):
        medcnn.load_model(other)
    with pytest.raises(medcnn.ConfigError, match="unknown"):
        medcnn.load_model(make_model_folder(tmp_path / "c"), config={"tile_stepp": 0.5})


class _Unpicklable:
    """Any class: a weights_only load must refuse it."""


# ----------------------------------------------------------------------------- against nnU-Net's own predictor


@pytest.mark.parametrize("regions", [False, True])
def test_matches_nnunetv2_predictor(tmp_path, regions):
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = make_model_folder(tmp_path, regions=regions)
    ours_model = medcnn.load_model(folder)
    img = _image(3)
    ours = ours_model.predict(img)[0].numpy()
    ours_p = ours_model.predict(img, probabilities=True).numpy()

    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    ck = nn_.read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(nn_.build_network(ours_model.plan, folder), manager, manager.get_configuration("3d_fullres"),
                                    [ck["network_weights"]], dataset, "nnUNetTrainer", (0, 1, 2))
    arr = img.numpy().transpose(0, 3, 2, 1)  # SimpleITK order, as nnU-Net reads files
    spacing = [3.6, 0.9, 1.1]
    seg, probs = predictor.predict_single_npy_array(arr, {"spacing": spacing}, None, None, True)
    ref = np.asarray(seg).transpose(2, 1, 0)
    ref_p = np.asarray(probs).transpose(0, 3, 2, 1)
    assert (ours == ref).mean() >= 0.995
    # nnU-Net accumulates weighted window logits in float16 (steps of ~0.03 near a weighted sum of 36), medcnn in
    # float32: where windows overlap a few voxels differ by up to ~0.1 in probability
    diff = np.abs(ours_p - ref_p)
    assert (diff <= 2e-2).mean() >= 0.995 and diff.max() < 0.2
