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


def _recs(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"case": c, "subject": s} for c, s in pairs]


def test_fixed_split_keeps_listed_cases_and_their_subjects_out_of_training() -> None:
    from medcnn.engine.data import fixed_split

    recs = _recs([("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C"), ("new-1", "N")])
    train, val = fixed_split(recs, ["a1", "c1", "gone"])
    assert val == ["A", "C"], "the listed cases' subjects validate"
    assert train == ["B", "N"], "every other subject (also data added since) trains"


def test_fixed_split_refusals() -> None:
    from medcnn.engine.data import fixed_split
    from medcnn.errors import ConfigError

    recs = _recs([("a1", "A"), ("b1", "B")])
    with pytest.raises(ConfigError, match="none of its 1 cases"):
        fixed_split(recs, ["zz"])
    with pytest.raises(ConfigError, match="exclude each other"):
        fixed_split(recs, ["a1"], folds=5)
    with pytest.raises(ConfigError, match="no training subject"):
        fixed_split(recs, ["a1", "b1"])


def test_read_case_list_from_text_and_checkpoint(tiny_brain_model, tmp_path) -> None:
    from medcnn.engine import load_checkpoint
    from medcnn.engine.data import read_case_list
    from medcnn.errors import ConfigError

    txt = tmp_path / "val.txt"
    txt.write_text("# held out\ncase-1\n\n  case-2  # second\n", encoding="utf-8")
    assert read_case_list(txt) == ["case-1", "case-2"]
    stored = load_checkpoint(tiny_brain_model)["training"]["val_cases"]
    assert stored and read_case_list(tiny_brain_model) == stored
    with pytest.raises(ConfigError, match="neither a file nor a bundled model"):
        read_case_list(tmp_path / "missing.txt")


def test_trainer_reuses_a_checkpoints_validation_cases(tiny_brats, tiny_brain_model, repo_root, tmp_path) -> None:
    """``data.val_cases: <checkpoint>``: fine-tuning validates on the cases the checkpoint held out, whatever
    ``val_fraction`` and ``seed`` would draw."""
    from medcnn.engine import load_checkpoint
    from medcnn.engine.schema import load_train_config
    from medcnn.engine.trainer import Trainer

    stored = load_checkpoint(tiny_brain_model)["training"]["val_cases"]
    cfg = load_train_config(repo_root / "configs" / "brain_tumor.yaml",
                            [f"data.source={tiny_brats}", "seed=7", "data.val_fraction=0.5", f"data.val_cases={tiny_brain_model}"])
    t = Trainer(cfg, tmp_path / "run")
    t._split_records(_recs_of(cfg))
    assert [r["case"] for r in t.val_recs] == stored
    assert not {r["case"] for r in t.train_recs} & set(stored)
    drawn = Trainer(load_train_config(repo_root / "configs" / "brain_tumor.yaml",
                                      [f"data.source={tiny_brats}", "seed=7", "data.val_fraction=0.5"]),
                    tmp_path / "drawn")
    drawn._split_records(_recs_of(cfg))
    assert [r["case"] for r in drawn.val_recs] != stored, "the test needs a seed whose own split differs"


def _recs_of(cfg: dict) -> list[dict]:
    from medcnn.engine.data import find_records

    return find_records(cfg["data"])
