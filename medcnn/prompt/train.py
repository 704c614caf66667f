"""Training the light promptable model (``task: prompt`` in ``medcnn train``), prompts simulated from masks.

Data: a manifest of images and label maps (``image`` and ``label`` columns; every non-zero label
value is one object), 2D files or 3D volumes (cut into slices along their coarsest axis, keeping
slices that hold an object). Each training sample takes one image, one of its objects and a
random prompt for it, simulated from the object's mask as a user would give it
(:func:`simulate_prompt`): a jittered bounding box (mostly), clicks inside and outside the
object, a rough prior mask, or clicks alone. The sample is rendered exactly as at inference
(:func:`medcnn.prompt.lite.prompt_inputs`) and the target is the object's mask on the same crop.

Validation: Dice on the full image grid of every held-out object given its tight bounding box
(``dice_box``) and a jittered box (``dice_jitter``), through :class:`LitePromptBackend`. With
``prompt.calibrate`` (the default) each validation also picks the logit offset that maximises
those Dice scores on the held-out images (:func:`calibrate_offset`); the checkpoint stores it as
``prompt.logit_offset`` and the backend adds it to the network's logits.

The engine's :class:`~medcnn.engine.trainer.Trainer` provides everything else (DDP, AMP, resume,
checkpoints, logs, NaN guard); this module only replaces data, loss, validation and export.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medcnn.engine.data import find_records
from medcnn.engine.trainer import Trainer
from medcnn.errors import ConfigError
from medcnn.metrics.segmentation import dice_score
from medcnn.prompt.lite import CropSpec, LitePromptBackend, clip_to_box, crop_region, extract, prompt_inputs

__all__ = ["CALIBRATION_OFFSETS", "PromptTrainer", "box_dice", "calibrate_offset", "jitter_box", "load_prompt_case",
           "load_prompt_items", "object_bbox", "object_ids", "simulate_prompt"]

logger = logging.getLogger(__name__)

_MIN_OBJECT_PX = 16


def load_prompt_case(image_path: str, label_path: str) -> list[dict[str, Any]]:
    """An image and its label map as 2D slices ``{"image": (H, W) float16, "label": (H, W) uint8}``.

    2D files give one slice; 3D volumes give their slices along the coarsest axis (the last one
    when the spacing is isotropic) that hold at least one object.

    Raises:
        ConfigError: image and label grids differ, or the label map has more than 255 objects.
    """
    from medcnn.io import load

    img = load(image_path)
    lab = load(label_path)
    if tuple(img.shape[1:]) != tuple(lab.shape[1:]):
        raise ConfigError(f"{label_path}: label grid {tuple(lab.shape[1:])} does not match image {tuple(img.shape[1:])}")
    x = img.as_tensor().float().mean(0)
    # kept as float16 to halve the cache: min-max to [0, 1] first (crops are renormalised by their own
    # percentiles, so this affine change alters nothing but fits any intensity range into float16)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / max(hi - lo, 1e-12)
    y = lab.as_tensor()[0].round()
    if float(y.max()) > 255 or float(y.min()) < 0:
        raise ConfigError(f"{label_path}: label values must lie in 0..255 (one value per object)")
    y = y.to(torch.uint8)
    if x.ndim == 2:
        return [{"image": x.half(), "label": y}]
    spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    axis = int(np.argmax(spacing)) if not np.allclose(spacing, spacing[0]) else 2
    out = []
    for k in range(x.shape[axis]):
        sl = y.select(axis, k)
        if bool(sl.any()):
            out.append({"image": x.select(axis, k).contiguous().half(), "label": sl.contiguous()})
    return out


def load_prompt_items(image_path: str, label_path: str) -> list[dict[str, Any]]:
    """The slices of :func:`load_prompt_case` that hold an object, each with its ``objects`` (:func:`object_ids`)."""
    out = []
    for s in load_prompt_case(image_path, label_path):
        s["objects"] = object_ids(s["label"])
        if s["objects"]:
            out.append(s)
    return out


def object_ids(label: torch.Tensor) -> list[int]:
    """Label values of a label map's objects (non-zero, at least 16 pixels)."""
    values, counts = torch.unique(label, return_counts=True)
    return [int(v) for v, c in zip(values.tolist(), counts.tolist()) if v and c >= _MIN_OBJECT_PX]


