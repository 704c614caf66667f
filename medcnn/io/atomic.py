"""Atomic file writing: write to a temporary name in the same folder, then rename.

A reader (or a rerun after ``kill -9``) therefore sees either no file or a whole file, never a
partial one. The temporary name keeps the real suffixes (``.nii.gz``, ``.png``...) so that
format-sniffing writers (nibabel, SimpleITK, Pillow) pick the right format, and it carries the
writer's process id (``.<stem>.medcnn-tmp-<pid>-<random><suffix>``) so that a cleanup can tell a
killed process's leftovers (:func:`is_stale_temp`) from the files a live process is still writing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

TMP_MARK = ".medcnn-tmp-"
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"(\d+)-[0-9a-f]{8}")


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this machine (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def is_stale_temp(path: str | os.PathLike[str]) -> bool:
    """True for a temporary file of :func:`atomic_path` whose writer is gone (killed or ended).

    A name without a process id (written by an older medcnn) counts as stale; a name carrying the
    id of a live process other than this one is not (that process may still rename it into place).
    """
    name = Path(path).name
    if TMP_MARK not in name:
        return False
    m = _TMP_PID.search(name)
    if m is None:
        return True
    pid = int(m.group(1))
    return pid != os.getpid() and not pid_alive(pid)


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
    tmp = path.with_name(f".{stem}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
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
