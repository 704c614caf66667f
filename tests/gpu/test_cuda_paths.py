"""The CUDA paths: bundled pipelines, the promptable segmenter and training on a GPU agree with the CPU.

Skipped where CUDA is not available (CI has no GPU); run on a GPU machine with ``pytest tests/gpu``.
On the GPU the pipelines' ``precision: auto`` is bf16 autocast, so outputs are compared with
tolerances that bf16 rounding can meet and a wrong device placement, layout or dtype cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_overrides import TINY_OVERRIDES

from medcnn.batch import _read_summary
from medcnn.cli.main import cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


#: summary columns that are logits, not probabilities or measures: compared after a sigmoid (on the CPU, bf16
#: against fp32 moves the nodule detector's logit by up to 0.10 on the sample radiographs, 7 % of 1.39)
_LOGIT_COLUMNS = {"nodule_detector"}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@pytest.mark.parametrize("pipeline", ["brain-tumor", "alzheimer", "chest-xray"])
def test_pipeline_on_cuda_matches_cpu(pipeline: str, sample_data: Path, tmp_path: Path) -> None:
    src = sample_data / pipeline
    outs = {}
    for dev in ("cpu", "cuda"):
        res = CliRunner().invoke(cli, ["predict", pipeline, str(src), "-o", str(tmp_path / dev), "--device", dev],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs[dev] = _read_summary(tmp_path / dev / "summary.csv")
    assert outs["cpu"].keys() == outs["cuda"].keys() and outs["cpu"]
    compared = 0
    for case, cpu_row in outs["cpu"].items():
        gpu_row = outs["cuda"][case]
        assert cpu_row["status"] == gpu_row["status"] == "ok", (case, gpu_row)
        for key, text in cpu_row.items():
            a, b = _number(text), _number(gpu_row[key])
            if a is None or b is None or key.endswith(("_s", "seconds")):
                continue
            if key in _LOGIT_COLUMNS:
                a, b = (float(torch.sigmoid(torch.tensor(v))) for v in (a, b))
            # volumes (mL), fractions, probabilities: bf16 moves a few boundary voxels, not more
            assert abs(a - b) <= 0.03 * max(abs(a), 1.0), f"{case} {key}: cpu {a} cuda {b}"
            compared += 1
    assert compared >= len(outs["cpu"]), "no numeric column was compared"


def test_prompt_segmenter_on_cuda_matches_cpu(sample_data: Path) -> None:
    from medcnn import PromptableSegmenter
    from medcnn.io import load

    img = load(sample_data / "prompt" / "images" / "prompt-00001.png").as_tensor().float()
    h, w = img.shape[-2:]
    box = (h // 4, w // 4, 3 * h // 4, 3 * w // 4)
    masks = {}
    for dev in ("cpu", "cuda"):
        seg = PromptableSegmenter.from_pretrained(device=dev)
        seg.set_image(img)
        masks[dev] = seg.predict(box=box).cpu().numpy().astype(bool)
    inter = np.logical_and(masks["cpu"], masks["cuda"]).sum()
    dice = 2 * inter / max(masks["cpu"].sum() + masks["cuda"].sum(), 1)
    assert masks["cpu"].sum() > 0 and dice >= 0.99, dice

    vol = torch.rand(1, 12, 64, 64)
    vol[:, 3:9, 20:40, 18:44] += 2.0
    out = {}
    for dev in ("cpu", "cuda"):
        seg = PromptableSegmenter.from_pretrained(device=dev)
        seg.set_image(vol)
        out[dev] = seg.predict(box=(3, 20, 18, 9, 40, 44)).cpu().numpy().astype(bool)
    inter = np.logical_and(out["cpu"], out["cuda"]).sum()
    assert out["cpu"].sum() > 0 and 2 * inter / (out["cpu"].sum() + out["cuda"].sum()) >= 0.98


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_on_cuda(amp: str, tiny_brats: Path, repo_root: Path, tmp_path: Path) -> None:
    """A tiny training run on the GPU in each precision (fp16 goes through the gradient scaler); its
    checkpoint loads on the CPU and predicts there."""
    from medcnn import load_model
    from medcnn.engine import load_checkpoint, train
    from medcnn.io import load

    run = tmp_path / amp
    res = train(repo_root / "configs" / "brain_tumor.yaml",
                [f"data.source={tiny_brats}", *TINY_OVERRIDES, "train.device=cuda", f"train.amp={amp}"], run)
    assert all(np.isfinite(h["train_loss"]) for h in res["history"])
    ck = load_checkpoint(run / "best.pt")
    assert all(t.device.type == "cpu" for t in ck["state_dict"].values())
    model = load_model(run / "best.pt", device="cpu")
    case = sorted(p for p in tiny_brats.iterdir() if p.is_dir())[0]
    img = load([next(case.glob(f"*-{c}.nii.gz")) for c in ("t1n", "t1c", "t2w", "t2f")])
    assert tuple(model.predict(img).shape) == (1, *img.shape[1:])
