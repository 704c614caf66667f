"""Atomic file writing: write to a temporary name in the same folder, then rename.

A reader (or a rerun after ``kill -9``) therefore sees either no file or a whole file, never a
partial one. The temporary name keeps the real suffixes (``.nii.gz``, ``.png``...) so that
format-sniffing writers (nibabel, SimpleITK, Pillow) pick the right format.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

TMP_MARK = ".medcnn-tmp-"


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.png`` for ``b.png``, ``""`` for no suffix."""
    name = path.name
    low = name.lower()
    for multi in (".nii.gz", ".tar.gz"):
        if low.endswith(multi):
            return name[-len(multi):]
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> with atomic_path("out/case.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}{TMP_MARK}{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_png_atomic(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a 2D uint8 or uint16 array (rows, cols) as a grey PNG atomically (masks, 8/16-bit images)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_csv_atomic(path: str | os.PathLike[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows (dicts keyed by column; other keys ignored, missing ones empty) as CSV atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
