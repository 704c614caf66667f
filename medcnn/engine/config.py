"""Training configs: YAML files validated against a schema before any work starts.

A schema is a nested dict whose leaves are :class:`Field` objects (type, default, choices, check).
:func:`load_config` reads a YAML file, applies ``--set key=value`` overrides (dotted keys, values
parsed as YAML), fills defaults, and raises :class:`~medcnn.errors.ConfigError` naming the key for
unknown keys (with a did-you-mean), wrong types, bad choices and missing files.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medcnn.errors import ConfigError

logger = logging.getLogger(__name__)

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """One config value.

    Attributes:
        types: accepted Python types (``int`` also accepts for ``float``; ``None`` allowed if
            ``type(None)`` is listed).
        default: default value; ``REQUIRED`` for mandatory keys.
        choices: allowed values, if restricted.
        check: extra validation returning an error message or ``None``.
        help: one-line description (shown in errors and docs).
        path: the value is a file/folder path resolved relative to the config file.
    """

    types: tuple[type, ...]
    default: Any = _MISSING
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""
    path: bool = False

    @property
    def required(self) -> bool:
        return self.default is _MISSING


REQUIRED = _MISSING
NONE = type(None)


def positive(v: Any) -> str | None:
    """Check helper: every number in ``v`` (scalar or sequence) is > 0."""
    vals = v if isinstance(v, (list, tuple)) else [v]
    return None if all(x is None or x > 0 for x in vals) else "must be > 0"


def fraction(v: Any) -> str | None:
    """Check helper: 0 <= v < 1."""
    return None if v is None or 0 <= v < 1 else "must be in [0, 1)"


def probability(v: Any) -> str | None:
    """Check helper: 0 <= v <= 1."""
    return None if v is None or 0 <= v <= 1 else "must be in [0, 1]"


def _type_name(types: tuple[type, ...]) -> str:
    names = {NONE: "null", list: "list", dict: "mapping", str: "string", bool: "true/false", int: "integer", float: "number"}
    if int in types and float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _coerce(value: Any, types: tuple[type, ...]) -> Any:
    if isinstance(value, str) and float in types and str not in types:
        try:  # PyYAML reads 1e-3 (no dot) as a string; accept it as the number it obviously is
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool) and float in types and int not in types:
        return float(value)
    if isinstance(value, tuple) and list in types:
        return list(value)
    if isinstance(value, bool) and str in types and bool not in types:
        return "on" if value else "off"  # YAML 1.1 reads `amp: off` as False
    return value


def validate(cfg: Mapping[str, Any], schema: Mapping[str, Any], base_dir: Path | None = None, prefix: str = "") -> dict:
    """Validate ``cfg`` against ``schema`` and fill defaults.

    Args:
        cfg: the user's (possibly partial) config.
        schema: nested dict of :class:`Field` leaves. A key ``"*"`` in a schema mapping accepts any
            key with that field (free-form mappings such as ``model.kwargs``).
        base_dir: folder that relative ``path`` fields are resolved against.
        prefix: dotted key of ``cfg`` (for messages).

    Returns:
        A new dict with every key of the schema present.

    Raises:
        ConfigError: the first problem found, naming the dotted key.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    free = schema.get("*")
    for key in cfg:
        if key not in schema and free is None:
            close = difflib.get_close_matches(str(key), [k for k in schema if k != "*"], n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys: {', '.join(k for k in schema if k != '*')}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    for key, spec in schema.items():
        if key == "*":
            continue
        dotted = f"{prefix}{key}"
        if isinstance(spec, Mapping):
            sub = cfg.get(key, {})
            if sub is None:
                sub = {}
            out[key] = validate(sub, spec, base_dir, dotted + ".")
            continue
        out[key] = _validate_field(dotted, cfg.get(key, _MISSING), spec, base_dir)
    if free is not None:
        for key in cfg:
            if key not in schema:
                out[key] = cfg[key] if isinstance(free, Mapping) else _validate_field(f"{prefix}{key}", cfg[key], free, base_dir)
    return out


def _non_finite(value: Any) -> float | None:
    """The first NaN/Inf in ``value`` (a number or a list of them), else ``None``: a config never means them."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            return v
    return None


def _validate_field(dotted: str, value: Any, spec: Field, base_dir: Path | None) -> Any:
    if value is _MISSING:
        if spec.required:
            raise ConfigError(f"missing required config key '{dotted}'" + (f" ({spec.help})" if spec.help else ""))
        return copy.deepcopy(spec.default)
    value = _coerce(value, spec.types)
    if not _type_ok(value, spec.types):
        raise ConfigError(f"config key '{dotted}': expected {_type_name(spec.types)}, got {value!r}")
    bad = _non_finite(value)
    if bad is not None:
        raise ConfigError(f"config key '{dotted}': {bad!r} is not a finite number")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"config key '{dotted}': {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if spec.check is not None and value is not None:
        msg = spec.check(value)
        if msg:
            raise ConfigError(f"config key '{dotted}': {value!r} {msg}")
    if spec.path and value is not None:
        p = Path(value).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = (base_dir / p).resolve()
        if not p.exists():
            raise ConfigError(f"config key '{dotted}': no such file or folder {p}")
        value = str(p)
    return value


def parse_overrides(pairs: Sequence[str]) -> dict:
    """Turn ``["train.lr=1e-3", "model.name=unet"]`` into a nested dict (values parsed as YAML).

    Raises:
        ConfigError: a pair without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set needs key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set: invalid key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set: {key} conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping.

    Raises:
        ConfigError: missing file, not UTF-8 text, YAML syntax error (with line), not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the config "
                          "as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping, got {type(data).__name__}")
    return data
