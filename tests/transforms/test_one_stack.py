"""One preprocessing stack: model-grid preprocessing and presets share CT_WINDOWS; the old import path works."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

import medcnn.preprocessing as old
from medcnn.transforms import CT_WINDOWS, ct_preset
from medcnn.transforms import model_grid


def test_old_import_path_is_the_same_stack() -> None:
    assert old.CT_WINDOWS is CT_WINDOWS is model_grid.CT_WINDOWS
    assert old.prepare is model_grid.prepare and old.normalize is model_grid.normalize
    # the window training and prediction have used (level 300, width 1500)
    assert CT_WINDOWS["bone"] == (-450.0, 1050.0)


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_named_window_means_the_same_in_both_stacks(name: str) -> None:
    hu = torch.linspace(-2000, 3000, 501).view(1, 501, 1, 1)
    grid = model_grid.normalize(hu, {"normalize": "ct", "ct_window": name})
    preset = ct_preset(window=name)({"image": MetaTensor(hu.clone())})["image"]
    assert torch.allclose(grid, preset.as_tensor(), atol=1e-6)
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
