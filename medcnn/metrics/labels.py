"""Label conventions of segmentation files, and remapping them onto the labels a model predicts.

The same tumour sub-region carries different values in different datasets:

===============  =====  =====  =====  ================================================
convention        NCR    ED     ET     used by
===============  =====  =====  =====  ================================================
``brats2023``     1      2      3      BraTS 2023+ (and medcnn's ``brain-tumor`` output)
``brats2021``     1      2      4      BraTS 2012-2021 (label 3 unused)
``nnunet-brats``  2      1      3      nnU-Net's BraTS conversion (ED 1, NCR 2, ET 3)
===============  =====  =====  =====  ================================================

A convention is given by name, by a YAML file, or as a mapping. A YAML file (or mapping) is either
``{name: value}`` (the files' value of each named label; names matched against the target's) or
``{value: value}`` (the files' value -> the target's value), optionally under a top-level ``labels:`` key::

    labels: {NCR: 1, ED: 2, ET: 4}      # named, like the built-in brats2021
    labels: {4: 3, 1: 1, 2: 2}          # by value

Background 0 always maps to 0. A value the convention does not name is refused (naming it), never silently
dropped: that is how a BraTS 2021 reference scored ET Dice 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: medcnn's brain-tumour labels (BraTS 2023): what the bundled model predicts and the default target
BRATS2023: Mapping[str, int] = MappingProxyType({"NCR": 1, "ED": 2, "ET": 3})

#: built-in conventions: name -> {label name: value in files of that convention}
CONVENTIONS: Mapping[str, Mapping[str, int]] = MappingProxyType({
    "brats2023": BRATS2023,
    "brats2021": MappingProxyType({"NCR": 1, "ED": 2, "ET": 4}),
    "nnunet-brats": MappingProxyType({"ED": 1, "NCR": 2, "ET": 3}),
})

#: a convention: built-in name, YAML path, ``{name: value}`` or ``{value: value}``
LabelSpec = Union[str, "os.PathLike[str]", Mapping]


def _read_yaml(path: Path) -> Mapping:
    import yaml

    if not path.is_file():
        raise ValueError(f"{path}: label map file not found (or give one of {', '.join(CONVENTIONS)})")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if isinstance(data, Mapping) and isinstance(data.get("labels"), Mapping):
        data = data["labels"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path}: a label map is a YAML mapping {{name: value}} or {{value: value}}, got {type(data).__name__}")
    return data


def _as_int(v: object, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
        raise ValueError(f"{where}: label values must be integers, got {v!r}")
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{where}: label values must be integers, got {v!r}") from None


def label_mapping(spec: LabelSpec, target: Mapping[str, int] = BRATS2023) -> dict[int, int]:
    """``{value in the files: value in target}`` of a label convention (background ``0 -> 0`` included).

    Args:
        spec: a name of :data:`CONVENTIONS` (``brats2021``, ``brats2023``, ``nnunet-brats``), a YAML file
            path, or a mapping ``{name: value}`` / ``{value: value}`` (see the module doc).
        target: the labels wanted, ``{name: value}`` (default BraTS 2023, medcnn's brain-tumour labels).

    Returns:
        The lookup, e.g. ``brats2021`` -> ``{0: 0, 1: 1, 2: 2, 4: 3}``.

    Raises:
        ValueError: unknown name, unreadable file, a name the target does not have, non-integer values,
            or two source values for one label.
    """
    where = str(spec) if not isinstance(spec, Mapping) else "label map"
    if isinstance(spec, Mapping):
        conv: Mapping = spec
    elif str(spec) in CONVENTIONS:
        conv = CONVENTIONS[str(spec)]
        where = f"label convention {spec}"
    elif str(spec).lower().endswith((".yaml", ".yml", ".json")) or Path(spec).exists():
        conv = _read_yaml(Path(spec))
    else:
        raise ValueError(f"unknown label convention {str(spec)!r}; choose one of {', '.join(CONVENTIONS)} or a YAML file")
    by_value = all(isinstance(k, (int, np.integer)) or (isinstance(k, str) and k.strip().isdigit()) for k in conv)
    out = {0: 0}
    if by_value:
        for k, v in conv.items():
            out[_as_int(k, where)] = _as_int(v, where)
    else:
        for name, value in conv.items():
            if str(name) not in target:
                raise ValueError(f"{where}: label {name!r} is not one of the target's ({', '.join(target)})")
            src = _as_int(value, where)
            if src in out and src != 0:
                raise ValueError(f"{where}: value {src} given to two labels")
            out[src] = int(target[str(name)])
    return out


def describe(mapping: Mapping[int, int]) -> str:
    """``"1->1, 2->2, 4->3"`` (background left out), for log and error lines."""
    return ", ".join(f"{k}->{v}" for k, v in sorted(mapping.items()) if k != 0)


def unexpected_labels(labels: np.ndarray | torch.Tensor, allowed: Iterable[int]) -> list[int]:
    """Sorted values of ``labels`` (any shape) outside ``allowed`` (background 0 is always allowed)."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    values = np.unique(arr)
    ok = set(int(v) for v in allowed) | {0}
    return [int(v) if float(v).is_integer() else float(v) for v in values if not (float(v).is_integer() and int(v) in ok)]


def remap_labels(labels: np.ndarray | torch.Tensor, mapping: Mapping[int, int], where: str = "label map") -> np.ndarray | torch.Tensor:
    """Label map with every value replaced by ``mapping[value]`` (same shape and type as ``labels``).

    Args:
        labels: integer (or whole-number float) label map, any shape.
        mapping: ``{source value: target value}`` (from :func:`label_mapping`).
        where: the file (or name) for the error line.

    Raises:
        ValueError: a value of ``labels`` that ``mapping`` does not name (listed in the message).
    """
    bad = unexpected_labels(labels, mapping.keys())
    if bad:
        raise ValueError(f"{where}: label value(s) {', '.join(map(str, bad))} not in the label convention "
                         f"({describe(mapping)}); give the right --labels / data.labels map")
    if all(k == v for k, v in mapping.items()):
        return labels
    if isinstance(labels, torch.Tensor):
        out_t = torch.zeros_like(labels)
        for src, dst in mapping.items():
            out_t[labels == src] = dst
        return out_t
    arr = np.asarray(labels)
    out = np.zeros_like(arr)
    for src, dst in mapping.items():
        out[arr == src] = dst
    return out
