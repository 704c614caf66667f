"""Planner: fingerprint of a tiny nnU-Net-layout set, anisotropy-aware spacing, memory budget, CT/MR normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from medcnn.engine.plan import activation_bytes, fingerprint, make_plan, target_spacing, write_plan  # noqa: E402


def _dataset(root: Path, n: int, shape: tuple[int, ...], spacing: tuple[float, ...], channel: str) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.asarray(shape).reshape(-1, *[1] * len(shape)) / 2
    lab = (((grid - centre) ** 2).sum(0) < (min(shape) / 4) ** 2).astype(np.uint8)
    aff = np.diag([*spacing, 1.0][:4] if len(spacing) == 3 else [*spacing, 1.0, 1.0])
    for i in range(n):
        img = rng.normal(0, 10, shape).astype(np.float32) + 100.0 * lab + (-500.0 if channel == "CT" else 0)
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"case{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / "labelsTr" / f"case{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel},
                                                   "labels": {"background": 0, "sphere": 1},
                                                   "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def test_anisotropic_ct(tmp_path: Path) -> None:
    fp = fingerprint(_dataset(tmp_path / "ct", 3, (24, 24, 8), (0.8, 0.8, 5.0), "CT"))
    assert fp["modality"] == "ct" and fp["anisotropy"] == pytest.approx(6.25)
    assert fp["intensity"][0]["mean"] == pytest.approx(-400, abs=5)  # foreground only
    cfg = make_plan(fp, source="x")
    assert cfg["preprocess"]["normalize"] == "ct"
    lo, hi = cfg["preprocess"]["ct_window"]
    assert lo < -400 < hi
    mean, std = cfg["preprocess"]["ct_zscore"]  # clip to the foreground's 0.5/99.5 %, then a global z-score
    assert mean == pytest.approx(-400, abs=5) and 0 < std < 200
    assert cfg["preprocess"]["spacing"] == pytest.approx([0.8, 0.8, 5.0])


def test_coarse_axis_takes_low_percentile() -> None:
    fp = {"median_spacing": [0.8, 0.8, 5.0], "anisotropy": 6.25,
          "spacings": [[0.8, 0.8, z] for z in (1.0, 2.0, 5.0, 5.0, 5.0)]}
    assert target_spacing(fp)[2] < 5.0
    iso = {"median_spacing": [1.0, 1.0, 1.2], "anisotropy": 1.2, "spacings": [[1.0, 1.0, 1.2]]}
    assert target_spacing(iso) == [1.0, 1.0, 1.2]


def test_isotropic_mri_and_memory_budget(tmp_path: Path) -> None:
    fp = fingerprint(_dataset(tmp_path / "mr", 2, (24, 24, 24), (1.0, 1.0, 1.0), "T1"))
    assert fp["modality"] == "mr" and fp["spatial_dims"] == 3
    fp["median_shape"] = [400, 400, 400]  # a large volume: the patch must shrink to the budget
    for gb in (0.5, 4.0):
        cfg = make_plan(fp, source="x", memory_gb=gb, device="cuda")
        assert cfg["preprocess"]["normalize"] == "zscore"
        patch = cfg["train"]["patch_size"]
        used = activation_bytes(patch, cfg["model"]["kwargs"]["filters"], cfg["train"]["batch_size"],
                                cfg["preprocess"]["spacing"])
        assert used <= gb * 1024 ** 3 * 1.01 or min(patch) == 16
    small = make_plan(fp, source="x", memory_gb=0.5, device="cuda")["train"]["patch_size"]
    big = make_plan(fp, source="x", memory_gb=4.0, device="cuda")["train"]["patch_size"]
    assert np.prod(small) < np.prod(big)


def test_cpu_plan_is_low_resolution_and_narrow() -> None:
    """On cpu a large volume gets a coarser spacing so that one small patch still covers the median image."""
    from medcnn.engine.plan import CPU_MAX_PATCH_VOXELS

    fp = {"spatial_dims": 3, "median_spacing": [0.8, 0.8, 2.5], "median_shape": [512, 512, 120], "anisotropy": 3.1,
          "spacings": [[0.8, 0.8, 2.5]] * 3, "modality": "ct", "channels": ["CT"], "labels": {1: "liver"},
          "intensity": [{"mean": 50.0, "std": 100.0, "p00_5": -900.0, "p99_5": 300.0}]}
    gpu, cpu = make_plan(fp, source="x", device="cuda"), make_plan(fp, source="x", device="cpu")
    assert gpu["preprocess"]["spacing"] == [0.8, 0.8, 2.5]
    f = cpu["preprocess"]["spacing"][0] / 0.8
    assert f > 2 and cpu["preprocess"]["spacing"] == pytest.approx([0.8 * f, 0.8 * f, 2.5 * f], rel=1e-3)
    covered = [p * s for p, s in zip(cpu["train"]["patch_size"], cpu["preprocess"]["spacing"])]
    assert all(c >= 0.85 * n * s for c, n, s in zip(covered, fp["median_shape"], fp["median_spacing"]))
    assert np.prod(cpu["train"]["patch_size"]) <= 1.5 * CPU_MAX_PATCH_VOXELS
    assert max(cpu["model"]["kwargs"]["filters"]) < max(gpu["model"]["kwargs"]["filters"])


def test_2d_inputs(tmp_path: Path) -> None:
    fp = fingerprint(_dataset(tmp_path / "xr", 2, (64, 48), (0.5, 0.5), "xray"))
    assert fp["spatial_dims"] == 2 and len(fp["median_spacing"]) == 2
    cfg = make_plan(fp, source="x")
    assert len(cfg["train"]["patch_size"]) == 2 and cfg["model"]["kwargs"]["spatial_dims"] == 2


def test_plan_is_a_valid_config(tmp_path: Path) -> None:
    from medcnn.engine.schema import load_train_config

    root = _dataset(tmp_path / "mr", 2, (24, 24, 24), (1.0, 1.0, 1.0), "T1")
    fp = fingerprint(root)
    write_plan(make_plan(fp, source=str(root), epochs=1), fp, tmp_path / "plan.yaml", gpus=2)
    assert (tmp_path / "fingerprint.json").exists()
    assert "torchrun --nproc_per_node 2" in (tmp_path / "plan.yaml").read_text()
    cfg = load_train_config(tmp_path / "plan.yaml")
    assert cfg["model"]["name"] == "dynunet" and cfg["train"]["epochs"] == 1


def test_train_auto_end_to_end(tmp_path: Path) -> None:
    import torch
    from click.testing import CliRunner

    from medcnn.cli.main import cli

    root = _dataset(tmp_path / "ds", 6, (24, 24, 24), (1.0, 1.0, 1.0), "T1")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", str(root), "--auto", "--device", "cpu", "--set", "train.epochs=1",
                                   "--set", "train.val_every=1", "-o", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "plan.yaml").exists() and (run / "fingerprint.json").exists()
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    cfg = ckpt["training"]["config"]  # the plan travels in the checkpoint as the training config
    assert ckpt["model"]["name"] == "dynunet" and cfg["preprocess"]["normalize"] == "zscore"
    assert cfg["train"]["patch_size"] == ckpt["inference"]["roi_size"]


def test_plan_is_deterministic_so_every_ddp_rank_makes_the_same(tmp_path: Path) -> None:
    """train --auto under torchrun plans on every rank (only rank 0 writes into the run folder): equal plans."""
    from medcnn.engine.plan import plan_dataset

    root = _dataset(tmp_path / "ds", 3, (24, 24, 16), (1.0, 1.0, 2.0), "CT")
    a = plan_dataset(root, tmp_path / "a" / "plan.yaml")
    b = plan_dataset(root, tmp_path / "b" / "plan.yaml")
    assert a == b
    assert (tmp_path / "a" / "plan.yaml").read_text() == (tmp_path / "b" / "plan.yaml").read_text()
    assert (tmp_path / "a" / "fingerprint.json").read_text() == (tmp_path / "b" / "fingerprint.json").read_text()


def test_ct_zscore_normalisation_clips_then_standardises() -> None:
    import torch

    from medcnn.transforms.model_grid import normalize

    x = torch.tensor([[-3000.0, -1000.0, 40.0, 140.0, 5000.0]])
    plain = normalize(x, {"normalize": "ct", "ct_window": [-1000.0, 1000.0]})
    torch.testing.assert_close(plain, torch.tensor([[0.0, 0.0, 0.52, 0.57, 1.0]]))
    z = normalize(x, {"normalize": "ct", "ct_window": [-1000.0, 1000.0], "ct_zscore": [40.0, 100.0]})
    torch.testing.assert_close(z, torch.tensor([[-10.4, -10.4, 0.0, 1.0, 9.6]]))


def test_mr_with_zero_background_gets_a_masked_zscore(tmp_path: Path) -> None:
    """Skull-stripped-like MR (most voxels exactly 0): z-score inside the non-zero voxels, as nnU-Net's mask rule."""
    root = _dataset(tmp_path / "mr", 2, (24, 24, 24), (1.0, 1.0, 1.0), "T1")
    for f in (root / "imagesTr").iterdir():  # zero outside a central ball
        img = nib.load(f)
        arr = np.asarray(img.dataobj)
        g = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"))
        arr[((g - 12) ** 2).sum(0) > 8 ** 2] = 0
        nib.save(nib.Nifti1Image(arr, img.affine), f)
    fp = fingerprint(root)
    assert fp["nonzero_fraction"] < 0.3
    assert make_plan(fp, source="x")["preprocess"]["normalize"] == "brain_mri"
    full = fingerprint(_dataset(tmp_path / "full", 2, (24, 24, 24), (1.0, 1.0, 1.0), "T1"))
    assert full["nonzero_fraction"] == 1.0 and make_plan(full, source="x")["preprocess"]["normalize"] == "zscore"
