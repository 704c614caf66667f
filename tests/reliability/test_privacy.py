"""No DICOM patient name, ID or birth date reaches logs, summary.csv, run.json, masks or QC pictures.

Each DICOM-reading pipeline runs (with debug logging) on DICOM inputs stamped with distinctive patient
attributes, good and broken ones; every byte it writes or logs is searched for them. The same inputs
stamped with another patient give identical results and pictures: patient data cannot influence them.
Case ids come from file and folder names.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from relyhelp import head_volume, run_cli, tiny_models
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

from medcnn.cli.main import cli
from medcnn.pipelines import available

PATIENT = {"PatientName": "Zyxwvu^Qutrsp", "PatientID": "PID-98765-XQ", "PatientBirthDate": "19230417"}
OTHER = {"PatientName": "Other^Person", "PatientID": "ID-1", "PatientBirthDate": "19990101"}
SECRETS = ("Zyxwvu", "Qutrsp", "PID-98765-XQ", "98765", "19230417", "1923-04-17", "17/04/1923")


def _stamp(files: list[Path], who: dict[str, str]) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in who.items():
            setattr(ds, key, value)
        ds.save_as(f)


def _mr_inputs(root: Path, who: dict[str, str]) -> list[Path]:
    """A good MR series folder (case ``mr_series``) and one missing a slice (``mr_broken``)."""
    from medcnn.synth.dicom_series import write_dicom_series

    vol, aff = head_volume(shape=(20, 24, 12))
    good = write_dicom_series(vol, aff, root / "mr_series", shuffle_names=False)
    broken = write_dicom_series(vol, aff, root / "mr_broken", shuffle_names=False, seed=1)
    broken[5].unlink()
    _stamp(good + broken[:5] + broken[6:], who)
    return [root / "mr_series", root / "mr_broken"]


def _xray_inputs(root: Path, who: dict[str, str]) -> list[Path]:
    """Two DX radiographs and one with its pixel data cut short (cases ``cxr_000`` to ``cxr_002``)."""
    from medcnn.synth.dicom_write import write_xray_dicom

    r, c = np.mgrid[:96, :80]
    files = []
    for i in range(3):
        img = 2000 + 1200 * np.cos(c / 80 * np.pi) * (1 + 0.1 * i)
        img[((r - 48) / 30) ** 2 + ((c - 22) / 12) ** 2 < 1] = 600
        files.append(write_xray_dicom(root / "cxr" / f"cxr_{i:03d}.dcm", img.astype(np.uint16), window_center=2000,
                                      window_width=3000))
    _stamp(files, who)
    files[2].write_bytes(files[2].read_bytes()[:-4000])
    return [root / "cxr"]


INPUTS: dict[str, Callable[[Path, dict[str, str]], list[Path]]] = {"alzheimer": _mr_inputs, "chest-xray": _xray_inputs}
CASE_IDS = {"alzheimer": {"mr_series", "mr_broken"}, "chest-xray": {"cxr_000", "cxr_001", "cxr_002"}}


def _leaks(blob: bytes) -> list[str]:
    low = blob.lower()
    return [s for s in SECRETS if s.lower().encode() in low]


def _scan(out: Path, logs: str) -> dict[str, list[str]]:
    found = {"logs": [s for s in SECRETS if s.lower() in logs.lower()]}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        blob = p.read_bytes()
        if p.name.endswith(".gz"):
            blob = gzip.decompress(blob)
        if p.suffix == ".png":
            with Image.open(p) as im:
                blob += repr(im.info).encode() + repr(getattr(im, "text", {})).encode()
        found[str(p.relative_to(out))] = _leaks(blob)
    return {k: v for k, v in found.items() if v}


def _predict(pipeline: str, inputs: list[Path], out: Path, models: list[Path]):
    return run_cli("-vv", "predict", pipeline, *map(str, inputs), "-o", str(out), "--device", "cpu",
                   *[a for m in models for a in ("--model", str(m))])


def _pictures_and_masks(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for p in sorted(out.rglob("*")):
        if p.suffix == ".png":
            with Image.open(p) as im:
                arrays[str(p.relative_to(out))] = np.asarray(im)
        elif p.name.endswith(".nii.gz"):
            arrays[str(p.relative_to(out))] = np.asarray(nib.load(str(p)).dataobj)
    return arrays


@pytest.mark.parametrize("pipeline", sorted(INPUTS))
def test_no_patient_data_in_logs_or_outputs(pipeline: str, tmp_path: Path) -> None:
    if pipeline not in available():
        pytest.skip(f"pipeline {pipeline!r} is not registered")
    models = tiny_models(pipeline, tmp_path / "models")
    inputs = INPUTS[pipeline](tmp_path / "in", PATIENT)
    out = tmp_path / "out"
    res = _predict(pipeline, inputs, out, models)
    assert res.returncode == 1, res.stdout + res.stderr  # the broken input fails, the others run
    assert "DEBUG" in res.stderr, "debug logging was not on"
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert {r["status"] for r in rows} == {"ok", "error"}
    assert _scan(out, res.stdout + res.stderr) == {}, "patient data leaked"
    assert {r["case"] for r in rows} == CASE_IDS[pipeline], "case ids come from file/folder names"
    assert _scan(tmp_path / "in", "") != {}, "the scan cannot see the stamped patient data"

    other_inputs = INPUTS[pipeline](tmp_path / "in2", OTHER)
    out2 = tmp_path / "out2"
    CliRunner().invoke(cli, ["predict", pipeline, *map(str, other_inputs), "-o", str(out2), "--device", "cpu",
                             *[a for m in models for a in ("--model", str(m))]])
    a, b = _pictures_and_masks(out), _pictures_and_masks(out2)
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} depends on the patient attributes")
    rows2 = list(csv.DictReader(open(out2 / "summary.csv", encoding="utf-8")))
    strip = lambda rs: [{k: v.replace(str(tmp_path / "in2"), "").replace(str(tmp_path / "in"), "")  # noqa: E731
                         for k, v in r.items() if k != "inputs_signature"} for r in rs]  # hashes paths and mtimes
    assert strip(rows) == strip(rows2)
