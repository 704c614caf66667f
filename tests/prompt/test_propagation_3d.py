"""3D prompts: slice-to-slice propagation of a 3D box, point corrections, label maps (with a transparent backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcnn.prompt import PromptableSegmenter
from promptfake import ThresholdBackend


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A tilted cylinder (its axis moves one pixel per slice) and a distractor blob, (1, 24, 40, 40)."""
    d, h, w = 24, 40, 40
    vol = np.zeros((1, d, h, w), np.float32)
    obj = np.zeros((d, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for z in range(5, 19):
        c = 10 + (z - 5)
        obj[z] = (yy - c) ** 2 + (xx - 20) ** 2 <= 16
    vol[0][obj] = 1.0
    vol[0, 5:8, 28:34, 4:10] = 1.0  # inside the 3D box's extent, far from the object on those slices
    return vol, obj


@pytest.fixture
def seg() -> PromptableSegmenter:
    vol, _ = _volume()
    s = PromptableSegmenter(ThresholdBackend())
    s.set_image(vol)
    return s


def test_box_propagates_along_the_object_not_the_whole_box(seg) -> None:
    _, obj = _volume()
    # the 3D box covers the whole oblique cylinder (and the distractor's in-plane position)
    mask = seg.predict(box=(3, 4, 2, 22, 36, 38))
    assert mask.shape == (24, 40, 40) and mask.dtype == torch.bool
    assert torch.equal(mask, torch.from_numpy(obj)), "propagation missed the object or picked up the distractor"
    assert seg.backend.embedded <= 24 - 3  # slices are embedded only where propagation reaches
    # the centre slice gets the in-plane box, the others boxes around the previous mask
    assert seg.backend.boxes_seen[0] == (4.0, 2.0, 36.0, 38.0)
    assert all(b[1] >= 2.0 and b[3] <= 38.0 for b in seg.backend.boxes_seen)


def test_logits_outside_reached_slices_are_negative(seg) -> None:
    logits = seg.predict(box=(3, 4, 2, 22, 36, 38), return_logits=True)
    assert logits.dtype == torch.float32 and logits.shape == (24, 40, 40)
    assert float(logits[:5].max()) < 0 and float(logits[19:].max()) < 0


def test_points_correct_the_slice_they_lie_on(seg) -> None:
    base = seg.predict(box=(3, 4, 2, 22, 36, 38))
    z = 12
    i, j = (int(v) for v in torch.nonzero(base[z])[0])
    fixed = seg.predict(box=(3, 4, 2, 22, 36, 38), points=[(z, i, j)], labels=[0])
    assert not fixed[z, i, j] and base[z, i, j]
    assert torch.equal(fixed[:z], base[:z]) and torch.equal(fixed[z + 1:], base[z + 1:])
    # a click on a slice propagation never reached is honoured too
    extra = seg.predict(box=(3, 4, 2, 22, 36, 38), points=[(21, 5, 5)], labels=[1])
    assert extra[21, 5, 5] and not base[21].any()


def test_points_only_segment_their_slices(seg) -> None:
    m = seg.predict(points=[(6, 30, 6)])
    assert m[6, 30, 6] and int(m[:6].sum()) == 0 and int(m[7:].sum()) == 0


def test_several_3d_boxes_give_a_label_map(seg) -> None:
    labels = seg.predict(box=[(3, 4, 2, 22, 36, 38), (5, 27, 3, 8, 35, 11)])
    assert labels.dtype == torch.int32 and set(labels.unique().tolist()) == {0, 1, 2}
    assert int((labels == 2).sum()) == 3 * 6 * 6


@pytest.mark.parametrize("box, message", [
    ((3, 4, 2, 25, 36, 38), "outside the image"),
    ((3, 4, 2, 3, 36, 38), "empty box"),
    ((3, 4, 36, 38), r"\(i0, j0, k0, i1, j1, k1\)"),
])
def test_3d_box_validation(seg, box, message) -> None:
    with pytest.raises(ValueError, match=message):
        seg.predict(box=box)


def test_setting_a_volume_embeds_nothing_yet() -> None:
    backend = ThresholdBackend()
    s = PromptableSegmenter(backend)
    s.set_image(np.zeros((1, 8, 16, 16), np.float32))
    assert backend.embedded == 0 and s.image_shape == (8, 16, 16)
    with pytest.raises(ValueError, match="channels"):
        s.set_image(np.zeros((2, 8, 16, 16), np.float32))
