"""The command line: help/version/info, error lines without tracebacks, exit codes, convert."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medcnn._version import __version__
from medcnn.cli.main import cli


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands_with_examples() -> None:
    res = _run("--help")
    assert res.exit_code == 0
    for cmd in ("demo", "info", "convert", "generate"):
        assert cmd in res.output
    for cmd in ("demo", "convert", "generate", "info"):
        sub = _run(cmd, "--help")
        assert sub.exit_code == 0 and "Examples:" in sub.output, cmd


def test_version_and_info() -> None:
    assert __version__ in _run("--version").output
    res = _run("info")
    assert res.exit_code == 0
    assert "torch" in res.output and "monai" in res.output and ("cuda" in res.output)


def test_console_script_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "medcnn.cli.main", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_bad_input_is_one_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    res = CliRunner().invoke(cli, ["convert", str(bad), str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 1
    assert "broken.nii.gz" in res.output
    assert "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "o.nii.gz").exists()


def test_usage_error_exit_2() -> None:
    res = CliRunner().invoke(cli, ["convert"])
    assert res.exit_code == 2


def test_convert_dicom_like_roundtrip_and_resample(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32))
    img.SetSpacing((1.0, 1.5, 3.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    src = tmp_path / "in.mha"
    sitk.WriteImage(img, str(src))
    assert _run("convert", str(src), str(tmp_path / "same.nii.gz")).exit_code == 0
    same = sitk.ReadImage(str(tmp_path / "same.nii.gz"))
    assert same.GetSize() == img.GetSize()
    np.testing.assert_allclose(same.GetDirection(), img.GetDirection(), atol=1e-6)
    res = _run("convert", str(src), str(tmp_path / "ras.nii.gz"), "--spacing", "1", "--orientation", "RAS")
    assert res.exit_code == 0
    ras = nib.load(str(tmp_path / "ras.nii.gz"))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(ras.affine[:3, :3], axis=0), 1.0, atol=1e-6)


def test_evaluate_command(tmp_path: Path) -> None:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 2
    ref[8:12, 8:12, 8:12] = 3
    pred = ref.copy()
    pred[5, 5:15, 5:15] = 0  # one slab missed
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    nib.save(nib.Nifti1Image(pred, aff), str(tmp_path / "pred" / "c1.nii.gz"))
    nib.save(nib.Nifti1Image(ref, aff), str(tmp_path / "ref" / "c1.nii.gz"))
    res = _run("evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "m.csv"))
    assert res.exit_code == 0, res.output
    import csv

    rows = {(r["case"], r["region"]): r for r in csv.DictReader(open(tmp_path / "m.csv"))}
    assert float(rows[("c1", "WT")]["dice"]) == pytest.approx(2 * 900 / (900 + 1000))
    assert float(rows[("c1", "ET")]["dice"]) == 1.0
    assert ("mean", "TC") in rows
    bad = _run("evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "x.csv"), "--region", "WT=")
    assert bad.exit_code == 2


def test_generate_workers_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers`` reaches the generators that have workers and is refused, as a usage error, by the others."""
    from medcnn import synth

    res = _run("generate", "sample", "--workers", "2", "-o", str(tmp_path / "sample"))
    assert res.exit_code == 2 and "--workers" in res.output and not (tmp_path / "sample").exists()
    calls: list[dict] = []
    monkeypatch.setattr(synth, "generate", lambda task, out, n, seed, **opts: calls.append({"task": task, **opts}) or [])
    tasks = ("brain-tumor", "alzheimer", "chest-xray", "prompt")
    for task in tasks:
        assert _run("generate", task, "-n", "4", "--workers", "2", "-o", str(tmp_path / task)).exit_code == 0
    assert calls == [{"task": t, "workers": 2} for t in tasks]


def test_generate_prevalence_option(tmp_path: Path) -> None:
    """``--prevalence`` sets chest-xray finding probabilities; bad names and values are usage errors."""
    out = tmp_path / "cxr"
    res = _run("generate", "chest-xray", "-n", "3", "--seed", "5", "--prevalence", "Nodule=1,Effusion=0", "-o", str(out))
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert [r["Nodule"] for r in rows] == ["1"] * 3 and [r["Effusion"] for r in rows] == ["0"] * 3
    assert all(r["nodule"] for r in rows)
    for bad, says in (("Nodul=0.5", "unknown finding"), ("often", "FINDING=P"), ("Nodule=2", "prevalence")):
        res = _run("generate", "chest-xray", "-n", "1", "--prevalence", bad, "-o", str(tmp_path / "bad"))
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
    res = _run("generate", "prompt", "-n", "1", "--prevalence", "0.5", "-o", str(tmp_path / "p"))
    assert res.exit_code == 2 and "chest-xray option" in res.output
