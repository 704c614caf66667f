"""MedSAM / SAM checkpoints: loading, MedSAM's reference preprocessing and inference.

MedSAM (Ma et al., Nature Communications 2024) is SAM ViT-B fine-tuned on medical images with
box prompts. Its official inference (``MedSAM_Inference.py``) is reproduced here step by step:

1. grey images are repeated to 3 channels;
2. the image is resized to 1024x1024 with scikit-image (``order=3``, ``preserve_range=True``,
   ``anti_aliasing=True``) and cast to ``uint8`` (MedSAM's inputs are 8-bit images);
3. min-max normalised to [0, 1] (the range clipped at 1e-8), no ImageNet normalisation;
4. the box ``[x0, y0, x1, y1]`` (x = column, inclusive pixel indices) is scaled to 1024;
5. prompt encoder with the box only; mask decoder with ``multimask_output=False``;
6. sigmoid of the 256x256 low-resolution logits, bilinear upsampling (``align_corners=False``)
   to the image size, threshold 0.5.

Deviations, all documented on the functions: the ``uint8`` cast of step 2 only applies when the
image already holds 8-bit values (integers in [0, 255]), so that CT/MR intensities are not
wrapped around; grey images are resized once instead of three times (same values).

Checkpoints are read with ``torch.load(..., map_location=..., weights_only=True)``: a raw SAM
state_dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``, as the official
``medsam_vit_b.pth``) or a training checkpoint ``{"model": state_dict, ...}``. The encoder size
(ViT-B/L/H or any other) is inferred from the tensor shapes.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcnn.errors import InputError
from medcnn.prompt.modeling import Sam, SamConfig, build_sam

__all__ = [
    "MedSAMBackend", "infer_sam_config", "load_medsam", "medsam_boxes", "medsam_points", "medsam_postprocess",
    "medsam_preprocess",
]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "image_encoder.pos_embed",
    "image_encoder.neck.0.weight",
    "prompt_encoder.mask_downscaling.3.weight",
    "mask_decoder.mask_tokens.weight",
    "mask_decoder.transformer.layers.0.mlp.lin1.weight",
    "mask_decoder.iou_prediction_head.layers.0.weight",
)
# Logit returned for a probability of exactly 0 or 1 (float32 sigmoid saturates).
_PROB_EPS = 1e-12


def _count_indexed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """``1 + max N`` over keys ``prefix + "N." ...`` (0 when none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for key in state_dict if (m := pattern.match(key))]
    return 1 + max(found) if found else 0


