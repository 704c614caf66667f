"""The light promptable model: prompt geometry, prompt simulation, training with ``task: prompt``, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medcnn.cli.main import cli
from medcnn.errors import ConfigError, InputError
from medcnn.prompt import PromptableSegmenter
from medcnn.prompt.lite import CropSpec, LitePromptBackend, crop_region, paste_logits, prompt_inputs
from medcnn.prompt.train import CALIBRATION_OFFSETS, box_dice, calibrate_offset
from medcnn.prompt.train import object_bbox, jitter_box, load_prompt_case, simulate_prompt
from medcnn.synth.prompt import make_case

SPEC = CropSpec()


def test_crop_region_covers_prompt_with_margin_and_stays_inside():
    r0, c0, r1, c1 = crop_region((300, 200), SPEC, box=(100, 50, 140, 150))
    assert r0 < 100 and r1 > 140 and c0 < 50 and c1 > 150  # margin on every side
    assert (r1 - r0) < 80 and (c1 - c0) < 150  # but no more than about 20 % + a few px
    assert crop_region((300, 200), SPEC, box=(0, 0, 300, 200)) == (0, 0, 300, 200)  # clipped to the image
    # clicks outside the box extend the region; clicks alone read the whole image
    r0b, c0b, r1b, c1b = crop_region((300, 200), SPEC, box=(100, 50, 140, 150), points=[(250, 10)])
    assert r1b > 251 and c0b <= 10
    assert crop_region((300, 200), SPEC, points=[(5, 5)]) == (0, 0, 300, 200)
    prior = torch.full((300, 200), -5.0)
    prior[20:30, 40:60] = 5.0
    r0p, c0p, r1p, c1p = crop_region((300, 200), SPEC, prior=prior)
    assert r0p < 20 and r1p > 30 and c0p < 40 and c1p > 60 and r1p - r0p < 30


@pytest.mark.parametrize("shape,box", [((300, 200), (100, 50, 140, 150)), ((64, 90), (3, 7, 60, 20)),
                                        ((512, 512), (200, 200, 212, 230))])
def test_box_channel_pasted_back_is_the_box(shape, box):
    """Rendering a prompt into the crop and mapping the crop back must land on the same pixels."""
    img = torch.rand(shape)
    region = crop_region(shape, SPEC, box=box)
    x = prompt_inputs(img, region, SPEC, box=box)
    assert x.shape == (5, SPEC.size, SPEC.size) and float(x[2:].abs().sum()) == 0.0
    back = paste_logits(x[1] * 40 - 20, region, shape) > 0
    ref = torch.zeros(shape, dtype=torch.bool)
    ref[box[0]:box[2], box[1]:box[3]] = True
    inter = int((back & ref).sum())
    assert 2 * inter / (int(back.sum()) + int(ref.sum())) > 0.95
    # the image channel is the normalised crop: percentiles 1/99 map to about 0/1
    assert -0.6 < float(x[0].min()) and float(x[0].max()) < 1.6 and float(x[0].std()) > 0.1


def test_click_spot_lands_on_the_clicked_pixel():
    shape = (240, 180)
    img = torch.rand(shape)
    box = (60, 40, 180, 140)
    region = crop_region(shape, SPEC, box=box)
    x = prompt_inputs(img, region, SPEC, box=box, points=[(100, 70), (170, 130)], labels=[1, 0])
    for ch, (i, j) in ((2, (100, 70)), (3, (170, 130))):
        back = paste_logits(x[ch], region, shape)
        pi, pj = np.unravel_index(int(torch.argmax(back)), shape)
        assert abs(pi - i) <= 1 and abs(pj - j) <= 1


def test_simulated_prompts_are_consistent_with_the_object():
    rng = np.random.default_rng(0)
    case = make_case(np.random.default_rng([9, 1, 77]), "shapes")
    obj = case["labels"] == case["labels"].max()
    box = object_bbox(obj)
    opts = {"box_jitter": 1.0, "point_prob": 1.0, "prior_prob": 0.5, "points_only_prob": 0.3}
    kinds = set()
    for _ in range(60):
        p = simulate_prompt(rng, obj, opts)
        assert p["box"] is not None or p["points"] is not None
        if p["box"] is not None:
            b = p["box"]
            assert b[0] < b[2] and b[1] < b[3] and b[0] >= 0 and b[2] <= obj.shape[0]
            ext = box[2:] - box[:2]
            assert np.all(np.abs(b - box) <= np.concatenate([0.3 * ext + 3, 0.3 * ext + 3]) + 1e-9)
            kinds.add("box")
        if p["points"] is not None:
            for (i, j), lab in zip(p["points"].astype(int), p["labels"]):
                assert bool(obj[i, j]) == bool(lab), "positive clicks inside, negative clicks outside the object"
            kinds.add("points")
        if p["prior"] is not None:
            kinds.add("prior")
    assert kinds == {"box", "points", "prior"}
    j = jitter_box(rng, box, obj.shape)
    assert j.shape == (4,)


def test_box_tight_prob_gives_exact_boxes_and_zero_keeps_the_old_draws():
    case = make_case(np.random.default_rng([9, 1, 77]), "shapes")
    obj = case["labels"] == case["labels"].max()
    box = object_bbox(obj)
    opts = {"box_jitter": 1.0, "point_prob": 0.0, "prior_prob": 0.0, "points_only_prob": 0.0}
    tight = [simulate_prompt(np.random.default_rng(s), obj, {**opts, "box_tight_prob": 1.0})["box"] for s in range(20)]
    assert all(np.array_equal(b, box) for b in tight)
    loose = [simulate_prompt(np.random.default_rng(s), obj, opts)["box"] for s in range(20)]
    assert sum(not np.array_equal(b, box) for b in loose) >= 18
    zero = [simulate_prompt(np.random.default_rng(s), obj, {**opts, "box_tight_prob": 0.0})["box"] for s in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(loose, zero))  # the option off draws nothing extra


def test_generator_cases_have_objects_of_every_source():
    for source in ("shapes", "brain", "chest"):
        case = make_case(np.random.default_rng([3, 0, 77]), source)
        assert case["image"].dtype == np.float32 and 0 <= case["image"].min() and case["image"].max() <= 1
        assert case["labels"].shape == case["image"].shape and case["labels"].max() >= 1
        counts = np.bincount(case["labels"].ravel())[1:]
        assert counts.min() >= 40  # every annotated object is big enough for a box prompt


def test_load_prompt_case_slices_volumes(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).random((20, 24, 6)).astype(np.float32)
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:10, 5:12, 2:4] = 1
    aff = np.diag([1.0, 1.0, 3.0, 1.0])  # thick slices along the last axis
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "l.nii.gz")
    slices = load_prompt_case(str(tmp_path / "v.nii.gz"), str(tmp_path / "l.nii.gz"))
    assert len(slices) == 2 and slices[0]["image"].shape == (20, 24)
    assert int(slices[0]["label"].sum()) == 35
    nib.save(nib.Nifti1Image(lab[:, :10], aff), tmp_path / "bad.nii.gz")
    with pytest.raises(ConfigError, match="does not match"):
        load_prompt_case(str(tmp_path / "v.nii.gz"), str(tmp_path / "bad.nii.gz"))


@pytest.fixture(scope="module")
def tiny_prompt_run(tmp_path_factory, repo_root):
    """``medcnn train configs/prompt.yaml`` for two short epochs on a few generated images."""
    from medcnn.synth import generate

    root = tmp_path_factory.mktemp("prompt")
    generate("prompt", root / "data", n=10, seed=5, progress=False)
    res = CliRunner().invoke(cli, [
        "train", str(repo_root / "configs" / "prompt.yaml"), "--set", f"data.source={root / 'data'}", "--set", "train.epochs=2",
        "--set", "train.val_every=1", "--set", "train.batch_size=4", "--set", "data.val_fraction=0.2",
        "--set", "data.num_workers=0", "--set", "prompt.crop_size=64", "--set", "prompt.val_objects=1",
        "-o", str(root / "run")])
    assert res.exit_code == 0, res.output
    return root


def test_training_writes_a_prompt_checkpoint_that_loads(tiny_prompt_run):
    from medcnn.engine import load_checkpoint

    run = tiny_prompt_run / "run"
    ck = load_checkpoint(run / "best.pt")
    assert ck["task"] == "prompt" and ck["prompt"]["crop_size"] == 64
    assert {"dice_box", "dice_jitter", "logit_offset", "dice_box_offset0"} <= set(ck["metrics"])
    # the calibrated offset travels with the model and is the one the validation chose
    assert ck["prompt"]["logit_offset"] == ck["metrics"]["logit_offset"] in CALIBRATION_OFFSETS
    assert ck["metrics"]["dice_box"] >= ck["metrics"]["dice_box_offset0"] - 0.05  # chosen on (tight + jittered) / 2
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch") and len(log) == 3 and (run / "curves.png").is_file()
    seg = PromptableSegmenter.from_pretrained(run / "best.pt")
    assert isinstance(seg.backend, LitePromptBackend) and seg.backend.spec.size == 64
    assert seg.backend.spec.logit_offset == ck["prompt"]["logit_offset"]
    img = torch.rand(1, 70, 90)
    seg.set_image(img)
    m = seg.predict(box=(10, 20, 40, 60))
    assert m.shape == (70, 90) and m.dtype == torch.bool
    # nothing outside the crop the network saw (box + margins): a short training's mask may spill inside it
    from medcnn.prompt.lite import crop_region

    r0, c0, r1, c1 = crop_region((70, 90), seg.backend.spec, (10, 20, 40, 60))
    outside = torch.ones(70, 90, dtype=torch.bool)
    outside[r0:r1, c0:c1] = False
    assert outside[:, :c0].all() and c0 > 0 and r1 < 70  # the crop leaves parts of the image out
    assert not m[outside].any()
    labels = seg.predict(box=[(10, 20, 40, 60), (45, 5, 65, 30)])
    assert labels.shape == (70, 90) and labels.dtype == torch.int32
    vol = torch.rand(1, 8, 40, 50)
    seg.set_image(vol)
    assert seg.predict(box=(2, 5, 5, 6, 30, 40), return_logits=True).shape == (8, 40, 50)


def test_fine_tuning_from_the_checkpoint_and_config_errors(tiny_prompt_run, repo_root):
    root = tiny_prompt_run
    cfg = str(repo_root / "configs" / "prompt.yaml")
    res = CliRunner().invoke(cli, [
        "train", cfg, "--set", f"data.source={root / 'data'}", "--set", "train.epochs=1",
        "--set", "train.batch_size=4", "--set", "data.num_workers=0", "--set", "prompt.crop_size=64",
        "--set", "prompt.val_objects=1", "--set", f"model.init={root / 'run' / 'best.pt'}", "-o", str(root / "ft")])
    assert res.exit_code == 0, res.output
    assert (root / "ft" / "best.pt").is_file()
    bad = CliRunner().invoke(cli, ["train", cfg, "--set", f"data.source={root / 'data'}",
                                   "--set", "train.loss=ce", "-o", str(root / "bad")])
    assert bad.exit_code != 0 and "train.loss" in bad.output and not (root / "bad").exists()


def test_other_medcnn_checkpoints_are_not_prompt_models(tiny_brain_model):
    with pytest.raises(InputError, match="not a promptable model"):
        PromptableSegmenter.from_pretrained(tiny_brain_model)


def test_calibration_picks_the_best_mean_of_tight_and_jittered_dice_ties_nearest_zero():
    offsets = (-1.0, 0.0, 1.0, 2.0)
    tight = np.array([[0.5, 0.6, 0.8, 0.7], [0.5, 0.6, 0.8, 0.9]])
    loose = np.array([[0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8]])
    assert calibrate_offset(tight, loose, offsets) == 3  # means 0.75 vs 0.80
    flat = np.full((2, 4), 0.7)
    assert calibrate_offset(flat, flat, offsets) == 1  # a tie: no offset
    assert 0.0 in CALIBRATION_OFFSETS and min(CALIBRATION_OFFSETS) < 0 < max(CALIBRATION_OFFSETS)


class _Ramp(torch.nn.Module):
    """A stand-in network: logit -0.5 inside the box, -1.5 outside (an empty mask at offset 0)."""

    def forward(self, x):
        return x[:, 1:2] - 1.5


def test_backend_adds_the_logit_offset_and_box_dice_scores_each_offset():
    img = torch.rand(60, 80)
    box = (10.0, 20.0, 40.0, 60.0)
    out = {}
    for off in (0.0, 1.0):
        be = LitePromptBackend(_Ramp(), CropSpec(size=32, logit_offset=off), optimize=False)
        be.set_image(img[None])
        out[off] = be.predict_logits(boxes=torch.tensor([box]))[0]
    inside = out[0.0] > -20
    assert torch.allclose(out[1.0][inside], out[0.0][inside] + 1.0, atol=1e-5)
    assert not (out[0.0] > 0).any() and bool((out[1.0] > 0)[15:35, 25:55].all())  # the offset makes the mask
    label = torch.zeros(60, 80, dtype=torch.uint8)
    label[10:40, 20:60] = 1
    be = LitePromptBackend(_Ramp(), CropSpec(size=32), optimize=False)
    d = box_dice(be, [{"image": img, "label": label, "objects": [1]}], offsets=(0.0, 1.0))
    assert d.shape == (1, 2) and d[0, 0] == 0.0 and d[0, 1] > 0.9


def test_backend_tta_averages_the_mirrored_crops_in_one_call():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(5, 1, 5, padding=2)  # not mirror-symmetric: TTA must change its output
    img = torch.rand(60, 80)
    box = torch.tensor([(10.0, 20.0, 40.0, 60.0), (5.0, 5.0, 30.0, 25.0)])
    spec = CropSpec(size=32, logit_offset=0.5)
    plain = LitePromptBackend(net, spec, optimize=False)
    plain.set_image(img[None])
    ref = plain.predict_logits(boxes=box)
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    for axes, flips in (([1], [(), (3,)]), (None, [(), (2,), (3,), (2, 3)])):
        calls.clear()
        be = LitePromptBackend(net, spec, optimize=False, tta=True, tta_axes=axes)
        be.set_image(img[None])
        got = be.predict_logits(boxes=box)
        assert calls == [2 * len(flips)]
        # by hand: the network's logits on each mirrored crop, mirrored back, averaged, then pasted
        x = torch.stack([prompt_inputs(img, crop_region((60, 80), spec, b), spec, b) for b in box.tolist()])
        with torch.no_grad():
            mean = torch.stack([torch.flip(net(torch.flip(x, d)), d) if d else net(x) for d in flips]).mean(0)
        for k, b in enumerate(box.tolist()):
            want = paste_logits(mean[k, 0] + 0.5, crop_region((60, 80), spec, b), (60, 80))
            torch.testing.assert_close(got[k], want, atol=1e-5, rtol=0)
        assert (got - ref).abs().max() > 1e-3


@pytest.mark.parametrize("channels_last,fusion", [(False, False), (True, False), (False, True), (True, True)])
def test_optimised_cpu_network_matches_the_network_and_leaves_it_alone(channels_last, fusion):
    """The CPU trace (channels-last, oneDNN fusion) gives the eager network's logits and leaves no state behind."""
    from monai.networks.nets import UNet

    from medcnn.prompt.lite import optimised_cpu_network

    torch.manual_seed(0)
    net = UNet(2, 6, 1, channels=(8, 16, 32), strides=(2, 2), num_res_units=2, norm="batch").eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, which the frozen trace folds into the convolutions
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run = optimised_cpu_network(net, 6, 32, channels_last=channels_last, onednn_fusion=fusion)
    assert run is not net  # traced, not the eager fallback
    fusion_before = torch.jit.onednn_fusion_enabled()
    with torch.no_grad():
        for n in (3, 2, 3, 3, 1):  # repeated calls: the fuser compiles on the third call of a shape
            x = torch.randn(n, 6, 32, 32)
            want = net(x)
            got = run(x)
            assert got.shape == want.shape and got.is_contiguous()
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.jit.onednn_fusion_enabled() == fusion_before  # the process-wide switch is restored after each call
    for k, v in net.state_dict().items():  # same values, same (NCHW) layout: the trace ran on a copy
        assert torch.equal(v, before[k]) and v.is_contiguous(), k
    assert not net.model[0].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_optimised_cpu_network_falls_back_to_the_eager_network():
    from medcnn.prompt.lite import optimised_cpu_network

    class Untraceable(torch.nn.Conv2d):
        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("cannot be traced")
            return super().forward(x)

    net = Untraceable(5, 1, 3, padding=1)
    assert optimised_cpu_network(net, 5, 32) is net
    be = LitePromptBackend(net, CropSpec(size=32))  # optimize=True: still works, eagerly
    be.set_image(torch.rand(1, 40, 50))
    assert be.predict_logits(boxes=torch.tensor([(5.0, 5.0, 30.0, 40.0)])).shape == (1, 40, 50)


