"""``train.compile``: the training steps run through ``torch.compile``; checkpoints stay plain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_overrides import TINY_OVERRIDES

from medcnn.engine import load_checkpoint, train


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None and shutil.which("clang") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_compiled_training_matches_eager(tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    cfg = repo_root / "configs" / "brain_tumor.yaml"
    common = [f"data.source={tiny_brats}", *TINY_OVERRIDES, "train.augment.names=[]", "train.max_steps_per_epoch=2"]
    from torch._dynamo.utils import counters

    counters.clear()
    eager = train(cfg, common, tmp_path / "eager")
    assert counters["stats"]["unique_graphs"] == 0, "train.compile defaults to false"
    compiled = train(cfg, [*common, "train.compile=true"], tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] >= 1, "the training steps did not go through torch.compile"
    # same seed, same batches: the compiled graph computes the same loss (float rounding of fused kernels)
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-3, abs=1e-4)
    ck = load_checkpoint(tmp_path / "compiled" / "last.pt")
    assert not any("_orig_mod" in k for k in ck["state_dict"]), "the compile wrapper leaked into the checkpoint"
    assert ck["state_dict"].keys() == load_checkpoint(tmp_path / "eager" / "last.pt")["state_dict"].keys()
