"""Shared fixtures: the repository root and small image builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_data() -> Path:
    path = REPO / "sample_data"
    if not path.is_dir():
        pytest.fail("sample_data/ is missing from the checkout")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory) -> Path:
    """Four small generated brain-tumour cases (4 mm voxels, BraTS 2023 layout, with labels)."""
    from medcnn.synth import generate

    out = tmp_path_factory.mktemp("tiny_brats")
    generate("brain-tumor", out, n=4, seed=0, spacing=(4.0, 4.0, 4.0))
    return out


TINY_OVERRIDES = [
    "train.epochs=1", "train.val_every=1", "train.patch_size=[32,32,32]", "train.batch_size=2",
    "train.samples_per_case=1", "model.name=unet", "model.kwargs.channels=[8,16,32]", "model.kwargs.strides=[2,2]",
    "model.kwargs.num_res_units=1", "preprocess.spacing=[4,4,4]",
    "inference.roi_size=[32,32,32]", "train.augment.names=[spatial,intensity]", "data.val_fraction=0.25",
]


@pytest.fixture(scope="session")
def tiny_brain_model(tiny_brats, tmp_path_factory, repo_root) -> Path:
    """A one-epoch brain-tumour checkpoint trained on :func:`tiny_brats` (fast, not accurate)."""
    from medcnn.engine import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(repo_root / "configs" / "brain_tumor.yaml", [f"data.source={tiny_brats}", *TINY_OVERRIDES], run)
    return run / "best.pt"
