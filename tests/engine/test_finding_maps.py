"""Finding maps: a DenseNet-121 head scoring each cell per finding, trained from the findings' masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medcnn.errors import ConfigError
from medcnn.models import create_model
from medcnn.models.maps import DenseNetWithMaps, finding_map_loss, lse_pool

FINDINGS = ["Cardiomegaly", "Effusion", "Consolidation", "Nodule", "Pneumothorax"]
SMALL = dict(spatial_dims=2, in_channels=1, out_channels=5, growth_rate=4, init_features=8)
TINY = ["train.epochs=1", "train.batch_size=4", "preprocess.square_size=64", "data.val_fraction=0.25",
        "train.augment.names=[]", "model.kwargs.growth_rate=4", "model.kwargs.init_features=8"]


def test_lse_pool_between_mean_and_max() -> None:
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    assert torch.allclose(lse_pool(torch.full((1, 1, 3, 3), 1.5), 5.0), torch.tensor([[1.5]]))
    soft, sharp = lse_pool(maps, 0.01), lse_pool(maps, 100.0)
    assert abs(float(soft) - 2.0) < 0.05  # the mean
    assert abs(float(sharp) - (5.0 - math.log(4) / 100.0)) < 1e-4  # the maximum, less log(n)/r


def test_zero_head_gives_the_plain_densenet_logits() -> None:
    """A plain DenseNet-121 checkpoint loads into the map model (head missing) with identical outputs."""
    torch.manual_seed(0)
    plain = create_model("densenet121", **SMALL).eval()
    maps_net = create_model("densenet121", **SMALL, finding_maps=True).eval()
    assert isinstance(maps_net, DenseNetWithMaps)
    missing = maps_net.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["map_head.bias", "map_head.weight"]
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        logits, maps = maps_net(x, return_maps=True)
        assert torch.allclose(logits, plain(x), atol=1e-6)
    assert logits.shape == (2, 5) and maps.shape == (2, 5, 3, 3)  # stride 32
    with torch.no_grad():  # a non-zero map now moves the logit by its pooled value
        maps_net.map_head.bias.fill_(2.0)
        assert torch.allclose(maps_net(x), plain(x) + 2.0, atol=1e-5)


@pytest.mark.parametrize("stride", [16, 8])
def test_finer_map_starts_from_the_coarse_model_and_scores_its_own_cells(stride: int) -> None:
    """map_stride 16/8: a checkpoint of the stride-32 map model loads (fine head missing) with identical
    logits, the map is on the finer grid, and the fine head can mark one fine cell alone."""
    torch.manual_seed(0)
    coarse = create_model("densenet121", **SMALL, finding_maps=True).eval()
    with torch.no_grad():
        coarse.map_head.weight.normal_()
        coarse.map_head.bias.normal_()
    fine = create_model("densenet121", **SMALL, finding_maps=True, map_stride=stride).eval()
    missing = fine.load_state_dict(coarse.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["map_head_fine.bias", "map_head_fine.weight"]
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        lc, mc = coarse(x, return_maps=True)
        lf, mf = fine(x, return_maps=True)
        assert mc.shape == (2, 5, 3, 3) and mf.shape == (2, 5, 96 // stride, 96 // stride)
        assert torch.allclose(lf, lc, atol=1e-5)
        assert torch.allclose(mf, mc.repeat_interleave(32 // stride, 2).repeat_interleave(32 // stride, 3), atol=1e-5)
        fine.map_head_fine.bias[3] = 4.0  # the fine head moves finding 3 only
        lf2, mf2 = fine(x, return_maps=True)
    assert torch.allclose(mf2[:, 3], mf[:, 3] + 4.0, atol=1e-5)
    assert torch.allclose(lf2[:, 3], lf[:, 3] + 4.0, atol=1e-4)
    assert torch.allclose(lf2[:, [0, 1, 2, 4]], lf[:, [0, 1, 2, 4]], atol=1e-6)


def test_map_stride_without_the_map_is_the_plain_densenet_and_bad_strides_fail() -> None:
    plain = create_model("densenet121", **SMALL, map_stride=16)  # finding_maps=false alone turns the map off
    assert not isinstance(plain, DenseNetWithMaps)
    with pytest.raises(ValueError, match="32, 16 or 8"):
        create_model("densenet121", **SMALL, finding_maps=True, map_stride=4)


def test_map_loss_targets_the_cells_a_finding_touches_and_skips_unknown_pairs() -> None:
    maps = torch.zeros(2, 3, 4, 4)
    masks = torch.zeros(2, 3, 32, 32)
    masks[0, 1, 9, 17] = 1  # one pixel -> cell (1, 2) of the 4x4 map
    known = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    maps_good = maps.clone()
    maps_good[:, :] = -8.0
    maps_good[0, 1, 1, 2] = 8.0
    good = finding_map_loss(maps_good, masks, known)
    assert float(good) < 1e-3
    maps_bad = maps_good.clone()
    maps_bad[0, 1, 1, 2] = -8.0  # the finding's cell scored absent
    assert float(finding_map_loss(maps_bad, masks, known)) > 0.1
    # pairs marked unknown do not count, whatever the map says there
    maps_unknown = maps_good.clone()
    maps_unknown[0, 2] = 50.0
    maps_unknown[1, 1:] = 50.0
    assert torch.isclose(finding_map_loss(maps_unknown, masks, known), good)
    assert float(finding_map_loss(maps, masks, torch.zeros(2, 3))) == 0.0


def test_balanced_map_loss_weighs_a_one_cell_finding_like_its_background() -> None:
    """train.map_loss: balanced. A nodule in 1 of 256 cells: scoring it absent is nearly free in the plain mean,
    but costs half the pair's loss when balanced; an all-negative pair keeps the plain mean; unknown pairs skip."""
    maps = torch.full((1, 3, 16, 16), -6.0)
    masks = torch.zeros(1, 3, 64, 64)
    masks[0, 0, 10, 10] = 1  # one pixel -> one cell of finding 0; finding 1 absent; finding 2 unknown
    known = torch.tensor([[1.0, 1.0, 0.0]])
    missed_plain = float(finding_map_loss(maps, masks, known))
    missed_bal = float(finding_map_loss(maps, masks, known, balanced=True))
    bce_neg = float(torch.nn.functional.softplus(torch.tensor(-6.0)))  # BCE of -6 against 0
    bce_pos = float(torch.nn.functional.softplus(torch.tensor(6.0)))  # BCE of -6 against 1
    assert missed_plain == pytest.approx((bce_pos + 511 * bce_neg) / 512, rel=1e-5)
    assert missed_bal == pytest.approx(((0.5 * bce_pos + 0.5 * bce_neg) + bce_neg) / 2, rel=1e-5)
    assert missed_bal > 100 * missed_plain
    found = maps.clone()
    found[0, 0, 2, 2] = 6.0
    found[0, 2] = 50.0  # unknown pair: ignored either way
    assert float(finding_map_loss(found, masks, known, balanced=True)) == pytest.approx(bce_neg, rel=1e-4)
    assert float(finding_map_loss(found, masks, torch.zeros(1, 3), balanced=True)) == 0.0


