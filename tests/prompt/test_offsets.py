"""Per-prompt logit offsets (``medcnn.prompt.offsets``): features, the ridge fit, checkpoint round trip, backend use."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medcnn.prompt.lite import CropSpec, LitePromptBackend
from medcnn.prompt.offsets import FEATURE_NAMES, FILL_OFFSETS, OffsetModel, fit_offset_model, offset_features


def _box_channel(s: int, r0: int, c0: int, r1: int, c1: int) -> torch.Tensor:
    ch = torch.zeros(s, s)
    ch[r0:r1, c0:c1] = 1.0
    return ch


def test_offset_features_measure_fill_sides_and_spill():
    s = 32
    box = _box_channel(s, 8, 8, 24, 24)
    z = torch.full((s, s), -10.0)
    z[10:22, 10:22] = 5.0  # a blob inside the box, touching no side
    z[12:20, 12:20] = -0.5  # a dip that only offsets >= 1 fill
    touching = z.clone()
    touching[8:24, 8:12] = 5.0  # reaches the left side (and the top and bottom rows over 4 of 16 columns)
    f = offset_features(torch.stack([z, touching]), torch.stack([box, box]), torch.tensor([[40.0, 20.0], [40.0, 20.0]]),
                        base=2.5)
    assert f.shape == (2, len(FEATURE_NAMES)) and f.dtype == torch.float64
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert f[0, col["log_box_area"]] == pytest.approx(np.log(800.0)) and f[0, col["log_box_aspect"]] == pytest.approx(np.log(2))
    fills = f[0, [col[f"fill_at_{o:g}"] for o in FILL_OFFSETS]]
    assert fills[0] == pytest.approx((144 - 64) / 256) and fills[1] == pytest.approx(144 / 256)  # the dip fills at 1
    assert bool((fills[1:] >= fills[:-1]).all())
    sides = [col[n] for n in ("side_fill_min", "side_fill_2nd", "side_fill_3rd", "side_fill_max")]
    assert f[0, sides].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert f[1, sides].tolist() == pytest.approx([0.0, 0.25, 0.25, 1.0])  # sorted: right, top, bottom, left
    assert f[0, col["spill_outside_box"]] == 0.0
    spill = z.clone()
    spill[0:4, :] = 5.0  # 128 of the 768 pixels outside the box
    assert offset_features(spill[None], box[None], torch.tensor([[40.0, 20.0]]), 2.5)[0, col["spill_outside_box"]] == (
        pytest.approx(128 / 768))
    # a box that covers no crop pixel has no features
    assert bool(torch.isnan(offset_features(z[None], torch.zeros(1, s, s), torch.tensor([[1.0, 1.0]]), 2.5)).all())


def test_fit_offset_model_recovers_a_feature_driven_offset():
    rng = np.random.default_rng(0)
    n, grid = 400, np.arange(0.0, 6.001, 0.25)
    feats = rng.normal(size=(n, len(FEATURE_NAMES)))
    best = np.clip(2.5 + 1.2 * feats[:, 3] - 0.6 * feats[:, 10], 0, 6)  # the offset each object wants
    dice = 0.95 - 0.02 * (grid[None] - best[:, None]) ** 2
    model = fit_offset_model(feats, dice, grid, base=2.5, alpha=1.0)
    pred = model.predict(torch.from_numpy(feats), fallback=2.5).numpy()
    assert np.abs(pred - best).mean() < 0.15  # the grid is 0.25 apart
    k_fit = np.abs(grid[None] - pred[:, None]).argmin(1)
    k_fixed = int(np.abs(grid - 2.5).argmin())
    assert dice[np.arange(n), k_fit].mean() > dice[:, k_fixed].mean() + 0.01
    # NaN rows get the fallback; the clamp keeps offsets on the grid's range
    probe = torch.from_numpy(np.vstack([np.full(len(FEATURE_NAMES), np.nan), 100 * np.eye(len(FEATURE_NAMES))[3]]))
    assert model.predict(probe, fallback=1.75).tolist() == [1.75, 6.0]
    # ties go to the offset nearest the base
    flat = np.tile(np.where(np.abs(grid - 4.0) <= 1.0, 0.9, 0.5), (30, 1))
    flat_model = fit_offset_model(rng.normal(size=(30, len(FEATURE_NAMES))), flat, grid, base=2.5)
    assert flat_model.bias == pytest.approx(3.0)
    with pytest.raises(ValueError, match="too few"):
        fit_offset_model(feats[:5], dice[:5], grid, base=2.5)


def test_offset_model_round_trips_through_the_crop_spec_and_checks_its_features():
    m = OffsetModel(mean=(0.0,) * len(FEATURE_NAMES), scale=(1.0,) * len(FEATURE_NAMES),
                    weights=tuple(float(i) for i in range(len(FEATURE_NAMES))), bias=2.0, low=0.0, high=6.0)
    spec = dataclasses.replace(CropSpec(logit_offset=2.5), offset_model=m, offset_model_exact=None)
    d = spec.to_dict()
    assert d["offset_model"]["exact"] is None and d["offset_model"]["drawn"]["features"] == list(FEATURE_NAMES)
    back = CropSpec.from_dict(d)
    assert back == spec and back.adaptive(False) == m and back.adaptive(True) is None
    assert "offset_model" not in CropSpec().to_dict()  # checkpoints without one are written as before
    bad = {**d["offset_model"]["drawn"], "features": ["log_box_area"]}
    with pytest.raises(ValueError, match="do not match"):
        OffsetModel.from_dict(bad)


class _Ramp(torch.nn.Module):
    """Logits rising along the crop's columns (not flip-symmetric), from the image channel's mean."""

    def forward(self, x):
        s = x.shape[-1]
        return (torch.linspace(-6, 6, s)[None, None, None, :] + 0 * x[:, :1]).expand(x.shape[0], 1, s, s)


def test_backend_uses_per_prompt_offsets_for_boxes_alone():
    n_f = len(FEATURE_NAMES)
    const = OffsetModel(mean=(0.0,) * n_f, scale=(1.0,) * n_f, weights=(0.0,) * n_f, bias=4.0)
    spec = CropSpec(size=32, logit_offset=1.0)
    img = torch.rand(1, 60, 80)
    box = torch.tensor([(10.0, 20.0, 40.0, 60.0), (5.0, 5.0, 30.0, 25.0)], dtype=torch.float64)
    fixed = LitePromptBackend(_Ramp(), spec, optimize=False)
    fixed.set_image(img)
    adaptive = LitePromptBackend(_Ramp(), dataclasses.replace(spec, offset_model=const), optimize=False)
    adaptive.set_image(img)
    a, f = adaptive.predict_logits(boxes=box), fixed.predict_logits(boxes=box)
    inside = f > -20
    torch.testing.assert_close(a[inside], f[inside] + 3.0)  # offset 4 instead of 1, for every box
    # clicks or a prior mask: the fixed offset (the model was fitted on boxes alone)
    pts, labs = torch.tensor([[20.0, 30.0]]), torch.tensor([1])
    torch.testing.assert_close(adaptive.predict_logits(boxes=box[:1], points=pts, labels=labs),
                               fixed.predict_logits(boxes=box[:1], points=pts, labels=labs))
    prior = torch.zeros(60, 80)
    torch.testing.assert_close(adaptive.predict_logits(boxes=box[:1], mask_input=prior),
                               fixed.predict_logits(boxes=box[:1], mask_input=prior))
    # exact boxes use the exact model, which this spec lacks: fixed offset there
    torch.testing.assert_close(adaptive.predict_logits(boxes=box, exact_box=True), fixed.predict_logits(boxes=box, exact_box=True))
    # a model driven by the box's fill: the two boxes get different offsets, each its own
    col = FEATURE_NAMES.index("log_box_area")
    w = [0.0] * n_f
    w[col] = 1.0
    by_area = OffsetModel(mean=(0.0,) * n_f, scale=(1.0,) * n_f, weights=tuple(w), bias=-4.0)
    be = LitePromptBackend(_Ramp(), dataclasses.replace(spec, offset_model=by_area), optimize=False)
    be.set_image(img)
    got = be.predict_logits(boxes=box)
    for k, (h, wd) in enumerate(((30, 40), (25, 20))):
        want = min(max(np.log(h * wd) - 4.0, 0.0), 6.0)
        torch.testing.assert_close(got[k][inside[k]], f[k][inside[k]] - 1.0 + want, atol=1e-5, rtol=0)


def test_3d_propagation_keeps_the_fixed_offset():
    from medcnn.prompt import PromptableSegmenter

    n_f = len(FEATURE_NAMES)
    spec = CropSpec(size=32, logit_offset=1.0)
    far = OffsetModel(mean=(0.0,) * n_f, scale=(1.0,) * n_f, weights=(0.0,) * n_f, bias=6.0)
    vol = torch.rand(1, 6, 48, 40)
    box3d = (1, 10, 8, 5, 30, 28)
    got = {}
    for name, s in (("fixed", spec), ("adaptive", dataclasses.replace(spec, offset_model=far))):
        seg = PromptableSegmenter(LitePromptBackend(_Ramp(), s, optimize=False), name=name)
        seg.set_image(vol)
        got[name] = seg.predict(box=box3d, return_logits=True)
        seg.set_image(vol[:, 2])  # a 2D box prompt on the same backend does use the model
        got[name + "_2d"] = seg.predict(box=box3d[1:3] + box3d[4:6], return_logits=True)
    torch.testing.assert_close(got["adaptive"], got["fixed"])
    inside = got["fixed_2d"] > -20
    torch.testing.assert_close(got["adaptive_2d"][inside], got["fixed_2d"][inside] + 5.0)
