"""The repository's ``sample_data/``: a handful of small cases per task, regenerated exactly by

    medcnn generate sample -o sample_data

Contents (a few MB in all):

* ``brain-tumor/``: two BraTS 2023-named cases (oblique 2 mm; axis-aligned LPS with 4 mm slices) and
  one BraTS 2021-named case, each with its ``-seg``/``_seg`` reference;
* ``alzheimer/``: a BIDS folder with two CN and two AD subjects and ``participants.tsv``;
* ``chest-xray/``: ``images/`` (8-bit PNG, 16-bit PNG, DICOM MONOCHROME2 and MONOCHROME1), ``masks/``
  (lungs, heart) and CheXpert/NIH-style label CSVs;
* ``prompt/``: six 2D images with object label maps and ``manifest.csv`` (shapes, MNI brain
  slices, radiographs) for ``medcnn train configs/prompt.yaml`` and ``medcnn prompt``;
* ``dicom/``: ``CT_small.dcm`` and ``MR_small.dcm`` copied from pydicom's test files (real scans, from
  the NEMA WG04 sample sets), and ``t1_series/``, an oblique T1 MR series written slice by slice.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm")


def _copy_cases(src: Path, dst: Path, names: list[str]) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dst / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src / name, target)
    return names


def _brain_tumor(out: Path, seed: int) -> list[dict[str, Any]]:
    from medcnn.synth import brain_tumor

    out.mkdir(parents=True, exist_ok=True)
    recs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        a = brain_tumor.generate(t / "a", n=1, seed=seed, layout="brats2023", spacing=2.0, oriented=True, dtype="int16",
                                 progress=False)
        b = brain_tumor.generate(t / "b", n=2, seed=seed + 1, layout="brats2023", spacing=(1.5, 1.5, 4.0), oriented=False,
                                 dtype="int16", progress=False)[1:]
        c = brain_tumor.generate(t / "c", n=3, seed=seed + 2, layout="brats2021", spacing=2.0, oriented=True, dtype="int16",
                                 progress=False)[2:]
        _copy_cases(t / "a", out, [r["case"] for r in a])
        _copy_cases(t / "b", out, [r["case"] for r in b])
        _copy_cases(t / "c", out, [r["case"] for r in c])
        recs = a + b + c
    return recs


def _alzheimer(out: Path, seed: int) -> list[dict[str, Any]]:
    from medcnn.synth import alzheimer

    if out.exists():
        shutil.rmtree(out)
    return alzheimer.generate(out, n=4, seed=seed, layout="bids", spacing=2.5, dtype="int16", progress=False)


def _chest_xray(out: Path, seed: int) -> list[dict[str, Any]]:
    from medcnn.synth import chest_xray

    if out.exists():
        shutil.rmtree(out)
    return chest_xray.generate(out, n=4, seed=seed, formats=("png", "png16", "dcm-mono2", "dcm-mono1"), size=(640, 528),
                               progress=False)


def _prompt(out: Path, seed: int) -> list[dict[str, Any]]:
    from medcnn.synth import prompt

    if out.exists():
        shutil.rmtree(out)
    return prompt.generate(out, n=6, seed=seed + 5, progress=False)


def _dicom(out: Path, seed: int) -> list[dict[str, Any]]:
    import pydicom

    from medcnn.synth import alzheimer
    from medcnn.synth.dicom_series import write_dicom_series

    out.mkdir(parents=True, exist_ok=True)
    src = Path(pydicom.__file__).parent / "data" / "test_files"
    for name in _PYDICOM_FILES:
        shutil.copy(src / name, out / name)
    subj = alzheimer.make_subject(np.random.default_rng([seed, 99]), "CN", spacing=(2.0, 2.0, 4.0), oriented=True,
                                  skull=False, dtype="float32")
    series_dir = out / "t1_series"
    if series_dir.exists():
        shutil.rmtree(series_dir)
    vol = np.clip(np.asarray(subj["t1"], dtype=np.float64), 0, None)
    vol = vol / max(float(np.percentile(vol, 99.5)), 1e-6) * 1000.0
    write_dicom_series(np.round(vol), subj["affine"], series_dir, modality="MR", series_description="T1 oblique (synthetic)",
                       seed=seed)
    return [{"case": name} for name in _PYDICOM_FILES] + [{"case": "t1_series"}]


def generate(out_dir: Path, n: int = 0, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """Write the sample data set into ``out_dir`` (``n`` is ignored: the content is fixed).

    Returns:
        The records of every written case.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs: list[dict[str, Any]] = []
    recs += _brain_tumor(out_dir / "brain-tumor", seed)
    recs += _alzheimer(out_dir / "alzheimer", seed)
    recs += _chest_xray(out_dir / "chest-xray", seed)
    recs += _prompt(out_dir / "prompt", seed)
    recs += _dicom(out_dir / "dicom", seed)
    logger.info("wrote %d sample cases to %s", len(recs), out_dir)
    return recs
