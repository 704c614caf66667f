"""Argument validation shared by the transform presets.

Every check raises :class:`medcnn.errors.ConfigError` (a ``ValueError``) with a one-line message that
names the argument, the bad value and, where the choice is closed, the valid options. Presets are
built from YAML configs as well as from code, so validation happens when a preset is *built*, not
when it first meets data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

from medcnn.errors import ConfigError

KeysLike = Union[str, Sequence[str]]
"""A single dictionary key or a sequence of keys."""


def as_keys(keys: KeysLike | None, name: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Normalise ``keys`` to a tuple of unique, non-empty strings.

    Args:
        keys: one key, a sequence of keys, or ``None`` (only when ``allow_empty``).
        name: the argument's name, for the error message.
        allow_empty: accept ``None`` / an empty sequence (returns ``()``).

    Returns:
        The keys as a tuple, in the given order.

    Raises:
        ConfigError: if a key is not a non-empty string, keys repeat, or none are given when
            ``allow_empty`` is false.
    """
    if keys is None:
        if allow_empty:
            return ()
        raise ConfigError(f"{name}: at least one key is required, got None")
    out = (keys,) if isinstance(keys, str) else tuple(keys)
    if not out and not allow_empty:
        raise ConfigError(f"{name}: at least one key is required, got an empty sequence")
    for key in out:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{name}: keys must be non-empty strings, got {key!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name}: keys must be unique, got {list(out)}")
    return out


def image_and_label_keys(keys: KeysLike, label_keys: KeysLike | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate image keys and label keys together (they must not overlap).

    Args:
        keys: image key(s); at least one.
        label_keys: label key(s); may be ``None`` or empty.

    Returns:
        ``(image_keys, label_keys)`` as tuples.

    Raises:
        ConfigError: on invalid or overlapping keys.
    """
    image_keys = as_keys(keys, "keys")
    labels = as_keys(label_keys, "label_keys", allow_empty=True)
    both = sorted(set(image_keys) & set(labels))
    if both:
        raise ConfigError(f"keys and label_keys must not overlap, both contain {both}")
    return image_keys, labels


def check_unit_interval(value: object, name: str) -> float:
    """Return ``value`` as a float after checking that it is a real number in [0, 1].

    Raises:
        ConfigError: if ``value`` is not a finite real number in [0, 1] (booleans are refused).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return value


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking that it is a finite positive real number.

    Raises:
        ConfigError: if ``value`` is not a finite number > 0 (>= 0 with ``allow_zero``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def check_choice(value: object, name: str, options: Iterable[str]) -> str:
    """Check that ``value`` is one of ``options``.

    Raises:
        ConfigError: listing the valid options.
    """
    options = list(options)
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{name}: unknown value {value!r}; valid options: {', '.join(options)}")
    return value


def check_spatial_dims(value: object) -> int:
    """Check that ``value`` is 2 or 3.

    Raises:
        ConfigError: otherwise.
    """
    if isinstance(value, bool) or value not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_range(value: object, name: str, *, finite: bool = True) -> tuple[float, float]:
    """Check that ``value`` is a pair ``(low, high)`` of numbers with ``low < high``.

    Raises:
        ConfigError: otherwise.
    """
    try:
        low, high = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (low, high), got {value!r}") from None
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (finite and not math.isfinite(v)):
            raise ConfigError(f"{name} must be a pair of finite numbers (low, high), got {value!r}")
    if not low < high:
        raise ConfigError(f"{name} must satisfy low < high, got {value!r}")
    return float(low), float(high)


def check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Fail fast on keyword arguments that ``factory`` does not accept, listing the valid ones.

    Args:
        factory: the callable the keyword arguments are meant for.
        kwargs: the keyword arguments (e.g. from a YAML config).
        what: how to name the target in the message, e.g. ``"preset 'ct'"``.

    Raises:
        ConfigError: naming the unknown arguments and the valid ones.
    """
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"{what}: unknown argument(s) {unknown}; valid arguments: {', '.join(valid)}")
