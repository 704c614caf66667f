"""Tests of the synthetic chest radiograph generator and the DICOM radiograph writer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medcnn.synth.chest_xray import (
    CHEXPERT_COLUMNS,
    FINDINGS,
    NIH_COLUMNS,
    cardiothoracic_ratio,
    dicom_encoding,
    generate,
    make_case,
)
from medcnn.synth.dicom_write import reference_display, write_xray_dicom

NONE = {name: False for name in FINDINGS}


def _case(seed: int, index: int, **kw):
    return make_case(np.random.default_rng([seed, index]), **kw)


def _mediastinum(lungs: np.ndarray) -> np.ndarray:
    """Pixels between the two lungs on rows crossing both (mediastinum and spine)."""
    out = np.zeros(lungs.shape, dtype=bool)
    mid = lungs.shape[1] // 2
    for r in np.nonzero(lungs.any(axis=1))[0]:
        cols = np.nonzero(lungs[r])[0]
        left, right = cols[cols < mid], cols[cols >= mid]
        if left.size and right.size and right.min() - left.max() > 4:
            out[r, left.max() + 2: right.min() - 1] = True
    return out


@pytest.mark.parametrize("size", [None, 192, (224, 160), (160, 256)])
def test_shapes_masks_and_ranges(size) -> None:
    case = _case(0, 1 if size is None else 2, size=size)
    img, lungs, heart = case["image"], case["lungs"], case["heart"]
    if size is not None:
        assert img.shape == ((size, size) if isinstance(size, int) else size)
    else:
        assert 512 <= max(img.shape) <= 1024
    for arr in (case["density"], case["signal"]):
        assert arr.shape == img.shape and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    for mask in (lungs, heart):
        assert mask.shape == img.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert mask.sum() > 0.01 * mask.size
    assert not (lungs.astype(bool) & heart.astype(bool)).any()
    for name, mask in case["finding_masks"].items():
        assert case["findings"][name] and mask.shape == img.shape
    assert set(case["findings"]) == set(FINDINGS)
    assert all(0.05 < s < 2.0 for s in case["pixel_spacing"])
    assert 0.139 <= case["native_pixel_spacing"] <= 0.2


def test_lungs_darker_than_mediastinum_and_heart() -> None:
    for i in range(4):
        case = _case(1, i, size=256, findings=NONE)
        lungs = case["lungs"].astype(bool)
        heart = case["heart"].astype(bool)
        med = _mediastinum(lungs) & ~heart
        for key in ("density", "image"):
            arr = case[key]
            assert arr[lungs].mean() < arr[heart].mean(), key
            assert arr[lungs].mean() < arr[med].mean(), key
        # the lung field is dark on the display: well below the heart
        assert case["image"][heart].mean() - case["image"][lungs].mean() > 0.15


def test_cardiothoracic_ratio_follows_cardiomegaly() -> None:
    uncut = {"cut_prob": 0.0, "collimation_prob": 0.0}
    big = [_case(2, i, size=160, findings={**NONE, "Cardiomegaly": True}, **uncut) for i in range(8)]
    normal = [_case(3, i, size=160, findings=NONE, **uncut) for i in range(8)]
    assert all(c["ctr"] > 0.5 for c in big)
    assert np.mean([c["ctr"] < 0.5 for c in normal]) >= 0.9
    for c in big + normal:  # the returned ratio is the masks' one when nothing is cut off
        assert abs(cardiothoracic_ratio(c["lungs"], c["heart"]) - c["ctr"]) < 0.03


def test_effusion_mask_convention() -> None:
    aer = _case(4, 0, size=256, findings={**NONE, "Effusion": True})
    ana = _case(4, 0, size=256, findings={**NONE, "Effusion": True}, lung_mask="anatomical")
    eff = aer["finding_masks"]["Effusion"].astype(bool)
    assert eff.sum() > 0
    assert not (aer["lungs"].astype(bool) & eff).any()
    assert ana["lungs"].astype(bool)[eff].all()
    np.testing.assert_array_equal(aer["image"], ana["image"])  # only the mask convention differs


def test_reproducible_per_seed_and_index() -> None:
    a = _case(7, 3, size=128)
    b = _case(7, 3, size=128)
    c = _case(7, 4, size=128)
    for key in ("image", "density", "lungs", "heart"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["findings"] == b["findings"]
    assert not np.array_equal(a["image"], c["image"])


def test_mono1_dicom_reads_back_like_mono2(tmp_path: Path) -> None:
    case = _case(5, 0, size=200, findings=NONE)
    lungs, heart = case["lungs"].astype(bool), case["heart"].astype(bool)
    for k in range(6):  # window and VOI LUT encodings, several bit depths and rescales
        shown = {}
        for ph in ("MONOCHROME1", "MONOCHROME2"):
            enc = dicom_encoding(case, np.random.default_rng(k), ph)
            path = write_xray_dicom(tmp_path / f"{k}_{ph}.dcm", enc.pop("pixels_stored"), **enc,
                                    pixel_spacing=case["pixel_spacing"])
            ds = pydicom.dcmread(path)
            assert ds.PhotometricInterpretation == ph
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
            assert str(ds.PatientName) == "SYNTH^CASE"
            raw = ds.pixel_array
            assert raw.shape == case["image"].shape
            if ph == "MONOCHROME1":  # stored values are inverted: dense = low
                assert raw[lungs].mean() > raw[heart].mean()
            arr = apply_modality_lut(raw, ds)
            if "VOILUTSequence" in ds:
                arr = np.rint(arr).astype(np.int64)
            arr = apply_voi_lut(arr, ds).astype(np.float64)
            shown[ph] = -arr if ph == "MONOCHROME1" else arr
            assert shown[ph][lungs].mean() < shown[ph][heart].mean()
        r = np.corrcoef(shown["MONOCHROME1"].ravel(), shown["MONOCHROME2"].ravel())[0, 1]
        assert r > 0.95
        np.testing.assert_allclose(reference_display(tmp_path / f"{k}_MONOCHROME1.dcm"), case["image"], atol=3e-3)


def test_write_xray_dicom_rejects_bad_arguments(tmp_path: Path) -> None:
    px = np.zeros((8, 8), dtype=np.uint16)
    with pytest.raises(ValueError, match="photometric"):
        write_xray_dicom(tmp_path / "a.dcm", px, photometric="RGB")
    with pytest.raises(ValueError, match="bits_stored"):
        write_xray_dicom(tmp_path / "a.dcm", px, bits_stored=8)
    with pytest.raises(ValueError, match="fit|lie"):
        write_xray_dicom(tmp_path / "a.dcm", px + 5000, bits_stored=12)
    with pytest.raises(ValueError, match="DX"):
        write_xray_dicom(tmp_path / "a.dcm", px, modality="DX", rescale_slope=2.0)
    with pytest.raises(ValueError, match="2D"):
        write_xray_dicom(tmp_path / "a.dcm", np.zeros((2, 2, 2), dtype=np.uint16))
    assert not list(tmp_path.iterdir())


def test_generate_files_and_tables(tmp_path: Path) -> None:
    formats = ("png", "png16", "dcm-mono2", "dcm-mono1")
    rows = generate(tmp_path, 8, seed=3, formats=formats, size=160, followup_prob=1.0,
                    uncertain_frac=0.2, progress=False)
    assert [r["case"] for r in rows] == [f"cxr-{i:05d}" for i in range(1, 9)]
    assert [r["format"] for r in rows] == list(formats) * 2
    assert [r["subject"] for r in rows] == ["patient00001"] * 2 + ["patient00003"] * 2 + \
        ["patient00005"] * 2 + ["patient00007"] * 2
    for row in rows:
        path = tmp_path / row["image"]
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            shape = (ds.Rows, ds.Columns)
            assert ds.PatientID == row["subject"]
        else:
            shape = np.asarray(Image.open(path)).shape
        for key in ("lungs", "heart"):
            mask = np.asarray(Image.open(tmp_path / row[key]))
            assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        for name in FINDINGS:  # a mask per present finding with an extent (the pixel supervision of training)
            fmask = tmp_path / "masks" / f"{row['case']}_{name}.png"
            assert fmask.is_file() == (bool(row[name]) and name != "Cardiomegaly"), (row["case"], name)
            if fmask.is_file():
                m = np.asarray(Image.open(fmask))
                assert m.shape == shape and set(np.unique(m)) <= {0, 255}

    with open(tmp_path / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == (*CHEXPERT_COLUMNS, *FINDINGS)
        chex = list(reader)
    assert len(chex) == 8 and all((tmp_path / r["Path"]).is_file() for r in chex)
    assert {v for r in chex for v in (r[f] for f in FINDINGS)} <= {"1.0", "0.0", "-1.0", ""}
    assert any(r[f] == "-1.0" for r in chex for f in FINDINGS)
    assert {r["Frontal/Lateral"] for r in chex} == {"Frontal"} and {r["AP/PA"] for r in chex} <= {"AP", "PA"}

    with open(tmp_path / "nih_labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == NIH_COLUMNS
        nih = list(reader)
    for r, row in zip(nih, rows):
        labels = [f for f in FINDINGS if row[f]]
        assert r["Finding Labels"] == ("|".join(labels) or "No Finding")
        assert r["Image Index"] == Path(row["image"]).name

    with open(tmp_path / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        for col in ("case", "subject", "image", "lungs", "heart", "nodule", *FINDINGS):
            assert col in reader.fieldnames
        man = list(reader)
        assert len(man) == 8
    for r in man:  # the nodule mask column: the finding's mask when present, blank otherwise
        assert bool(r["nodule"]) == (r["Nodule"] == "1")
        if r["nodule"]:
            assert (tmp_path / r["nodule"]).is_file()


def test_png16_keeps_more_than_8_bits(tmp_path: Path) -> None:
    rows = generate(tmp_path, 1, seed=11, formats=("png16",), size=256, progress=False)
    arr = np.asarray(Image.open(tmp_path / rows[0]["image"]))
    assert arr.dtype == np.uint16 or arr.max() > 255
    assert len(np.unique(arr)) > 256
    case = make_case(np.random.default_rng([11, 0]), size=256, subject=subject_of(11, 0))
    np.testing.assert_allclose(arr / 65535.0, case["image"], atol=1.0 / 65535)


def subject_of(seed: int, index: int) -> dict:
    """The subject traits :func:`generate` uses for case ``index`` (unpaired case)."""
    from medcnn.synth.chest_xray import sample_subject

    return sample_subject(np.random.default_rng([seed, index, 1]))


def test_generate_is_reproducible(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 2, seed=5, size=128, progress=False)
    b = generate(tmp_path / "b", 3, seed=5, size=128, progress=False)
    for ra, rb in zip(a, b):
        for key in ("image", "lungs", "heart"):
            assert (tmp_path / "a" / ra[key]).read_bytes() == (tmp_path / "b" / rb[key]).read_bytes()


def test_bad_arguments_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="valid options"):
        make_case(rng, size=64, colour="red")
    with pytest.raises(ValueError, match="unknown finding"):
        make_case(rng, size=64, findings={"Pneumonia": True})
    with pytest.raises(ValueError, match="size"):
        make_case(rng, size=(10, 20, 30))
    with pytest.raises(ValueError, match="prevalence"):
        make_case(rng, size=64, prevalence=1.5)
    with pytest.raises(ValueError, match="format"):
        generate("/nonexistent-never-created", 1, formats=("jpeg2000",))


def test_one_full_size_case() -> None:
    """A detector-size case (speed is not asserted here: timings live in benchmarks/, never in unit tests)."""
    case = make_case(np.random.default_rng([0, 1]), size=1024)
    assert case["image"].shape == (1024, 1024) and case["lungs"].shape == (1024, 1024)
    assert 0.1 < float(case["lungs"].mean()) < 0.6 and 0.0 <= float(case["image"].min()) <= float(case["image"].max()) <= 1.0
