"""medcnn.sliding_window_inference against MONAI's, plus precision, formats and mirroring TTA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference as monai_swi
from monai.networks.nets import UNet

from medcnn.inference import (
    cpu_has_native_bf16,
    flip_tta,
    mirror_predictor,
    resolve_precision,
    sliding_window_inference,
)
from medcnn.inference.sliding_window import _axis_starts
from medcnn.inference.tta import flip_combinations

TOL = 1e-4


def _conv(spatial_dims: int, cin: int = 2, cout: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    return conv(cin, cout, 3, padding=1).eval()


@pytest.fixture(scope="module")
def conv3d() -> torch.nn.Module:
    return _conv(3)


@pytest.fixture(scope="module")
def conv2d() -> torch.nn.Module:
    return _conv(2)


@pytest.fixture(scope="module")
def small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def _monai(*args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return monai_swi(*args, **kwargs)


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ MONAI equality
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 2, 11, 20, 13),  # smaller than the roi along two axes (padding + crop)
        (2, 2, 37, 29, 41),  # odd, larger than the roi: last window shifted back
        (1, 2, 32, 48, 16),  # multiple of the roi: windows tile at overlap 0
    ],
)
def test_matches_monai_3d(conv3d, shape, mode, overlap):
    x = _randn(*shape)
    ref = _monai(x, (16, 16, 16), 3, conv3d, overlap, mode)
    out = sliding_window_inference(x, (16, 16, 16), 3, conv3d, overlap, mode)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(2, 2, 13, 50), (3, 2, 67, 41), (2, 2, 40, 60)])
def test_matches_monai_2d(conv2d, shape, mode, overlap):
    x = _randn(*shape)
    ref = _monai(x, (20, 20), 4, conv2d, overlap, mode)
    out = sliding_window_inference(x, (20, 20), 4, conv2d, overlap, mode)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"roi_size": (16, -1, 0)},  # non-positive entries: full size along that axis
        {"roi_size": 16},
        {"roi_size": (12, 16, 20), "overlap": (0.5, 0.0, 0.25), "mode": "gaussian"},
        {"roi_size": (16, 16, 16), "mode": "gaussian", "sigma_scale": (0.1, 0.2, 0.3)},
        {"roi_size": (24, 24, 24), "padding_mode": "reflect", "overlap": 0.5},
        {"roi_size": (24, 24, 24), "padding_mode": "replicate", "mode": "gaussian"},
        {"roi_size": (24, 24, 24), "cval": -3.0},
        {"roi_size": (16, 16, 16), "roi_weight_map": torch.rand(16, 16, 16) + 0.1},
    ],
)
def test_matches_monai_options(conv3d, kwargs):
    x = _randn(2, 2, 19, 23, 21)
    kw = {"sw_batch_size": 2, "predictor": conv3d, **kwargs}
    ref = _monai(x, **kw)
    out = sliding_window_inference(x, **kw)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_matches_monai_unet_roi32(small_unet):
    x = _randn(2, 2, 45, 40, 37)
    ref = _monai(x, (32, 32, 32), 2, small_unet, 0.5, "gaussian")
    out = sliding_window_inference(x, (32, 32, 32), 2, small_unet, 0.5, "gaussian", precision="fp32")
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_window_starts_match_monai_grid():
    for size in range(5, 70, 7):
        for roi in (4, 5, 16, 32):
            if roi > size:
                continue
            for overlap in (0.0, 0.25, 0.5, 0.75, 0.9):
                interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
                ref = sorted({s[0].start for s in dense_patch_slices((size,), (roi,), (interval,))})
                assert list(_axis_starts(size, roi, overlap)) == ref, (size, roi, overlap)


def test_tuple_dict_and_zoomed_outputs_match_monai(conv3d):
    x = _randn(2, 2, 37, 29, 41)

    def multi(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = conv3d(t)
        return y, torch.nn.functional.avg_pool3d(y, 2)  # second output at half resolution

    ref = _monai(x, (16, 16, 16), 3, multi, 0.5, "gaussian")
    out = sliding_window_inference(x, (16, 16, 16), 3, multi, 0.5, "gaussian")
    assert isinstance(out, tuple) and len(out) == 2
    assert out[1].shape == ref[1].shape
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=TOL, rtol=0)

    def as_dict(t: torch.Tensor) -> dict[str, torch.Tensor]:
        y = conv3d(t)
        return {"seg": y, "aux": y[:, :1] * 2}

    ref_d = _monai(x, (16, 16, 16), 3, as_dict, 0.25)
    out_d = sliding_window_inference(x, (16, 16, 16), 3, as_dict, 0.25)
    assert set(out_d) == {"seg", "aux"}
    for k in out_d:
        torch.testing.assert_close(out_d[k], ref_d[k], atol=TOL, rtol=0)


def test_with_coord_matches_monai(conv3d):
    x = _randn(2, 2, 20, 20, 20)

    def pred(t, coords):
        offs = torch.tensor([float(c[2].start + 10 * c[0].start) for c in coords]).view(-1, 1, 1, 1, 1)
        return conv3d(t) + offs

    ref = _monai(x, (16, 16, 16), 3, pred, 0.5, with_coord=True)
    out = sliding_window_inference(x, (16, 16, 16), 3, pred, 0.5, with_coord=True)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_predictor_kwargs_are_passed(conv3d):
    x = _randn(1, 2, 20, 20, 20)
    out = sliding_window_inference(x, 16, 2, lambda t, scale: conv3d(t) * scale, scale=2.0)
    torch.testing.assert_close(out, 2 * sliding_window_inference(x, 16, 2, conv3d), atol=TOL, rtol=0)


# ------------------------------------------------------------------ outputs, batching, logging
def test_output_shape_dtype_device(conv3d):
    x = _randn(3, 2, 21, 17, 30)
    out = sliding_window_inference(x, (16, 16, 16), 2, conv3d)
    assert out.shape == (3, 3, 21, 17, 30)
    assert out.dtype == torch.float32 and out.device == x.device
    assert not out.is_inference()  # can be modified in place by the caller
    out.add_(1)
    out64 = sliding_window_inference(x.double(), 16, 2, _conv(3).double())
    assert out64.dtype == torch.float64
    cpu = sliding_window_inference(x, 16, 2, conv3d, sw_device="cpu", device=torch.device("cpu"))
    assert cpu.device.type == "cpu"


def test_metatensor_in_metatensor_out(conv3d):
    affine = torch.diag(torch.tensor([1.5, 2.0, 2.5, 1.0], dtype=torch.float64))
    x = MetaTensor(_randn(1, 2, 20, 18, 22), affine=affine)
    out = sliding_window_inference(x, 16, 2, conv3d)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine)
    out.meta["changed"] = True
    assert "changed" not in x.meta


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_sw_batch_size_does_not_change_result(conv3d, mode):
    x = _randn(2, 2, 37, 29, 41)
    one = sliding_window_inference(x, 16, 1, conv3d, 0.5, mode)
    four = sliding_window_inference(x, 16, 4, conv3d, 0.5, mode)
    many = sliding_window_inference(x, 16, 1000, conv3d, 0.5, mode)
    torch.testing.assert_close(one, four, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_progress_bar(conv3d, capsys):
    x = _randn(1, 2, 20, 20, 20)
    sliding_window_inference(x, 16, 2, conv3d, progress=False)
    assert "sliding window" not in capsys.readouterr().err
    sliding_window_inference(x, 16, 2, conv3d, progress=True)
    err = capsys.readouterr().err
    assert "sliding window" in err and "4/4" in err


def test_blending_strategy_is_logged(conv3d, caplog):
    x = _randn(1, 2, 32, 32, 32)
    with caplog.at_level(logging.DEBUG, logger="medcnn.inference.sliding_window"):
        sliding_window_inference(x, 16, 2, conv3d, 0.0, "gaussian")  # windows tile: no weighting
        sliding_window_inference(x, 16, 2, conv3d, 0.5, "constant")
        sliding_window_inference(x, 16, 2, conv3d, 0.5, "gaussian")
    strategies = [r.getMessage() for r in caplog.records if "blending strategies" in r.getMessage()]
    assert strategies == [
        "blending strategies: ['tile']",
        "blending strategies: ['count']",
        "blending strategies: ['weighted']",
    ]


def test_predictor_runs_in_inference_mode(conv3d):
    seen = []

    def pred(t):
        seen.append((torch.is_inference_mode_enabled(), t.shape[0]))
        return conv3d(t)

    sliding_window_inference(_randn(2, 2, 20, 20, 20), 16, 3, pred)
    assert all(flag for flag, _ in seen)
    # 2 x 2 x 2 windows per image, 16 windows over 2 images, batched across images
    assert [n for _, n in seen] == [3, 3, 3, 3, 3, 1]


# ------------------------------------------------------------------- precision, memory format
def test_bf16_agrees_in_argmax(small_unet):
    x = _randn(2, 2, 45, 40, 37)
    ref = sliding_window_inference(x, 32, 2, small_unet, 0.5, "gaussian", precision="fp32")
    out = sliding_window_inference(x, 32, 2, small_unet, 0.5, "gaussian", precision="bf16")
    assert out.dtype == torch.float32  # accumulated (and returned) in fp32
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement > 0.99
    assert not torch.equal(out, ref)  # it really ran in bf16


def test_fp16_runs(conv3d):
    x = _randn(1, 2, 20, 20, 20)
    ref = sliding_window_inference(x, 16, 2, conv3d, 0.5)
    out = sliding_window_inference(x, 16, 2, conv3d, 0.5, precision="fp16")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_resolve_precision(tmp_path):
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    assert resolve_precision("fp16", "cpu") is torch.float16
    auto = resolve_precision("auto", "cpu")
    assert auto is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 avx2\n")
    assert cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx2\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_channels_last(conv3d):
    x = _randn(1, 2, 20, 20, 20)
    formats = []

    def pred(t):
        formats.append(t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous())
        return conv3d(t)

    ref = sliding_window_inference(x, 16, 2, conv3d, 0.5)
    out = sliding_window_inference(x, 16, 2, pred, 0.5, channels_last=True)
    assert formats and all(formats)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    formats.clear()
    sliding_window_inference(x, 16, 2, pred, 0.5)  # auto: a plain callable gets contiguous input
    assert not any(formats)

    cl_net = _conv(3).to(memory_format=torch.channels_last_3d)
    seen = []
    cl_net.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
    )
    out_cl = sliding_window_inference(x, 16, 2, cl_net, 0.5)  # auto follows the model's format
    assert seen and all(seen)
    torch.testing.assert_close(out_cl, ref, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"overlap": 1.0}, ValueError),
        ({"overlap": -0.1}, ValueError),
        ({"overlap": (0.5, 0.5)}, ValueError),
        ({"sw_batch_size": 0}, ValueError),
        ({"roi_size": (16, 16)}, ValueError),
        ({"mode": "linear"}, ValueError),
        ({"padding_mode": "wrap"}, ValueError),
        ({"precision": "fp8"}, ValueError),
        ({"channels_last": "yes"}, ValueError),
        ({"roi_weight_map": torch.ones(8, 8, 8)}, ValueError),
        ({"process_fn": lambda *a: a}, NotImplementedError),
    ],
)
def test_bad_arguments_raise(conv3d, kwargs, error):
    kw = {"inputs": _randn(1, 2, 20, 20, 20), "roi_size": 16, "sw_batch_size": 2, "predictor": conv3d}
    kw.update(kwargs)
    with pytest.raises(error):
        sliding_window_inference(**kw)


def test_bad_predictor_output_raises():
    x = _randn(1, 2, 20, 20, 20)
    with pytest.raises(ValueError, match="predictor output"):
        sliding_window_inference(x, 16, 2, lambda t: t.mean(dim=(2, 3, 4)))


# ------------------------------------------------------------------------------------ mirroring
def _symmetric_conv() -> torch.nn.Module:
    """A 3D conv whose kernels are symmetric under every flip: flip-equivariant."""
    conv = _conv(3, seed=3)
    with torch.no_grad():
        w = conv.weight
        sym = sum(torch.flip(w, dims) if dims else w for dims in flip_combinations((2, 3, 4)))
        conv.weight.copy_(sym / 8)
    return conv


def test_flip_combinations():
    assert flip_combinations((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(flip_combinations((0, 1, 2))) == 8


def test_tta_equivariant_predictor_is_unchanged():
    net = _symmetric_conv()
    x = _randn(2, 2, 12, 10, 14)
    with torch.no_grad():
        plain = net(x)
        torch.testing.assert_close(flip_tta(net, x), plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(flip_tta(net, x, axes=(0, -1)), plain, atol=1e-5, rtol=0)


def test_tta_non_equivariant_predictor_changes(conv3d):
    x = _randn(2, 2, 12, 10, 14)
    with torch.no_grad():
        plain = conv3d(x)
        tta = flip_tta(conv3d, x, axes=(0, 1, 2))
        assert (tta - plain).abs().max() > 1e-2
        # the average over flips is itself flip-equivariant
        flipped = flip_tta(conv3d, torch.flip(x, (2, 3)), axes=(0, 1, 2))
        torch.testing.assert_close(torch.flip(flipped, (2, 3)), tta, atol=1e-5, rtol=0)


def test_tta_calls_and_classification_outputs():
    calls = []

    def classifier(t):
        calls.append(t)
        return t.mean(dim=(2, 3))  # (B, C): flip-invariant, no spatial axes

    x = _randn(3, 4, 9, 7)
    out = flip_tta(classifier, x, axes=(0, 1))
    assert len(calls) == 4
    torch.testing.assert_close(out, x.mean(dim=(2, 3)), atol=1e-6, rtol=0)


def test_batched_tta_is_one_call_with_the_same_average(conv3d):
    calls = []

    def net(t):
        calls.append(t.shape[0])
        return conv3d(t)

    x = _randn(2, 2, 12, 10, 14)
    with torch.no_grad():
        seq = flip_tta(net, x, axes=(0, 2))
        assert calls == [2, 2, 2, 2]
        calls.clear()
        one = flip_tta(net, x, axes=(0, 2), batched=True)
        assert calls == [8]  # the four mirrored copies of both cases in one call
        torch.testing.assert_close(one, seq, atol=1e-5, rtol=0)
        assert (one - conv3d(x)).abs().max() > 1e-2  # not the plain prediction
        wrapped = mirror_predictor(net, axes=(1,), batched=True)
        torch.testing.assert_close(wrapped(x), flip_tta(conv3d, x, axes=(1,)), atol=1e-5, rtol=0)
        assert "batched=True" in repr(wrapped)
    with pytest.raises(TypeError, match="one tensor"):
        flip_tta(lambda t: (t, t), x, axes=(0,), batched=True)


def test_mirror_predictor_in_sliding_window():
    net = _symmetric_conv()
    x = _randn(1, 2, 24, 20, 28)
    plain = sliding_window_inference(x, 16, 2, net, 0.5, "gaussian")
    mirrored = sliding_window_inference(x, 16, 2, mirror_predictor(net, axes=(0, 1, 2)), 0.5, "gaussian")
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)
    assert "mirror_predictor" in repr(mirror_predictor(net, axes=(0,)))


@pytest.mark.parametrize("axes", [(0, 0), (3,), ("x",)])
def test_tta_bad_axes(conv3d, axes):
    with pytest.raises(ValueError):
        flip_tta(conv3d, _randn(1, 2, 8, 8, 8), axes=axes)


def test_mirror_predictor_rejects_bad_axes(conv3d):
    with pytest.raises(ValueError):
        mirror_predictor(conv3d, axes=(1, 1))
    with pytest.raises(ValueError):
        mirror_predictor("not callable", axes=(0,))


def test_no_hidden_state_between_calls():
    # two calls with different settings do not influence each other (no module-level caches)
    net = _conv(2)
    x = _randn(1, 2, 30, 30)
    a = sliding_window_inference(x, 20, 1, net, 0.5, "gaussian")
    sliding_window_inference(x, 10, 1, net, 0.0, "constant")
    b = sliding_window_inference(x, 20, 1, net, 0.5, "gaussian")
    assert np.array_equal(a.numpy(), b.numpy())
