"""The registry's compact CNN: shapes, the strided stem, argument checks."""

from __future__ import annotations

import pytest
import torch

from medcnn.errors import ConfigError
from medcnn.explain.saliency import default_target_layer, grad_cam
from medcnn.models import create_model, model_arguments


def _last_stage_shape(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    layer = dict(net.named_modules())[default_target_layer(net)]
    seen: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        handle.remove()
    return seen[0]


def test_default_stem_keeps_the_full_grid_and_stride_2_halves_it() -> None:
    assert model_arguments("compact-cnn")["stem_stride"] == 1
    x = torch.randn(2, 1, 32, 40, 32)
    plain = create_model("compact-cnn", channels=[4, 8])
    strided = create_model("compact-cnn", channels=[4, 8], stem_stride=2)
    assert plain(x).shape == strided(x).shape == (2, 2)
    # Grad-CAM's layer (last stage, before its pooling): 32/2 with a plain stem, 32/4 with a strided one
    assert _last_stage_shape(plain, x) == (2, 8, 16, 20, 16)
    assert _last_stage_shape(strided, x) == (2, 8, 8, 10, 8)
    # same parameters: the stride changes the grid, not the weights (checkpoints stay interchangeable in shape)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in strided.state_dict().items()}


def test_strided_stem_trains_in_2d_too() -> None:
    net = create_model("compact-cnn", spatial_dims=2, channels=[4, 8], stem_stride=2)
    x = torch.randn(3, 1, 24, 24)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 1]))
    loss.backward()
    assert net.features[0].stride == (2, 2) and net.features[3].stride == (1, 1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_stem_stride_fails_fast(bad) -> None:
    with pytest.raises(ConfigError, match="stem_stride"):
        create_model("compact-cnn", channels=[4], stem_stride=bad)


def test_batch_norm_keeps_what_instance_norm_averages_away() -> None:
    """Two inputs that differ by a global intensity factor: identical to an instance-normalised
    network (bias-free convolutions), told apart by batch norm (running statistics at inference)."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16, 16)
    pair = torch.cat([x, 3.0 * x])
    inst = create_model("compact-cnn", channels=[4, 8], norm="instance").eval()
    batch = create_model("compact-cnn", channels=[4, 8], norm="batch").eval()
    with torch.no_grad():
        a, b = inst(pair)
        assert torch.allclose(a, b, atol=1e-4)
        a, b = batch(pair)
        assert not torch.allclose(a, b, atol=1e-2)
    assert isinstance(batch.features[1], torch.nn.BatchNorm3d)
    assert isinstance(create_model("compact-cnn", spatial_dims=2, channels=[4], norm="batch").features[1], torch.nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="norm must be one of instance, batch"):
        create_model("compact-cnn", channels=[4], norm="group")


def test_pool_grid_feeds_every_cell_to_the_head() -> None:
    x = torch.randn(2, 1, 24, 28, 24)
    net = create_model("compact-cnn", channels=[4, 8], pool_grid=3)
    assert net.head[-1].in_features == 8 * 27
    assert net(x).shape == (2, 2)
    assert create_model("compact-cnn", spatial_dims=2, channels=[4], pool_grid=2).head[-1].in_features == 4 * 4
    # a grid of one cell is the global average: the head's weights apply to the channel means
    flat = create_model("compact-cnn", channels=[4, 8]).eval()
    with torch.no_grad():
        expected = flat.head(flat.features(x).mean(dim=(2, 3, 4)))
        assert torch.allclose(flat(x), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="pool_grid"):
        create_model("compact-cnn", channels=[4], pool_grid=0)


@pytest.mark.parametrize("sd", [2, 3])
def test_mask_threshold_keeps_the_head_and_grad_cam_off_the_background(sd: int) -> None:
    """With ``mask_threshold`` the cells of the last stage that hold only background (zero padding, air) are
    zeroed: the logits ignore what the network computes there, and Grad-CAM (which looks at ``gate``) is zero
    there; without it the same weights see those cells."""
    torch.manual_seed(0)
    size = (32,) * sd
    x = torch.zeros(1, 1, *size)
    body = (slice(None), slice(None)) + (slice(0, 16),) * sd  # one corner of the grid holds the "brain"
    x[body] = 0.5 + 0.5 * torch.rand(x[body].shape)
    masked = create_model("compact-cnn", spatial_dims=sd, channels=[4, 8], mask_threshold=0.1, pool_grid=2).eval()
    plain = create_model("compact-cnn", spatial_dims=sd, channels=[4, 8], pool_grid=2).eval()
    plain.load_state_dict(masked.state_dict())  # the gate has no weights: checkpoints load either way
    assert default_target_layer(masked) == "gate" and default_target_layer(plain) == "features.12"
    # the gated stage is 16 cells per axis (before the last pooling); the body covers the first 8 of each axis
    seen: list[torch.Tensor] = []
    handle = masked.gate.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        masked(x)
    handle.remove()
    gated = seen[0][0].abs().amax(0)
    inside = (slice(0, 8),) * sd
    outside = torch.ones_like(gated, dtype=torch.bool)
    outside[inside] = False
    assert float(gated[inside].min()) > 0.0 and float(gated[outside].max()) == 0.0
    # the empty cells' features (non-zero after instance norm) reach the plain head, not the masked one
    with torch.no_grad():
        assert not torch.allclose(masked(x), plain(x), atol=1e-5)
    heat = grad_cam(masked, x[0], 1)
    far = (slice(20, None),) * sd
    assert float(heat[far].max()) == 0.0 and float(heat.max()) > 0.0
    with pytest.raises(ConfigError, match="mask_threshold"):
        create_model("compact-cnn", channels=[4], mask_threshold="brain")
