"""A transparent prompt backend for tests (no network): thresholds the image inside each box."""

from __future__ import annotations

import torch


class ThresholdBackend:
    """Segments bright pixels (> 0.5) inside the box; a click sets its 3x3 neighbourhood fg/bg."""

    name = "threshold"

    def __init__(self) -> None:
        self.embedded = 0
        self.boxes_seen: list[tuple[float, ...]] = []

    def set_image(self, image: torch.Tensor) -> None:
        self.image = image[0]
        self.embedded += 1

    def predict_logits(self, *, boxes=None, points=None, labels=None, mask_input=None) -> torch.Tensor:
        h, w = self.image.shape
        out = []
        for b in (boxes if boxes is not None else [None]):
            inside = torch.zeros(h, w, dtype=torch.bool)
            if b is not None:
                self.boxes_seen.append(tuple(float(v) for v in b))
                i0, j0, i1, j1 = (int(round(float(v))) for v in b)
                inside[i0:i1, j0:j1] = True
            logit = torch.where(inside & (self.image > 0.5), 5.0, -5.0)
            if points is not None:
                for (i, j), lab in zip(points.tolist(), labels.tolist()):
                    i, j = int(i), int(j)
                    logit[max(0, i - 1):i + 2, max(0, j - 1):j + 2] = 5.0 if lab == 1 else -5.0
            out.append(logit)
        return torch.stack(out)
