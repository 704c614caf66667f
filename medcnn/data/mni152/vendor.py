"""Regenerate the vendored MNI152 2009 maps in this folder from nilearn's package data.

This is a maintenance tool, not part of the runtime library: it is the only module in
``medcnn`` that imports nilearn (only nilearn's *files* are used; its API is not called),
and it needs nilearn installed only when it is re-run::

    pip install "medcnn[vendor]"          # or: pip install nilearn
    python medcnn/data/mni152/vendor.py   # rewrites mni152_{t1,gm,wm}_2mm.nii.gz

What it does, for each of the T1 template and the grey/white-matter probability maps of the
ICBM 2009a nonlinear symmetric template shipped by nilearn
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 1 mm,
197 x 233 x 189, uint8):

1. crop all three maps to the bounding box of the head (union of non-zero voxels) plus a
   4 mm margin, with an even number of voxels per axis;
2. average 2 x 2 x 2 blocks (1 mm -> 2 mm isotropic); the affine is updated exactly
   (the new voxel centre is the centre of its block);
3. store the result as uint8 with ``scl_slope = 1/255`` so that the maps read back as floats
   in [0, 1] (T1 normalised to its maximum, GM/WM as probabilities).

The copyright notice of the template is in ``NOTICE`` next to this file and must travel with
the maps.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

#: Names of the source files inside ``nilearn/datasets/data``, keyed by map name.
SOURCE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Output file name pattern, keyed by map name (also used by :mod:`medcnn.synth.anatomy`).
OUTPUT_PATTERN = "mni152_{name}_2mm.nii.gz"

FACTOR = 2
MARGIN_MM = 4


def nilearn_data_dir() -> Path:
    """Locate nilearn's bundled data folder (needs nilearn installed).

    Returns:
        Path of ``nilearn/datasets/data``.

    Raises:
        RuntimeError: if nilearn is not installed.
    """
    try:
        import nilearn  # noqa: PLC0415  (only this maintenance tool needs nilearn)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("re-vendoring the MNI152 maps needs nilearn: pip install nilearn") from exc
    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def downsample(volume: np.ndarray, affine: np.ndarray, bbox: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Crop a volume and average FACTOR^3 blocks.

    Args:
        volume: (X, Y, Z) array.
        affine: (4, 4) voxel->world affine of ``volume``.
        bbox: three slices whose lengths are multiples of FACTOR.

    Returns:
        The block-averaged (X', Y', Z') float64 array and its exact (4, 4) affine.
    """
    crop = volume[bbox].astype(np.float64)
    shape = tuple(s // FACTOR for s in crop.shape)
    blocks = crop.reshape(shape[0], FACTOR, shape[1], FACTOR, shape[2], FACTOR)
    out = blocks.mean(axis=(1, 3, 5))
    start = np.array([s.start for s in bbox], dtype=np.float64)
    index_map = np.eye(4)
    index_map[:3, :3] *= FACTOR
    index_map[:3, 3] = start + (FACTOR - 1) / 2.0
    return out, affine @ index_map


def head_bbox(union: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the non-zero voxels plus margin, with even lengths, inside the array.

    Args:
        union: (X, Y, Z) boolean array.

    Returns:
        Three slices.
    """
    idx = np.argwhere(union)
    lo = idx.min(axis=0) - MARGIN_MM
    hi = idx.max(axis=0) + 1 + MARGIN_MM
    slices = []
    for axis, size in enumerate(union.shape):
        a, b = max(int(lo[axis]), 0), min(int(hi[axis]), size)
        if (b - a) % FACTOR:
            if b < size:
                b += 1
            else:
                a -= 1
        slices.append(slice(a, b))
    return tuple(slices)


def vendor(out_dir: Path, source_dir: Path | None = None) -> dict[str, Path]:
    """Write the reduced-resolution maps into ``out_dir``.

    Args:
        out_dir: destination folder (normally this file's folder).
        source_dir: nilearn's data folder; found automatically when None.

    Returns:
        Map name -> written path.
    """
    source_dir = nilearn_data_dir() if source_dir is None else Path(source_dir)
    images = {name: nib.load(source_dir / fname) for name, fname in SOURCE_FILES.items()}
    affine = images["t1"].affine
    for name, img in images.items():
        if not np.allclose(img.affine, affine) or img.shape != images["t1"].shape:
            raise ValueError(f"{name}: grid differs from the T1 template")
    arrays = {name: np.asarray(img.dataobj, dtype=np.float64) for name, img in images.items()}
    union = np.zeros(images["t1"].shape, dtype=bool)
    for arr in arrays.values():
        union |= arr > 0
    bbox = head_bbox(union)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, arr in arrays.items():
        small, new_affine = downsample(arr / 255.0, affine, bbox)  # sources are uint8 0..255
        small = small / max(small.max(), 1e-12) if name == "t1" else np.clip(small, 0.0, 1.0)
        quantised = np.round(small * 255.0).astype(np.uint8)
        img = nib.Nifti1Image(quantised, new_affine)
        img.header.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1.0 / 255.0, 0.0)
        img.header.set_xyzt_units("mm")
        img.set_qform(new_affine, code=4)  # 4 = MNI152 space
        img.set_sform(new_affine, code=4)
        img.header["descrip"] = f"ICBM152 2009a sym {name} 2mm (medcnn)".encode()[:79]
        path = out_dir / OUTPUT_PATTERN.format(name=name)
        img.to_filename(path)
        written[name] = path
        logger.info("wrote %s shape=%s size=%d bytes", path, quantised.shape, path.stat().st_size)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--source-dir", type=Path, default=None, help="nilearn/datasets/data (auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    vendor(args.out_dir, args.source_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
