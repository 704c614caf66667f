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
