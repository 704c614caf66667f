"""Memory guard: refuse an image whose header promises more data than the machine should load.

Readers call :func:`check_memory` with the shape and sample size read from the header (NIfTI
header, SimpleITK ``ReadImageInformation``, DICOM rows x columns x frames x files, PNG size) *before*
any voxel is read, so a hostile or mistaken header ("4096^3 float64") becomes one clear
:class:`~medcnn.errors.InputError` instead of the operating system killing the process.

The limit, in bytes, comes from (first found):

1. the ``max_memory`` argument of :func:`medcnn.load` (an int or a size string such as ``"8G"``);
2. the limit of the enclosing :func:`memory_limit_scope` (``medcnn --max-memory`` opens one for its command, and
   :func:`medcnn.batch.run_batch` one from its ``max_memory`` argument, carried into its worker threads), so
   that checks deep inside a model or a pipeline see it without every caller passing it on;
3. the environment variable ``MEDCNN_MAX_MEMORY`` (a fallback for library users and child processes);
4. :data:`DEFAULT_FRACTION` of the machine's physical memory.

``0``, ``"0"``, ``"none"`` or ``"off"`` disables the guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from os import PathLike

from medcnn.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

#: environment variable holding the limit (same syntax as ``max_memory``)
ENV_VAR = "MEDCNN_MAX_MEMORY"
#: default limit as a fraction of physical memory
DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

MemoryLimit = int | float | str | None

#: the limit of the innermost :func:`memory_limit_scope` (context-local: threads see it only when given the context)
_SCOPED: contextvars.ContextVar[tuple[MemoryLimit, str] | None] = contextvars.ContextVar("medcnn_max_memory",
                                                                                         default=None)


def parse_size(text: str | int | float, what: str = "max_memory") -> int | None:
    """Bytes from ``"8G"``, ``"512 MiB"``, ``"1.5g"``, ``"1000000"`` or a number; ``None`` for no limit.

    Units are binary (``K`` = 1024). ``0``, ``"none"`` and ``"off"`` mean no limit.

    Raises:
        ConfigError: unparseable or negative value (the message names ``what``).
    """
    if isinstance(text, bool):
        raise ConfigError(f"{what}: expected a size such as 8G or 512M, got {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"{what}: expected a size >= 0, got {text!r}")
        return None if text == 0 else int(text)
    s = str(text).strip().lower()
    if s in ("none", "off", "no", "unlimited", "0"):
        return None
    m = _SIZE.match(s)
    if not m:
        raise ConfigError(f"{what}: expected a size such as 8G, 512M or a number of bytes, got {text!r}")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return value or None


def physical_memory() -> int | None:
    """Total physical memory in bytes, or ``None`` where the platform does not tell."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit(max_memory: MemoryLimit = None) -> int | None:
    """The limit in bytes that applies (see the module docstring), ``None`` for no limit.

    Raises:
        ConfigError: an invalid ``max_memory`` or ``MEDCNN_MAX_MEMORY`` value.
    """
    if max_memory is not None:
        return parse_size(max_memory)
    scoped = _SCOPED.get()
    if scoped is not None:
        return parse_size(scoped[0], what=scoped[1])
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return parse_size(env, what=ENV_VAR)
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else None


@contextlib.contextmanager
def memory_limit_scope(max_memory: MemoryLimit, what: str = "max_memory") -> Iterator[None]:
    """Within the block, checks given no explicit limit use ``max_memory`` (before ``MEDCNN_MAX_MEMORY``).

    The scope is a :mod:`contextvars` value: it holds in this thread, and in threads that run a copy of this
    context (``contextvars.copy_context().run``), never in other threads or processes; it ends with the block.
    ``None`` opens no scope (the enclosing one, the environment or the default applies).

    Args:
        max_memory: a limit as for :func:`parse_size` (``"8G"``, bytes; ``0``/``"none"``: no limit).
        what: the option's name, for the error of an invalid value.

    Raises:
        ConfigError: an invalid ``max_memory``, before the block runs.
    """
    if max_memory is None:
        yield
        return
    parse_size(max_memory, what=what)
    token = _SCOPED.set((max_memory, what))
    try:
        yield
    finally:
        _SCOPED.reset(token)


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``300 MiB``, ``12 KiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def load_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Memory :func:`medcnn.load` needs for an image of ``shape`` stored with ``itemsize``-byte samples:
    the stored array plus its float32 copy."""
    n = 1
    for s in shape:
        n *= max(int(s), 0)
    return n * (int(itemsize) + 4)


def check_memory(
    path: str | PathLike[str] | None,
    shape: Sequence[int],
    itemsize: int,
    max_memory: MemoryLimit = None,
    *,
    what: str = "image",
) -> None:
    """Refuse to load an image that would need more memory than the limit.

    Args:
        path: the file, for the message.
        shape: every dimension from the header (spatial, channels, frames...).
        itemsize: bytes per stored sample.
        max_memory: explicit limit (see :func:`memory_limit`).
        what: what is being loaded, for the message (``"image"``, ``"resampled image"``...).

    Raises:
        InputError: the estimate exceeds the limit; the message gives both and how to raise the limit.
    """
    need = load_bytes(shape, itemsize)
    limit = memory_limit(max_memory)
    if limit is None or need <= limit:
        return
    dims = "x".join(str(int(s)) for s in shape)
    raise InputError(
        path,
        f"{what} of {dims} samples needs about {format_bytes(need)} of memory to load, above the limit of "
        f"{format_bytes(limit)}; if the header is right and the machine has the memory, {RAISE_HINT}",
    )


#: how to raise the limit, for the end of a refusal message
RAISE_HINT = f"raise the limit (medcnn --max-memory SIZE, {ENV_VAR}, or load(..., max_memory=...))"


def over_limit(need: int, max_memory: MemoryLimit = None) -> str | None:
    """``None`` when ``need`` bytes fit the limit (see :func:`memory_limit`), else the end of a refusal message:
    ``"needs about 3 TiB of memory, above the limit of 64 GiB; raise the limit (...)"``.

    For allocations that are not an image read from a header (networks, fixed input sizes), whose callers
    raise their own error type naming the file or config key.
    """
    limit = memory_limit(max_memory)
    if limit is None or need <= limit:
        return None
    return f"needs about {format_bytes(need)} of memory, above the limit of {format_bytes(limit)}; {RAISE_HINT}"
