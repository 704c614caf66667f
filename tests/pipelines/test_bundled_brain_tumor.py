"""The shipped brain-tumour checkpoint: loads safely, is self-describing, and still scores on the shipped
sample cases what was recorded when it was exported (``medcnn export --check``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcnn.engine import load_checkpoint
from medcnn.predictor import bundled_path, load_model
from medcnn.validation import score_cases


@pytest.fixture(scope="module")
def bundled() -> Path:
    path = bundled_path("brain-tumor")
    assert path is not None, "the brain-tumor checkpoint is missing from medcnn/data/models/"
    return path


def test_bundled_checkpoint_is_self_describing_and_small(bundled: Path) -> None:
    ck = load_checkpoint(bundled)
    assert ck["task"] == "segmentation"
    assert ck["labels"]["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert ck["preprocess"]["channel_names"] == ["t1n", "t1c", "t2w", "t2f"]
    assert "resume" not in ck and "config" not in ck["training"]
    assert bundled.stat().st_size < 12 * 2**20
    for key in ("dice_WT", "dice_TC", "dice_ET"):  # sanity floor; the quality targets are measured on held-out cases
        assert ck["metrics"][key] > 0.6, f"validation {key} recorded in the checkpoint is {ck['metrics'][key]}"


def test_bundled_model_still_scores_what_it_recorded(bundled: Path, sample_data: Path) -> None:
    recorded = load_checkpoint(bundled)["sample_scores"]
    assert recorded["pipeline"] == "brain-tumor"
    now = score_cases("brain-tumor", load_model("brain-tumor"), sample_data / "brain-tumor")
    assert set(now) == set(recorded["scores"])
    for case, scores in recorded["scores"].items():
        for k, v in scores.items():
            assert now[case][k] == pytest.approx(v, abs=1e-3), f"{case} {k}: {now[case][k]:.4f} vs recorded {v:.4f}"
    wt = [s["dice_WT"] for s in now.values()]
    assert min(wt) > 0.8, f"the bundled model fails a shipped sample case (WT Dice {wt})"


def test_scores_are_taken_in_fp32_whatever_the_model_precision(sample_data: Path) -> None:
    """Recorded sample scores must not depend on the CPU (bf16 autocast on CPUs with native bf16 moves them)."""
    seen: list[str] = []

    class Recorder:
        config = {"labels": {"regions": {"WT": [1, 2, 3]}}, "inference": {"precision": "bf16"}}

        def predict(self, img):  # an empty label map on the image's grid
            seen.append(self.config["inference"]["precision"])
            return torch.zeros((1, *img.shape[1:]), dtype=torch.int64)

    model = Recorder()
    scores = score_cases("brain-tumor", model, sample_data / "brain-tumor")
    assert seen and set(seen) == {"fp32"}
    assert model.config["inference"]["precision"] == "bf16", "the model's own setting must be restored"
    assert all(np.isfinite(s["dice_WT"]) and s["dice_WT"] == 0.0 for s in scores.values())  # empty vs tumour