def object_bbox(mask: np.ndarray) -> np.ndarray:
    """``(i0, j0, i1, j1)`` float64 bounding box of a 2D mask, max exclusive."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], dtype=np.float64)


def jitter_box(rng: np.random.Generator, box: np.ndarray, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """A box as a user would draw it around ``box`` (mostly a little loose, sometimes a little tight)."""
    ext = np.array([box[2] - box[0], box[3] - box[1]])
    out = box.copy()
    for k in range(4):
        a = k % 2
        outward = (rng.normal(0.04, 0.06) * ext[a] + rng.normal(0, 1.5)) * scale
        outward = float(np.clip(outward, -0.1 * ext[a], 0.3 * ext[a] + 3))
        out[k] += -outward if k < 2 else outward
    out[:2] = np.maximum(out[:2], 0)
    out[2:] = np.minimum(out[2:], shape)
    out[2:] = np.maximum(out[2:], out[:2] + 1)
    return out


def _sample_pixels(rng: np.random.Generator, mask: np.ndarray, k: int) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) == 0 or k == 0:
        return np.zeros((0, 2))
    return idx[rng.integers(len(idx), size=k)].astype(np.float64)


def _near(op: Any, obj: np.ndarray, box: np.ndarray, iterations: int) -> np.ndarray:
    """``op(obj, iterations=...)`` (a scipy binary erosion or dilation) computed on the object's box grown by
    ``iterations + 1`` px only: nothing farther from the object can change, so the result equals the whole image's,
    at a fraction of the cost (rendering one training prompt, 256 x 256 images, one core, this change alone:
    1.50 -> 1.21 ms with the machine busy; with the percentile change in lite._normalise, 1.42 -> 0.91 ms idle)."""
    h, w = obj.shape
    g = iterations + 1
    r0, c0 = max(int(box[0]) - g, 0), max(int(box[1]) - g, 0)
    r1, c1 = min(int(box[2]) + g, h), min(int(box[3]) + g, w)
    out = np.zeros_like(obj)
    out[r0:r1, c0:c1] = op(obj[r0:r1, c0:c1], iterations=iterations)
    return out


def simulate_prompt(rng: np.random.Generator, obj: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    """A random prompt for the object ``obj`` ((H, W) bool): ``{box, points, labels, prior, exact}`` (any of the
    first four may be None; ``exact``: the box is the exact bounding box).

    Boxes are jittered as a user would draw them (:func:`jitter_box`), or with probability
    ``opts["box_tight_prob"]`` (default 0) the object's exact bounding box. Modes: box only;
    box + clicks (inside the object = positive, inside the box outside it = negative); box + prior
    mask (the object grown, shrunk, shifted or coarsened) with optional clicks; clicks only (with a
    prior mask sometimes).
    """
    from scipy import ndimage as ndi

    h, w = obj.shape
    box = object_bbox(obj)
    u = rng.random()
    p_points, p_prior, p_only = opts["point_prob"], opts["prior_prob"], opts["points_only_prob"]
    use_box = u >= p_only
    use_points = (not use_box) or rng.random() < p_points
    use_prior = rng.random() < (p_prior if use_box else 0.3)
    out: dict[str, Any] = {"box": None, "points": None, "labels": None, "prior": None, "exact": False}
    if use_box:
        tight = opts.get("box_tight_prob", 0.0) > 0 and rng.random() < opts["box_tight_prob"]
        out["box"] = box.copy() if tight else jitter_box(rng, box, (h, w), scale=opts["box_jitter"])
        out["exact"] = bool(tight)
    if use_points:
        n_pos = int(rng.integers(1, 4)) if not use_box else int(rng.integers(0, 3))
        n_neg = int(rng.integers(0, 3))
        inner = _near(ndi.binary_erosion, obj, box, 2)
        pos = _sample_pixels(rng, inner if inner.any() else obj, max(n_pos, 0 if use_box else 1))
        ref = jitter_box(rng, box, (h, w), scale=2.0) if out["box"] is None else out["box"]
        near = np.zeros_like(obj)
        r0, c0, r1, c1 = (int(round(v)) for v in ref)
        near[r0:r1, c0:c1] = True
        neg = _sample_pixels(rng, near & ~_near(ndi.binary_dilation, obj, box, 2), n_neg)
        pts = np.concatenate([pos, neg]) if len(pos) + len(neg) else None
        if pts is not None:
            out["points"] = pts
            out["labels"] = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64)
    if use_prior:
        kind = rng.integers(4)
        k = int(rng.integers(1, 5))
        if kind == 0:
            m = _near(ndi.binary_dilation, obj, box, k)
        elif kind == 1:
            m = _near(ndi.binary_erosion, obj, box, k)
            m = m if m.any() else obj
        elif kind == 2:
            m = np.roll(obj, (int(rng.integers(-k, k + 1)), int(rng.integers(-k, k + 1))), axis=(0, 1))
        else:
            f = int(rng.integers(4, 9))
            small = obj[::f, ::f]
            m = np.kron(small, np.ones((f, f), bool))[:h, :w]
            m = np.pad(m, ((0, h - m.shape[0]), (0, w - m.shape[1])))
        mag = float(rng.uniform(2, 10))
        out["prior"] = torch.from_numpy(np.where(m, mag, -mag).astype(np.float32))
    if out["box"] is None and out["points"] is None:  # clicks-only draw without a usable click
        out["box"] = jitter_box(rng, box, (h, w))
    return out


def _augment(rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips/rotations of the whole sample and intensity changes of the image channel (in place safe)."""
    k = int(rng.integers(4))
    if k:
        x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (1, 2))
    if rng.random() < 0.5:
        x, y = torch.flip(x, (2,)), torch.flip(y, (2,))
    img = x[0]
    if rng.random() < 0.3:
        img = img.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.3)))
    if rng.random() < 0.3:
        img = img * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.2:
        img = img + float(rng.uniform(0.01, 0.06)) * torch.randn(img.shape, generator=None)
    if rng.random() < 0.1:
        img = 1.0 - img
    x = x.clone()
    x[0] = img
    return x.contiguous(), y.contiguous()


