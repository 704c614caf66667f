"""medcnn's SAM/MedSAM against the ``segment-anything`` package as an oracle.

``segment-anything`` is not a medcnn dependency (``pip install --no-deps segment-anything``);
these tests are skipped without it. It imports torchvision at module level in two places
(``utils/transforms.py``, ``automatic_mask_generator.py``), so a stub is put into
``sys.modules`` for the duration of the import only, and removed afterwards so that other
tests (and MONAI's optional imports) see the real environment.

The oracle side follows MedSAM's official ``MedSAM_Inference.py`` procedure, written out here:
grey -> 3 channels, skimage resize (order 3, preserve_range, anti_aliasing) to the encoder
size, ``astype(uint8)``, min-max to [0, 1] (clip 1e-8), box ``[x0, y0, x1, y1]`` scaled by
``size / [W, H, W, H]``, prompt encoder with the box only, single-mask decoder output, sigmoid,
bilinear upsampling (align_corners=False), threshold 0.5.
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcnn.prompt import PromptableSegmenter, SamConfig, build_sam, infer_sam_config, load_medsam

IMG = 128  # encoder input side of the tiny model
GRID = IMG // 16
TOL = 1e-3


def _import_segment_anything() -> types.ModuleType:
    """Import segment_anything with a temporary torchvision stub when torchvision is absent."""
    try:
        importlib.import_module("torchvision")
        return pytest.importorskip("segment_anything")
    except ImportError:
        pass
    stubs = {
        "torchvision": {},
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": None, "box_area": None},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"resize": None, "to_pil_image": None},
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    try:
        for name, attrs in stubs.items():
            module = types.ModuleType(name)
            for key, value in attrs.items():
                setattr(module, key, value)
            sys.modules[name] = module
        return pytest.importorskip("segment_anything")
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@pytest.fixture(scope="module")
def sa() -> types.ModuleType:
    return _import_segment_anything()


def _tiny_reference(sa: types.ModuleType, seed: int = 0) -> torch.nn.Module:
    """A tiny segment_anything Sam (window 3 on an 8x8 grid: padding is exercised), random weights."""
    m = importlib.import_module("segment_anything.modeling")
    torch.manual_seed(seed)
    model = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=3, embed_dim=32, img_size=IMG, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=3,
            out_chans=32,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=32, image_embedding_size=(GRID, GRID), input_image_size=(IMG, IMG), mask_in_chans=16
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
    )
    with torch.no_grad():  # zero-initialised tables / small inits would hide mistakes
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny(sa, tmp_path_factory):
    """(reference model, checkpoint path)."""
    ref = _tiny_reference(sa)
    path = tmp_path_factory.mktemp("medsam") / "tiny_medsam.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_vit_b_state_dict_layout_matches(sa):
    with torch.device("meta"):
        theirs = sa.sam_model_registry["vit_b"]().state_dict()
        ours = build_sam("vit_b").state_dict()
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert infer_sam_config(theirs) == SamConfig()


def test_checkpoint_loads_strictly_with_inferred_config(tiny):
    ref, path = tiny
    ours = load_medsam(path)
    cfg = infer_sam_config(ours.state_dict())
    assert (cfg.img_size, cfg.encoder_embed_dim, cfg.encoder_depth, cfg.encoder_num_heads) == (IMG, 32, 3, 2)
    assert cfg.encoder_global_attn_indexes == (1,) and cfg.window_size == 3
    theirs = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert not ours.training


def test_modules_match_oracle(tiny):
    ref, path = tiny
    ours = load_medsam(path)
    torch.manual_seed(1)
    image = torch.rand(1, 3, IMG, IMG)
    boxes = torch.tensor([[10.0, 20.0, 90.0, 70.0], [0.0, 0.0, 127.0, 127.0]])
    points = (torch.tensor([[[30.0, 40.0], [60.0, 50.0]]]).expand(2, -1, -1), torch.tensor([[1, 0]]).expand(2, -1))
    masks = torch.randn(2, 1, 4 * GRID, 4 * GRID)
    with torch.no_grad():
        emb_ref = ref.image_encoder(image)
        emb = ours.image_encoder(image)
        assert (emb - emb_ref).abs().max() < TOL
        for prompts in (
            {"points": None, "boxes": boxes, "masks": None},
            {"points": points, "boxes": None, "masks": None},
            {"points": points, "boxes": boxes, "masks": masks},
        ):
            s_ref, d_ref = ref.prompt_encoder(**prompts)
            s, d = ours.prompt_encoder(**prompts)
            assert torch.allclose(s, s_ref, atol=1e-5) and torch.allclose(d, d_ref, atol=1e-5)
            for multimask in (False, True):
                low_ref, iou_ref = ref.mask_decoder(emb_ref, ref.prompt_encoder.get_dense_pe(), s_ref, d_ref, multimask)
                low, iou = ours.mask_decoder(emb_ref, ours.prompt_encoder.get_dense_pe(), s, d, multimask)
                assert low.shape == low_ref.shape == (2, 3 if multimask else 1, 4 * GRID, 4 * GRID)
                assert (low - low_ref).abs().max() < TOL
                assert (iou - iou_ref).abs().max() < TOL
                assert (torch.sigmoid(low) - torch.sigmoid(low_ref)).abs().max() < TOL


def _medsam_reference(
    ref: torch.nn.Module, image_hw: np.ndarray, box_xyxy: list[float], points=None, quantize: bool = True
) -> torch.Tensor:
    """MedSAM_Inference.py's procedure on an (H, W) or (H, W, 3) image: probabilities (H, W)."""
    from skimage import transform

    img_3c = np.repeat(image_hw[:, :, None], 3, axis=-1) if image_hw.ndim == 2 else image_hw
    h, w, _ = img_3c.shape
    img = transform.resize(img_3c, (IMG, IMG), order=3, preserve_range=True, anti_aliasing=True)
    if quantize:
        img = img.astype(np.uint8)
    img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
    tensor = torch.tensor(img).float().permute(2, 0, 1).unsqueeze(0)
    box = np.array([box_xyxy]) / np.array([w, h, w, h]) * IMG
    with torch.no_grad():
        embedding = ref.image_encoder(tensor)
        box_t = torch.as_tensor(box, dtype=torch.float)[:, None, :]
        pts = None
        if points is not None:
            coords, labels = points
            coords = torch.as_tensor(np.asarray(coords, dtype=np.float64) / np.array([w, h]) * IMG, dtype=torch.float)
            pts = (coords[None], torch.as_tensor(labels)[None])
        sparse, dense = ref.prompt_encoder(points=pts, boxes=box_t, masks=None)
        low, _ = ref.mask_decoder(
            image_embeddings=embedding, image_pe=ref.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        probs = F.interpolate(torch.sigmoid(low), size=(h, w), mode="bilinear", align_corners=False)
    return probs[0, 0]


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A blurry blob image, as float values."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 25)
        img += rng.uniform(50, 150) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return img


@pytest.mark.parametrize("shape", [(90, 120), (150, 70)])
def test_segmenter_reproduces_medsam_inference(tiny, shape, rng):
    ref, path = tiny
    h, w = shape
    image = np.clip(_smooth_image(rng, h, w) + 20, 0, 255).astype(np.uint8)  # an 8-bit grey image
    seg = PromptableSegmenter.from_pretrained(path)
    seg.set_image(torch.from_numpy(image)[None].float())  # (1, H, W) float holding 8-bit values
    boxes = [(10, 15, 60, 50), (0, 0, h, w), (h // 3, w // 4, h - 5, w - 2)]
    for i0, j0, i1, j1 in boxes:
        expected = _medsam_reference(ref, image, [j0, i0, j1 - 1, i1 - 1])
        logits = seg.predict(box=(i0, j0, i1, j1), return_logits=True)
        assert logits.shape == (h, w) and logits.dtype == torch.float32
        assert (torch.sigmoid(logits) - expected).abs().max() < TOL
        mask = seg.predict(box=(i0, j0, i1, j1))
        decided = (expected - 0.5).abs() > TOL
        assert torch.equal(mask[decided], (expected > 0.5)[decided])
    # The convention is discriminating: the transposed / inclusive-max readings give other outputs.
    i0, j0, i1, j1 = boxes[0]
    ours = torch.sigmoid(seg.predict(box=(i0, j0, i1, j1), return_logits=True))
    assert (ours - _medsam_reference(ref, image, [i0, j0, i1 - 1, j1 - 1])).abs().max() > 10 * TOL
    assert (ours - _medsam_reference(ref, image, [j0, i0, j1, i1])).abs().max() > TOL
    # several boxes in one call = one call per box
    stacked = seg.predict(box=boxes, return_logits=True)
    for n, b in enumerate(boxes):
        assert torch.allclose(stacked[n], seg.predict(box=b, return_logits=True), atol=1e-4)


def test_points_with_box_match_oracle(tiny, rng):
    ref, path = tiny
    image = np.clip(_smooth_image(rng, 100, 80) + 10, 0, 255).astype(np.uint8)
    seg = PromptableSegmenter.from_pretrained(path)
    seg.set_image(image[None])
    box, pts, labels = (20, 10, 80, 70), [(40, 30), (60, 50)], [1, 0]
    expected = _medsam_reference(ref, image, [10, 20, 69, 79], points=([(30, 40), (50, 60)], labels))
    got = torch.sigmoid(seg.predict(box=box, points=pts, labels=labels, return_logits=True))
    assert (got - expected).abs().max() < TOL


def test_rgb_and_float_intensities_follow_medsam(tiny, rng):
    ref, path = tiny
    seg = PromptableSegmenter.from_pretrained(path)
    rgb = np.stack([np.clip(_smooth_image(rng, 64, 96) + 5 * c, 0, 255) for c in range(3)], -1).astype(np.uint8)
    seg.set_image(rgb.transpose(2, 0, 1))
    expected = _medsam_reference(ref, rgb, [5, 8, 79, 49])
    assert (torch.sigmoid(seg.predict(box=(8, 5, 50, 80), return_logits=True)) - expected).abs().max() < TOL
    # CT-like intensities: no uint8 cast (it would wrap HU values around); min-max after resize.
    ct = _smooth_image(rng, 64, 96) * 10 - 1000.0
    seg.set_image(ct[None])
    expected = _medsam_reference(ref, ct, [5, 8, 79, 49], quantize=False)
    assert (torch.sigmoid(seg.predict(box=(8, 5, 50, 80), return_logits=True)) - expected).abs().max() < TOL
