"""Saliency maps for classification networks: 3D/2D Grad-CAM and occlusion sensitivity (MONAI).

Both functions take one preprocessed input ``x (C, *spatial)`` (what the network sees), explain
one class and return a heat map ``(*spatial)`` in [0, 1] on that same grid; 1 marks the region
that most supports the class. :meth:`medcnn.predictor.Model.saliency` wraps them and brings the
map back onto the grid of the image file.

The network passed in is never modified: Grad-CAM registers hooks on (and flips ``inplace``
activations of) a private copy, because MONAI's hooks cannot be removed afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Grad-CAM layer of known architectures (class name -> module name; a callable picks it from the net)
_KNOWN_LAYERS = {
    "DenseNet121": "class_layers.relu",  # MONAI DenseNet: final norm + ReLU, right before global pooling
    "DenseNetWithMaps": "class_layers.relu",  # medcnn.models.maps: the same layer feeds its map head
    "DenseNet": "class_layers.relu",
    "DenseNet169": "class_layers.relu",
    "DenseNet201": "class_layers.relu",
    "DenseNet264": "class_layers.relu",
    "ResNet": "layer4",  # MONAI ResNet: last residual stage, then avgpool + fc
}


@contextlib.contextmanager
def _quiet_monai():
    """Silence MONAI's torch indexing deprecation warnings (not the user's concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        yield


def _normalise01(h: torch.Tensor) -> torch.Tensor:
    """Scale each map ``(B, 1, *spatial)`` to [0, 1] by its min and max (a constant map becomes 0)."""
    flat = h.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (h.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (h.ndim - 1)))
    span = hi - lo
    return torch.where(span > 1e-12, (h - lo) / span.clamp_min(1e-12), torch.zeros_like(h))


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        raise ValueError(f"x must be a (C, H, W) or (C, D, H, W) tensor, got {tuple(getattr(x, 'shape', ()))}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")


