"""Subject-level splitting: no subject in two folds, ever (the classic leakage of this field)."""

from __future__ import annotations

import numpy as np
import pytest

from medcnn.engine.data import kfold_subjects, split_subjects, subject_of


def _cases(n_subjects: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        lab = "AD" if s % 3 == 0 else "CN"
        for _ in range(int(rng.integers(1, 4))):  # several sessions per subject
            subjects.append(f"sub-{s:03d}")
            labels.append(lab)
    return subjects, labels


@pytest.mark.parametrize("folds", [2, 5])
def test_kfold_partitions_subjects(folds: int) -> None:
    subjects, labels = _cases(40)
    val_folds = kfold_subjects(subjects, folds, seed=3, strata=labels)
    seen = [s for f in val_folds for s in f]
    assert sorted(seen) == sorted(set(subjects)), "every subject in exactly one fold"
    assert len(seen) == len(set(seen))
    for f in range(folds):
        train, val = split_subjects(subjects, folds=folds, fold=f, seed=3, strata=labels)
        assert not set(train) & set(val)
        case_train = {i for i, s in enumerate(subjects) if s in set(train)}
        case_val = {i for i, s in enumerate(subjects) if s in set(val)}
        assert not case_train & case_val
        # stratified: AD share of validation folds close to the overall share
        ad_val = np.mean([labels[subjects.index(s)] == "AD" for s in val])
        assert abs(ad_val - np.mean([labels[subjects.index(s)] == "AD" for s in set(subjects)])) < 0.2


def test_fraction_split_is_seeded_and_disjoint() -> None:
    subjects, _ = _cases(30)
    a = split_subjects(subjects, val_fraction=0.2, seed=1)
    assert a == split_subjects(subjects, val_fraction=0.2, seed=1)
    assert a != split_subjects(subjects, val_fraction=0.2, seed=2)
    assert len(a[1]) == 6 and not set(a[0]) & set(a[1])


def test_subject_with_conflicting_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="different labels"):
        split_subjects(["s1", "s1", "s2"], strata=["AD", "CN", "CN"])


def test_subject_ids() -> None:
    assert subject_of("BraTS-GLI-00012-001") == "BraTS-GLI-00012"
    assert subject_of("sub-07_ses-2") == "sub-07"
    assert subject_of("case_1") == "case_1"
