"""MONAI bundles: ``load_model("spleen_ct_segmentation/")``.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``/``.yml``) with a ``network_def`` and
``models/model.pt`` with the weights. The network is built by MONAI's own
:class:`monai.bundle.ConfigParser` from ``network_def``; the weights are read with
``weights_only=True``. Only MONAI components (``_target_`` a bare MONAI name or ``monai.*``) and
``@`` references are accepted in what is built or read: ``$`` expressions are Python code, and
they are refused rather than evaluated.

What is taken from the bundle (a ``preprocess``/``inference`` section of the model config replaces
the bundle's own):

* ``preprocessing`` (a ``Compose``): ``Orientation[d]`` -> orientation, ``Spacing[d]`` -> spacing,
  ``ScaleIntensityRange[d]`` with ``b_min=0, b_max=1, clip=True`` -> ``normalize: ct`` with that
  window, ``NormalizeIntensity[d]`` (``channel_wise``; ``nonzero`` -> ``brain_mri``, else
  ``zscore``), ``ScaleIntensityRangePercentiles[d]`` 0.5/99.5 to [0, 1] clipped -> ``minmax``,
  ``CropForeground[d]`` -> ``crop_foreground``; loading and typing transforms (``LoadImage``,
  ``EnsureChannelFirst``, ``EnsureType``, ``ToTensor``, ``CastToType``...) are what
  :func:`medcnn.load` does already. Any other transform is refused, naming it.
* ``inferer``: ``SlidingWindowInferer`` -> ``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``.
* ``postprocessing``: softmax / argmax are medcnn's default; sigmoid outputs need ``labels.regions``
  in the model config; inversion and writing transforms are what medcnn does anyway.
* ``configs/metadata.json``: the output ``channel_def`` -> label names, the input channel count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from medcnn.errors import ConfigError, InputError
from medcnn.foreign.common import load_weights, model_config, read_model_config, read_state_dict

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: transforms whose work :func:`medcnn.load` and the model grid already do
_IO_TRANSFORMS = {"LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType", "ToDevice",
                  "Identity", "ConcatItems", "DeleteItems", "SqueezeDim", "ToNumpy"}
_POST_IGNORED = {"Invert", "SaveImage", "EnsureType", "ToTensor", "CastToType", "ToDevice", "Identity", "CopyItems",
                 "DeleteItems", "ToNumpy", "SqueezeDim"}
_ALLOWED_META = {"_target_", "_disabled_", "_desc_"}


def bundle_config_file(folder: str | Path) -> Path | None:
    """``configs/inference.{json,yaml,yml}`` of a bundle folder, or ``None``."""
    for name in CONFIG_NAMES:
        f = Path(folder) / "configs" / name
        if f.is_file():
            return f
    return None


def is_bundle(folder: str | Path) -> bool:
    """A folder with a bundle inference config (the weights are checked when loading)."""
    return Path(folder).is_dir() and bundle_config_file(folder) is not None


def _base_name(target: Any) -> str:
    """``"monai.transforms.Spacingd"`` / ``"SpacingD"`` -> ``"Spacing"``."""
    name = str(target).rsplit(".", 1)[-1]
    for suffix in ("Dict", "D", "d"):
        if name.endswith(suffix) and len(name) > len(suffix) and name[: -len(suffix)][-1:].isalpha():
            stem = name[: -len(suffix)]
            if stem[:1].isupper():
                return stem
    return name


class _Bundle:
    """The parsed bundle config, with the safety checks on what is read or built."""

    def __init__(self, folder: Path, config_file: Path) -> None:
        from monai.bundle import ConfigParser

        self.folder, self.file = folder, config_file
        self.parser = ConfigParser()
        try:
            self.parser.read_config(str(config_file))
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise InputError(config_file, f"unreadable bundle config ({str(exc).splitlines()[0][:160]})") from None
        self.parser["bundle_root"] = str(folder)

    def has(self, key: str) -> bool:
        try:
            self.parser[key]
        except KeyError:
            return False
        return True

    def check(self, key: str, seen: set[str] | None = None) -> None:
        """Refuse ``$`` expressions, non-MONAI ``_target_`` names and other ``_`` directives in ``key``
        and everything it references."""
        seen = set() if seen is None else seen
        if key in seen:
            return
        seen.add(key)
        self._check_value(self.parser[key], key, seen)

    def _check_value(self, value: Any, where: str, seen: set[str]) -> None:
        if isinstance(value, str):
            if value.startswith("$"):
                raise InputError(self.file, f"{where}: the expression {value[:60]!r} is Python code; medcnn does not "
                                            "evaluate bundle expressions (give the settings in --model-config instead)")
            if value.startswith("@"):
                ref = value[1:]
                if not self.has(ref):
                    raise InputError(self.file, f"{where}: reference {value!r} names nothing in the config")
                self.check(ref, seen)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if str(k).startswith("_") and k not in _ALLOWED_META:
                    raise InputError(self.file, f"{where}: the directive {k!r} is not accepted (only {', '.join(sorted(_ALLOWED_META))})")
                if k == "_target_" and not (isinstance(v, str) and ("." not in v or v.startswith("monai."))):
                    raise InputError(self.file, f"{where}: _target_ {v!r} is not a MONAI component; only MONAI "
                                                "networks and transforms are built from a bundle")
                self._check_value(v, f"{where}::{k}", seen)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._check_value(v, f"{where}::{i}", seen)

    def value(self, key: str) -> Any:
        """A checked, resolved value (references followed, no instantiation)."""
        self.check(key)
        return self.parser.get_parsed_content(key, instantiate=False)

    def transforms(self, key: str, skip: frozenset[str] = frozenset(),
                   only: frozenset[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """``[(id, base name, args), ...]`` of a ``Compose`` section (or a list of transforms); the arguments
        of transforms named in ``skip`` (or not in ``only``) are neither checked nor read (``{}``)."""
        raw = self.parser[key]
        if isinstance(raw, str) and raw.startswith("@"):
            return self.transforms(raw[1:], skip, only)
        if isinstance(raw, Mapping) and _base_name(raw.get("_target_", "")) == "Compose":
            items, base = raw.get("transforms", []), f"{key}::transforms"
        elif isinstance(raw, list):
            items, base = raw, key
        else:
            raise InputError(self.file, f"{key}: expected a Compose of transforms")
        if isinstance(items, str) and items.startswith("@"):
            return self.transforms(items[1:], skip, only)
        if not isinstance(items, list):
            raise InputError(self.file, f"{base}: expected a list of transforms")
        out = []
        for i, item in enumerate(items):
            tid = f"{base}::{i}"
            if isinstance(item, str) and item.startswith("@"):
                tid, item = item[1:], self.parser[item[1:]]
            if not isinstance(item, Mapping) or "_target_" not in item:
                raise InputError(self.file, f"{tid}: expected a transform with a _target_")
            if item.get("_disabled_") in (True, "true", "True"):
                continue
            name = _base_name(item["_target_"])
            if name in skip or (only is not None and name not in only):
                out.append((tid, name, {}))
                continue
            self.check(tid)
            args = {k: self.parser.get_parsed_content(f"{tid}::{k}", instantiate=False)
                    for k in item if not str(k).startswith("_")}
            out.append((tid, name, args))
        return out


def _preprocess_from(bundle: _Bundle) -> dict[str, Any]:
    """The medcnn preprocessing spec equivalent to the bundle's ``preprocessing`` (refusing the rest)."""
    if not bundle.has("preprocessing"):
        return {}
    spec: dict[str, Any] = {}
    for tid, name, args in bundle.transforms("preprocessing", skip=frozenset(_IO_TRANSFORMS)):
        if name in _IO_TRANSFORMS:
            continue
        if name == "Orientation":
            spec["orientation"] = str(args.get("axcodes") or "RAS")
        elif name == "Spacing":
            pix = args.get("pixdim")
            spec["spacing"] = [float(p) for p in (pix if isinstance(pix, (list, tuple)) else [pix] * 3)]
        elif name == "ScaleIntensityRange":
            if float(args.get("b_min", 0) or 0) != 0.0 or float(args.get("b_max", 1)) != 1.0 or not args.get("clip", False):
                raise InputError(bundle.file, f"{tid}: ScaleIntensityRange is understood only to [0, 1] with clip=True "
                                              f"(got b_min={args.get('b_min')}, b_max={args.get('b_max')}, clip={args.get('clip', False)})")
            spec["normalize"], spec["ct_window"] = "ct", [float(args["a_min"]), float(args["a_max"])]
        elif name == "NormalizeIntensity":
            if args.get("subtrahend") is not None or args.get("divisor") is not None or not args.get("channel_wise", False):
                raise InputError(bundle.file, f"{tid}: NormalizeIntensity is understood only per channel "
                                              "(channel_wise=True) without a fixed subtrahend/divisor")
            spec["normalize"] = "brain_mri" if args.get("nonzero", False) else "zscore"
        elif name == "ScaleIntensityRangePercentiles":
            if (float(args.get("lower", -1)), float(args.get("upper", -1)), float(args.get("b_min", 0) or 0),
                    float(args.get("b_max", 1)), bool(args.get("clip", False))) != (0.5, 99.5, 0.0, 1.0, True):
                raise InputError(bundle.file, f"{tid}: ScaleIntensityRangePercentiles is understood only as "
                                              "lower=0.5, upper=99.5 to [0, 1] with clip=True")
            spec["normalize"] = "minmax"
        elif name == "CropForeground":
            spec["crop_foreground"] = True
        else:
            raise InputError(bundle.file, f"{tid}: preprocessing transform {name} is not understood (understood: "
                                          "Orientation, Spacing, ScaleIntensityRange, NormalizeIntensity, "
                                          "ScaleIntensityRangePercentiles, CropForeground and the loading transforms); "
                                          "give the preprocessing in --model-config instead")
    return spec


