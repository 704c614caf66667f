"""Manifest mask columns: a blank cell is an all-zero mask (a structure absent from that image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcnn.engine.data import records_from_manifest
from medcnn.engine.trainer import _prepare_seg_case

SPEC = {"orientation": None, "spacing": None, "normalize": "minmax", "crop_foreground": False, "square_size": None}


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(tmp_path / f"{case}.png")
        lungs = np.zeros((24, 20), np.uint8)
        lungs[4:20, 2:18] = 255
        Image.fromarray(lungs).save(tmp_path / f"{case}_lungs.png")
    nod = np.zeros((24, 20), np.uint8)
    nod[8:12, 6:10] = 255
    Image.fromarray(nod).save(tmp_path / "a_nodule.png")
    (tmp_path / "manifest.csv").write_text("case,subject,image,lungs,nodule\n"
                                           "a,s1,a.png,a_lungs.png,a_nodule.png\n"
                                           "b,s2,b.png,b_lungs.png,\n")
    return tmp_path / "manifest.csv"


def test_blank_mask_cell_is_an_empty_mask(manifest: Path) -> None:
    recs = {r["case"]: r for r in records_from_manifest(manifest, ["image"], "label", "subject", ["lungs", "nodule"])}
    assert recs["b"]["label"][1] is None and recs["a"]["label"][1].endswith("a_nodule.png")
    a, b = _prepare_seg_case(recs["a"], SPEC), _prepare_seg_case(recs["b"], SPEC)
    assert tuple(a["label"].shape) == tuple(b["label"].shape) == (2, 24, 20)
    assert int(a["label"][1].sum()) == 16 and int(b["label"][1].sum()) == 0
    assert int(b["label"][0].sum()) == 16 * 16  # the given mask of the same image is kept


def test_all_blank_cells_give_zeros_on_the_image_grid(manifest: Path) -> None:
    recs = records_from_manifest(manifest, ["image"], "label", "subject", ["nodule"])
    b = _prepare_seg_case([r for r in recs if r["case"] == "b"][0], SPEC)
    assert tuple(b["label"].shape) == (1, 24, 20) and int(b["label"].sum()) == 0
