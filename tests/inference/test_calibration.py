"""Temperature scaling (medcnn.inference.calibration): the fit recovers a known temperature, a checkpoint's
``calibration`` section rescales the probabilities without moving the argmax, its absence changes nothing, a
bad temperature is refused at load, and ``medcnn calibrate temperature`` writes a copy with identical weights."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from relyhelp import head_volume, tiny_checkpoint, write_nifti  # noqa: E402
from relyhelp import one_torch_thread  # noqa: E402,F401 - autouse fixture

from medcnn.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from medcnn.errors import InputError  # noqa: E402
from medcnn.inference.calibration import CALIBRATION_KEY, fit_temperature, nll, probabilities, section  # noqa: E402
from medcnn.io import load  # noqa: E402
from medcnn.predictor import load_model  # noqa: E402


def _overconfident(t_true: float, n: int = 4000, k: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the logits reported are z * t_true (an overconfident network)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, k))
    p = probabilities(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z * t_true, y


@pytest.mark.parametrize("t_true,k", [(2.5, 2), (0.6, 3)])
def test_fit_recovers_the_true_temperature(t_true: float, k: int) -> None:
    logits, y = _overconfident(t_true, k=k)
    t = fit_temperature(logits, y)
    assert abs(t - t_true) / t_true < 0.1, t
    assert nll(logits, y, t) < nll(logits, y, 1.0)


def test_fit_recovers_a_multilabel_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(3000, 4))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(int)
    assert abs(fit_temperature(z * 3.0, y, multilabel=True) - 3.0) < 0.3
    assert abs(fit_temperature(z[:, 0] * 3.0, y[:, 0]) - 3.0) < 0.45  # one column: one label of a multi-label model


def test_fit_refuses_non_finite_logits() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_temperature(np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny untrained alzheimer checkpoint and a T1-like volume."""
    root = tmp_path_factory.mktemp("cal")
    vol, aff = head_volume()
    return tiny_checkpoint("alzheimer", root / "tiny.pt", seed=3), write_nifti(root / "t1.nii.gz", vol, aff)


def _with_section(src: Path, dest: Path, sec: object) -> Path:
    ck = load_checkpoint(src)
    ck[CALIBRATION_KEY] = sec
    return save_checkpoint(ck, dest)


def test_section_divides_the_logits_and_keeps_the_argmax(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, t1 = tiny
    img = load(t1)
    plain = load_model(ckpt)
    for t in (0.25, 3.0):
        cal = load_model(_with_section(ckpt, tmp_path / f"cal{t}.pt", section(t, n_fit=10)))
        z = plain.predict_logits(img)
        assert torch.equal(cal.predict_logits(img), z)  # the network is untouched; only the probability step moves
        got, before = cal.predict_proba(img), plain.predict_proba(img)
        assert torch.allclose(got, torch.softmax(z / t, dim=-1), atol=1e-6)
        assert int(got.argmax()) == int(before.argmax())
        # T < 1 sharpens, T > 1 softens: the top probability moves away from / towards 1/K
        assert (got.max() > before.max()) if t < 1 else (got.max() < before.max())


def test_absent_section_leaves_outputs_unchanged(tiny: tuple[Path, Path]) -> None:
    ckpt, t1 = tiny
    model = load_model(ckpt)
    img = load(t1)
    assert CALIBRATION_KEY not in model.config
    z = model.predict_logits(img)
    assert torch.equal(model.predict_proba(img), torch.softmax(z, dim=-1))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2", True, None, [1.0, 2.0]])
def test_bad_temperature_is_refused_at_load(tiny: tuple[Path, Path], tmp_path: Path, bad: object) -> None:
    ckpt, _ = tiny
    path = _with_section(ckpt, tmp_path / "bad.pt", {"method": "temperature", "temperature": bad})
    with pytest.raises(InputError, match="calibration.temperature") as err:
        load_model(path)
    assert "bad.pt" in str(err.value)


def test_unknown_method_is_refused_at_load(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    path = _with_section(tiny[0], tmp_path / "m.pt", {"method": "isotonic", "temperature": 1.0})
    with pytest.raises(InputError, match="isotonic"):
        load_model(path)


def test_cli_fits_and_writes_a_copy_with_identical_weights(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from medcnn.cli.main import cli

    ckpt, _ = tiny
    data = tmp_path / "bids"
    rows = ["participant_id\tdiagnosis"]
    for i in range(6):
        vol, aff = head_volume(seed=i)
        vol = vol * (1.0 + 0.3 * (i % 2))  # a class-dependent brightness so the network's logits differ between classes
        write_nifti(data / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", vol, aff)
        rows.append(f"sub-{i:02d}\t{'AD' if i % 2 else 'CN'}")
    (data / "participants.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cal.pt"
    res = CliRunner().invoke(cli, ["calibrate", "temperature", "alzheimer", str(data), "-o", str(out), "--model", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert "fitted on 6 case(s)" in res.output and "nll" in res.output and "ece" in res.output
    old, new = load_checkpoint(ckpt), load_checkpoint(out)
    assert set(new) - set(old) == {CALIBRATION_KEY}
    assert list(old["state_dict"]) == list(new["state_dict"])
    for k, v in old["state_dict"].items():
        assert v.dtype == new["state_dict"][k].dtype and torch.equal(v, new["state_dict"][k]), k
    sec = new[CALIBRATION_KEY]
    assert sec["method"] == "temperature" and sec["n_fit"] == 6 and math.isfinite(sec["temperature"]) and sec["temperature"] > 0
    nll_before, nll_after = sec["fit"]["nll"]
    assert nll_after <= nll_before + 1e-9
    load_model(out)  # the copy loads and validates


def test_cli_refuses_an_unsupported_pipeline(tmp_path: Path) -> None:
    from medcnn.cli.main import cli

    res = CliRunner().invoke(cli, ["calibrate", "temperature", "brain-tumor", str(tmp_path), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "supports alzheimer" in res.output