def _inference_from(bundle: _Bundle) -> dict[str, Any]:
    if not bundle.has("inferer"):
        return {}
    raw = bundle.parser["inferer"]
    name = _base_name(raw.get("_target_", "")) if isinstance(raw, Mapping) else ""
    if name != "SlidingWindowInferer":
        raise InputError(bundle.file, f"inferer: {name or raw!r} is not understood (only SlidingWindowInferer); "
                                      "give inference.roi_size in --model-config instead")
    args = {k: bundle.value(f"inferer::{k}") for k in raw if not str(k).startswith("_")}
    out: dict[str, Any] = {"roi_size": [int(r) for r in args["roi_size"]]}
    if "sw_batch_size" in args:
        out["sw_batch_size"] = int(args["sw_batch_size"])
    if "overlap" in args:
        out["overlap"] = float(args["overlap"])
    mode = str(args.get("mode", "constant"))
    if mode not in ("constant", "gaussian"):
        raise InputError(bundle.file, f"inferer::mode {mode!r} is not understood (constant or gaussian)")
    out["mode"] = mode
    return out


def _postprocessing_sigmoid(bundle: _Bundle) -> bool:
    """Whether the bundle's postprocessing applies a sigmoid (softmax / argmax are medcnn's default)."""
    if not bundle.has("postprocessing"):
        return False
    sigmoid = False
    for _tid, name, args in bundle.transforms("postprocessing", only=frozenset({"Activations"})):
        if name == "Activations":
            sigmoid = bool(args.get("sigmoid", False))
        elif name not in _POST_IGNORED and name != "AsDiscrete":
            logger.warning("%s: postprocessing transform %s is not applied by medcnn", bundle.file, name)
    return sigmoid


