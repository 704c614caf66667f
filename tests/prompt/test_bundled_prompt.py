"""The bundled light promptable model (``"medcnn-prompt"``) still segments held-out generated objects, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcnn.engine import load_checkpoint
from medcnn.predictor import bundled_path
from medcnn.prompt import PromptableSegmenter
from medcnn.prompt.train import object_bbox, object_ids, load_prompt_case
from medcnn.synth.prompt import make_case

pytestmark = pytest.mark.skipif(bundled_path("medcnn-prompt") is None, reason="bundled prompt model not installed")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def seg():
    torch.set_num_threads(1)
    return PromptableSegmenter.from_pretrained()


def test_checkpoint_describes_itself():
    ck = load_checkpoint(bundled_path("medcnn-prompt"))
    assert ck["task"] == "prompt" and ck["model"]["name"] == "prompt-unet"
    assert ck["prompt"]["crop_size"] == 96 and ck["metrics"]["dice_box"] > 0.85  # 0.916 on its validation images
    assert ck["prompt"]["logit_offset"] == 2.5  # the calibration chosen on those images (0.878 at offset 0)
    # stage 11: a sixth input channel tells the network a box is exact, with its own offset (chosen on the same
    # images, mirror TTA on: exact-box Dice 0.924 against 0.920 for the same boxes given as drawn)
    assert ck["prompt"]["exact_channel"] is True and ck["prompt"]["logit_offset_exact"] == 2.5
    assert ck["metrics"]["dice_box_exact"] > 0.92
    # mirror TTA over the crop's columns, both copies in one batched call (dev box Dice +0.003, ~0.5 ms per prompt)
    assert ck["inference"]["tta"] is True and ck["inference"]["tta_axes"] == [1]
    # stage 12: per-prompt offsets for drawn and exact boxes, fitted on 2000 images of two other seeds; their
    # cross-validated Dice there beat the fixed offsets (exact 0.9159 against 0.9114)
    assert set(ck["prompt"]["offset_model"]) == {"drawn", "exact"}
    fit = ck["metrics"]["offset_model_fit"]
    assert fit["objects"] > 6000 and all(fit[k]["adaptive_cv"] > fit[k]["fixed"] + 0.003 for k in ("exact", "tight", "jitter"))


def test_box_dice_on_unseen_generated_objects(seg):
    """Images from a seed used neither for training (1) nor for the reported test set (1000)."""
    import dataclasses

    fixed = PromptableSegmenter.from_pretrained()  # the same file with its fixed offsets only
    fixed.backend.spec = dataclasses.replace(fixed.backend.spec, offset_model=None, offset_model_exact=None)
    scores, exact, fixed_drawn, fixed_exact = {}, [], [], []
    for i in range(12):
        case = make_case(np.random.default_rng([4242, i, 77]))
        seg.set_image(torch.from_numpy(case["image"])[None])
        fixed.set_image(torch.from_numpy(case["image"])[None])
        for v in range(1, int(case["labels"].max()) + 1):
            ref = case["labels"] == v
            if ref.sum() < 40:
                continue
            pred = seg.predict(box=object_bbox(ref)).numpy()
            scores.setdefault(case["source"], []).append(_dice(pred, ref))
            exact.append(_dice(seg.predict(box=object_bbox(ref), exact_box=True).numpy(), ref))
            fixed_drawn.append(_dice(fixed.predict(box=object_bbox(ref)).numpy(), ref))
            fixed_exact.append(_dice(fixed.predict(box=object_bbox(ref), exact_box=True).numpy(), ref))
    allv = [x for v in scores.values() for x in v]
    # the same boxes declared exact (kept inside the box; the exact-box channel and offset): 0.896 here for the
    # shipped file (drawn 0.894; on the 893 dev objects 0.930 against 0.926)
    assert np.mean(exact) > 0.86, np.mean(exact)
    # per-prompt offsets (stage 12) against the same file's fixed offsets on these 45 objects: drawn 0.894 against
    # 0.888, exact 0.896 against 0.888
    assert np.mean(allv) > np.mean(fixed_drawn) + 0.003 and np.mean(exact) > np.mean(fixed_exact) + 0.003
    # 0.894 for the shipped file (stage 12), 0.888 for stage 11, 0.886 for stage 10, 0.885 for stage 8 with mirror TTA, 0.881 for stage 7, 0.879 for stage 6 (two residual
    # units per level), 0.877 for stage 5, 0.874 for stages 3 and 4, 0.817 for the file before those (an untrained
    # network scores about 0.3); the target is 0.92
    assert len(allv) >= 20 and np.mean(allv) > 0.84, {k: round(float(np.mean(v)), 3) for k, v in scores.items()}


def test_real_t1_structures_from_one_box_each():
    """Real MRI intensities (the vendored MNI152 T1), not the generator's synthetic contrasts."""
    from medcnn.prompt.evaluate import T1_STRUCTURES, evaluate_real_t1

    rows = evaluate_real_t1(step=6)
    mean = {k: float(np.mean([r["dice"] for r in rows if r["structure"] == k])) for k in T1_STRUCTURES}
    # shipped file (stage 11; step 6, 156 objects): brain 0.966, ventricles 0.885, all 0.905 (every 2nd slice: 0.962,
    # 0.885, 0.904); stage 10: 0.965, 0.877, 0.898; stage 8: 0.965, 0.879, 0.898; stage 7 without TTA: 0.965, 0.880, 0.896
    assert len(rows) > 100 and mean["brain"] > 0.93 and mean["ventricles"] > 0.82, mean
    assert float(np.mean([r["dice"] for r in rows])) > 0.85, mean


