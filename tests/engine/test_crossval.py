"""Subject-level k-fold cross-validation: disjoint folds, sessions kept together, per-fold and pooled outputs."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from medcnn.engine.data import find_records, kfold_subjects
from medcnn.errors import ConfigError

TINY = [
    "train.epochs=1", "train.batch_size=2", "train.augment.names=[]", "preprocess.spacing=[6,6,6]",
    "preprocess.size=[24,28,24]", "model.kwargs.channels=[4,8]", "train.device=cpu",
]


@pytest.fixture(scope="module")
def sessions_data(tmp_path_factory) -> Path:
    """Six generated subjects (3 AD, 3 CN), two sessions each, BIDS layout."""
    from medcnn.synth.alzheimer import generate

    out = tmp_path_factory.mktemp("ad_sessions")
    generate(out, 6, seed=11, sessions=2, spacing=6.0)
    return out


def test_kfold_never_splits_a_subject(sessions_data: Path) -> None:
    recs = find_records({"source": str(sessions_data), "format": "auto", "label": "diagnosis"})
    assert len(recs) == 12 and {r["case"] for r in recs} >= {"sub-001_ses-01", "sub-001_ses-02"}
    subjects = [r["subject"] for r in recs]
    folds = kfold_subjects(subjects, 3, seed=4, strata=[r["label"] for r in recs])
    seen: dict[str, int] = {}
    for i, fold in enumerate(folds):
        for s in fold:
            assert s not in seen, f"subject {s} lands in folds {seen[s]} and {i}"
            seen[s] = i
    assert set(seen) == set(subjects)
    # both sessions of a subject sit in the same fold; each fold holds both diagnoses
    for i, fold in enumerate(folds):
        labels = {r["label"] for r in recs if r["subject"] in fold}
        assert labels == {"AD", "CN"}, f"fold {i} is not stratified: {labels}"


def test_cross_validate_two_folds(sessions_data: Path, repo_root: Path, tmp_path: Path) -> None:
    from medcnn.engine.crossval import cross_validate

    out = tmp_path / "cv"
    res = cross_validate(repo_root / "configs" / "alzheimer.yaml", 2, [f"data.source={sessions_data}", *TINY], out)
    for name in ("crossval.csv", "predictions.csv", "roc.png", "confusion.png", "fold0/best.pt", "fold1/best.pt",
                 "fold0/roc.png", "fold1/confusion.png"):
        assert (out / name).is_file(), name
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert list(preds[0])[:5] == ["subject", "case", "fold", "label", "p_ad"]
    assert len(preds) == 12  # every image validated exactly once
    assert len({p["case"] for p in preds}) == 12
    folds_of: dict[str, set[str]] = defaultdict(set)
    for p in preds:
        folds_of[p["subject"]].add(p["fold"])
        assert 0.0 <= float(p["p_ad"]) <= 1.0 and p["label"] in ("AD", "CN")
    assert len(folds_of) == 6 and all(len(f) == 1 for f in folds_of.values()), f"a subject in two folds: {folds_of}"
    rows = list(csv.DictReader(open(out / "crossval.csv")))
    assert [r["fold"] for r in rows] == ["0", "1", "pooled"]
    assert int(rows[-1]["n"]) == 12 and sum(int(r["n"]) for r in rows[:2]) == 12
    for r in rows:
        for k in ("auroc", "balanced_accuracy", "sensitivity", "specificity", "ece"):
            assert 0.0 <= float(r[k]) <= 1.0, (k, r)
        assert int(r["tn"]) + int(r["fp"]) + int(r["fn"]) + int(r["tp"]) == int(r["n"])
    assert res["positive"] == "AD" and len(res["folds"]) == 2 and res["pooled"]["n"] == 12


def test_cross_validate_rejects_bad_folds(repo_root: Path, tmp_path: Path) -> None:
    from medcnn.engine.crossval import cross_validate

    with pytest.raises(ConfigError, match="folds"):
        cross_validate(repo_root / "configs" / "alzheimer.yaml", 1, [], tmp_path)
    with pytest.raises(ConfigError, match="classification"):
        cross_validate(repo_root / "configs" / "brain_tumor.yaml", 2, [], tmp_path)
