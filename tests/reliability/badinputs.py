"""The bad-input corpus of the reliability tests, written by the tests themselves (no binaries in git).

Each :class:`Item` builds one input (file or folder) in a given folder and says what ``medcnn predict``
must make of it: ``"ok"``, or an error whose message matches ``reason`` (a regex) and names the
written file or folder.

* :func:`volume_corpus`: for single-volume pipelines (alzheimer): files and DICOM folders.
* :func:`brain_tumor_corpus`: the same file items, each put in place of contrast ``t1c`` (or of all
  four contrasts) of an otherwise good case folder.
* :func:`xray_corpus`: for chest-xray: PNG/JPEG/DICOM-ish radiographs.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from relyhelp import head_volume, png_claiming, write_nifti

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@dataclass
class Item:
    """One corpus entry.

    Attributes:
        name: short name, also the stem of the written file/folder (case id).
        build: ``build(folder, name) -> path`` writes the input into ``folder``.
        reason: regex the error must match (``None``: the case must succeed).
    """

    name: str
    build: Callable[[Path, str], Path]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


# ------------------------------------------------------------------------------------- builders


def _good(folder: Path, name: str, seed: int = 0) -> Path:
    vol, aff = head_volume(seed=seed)
    return write_nifti(folder / f"{name}.nii.gz", vol, aff)


def _cut_in_half(build: Callable[[Path, str], Path]) -> Callable[[Path, str], Path]:
    """A builder writing the first half of the file ``build`` makes (same name and suffix)."""

    def cut(folder: Path, name: str) -> Path:
        good = build(folder, f".{name}-full")
        blob = good.read_bytes()
        good.unlink()
        p = folder / f"{name}{good.name[len(f'.{name}-full'):]}"
        p.write_bytes(blob[: len(blob) // 2])
        return p

    return cut


def _truncated(folder: Path, name: str) -> Path:
    return _cut_in_half(_good)(folder, name)


def _write(suffix: str, data: bytes) -> Callable[[Path, str], Path]:
    def build(folder: Path, name: str) -> Path:
        p = folder / f"{name}{suffix}"
        p.write_bytes(data)
        return p

    return build


def _random_bytes(suffix: str, n: int = 5000) -> Callable[[Path, str], Path]:
    return _write(suffix, np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes())


def _huge_header(folder: Path, name: str) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.float32)
    p = folder / f"{name}.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return p


def _huge_mha(folder: Path, name: str) -> Path:
    """A MetaImage header claiming 60000^3 float voxels, with 16 bytes of data."""
    p = folder / f"{name}.mha"
    head = ("ObjectType = Image\nNDims = 3\nDimSize = 60000 60000 60000\nElementType = MET_FLOAT\n"
            "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n")
    p.write_bytes(head.encode() + b"\0" * 16)
    return p


def _with_value(value: float) -> Callable[[Path, str], Path]:
    def build(folder: Path, name: str) -> Path:
        vol, aff = head_volume()
        vol[10, 12, 10] = value
        return write_nifti(folder / f"{name}.nii.gz", vol, aff)

    return build


def _all_zero(folder: Path, name: str) -> Path:
    vol, aff = head_volume()
    return write_nifti(folder / f"{name}.nii.gz", np.zeros_like(vol), aff)


def _tiny(folder: Path, name: str) -> Path:
    return write_nifti(folder / f"{name}.nii.gz", np.full((1, 1, 1), 5.0, np.float32))


def _flat_png(folder: Path, name: str) -> Path:
    p = folder / f"{name}.png"
    Image.fromarray((np.arange(400).reshape(20, 20) % 251).astype(np.uint8)).save(p)
    return p


def _four_d(folder: Path, name: str) -> Path:
    vol, aff = head_volume()
    return write_nifti(folder / f"{name}.nii.gz", np.stack([vol, vol, vol], axis=-1), aff)


def _copy_from(src: Path, suffix: str | None = None) -> Callable[[Path, str], Path]:
    def build(folder: Path, name: str) -> Path:
        p = folder / f"{name}{suffix or src.suffix}"
        shutil.copy(src, p)
        return p

    return build


def _text(folder: Path, name: str) -> Path:
    p = folder / f"{name}.txt"
    p.write_text("Patient notes: this is not an image.\n")
    return p


def _gzip_text(folder: Path, name: str) -> Path:
    p = folder / f"{name}.nii.gz"
    p.write_bytes(gzip.compress(b"this is a text file, not a NIfTI image\n" * 50))
    return p


def dicom_series(folder: Path, seed: int = 0, **kwargs) -> list[Path]:
    """A small MR series (20 x 24 x 12 voxels, 6 mm) written slice by slice."""
    from medcnn.synth.dicom_series import write_dicom_series

    vol, aff = head_volume(shape=(20, 24, 12), seed=seed)
    return write_dicom_series(vol, aff, folder, shuffle_names=False, seed=seed, **kwargs)


def _dicom_good(folder: Path, name: str) -> Path:
    dicom_series(folder / name)
    return folder / name


def _dicom_missing_slice(folder: Path, name: str) -> Path:
    files = dicom_series(folder / name)
    os.remove(files[5])
    return folder / name


def _dicom_uneven(folder: Path, name: str) -> Path:
    files = dicom_series(folder / name)
    ds = pydicom.dcmread(files[7])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 2.5]
    ds.save_as(files[7])
    return folder / name


def _dicom_truncated_slice(folder: Path, name: str) -> Path:
    files = dicom_series(folder / name)
    files[3].write_bytes(files[3].read_bytes()[:200])
    return folder / name


def _dicom_only_sr_rtstruct(folder: Path, name: str) -> Path:
    d = folder / name
    d.mkdir()
    shutil.copy(PYDICOM_DATA / "test-SR.dcm", d / "report.dcm")
    shutil.copy(PYDICOM_DATA / "rtstruct.dcm", d / "structures.dcm")
    return d


def _dicom_mixed_series(folder: Path, name: str) -> Path:
    """Two series in one folder: each becomes its own case (``<name>_s3``, ``<name>_s5``)."""
    d = folder / name
    dicom_series(d, seed=1, series_number=3, series_description="T1 axial", name_prefix="A")
    dicom_series(d, seed=2, series_number=5, series_description="T1 repeat", name_prefix="B")
    return d


def _non_ascii_good(folder: Path, name: str) -> Path:
    sub = folder / "Patiënt ünï 01"
    sub.mkdir(exist_ok=True)
    return _good(sub, name, seed=3)


def _non_ascii_bad(folder: Path, name: str) -> Path:
    sub = folder / "Patiënt ünï 01"
    sub.mkdir(exist_ok=True)
    return _truncated(sub, name)


def _raw_nifti(fix: Callable[[nib.Nifti1Header], None], data: np.ndarray | None = None) -> Callable[[Path, str], Path]:
    """A good head volume whose header ``fix`` breaks, written by hand (nibabel's writer would repair it)."""

    def build(folder: Path, name: str) -> Path:
        vol, aff = head_volume()
        vol = vol if data is None else data
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(vol.shape)
        hdr.set_data_dtype(vol.dtype)
        hdr.set_qform(aff, 1)
        hdr.set_sform(aff, 1)
        hdr["vox_offset"] = 352
        fix(hdr)
        p = folder / f"{name}.nii.gz"
        with gzip.open(p, "wb") as fh:
            fh.write(hdr.binaryblock + b"\0" * 4 + vol.tobytes(order="F"))
        return p

    return build


def _nan_sform_and_qform(h: nib.Nifti1Header) -> None:
    h["srow_x"][0] = np.nan
    h["quatern_b"] = np.nan


def _nan_sform(h: nib.Nifti1Header) -> None:
    h["srow_x"][0] = np.nan


def _huge_voxels(h: nib.Nifti1Header) -> None:
    h["srow_x"][0] = 1e6
    h["pixdim"][1] = 1e6


def _overflowing_slope(h: nib.Nifti1Header) -> None:
    h["scl_slope"], h["scl_inter"] = 1e38, 0.0


def _dicom_edited(**attrs) -> Callable[[Path, str], Path]:
    """A good DICOM series whose every slice gets ``attrs``."""

    def build(folder: Path, name: str) -> Path:
        for f in dicom_series(folder / name):
            ds = pydicom.dcmread(f)
            for k, v in attrs.items():
                setattr(ds, k, v)
            ds.save_as(f)
        return folder / name

    return build


def _dicom_patched(attr: str, placeholder: int, raw: bytes) -> Callable[[Path, str], Path]:
    """A good DICOM series whose ``attr`` holds ``raw`` bytes pydicom would refuse to write (e.g. ``1A`` as IS)."""

    def build(folder: Path, name: str) -> Path:
        for f in dicom_series(folder / name):
            ds = pydicom.dcmread(f)
            setattr(ds, attr, placeholder)
            ds.save_as(f)
            blob = f.read_bytes()
            token = str(placeholder).encode()
            assert blob.count(token) == 1 and len(raw) == len(token)
            f.write_bytes(blob.replace(token, raw))
        return folder / name

    return build


def _dicom_nan_orientation(folder: Path, name: str) -> Path:
    files = dicom_series(folder / name)
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = ["nan", 0, 0, 0, 1, 0]
    ds.save_as(files[4])
    return folder / name


def _flat_nifti(folder: Path, name: str) -> Path:
    """A 2D NIfTI (20 x 24): read as a single-slice volume, which no 3D model can use."""
    return write_nifti(folder / f"{name}.nii.gz", head_volume()[0][:, :, 10])


# --------------------------------------------------------------------------------------- corpora

#: file items valid for any 3D pipeline: a whole case for alzheimer, contrast t1c of a case for brain-tumor
_FILE_ITEMS = [
    Item("good_a", lambda f, n: _good(f, n, 1)),
    Item("good_b", lambda f, n: _good(f, n, 2)),
    Item("truncated", _truncated, r"truncated|corrupt"),
    Item("empty", _write(".nii.gz", b""), r"empty"),
    Item("random_bytes", _random_bytes(".nii.gz"), r"not a readable NIfTI|corrupt"),
    Item("gzip_of_text", _gzip_text, r"not a readable NIfTI|corrupt"),
    Item("huge_header", _huge_header, r"declares .* voxels|memory"),
    Item("huge_mha_header", _huge_mha, r"needs about .* of memory"),
    Item("nan_voxel", _with_value(float("nan")), r"1 of \d+ voxels are NaN or Inf"),
    Item("inf_voxel", _with_value(float("inf")), r"1 of \d+ voxels are NaN or Inf"),
    Item("four_d", _four_d, r"channel"),
    Item("minc", _copy_from(NIBABEL_DATA / "minc1_1_scale.mnc"), r"MINC is not supported"),
    Item("parrec", _copy_from(NIBABEL_DATA / "T1.PAR"), r"PAR/REC is not supported"),
    Item("scan é 1", _non_ascii_good),
    Item("défaut ü", _non_ascii_bad, r"truncated|corrupt"),
    Item("nan_sform_qform", _raw_nifti(_nan_sform_and_qform), r"unusable geometry: the sform .*NaN.*the qform .*NaN"),
    Item("huge_voxels", _raw_nifti(_huge_voxels), r"implausible voxel size of 1e\+06 mm"),
    Item("nan_sform_good_qform", _raw_nifti(_nan_sform)),  # read through its qform, with a warning
    Item("scl_slope_overflow", _raw_nifti(_overflowing_slope, np.full((20, 24, 20), 500, np.int16)), r"scl_slope 1e\+38"),
]
#: items that replace every contrast of a brain-tumor case (one blank/tiny/2D contrast would be a grid mismatch)
_WHOLE_ITEMS = [
    Item("all_zero", _all_zero, r"all zero"),
    Item("tiny_1vox", _tiny, r"too small"),
    Item("flat_2d", _flat_nifti, r"too small"),
]

#: DICOM folder items (single-volume pipelines)
_DICOM_ITEMS = [
    Item("dicom_good", _dicom_good),
    Item("dicom_missing_slice", _dicom_missing_slice, r"missing 1 slice"),
    Item("dicom_uneven_spacing", _dicom_uneven, r"uneven slice spacing"),
    Item("dicom_truncated_slice", _dicom_truncated_slice, r"missing 1 slice.*unreadable .*IM0003\.dcm"),
    Item("dicom_only_sr_rtstruct", _dicom_only_sr_rtstruct, r"non-image|no image"),
    Item("dicom_mixed_series", _dicom_mixed_series),  # split into one (good) case per series
    Item("dicom_rows_beyond_pixels", _dicom_edited(Rows=28), r"IM00\d\d\.dcm: header says 28x20 pixels .* pixel data"),
    Item("dicom_nan_orientation", _dicom_nan_orientation, r"IM0004\.dcm: ImageOrientationPatient .*not finite"),
    Item("dicom_bad_frames", _dicom_patched("NumberOfFrames", 7919, b"1A  "), r"invalid NumberOfFrames '1A'"),
    Item("dicom_odd_series_number", _dicom_patched("SeriesNumber", 987654, b"abc de")),  # still one good case
]

Corpus = list[tuple[Item, Path]]


def volume_corpus(root: Path) -> tuple[Corpus, list[Path]]:
    """Single-volume pipelines (alzheimer): every item in ``root/scans`` plus a text file given by name.

    Returns:
        ``([(item, written path), ...], [paths to pass to medcnn predict])``.
    """
    scans = root / "scans"
    scans.mkdir(parents=True)
    items = [*_FILE_ITEMS, *_WHOLE_ITEMS, Item("flat_2d_png", _flat_png, r"2D"), *_DICOM_ITEMS]
    built = [(it, it.build(scans, it.name)) for it in items]
    other = root / "other"
    other.mkdir()
    text = Item("notes", _text, r"unrecognised file format")
    built.append((text, text.build(other, text.name)))
    return built, [scans, built[-1][1]]


def brain_tumor_corpus(root: Path) -> tuple[Corpus, list[Path]]:
    """brain-tumor: one BraTS 2023 case folder per item; the item is its t1c (or, for blank/tiny/2D
    items, all four contrasts); the other contrasts are good volumes."""
    built = []
    for it in [*_FILE_ITEMS, *_WHOLE_ITEMS]:
        case = root / it.name
        case.mkdir(parents=True)
        whole = it in _WHOLE_ITEMS
        for k, contrast in enumerate(("t1n", "t1c", "t2w", "t2f")):
            if whole or contrast == "t1c":
                tmp = case / "build"
                tmp.mkdir()
                made = it.build(tmp, "x")
                made.rename(case / f"{it.name}-{contrast}{made.name[1:]}")
                shutil.rmtree(tmp)
            else:
                _good(case, f"{it.name}-{contrast}", seed=10 + k)
        built.append((it, case))
    return built, [root]


# ------------------------------------------------------------------------------------------ X-ray


def _xray_png(folder: Path, name: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:96, :80]
    img = 120 + 60 * np.cos(c / 80 * np.pi) + rng.normal(0, 5, (96, 80))
    img[((r - 48) / 30) ** 2 + ((c - 22) / 12) ** 2 < 1] = 40
    img[((r - 48) / 30) ** 2 + ((c - 58) / 12) ** 2 < 1] = 40
    p = folder / f"{name}.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
    return p


_truncated_png = _cut_in_half(_xray_png)


def _png_bomb(folder: Path, name: str) -> Path:
    """A PNG whose header claims 100000 x 100000 pixels (decompression-bomb size) over a few bytes."""
    return png_claiming(folder / f"{name}.png", 100_000, 100_000)


def _volume_as_xray(folder: Path, name: str) -> Path:
    vol, aff = head_volume()
    return write_nifti(folder / f"{name}.nii.gz", vol, aff)


def _truncated_dcm(folder: Path, name: str) -> Path:
    p = folder / f"{name}.dcm"
    shutil.copy(PYDICOM_DATA / "MR_truncated.dcm", p)
    return p


def _blank_png(folder: Path, name: str) -> Path:
    p = folder / f"{name}.png"
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(p)
    return p


def _radiograph_pair(folder: Path, name: str) -> Path:
    """PA + lateral CR films sharing one SeriesInstanceUID: two 2D cases, not a volume."""
    from pydicom.uid import generate_uid

    from medcnn.synth.dicom_write import write_xray_dicom

    uid = generate_uid()
    for k, view in enumerate(("PA", "LL")):
        rng = np.random.default_rng(k)
        px = np.clip(2000 + 600 * rng.normal(size=(96, 80)), 0, 4095).astype(np.uint16)
        write_xray_dicom(folder / name / f"{view}.dcm", px, modality="CR", series_instance_uid=uid, view_position=view,
                         instance_number=k + 1, window_center=2048, window_width=4096)
    return folder / name


def xray_corpus(root: Path) -> tuple[Corpus, list[Path]]:
    """chest-xray: broken PNG/JPEG/DICOM files and a 3D volume given as an X-ray, with good radiographs."""
    items = [
        Item("xray_good_a", lambda f, n: _xray_png(f, n, 1)),
        Item("xray_good_b", lambda f, n: _xray_png(f, n, 2)),
        Item("truncated_png", _truncated_png, r"truncated|corrupt"),
        Item("random_png", _random_bytes(".png"), r"not a readable PNG"),
        Item("empty_png", _write(".png", b""), r"empty"),
        Item("text_as_jpeg", _write(".jpg", b"just some text\n" * 40), r"not a readable"),
        Item("png_bomb", _png_bomb, r"memory|pixels|truncated|corrupt"),
        Item("truncated_dcm", _truncated_dcm, r"pixel data|corrupt|truncated"),
        Item("xray ü spaced", lambda f, n: _xray_png(f, n, 3)),
        Item("blank_png", _blank_png, r"constant image"),
        Item("cr_pair_one_series", _radiograph_pair),
    ]
    images = root / "images"
    images.mkdir(parents=True)
    built = [(it, it.build(images, it.name)) for it in items]
    # a volume or a DICOM report in an X-ray folder is no X-ray case (skipped); given by name, each must fail
    other = root / "other"
    other.mkdir()
    named = [Item("volume_as_xray", _volume_as_xray, r"2D|3D"),
             Item("report_dcm", _copy_from(PYDICOM_DATA / "test-SR.dcm", ".dcm"), r"no image")]
    built += [(it, it.build(other, it.name)) for it in named]
    return built, [images, *(p for _, p in built[-len(named):])]


#: corpus builder per pipeline name
CORPORA: dict[str, Callable[[Path], tuple[Corpus, list[Path]]]] = {
    "alzheimer": volume_corpus,
    "brain-tumor": brain_tumor_corpus,
    "chest-xray": xray_corpus,
}