def test_checkpoint_inference_tta_reaches_the_backend(tiny_prompt_run, tmp_path):
    from medcnn.engine.checkpoint import export_checkpoint

    src = tiny_prompt_run / "run" / "best.pt"
    assert PromptableSegmenter.from_pretrained(src).backend.tta is False
    export_checkpoint(src, tmp_path / "tta.pt", inference={"tta": True, "tta_axes": [1]})
    be = PromptableSegmenter.from_pretrained(tmp_path / "tta.pt").backend
    assert be.tta is True and be.tta_axes == (1,)
    img = torch.rand(1, 70, 90)
    plain = PromptableSegmenter.from_pretrained(src)
    mirrored = PromptableSegmenter.from_pretrained(tmp_path / "tta.pt")
    plain.set_image(img)
    mirrored.set_image(img)
    a = plain.predict(box=(10, 20, 40, 60), return_logits=True)
    b = mirrored.predict(box=(10, 20, 40, 60), return_logits=True)
    assert a.shape == b.shape == (70, 90) and (a - b).abs().max() > 1e-4


def test_crop_percentiles_are_torch_quantiles() -> None:
    """The crop normalisation's 1st/99th percentiles (order statistics from np.partition) are torch.quantile's."""
    from medcnn.prompt.lite import _normalise

    g = torch.Generator().manual_seed(0)
    for shape in [(7, 9), (64, 64), (150, 150), (2, 40, 70)]:
        for ties in (False, True):
            crop = torch.rand(shape, generator=g) * 3 - 1
            crop = crop.round() if ties else crop
            flat = crop.flatten()
            if flat.numel() > 4096:
                flat = flat[:: flat.numel() // 4096]
            lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99]))
            expected = ((crop - lo) / (hi - lo).clamp_min(1e-6)).clamp(-0.5, 1.5)
            torch.testing.assert_close(_normalise(crop), expected, rtol=0, atol=1e-6)