def infer_sam_config(state_dict: Mapping[str, torch.Tensor], decoder_num_heads: int = 8) -> SamConfig:
    """Hyper-parameters of the SAM model a state_dict belongs to, from its tensor shapes.

    Args:
        state_dict: a ``segment_anything`` ``Sam`` state_dict.
        decoder_num_heads: heads of the mask decoder's attentions (not visible in the shapes;
            8 in every SAM/MedSAM model).

    Returns:
        the :class:`SamConfig`.

    Raises:
        KeyError: a key needed to infer the sizes is missing (message lists them).
    """
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise KeyError(", ".join(missing))
    patch = state_dict["image_encoder.patch_embed.proj.weight"]  # (E, C, p, p)
    embed_dim, in_chans, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    grid = int(state_dict["image_encoder.pos_embed"].shape[1])  # (1, g, g, E)
    depth = _count_indexed(state_dict, "image_encoder.blocks.")
    rel_sizes = [state_dict.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    head_dim = next((int(r.shape[1]) for r in rel_sizes if r is not None), 64)
    global_len = 2 * grid - 1
    global_idx = tuple(i for i, r in enumerate(rel_sizes) if r is not None and r.shape[0] == global_len)
    window_lens = [int(r.shape[0]) for r in rel_sizes if r is not None and r.shape[0] != global_len]
    window = (window_lens[0] + 1) // 2 if window_lens else 14
    mlp_hidden = int(state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]) if depth else 4 * embed_dim
    return SamConfig(
        img_size=grid * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=max(1, embed_dim // head_dim),
        encoder_global_attn_indexes=global_idx,
        window_size=window,
        mlp_ratio=mlp_hidden / embed_dim,
        prompt_embed_dim=int(state_dict["image_encoder.neck.0.weight"].shape[0]),
        mask_in_chans=int(state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=_count_indexed(state_dict, "mask_decoder.transformer.layers."),
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_dim=int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        num_multimask_outputs=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=_count_indexed(state_dict, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=int(state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
    )


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(list(keys)[:n])
    return shown + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


def _read_state_dict(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` with every failure turned into an :class:`InputError`."""
    if not path.exists():
        raise InputError(path, "no such checkpoint file")
    if not path.is_file():
        raise InputError(path, "is not a file (expected a MedSAM/SAM .pth checkpoint)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            path, f"refused to load: the checkpoint holds pickled Python objects, not only tensors ({first})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable PyTorch checkpoint (corrupt or truncated?): {first}") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(path, f"expected a SAM state_dict (or {{'model': state_dict}}), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(path, f"not a state_dict: non-tensor entries {_few([str(k) for k in bad])}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_medsam(
    path: str | PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    config: SamConfig | None = None,
) -> Sam:
    """Load an official MedSAM (or SAM) checkpoint into medcnn's :class:`Sam`, strictly.

    Args:
        path: ``.pth`` file: a ``Sam`` state_dict or ``{"model": state_dict, ...}``.
        map_location: device the tensors are loaded to (CPU by default).
        config: the model's hyper-parameters; inferred from the tensor shapes when ``None``.

    Returns:
        the model in eval mode on ``map_location``.

    Raises:
        InputError: missing, unreadable, corrupt or pickled-object file, or keys/shapes that do
            not match a SAM model (the message lists a few missing/unexpected keys).
    """
    path = Path(path)
    state = _read_state_dict(path, map_location)
    if config is None:
        try:
            config = infer_sam_config(state)
        except KeyError as exc:
            raise InputError(
                path, f"not a SAM/MedSAM state_dict: missing key(s) {exc.args[0]}; found e.g. {_few(sorted(state))}"
            ) from exc
        except (ValueError, IndexError, ZeroDivisionError) as exc:
            raise InputError(path, f"not a SAM/MedSAM state_dict: inconsistent tensor shapes ({exc})") from exc
    try:
        model = build_sam(config)
    except ValueError as exc:
        raise InputError(path, f"not a SAM/MedSAM state_dict: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise InputError(path, "does not match the SAM/MedSAM layout: " + "; ".join(parts))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise InputError(path, f"tensor shapes do not match the SAM/MedSAM layout: {_few(wrong, 3)}")
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    logger.info(
        "loaded %s: ViT embed %d, depth %d, input %d", path, config.encoder_embed_dim, config.encoder_depth, config.img_size
    )
    return model


def _is_8bit(image: np.ndarray) -> bool:
    """True when every value is an integer in [0, 255] (an 8-bit image, as MedSAM expects)."""
    if image.dtype == np.uint8:
        return True
    if image.size == 0 or image.min() < 0 or image.max() > 255:
        return False
    return bool(np.all(np.floor(image) == image))


def medsam_preprocess(
    image: torch.Tensor | np.ndarray, img_size: int = 1024, *, quantize: bool | None = None
) -> torch.Tensor:
    """MedSAM's image preprocessing.

    Args:
        image: ``(C, H, W)`` with C = 1 (grey) or 3 (RGB), or ``(H, W)`` grey; any real dtype.
        img_size: side of the encoder input (1024 for MedSAM).
        quantize: truncate the resized image to integers in [0, 255] as MedSAM's
            ``.astype(np.uint8)`` does. ``None`` (default): only when the image already holds
            8-bit values (integers in [0, 255]); other intensities (CT HU, MR) are kept as they are.

    Returns:
        ``(1, 3, img_size, img_size)`` float32 in [0, 1].

    Raises:
        ValueError: wrong shape or channel count, or non-finite values.
    """
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) image with C = 1 or 3, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"expected a real-valued image, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the image contains NaN or Inf values")
    if quantize is None:
        quantize = _is_8bit(arr)
    from skimage.transform import resize  # heavy import, only needed here

    # Channels are resized independently (skimage treats the last axis with factor 1), so a grey
    # image is resized once and repeated afterwards.
    chans = [
        resize(c.astype(np.float64), (img_size, img_size), order=3, preserve_range=True, anti_aliasing=True)
        for c in arr
    ]
    out = np.stack(chans if len(chans) == 3 else chans * 3, axis=0)
    if quantize:
        out = np.clip(out, 0, 255).astype(np.uint8)
    lo, hi = out.min(), out.max()
    out = (out - lo) / np.clip(hi - lo, a_min=1e-8, a_max=None)
    return torch.from_numpy(out).float()[None]


def medsam_boxes(boxes: torch.Tensor, image_size: tuple[int, int], img_size: int = 1024) -> torch.Tensor:
    """medcnn boxes -> MedSAM boxes in encoder-input pixels.

    Args:
        boxes: ``(N, 4)`` ``(i0, j0, i1, j1)``: row/column index ranges, max exclusive.
        image_size: ``(H, W)`` of the original image.
        img_size: encoder input side.

    Returns:
        ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` = ``(j0, i0, j1 - 1, i1 - 1) * img_size / (W, H, W, H)``.
    """
    h, w = image_size
    b = boxes.to(torch.float64)
    xyxy = torch.stack([b[:, 1], b[:, 0], b[:, 3] - 1, b[:, 2] - 1], dim=1)
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    return (xyxy / scale * img_size).float()


def medsam_points(points: torch.Tensor, image_size: tuple[int, int], img_size: int = 1024) -> torch.Tensor:
    """``(P, 2)`` points ``(i, j)`` -> ``(P, 2)`` float32 ``(x, y) = (j, i) * img_size / (W, H)``."""
    h, w = image_size
    p = points.to(torch.float64)
    return (torch.stack([p[:, 1] / w, p[:, 0] / h], dim=1) * img_size).float()


def medsam_postprocess(low_res_logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """MedSAM's output step: ``sigmoid`` of ``(N, 1, h, w)`` logits, bilinear to ``(N, H, W)`` probabilities."""
    probs = torch.sigmoid(low_res_logits.float())
    return F.interpolate(probs, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]


class MedSAMBackend:
    """A :class:`Sam` model run with MedSAM's reference procedure (a ``PromptableSegmenter`` backend).

    Args:
        model: the SAM/MedSAM model (see :func:`load_medsam`).
        quantize: see :func:`medsam_preprocess`.
    """

    name = "medsam"
    spatial_dims = 2
    supports_exact_box = True  # accepted; MedSAM reads every box alike
    supports_per_prompt_offsets = False

    def __init__(self, model: Sam, *, quantize: bool | None = None) -> None:
        self.model = model.eval()
        self.quantize = quantize
        self._embedding: torch.Tensor | None = None
        self._size: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_image(self, image: torch.Tensor) -> None:
        """Preprocess and embed one image.

        Args:
            image: ``(C, H, W)`` with C = 1 or 3.
        """
        x = medsam_preprocess(image, self.model.img_size, quantize=self.quantize).to(self.device)
        with torch.inference_mode():
            self._embedding = self.model.embed_image(x)  # (1, 256, 64, 64)
        self._size = (int(image.shape[-2]), int(image.shape[-1]))

    def predict_logits(
        self,
        *,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        exact_box: bool = False,
    ) -> torch.Tensor:
        """Decode prompts on the embedded image.

        Args:
            boxes: ``(N, 4)`` ``(i0, j0, i1, j1)`` max exclusive, or ``None``.
            points: ``(P, 2)`` ``(i, j)`` shared by every box, or ``None``.
            labels: ``(P,)`` 1 foreground / 0 background.
            mask_input: ``(H, W)`` logits on the image grid (a previous prediction), or ``None``.
            exact_box: accepted for the common interface; MedSAM reads every box alike (the
                segmenter keeps the mask inside an exact box).

        Returns:
            ``(N, H, W)`` float32 logits on the image grid (``N`` = 1 without boxes): the logit of
            MedSAM's upsampled probability, so ``logits > 0`` is MedSAM's mask (probability > 0.5).
        """
        if self._embedding is None or self._size is None:
            raise RuntimeError("set_image() must be called before predict")
        size, s, dev = self._size, self.model.img_size, self.device
        n = 1 if boxes is None else boxes.shape[0]
        box_arg = None if boxes is None else medsam_boxes(boxes, size, s).to(dev)
        point_arg = None
        if points is not None and labels is not None:
            coords = medsam_points(points, size, s).to(dev)[None].expand(n, -1, -1)
            point_arg = (coords, labels.to(dev, torch.int64)[None].expand(n, -1))
        mask_arg = None
        if mask_input is not None:
            side = self.model.prompt_encoder.mask_input_size
            m = mask_input.to(dev, torch.float32)[None, None]
            mask_arg = F.interpolate(m, size=side, mode="bilinear", align_corners=False, antialias=True)
            mask_arg = mask_arg.expand(n, -1, -1, -1)
        with torch.inference_mode():
            low_res, _ = self.model.decode(
                self._embedding, points=point_arg, boxes=box_arg, mask_input=mask_arg, multimask_output=False
            )
            probs = medsam_postprocess(low_res, size).double()
            return torch.logit(probs.clamp(_PROB_EPS, 1 - _PROB_EPS)).float().cpu()
