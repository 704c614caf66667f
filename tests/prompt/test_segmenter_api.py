"""PromptableSegmenter's public behaviour and MedSAM checkpoint loading (no segment-anything needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcnn.errors import InputError
from medcnn.prompt import (
    MedSAMBackend, PromptableSegmenter, PromptBackend, SamConfig, build_sam, infer_sam_config, load_medsam,
)
from medcnn.prompt.medsam import medsam_boxes, medsam_points
from medcnn.prompt.modeling import SAM_PRESETS

TINY = {
    "img_size": 64, "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,), "window_size": 3, "prompt_embed_dim": 32, "decoder_mlp_dim": 64,
    "iou_head_hidden_dim": 32,
}


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_sam("vit_b", **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.state_dict()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt_api") / "tiny.pth"
    torch.save(_tiny_state(), path)
    return path


@pytest.fixture
def seg(ckpt, rng):
    s = PromptableSegmenter.from_pretrained(ckpt)
    image = rng.normal(100.0, 30.0, size=(1, 40, 56)).astype(np.float32)
    image[:, 10:30, 15:40] += 80
    s.set_image(image)
    return s


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("preset", sorted(SAM_PRESETS))
def test_config_inferred_from_shapes(preset):
    with torch.device("meta"):
        state = build_sam(preset).state_dict()
    assert infer_sam_config(state) == SAM_PRESETS[preset]


def test_training_checkpoint_wrapper_and_ddp_prefix(tmp_path):
    state = _tiny_state()
    wrapped = tmp_path / "train.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    model = load_medsam(wrapped)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert infer_sam_config(state) == SamConfig(**TINY)


def test_bundled_name_loads_the_light_model_or_says_it_is_missing(monkeypatch):
    from medcnn.prompt.lite import LitePromptBackend

    for name in (None, "medcnn-prompt"):
        seg = PromptableSegmenter.from_pretrained(name)
        assert isinstance(seg.backend, LitePromptBackend) and seg.name == "medcnn-prompt"
    monkeypatch.setattr("medcnn.predictor.bundled_path", lambda name: None)
    with pytest.raises(InputError, match="not part of this install"):
        PromptableSegmenter.from_pretrained("medcnn-prompt")


def test_missing_corrupt_and_pickled_checkpoints(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        PromptableSegmenter.from_pretrained(tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="corrupt") as info:
        load_medsam(bad)
    assert info.value.path == str(bad) and "\n" not in str(info.value)
    pickled = tmp_path / "pickled.pth"
    torch.save(build_sam("vit_b", **TINY), pickled)  # a whole module object, not a state_dict
    with pytest.raises(InputError, match="pickled"):
        load_medsam(pickled)


def test_wrong_keys_are_listed(tmp_path):
    state = _tiny_state()
    extra = tmp_path / "extra.pth"
    torch.save({**state, "image_encoder.blocks.0.attn.bogus": torch.zeros(1)}, extra)
    with pytest.raises(InputError, match=r"unexpected key\(s\): image_encoder\.blocks\.0\.attn\.bogus"):
        load_medsam(extra)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if "mask_decoder.output_hypernetworks_mlps.1." not in k}, missing)
    with pytest.raises(InputError, match=r"missing key\(s\): mask_decoder\.output_hypernetworks_mlps\.1"):
        load_medsam(missing)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InputError, match="not a SAM/MedSAM state_dict: missing key"):
        load_medsam(other)
    shapes = tmp_path / "shapes.pth"
    torch.save({**state, "mask_decoder.iou_token.weight": torch.zeros(1, 7)}, shapes)
    with pytest.raises(InputError, match="shapes"):
        load_medsam(shapes)


# ----------------------------------------------------------------------------- coordinates
def test_box_and_point_conversion_to_medsam():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # rows 10..29, columns 20..59
    got = medsam_boxes(boxes, (100, 200), 1024)
    expected = torch.tensor([[20 / 200, 10 / 100, 59 / 200, 29 / 100]]) * 1024
    assert torch.allclose(got, expected)
    assert torch.allclose(medsam_points(torch.tensor([[10.0, 20.0]]), (100, 200), 1024), torch.tensor([[102.4, 102.4]]))


# ----------------------------------------------------------------------------- predict
def test_mask_logits_and_label_map(seg):
    assert isinstance(seg.backend, PromptBackend) and isinstance(seg.backend, MedSAMBackend)
    mask = seg.predict(box=(10, 15, 30, 40))
    logits = seg.predict(box=(10, 15, 30, 40), return_logits=True)
    assert mask.shape == logits.shape == (40, 56)
    assert mask.dtype == torch.bool and logits.dtype == torch.float32
    assert torch.equal(mask, logits > 0) and torch.isfinite(logits).all()

    boxes = [(10, 15, 30, 40), (0, 0, 20, 20), (5, 30, 40, 56)]
    stack = seg.predict(box=boxes, return_logits=True)
    labels = seg.predict(box=boxes)
    assert stack.shape == (3, 40, 56) and labels.shape == (40, 56) and labels.dtype == torch.int32
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3}
    best = stack.argmax(0) + 1
    fg = stack.amax(0) > 0
    assert torch.equal(labels[fg], best[fg].to(torch.int32)) and torch.all(labels[~fg] == 0)
    single = seg.predict(box=[(10, 15, 30, 40)])
    assert single.dtype == torch.int32 and torch.equal(single > 0, mask)


def test_label_map_ties_go_to_later_box(seg):
    same = (10, 15, 30, 40)
    labels = seg.predict(box=[same, same])
    mask = seg.predict(box=same)
    assert torch.equal(labels > 0, mask)
    assert torch.all(labels[mask] == 2)


def test_points_and_mask_input(seg):
    box_only = seg.predict(box=(10, 15, 30, 40), return_logits=True)
    refined = seg.predict(box=(10, 15, 30, 40), points=[(20, 20), (12, 38)], labels=[1, 0], return_logits=True)
    assert refined.shape == (40, 56) and not torch.allclose(refined, box_only)
    assert seg.predict(points=[(20, 20)]).shape == (40, 56)  # labels default to foreground
    prior = seg.predict(box=(10, 15, 30, 40), mask_input=box_only, return_logits=True)
    assert prior.shape == (40, 56) and torch.isfinite(prior).all()
    from_bool = seg.predict(box=(10, 15, 30, 40), mask_input=box_only > 0)
    assert from_bool.dtype == torch.bool


def test_embedding_computed_once(ckpt, rng, monkeypatch):
    seg = PromptableSegmenter.from_pretrained(ckpt)
    calls = []
    original = seg.backend.model.embed_image
    monkeypatch.setattr(seg.backend.model, "embed_image", lambda x: calls.append(1) or original(x))
    seg.set_image(rng.random((3, 32, 32)))
    for box in [(0, 0, 10, 10), (5, 5, 32, 32), (1, 2, 3, 4)]:
        seg.predict(box=box)
    seg.predict(points=[(3, 4)], labels=[1])
    assert len(calls) == 1


def test_input_types_agree(ckpt, rng):
    from monai.data import MetaTensor

    seg = PromptableSegmenter.from_pretrained(ckpt)
    image = rng.integers(0, 255, size=(1, 30, 20)).astype(np.uint8)
    results = []
    for as_type in (lambda a: a, torch.from_numpy, lambda a: MetaTensor(torch.from_numpy(a).float())):
        seg.set_image(as_type(image))
        results.append(seg.predict(box=(2, 3, 25, 18), return_logits=True))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_set_image_validation(ckpt):
    seg = PromptableSegmenter.from_pretrained(ckpt)
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict(box=(0, 0, 5, 5))
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        seg.set_image(torch.zeros(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        seg.set_image(torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        seg.set_image(torch.zeros(16, 16))
    bad = torch.zeros(1, 16, 16)
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        seg.set_image(bad)
    assert seg.image_shape is None
    seg.set_image(torch.rand(1, 4, 16, 16))  # a volume: propagation tests in test_propagation_3d.py
    assert seg.image_shape == (4, 16, 16)
    assert seg.predict(box=(1, 2, 2, 3, 12, 12)).shape == (4, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "box and/or points"),
        ({"box": (0, 0, 5)}, "box must be"),
        ({"box": (5, 0, 5, 10)}, "empty box"),
        ({"box": (10, 10, 5, 20)}, "empty box"),
        ({"box": (0, 0, 41, 10)}, "outside the image"),
        ({"box": (-1, 0, 10, 10)}, "outside the image"),
        ({"box": (0, 0, 10, float("nan"))}, "finite"),
        ({"box": [(0, 0, 10, 10), (0, 0, 10, 57)]}, "outside the image"),
        ({"points": [(40, 0)]}, "outside the image"),
        ({"points": [(1, 2, 3)]}, "points must be"),
        ({"points": [(1, 2)], "labels": [1, 0]}, "label"),
        ({"points": [(1, 2)], "labels": [2]}, "foreground"),
        ({"box": (0, 0, 10, 10), "labels": [1]}, "without points"),
        ({"box": [(0, 0, 10, 10), (1, 1, 5, 5)], "points": [(2, 2)]}, "single object"),
        ({"box": (0, 0, 10, 10), "mask_input": np.zeros((10, 10))}, "shape"),
    ],
)
def test_prompt_validation(seg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        seg.predict(**kwargs)
