"""``medcnn demo`` on sample_data/, and sample_data/ being what its documented command regenerates (up to the
numerical libraries' rounding)."""

from __future__ import annotations

import csv
import filecmp
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medcnn.cli.main import cli
from medcnn.synth import generate


def test_demo_processes_every_sample_case(sample_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["demo", "--data", str(sample_data), "-o", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "demo" / "summary.csv")))
    tasks = {r["task"] for r in rows}
    assert tasks == {"brain-tumor", "alzheimer", "chest-xray", "dicom", "prompt"}
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert len(rows) >= 12
    for r in rows:
        assert (tmp_path / "demo" / r["qc"]).is_file()
    bt = [r for r in rows if r["task"] == "brain-tumor"]
    assert len(bt) == 3
    # the bundled model runs through `medcnn predict`: volumes and Dice against the shipped references
    assert all("wt_ml=" in r["result"] and "dice_WT=" in r["result"] for r in bt), bt
    for r in bt:
        assert (tmp_path / "demo" / "brain-tumor" / f"{r['case']}.nii.gz").is_file()
    # the bundled alzheimer model too: p(AD) and label per subject, the Grad-CAM map on the input grid
    ad = [r for r in rows if r["task"] == "alzheimer"]
    assert len(ad) == 4
    assert all("p_ad=" in r["result"] and r["result"].split("label=")[-1].split()[0] in ("AD", "CN") for r in ad), ad
    for r in ad:
        assert (tmp_path / "demo" / "alzheimer" / f"{r['case']}_saliency.nii.gz").is_file()
    # and the two chest X-ray models: finding probabilities, lung fraction, lung Dice against the shipped masks
    cxr = [r for r in rows if r["task"] == "chest-xray"]
    assert len(cxr) == 4
    assert all("Effusion=" in r["result"] and "lung_area_frac=" in r["result"] and "dice_lungs=" in r["result"]
               for r in cxr), cxr
    for r in cxr:
        assert (tmp_path / "demo" / "chest-xray" / f"{r['case']}_lungs.png").is_file()
    # the bundled promptable model: one box per reference object, label map and box-prompt Dice per image
    pr = [r for r in rows if r["task"] == "prompt"]
    assert len(pr) == 6
    for r in pr:
        assert (tmp_path / "demo" / "prompt" / f"{r['case']}_mask.png").is_file()
        assert float(r["result"].split("dice_box=")[1]) > 0.6, r  # 0.73-0.94 with the shipped model
    assert (tmp_path / "demo" / "run.json").is_file()


def test_demo_reports_bad_case_and_exits_1(sample_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_data / "chest-xray", data / "chest-xray")
    (data / "chest-xray" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    res = CliRunner().invoke(cli, ["demo", "--data", str(data), "-o", str(tmp_path / "demo")])
    assert res.exit_code == 1
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "demo" / "summary.csv"))}
    assert rows["broken"]["status"] == "error" and "broken.png" in rows["broken"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 4


def test_missing_sample_folder_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["demo", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "medcnn generate sample" in res.output and "Traceback" not in res.output


def _pixels(path: Path) -> tuple[np.ndarray, object, list[float]]:
    """(array, everything else the file holds, values derived from the pixels) of an image file, for comparing
    two generations."""
    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.dataobj), (img.shape, img.get_data_dtype().str, np.round(img.affine, 5).tolist()), []
    if name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im), (im.mode, im.size), []
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    # the VOI window is computed from the pixels' percentiles, so it follows their rounding
    window = [float(v) for tag in ("WindowCenter", "WindowWidth") if tag in ds
              for v in (ds[tag].value if ds[tag].VM > 1 else [ds[tag].value])]
    for tag in ("PixelData", "WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    return arr, ds.to_json_dict(), window


def _same_generation(a: Path, b: Path) -> bool:
    """Byte-equal, or (images) equal up to rounding: the numerical libraries' releases may move a value
    sitting on a .5 boundary by one integer unit, so images may differ by at most 1 in at most 1 % of
    their elements, with every header, affine and tag equal (a VOI window computed from the pixels within 1e-4)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if not a.name.endswith((".nii.gz", ".nii", ".png", ".dcm")):
        return False
    (x, meta_x, win_x), (y, meta_y, win_y) = _pixels(a), _pixels(b)
    if meta_x != meta_y or x.shape != y.shape or x.dtype != y.dtype or len(win_x) != len(win_y):
        return False
    if not np.allclose(win_x, win_y, rtol=1e-4, atol=0):
        return False
    d = np.abs(x.astype(np.int64) - y.astype(np.int64))
    return int(d.max()) <= 1 and float((d > 0).mean()) <= 0.01


@pytest.mark.slow
def test_sample_data_regenerates_identically(sample_data: Path, tmp_path: Path) -> None:
    generate("sample", tmp_path / "regen", n=0)
    cmp = filecmp.dircmp(sample_data, tmp_path / "regen", ignore=["README.md", "__init__.py", "__pycache__"])  # the package marker is not generated data

    def diffs(c: filecmp.dircmp) -> list[str]:
        out = [f"{c.left}/{n}" for n in c.left_only + c.right_only]
        out += [f"{c.left}/{n}" for n in c.diff_files if not _same_generation(Path(c.left) / n, Path(c.right) / n)]
        for sub in c.subdirs.values():
            out += diffs(sub)
        return out

    assert diffs(cmp) == [], "sample_data/ differs from `medcnn generate sample`"


def test_generation_comparison_fails_on_a_real_change(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 250, (64, 64)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    rounded = img.copy()
    rounded[0, :5] += 1  # 5 of 4096 pixels one unit off: rounding
    Image.fromarray(rounded).save(tmp_path / "b.png")
    moved = img.copy()
    moved[10:20, 10:20] += 1  # 100 pixels (2.4 %): a real change
    Image.fromarray(moved).save(tmp_path / "c.png")
    Image.fromarray(np.roll(img, 1, axis=0)).save(tmp_path / "d.png")
    assert _same_generation(tmp_path / "a.png", tmp_path / "b.png")
    assert not _same_generation(tmp_path / "a.png", tmp_path / "c.png")
    assert not _same_generation(tmp_path / "a.png", tmp_path / "d.png")
    (tmp_path / "a.csv").write_text("case,x\n1,2\n")
    (tmp_path / "b.csv").write_text("case,x\n1,3\n")
    assert not _same_generation(tmp_path / "a.csv", tmp_path / "b.csv")


def test_sample_data_is_small(sample_data: Path) -> None:
    total = sum(p.stat().st_size for p in sample_data.rglob("*") if p.is_file())
    assert total < 15 * 2**20, f"sample_data is {total / 2**20:.1f} MiB"
