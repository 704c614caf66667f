"""``medcnn.load_model``: a trained network plus everything needed to apply it correctly.

``model.predict(img)`` takes an image from :func:`medcnn.load` on *any* grid, puts it on the
model's grid (orientation, spacing), applies the training preprocessing, runs sliding-window
inference (optionally mirrored), post-processes, and returns the result on ``img``'s own grid, so
``medcnn.save(pred, path, like=img)`` lands exactly on the input file.

Classification models: ``model.predict_proba(img)`` gives the ``(K,)`` class probabilities with
the same preprocessing (model grid, crop, normalisation, fixed size), and
``model.saliency(img)`` a Grad-CAM or occlusion map on ``img``'s own grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from medcnn.device import resolve_device
from medcnn.engine.checkpoint import BUNDLED, bundled_path, load_checkpoint, network_on_meta, sha256, state_bytes, state_mismatch
from medcnn.errors import ConfigError, InputError
from medcnn.io import geometry
from medcnn.io.api import meta_without_affine, resample_image, target_grid
from medcnn.io.memory import check_memory, over_limit
from medcnn.models import create_model
from medcnn.preprocessing import prepare, restore_to_box, uncrop

logger = logging.getLogger(__name__)

#: up to this many output channels, probabilities are resampled to the input grid (else labels, nearest)
MAX_LINEAR_CHANNELS = 8
#: an image smaller than this along any axis of the model's grid is refused (not a real scan)
MIN_VOXELS_PER_AXIS = 4
def network_from_checkpoint(ck: dict[str, Any], path: str | Path) -> nn.Module:
    """The network a medcnn checkpoint describes, with its weights (fp16 bundles cast back to float32).

    Raises:
        InputError: an unknown network or arguments, weights that do not fit the network, or a network
            larger than the memory limit (checked on the meta device before any allocation), naming ``path``.
    """
    name, kwargs = ck["model"]["name"], ck["model"]["kwargs"]
    try:
        shapes = network_on_meta(name, kwargs)
    except ConfigError as exc:
        raise InputError(path, f"describes a network medcnn cannot build ({exc})"[:400]) from None
    if shapes is not None:
        problem = state_mismatch(shapes, ck["state_dict"])
        if problem:
            raise InputError(path, f"weights do not fit the {name} network it describes ({problem})")
        too_big = over_limit(state_bytes({k: v.float() if v.is_floating_point() else v for k, v in shapes.items()}))
        if too_big:
            raise InputError(path, f"its {name} network {too_big}")
    try:
        net = create_model(name, **kwargs)
    except ConfigError as exc:
        raise InputError(path, f"describes a network medcnn cannot build ({exc})"[:400]) from None
    except RuntimeError as exc:  # a network that cannot be sized on the meta device, too large to allocate
        raise InputError(path, f"cannot build its {name} network ({str(exc).strip()[:160]})") from None
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in ck["state_dict"].items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit the {ck['model']['name']} network it describes ({str(exc)[:200]})") from None
    return net


class Model:
    """A trained medcnn model.

    Attributes:
        network: the ``nn.Module`` (eval mode).
        config: dict with ``task``, ``model``, ``preprocess``, ``inference``, ``labels``, ``metrics``.
        path: checkpoint file.
        sha256: checkpoint checksum (for provenance).
        device: where the network runs.
    """

    def __init__(self, network: nn.Module, config: dict[str, Any], path: Path | None = None, device: torch.device | None = None):
        self.network = network.eval()
        self.config = config
        self.path = path
        self.sha256 = sha256(path) if path is not None else ""
        self.device = device or torch.device("cpu")

    def provenance(self) -> dict[str, Any]:
        """What ``run.json`` records of this model: checkpoint path and sha256, network, preprocessing,
        inference settings and the metrics stored at export."""
        return {"path": str(self.path), "sha256": self.sha256, "network": self.config["model"],
                "preprocess": self.config["preprocess"], "inference": self.config["inference"],
                "metrics": self.config.get("metrics", {})}

    @property
    def task(self) -> str:
        return self.config["task"]

    def to(self, device: str | torch.device) -> Model:
        """Move the network to ``device`` (returns self)."""
        self.device = resolve_device(device)
        self.network.to(self.device)
        return self

    def model_grid(self, img: MetaTensor) -> MetaTensor:
        """``img`` resampled to the model's orientation and spacing (``(C, *spatial)``)."""
        spec = self.config["preprocess"]
        sp = spec.get("spacing")
        orient = spec.get("orientation") if img.ndim == 4 else None
        affine = img.affine.detach().cpu().numpy().astype(np.float64)
        _, shape = target_grid(affine, tuple(img.shape[1:]), sp, orient)
        # a coarse image (100 mm voxels) grows by orders of magnitude on a 1-2 mm model grid
        check_memory(self._source(img), (img.shape[0], *shape), 4, what="image resampled to the model's grid")
        grid = resample_image(img, spacing=sp, orientation=orient)
        if min(grid.shape[1:]) < MIN_VOXELS_PER_AXIS:  # a 1-voxel "volume" or a single slice given to a 3D model
            raise InputError(getattr(img, "meta", {}).get("filename_or_obj"),
                             f"image too small for this model: {tuple(img.shape[1:])} voxels, {tuple(grid.shape[1:])} on the "
                             f"model's grid; need at least {MIN_VOXELS_PER_AXIS} along every axis (a 2D image or a single slice?)")
        return grid

    def _source(self, img: torch.Tensor) -> str | None:
        """The file ``img`` came from (a MetaTensor from :func:`medcnn.load`), else the checkpoint, for messages."""
        name = getattr(img, "meta", {}).get("filename_or_obj") if isinstance(img, MetaTensor) else None
        return name or (str(self.path) if self.path is not None else None)

    def _out_channels(self) -> int:
        """Number of network outputs, from the checkpoint (for memory estimates before running it)."""
        kwargs = self.config["model"].get("kwargs") or {}
        labels = self.config.get("labels") or {}
        for n in (kwargs.get("out_channels"), len(labels.get("channels") or []), len(labels.get("regions") or {}),
                  len(labels.get("classes") or [])):
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                return n
        return 1

    def _check_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """``outputs`` if finite, else an :class:`InputError` naming the checkpoint: NaN/Inf must never become a
        label or a probability reported as ok."""
        if not bool(torch.isfinite(outputs).all()):
            raise InputError(self.path, "the network gave NaN or Inf outputs for this image (broken or overflowing "
                                        "weights, or an input far outside what it was trained on); no result")
        return outputs

    def _check_channels(self, img: torch.Tensor) -> None:
        want = self.config["preprocess"].get("in_channels")
        if want is not None and img.shape[0] != int(want):
            names = self.config["preprocess"].get("channel_names") or []
            raise InputError(getattr(img, "meta", {}).get("filename_or_obj"),
                             f"model expects {want} channel(s) ({', '.join(names)}), got {img.shape[0]}")

    def _predictor(self) -> Callable[[torch.Tensor], Any]:
        """The network, wrapped in mirror TTA over ``inference.tta_axes`` when ``inference.tta`` is on."""
        from medcnn.inference import mirror_predictor

        inf = self.config["inference"]
        return mirror_predictor(self.network, axes=inf.get("tta_axes")) if inf.get("tta") else self.network

    @torch.no_grad()
    def logits(self, x: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Network output for one preprocessed image ``x (C, *spatial)`` -> ``(K, *spatial)`` float32 (sliding window)."""
        from medcnn.inference import sliding_window_inference

        inf = self.config["inference"]
        # the output and its weight map, each (K, *spatial) float32 over the whole grid
        check_memory(self._source(x), (self._out_channels() + 1, *x.shape[1:]), 4, what="sliding-window output")
        out = sliding_window_inference(x[None].to(self.device), list(inf["roi_size"]), int(inf["sw_batch_size"]), self._predictor(),
                                       overlap=float(inf["overlap"]), mode=inf["mode"], progress=progress,
                                       precision=inf.get("precision", "auto"))
        return self._check_outputs(out[0].float().cpu())

    @torch.no_grad()
    def predict(self, img: MetaTensor, progress: bool = False, probabilities: bool = False) -> MetaTensor:
        """Segment ``img``; the label map comes back on ``img``'s own grid.

        Args:
            img: ``MetaTensor (C, *spatial)`` from :func:`medcnn.load` (any orientation/spacing).
            progress: show a progress bar over windows.
            probabilities: return the per-class (softmax) or per-region (sigmoid) probabilities
                instead of labels — e.g. for overlapping structures such as lungs and heart.

        Returns:
            ``MetaTensor (1, *spatial)`` int64 labels (for region models, BraTS-style labels
            rebuilt from the nested regions), with ``img``'s affine and meta; with
            ``probabilities=True`` a float32 ``MetaTensor (K, *spatial)`` in the order of the
            model's classes or ``labels.regions``.

        Raises:
            InputError: wrong number of channels or an all-zero image.
        """
        if self.task != "segmentation":
            raise TypeError(f"predict() segments; this is a {self.task} model: use predict_proba()")
        self._check_channels(img)
        grid = self.model_grid(img)
        spec = self.config["preprocess"]
        x, info = prepare(grid, spec)
        probs = restore_to_box(self._probabilities(self.logits(x, progress)), info)
        if probs.shape[0] <= MAX_LINEAR_CHANNELS:  # the probabilities on the model's grid, then on the input's
            for shape, what in ((info["shape"], "model-grid probabilities"), (tuple(img.shape[1:]), "probabilities on the input grid")):
                check_memory(self._source(img), (probs.shape[0], *shape), 4, what=what)
        a_img = img.affine.detach().cpu().numpy().astype(np.float64)
        a_grid = grid.affine.detach().cpu().numpy().astype(np.float64)
        out_to_in = np.linalg.inv(a_grid) @ a_img
        region_based = bool(self.config["labels"].get("region_based"))
        if probs.shape[0] <= MAX_LINEAR_CHANNELS:
            # nnU-Net style: bring probabilities (not labels) back to the input grid, decide there
            full = uncrop(probs, info["box"], info["shape"], fill=0.0)
            if not region_based:
                outside = torch.ones(info["shape"], dtype=torch.bool)
                outside[tuple(slice(a, b) for a, b in info["box"])] = False
                full[0][outside] = 1.0
            back = geometry.resample(full, out_to_in, tuple(img.shape[1:]), mode="linear")
            if probabilities:
                return MetaTensor(back.float(), affine=img.affine.clone(), meta=meta_without_affine(img))
            labels = self._decide(back)
        elif probabilities:
            raise ValueError(f"probabilities=True is limited to models with at most {MAX_LINEAR_CHANNELS} outputs")
        else:  # many classes: resample labels (nearest) to bound memory
            labels_grid = uncrop(self._decide(probs)[None], info["box"], info["shape"])[0]
            labels = geometry.resample(labels_grid[None], out_to_in, tuple(img.shape[1:]), mode="nearest")[0]
        labels = self._postprocess(labels, a_img)
        return MetaTensor(labels[None], affine=img.affine.clone(), meta=meta_without_affine(img))

    # -- classification --------------------------------------------------------------------

    @property
    def decision_threshold(self) -> float:
        """Probability at which a binary classifier calls the positive class: ``inference.threshold``
        or ``labels.threshold`` from the checkpoint, else 0.5."""
        for section in ("inference", "labels"):
            value = (self.config.get(section) or {}).get("threshold")
            if value is not None:
                return float(value)
        return 0.5

    def _require_classifier(self, what: str) -> None:
        if self.task != "classification":
            raise TypeError(f"{what}() is for classification models; this is a {self.task} model: use predict()")

    def prepare_input(self, img: MetaTensor) -> tuple[torch.Tensor, dict[str, Any], MetaTensor]:
        """The network input for ``img``: model grid, crop, normalisation, fixed size.

        Args:
            img: ``MetaTensor (C, *spatial)`` from :func:`medcnn.load` (any orientation/spacing).

        Returns:
            ``(x, info, grid)``: ``x (C, *size)`` float32 on CPU, the :func:`prepare` info (``box``,
            ``shape``, ``pads``) and ``grid``, the image resampled to the model grid.

        Raises:
            InputError: wrong number of channels or an all-zero image.
        """
        self._check_channels(img)
        grid = self.model_grid(img)
        x, info = prepare(grid, self.config["preprocess"])
        if not torch.isfinite(x).all():
            raise InputError(img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None,
                             "image contains NaN or Inf after preprocessing")
        return x, info, grid

    def _class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., K)`` logits -> probabilities: sigmoid per class for multi-label models, else softmax, of the
        logits over the checkpoint's ``calibration`` temperature when it has one (:mod:`medcnn.inference.calibration`)."""
        from medcnn.inference.calibration import scale_logits, temperature_of

        logits = scale_logits(logits.float(), temperature_of(self.config))
        if self.config["labels"].get("multilabel"):
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def predict_logits(self, img: MetaTensor) -> torch.Tensor:
        """Uncalibrated network outputs of one image (classification models), as :meth:`predict_proba` sees them.

        Args:
            img: ``MetaTensor (C, *spatial)`` from :func:`medcnn.load` (any orientation/spacing).

        Returns:
            ``(K,)`` float32 logits on CPU (mirror TTA averaged when the checkpoint asks for it).

        Raises:
            TypeError: a segmentation model.
            InputError: wrong number of channels, an all-zero image, NaN/Inf.
        """
        self._require_classifier("predict_logits")
        x, _, _ = self.prepare_input(img)
        logits = self._predictor()(x[None].to(self.device))
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return self._check_outputs(logits[0].float()).cpu()

    @torch.no_grad()
    def predict_proba(self, img: MetaTensor) -> torch.Tensor:
        """Class probabilities of one image (classification models).

        Args:
            img: ``MetaTensor (C, *spatial)`` from :func:`medcnn.load` (any orientation/spacing);
                it is put on the model grid and preprocessed exactly as in training.

        Returns:
            ``(K,)`` float32 on CPU, in the order of ``config["labels"]["classes"]`` (softmax, or
            independent sigmoids when ``config["labels"]["multilabel"]`` is true), of the logits over
            the checkpoint's ``calibration.temperature`` when it has one.

        Raises:
            TypeError: a segmentation model.
            InputError: wrong number of channels, an all-zero image, NaN/Inf.
        """
        self._require_classifier("predict_proba")
        return self._class_probabilities(self.predict_logits(img))

    def saliency(self, img: MetaTensor, class_index: int | None = None, method: str = "gradcam",
                 **kwargs: Any) -> MetaTensor:
        """Saliency map of one class, on ``img``'s own grid (classification models).

        The map is computed on the network input (model grid, crop, fixed size), pasted back into
        the model grid (zero outside the crop) and resampled linearly onto ``img``'s grid, so
        ``medcnn.save(heat, path, like=img)`` overlays the input file.

        Args:
            img: ``MetaTensor (C, *spatial)`` from :func:`medcnn.load`.
            class_index: class to explain (default: the predicted class; for multi-label models the
                most probable finding).
            method: ``"gradcam"`` (:func:`medcnn.explain.grad_cam`) or ``"occlusion"``
                (:func:`medcnn.explain.occlusion_sensitivity`).
            **kwargs: passed to that function (``target_layer``; ``mask_size``, ``stride``, ``mode``...).

        Returns:
            ``MetaTensor (1, *spatial)`` float32 in [0, 1] with ``img``'s affine and meta.

        Raises:
            TypeError: a segmentation model.
            ValueError: unknown method or class index.
            InputError: as :meth:`predict_proba`.
        """
        from medcnn.explain import grad_cam, occlusion_sensitivity

        self._require_classifier("saliency")
        if method not in ("gradcam", "occlusion"):
            raise ValueError(f"method must be 'gradcam' or 'occlusion', got {method!r}")
        x, info, grid = self.prepare_input(img)
        xd = x.to(self.device)
        if class_index is None:
            with torch.no_grad():
                out = self.network(xd[None])
            class_index = int((out[0] if isinstance(out, (list, tuple)) else out)[0].argmax())
        if method == "gradcam":
            heat = grad_cam(self.network, xd, class_index, **kwargs)
        else:
            kwargs.setdefault("activation", "sigmoid" if self.config["labels"].get("multilabel") else "softmax")
            heat = occlusion_sensitivity(self.network, xd, class_index, **kwargs)
        heat = restore_to_box(heat[None].float().cpu(), info)
        full = uncrop(heat, info["box"], info["shape"], fill=0.0)
        a_img = img.affine.detach().cpu().numpy().astype(np.float64)
        a_grid = grid.affine.detach().cpu().numpy().astype(np.float64)
        back = geometry.resample(full, np.linalg.inv(a_grid) @ a_img, tuple(img.shape[1:]), mode="linear")
        return MetaTensor(back.clamp(0.0, 1.0), affine=img.affine.clone(), meta=meta_without_affine(img))

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per region (region models) or softmax over classes: ``(K, *spatial)``."""
        if self.config["labels"].get("region_based"):
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=0)

    def _decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(K, *spatial)`` -> int64 labels ``(*spatial)``.

        Region models threshold each region at 0.5; with ``inference.fill_holes`` the holes each region
        mask encloses in 3D are filled first (a necrotic core inside an enhancing rim belongs to the
        tumour core and the whole tumour even where the network hesitates).
        """
        from scipy import ndimage

        from medcnn.inference.postprocess import regions_to_labels

        if self.config["labels"].get("region_based"):
            masks = probs.numpy() > 0.5
            if self.config["inference"].get("fill_holes"):
                masks = np.stack([ndimage.binary_fill_holes(m) for m in masks])
            return torch.as_tensor(regions_to_labels(masks.astype(np.float32), threshold=0.5)).to(torch.int64)
        return probs.argmax(0).to(torch.int64)

    def _postprocess(self, labels: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
        """Small-component removal (``inference.min_component_ml``), then whole regions below
        ``inference.region_min_ml`` fall back to their enclosing label (BraTS: a tiny ET -> NCR)."""
        from medcnn.inference.postprocess import relabel_small_regions, remove_small_components

        inference = self.config["inference"]
        spacing = tuple(geometry.voxel_spacing(affine, labels.ndim))
        min_ml = inference.get("min_component_ml")
        if min_ml:
            fg = remove_small_components(labels.numpy() > 0, min_ml=float(min_ml), spacing=spacing)
            labels = labels * torch.as_tensor(fg, dtype=labels.dtype)
        region_min = inference.get("region_min_ml") or {}
        if region_min:
            labels = relabel_small_regions(labels, region_min, self.config["labels"]["regions"], spacing)
        return labels


def load_model(name_or_path: str | Path = "brain-tumor", device: str | torch.device | None = None, *,
               arch: str | None = None, arch_args: Any = None, config: Any = None) -> Any:
    """Load a bundled model by name, any medcnn checkpoint by path, or others' weights (:mod:`medcnn.foreign`).

    Args:
        name_or_path: a bundled name (``"brain-tumor"``, ...), a ``.pt`` file from ``medcnn train``, a MONAI
            bundle folder, an nnU-Net v2 trained model folder, or (with ``arch``) a plain state-dict file.
        device: ``None``/``"cpu"`` (default), ``"auto"``, ``"cuda"``, ``"cuda:1"``...
        arch: a :func:`medcnn.models.list_models` name: ``name_or_path`` is a plain state dict for it.
        arch_args: that network's arguments (dict, JSON text or ``key=value`` items).
        config: model settings for foreign weights (a YAML path or a mapping): ``preprocess``, ``inference``,
            ``labels`` (state dicts, MONAI bundles); nnU-Net options (``folds``, ``tile_step``, ``label_map``...).

    Returns:
        A :class:`Model` (an :class:`medcnn.foreign.nnunet.NnUNetModel` for an nnU-Net folder).

    Raises:
        InputError: unknown name, missing/corrupt/unsafe checkpoint, foreign files medcnn cannot run.
        ConfigError: invalid ``arch``, ``arch_args`` or ``config``.
    """
    from medcnn import foreign

    kind = foreign.kind_of(name_or_path, arch)
    if kind is not None:
        return _load_foreign(kind, Path(name_or_path), device, arch=arch, arch_args=arch_args, config=config)
    if config is not None or arch_args is not None:
        raise ConfigError(f"{name_or_path}: --arch-args / --model-config are for foreign weights (a state dict with "
                          "--arch, a MONAI bundle or an nnU-Net folder), not for medcnn checkpoints")
    p = Path(name_or_path)
    if p.is_file():
        path = p
    else:
        path = bundled_path(str(name_or_path))
        if path is None:
            avail = [n for n in BUNDLED if bundled_path(n) is not None]
            raise InputError(name_or_path, f"no such checkpoint file or bundled model; bundled: {', '.join(avail) or 'none'}")
    ck = load_checkpoint(path, map_location="cpu")
    net = network_from_checkpoint(ck, path)
    config = {k: ck[k] for k in ("task", "model", "preprocess", "inference", "labels", "metrics", "ood") if k in ck}
    _check_calibration(ck, path, config)
    config["training"] = {k: v for k, v in ck.get("training", {}).items() if k != "history"}
    dev = resolve_device(device)
    model = Model(net.to(dev), config, path, dev)
    logger.debug("loaded %s (%s) from %s", ck["model"]["name"], config["task"], path)
    return model


def _check_calibration(ck: dict[str, Any], path: Path, config: dict[str, Any]) -> None:
    """Put a valid ``calibration`` section (temperature scaling) into ``config``; refuse a bad one at load.

    Raises:
        InputError: a temperature that is not a finite number > 0, on a segmentation model, naming ``path``.
    """
    from medcnn.inference.calibration import CALIBRATION_KEY, check_section

    labels = ck.get("labels") or {}
    sec = check_section(ck.get(CALIBRATION_KEY), path, len(labels.get("classes") or []) or None,
                        bool(labels.get("multilabel")))
    if sec is None:
        return
    if ck.get("task") != "classification":
        raise InputError(path, f"has a calibration section, but temperature scaling is for classifiers (task: {ck.get('task')})")
    config[CALIBRATION_KEY] = sec


def _load_foreign(kind: str, path: Path, device: str | torch.device | None, *, arch: str | None, arch_args: Any,
                  config: Any) -> Any:
    """Others' weights as a model: a state dict with a registry architecture, a MONAI bundle, an nnU-Net folder."""
    from medcnn.foreign import read_model_config

    dev = resolve_device(device)
    if kind == "nnunet":
        from medcnn.foreign.nnunet import load_nnunet_model

        opts = _nnunet_options(config)
        return load_nnunet_model(path, config=opts).to(dev)
    if kind == "monai-bundle":
        from medcnn.foreign.monai_bundle import load_bundle

        net, cfg, weights = load_bundle(path, config=read_model_config(config))
    else:
        from medcnn.foreign.state_dict import load_state_dict_model

        net, cfg = load_state_dict_model(path, arch, arch_args, config=read_model_config(config))
        weights = path
    return Model(net.to(dev), cfg, weights, dev)


def _nnunet_options(config: Any) -> dict[str, Any]:
    """The nnU-Net options as given (a YAML path or a mapping), without the medcnn model schema."""
    from medcnn.engine.config import read_yaml

    if config is None:
        return {}
    return read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