def test_click_morphology_near_the_object_equals_the_whole_image() -> None:
    """Erosion and dilation on the object's grown box give the whole image's result, objects on the border too."""
    from scipy import ndimage as ndi

    from medcnn.prompt.train import _near, object_bbox

    rng = np.random.default_rng(3)
    for trial in range(40):
        obj = np.zeros((60, 50), bool)
        r, c = rng.integers(0, 60), rng.integers(0, 50)   # sometimes at or over an edge
        rr, cc = np.mgrid[:60, :50]
        obj |= (rr - r) ** 2 / rng.uniform(4, 200) + (cc - c) ** 2 / rng.uniform(4, 200) <= 1
        obj[r, c] = True
        box = object_bbox(obj)
        for k in (1, 2, 4):
            for op in (ndi.binary_erosion, ndi.binary_dilation):
                assert np.array_equal(_near(op, obj, box, k), op(obj, iterations=k)), (trial, k, op.__name__)


# ----------------------------------------------------------------------------- exact boxes (stage 11)
def test_clip_to_box_keeps_the_pixels_whose_centre_lies_in_the_box():
    from medcnn.prompt.lite import clip_to_box

    lg = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(2, 6, 7)
    out = clip_to_box(lg, (1, 2, 4, 5), fill=-7.0)
    keep = torch.zeros(6, 7, dtype=torch.bool)
    keep[1:4, 2:5] = True
    assert torch.equal(out[:, keep], lg[:, keep]) and bool((out[:, ~keep] == -7.0).all())
    # fractional sides: pixel i is inside when lo <= i + 0.5 < hi, as the box channel draws it
    frac = clip_to_box(lg[0], (0.6, 0.4, 3.5, 2.6), fill=-7.0) > -7.0
    assert frac.nonzero()[:, 0].unique().tolist() == [1, 2] and frac.nonzero()[:, 1].unique().tolist() == [0, 1, 2]
    vol = clip_to_box(torch.zeros(4, 5, 6), (1, 0, 2, 3, 5, 4), fill=-1.0)  # a 3D box
    assert int((vol == 0).sum()) == 2 * 5 * 2