class _PromptSamples(torch.utils.data.Dataset):
    """One random (object, prompt) sample per image per epoch."""

    def __init__(self, items: list[dict], spec: CropSpec, opts: dict[str, Any], seed: int) -> None:
        self.items, self.spec, self.opts, self.seed = items, spec, opts, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        it = self.items[i]
        obj_id = it["objects"][int(rng.integers(len(it["objects"])))]
        obj = (it["label"] == obj_id).numpy()
        image = it["image"].float()
        pr = simulate_prompt(rng, obj, self.opts)
        region = crop_region(tuple(image.shape), self.spec, pr["box"], pr["points"], pr["prior"])
        x = prompt_inputs(image, region, self.spec, pr["box"], pr["points"], pr["labels"], pr["prior"], exact=pr["exact"])
        y = extract(torch.from_numpy(obj).float(), region, self.spec.size)[None]
        x, y = _augment(rng, x, y)
        return {"image": x, "label": y}


class _Seeds:
    """Stands in for the engine's random transform chain: holds the epoch's seed."""

    def __init__(self) -> None:
        self.seed = 0

    def set_random_state(self, seed: int) -> None:
        self.seed = int(seed)


class _SoftDiceBCE(nn.Module):
    """Dice (per sample) + BCE on sigmoid logits, soft targets allowed (MONAI's DiceCELoss)."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target.float())


#: logit offsets tried by the calibration (``prompt.calibrate``); the mask is ``logits + offset > 0``
CALIBRATION_OFFSETS: tuple[float, ...] = tuple(np.arange(-2.0, 6.01, 0.5).round(2).tolist())


def box_dice(backend: LitePromptBackend, items: list[dict], *, jitter: bool = False, seed: int = 0,
             max_objects: int = 4, offsets: Sequence[float] = (0.0,), exact: bool = False) -> np.ndarray:
    """Dice on the full image grid of each object given its bounding box (tight or jittered).

    With ``exact`` (tight boxes only), the boxes are given as exact (``exact_box``) and the masks are
    kept inside them, as :meth:`~medcnn.prompt.segmenter.PromptableSegmenter.predict` does.

    Returns:
        ``(N, K)`` float64: object ``n``'s Dice with ``offsets[k]`` added to the backend's logits.
    """
    rng = np.random.default_rng(seed)
    scores = []
    for it in items:
        backend.set_image(it["image"].float()[None])
        for obj_id in it["objects"][:max_objects]:
            obj = (it["label"] == obj_id).numpy()
            box = object_bbox(obj)
            if jitter:
                box = jitter_box(rng, box, obj.shape)
            logits = backend.predict_logits(boxes=torch.from_numpy(box)[None], exact_box=exact)[0]
            logits = (clip_to_box(logits, box.tolist()) if exact else logits).numpy()
            scores.append([dice_score(logits > -float(o), obj) for o in offsets])
    return np.asarray(scores, dtype=np.float64).reshape(-1, len(offsets))


def calibrate_offset(tight: np.ndarray, loose: np.ndarray | None, offsets: Sequence[float]) -> int:
    """Index of the offset with the best mean of tight- and jittered-box Dice (``(N, K)`` each; ``loose``
    ``None``: tight alone); ties go to the offset nearest 0."""
    score = (tight.mean(0) + loose.mean(0)) / 2 if loose is not None else tight.mean(0)
    order = sorted(range(len(offsets)), key=lambda k: (-round(float(score[k]), 6), abs(offsets[k])))
    return order[0]


class PromptTrainer(Trainer):
    """:class:`~medcnn.engine.trainer.Trainer` for ``task: prompt`` (see the module docstring)."""

    def _build_data(self) -> None:
        cfg = self.cfg
        self.spec = CropSpec.from_dict(cfg["prompt"])
        if cfg["model"].get("init") and not self.spec.exact_channel:
            from medcnn.engine.checkpoint import checkpoint_path, load_checkpoint

            path = checkpoint_path(str(cfg["model"]["init"]))
            init = load_checkpoint(path) if path is not None else {}
            if (init.get("prompt") or {}).get("exact_channel"):
                # dropping a trained input channel would lose what it learnt: fine-tunes keep it
                self.spec = dataclasses.replace(self.spec, exact_channel=True)
                self._log_main("model.init %s reads the exact-box channel: kept (prompt.exact_channel); set "
                               "prompt.box_tight_prob > 0 to go on training it", path.name)
        if cfg["data"]["cache"] is not True:  # slices are always kept, as float16 already
            raise ConfigError("config key 'data.cache': prompt training keeps its slices in memory (as float16); "
                              "leave data.cache at true")
        self.multilabel = False
        self.mask_names = []
        self._split_records(find_records(cfg["data"]))

        def prep(rec: dict) -> list[dict]:
            return load_prompt_items(rec["image"][0], rec["label"])

        workers = 2
        with ThreadPoolExecutor(workers) as pool:
            self.train_items = [s for ss in tqdm(pool.map(prep, self.train_recs), total=len(self.train_recs),
                                                 desc="load train", disable=None if self.env.is_main else True) for s in ss]
            self.val_items = [s for ss in pool.map(prep, self.val_recs) for s in ss] if self.env.is_main else []
        if not self.train_items:
            raise ConfigError("data: no training image with an object after the split")
        self._log_main("%d training images (%d objects), %d validation images", len(self.train_items),
                       sum(len(s["objects"]) for s in self.train_items), len(self.val_items))
        self.in_channels = self.spec.in_channels
        self.spatial_dims = 2

    def _out_channels(self) -> int:
        return 1

    def _random_transforms(self):
        return _Seeds()

    drop_last = True

    def _train_dataset(self) -> torch.utils.data.Dataset:
        return _PromptSamples(self.train_items, self.spec, self.cfg["prompt"], self.transforms.seed)

    def _cases_per_step(self) -> int:
        return self.t["batch_size"]

    def _adapt_init_state(self, state: dict[str, torch.Tensor], net: nn.Module, path: Any) -> dict[str, torch.Tensor]:
        """A 5-channel ``model.init`` for a network with the exact-box channel: the weights reading the new
        channel start at zero, so training starts from exactly the initial model's outputs."""
        if not self.spec.exact_channel:
            return state
        out = dict(state)
        for k, v in net.state_dict().items():
            old = state.get(k)
            if (old is not None and old.ndim == v.ndim >= 2 and old.shape[1] == v.shape[1] - 1
                    and old.shape[0] == v.shape[0] and old.shape[2:] == v.shape[2:]):
                out[k] = torch.cat([old, torch.zeros_like(v[:, :1])], 1)
                self._log_main("model.init: %s gains the exact-box input channel (zero weights)", k)
        return out

    def _loss(self) -> nn.Module:
        return _SoftDiceBCE()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Box-prompt Dice of the held-out images (tight and jittered boxes)."""
        net = self.net.module if hasattr(self.net, "module") else self.net
        net.eval()
        opts = self.cfg["prompt"]
        spec = dataclasses.replace(self.spec, logit_offset=0.0, logit_offset_exact=None)  # raw logits: offsets added below
        inf = self.cfg["inference"]
        backend = LitePromptBackend(net, spec, device=self.env.device, optimize=False, tta=inf["tta"],
                                    tta_axes=inf["tta_axes"])
        offsets = CALIBRATION_OFFSETS if opts["calibrate"] else (self.spec.logit_offset,)
        offsets_exact = CALIBRATION_OFFSETS if opts["calibrate"] else (self.spec.offset(True),)
        tight = box_dice(backend, self.val_items, max_objects=opts["val_objects"], offsets=offsets)
        loose = box_dice(backend, self.val_items, jitter=True, seed=self.cfg["seed"], max_objects=opts["val_objects"],
                         offsets=offsets)
        exact = box_dice(backend, self.val_items, max_objects=opts["val_objects"], offsets=offsets_exact, exact=True)
        k = calibrate_offset(tight, loose, offsets)
        ke = calibrate_offset(exact, None, offsets_exact)
        self.spec = dataclasses.replace(self.spec, logit_offset=float(offsets[k]),
                                        logit_offset_exact=float(offsets_exact[ke]))
        out = {"dice_box": float(tight[:, k].mean()), "dice_jitter": float(loose[:, k].mean()), "logit_offset": float(offsets[k]),
               "dice_box_exact": float(exact[:, ke].mean()), "logit_offset_exact": float(offsets_exact[ke])}
        if opts["calibrate"]:
            out["dice_box_offset0"] = float(tight[:, offsets.index(0.0)].mean())
        out["dice_mean"] = out["dice_box"]
        return out

    def _export(self, metrics: dict[str, float], epoch: int) -> dict:
        ck = super()._export(metrics, epoch)
        ck["prompt"] = self.spec.to_dict()
        ck["preprocess"]["channel_names"] = ["image", "box", "positive_clicks", "negative_clicks", "prior",
                                             *(["exact_box"] if self.spec.exact_channel else [])]
        return ck
