"""Backends declare their optional keywords (PromptBackend.supports_*); the segmenter reads the declaration."""

from __future__ import annotations

import torch

from medcnn.prompt.lite import LitePromptBackend
from medcnn.prompt.medsam import MedSAMBackend
from medcnn.prompt.segmenter import PromptableSegmenter

from promptfake import ThresholdBackend


class _Recording(ThresholdBackend):
    """Records the optional keywords it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict] = []

    def predict_logits(self, *, boxes=None, points=None, labels=None, mask_input=None, **kw) -> torch.Tensor:
        self.kwargs.append(kw)
        return super().predict_logits(boxes=boxes, points=points, labels=labels, mask_input=mask_input)


class _Declares(_Recording):
    supports_exact_box = True


def _image() -> torch.Tensor:
    img = torch.zeros(1, 32, 32)
    img[0, 8:20, 10:24] = 1.0
    return img


def test_exact_box_is_passed_only_to_backends_that_declare_it() -> None:
    for backend, expected in ((_Recording(), {}), (_Declares(), {"exact_box": True})):
        seg = PromptableSegmenter(backend)
        seg.set_image(_image())
        mask = seg.predict(box=[6, 8, 22, 26], exact_box=True)
        assert backend.kwargs == [expected]
        # either way the exact box's mask stays inside the box
        assert not bool(mask[:6].any()) and not bool(mask[22:].any()) and bool(mask[8:20, 10:24].all())


def test_bundled_backends_declare_their_keywords() -> None:
    assert LitePromptBackend.supports_exact_box and LitePromptBackend.supports_per_prompt_offsets
    assert MedSAMBackend.supports_exact_box and not MedSAMBackend.supports_per_prompt_offsets