def test_exact_channel_is_drawn_only_for_exact_boxes_of_exact_channel_specs():
    img = torch.rand(50, 60)
    spec = CropSpec(size=32, exact_channel=True)
    region = crop_region((50, 60), spec, (10, 10, 30, 40))
    assert spec.in_channels == 6 and SPEC.in_channels == 5
    x = prompt_inputs(img, region, spec, box=(10, 10, 30, 40), exact=True)
    assert x.shape == (6, 32, 32) and bool((x[5] == 1).all())
    assert not prompt_inputs(img, region, spec, box=(10, 10, 30, 40))[5].any()
    assert not prompt_inputs(img, region, spec, points=[(20, 20)], labels=[1], exact=True)[5].any()
    assert prompt_inputs(img, region, SPEC, box=(10, 10, 30, 40), exact=True).shape[0] == 5
    back = CropSpec.from_dict({**spec.to_dict(), "logit_offset": 2.5, "logit_offset_exact": 3.0})
    assert back.exact_channel and back.offset(True) == 3.0 and back.offset(False) == 2.5
    old = CropSpec.from_dict({"crop_size": 96, "logit_offset": 2.5})  # a checkpoint written before stage 11
    assert not old.exact_channel and old.logit_offset_exact is None and old.offset(True) == 2.5


