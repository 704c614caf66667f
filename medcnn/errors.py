"""Exception types raised by medcnn.

Every user-facing failure is one of these, with a one-line message that names the file
(or config key) and the reason, so that the CLI can print it without a traceback.
"""

from __future__ import annotations

from os import PathLike


class MedcnnError(Exception):
    """Base class of every error medcnn raises on purpose."""


class InputError(MedcnnError, ValueError):
    """An input file or folder cannot be used: unreadable, unsupported, corrupt, empty,
    non-finite, wrong dimensionality, mismatched grids...

    Attributes:
        path: the offending file or folder (``None`` when not tied to one path).
        reason: the reason alone, without the path.
    """

    def __init__(self, path: str | PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class ConfigError(MedcnnError, ValueError):
    """A configuration (YAML or keyword arguments) is invalid; the message names the key."""