def _setup(tiny_cxr: Path, repo_root: Path, run: Path, overrides: list[str]):
    from medcnn.engine.schema import load_train_config
    from medcnn.engine.trainer import Trainer

    cfg = load_train_config(repo_root / "configs" / "chest_xray.yaml", [f"data.source={tiny_cxr}", *TINY, *overrides])
    trainer = Trainer(cfg, run)
    trainer.setup()
    return trainer


@pytest.mark.parametrize("stride", [32, 16])
def test_training_reads_masks_and_trains_the_map_head(tiny_cxr, repo_root, tmp_path, stride: int) -> None:
    import csv

    import numpy as np
    from PIL import Image

    trainer = _setup(tiny_cxr, repo_root, tmp_path / "run", [f"model.kwargs.map_stride={stride}"])
    assert trainer.map_classes and 0 not in trainer.map_classes  # Cardiomegaly has no mask
    with open(tiny_cxr / "labels.csv", newline="") as fh:
        rows = {Path(r["Path"]).stem: r for r in csv.DictReader(fh)}
    checked = 0
    for it in trainer.train_items + trainer.val_items:
        row = rows[it["case"]]
        assert it["map_known"][0] == 0  # Cardiomegaly: no map target
        for i in trainer.map_classes:
            name = FINDINGS[i]
            assert row[name] in ("0.0", "1.0")  # the fixture writes no uncertain or blank labels
            assert it["map_known"][i] == 1
            if row[name] == "0.0":
                assert not it["finding_mask"][i].any()
                continue
            drawn = np.asarray(Image.open(tiny_cxr / "masks" / f"{it['case']}_{name}.png")) > 0
            if drawn.mean() > 0.01:
                assert it["finding_mask"][i].any()
                checked += 1
            if not drawn.any():
                assert not it["finding_mask"][i].any()
    assert checked > 0
    x, y = next(trainer._batches(trainer._loader(0)))
    assert isinstance(y, tuple) and y[1].shape[2:] == x.shape[2:]
    heads = [trainer.net.map_head] + ([trainer.net.map_head_fine] if stride < 32 else [])
    before = [h.weight.detach().clone() for h in heads]
    loss = trainer.train_step(x, y)
    assert math.isfinite(loss)
    assert all(not torch.equal(b, h.weight.detach()) for b, h in zip(before, heads))


