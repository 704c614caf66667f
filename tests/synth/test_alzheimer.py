"""Synthetic CN/AD T1 subjects (medcnn.synth.alzheimer)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcnn.synth import alzheimer as AZ
from medcnn.synth.anatomy import load_mni152

FAST = {"spacing": 4.0}


def test_subject_arrays_and_metadata() -> None:
    s = AZ.make_subject(np.random.default_rng(0), "AD", 0.5, spacing=3.0, dtype="float32", skull=True)
    assert s["t1"].ndim == 3 and s["t1"].dtype == np.float32
    assert s["brain_mask"].shape == s["t1"].shape and s["brain_mask"].dtype == bool
    assert s["affine"].shape == (4, 4)
    assert s["diagnosis"] == "AD" and s["severity"] == pytest.approx(0.5)
    assert 55 <= s["age"] <= 92 and s["sex"] in ("F", "M")
    assert np.all(np.isfinite(s["t1"])) and s["t1"].min() >= 0
    assert s["t1"][~s["brain_mask"]].mean() > 0  # skull, scalp and Rician background
    brain = s["t1"][s["brain_mask"]]
    assert brain.mean() > 2 * s["t1"][~s["brain_mask"]].mean()
    assert s["meta"]["skull"] is True
    stripped = AZ.make_subject(np.random.default_rng(0), "CN", spacing=3.0, skull=False, dtype="int16")
    assert stripped["t1"].dtype == np.int16
    assert np.all(stripped["t1"][~stripped["brain_mask"]] == 0)


def test_t1_contrast_wm_gm_csf() -> None:
    anat = load_mni152()
    params = AZ.draw_subject(np.random.default_rng(1), "CN")
    maps = AZ.atrophy_maps(anat, params)
    assert set(maps) >= {"gm", "wm", "csf", "brain", "shell", "ventricles"}
    s = AZ.render_subject(np.random.default_rng(2), params, spacing=2.0, oriented=False, skull=False, noise=0.01, bias=0.0)
    assert s["meta"]["axcodes"] == "RAS"
    t1 = s["t1"]
    ref = np.median(t1[s["brain_mask"]])
    # bright (WM-like) voxels outnumber dark (CSF-like) ones inside the brain; CSF darkest
    assert (t1[s["brain_mask"]] > ref).mean() == pytest.approx(0.5, abs=0.02)
    assert np.percentile(t1[s["brain_mask"]], 5) < 0.6 * ref < np.percentile(t1[s["brain_mask"]], 95)


def test_stored_affine_is_the_true_geometry() -> None:
    """Same subject and pose, RAS axis-aligned vs random oblique grid: the brain sits at the same place."""
    params = AZ.draw_subject(np.random.default_rng(4), "AD", 0.6)
    out = []
    for oriented in (False, True):
        s = AZ.render_subject(np.random.default_rng(12), params, spacing=3.0, oriented=oriented, skull=False)
        mask = s["brain_mask"]
        centroid = s["affine"][:3, :3] @ np.argwhere(mask).mean(axis=0) + s["affine"][:3, 3]
        out.append((centroid, mask.sum() * abs(np.linalg.det(s["affine"][:3, :3]))))
    assert np.linalg.norm(out[0][0] - out[1][0]) < 1.5
    assert out[0][1] == pytest.approx(out[1][1], rel=0.03)


def test_same_seed_same_subject_different_seeds_differ() -> None:
    a = AZ.make_subject(np.random.default_rng(5), "CN", **FAST)
    b = AZ.make_subject(np.random.default_rng(5), "CN", **FAST)
    np.testing.assert_array_equal(a["t1"], b["t1"])
    np.testing.assert_array_equal(a["affine"], b["affine"])
    c = AZ.make_subject(np.random.default_rng(6), "CN", **FAST)
    assert a["t1"].shape != c["t1"].shape or not np.array_equal(a["t1"], c["t1"])


def test_ad_has_larger_ventricles_and_smaller_hippocampi_on_average() -> None:
    anat = load_mni152()
    vols: dict[str, list[dict[str, float]]] = {"CN": [], "AD": []}
    for i in range(16):
        dx = "AD" if i % 2 else "CN"
        params = AZ.draw_subject(np.random.default_rng([3, i]), dx)
        vols[dx].append(AZ.map_volumes(anat, AZ.atrophy_maps(anat, params)))
    mean = {dx: {k: np.mean([v[k] for v in vs]) for k in vs[0]} for dx, vs in vols.items()}
    assert mean["AD"]["ventricle_ml"] > 1.3 * mean["CN"]["ventricle_ml"]
    assert mean["AD"]["hippocampus_gm_ml"] < 0.85 * mean["CN"]["hippocampus_gm_ml"]
    assert mean["AD"]["gm_ml"] < mean["CN"]["gm_ml"]
    assert mean["AD"]["csf_ml"] > mean["CN"]["csf_ml"]


def test_severity_is_monotonic_and_visible_in_the_image() -> None:
    anat = load_mni152()
    base = AZ.draw_subject(np.random.default_rng(8), "CN", age=70.0)
    vent = []
    for sev in (0.0, 0.3, 0.6, 1.0):
        p = replace(base, diagnosis="AD" if sev else "CN", severity=sev)
        vent.append(AZ.map_volumes(anat, AZ.atrophy_maps(anat, p))["ventricle_ml"])
    assert vent == sorted(vent) and vent[-1] > 1.5 * vent[0]

    # Same subject, same acquisition: the AD image has more dark (CSF-like) brain voxels.
    acq = {"spacing": 2.0, "oriented": False, "skull": False, "noise": 0.01, "bias": 0.0, "dtype": "float32"}
    dark = {}
    for dx, sev in (("CN", 0.0), ("AD", 0.9)):
        s = AZ.render_subject(np.random.default_rng(9), replace(base, diagnosis=dx, severity=sev), **acq)
        inside = s["t1"][s["brain_mask"]]
        dark[dx] = (inside < 0.55 * np.median(inside)).sum()
    assert dark["AD"] > 1.2 * dark["CN"]


def test_draw_subject_validation() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="diagnosis"):
        AZ.draw_subject(rng, "MCI")
    with pytest.raises(ValueError, match="severity"):
        AZ.draw_subject(rng, "CN", 0.5)
    with pytest.raises(ValueError, match="severity"):
        AZ.draw_subject(rng, "AD", 0.0)
    with pytest.raises(ValueError, match="sex"):
        AZ.draw_subject(rng, "AD", sex="X")
    sev = [AZ.draw_subject(np.random.default_rng(i), "AD").severity for i in range(50)]
    assert min(sev) >= 0.12 and max(sev) <= 1.0 and np.std(sev) > 0.1
    with pytest.raises(ValueError):
        AZ.draw_subject(rng, "AD").progressed(-1)


def test_default_diagnoses_are_balanced() -> None:
    dx = [AZ.diagnosis_of(4, i) for i in range(40)]
    assert dx.count("AD") == 20
    assert all({dx[2 * k], dx[2 * k + 1]} == {"AD", "CN"} for k in range(20))
    assert dx != ["AD", "CN"] * 20 and dx != ["CN", "AD"] * 20  # not a fixed alternation
    skewed = [AZ.diagnosis_of(4, i, ad_fraction=0.0) for i in range(10)]
    assert skewed == ["CN"] * 10


def _read(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def test_generate_bids_single_session(tmp_path: Path) -> None:
    records = AZ.generate(tmp_path, n=4, seed=2, progress=False, **FAST)
    parts = _read(tmp_path / "participants.tsv", "\t")
    assert list(parts[0]) == ["participant_id", "diagnosis", "age", "sex", "severity"]
    assert [p["participant_id"] for p in parts] == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert sorted(p["diagnosis"] for p in parts) == ["AD", "AD", "CN", "CN"]
    for p in parts:
        assert (float(p["severity"]) > 0) == (p["diagnosis"] == "AD")
    rows = _read(tmp_path / "manifest.csv")
    assert list(rows[0]) == ["case", "subject", "session", "t1", "diagnosis"]
    assert [r["case"] for r in rows] == ["sub-001", "sub-002", "sub-003", "sub-004"]
    dx_of = {p["participant_id"]: p["diagnosis"] for p in parts}
    for row in rows:
        assert row["t1"] == f"{row['subject']}/anat/{row['subject']}_T1w.nii.gz" and row["session"] == ""
        assert row["diagnosis"] == dx_of[row["subject"]]
        img = nib.load(tmp_path / row["t1"])
        assert img.ndim == 3 and np.asanyarray(img.dataobj).max() > 0
    assert len(records) == 4 and records[0]["path"].is_file()
    assert json.loads((tmp_path / "dataset_description.json").read_text())["BIDSVersion"]
    assert "diagnosis" in json.loads((tmp_path / "participants.json").read_text())


def test_generate_sessions_share_subject_anatomy(tmp_path: Path) -> None:
    records = AZ.generate(tmp_path, n=2, seed=3, sessions=2, progress=False, **FAST)
    rows = _read(tmp_path / "manifest.csv")
    assert [r["case"] for r in rows] == ["sub-001_ses-01", "sub-001_ses-02", "sub-002_ses-01", "sub-002_ses-02"]
    for row in rows:
        assert row["t1"] == f"{row['subject']}/{row['session']}/anat/{row['case']}_T1w.nii.gz"
        assert (tmp_path / row["t1"]).is_file()
        assert row["case"].startswith(row["subject"] + "_")
    # each subject's rows agree on diagnosis; no subject id is reused by another subject
    by_subject: dict[str, set[str]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], set()).add(row["diagnosis"])
    assert all(len(v) == 1 for v in by_subject.values()) and len(by_subject) == 2
    parts = _read(tmp_path / "participants.tsv", "\t")
    assert len({p["participant_id"] for p in parts}) == len(parts) == 2
    # sessions: same anatomy (head size, tissue volumes), different acquisition and later age
    s1, s2 = records[0], records[1]
    assert s1["subject"] == s2["subject"] and s2["age"] > s1["age"]
    v1, v2 = s1["meta"]["volumes_ml"], s2["meta"]["volumes_ml"]
    tiv = lambda v: v["gm_ml"] + v["wm_ml"] + v["csf_ml"]  # noqa: E731
    assert tiv(v1) == pytest.approx(tiv(v2), rel=1e-3)
    other = records[2]["meta"]["volumes_ml"]
    assert abs(tiv(other) - tiv(v1)) > 1.0
    assert s1["meta"]["shape"] != s2["meta"]["shape"] or s1["meta"]["axcodes"] != s2["meta"]["axcodes"]


def test_generate_prefix_stability_and_flat_layout(tmp_path: Path) -> None:
    AZ.generate(tmp_path / "two", n=2, seed=9, layout="flat", progress=False, **FAST)
    AZ.generate(tmp_path / "one", n=1, seed=9, layout="flat", progress=False, **FAST)
    a = nib.load(tmp_path / "two" / "sub-001_T1w.nii.gz")
    b = nib.load(tmp_path / "one" / "sub-001_T1w.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_array_equal(a.affine, b.affine)
    assert _read(tmp_path / "two" / "manifest.csv")[1]["t1"] == "sub-002_T1w.nii.gz"


def test_generate_with_workers_writes_the_same_subjects(tmp_path: Path) -> None:
    """Two worker processes write the same subjects, sessions and tables, in order, as one process."""
    one = AZ.generate(tmp_path / "one", n=3, seed=5, sessions=2, progress=False, **FAST)
    two = AZ.generate(tmp_path / "two", n=3, seed=5, sessions=2, workers=2, progress=False, **FAST)
    assert [r["case"] for r in two] == [r["case"] for r in one]
    for name in ("manifest.csv", "participants.tsv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    for row in _read(tmp_path / "one" / "manifest.csv"):
        a, b = nib.load(tmp_path / "one" / row["t1"]), nib.load(tmp_path / "two" / row["t1"])
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    with pytest.raises(ValueError, match="workers"):
        AZ.generate(tmp_path / "bad", n=1, workers=0)


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        AZ.generate(tmp_path, n=1, layout="clinica")
    with pytest.raises(ValueError, match="unknown option"):
        AZ.generate(tmp_path, n=1, resolution=2.0)
    with pytest.raises(ValueError, match="sessions"):
        AZ.generate(tmp_path, n=1, sessions=0)