def _metadata(folder: Path) -> dict[str, Any]:
    """Label names and the input channel count from ``configs/metadata.json``, where it says them."""
    f = folder / "configs" / "metadata.json"
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
        fmt = meta.get("network_data_format", {})
        found: dict[str, Any] = {}
        channels = (fmt.get("inputs", {}).get("image") or {}).get("num_channels")
        if isinstance(channels, int):
            found["preprocess"] = {"in_channels": channels}
        chdef = (fmt.get("outputs", {}).get("pred") or {}).get("channel_def") or {}
        names = {str(k): str(v) for k, v in chdef.items() if str(k) != "0"}
        if names:
            found["labels"] = {"names": names}
        return found
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        logger.warning("%s: metadata not used (%s)", f, exc)
        return {}


def load_bundle(folder: str | Path, config: str | Path | Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any], Path]:
    """Build a MONAI bundle's network and load its weights.

    Args:
        folder: the bundle folder (``configs/inference.*``, ``models/model.pt``).
        config: the model YAML (path or mapping); its sections replace what the bundle says.

    Returns:
        ``(network, config, weights file)``.

    Raises:
        InputError: no weights, a refused expression or component, a transform or inferer medcnn does not
            understand, weights that do not fit the network.
        ConfigError: invalid model config, or no window size anywhere.
    """
    folder = Path(folder)
    cfg_file = bundle_config_file(folder)
    if cfg_file is None:
        raise InputError(folder, f"not a MONAI bundle (no configs/{' or configs/'.join(CONFIG_NAMES)})")
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        extra = " (a TorchScript model.ts is not loaded; export the state dict)" if (folder / "models" / "model.ts").is_file() else ""
        raise InputError(folder, f"bundle has no models/model.pt{extra}")
    given = read_model_config(config)
    bundle = _Bundle(folder, cfg_file)
    if not bundle.has("network_def"):
        raise InputError(cfg_file, "no network_def in the bundle config")
    bundle.check("network_def")
    try:
        net = bundle.parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # MONAI wraps any constructor failure in its own RuntimeError chain
        raise InputError(cfg_file, f"network_def could not be built ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(net, nn.Module):
        raise InputError(cfg_file, f"network_def builds a {type(net).__name__}, not a torch network")
    load_weights(net, read_state_dict(weights), weights, f"the bundle's {type(net).__name__}")
    found = _metadata(folder)
    if "preprocess" not in given:
        found["preprocess"] = {**found.get("preprocess", {}), **_preprocess_from(bundle)}
    if "inference" not in given:
        found["inference"] = _inference_from(bundle)
    if _postprocessing_sigmoid(bundle) and not (given.get("labels") or {}).get("regions"):
        raise ConfigError(f"{cfg_file}: the bundle's outputs are sigmoids; name the region each output channel is "
                          "(labels.regions in --model-config) to run it")
    model = {"name": f"monai-bundle:{type(net).__name__}", "kwargs": {}, "format": "monai-bundle", "bundle": str(folder)}
    cfg = model_config("segmentation", model, found, given)
    logger.debug("loaded MONAI bundle %s (%s)", folder, type(net).__name__)
    return net, cfg, weights
