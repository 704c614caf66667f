"""Per-prompt logit offsets for the light promptable model: the mask threshold chosen from the prompt's own logits.

The light model's masks are ``logits + offset > 0``. One offset per checkpoint (``prompt.logit_offset``,
calibrated on held-out images) fixes the network's overall bias, but the best offset differs from
object to object (``medcnn/data/models/README.md`` has the figures). How far
the mask should reach is visible in the crop's own logits: how much of the box each offset would fill,
how wide the uncertain band is, whether the mask already touches the box's sides. An
:class:`OffsetModel` maps those features (:func:`offset_features`, computed on the crop, so the same
at any image size) linearly to that prompt's offset. Fitted by ridge regression on held-out images
(``medcnn calibrate offsets DATA --model M -o OUT.pt``),
it is stored in the checkpoint (``prompt.offset_model``: plain lists, loadable with ``weights_only``)
and used for box prompts without clicks or prior masks; other prompts keep the fixed offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FEATURE_NAMES", "FILL_OFFSETS", "OffsetModel", "fit_offset_model", "offset_features"]

#: offsets at which :func:`offset_features` measures the box's fill
FILL_OFFSETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
#: the features of :func:`offset_features`, in order (stored with a model, checked at load)
FEATURE_NAMES = ("log_box_area", "log_box_aspect", *(f"fill_at_{o:g}" for o in FILL_OFFSETS), "uncertain_band",
                 "mean_logit", "std_logit", "side_fill_min", "side_fill_2nd", "side_fill_3rd", "side_fill_max",
                 "spill_outside_box")


def offset_features(logits: torch.Tensor, box_channel: torch.Tensor, box_hw: torch.Tensor, base: float) -> torch.Tensor:
    """Features of each prompt's crop logits that predict its best logit offset.

    Args:
        logits: ``(N, S, S)`` raw crop logits (mirror-TTA averaged where used; no offset added).
        box_channel: ``(N, S, S)`` the box channel of the network input (1 inside the box).
        box_hw: ``(N, 2)`` the box's height and width in image pixels.
        base: the fixed offset of this kind of box (``CropSpec.offset``).

    Returns:
        ``(N, F)`` float64, columns as :data:`FEATURE_NAMES`; a prompt whose box covers no crop
        pixel gets NaN (callers keep the fixed offset for it).
    """
    # numpy slicing of the box's rectangle (the box channel is a product of row and column ranges) beats boolean masks
    z_all = logits.detach().cpu().double().numpy()
    inside_all = box_channel.detach().cpu().numpy() > 0.5
    hw = box_hw.detach().cpu().double().numpy().reshape(-1, 2)
    fills = -np.asarray(FILL_OFFSETS, dtype=np.float64)
    out = np.full((z_all.shape[0], len(FEATURE_NAMES)), np.nan)
    for k, (z, inside) in enumerate(zip(z_all, inside_all)):
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if len(rows) == 0:
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        zb = z[r0:r1, c0:c1]
        on = z + base > 0
        onb = on[r0:r1, c0:c1]
        sides = np.sort([onb[0].mean(), onb[-1].mean(), onb[:, 0].mean(), onb[:, -1].mean()])
        n_out = z.size - zb.size
        spill = (on.sum() - onb.sum()) / n_out if n_out else 0.0
        h, w = max(hw[k, 0], 1e-6), max(hw[k, 1], 1e-6)
        out[k] = [np.log(h * w), np.log(h / w), *(zb[None] > fills[:, None, None]).mean((1, 2)),
                  (np.abs(zb + base) < 3).mean(), zb.mean() / 10, zb.std() / 10, *sides, spill]
    return torch.from_numpy(out)


@dataclass(frozen=True)
class OffsetModel:
    """A linear map from :func:`offset_features` to a logit offset, clamped to ``[low, high]``.

    Attributes:
        mean, scale: per-feature standardisation (``(f - mean) / scale``).
        weights, bias: the linear map on standardised features.
        low, high: the offsets it may return (the grid it was fitted on).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    low: float = 0.0
    high: float = 6.0

    def predict(self, features: torch.Tensor, fallback: float) -> torch.Tensor:
        """``(N, F)`` features -> ``(N,)`` float32 offsets (``fallback`` where a row has NaN)."""
        f = features.double()
        z = (f - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(self.scale, dtype=torch.float64)
        off = (z @ torch.tensor(self.weights, dtype=torch.float64) + self.bias).clamp(self.low, self.high)
        return torch.where(torch.isnan(off), torch.tensor(float(fallback), dtype=torch.float64), off).float()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OffsetModel:
        """Read a checkpoint entry (``features`` must equal :data:`FEATURE_NAMES`)."""
        names = tuple(d.get("features", ()))
        if names != FEATURE_NAMES:
            raise ValueError(f"offset model features {list(names)} do not match this version's {list(FEATURE_NAMES)}")
        return cls(mean=tuple(float(v) for v in d["mean"]), scale=tuple(float(v) for v in d["scale"]),
                   weights=tuple(float(v) for v in d["weights"]), bias=float(d["bias"]),
                   low=float(d.get("low", 0.0)), high=float(d.get("high", 6.0)))

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entry (plain floats and lists)."""
        return {"features": list(FEATURE_NAMES), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias, "low": self.low, "high": self.high}


def fit_offset_model(features: np.ndarray, dice: np.ndarray, offsets: Sequence[float], base: float, *,
                     alpha: float = 1.0) -> OffsetModel:
    """Ridge regression from features to each object's best offset.

    Args:
        features: ``(N, F)`` from :func:`offset_features` (rows with NaN are left out).
        dice: ``(N, K)`` each object's Dice on its image grid with ``offsets[k]``.
        offsets: the offset grid ``(K,)``.
        base: the fixed offset; among offsets tied for an object's best Dice the nearest to it is its target.
        alpha: ridge penalty on the standardised features.

    Raises:
        ValueError: fewer usable objects than features + 2.
    """
    f = np.asarray(features, dtype=np.float64)
    d = np.asarray(dice, dtype=np.float64)
    grid = np.asarray(offsets, dtype=np.float64)
    ok = ~np.isnan(f).any(1)
    f, d = f[ok], d[ok]
    if len(f) < f.shape[1] + 2:
        raise ValueError(f"{len(f)} usable objects: too few to fit {f.shape[1]} features")
    best = d.max(1, keepdims=True)
    tied = d >= best - 1e-9
    target = np.array([grid[t][np.argmin(np.abs(grid[t] - base))] for t in tied])
    mean, scale = f.mean(0), f.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (f - mean) / scale
    zc, tc = z - z.mean(0), target - target.mean()
    w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ tc)
    b = float(target.mean() - z.mean(0) @ w)
    return OffsetModel(mean=tuple(mean.tolist()), scale=tuple(scale.tolist()), weights=tuple(w.tolist()), bias=b,
                       low=float(grid.min()), high=float(grid.max()))
