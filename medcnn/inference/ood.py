"""Out-of-distribution flags: is an input unlike the data a checkpoint was trained on?

A checkpoint's ``ood`` section (plain lists and tensors, so ``torch.load(weights_only=True)`` reads it)
holds what :func:`fit_ood` learnt from held-out cases of the training generator:

* per named *image statistic* (intensity quantiles after the pipeline's normalisation, foreground
  fraction, field-of-view extent in mm, ...): the median and a robust scale (1.4826 MAD); a case has two
  statistic parts, its largest robust z-score and the Mahalanobis distance (Ledoit-Wolf) of all its
  robust z-scores together (several statistics each a little off);
* the *feature distance*: mean, scale and Ledoit-Wolf precision of the network's pooled features at
  one layer (:class:`FeatureTap`); a case's feature part is its Mahalanobis distance.

Each part is divided by its own out-of-fold ``quantile`` and the largest of them is the combined
score, whose out-of-fold ``quantile`` is the threshold; :func:`score_ood` returns
``ood_score = combined / threshold``, so ``ood`` is ``ood_score > 1``. The out-of-fold scores (each
case scored by statistics fitted without it) keep the threshold honest: at most ``1 - quantile`` of
held-out cases of the training generator exceed it. Hard reasons (a DICOM tag naming another
modality, an RGB image with real colour) flag a case whatever its score.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: checkpoint key of the section
OOD_KEY = "ood"
#: version of the section's layout
OOD_VERSION = 1
#: robust scale floor relative to the statistic's magnitude (a statistic constant in training)
_REL_SCALE_FLOOR = 1e-3
_ABS_SCALE_FLOOR = 1e-6


@dataclass
class OODResult:
    """The judgement of one case.

    Attributes:
        ood: flagged (``score > 1`` or any hard reason).
        score: combined score over the threshold (``nan`` where nothing could be scored).
        reasons: human-readable reasons, worst first (empty when not flagged).
    """

    ood: bool
    score: float
    reasons: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """``{"ood": bool, "ood_score": float}`` for a summary row."""
        return {"ood": bool(self.ood), "ood_score": round(float(self.score), 3) if np.isfinite(self.score) else ""}


#: the summary fields of a case that cannot be judged (no ``ood`` section in the checkpoint)
EMPTY_FIELDS: dict[str, Any] = {"ood": "", "ood_score": ""}


class FeatureTap:
    """Collect a layer's outputs, pooled over their spatial axes, while a network runs.

    Only calls from the thread that entered the tap are recorded, so two cases in flight on one
    network (their calls serialised) never mix. Every call (sliding windows, mirrored copies) adds its
    ``(B, C, *spatial)`` output averaged over space and batch.

    Args:
        network: the module to watch.
        layer: a name from ``network.named_modules()``; ``None``: the tap records nothing.

    Raises:
        KeyError: no module of that name.
    """

    def __init__(self, network: nn.Module, layer: str | None) -> None:
        self._module = dict(network.named_modules())[layer] if layer else None
        self._sum: torch.Tensor | None = None
        self._n = 0
        self._thread = 0
        self._handle: Any = None

    def __enter__(self) -> FeatureTap:
        if self._module is not None:
            self._thread = threading.get_ident()
            self._handle = self._module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        t = out[0] if isinstance(out, (list, tuple)) else out
        if not isinstance(t, torch.Tensor) or t.ndim < 3:
            return
        pooled = t.detach().float().mean(dim=tuple(range(2, t.ndim))).sum(0).cpu()
        self._sum = pooled if self._sum is None else self._sum + pooled
        self._n += int(t.shape[0])

    @property
    def features(self) -> np.ndarray | None:
        """``(C,)`` float64 mean pooled output of the calls so far, ``None`` if there was none."""
        return None if self._sum is None else (self._sum / self._n).double().numpy()


def choose_layer(network: nn.Module, example: torch.Tensor) -> str:
    """The bottleneck of a network: the last module to output the coarsest feature map.

    Args:
        network: a CNN (classifier or U-Net).
        example: ``(1, C, *spatial)`` input of the size the network sees at inference.

    Returns:
        A name from ``network.named_modules()`` whose output has the fewest spatial elements (the
        last one to run among them).

    Raises:
        ValueError: no module outputs a spatial feature map.
    """
    seen: list[tuple[int, int, str]] = []
    handles = []
    for name, mod in network.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, a: Any, out: Any, name: str = name) -> None:
            t = out[0] if isinstance(out, (list, tuple)) else out
            if isinstance(t, torch.Tensor) and t.ndim == example.ndim:
                seen.append((int(np.prod(t.shape[2:])), len(seen), name))

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            network.eval()(example)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("no module of the network outputs a spatial feature map")
    coarsest = min(s[0] for s in seen)
    return max((s for s in seen if s[0] == coarsest), key=lambda s: s[1])[2]


def _robust(stats: np.ndarray, floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust scale per column of ``(N, S)``: 1.4826 MAD, at least the 5-95 % range over 3.29
    (a statistic that is mostly constant but varies in a few cases) and at least ``floor`` ``(S,)``."""
    med = np.median(stats, axis=0)
    mad = 1.4826 * np.median(np.abs(stats - med), axis=0)
    q05, q95 = np.quantile(stats, [0.05, 0.95], axis=0)
    scale = np.maximum(np.maximum(mad, (q95 - q05) / 3.29), np.maximum(_REL_SCALE_FLOOR * np.abs(med), _ABS_SCALE_FLOOR))
    return med, scale if floor is None else np.maximum(scale, floor)