def test_exact_box_keeps_the_mask_in_the_box_and_uses_the_exact_offset():
    from promptfake import ThresholdBackend

    img = torch.zeros(1, 40, 50)
    img[0, 5:30, 5:40] = 1.0
    seg = PromptableSegmenter(ThresholdBackend())  # a backend without the exact_box keyword
    seg.set_image(img)
    drawn = seg.predict(box=(10, 10, 20, 30))
    assert bool(drawn[10:20, 10:30].all()) and int(drawn.sum()) == 200
    # a click outside the box: a drawn box keeps it, an exact box does not
    assert bool(seg.predict(box=(10, 10, 20, 30), points=[(25, 35)])[25, 35])
    exact = seg.predict(box=(10, 10, 20, 30), points=[(25, 35)], exact_box=True)
    assert int(exact.sum()) == 200 and not bool(exact[25, 35])
    with pytest.raises(ValueError, match="needs a box"):
        seg.predict(points=[(25, 35)], exact_box=True)
    # the light backend: the exact-box offset, and -100 outside the box
    be = LitePromptBackend(_Ramp(), CropSpec(size=32, logit_offset=1.0, logit_offset_exact=1.25), optimize=False)
    lite = PromptableSegmenter(be)
    lite.set_image(img)
    a = lite.predict(box=(10, 10, 20, 30), return_logits=True)
    b = lite.predict(box=(10, 10, 20, 30), return_logits=True, exact_box=True)
    assert torch.allclose(b[10:20, 10:30], a[10:20, 10:30] + 0.25, atol=1e-5)
    assert float(b[:10].max()) == -100.0 and float(a[9, 10:30].max()) > -20  # the drawn box's mask may leave the box
    labels = lite.predict(box=[(10, 10, 20, 30), (22, 5, 35, 15)], exact_box=True)
    assert set(labels[10:20, 10:30].unique().tolist()) == {1} and not bool((labels[:, 31:] == 1).any())