def test_finding_mask_config_errors(tiny_cxr, repo_root, tmp_path) -> None:
    from medcnn.engine import train

    cfg = repo_root / "configs" / "chest_xray.yaml"
    base = [f"data.source={tiny_cxr}", *TINY]
    with pytest.raises(ConfigError, match="finding_maps"):
        train(cfg, [*base, "model.kwargs.finding_maps=false"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"\{finding\}"):
        train(cfg, [*base, "data.finding_masks=masks/{case}.png"], tmp_path / "b")
    with pytest.raises(ConfigError, match="no mask file matches"):
        train(cfg, [*base, "data.finding_masks=elsewhere/{case}_{finding}.png"], tmp_path / "c")


def test_model_init_from_a_plain_densenet_keeps_its_weights(tiny_cxr, repo_root, tmp_path) -> None:
    """Fine-tuning a label-only checkpoint with finding masks: the map head starts fresh, the rest is loaded."""
    from medcnn.engine import load_checkpoint, train

    cfg = repo_root / "configs" / "chest_xray.yaml"
    base = [f"data.source={tiny_cxr}", *TINY]
    train(cfg, [*base, "model.kwargs.finding_maps=false", "data.finding_masks=null"], tmp_path / "plain")
    plain = tmp_path / "plain" / "last.pt"
    train(cfg, [*base, f"model.init={plain}", "train.lr=1e-12", "train.warmup_epochs=0"], tmp_path / "maps")
    start = load_checkpoint(plain)["state_dict"]
    tuned = load_checkpoint(tmp_path / "maps" / "last.pt")
    assert tuned["model"]["kwargs"]["finding_maps"] is True
    weights = [k for k in start if k.endswith("conv0.weight") or k.endswith("out.weight")]
    assert weights and all(torch.allclose(start[k].float(), tuned["state_dict"][k].float(), atol=1e-6) for k in weights)
    assert "map_head.weight" in tuned["state_dict"] and "map_head.weight" not in start


def test_model_init_across_a_map_stride_change(tiny_cxr, repo_root, tmp_path) -> None:
    """A stride-16 checkpoint initialises a stride-8 network: the fine head (another level, other shapes) starts
    fresh, every other weight is loaded; a non-optional shape mismatch still fails."""
    from medcnn.engine import load_checkpoint, train

    cfg = repo_root / "configs" / "chest_xray.yaml"
    base = [f"data.source={tiny_cxr}", *TINY]
    train(cfg, [*base, "model.kwargs.map_stride=16"], tmp_path / "s16")
    s16 = tmp_path / "s16" / "last.pt"
    train(cfg, [*base, f"model.init={s16}", "model.kwargs.map_stride=8", "train.lr=1e-12", "train.warmup_epochs=0"],
          tmp_path / "s8")
    start = load_checkpoint(s16)["state_dict"]
    tuned = load_checkpoint(tmp_path / "s8" / "last.pt")
    assert tuned["model"]["kwargs"]["map_stride"] == 8
    assert start["map_head_fine.weight"].shape != tuned["state_dict"]["map_head_fine.weight"].shape
    # kernels (batch-norm running statistics move with any training step, whatever the learning rate)
    kept = [k for k in start if not k.startswith("map_head_fine.") and start[k].ndim > 1]
    assert kept and all(torch.allclose(start[k].float(), tuned["state_dict"][k].float(), atol=1e-5) for k in kept)
    with pytest.raises(ConfigError, match="do not fit"):
        train(cfg, [*base, f"model.init={s16}", "model.kwargs.init_features=12"], tmp_path / "wide")
