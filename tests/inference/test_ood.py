"""The generic OOD statistics: fitting, scoring, checkpoint round trip, hard reasons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcnn.inference import ood


def _cases(rng: np.random.Generator, n: int, shift: float = 0.0):
    stats = [{"a": float(rng.normal(shift, 1)), "b": float(rng.normal(5, 0.5))} for _ in range(n)]
    feats = [rng.normal(shift, 1, 8) for _ in range(n)]
    return stats, feats


def test_fit_flags_far_cases_and_keeps_held_out_ones():
    rng = np.random.default_rng(0)
    sec = ood.fit_ood(*_cases(rng, 60), layer="x")
    held = _cases(rng, 40)
    flagged = [ood.score_ood(sec, s, f).ood for s, f in zip(*held)]
    assert np.mean(flagged) <= 0.1
    s, f = _cases(rng, 1, shift=8.0)
    res = ood.score_ood(sec, s[0], f[0])
    assert res.ood and res.score > 1 and res.reasons
    assert not ood.score_ood(sec, {"a": 0.0, "b": 5.0}, np.zeros(8)).ood


def test_hard_reason_flags_whatever_the_score():
    rng = np.random.default_rng(1)
    sec = ood.fit_ood(*_cases(rng, 20))
    res = ood.score_ood(sec, {"a": 0.0, "b": 5.0}, None, ["DICOM Modality CT"])
    assert res.ood and res.reasons[0] == "DICOM Modality CT"


def test_no_section_gives_empty_fields():
    assert ood.score_ood(None, {"a": 1.0}) is None
    assert ood.judge(None, "c", {"a": 1.0}) == {"ood": "", "ood_score": ""}


def test_section_round_trips_weights_only(tmp_path):
    rng = np.random.default_rng(2)
    sec = ood.fit_ood(*_cases(rng, 20), layer="features")
    torch.save({"ood": sec}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["ood"]
    s, f = _cases(rng, 1, shift=3.0)
    assert ood.score_ood(back, s[0], f[0]).score == pytest.approx(ood.score_ood(sec, s[0], f[0]).score)


def test_too_few_cases_refused():
    with pytest.raises(ValueError, match="at least"):
        ood.fit_ood(*_cases(np.random.default_rng(0), 5))


def test_feature_tap_pools_only_its_thread_and_choose_layer():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, stride=2),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 2))
    layer = ood.choose_layer(net, torch.zeros(1, 1, 32, 32))
    assert layer == "3"  # the 1x1 pooled map, the last coarsest output
    with ood.FeatureTap(net, "2") as tap:
        net(torch.rand(2, 1, 32, 32))
    assert tap.features.shape == (6,)
    net(torch.rand(1, 1, 32, 32))  # after the tap: not recorded, hook removed
    assert len(net[2]._forward_hooks) == 0


def test_dicom_tags_and_colour():
    from pydicom.data import get_testdata_file

    why = ood.dicom_reasons(get_testdata_file("CT_small.dcm"), modalities=ood.RADIOGRAPH_MODALITIES)
    assert any("Modality CT" in w for w in why)
    assert ood.dicom_reasons(__file__, modalities=("CR",)) == []
    grey = np.repeat(np.random.default_rng(0).random((1, 8, 8)), 3, axis=0)
    assert ood.colourfulness(grey) == 0.0
    assert ood.colourfulness(np.random.default_rng(0).random((3, 8, 8))) > 0.1
