"""CpuConvMode (oneDNN routing, sub-pixel transposed convs) and the separable blending normaliser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference as monai_swi
from monai.networks.nets import UNet

from medcnn.inference import sliding_window_inference
from medcnn.inference.fast_conv import CpuConvMode, onednn_available, subpixel_conv_transpose3d
from medcnn.inference.sliding_window import _Blender, _WindowPlan

TOL = 1e-4


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("c_in,c_out,bias", [(5, 3, True), (4, 1, False), (2, 9, True)])
def test_subpixel_transpose_equals_conv_transpose3d(c_in: int, c_out: int, bias: bool) -> None:
    x = _randn(2, c_in, 5, 6, 7)
    w = _randn(c_in, c_out, 3, 3, 3, seed=2)
    b = _randn(c_out, seed=3) if bias else None
    ref = F.conv_transpose3d(x, w, b, stride=2, padding=1, output_padding=1)
    out = subpixel_conv_transpose3d(x, w, b)
    assert out.shape == ref.shape == (2, c_out, 10, 12, 14)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


@pytest.mark.skipif(not onednn_available(), reason="needs a PyTorch build with oneDNN")
def test_mode_reroutes_and_matches_default_backends(unet: torch.nn.Module) -> None:
    x = _randn(1, 2, 24, 20, 16)
    with torch.inference_mode():
        ref = unet(x)
        mode = CpuConvMode()
        with mode:
            out = unet(x)
    # 3 encoder units (2 convs + residual), bottom, 2 decoder units: all conv3d; the top 3-channel up-conv is sub-pixel
    assert mode.rerouted >= 8
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_mode_steps_aside_with_grad_and_for_unhandled_arguments() -> None:
    conv = torch.nn.Conv3d(2, 3, 3, padding="same")
    x = _randn(1, 2, 6, 6, 6)
    mode = CpuConvMode()
    with mode:
        out = conv(x)  # grad enabled: untouched, and gradients still flow
        out.sum().backward()
        with torch.inference_mode():
            conv(x)  # padding="same" is not rerouted
    assert conv.weight.grad is not None
    assert mode.rerouted == 0
    with torch.inference_mode(), CpuConvMode() as m2:
        F.conv3d(x, conv.weight, conv.bias, padding=1)
    assert m2.rerouted == (1 if onednn_available() else 0)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_fast_conv_sliding_window_equals_monai_and_slow_path(unet: torch.nn.Module, mode: str) -> None:
    x = _randn(1, 2, 40, 36, 28, seed=4)
    with torch.no_grad():
        ref = monai_swi(x, (24, 24, 16), 1, unet, overlap=0.5, mode=mode)
    fast = sliding_window_inference(x, (24, 24, 16), 1, unet, 0.5, mode, precision="fp32")
    slow = sliding_window_inference(x, (24, 24, 16), 1, unet, 0.5, mode, precision="fp32", fast_cpu_conv=False)
    assert (fast - ref).abs().max().item() < TOL
    assert (slow - ref).abs().max().item() < TOL


def test_non_separable_weight_map_uses_the_full_normaliser() -> None:
    """A random importance map is not separable: the full-map fallback must still equal MONAI."""
    net = torch.nn.Conv3d(1, 2, 1)
    x = _randn(1, 1, 21, 19, 17, seed=5)
    wmap = _randn(8, 8, 8, seed=6).abs() + 0.1
    with torch.no_grad():
        ref = monai_swi(x, (8, 8, 8), 2, net, overlap=0.4, roi_weight_map=wmap)
    out = sliding_window_inference(x, (8, 8, 8), 2, net, 0.4, roi_weight_map=wmap)
    assert (out - ref).abs().max().item() < TOL


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.7])
def test_separable_gaussian_normaliser_equals_monai(overlap: float) -> None:
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = _randn(1, 1, 37, 30, 23, seed=7)
    with torch.no_grad():
        ref = monai_swi(x, (16, 12, 10), 3, net, overlap=overlap, mode="gaussian", sigma_scale=0.2)
    out = sliding_window_inference(x, (16, 12, 10), 3, net, overlap, "gaussian", sigma_scale=0.2)
    assert (out - ref).abs().max().item() < TOL


def test_constant_normaliser_is_separable_and_gaussian_is_summed_slab_by_slab() -> None:
    """Constant weights: the per-axis factors reproduce the window-by-window count. MONAI's
    Gaussian (clamped near the edges) is not separable: the slab-by-slab sum must equal the full map."""
    from monai.data.utils import compute_importance_map

    plan = _WindowPlan.build((37, 30, 23), (16, 12, 10), (0.5, 0.25, 0.6))
    counts = _Blender(plan, 1, 1, (16, 12, 10), None, torch.device("cpu"), torch.float32)
    factors = counts._axis_factors()
    assert factors is not None
    product = factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    full = torch.zeros(plan.padded_size)
    for sl in counts._window_slices:
        full[sl] += 1.0
    torch.testing.assert_close(product.float(), full)

    gauss = compute_importance_map((16, 12, 10), mode="gaussian", sigma_scale=0.125)
    blender = _Blender(plan, 1, 1, (16, 12, 10), gauss, torch.device("cpu"), torch.float32)
    assert blender.strategy == "weighted" and blender._axis_factors() is None
    full = torch.zeros(plan.padded_size)
    for sl in blender._window_slices:
        full[sl] += gauss
    blender.out.fill_(1.0)
    blender._divide()
    torch.testing.assert_close(blender.out[0, 0], 1.0 / full, rtol=1e-5, atol=0)
