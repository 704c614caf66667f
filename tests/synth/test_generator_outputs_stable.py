"""Pin the outputs of the synthetic generators, so that a refactor that changes them fails.

Each generator's output for a fixed seed is reduced to a sha256 of what it writes: decoded
PNG pixels (not the PNG bytes, which depend on the zlib version), DICOM files without their
file meta header (which names the pydicom version), CSV text, and in-memory arrays. A change
in the order of the random draws changes every digest.

When a change of the outputs is intended, print the new digests with
``python tests/synth/test_generator_outputs_stable.py`` and update ``PINNED``.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

PINNED: dict[str, str] = {
    "chest_xray.generate": "f39a4a59e4581b3e3ef76f92cea0e6cf6a5bb39a09042ff110ecf771be65a778",
    "brain_tumor.make_case": "597294ce5186ce781d0cbf1f959b509b2e49334b8867abc5c79777897ed920fe",
    "anatomy.derive_regions": "5d205e85304fd4291eea40c1c961526f2b6b9563d9f1037a38ccefb796e913bb",
    "dicom_series.write_dicom_series": "05d591d852192de4b5cdd5194549303b184a95b3b1deb8849303c91fc80ec88f",
}


def _dicom_body(path: Path) -> bytes:
    """The bytes of a DICOM file after its preamble and file meta group (group 0002)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM" or data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise ValueError(f"{path}: not a DICOM file with a leading FileMetaInformationGroupLength")
    (meta_len,) = struct.unpack("<I", data[140:144])
    return data[144 + meta_len:]


def _file_digest(h: Any, root: Path) -> None:
    """Feed every file under ``root`` (sorted by path) into ``h``: PNG pixels, DICOM bodies, other bytes."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        if path.suffix == ".png":
            with Image.open(path) as img:
                arr = np.asarray(img)
                h.update(f"{img.mode}{arr.shape}{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        elif path.suffix == ".dcm":
            h.update(_dicom_body(path))
        else:
            h.update(path.read_bytes())


def _array_digest(h: Any, name: str, arr: np.ndarray) -> None:
    a = np.ascontiguousarray(arr)
    h.update(f"{name}{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())


def chest_xray_digest() -> str:
    """Two small cases (PNG and MONOCHROME1 DICOM) with every finding, device and shutter option on."""
    from medcnn.synth import chest_xray

    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        chest_xray.generate(tmp, 2, seed=3, size=96, formats=("png", "dcm-mono1"), prevalence=1.0, device_prob=1.0,
                            collimation_prob=1.0, uncertain_frac=0.3, progress=False)
        _file_digest(h, Path(tmp))
    return h.hexdigest()


def brain_tumor_digest() -> str:
    """One coarse (4 mm) axis-aligned int16 case with a necrotic, enhancing lesion."""
    from medcnn.synth import brain_tumor

    case = brain_tumor.make_case(np.random.default_rng([5, 0]), spacing=4.0, oriented=False, dtype="int16",
                                 n_lesions=1, size=12.0, necrosis=True, enhancement=True)
    h = hashlib.sha256()
    for name in (*brain_tumor.CONTRASTS, "label", "brain_mask"):
        _array_digest(h, name, case[name])
    _array_digest(h, "affine", np.round(case["affine"], 6))
    return h.hexdigest()


def regions_digest() -> str:
    """The region masks derived from the vendored MNI152 maps."""
    from medcnn.synth.anatomy import load_mni152

    regions = load_mni152().regions
    h = hashlib.sha256()
    for name in sorted(regions):
        _array_digest(h, name, regions[name])
    return h.hexdigest()


def dicom_series_digest() -> str:
    """A tiny oblique volume written as an MR series (shuffled names) and a rescaled CT series."""
    from medcnn.synth.dicom_series import write_dicom_series

    vol = np.random.default_rng(3).normal(100.0, 30.0, (6, 5, 3)).astype(np.float32)
    aff = np.array([[0.9, 0.1, 0.0, 10.0], [-0.1, 0.9, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(vol, aff, Path(tmp) / "mr", seed=1)
        write_dicom_series(vol * 10 - 500, aff, Path(tmp) / "ct", modality="CT", rescale=(0.5, -1024.0), seed=4,
                           series_number=3, series_description="ct", study_uid="1.2.3.4", shuffle_names=False,
                           name_prefix="CT")
        _file_digest(h, Path(tmp))
    return h.hexdigest()


DIGESTS: dict[str, Callable[[], str]] = {
    "chest_xray.generate": chest_xray_digest,
    "brain_tumor.make_case": brain_tumor_digest,
    "anatomy.derive_regions": regions_digest,
    "dicom_series.write_dicom_series": dicom_series_digest,
}


@pytest.mark.parametrize("name", list(DIGESTS))
def test_generator_output_is_pinned(name: str) -> None:
    assert DIGESTS[name]() == PINNED[name], f"{name}: generated output changed (see the module docstring)"


def test_dicom_body_skips_only_the_file_meta(tmp_path: Path) -> None:
    """Two files differing only in their file meta header have the same body; a pixel change shows."""
    from medcnn.synth.dicom_write import write_xray_dicom

    px = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4000
    uids = {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5"}
    a = write_xray_dicom(tmp_path / "a.dcm", px, **uids)
    b = write_xray_dicom(tmp_path / "b.dcm", px, **uids)
    data = bytearray(b.read_bytes())
    name_at = data.index(b"MEDCNN_SYNTH")
    data[name_at:name_at + 12] = b"OTHER_WRITER"
    b.write_bytes(bytes(data))
    assert a.read_bytes() != b.read_bytes()
    assert _dicom_body(a) == _dicom_body(b)
    c = write_xray_dicom(tmp_path / "c.dcm", px + 1, **uids)
    assert _dicom_body(c) != _dicom_body(a)


if __name__ == "__main__":
    for key, fn in DIGESTS.items():
        print(f'    "{key}": "{fn()}",')
    sys.exit(0)