def test_a_five_channel_init_reaches_the_exact_channel_network_unchanged():
    from medcnn.models.registry import prompt_unet
    from medcnn.prompt.train import PromptTrainer

    torch.manual_seed(0)
    five, six = prompt_unet(channels=(4, 8), strides=(2,)), prompt_unet(in_channels=6, channels=(4, 8), strides=(2,))

    class _Stub:  # what the hook reads of a trainer
        spec = CropSpec(exact_channel=True)

        def _log_main(self, *args):
            pass

    state = PromptTrainer._adapt_init_state(_Stub(), five.state_dict(), six, "init.pt")
    six.load_state_dict(state, strict=True)
    five.eval(), six.eval()
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        ref = five(x[:, :5])
        for v in (0.0, 1.0):
            x[:, 5] = v
            torch.testing.assert_close(six(x), ref)


def test_fine_tuning_with_the_exact_channel_from_a_five_channel_model(tiny_prompt_run, repo_root):
    from medcnn.engine import load_checkpoint

    root = tiny_prompt_run
    res = CliRunner().invoke(cli, [
        "train", str(repo_root / "configs" / "prompt.yaml"), "--set", f"data.source={root / 'data'}",
        "--set", "train.epochs=2", "--set", "train.val_every=1", "--set", "train.batch_size=4", "--set", "data.num_workers=0",
        "--set", "prompt.crop_size=64", "--set", "prompt.val_objects=1", "--set", "prompt.exact_channel=true",
        "--set", "prompt.box_tight_prob=0.5", "--set", f"model.init={root / 'run' / 'best.pt'}", "-o", str(root / "exact")])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(root / "exact" / "best.pt")
    assert ck["prompt"]["exact_channel"] is True and ck["preprocess"]["channel_names"][-1] == "exact_box"
    assert ck["prompt"]["logit_offset_exact"] == ck["metrics"]["logit_offset_exact"] in CALIBRATION_OFFSETS
    assert 0.0 <= ck["metrics"]["dice_box_exact"] <= 1.0
    assert next(v for k, v in ck["state_dict"].items() if v.ndim == 4).shape[1] == 6
    # the second validation calibrates from the raw logits again (it once added the first one's exact offset
    # to them, so the stored offsets alternated): the stored offset is the best on the validation images
    import csv

    from medcnn.prompt.evaluate import calibrate_exact

    last = load_checkpoint(root / "exact" / "last.pt")
    assert last["metrics"]["epoch"] == 2
    rows = list(csv.DictReader(open(root / "data" / "manifest.csv")))
    with open(root / "data" / "val.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["case"] in set(last["training"]["val_cases"]))
    again = calibrate_exact(root / "data" / "val.csv", root / "exact" / "last.pt", root / "again.pt", max_objects=1)
    assert again["offset"] == last["prompt"]["logit_offset_exact"]
    assert again["dice"] == pytest.approx(last["metrics"]["dice_box_exact"], abs=1e-6)
    # fine-tuning such a model with the config as shipped (exact_channel: false) keeps its channel
    res = CliRunner().invoke(cli, [
        "train", str(repo_root / "configs" / "prompt.yaml"), "--set", f"data.source={root / 'data'}",
        "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "data.num_workers=0",
        "--set", "prompt.crop_size=64", "--set", "prompt.val_objects=1",
        "--set", f"model.init={root / 'exact' / 'last.pt'}", "-o", str(root / "exact_ft")])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(root / "exact_ft" / "best.pt")["prompt"]["exact_channel"] is True
    seg = PromptableSegmenter.from_pretrained(root / "exact" / "best.pt")
    seg.set_image(torch.rand(1, 70, 90))
    m = seg.predict(box=(10, 20, 40, 60), exact_box=True)
    assert m.shape == (70, 90) and not m[:10].any() and not m[:, 60:].any()


def test_calibrate_exact_writes_the_best_exact_offset_into_a_copy(tiny_prompt_run, tmp_path):
    from medcnn.engine import load_checkpoint
    from medcnn.prompt.evaluate import calibrate_exact
    from medcnn.prompt.lite import clip_to_box
    from medcnn.prompt.train import load_prompt_case, object_ids

    src = tiny_prompt_run / "run" / "best.pt"
    got = calibrate_exact(tiny_prompt_run / "data", src, tmp_path / "cal.pt", max_objects=2)
    old, new = load_checkpoint(src), load_checkpoint(tmp_path / "cal.pt")
    assert new["prompt"]["logit_offset_exact"] == got["offset"] in CALIBRATION_OFFSETS
    assert new["prompt"]["logit_offset"] == old["prompt"]["logit_offset"] and new["metrics"]["dice_box_exact"] == got["dice"]
    assert all(torch.equal(new["state_dict"][k], v) for k, v in old["state_dict"].items())
    # by hand: no other offset does better on the same objects
    be = PromptableSegmenter.from_pretrained(src).backend
    scores = {o: [] for o in CALIBRATION_OFFSETS}
    from medcnn.prompt.evaluate import _records

    for rec in _records(tiny_prompt_run / "data"):
        for sl in load_prompt_case(rec["image"][0], rec["label"]):
            be.set_image(sl["image"].float()[None])
            for v in object_ids(sl["label"])[:2]:
                ref = (sl["label"] == v).numpy()
                box = object_bbox(ref)
                lg = clip_to_box(be.predict_logits(boxes=torch.from_numpy(box)[None], exact_box=True)[0], box.tolist())
                lg = lg - be.spec.logit_offset  # the calibration adds its own offsets to the raw network logits
                for o in CALIBRATION_OFFSETS:
                    scores[o].append(2 * float(((lg + o > 0).numpy() & ref).sum()) / max(1, (lg + o > 0).sum().item() + ref.sum()))
    assert got["objects"] == len(scores[0.0])
    assert max(np.mean(v) for v in scores.values()) == pytest.approx(got["dice"], abs=1e-9)
    assert _cli(["calibrate", "exact-box", "--model", str(src), "-o", str(tmp_path / "x.pt")]).exit_code == 2  # no DATA
    with pytest.raises(InputError, match="nothing to calibrate"):
        from medcnn.prompt import build_sam

        sam = build_sam("vit_b", img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                        encoder_global_attn_indexes=(1,), window_size=3, prompt_embed_dim=32, decoder_mlp_dim=64,
                        iou_head_hidden_dim=32)
        torch.save(sam.state_dict(), tmp_path / "sam.pth")
        calibrate_exact(tiny_prompt_run / "data", tmp_path / "sam.pth", tmp_path / "y.pt")


def test_fit_offsets_writes_per_prompt_offset_models_into_a_copy(tiny_prompt_run, tmp_path, capsys):
    from medcnn.engine import load_checkpoint
    from medcnn.prompt.evaluate import calibrate_exact, fit_offsets
    from medcnn.synth import generate

    generate("prompt", tmp_path / "cal", n=24, seed=6, progress=False)  # images the tiny model never saw
    src = tiny_prompt_run / "run" / "best.pt"
    rep = fit_offsets(tmp_path / "cal", src, tmp_path / "fit.pt")
    assert rep["objects"] >= 50 and set(rep) == {"objects", "exact", "tight", "jitter"}
    assert all(0.0 <= rep[k][m] <= 1.0 for k in ("exact", "tight", "jitter") for m in ("fixed", "adaptive_cv"))
    old, new = load_checkpoint(src), load_checkpoint(tmp_path / "fit.pt")
    assert all(torch.equal(new["state_dict"][k], v) for k, v in old["state_dict"].items())
    assert set(new["prompt"]["offset_model"]) == {"drawn", "exact"} and new["metrics"]["offset_model_fit"] == rep
    assert {k: v for k, v in new["prompt"].items() if k != "offset_model"} == old["prompt"]
    be = PromptableSegmenter.from_pretrained(tmp_path / "fit.pt").backend
    assert be.spec.adaptive(False) is not None and be.spec.adaptive(True) is not None
    # the copy segments (per-prompt offsets on boxes alone), and recalibrating it drops the now stale models
    seg = PromptableSegmenter.from_pretrained(tmp_path / "fit.pt")
    seg.set_image(torch.rand(1, 64, 64))
    assert seg.predict(box=(10, 10, 40, 50)).shape == (64, 64)
    calibrate_exact(tmp_path / "cal", tmp_path / "fit.pt", tmp_path / "recal.pt", max_objects=1)
    assert "offset_model" not in load_checkpoint(tmp_path / "recal.pt")["prompt"]
    res = _cli(["calibrate", "offsets", str(tmp_path / "cal"), "--model", str(src), "-o", str(tmp_path / "fit2.pt")])
    assert res.exit_code == 0 and "per-prompt (5-fold CV)" in res.stdout and (tmp_path / "fit2.pt").is_file()
    for bad in (["--model", str(src), "-o", "x.pt"], [str(tmp_path / "cal"), "-o", "x.pt"]):
        assert _cli(["calibrate", "offsets", *bad]).exit_code == 2
    generate("prompt", tmp_path / "few", n=2, seed=7, progress=False)
    with pytest.raises(InputError, match="too few"):
        fit_offsets(tmp_path / "few", src, tmp_path / "few.pt")
    # several folders fit as one set (case ids kept apart by folder), only with --fit-offsets
    both = fit_offsets([tmp_path / "cal", tmp_path / "few"], src, tmp_path / "both.pt")
    assert both["objects"] > rep["objects"]
    assert _cli(["evaluate-run", "prompt", str(tmp_path / "cal"), str(tmp_path / "few"), "--model", str(src)]).exit_code == 2


def _cli(args: list[str]):
    from click.testing import CliRunner

    from medcnn.cli.main import cli

    return CliRunner().invoke(cli, args)
