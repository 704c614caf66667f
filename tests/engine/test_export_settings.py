"""``medcnn export --set inference.KEY=VALUE``: inference settings change in the exported checkpoint only."""

from __future__ import annotations

from click.testing import CliRunner

from medcnn.cli.main import cli
from medcnn.engine import load_checkpoint


def test_export_sets_inference_settings(tiny_brain_model, tmp_path):
    before = load_checkpoint(tiny_brain_model)["inference"]
    out = tmp_path / "tta.pt"
    res = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(out), "--set", "inference.tta=true",
                                   "--set", "inference.overlap=0.5"])
    assert res.exit_code == 0, res.output
    after = load_checkpoint(out)["inference"]
    assert after["tta"] is True and after["overlap"] == 0.5
    assert after["roi_size"] == before["roi_size"] and after["mode"] == before["mode"]
    assert load_checkpoint(tiny_brain_model)["inference"] == before  # the source is untouched


def test_export_refuses_unknown_or_non_inference_settings(tiny_brain_model, tmp_path):
    bad = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(tmp_path / "a.pt"), "--set", "inference.ttta=true"])
    assert bad.exit_code != 0 and "inference.ttta" in bad.output and "did you mean 'inference.tta'" in bad.output
    wrong = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(tmp_path / "b.pt"), "--set", "inference.overlap=lots"])
    assert wrong.exit_code != 0 and "inference.overlap" in wrong.output
    other = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(tmp_path / "c.pt"), "--set", "train.lr=1"])
    assert other.exit_code == 2 and "only inference" in other.output
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "c.pt").exists()


def test_export_region_min_ml_checked_and_applied(tiny_brain_model, tmp_path):
    import numpy as np
    import torch

    from medcnn.predictor import load_model

    out = tmp_path / "et.pt"
    res = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(out), "--set", "inference.region_min_ml.ET=0.3"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)["inference"]["region_min_ml"] == {"ET": 0.3}
    bad = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(tmp_path / "x.pt"),
                                   "--set", "inference.region_min_ml.EX=0.3"])
    assert bad.exit_code != 0 and "region_min_ml.EX" in bad.output and "unknown region" in bad.output
    model = load_model(out)
    labels = np.zeros((10, 10, 10), dtype=np.int64)
    labels[2:6, 2:6, 2:6] = 1
    labels[3:5, 3:5, 3:5] = 3  # 8 voxels of 8 mm^3: 0.064 mL, below 0.3 (the tumour, 0.51 mL, passes min_component_ml)
    post = model._postprocess(torch.as_tensor(labels), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert not (post == 3).any() and int((post == 1).sum()) == int((labels > 0).sum())


def test_training_config_checks_region_min_ml(repo_root):
    import pytest

    from medcnn.engine.schema import load_train_config
    from medcnn.errors import ConfigError

    cfg = load_train_config(repo_root / "configs" / "brain_tumor.yaml", ["inference.region_min_ml.ET=0.3"])
    assert cfg["inference"]["region_min_ml"] == {"ET": 0.3}
    with pytest.raises(ConfigError, match=r"inference\.region_min_ml\.EX.*unknown region"):
        load_train_config(repo_root / "configs" / "brain_tumor.yaml", ["inference.region_min_ml.EX=0.3"])
    with pytest.raises(ConfigError, match=r"inference\.region_min_ml\.ET"):
        load_train_config(repo_root / "configs" / "brain_tumor.yaml", ["inference.region_min_ml.ET=-1"])


def test_fp16_export_keeps_out_of_range_tensors_in_float32(tiny_brain_model, tmp_path):
    """A tensor beyond float16's range (e.g. a batch-norm variance of 1e6) would turn to inf: it stays float32."""
    import torch

    from medcnn.engine.checkpoint import export_checkpoint, load_checkpoint

    ck = torch.load(tiny_brain_model, weights_only=True, map_location="cpu")
    names = [k for k, v in ck["state_dict"].items() if torch.is_floating_point(v)]
    big, small = names[0], names[1]
    ck["state_dict"][big] = ck["state_dict"][big].clone().float()
    ck["state_dict"][big].view(-1)[0] = 2.5e6
    src = tmp_path / "big.pt"
    torch.save(ck, src)
    export_checkpoint(src, tmp_path / "out.pt")
    out = load_checkpoint(tmp_path / "out.pt")["state_dict"]
    assert out[big].dtype == torch.float32 and torch.equal(out[big], ck["state_dict"][big])
    assert out[small].dtype == torch.float16 and torch.isfinite(out[small].float()).all()


def test_export_sets_score_fusion_weights(tiny_brain_model, tmp_path):
    """``inference.score_fusion`` (a detector's logistic-fusion weights) is stored; a malformed one is refused."""
    out = tmp_path / "fused.pt"
    res = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(out), "--set",
                                   "inference.score_fusion=[1.2,0.35,-3.1]"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)["inference"]["score_fusion"] == [1.2, 0.35, -3.1]
    bad = CliRunner().invoke(cli, ["export", str(tiny_brain_model), "-o", str(tmp_path / "bad.pt"), "--set",
                                   "inference.score_fusion=[1.2,0.35]"])
    assert bad.exit_code != 0 and "w_classifier, w_detector, bias" in bad.output
