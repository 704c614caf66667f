"""Scoring a ``medcnn predict alzheimer`` summary against participants.tsv (held-out evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medcnn.cli.main import cli
from medcnn.errors import InputError
from medcnn.evaluation.alzheimer import evaluate_summary

PARTICIPANTS = "participant_id\tdiagnosis\tage\nsub-01\tAD\t70\nsub-02\tCN\t71\nsub-03\tAD\t72\nsub-04\tCN\t73\nsub-05\tMCI\t74\n"


def _write(tmp_path: Path, rows: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    summary = tmp_path / "summary.csv"
    summary.write_text("case,inputs,status,error,p_ad,label\n" + "".join(f"{c},x.nii.gz,{s},,{p},\n" for c, s, p in rows))
    tsv = tmp_path / "participants.tsv"
    tsv.write_text(PARTICIPANTS)
    return summary, tsv


def test_metrics_match_a_hand_count(tmp_path: Path) -> None:
    summary, tsv = _write(tmp_path, [
        ("sub-01_ses-01", "ok", "0.9"),   # AD, right
        ("sub-01_ses-02", "ok", "0.4"),   # AD, missed (sessions map to their subject)
        ("sub-02", "ok", "0.3"),          # CN, right
        ("sub-03", "ok", "0.8"),          # AD, right
        ("sub-04", "ok", "0.6"),          # CN, false alarm
        ("sub-04_ses-02", "error", ""),   # failed case: left out
        ("sub-05", "ok", "0.7"),          # MCI: not AD/CN, left out
        ("sub-99", "ok", "0.1"),          # not in participants.tsv
    ])
    rep = evaluate_summary(summary, tsv, tmp_path / "eval")
    assert rep["n"] == 5 and rep["n_positive"] == 3 and rep["n_negative"] == 2
    assert rep["n_failed"] == 1 and rep["n_unmatched"] == 2
    assert rep["confusion_matrix"] == [[1, 1], [1, 2]]  # [[TN, FP], [FN, TP]]
    assert rep["sensitivity"] == pytest.approx(2 / 3) and rep["specificity"] == pytest.approx(1 / 2)
    assert rep["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # AUROC: of the 3 x 2 AD/CN pairs, AD scores higher in 0.9>0.3, 0.9>0.6, 0.4>0.3, 0.8>0.3, 0.8>0.6 -> 5/6
    assert rep["auroc"] == pytest.approx(5 / 6)
    assert sorted(c for c, _, _ in rep["errors"]) == ["sub-01_ses-02", "sub-04"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["auroc"] == pytest.approx(5 / 6)
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 0 and (tmp_path / "eval" / "confusion.png").stat().st_size > 0
    # a stricter operating point moves the false alarm to a true negative
    assert evaluate_summary(summary, tsv, threshold=0.65)["confusion_matrix"] == [[2, 0], [1, 2]]


def test_command_line_prints_the_headline_metrics(tmp_path: Path) -> None:
    summary, tsv = _write(tmp_path, [("sub-01", "ok", "0.9"), ("sub-02", "ok", "0.2"), ("sub-03", "ok", "0.7"), ("sub-04", "ok", "0.1")])
    res = CliRunner().invoke(cli, ["evaluate-run", "alzheimer", str(summary), str(tsv)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["auroc"] == 1.0 and out["balanced_accuracy"] == 1.0 and out["errors"] == []


def test_unusable_inputs_raise(tmp_path: Path) -> None:
    summary, tsv = _write(tmp_path, [("sub-05", "ok", "0.5")])
    with pytest.raises(InputError, match="no ok row"):
        evaluate_summary(summary, tsv)
    bad = tmp_path / "bad.csv"
    bad.write_text("case,status\nsub-01,ok\n")
    with pytest.raises(InputError, match="p_ad"):
        evaluate_summary(bad, tsv)
    with pytest.raises(InputError, match="group .has: participant_id, diagnosis, age"):
        evaluate_summary(summary, tsv, label_column="group")