def test_sample_data_objects(seg, repo_root):
    scores = []
    for i in range(1, 7):
        for sl in load_prompt_case(str(repo_root / f"sample_data/prompt/images/prompt-{i:05d}.png"),
                                   str(repo_root / f"sample_data/prompt/masks/prompt-{i:05d}.png")):
            seg.set_image(sl["image"].float()[None])
            for v in object_ids(sl["label"]):
                ref = (sl["label"] == v).numpy()
                scores.append(_dice(seg.predict(box=object_bbox(ref)).numpy(), ref))
    assert np.mean(scores) > 0.85, scores


def test_3d_box_propagates_through_a_volume(seg):
    """An ellipsoid whose cross-section changes from slice to slice, in a noisy volume."""
    d, h, w = 40, 96, 96
    z, y, x = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    ell = ((z - 20) / 14) ** 2 + ((y - 50) / 25) ** 2 + ((x - 45) / 18) ** 2 <= 1
    rng = np.random.default_rng(0)
    vol = 0.3 + 0.4 * ell + 0.05 * rng.standard_normal(ell.shape)
    seg.set_image(torch.from_numpy(vol.astype(np.float32))[None])
    zz, yy, xx = np.nonzero(ell)
    box = (zz.min(), yy.min(), xx.min(), zz.max() + 1, yy.max() + 1, xx.max() + 1)
    pred = seg.predict(box=box).numpy()
    assert pred.shape == ell.shape and _dice(pred, ell) > 0.85
    assert not pred[: zz.min()].any() and not pred[zz.max() + 1:].any()  # nothing outside the box's slices


def test_evaluate_volumes_scores_the_largest_part_from_its_3d_box(tmp_path):
    import nibabel as nib

    from click.testing import CliRunner

    from medcnn.cli.main import cli
    from medcnn.prompt.evaluate import evaluate_volumes

    d, h, w = 32, 80, 80
    z, y, x = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    big = ((z - 16) / 11) ** 2 + ((y - 40) / 20) ** 2 + ((x - 34) / 15) ** 2 <= 1
    small = ((z - 6) / 3) ** 2 + ((y - 10) / 4) ** 2 + ((x - 70) / 4) ** 2 <= 1  # a second, smaller part
    vol = 0.3 + 0.4 * (big | small) + 0.05 * np.random.default_rng(1).standard_normal(big.shape)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image((big | small).astype(np.uint8), np.eye(4)), tmp_path / "seg.nii.gz")
    (tmp_path / "manifest.csv").write_text("case,image,label\nv1,img.nii.gz,seg.nii.gz\n")
    rows = evaluate_volumes(tmp_path)
    assert [r["case"] for r in rows] == ["v1"] and rows[0]["voxels"] == int(big.sum())
    assert rows[0]["dice"] > 0.85, rows  # scored against the larger part alone: the small one is not in its box
    assert CliRunner().invoke(cli, ["evaluate-run", "prompt", "--volumes", str(tmp_path), "-o", str(tmp_path / "v.csv")]).exit_code == 0
    assert (tmp_path / "v.csv").read_text().startswith("case,voxels,dice")
    assert torch.is_grad_enabled()  # the command leaves no global state behind (training tests run after it)


def test_3d_propagation_on_the_sample_tumours(repo_root):
    """Whole tumours of the three sample volumes, one exact 3D box each (FLAIR)."""
    from medcnn.prompt.evaluate import evaluate_volumes

    rows = evaluate_volumes(repo_root / "sample_data/brain-tumor")
    # 0.885 / 0.828 / 0.693 (mean 0.802; stage 8: 0.874 / 0.824 / 0.686, mean 0.795); the former rule that grew every propagated box by 10 % / 2 px let the
    # spill compound: 0.822 / 0.732 / 0.642 (mean 0.732)
    assert len(rows) == 3 and np.mean([r["dice"] for r in rows]) > 0.77, rows
