"""Saliency maps: Grad-CAM and occlusion sensitivity in 2D/3D, default layers, maps on the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import nn

import medcnn
from medcnn.explain import default_target_layer, grad_cam, occlusion_sensitivity
from medcnn.models import create_model
from medcnn.predictor import Model


class _GapNet(nn.Module):
    """conv 1x1 -> ReLU -> global average -> logits (-s, +s): class 1 grows with bright voxels anywhere."""

    def __init__(self, sd: int) -> None:
        super().__init__()
        self.conv = (nn.Conv3d if sd == 3 else nn.Conv2d)(1, 4, 1)
        self.act = nn.ReLU(inplace=True)
        nn.init.constant_(self.conv.weight, 1.0)
        nn.init.constant_(self.conv.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.act(self.conv(x)).flatten(1).mean(1)
        return torch.stack([-score, score], dim=1)


@pytest.mark.parametrize("sd", [2, 3])
def test_grad_cam_and_occlusion_find_the_deciding_region(sd: int) -> None:
    spatial = (24,) * sd
    box = (slice(None),) + (slice(4, 10),) * sd
    far = (slice(None),) + (slice(14, None),) * sd
    net = _GapNet(sd)
    x = torch.zeros(1, *spatial)
    x[box] = 1.0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cam = grad_cam(net, x, 1, target_layer="act")
    assert cam.shape == spatial and cam.dtype == torch.float32
    assert float(cam.min()) >= 0.0 and float(cam.max()) == pytest.approx(1.0)
    assert float(cam[box[1:]].mean()) > 0.9 and float(cam[far[1:]].max()) < 0.05
    assert float(grad_cam(net, x, 0, target_layer="act").max()) == 0.0  # nothing supports class 0
    occ = occlusion_sensitivity(net, x, 1, mask_size=6, stride=3, mode=0.0)
    assert occ.shape == spatial and float(occ.min()) >= 0.0 and float(occ.max()) == pytest.approx(1.0)
    assert float(occ[box[1:]].mean()) > 0.5 and float(occ[far[1:]].max()) < 0.05
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the caller's network changed"
    assert not net.act._forward_hooks and not net.act._backward_hooks and net.act.inplace, "hooks left on the caller's network"


def test_grad_cam_frees_its_network_copy() -> None:
    """Each call works on a copy of the network; MONAI's hook wrapper and the autograd graph it keeps form a
    cycle the garbage collector cannot free, which kept every copy alive (+50 MB per radiograph in a batch)."""
    import gc

    net = _GapNet(2)
    x = torch.zeros(1, 16, 16)
    x[:, 4:8, 4:8] = 1.0
    for _ in range(3):
        grad_cam(net, x, 1, target_layer="act")
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, _GapNet)]
    assert alive == [net], f"{len(alive) - 1} network copies outlived grad_cam"


@pytest.mark.parametrize("name", ["compact-cnn", "resnet18", "densenet121"])
def test_default_target_layer_is_spatial(name: str) -> None:
    net = create_model(name, spatial_dims=3, **({"channels": [4, 8]} if name == "compact-cnn" else {}))
    layer = default_target_layer(net)
    assert layer in dict(net.named_modules())
    expected = {"resnet18": "layer4", "densenet121": "class_layers.relu", "compact-cnn": "features.12"}[name]
    assert layer == expected
    if name == "resnet18":  # a small input pools layer4 to one voxel: use the last layer still spatial
        small = default_target_layer(net, torch.randn(1, 24, 24, 24))
        assert small != "layer4" and small.startswith("layer3")
    if name == "compact-cnn":
        x = torch.randn(1, 16, 20, 16)
        heat = grad_cam(net, x, 0)
        assert heat.shape == x.shape[1:] and 0.0 <= float(heat.min()) <= float(heat.max()) <= 1.0


def test_bad_arguments() -> None:
    net = create_model("compact-cnn", spatial_dims=2, channels=[4])
    x = torch.randn(1, 16, 16)
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(net, x, 5)
    with pytest.raises(ValueError, match="no layer"):
        grad_cam(net, x, 0, target_layer="nope")
    with pytest.raises(ValueError, match="shape|tensor"):
        grad_cam(net, torch.randn(16), 0)
    with pytest.raises(ValueError, match="stride"):
        occlusion_sensitivity(net, x, 0, mask_size=4, stride=8)
    with pytest.raises(ValueError, match="NaN"):
        occlusion_sensitivity(net, torch.full((1, 16, 16), float("nan")), 0)


def _oblique_t1(tmp_path) -> MetaTensor:
    """A bright ellipsoid 'brain' stored LPS-like and oblique with 3 mm voxels, loaded with medcnn.load."""
    import nibabel as nib

    shape = (30, 26, 22)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    vol = (((ii - 15) / 10) ** 2 + ((jj - 13) / 9) ** 2 + ((kk - 11) / 7) ** 2 < 1).astype(np.float32) * 100
    vol += np.random.default_rng(0).normal(0, 1, shape).astype(np.float32) * (vol > 0)
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array([[-3 * c, -3 * s, 0, 40], [3 * s, -3 * c, 0, 20], [0, 0, 3, -30], [0, 0, 0, 1]], dtype=float)
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(vol, aff), str(path))
    return medcnn.load(path)


def _tiny_classifier(multilabel: bool = False, size=(16, 20, 16)) -> Model:
    torch.manual_seed(0)
    net = create_model("compact-cnn", spatial_dims=3, channels=[4, 8])
    cfg = {"task": "classification", "model": {"name": "compact-cnn", "kwargs": {"channels": [4, 8]}},
           "preprocess": {"orientation": "RAS", "spacing": [4.0, 4.0, 4.0], "normalize": "brain_mri",
                          "crop_foreground": True, "size": list(size), "in_channels": 1},
           "inference": {}, "labels": {"classes": ["CN", "AD"], "multilabel": multilabel}, "metrics": {}}
    return Model(net, cfg)


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_model_saliency_lands_on_the_input_grid(tmp_path, method: str) -> None:
    import nibabel as nib

    img = _oblique_t1(tmp_path)
    model = _tiny_classifier(size=(12, 14, 12))  # smaller than the 'brain' box: exercises the crop inverse
    probs = model.predict_proba(img)
    assert probs.shape == (2,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    heat = model.saliency(img, method=method, **({"mask_size": 4, "stride": 4} if method == "occlusion" else {}))
    assert isinstance(heat, MetaTensor) and tuple(heat.shape) == (1, *img.shape[1:])
    np.testing.assert_allclose(heat.affine.numpy(), img.affine.numpy())
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    out = medcnn.save(heat, tmp_path / "heat.nii.gz", like=img)
    src = nib.load(str(tmp_path / "t1.nii.gz"))
    saved = nib.load(str(out))
    assert saved.shape == src.shape
    np.testing.assert_allclose(saved.affine, src.affine, atol=1e-4)


def test_predict_proba_sigmoid_for_multilabel_and_size_padding(tmp_path) -> None:
    img = _oblique_t1(tmp_path)
    model = _tiny_classifier(multilabel=True, size=(24, 24, 24))  # larger than the box: padded
    probs = model.predict_proba(img)
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()
    with torch.no_grad():
        x, info, _ = model.prepare_input(img)
        assert tuple(x.shape) == (1, 24, 24, 24) and "pads" in info
        ref = torch.sigmoid(model.network(x[None]))[0]
    torch.testing.assert_close(probs, ref)
    heat = model.saliency(img, class_index=1)
    assert tuple(heat.shape) == (1, *img.shape[1:])
    with pytest.raises(TypeError):
        Model(create_model("unet", channels=[4, 8], strides=[2]), {"task": "segmentation"}).predict_proba(img)


def test_saliency_follows_the_anatomy_through_resampling_crop_and_padding(tmp_path) -> None:
    """A network whose evidence is the voxel intensity: the map must light up the ellipsoid, on the file's grid."""
    img = _oblique_t1(tmp_path)
    cfg = _tiny_classifier(size=(20, 20, 16)).config
    cfg["preprocess"] = dict(cfg["preprocess"], normalize="none")
    model = Model(_GapNet(3), cfg)
    heat = model.saliency(img, class_index=1, target_layer="act")[0].numpy()
    inside = img[0].numpy() > 50
    core = inside & (np.abs(np.gradient(inside.astype(float))).sum(0) == 0)  # away from the edge
    assert heat[core].mean() > 0.8
    assert heat[~inside].mean() < 0.15