def _gaussian(feats: np.ndarray, min_scale: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale (at least ``min_scale``) and Ledoit-Wolf precision of standardised ``(N, D)`` features."""
    from sklearn.covariance import LedoitWolf

    mean = feats.mean(0)
    scale = np.maximum(feats.std(0) + 1e-6 * (np.abs(mean).max() + 1e-12), min_scale)
    lw = LedoitWolf().fit((feats - mean) / scale)
    return mean, scale, lw.precision_


def _stat_z(stats: np.ndarray, med: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.abs(stats - med) / scale


def _mahalanobis(feats: np.ndarray, mean: np.ndarray, scale: np.ndarray, precision: np.ndarray) -> np.ndarray:
    z = (feats - mean) / scale
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", z, precision, z), 0.0))


def fit_ood(stats: Sequence[Mapping[str, float]], features: Sequence[np.ndarray] | None = None, *,
            layer: str | None = None, quantile: float = 0.95, folds: int = 5, seed: int = 0,
            min_scale: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fit an ``ood`` checkpoint section on held-out cases of the training generator.

    Args:
        stats: per case, named image statistics (every case the same names).
        features: per case, ``(D,)`` pooled network features (:class:`FeatureTap`), or ``None``.
        layer: the module the features come from (stored for :class:`FeatureTap`).
        quantile: the fraction of held-out cases to keep below the threshold (out-of-fold).
        folds: folds of the out-of-fold scoring.
        seed: fold assignment.
        min_scale: per statistic, the smallest robust scale (the change that matters, for a statistic that
            hardly varies in the generated cases, e.g. the foreground on the volume's faces).

    Returns:
        The section: plain numbers, strings, lists and float32 tensors.

    Raises:
        ValueError: fewer than ``2 * folds`` cases, cases with different statistics, or non-finite values.
    """
    n = len(stats)
    if n < 2 * folds:
        raise ValueError(f"fitting OOD statistics needs at least {2 * folds} cases, got {n}")
    names = list(stats[0])
    if any(list(s) != names for s in stats):
        raise ValueError("every case must have the same image statistics")
    S = np.array([[float(s[k]) for k in names] for s in stats], dtype=np.float64)
    F = None if features is None else np.stack([np.asarray(f, dtype=np.float64) for f in features])
    if not np.isfinite(S).all() or (F is not None and not np.isfinite(F).all()):
        raise ValueError("non-finite image statistics or features among the fitting cases")
    floor = np.array([float((min_scale or {}).get(k, 0.0)) for k in names])
    fold = np.random.default_rng(seed).permutation(n) % folds
    oof = np.zeros((3, n))  # per case: largest robust z, joint distance of the statistics, feature distance
    for k in range(folds):
        tr, te = fold != k, fold == k
        med_k, scale_k = _robust(S[tr], floor)
        z_tr, z_te = (S[tr] - med_k) / scale_k, (S[te] - med_k) / scale_k
        oof[0, te] = np.abs(z_te).max(1)
        oof[1, te] = _mahalanobis(z_te, *_gaussian(z_tr, 1.0))
        if F is not None:
            oof[2, te] = _mahalanobis(F[te], *_gaussian(F[tr]))
    units = np.quantile(oof, quantile, axis=1)
    combined = (oof[:2] / units[:2, None]).max(0)
    med, scale = _robust(S, floor)
    zmean, zscale, zprec = _gaussian((S - med) / scale, 1.0)
    section: dict[str, Any] = {"version": OOD_VERSION, "n_fit": n, "quantile": float(quantile), "folds": folds,
                               "stat_names": names, "stat_unit": float(units[0]), "joint_unit": float(units[1]),
                               "stat_median": _f32(med), "stat_scale": _f32(scale), "joint_mean": _f32(zmean),
                               "joint_scale": _f32(zscale), "joint_precision": _f32(zprec)}
    if F is not None:
        combined = np.maximum(combined, oof[2] / units[2])
        mean, fscale, prec = _gaussian(F)
        section.update(layer=layer, feat_unit=float(units[2]), feat_mean=_f32(mean), feat_scale=_f32(fscale),
                       feat_precision=_f32(prec))
    threshold = float(np.quantile(combined, quantile))
    section["threshold"] = threshold
    section["oof_flagged"] = float(np.mean(combined > threshold))
    return section


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def score_ood(section: Mapping[str, Any] | None, stats: Mapping[str, float], features: np.ndarray | None = None,
              reasons: Sequence[str] = ()) -> OODResult | None:
    """Judge one case against a checkpoint's ``ood`` section.

    Args:
        section: from :func:`fit_ood` (``None``: nothing to judge with).
        stats: the case's image statistics (the section's names; missing ones are skipped).
        features: ``(D,)`` pooled features at the section's layer, or ``None``.
        reasons: hard reasons found before (DICOM tags, colour): they flag the case whatever its score.

    Returns:
        An :class:`OODResult`, or ``None`` without a section.
    """
    if not section:
        return None
    names = list(section["stat_names"])
    med = np.asarray(section["stat_median"], dtype=np.float64)
    scale = np.asarray(section["stat_scale"], dtype=np.float64)
    have = [i for i, k in enumerate(names) if k in stats]
    x = np.array([float(stats[names[i]]) for i in have])
    z = np.where(np.isfinite(x), np.abs(x - med[have]) / scale[have], np.inf) if have else np.zeros(0)
    thr = float(section["threshold"])
    parts: list[tuple[float, str]] = []
    if z.size:
        j = int(np.argmax(z))
        k = names[have[j]]
        parts.append((float(z[j]) / float(section["stat_unit"]) / thr,
                      f"{k} = {x[j]:.4g} is {z[j]:.1f} robust SDs from the training median {med[have[j]]:.4g}"))
        if len(have) == len(names) and np.isfinite(z).all():
            d = float(_mahalanobis(((x - med) / scale)[None], *(np.asarray(section[f"joint_{key}"], dtype=np.float64)
                                                                  for key in ("mean", "scale", "precision")))[0])
            unit = float(section["joint_unit"])
            parts.append((d / unit / thr, f"the image statistics together are {d / unit:.2f}x the training range away"))
    if features is not None and "feat_mean" in section:
        mean = np.asarray(section["feat_mean"], dtype=np.float64)
        if np.asarray(features).shape == mean.shape:
            d = float(_mahalanobis(np.asarray(features, dtype=np.float64)[None], mean,
                                   np.asarray(section["feat_scale"], dtype=np.float64),
                                   np.asarray(section["feat_precision"], dtype=np.float64))[0])
            parts.append((d / float(section["feat_unit"]) / thr,
                          f"network features at {section.get('layer')} are {d / float(section['feat_unit']):.2f}x "
                          f"the training range away"))
        else:
            logger.warning("OOD features of shape %s do not fit the section's %s; feature distance skipped",
                           np.asarray(features).shape, tuple(mean.shape))
    score = max((p[0] for p in parts), default=float("nan"))
    if not np.isfinite(score) and parts:
        score = float("inf")
    flagged = bool(reasons) or (np.isfinite(score) and score > 1.0) or score == float("inf")
    why = list(reasons)
    if flagged:
        why += [p[1] for p in sorted(parts, reverse=True) if p[0] > 1.0]
    return OODResult(flagged, score, why)


def judge(section: Mapping[str, Any] | None, case_id: str, stats: Mapping[str, float],
          features: np.ndarray | None = None, reasons: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`score_ood` as summary fields, with a warning line for a flagged case.

    Returns:
        ``{"ood": bool, "ood_score": float}``, or empty fields without a section.
    """
    res = score_ood(section, stats, features, reasons)
    if res is None:
        return dict(EMPTY_FIELDS)
    if res.ood:
        logger.warning("%s: out of distribution (ood_score %.2f): %s; outputs kept, check them", case_id,
                       res.score, "; ".join(res.reasons) or "score above the threshold")
    return res.fields()


def section_of(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``ood`` section of a model config or checkpoint dict, ``None`` if absent."""
    sec = (config or {}).get(OOD_KEY)
    return dict(sec) if sec else None


def quantiles(values: torch.Tensor | np.ndarray, qs: Sequence[float], prefix: str) -> dict[str, float]:
    """Named quantiles ``{f"{prefix}q{100 q:02.0f}": value}`` of ``values`` (all of them, flattened).

    Args:
        values: any shape; an empty one gives zeros.
        qs: quantiles in [0, 1].
        prefix: name prefix, e.g. ``"fg_"``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > 2_000_000:  # a regular subsample keeps it cheap on big volumes
        v = v[:: v.size // 1_000_000]
    out = np.quantile(v, qs) if v.size else np.zeros(len(qs))
    return {f"{prefix}q{round(100 * q):02d}": float(o) for q, o in zip(qs, out)}


def face_fraction(volume: torch.Tensor | np.ndarray, rel_threshold: float) -> float:
    """The largest foreground fraction on any face (first or last slice along an axis) of a volume.

    A scan whose field of view cuts through the anatomy has foreground on a face; a whole head or brain
    with background around it has (almost) none.

    Args:
        volume: ``(*spatial)`` intensities.
        rel_threshold: foreground is above this fraction of the 99.5th percentile (as the foreground crop).

    Returns:
        A fraction in [0, 1].
    """
    v = np.asarray(volume, dtype=np.float32)
    sub = v.ravel()[:: max(1, v.size // 1_000_000)]
    fg = v > float(rel_threshold) * float(np.quantile(sub, 0.995)) if rel_threshold else v != 0
    return max(float(np.take(fg, i, axis=ax).mean()) for ax in range(fg.ndim) for i in (0, -1))


#: DICOM modalities of projection radiographs
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")


def dicom_reasons(path: str | Path, *, modalities: Sequence[str], body_parts: Sequence[str] = (),
                  grey: bool = True) -> list[str]:
    """Hard OOD reasons from a DICOM file's tags (nothing for a non-DICOM file or an absent tag).

    Args:
        path: a file (a folder: its first ``.dcm`` file).
        modalities: accepted ``Modality`` values.
        body_parts: accepted ``BodyPartExamined`` values (empty: any).
        grey: refuse colour (``SamplesPerPixel > 1`` or a colour ``PhotometricInterpretation``).

    Returns:
        One line per tag that names something the model was not trained on.
    """
    import pydicom

    p = Path(path)
    if p.is_dir():
        p = next(iter(sorted(p.glob("*.dcm"))), p)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM (or unreadable header): no tags to judge
        return []
    out = []
    mod = str(ds.get("Modality", "")).upper()
    if mod and mod not in modalities:
        out.append(f"DICOM Modality {mod} (the model knows {'/'.join(modalities)})")
    part = str(ds.get("BodyPartExamined", "")).upper()
    if part and body_parts and part not in body_parts:
        out.append(f"DICOM BodyPartExamined {part} (the model knows {'/'.join(body_parts)})")
    if grey:
        photo = str(ds.get("PhotometricInterpretation", "")).upper()
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or (photo and not photo.startswith("MONOCHROME")):
            out.append(f"DICOM PhotometricInterpretation {photo or '?'} with {ds.get('SamplesPerPixel', '?')} samples "
                       "per pixel (a colour image, not a grey-level one)")
    return out


def colourfulness(rgb: torch.Tensor | np.ndarray) -> float:
    """Mean per-pixel chroma ``max(RGB) - min(RGB)`` over the image's dynamic range (0 for grey).

    Args:
        rgb: ``(3, *spatial)``.
    """
    a = np.asarray(rgb, dtype=np.float64)
    span = float(a.max() - a.min())
    return 0.0 if span <= 0 else float((a.max(0) - a.min(0)).mean() / span)


def forward_and_judge(network: Any, section: Mapping[str, Any] | None, forward: Callable[[], Any], case_id: str,
                      stats_of: Callable[[], tuple[dict[str, float], list[str]]]) -> tuple[Any, dict[str, Any]]:
    """Run ``forward()`` while tapping ``section``'s layer of ``network``; return its output and the OOD fields.

    Without a section the fields are :data:`EMPTY_FIELDS` and ``stats_of`` is not called.
    """
    with FeatureTap(network, (section or {}).get("layer")) as tap:
        out = forward()
    if not section:
        return out, dict(EMPTY_FIELDS)
    stats, reasons = stats_of()
    return out, judge(section, case_id, stats, tap.features, reasons)
