"""Shared fixtures: the repository root and small image builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_overrides import TINY_OVERRIDES

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



@pytest.fixture(scope="session")
def tiny_brain_model(tiny_brats, tmp_path_factory, repo_root) -> Path:
    """A one-epoch brain-tumour checkpoint trained on :func:`tiny_brats` (fast, not accurate)."""
    from medcnn.engine import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(repo_root / "configs" / "brain_tumor.yaml", [f"data.source={tiny_brats}", *TINY_OVERRIDES], run)
    return run / "best.pt"


@pytest.fixture(scope="session")
def tiny_cxr(tmp_path_factory) -> Path:
    """Eight small generated chest radiographs (PNG 8/16 bit, MONOCHROME1/2 DICOM) with masks and label CSVs."""
    from medcnn.synth import generate

    out = tmp_path_factory.mktemp("tiny_cxr")
    generate("chest-xray", out, n=8, seed=0, size=(160, 128), formats=("png", "png16", "dcm-mono1", "dcm-mono2"),
             prevalence=0.5)
    return out


TINY_CXR_OVERRIDES = ["train.epochs=1", "train.val_every=1", "train.batch_size=4", "preprocess.square_size=64",
                      "data.val_fraction=0.25", "train.augment.names=[spatial,intensity]"]


@pytest.fixture(scope="session")
def tiny_cxr_models(tiny_cxr, tmp_path_factory, repo_root) -> tuple[Path, Path]:
    """One-epoch (findings, lungs) checkpoints trained on :func:`tiny_cxr` (fast, not accurate)."""
    from medcnn.engine import train

    findings = tmp_path_factory.mktemp("tiny_cxr_findings")
    train(repo_root / "configs" / "chest_xray.yaml", [f"data.source={tiny_cxr}", *TINY_CXR_OVERRIDES,
                                                      "model.kwargs.growth_rate=4", "model.kwargs.init_features=8"], findings)
    lungs = tmp_path_factory.mktemp("tiny_cxr_lungs")
    train(repo_root / "configs" / "chest_xray_lungs.yaml", [f"data.source={tiny_cxr / 'manifest.csv'}", *TINY_CXR_OVERRIDES,
                                                            "train.patch_size=[64,64]", "inference.roi_size=[64,64]",
                                                            "model.kwargs.channels=[8,16,32]", "model.kwargs.strides=[2,2]",
                                                            "model.kwargs.num_res_units=1"], lungs)
    return findings / "best.pt", lungs / "best.pt"


@pytest.fixture(scope="session")
def tiny_cxr_nodule(tiny_cxr, tmp_path_factory, repo_root) -> Path:
    """A one-epoch nodule detector (configs/chest_xray_nodule.yaml) trained on :func:`tiny_cxr`."""
    from medcnn.engine import train

    run = tmp_path_factory.mktemp("tiny_cxr_nodule")
    train(repo_root / "configs" / "chest_xray_nodule.yaml",
          [f"data.source={tiny_cxr / 'manifest.csv'}", "train.epochs=1", "train.val_every=1", "train.batch_size=4",
           "train.patch_size=[32,32]", "inference.roi_size=[64,64]", "data.val_fraction=0.25", "data.cache=true",
           "model.kwargs.channels=[4,8,16]", "model.kwargs.strides=[2,2]"], run)
    return run / "last.pt"
