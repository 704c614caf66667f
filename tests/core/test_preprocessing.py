"""Preprocessing shared by training and inference: crop/uncrop round trip, thresholds, normalisation."""

from __future__ import annotations

import pytest
import torch

from medcnn.preprocessing import foreground_box, normalize, pad_or_crop_to, prepare, uncrop


def _noisy_head() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 40, 40, 40, generator=g) * 0.05
    x[:, 10:30, 12:28, 8:33] += 1.0
    return x


def test_relative_crop_threshold_ignores_background_noise() -> None:
    x = _noisy_head()
    _, info = prepare(x, {"crop_foreground": True, "crop_threshold": 0.3, "normalize": "none"})
    assert info["box"] == [(8, 32), (10, 30), (6, 35)]  # object + 2-voxel margin
    _, info0 = prepare(x, {"crop_foreground": True, "normalize": "none"})
    assert info0["box"] == [(0, 40)] * 3  # noise everywhere: non-zero box is the whole field of view


def test_uncrop_inverts_crop() -> None:
    x = _noisy_head()
    box = foreground_box(x, threshold=0.5)
    cropped = x[(slice(None),) + tuple(slice(a, b) for a, b in box)]
    back = uncrop(cropped, box, x.shape[1:])
    inside = (slice(None),) + tuple(slice(a, b) for a, b in box)
    assert torch.equal(back[inside], x[inside])
    assert float(back.sum()) == pytest.approx(float(cropped.sum()), rel=1e-6)


def test_pad_or_crop_to_size_and_brain_zscore() -> None:
    x = _noisy_head()
    out, pads = pad_or_crop_to(x, (32, 48, 40))
    assert tuple(out.shape) == (2, 32, 48, 40) and pads[0] == (-4, -4) and pads[1] == (4, 4)
    z = normalize(torch.where(x > 0.5, x, torch.zeros(())), {"normalize": "brain_mri"})
    fg = x[0] > 0.5
    assert abs(float(z[0][fg].mean())) < 1e-5 and abs(float(z[0][fg].std(unbiased=False)) - 1) < 1e-4
    assert float(z[0][~fg].abs().max()) == 0.0
