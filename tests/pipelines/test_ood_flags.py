"""OOD flags in the pipelines: columns in summary.csv, empty without statistics, a limb radiograph and another
modality flagged, a held-out case of the fitting generator not (tiny untrained networks: the statistics decide)."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from relyhelp import head_volume, tiny_models, write_nifti  # noqa: E402
from relyhelp import one_torch_thread  # noqa: E402,F401 - autouse fixture

from medcnn.batch import run_batch  # noqa: E402
from medcnn.cli.main import cli  # noqa: E402
from medcnn.pipelines import get_pipeline, load_models  # noqa: E402


def _chest(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A chest-like film: a bright trunk with two dark lung fields, random size, contrast and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.2 + 0.6 * (np.abs(xx - 0.5) < rng.uniform(0.38, 0.45))
    for c in (0.3, 0.7):
        img = np.where(((xx - c) / 0.14) ** 2 + ((yy - 0.45) / rng.uniform(0.25, 0.3)) ** 2 < 1, rng.uniform(0.25, 0.35), img)
    return 255 * np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def _limb(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A limb-like film: a narrow soft-tissue band with one bright bone on a dark field."""
    xx = np.mgrid[0:size, 0:size][1] / size
    img = 0.05 + 0.3 * (np.abs(xx - 0.5) < 0.15) + 0.55 * (np.abs(xx - 0.5) < 0.04)
    return 255 * np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def _png(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)
    return path


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


def test_chest_xray_flags_limb_and_photo_not_held_out(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        _png(tmp_path / "fit" / f"c{i:02d}.png", _chest(rng))
    _png(tmp_path / "new" / "held.png", _chest(rng))
    _png(tmp_path / "new" / "limb.png", _limb(rng))
    colour = np.stack([_chest(rng), np.zeros((96, 96)), 255 - _chest(rng)], axis=-1)
    _png(tmp_path / "new" / "rgb.png", colour)
    models = [str(p) for p in tiny_models("chest-xray", tmp_path / "models")]
    fitted = tmp_path / "findings_ood.pt"
    res = CliRunner().invoke(cli, ["ood-fit", "chest-xray", str(tmp_path / "fit"), "-o", str(fitted),
                                   *sum((["--model", m] for m in models), [])])
    assert res.exit_code == 0, res.output
    before = torch.load(models[0], weights_only=True)
    after = torch.load(fitted, weights_only=True)
    assert "ood" in after and "ood" not in before
    assert all(torch.equal(before["state_dict"][k], v) for k, v in after["state_dict"].items())
    pipe = get_pipeline("chest-xray")
    model, info = load_models(pipe, [str(fitted), models[1]])
    run_batch(pipe, model, [tmp_path / "new"], tmp_path / "out", model_info=info, progress=False)
    rows = _rows(tmp_path / "out")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["limb"]["ood"] == "true" and float(rows["limb"]["ood_score"]) > 1
    assert rows["rgb"]["ood"] == "true"  # colour: a hard reason
    assert rows["held"]["ood"] == "false" and float(rows["held"]["ood_score"]) <= 1


def test_missing_section_gives_empty_columns_logged_once(tmp_path, caplog):
    vol, aff = head_volume()
    for i in range(2):
        write_nifti(tmp_path / "in" / f"s{i}.nii.gz", vol, aff)
    ckpt = tiny_models("alzheimer", tmp_path / "models")[0]
    pipe = get_pipeline("alzheimer")
    with caplog.at_level(logging.WARNING):
        model, info = load_models(pipe, [str(ckpt)])
        rows = run_batch(pipe, model, [tmp_path / "in"], tmp_path / "out", model_info=info, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sum("no OOD statistics" in m for m in caplog.messages) == 1
    for r in _rows(tmp_path / "out").values():
        assert r["ood"] == "" and r["ood_score"] == ""


def test_ood_columns_in_every_pipeline():
    for name in ("alzheimer", "brain-tumor", "chest-xray"):
        fields = get_pipeline(name).fields
        assert "ood" in fields and "ood_score" in fields, name