def _spatial_outputs(network: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Named modules whose output is a ``(B, C, *spatial)`` map with some spatial extent, in completion order."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def hook(name: str):
        def _h(_m: nn.Module, _i, out) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == x.ndim + 1 and any(s > 1 for s in out.shape[2:]):
                seen.append((name, tuple(out.shape)))
        return _h

    for name, mod in network.named_modules():
        if name:
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(x[None])
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    return seen


def default_target_layer(network: nn.Module, x: torch.Tensor | None = None) -> str:
    """Name of the layer Grad-CAM looks at: the last convolutional block before global pooling.

    Known architectures (MONAI DenseNet: ``class_layers.relu``, ResNet: ``layer4``, medcnn's
    compact CNN: the last activation before the last pooling, or its ``gate`` when masked) have a
    fixed choice. Given ``x``, one forward pass checks that this layer still has a spatial extent
    for that input size; otherwise (small inputs, or an unknown architecture) the last module whose
    output is a spatial map (``(B, C, *spatial)`` with a spatial size above 1) is used.

    Args:
        network: a classification network ``(B, C, *spatial) -> (B, K)``.
        x: an example input ``(C, *spatial)`` (needed for unknown architectures only).

    Returns:
        A name from ``network.named_modules()``.

    Raises:
        ValueError: no such layer can be found (or ``x`` is missing for an unknown architecture).
    """
    from medcnn.models.registry import CompactCNN

    if isinstance(network, CompactCNN):  # always spatial: its last activation precedes the last pooling
        if network.mask_threshold is not None:
            return "gate"  # the last activation, zeroed off the body
        acts = [n for n, m in network.features.named_children() if isinstance(m, nn.LeakyReLU)]
        if acts:
            return f"features.{acts[-1]}"  # last activation of the last stage, before its pooling
    name = _KNOWN_LAYERS.get(type(network).__name__)
    if name is not None and name not in dict(network.named_modules()):
        name = None
    if x is None:
        if name is None:
            raise ValueError(f"cannot choose a Grad-CAM layer for {type(network).__name__} without an example input")
        return name
    found = _spatial_outputs(network, x)
    if name is not None and any(n == name for n, _ in found):
        return name
    if not found:
        raise ValueError(f"{type(network).__name__} has no layer with a spatial output for Grad-CAM; pass target_layer")
    if name is not None:  # input too small: the usual layer is pooled down to one voxel
        logger.debug("%s output is a single voxel for input %s; using %s", name, tuple(x.shape), found[-1][0])
    return found[-1][0]


def grad_cam(network: nn.Module, x: torch.Tensor, class_index: int, target_layer: str | None = None) -> torch.Tensor:
    """Grad-CAM heat map of one class (Selvaraju et al. 2017) with :class:`monai.visualize.GradCAM`.

    Args:
        network: classification network ``(B, C, *spatial) -> (B, K)`` logits (left unchanged).
        x: one preprocessed input ``(C, H, W)`` or ``(C, D, H, W)``, on the network's device.
        class_index: the class to explain (``0 <= class_index < K``).
        target_layer: module name to take activations and gradients from (default:
            :func:`default_target_layer`).

    Returns:
        ``(*spatial)`` float32 heat map on CPU, upsampled (linearly) to ``x``'s spatial size and
        scaled to [0, 1] (all zero when no region supports the class).

    Raises:
        ValueError: bad input shape, NaN/Inf input, unknown layer or class index.
    """
    from monai.visualize import GradCAM

    _check_input(x)
    layer = target_layer or default_target_layer(network, x)
    net = copy.deepcopy(network).float().eval()  # MONAI's hooks are permanent: keep them off the caller's network
    if layer not in dict(net.named_modules()):
        raise ValueError(f"no layer {layer!r} in {type(network).__name__}")
    for p in net.parameters():
        p.requires_grad_(True)
    cam = GradCAM(nn_module=net, target_layers=layer, postprocessing=_normalise01)
    xb = x[None].float()
    k = _check_class(net, xb, class_index)
    try:
        with torch.enable_grad(), _quiet_monai():
            heat = cam(xb, class_idx=k)
    finally:
        # MONAI keeps the activations, gradients and score (with their autograd graph) on its hook wrapper,
        # and the graph holds the hooks that point back at the wrapper: a cycle through C++ that Python's
        # garbage collector cannot free, so every call kept its network copy alive (+50 MB per radiograph
        # in `medcnn predict chest-xray`). Dropping the tensors breaks the cycle.
        hooks = cam.nn_module
        hooks.activations.clear()
        hooks.gradients.clear()
        hooks.score = None
    return heat[0, 0].detach().float().cpu()


def _check_class(net: nn.Module, xb: torch.Tensor, class_index: int) -> int:
    with torch.no_grad():
        n_classes = int(net(xb).shape[1])
    k = int(class_index)
    if not 0 <= k < n_classes:
        raise ValueError(f"class_index {class_index} out of range for a network with {n_classes} outputs")
    return k


def occlusion_sensitivity(
    network: nn.Module,
    x: torch.Tensor,
    class_index: int,
    mask_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    *,
    mode: str | float = "gaussian",
    activation: str = "softmax",
    n_batch: int = 8,
) -> torch.Tensor:
    """Occlusion sensitivity of one class with :class:`monai.visualize.OcclusionSensitivity`.

    Each patch of ``mask_size`` voxels (moved by ``stride``) is occluded in turn; the drop in the
    class probability it causes is the importance of that region. The network runs once per
    patch position, so the defaults are coarse (a third of each axis, half-overlapping: 5
    positions per axis, 125 forward passes in 3D).

    Args:
        network: classification network ``(B, C, *spatial) -> (B, K)`` logits.
        x: one preprocessed input ``(C, H, W)`` or ``(C, D, H, W)``, on the network's device.
        class_index: the class to explain.
        mask_size: occluded patch size per axis (default: a third of each axis).
        stride: step between patches per axis (default: half the mask size); must not exceed
            ``mask_size``.
        mode: what replaces an occluded patch: ``"gaussian"`` (fades it out towards the centre),
            ``"mean_patch"``, ``"mean_img"`` or a constant value.
        activation: ``"softmax"`` (mutually exclusive classes) or ``"sigmoid"`` (multi-label).
        n_batch: occluded copies per forward pass.

    Returns:
        ``(*spatial)`` float32 heat map on CPU in [0, 1]: the probability drop, negatives (regions
        whose occlusion raises the probability) set to 0, scaled by the largest drop.

    Raises:
        ValueError: bad shapes, sizes, class index or activation.
    """
    from monai.visualize import OcclusionSensitivity

    _check_input(x)
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    spatial = tuple(int(s) for s in x.shape[1:])
    sd = len(spatial)
    mask = _per_axis(mask_size, sd, "mask_size") if mask_size is not None else tuple(max(1, math.ceil(s / 3)) for s in spatial)
    mask = tuple(min(m, s) for m, s in zip(mask, spatial))
    step = _per_axis(stride, sd, "stride") if stride is not None else tuple(max(1, m // 2) for m in mask)
    if any(st > m for st, m in zip(step, mask)):
        raise ValueError(f"stride {step} must not exceed mask_size {mask} (regions would be skipped)")
    overlap = [1.0 - st / m for st, m in zip(step, mask)]
    from monai.networks.utils import eval_mode

    xb = x[None].float()
    act = (lambda o: torch.softmax(o.float(), 1)) if activation == "softmax" else (lambda o: torch.sigmoid(o.float()))
    occ = OcclusionSensitivity(nn_module=network, mask_size=mask, n_batch=int(n_batch), verbose=False, mode=mode,
                               overlap=overlap, activate=act)
    with eval_mode(network), torch.no_grad(), _quiet_monai():  # restores the caller's train/eval mode
        k = _check_class(network, xb, class_index)
        base = act(network(xb))[0, k]
        occ_map, _ = occ(xb)
    prob = occ_map[0, k].float() if occ_map.ndim == sd + 2 else occ_map[0, 0, ..., k].float()
    drop = (base - prob).clamp_min(0.0)
    top = float(drop.max())
    heat = drop / top if top > 1e-12 else torch.zeros_like(drop)
    return heat.detach().cpu().to(torch.float32).as_subclass(torch.Tensor)


def _per_axis(v: int | Sequence[int], sd: int, name: str) -> tuple[int, ...]:
    vals = [int(v)] * sd if isinstance(v, (int, float)) else [int(a) for a in v]
    if len(vals) != sd or any(a < 1 for a in vals):
        raise ValueError(f"{name} must be a positive integer or {sd} positive integers, got {v!r}")
    return tuple(vals)
