"""Memory guard: the header's promise is checked against a limit before any voxel is read."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from relyhelp import alzheimer_predict_args, head_volume, png_claiming, write_nifti
from relyhelp import one_torch_thread  # noqa: F401 - autouse fixture

import medcnn
from medcnn.cli.main import cli
from medcnn.errors import ConfigError, InputError
from medcnn.io.memory import ENV_VAR, memory_limit, parse_size, physical_memory

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch) -> None:
    """Start from the default limit; undo whatever a test (or ``medcnn --max-memory``) sets."""
    monkeypatch.setenv(ENV_VAR, "")


def test_sizes_and_default_limit(tmp_path: Path, monkeypatch) -> None:
    assert parse_size("8G") == 8 * 2**30 and parse_size("512 MiB") == 512 * 2**20 and parse_size("1.5k") == 1536
    assert parse_size(1000) == 1000 and parse_size("none") is None and parse_size("0") is None
    with pytest.raises(ConfigError, match="max_memory.*banana"):
        parse_size("banana")
    total = physical_memory()
    assert total and memory_limit() == int(total * 0.5)
    monkeypatch.setenv(ENV_VAR, "3M")
    assert memory_limit() == 3 * 2**20 and memory_limit("1G") == 2**30
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ConfigError, match=ENV_VAR):
        medcnn.load(write_nifti(tmp_path / "a.nii.gz", head_volume()[0]))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_headers_over_tiny_files_are_refused_before_allocating(tmp_path: Path) -> None:
    """MetaImage, NRRD, DICOM and PNG headers claiming terabytes (or just over the limit): refused from the header."""
    mha = tmp_path / "huge.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 50000 50000 50000\nElementType = MET_DOUBLE\n"
                    b"ElementDataFile = LOCAL\n" + b"\0" * 64)
    nrrd = tmp_path / "huge.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 40000 40000 40000\nendian: little\nencoding: raw\n\n"
                     + b"\0" * 64)
    ds = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65000, 65000, 5000  # pixel data stays 128 x 128
    dcm = tmp_path / "huge.dcm"
    ds.save_as(dcm)
    png = png_claiming(tmp_path / "huge.png", 12000, 12000)  # under Pillow's bomb limit: our guard decides
    bomb = png_claiming(tmp_path / "bomb.png", 100_000, 100_000)  # over it: Pillow refuses, we report it
    for path in (mha, nrrd, dcm):
        with pytest.raises(InputError, match=r"needs about .* TiB of memory to load, above the limit") as err:
            medcnn.load(path)
        assert path.name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"huge\.png: image of 12000x12000x1 samples needs about 1.07 GiB.*limit of 1 GiB"):
        medcnn.load(png, max_memory="1G")
    with pytest.raises(InputError, match=r"bomb\.png: .*decompression bomb"):
        medcnn.load(bomb)


def test_lowered_limit_on_a_real_small_file(tmp_path: Path, monkeypatch) -> None:
    vol, aff = head_volume()  # 20 x 24 x 20 float32: 38 KiB stored, 75 KiB loaded (stored + float32 copy)
    path = write_nifti(tmp_path / "small.nii.gz", vol, aff)
    assert medcnn.load(path).shape == (1, 20, 24, 20)
    with pytest.raises(InputError, match=r"small\.nii\.gz: image of 20x24x20 samples needs about 75 KiB.*limit of 50 KiB"):
        medcnn.load(path, max_memory="50K")
    assert medcnn.load(path, max_memory="1M").shape == (1, 20, 24, 20)
    with pytest.raises(InputError, match="resampled"):  # 0.5 mm from 6 mm: 1728 x the voxels
        medcnn.load(path, spacing=0.5, max_memory="10M")
    monkeypatch.setenv(ENV_VAR, "50K")
    with pytest.raises(InputError, match="limit of 50 KiB"):
        medcnn.load(path)
    assert medcnn.load(path, max_memory="none").shape == (1, 20, 24, 20), "an explicit argument beats the environment"
    series = tmp_path / "series"
    from medcnn.synth.dicom_series import write_dicom_series

    write_dicom_series(vol, aff, series)
    with pytest.raises(InputError, match=r"series: DICOM series of 24x20x20x1 samples"):
        medcnn.load(series, max_memory="40K")


def test_cli_max_memory(tmp_path: Path) -> None:
    scans, model, args = alzheimer_predict_args(tmp_path)
    res = CliRunner().invoke(cli, ["--max-memory", "64K", *args])
    assert res.exit_code == 1 and "Traceback" not in res.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv", encoding="utf-8")))
    assert [r["status"] for r in rows] == ["error", "error"]
    assert all("limit of 64 KiB" in r["error"] and "--max-memory" in r["error"] for r in rows)
    ok = CliRunner().invoke(cli, ["--max-memory", "1G", *args])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["--max-memory", "plenty", "info"])
    assert bad.exit_code == 2 and "--max-memory" in bad.output
    conv = CliRunner().invoke(cli, ["--max-memory", "10K", "convert", str(scans / "case0.nii.gz"), str(tmp_path / "c.nrrd")])
    assert conv.exit_code == 1 and len([ln for ln in conv.output.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "c.nrrd").exists()
