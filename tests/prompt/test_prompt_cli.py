"""``medcnn prompt`` / :func:`medcnn.prompt.apply.prompt_file`: masks on the input's own grid, 2D and 3D."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medcnn.cli.main import cli
from medcnn.prompt import PromptableSegmenter, build_sam
from medcnn.prompt.apply import prompt_file
from promptfake import ThresholdBackend


def _cylinder_nifti(path, spacing=(0.8, 0.8, 3.0)):
    """(32, 28, 12) volume with a bright cylinder along k, in an oblique-free LPS-ish affine."""
    vol = np.zeros((32, 28, 12), np.float32)
    ii, jj = np.mgrid[:32, :28]
    obj = np.zeros(vol.shape, bool)
    for k in range(3, 10):
        obj[..., k] = (ii - 14) ** 2 + (jj - 12) ** 2 <= 20
    vol[obj] = 1.0
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = (10.0, 20.0, -30.0)
    nib.save(nib.Nifti1Image(vol, aff), path)
    return obj, aff


def test_volume_mask_lands_on_the_input_grid(tmp_path) -> None:
    obj, aff = _cylinder_nifti(tmp_path / "ct.nii.gz")
    backend = ThresholdBackend()
    seg = PromptableSegmenter(backend)
    info = prompt_file(tmp_path / "ct.nii.gz", tmp_path / "out" / "cyl.nii.gz", boxes=[(6, 4, 2, 24, 22, 11)], model=seg)
    # the coarsest axis (k, 3 mm) is the slice axis: the backend saw (i, j) slices
    assert tuple(backend.image.shape) == (32, 28)
    out = nib.load(tmp_path / "out" / "cyl.nii.gz")
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)
    assert np.array_equal(np.asarray(out.dataobj) > 0, obj)
    assert info["voxels"] == int(obj.sum())
    assert info["volume_ml"] == pytest.approx(obj.sum() * 0.8 * 0.8 * 3.0 / 1000, rel=1e-3)
    assert (tmp_path / "out" / "cyl_qc.png").is_file()
    # another slice axis gives the same object here (the cylinder is straight), through other slices
    prompt_file(tmp_path / "ct.nii.gz", tmp_path / "out" / "cyl0.nii.gz", boxes=[(6, 4, 2, 24, 22, 11)], model=seg,
                slice_axis=0, qc_path="")
    assert tuple(backend.image.shape) == (28, 12)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / "cyl0.nii.gz").dataobj) > 0, obj)
    with pytest.raises(Exception, match="volume format"):
        prompt_file(tmp_path / "ct.nii.gz", tmp_path / "out" / "x.png", boxes=[(6, 4, 2, 24, 22, 11)], model=seg)


def test_png_mask_has_the_pixel_grid(tmp_path) -> None:
    img = np.zeros((50, 70), np.uint8)
    img[10:30, 20:45] = 200
    img[35:45, 50:60] = 200
    Image.fromarray(img).save(tmp_path / "x.png")
    seg = PromptableSegmenter(ThresholdBackend())
    prompt_file(tmp_path / "x.png", tmp_path / "m.png", boxes=[(5, 15, 32, 50)], model=seg)
    m = np.asarray(Image.open(tmp_path / "m.png"))
    assert m.shape == (50, 70) and set(np.unique(m).tolist()) == {0, 255}
    assert np.array_equal(m[10:30, 20:45], np.full((20, 25), 255)) and m[35:45, 50:60].max() == 0
    prompt_file(tmp_path / "x.png", tmp_path / "two.png", boxes=[(5, 15, 32, 50), (33, 48, 47, 62)], model=seg)
    two = np.asarray(Image.open(tmp_path / "two.png"))
    assert set(np.unique(two).tolist()) == {0, 1, 2} and two[40, 55] == 2


def test_cli_with_a_sam_checkpoint_and_its_errors(tmp_path) -> None:
    torch.manual_seed(0)
    tiny = build_sam("vit_b", img_size=64, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                     encoder_global_attn_indexes=(1,), window_size=3, prompt_embed_dim=32, decoder_mlp_dim=64,
                     iou_head_hidden_dim=32)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")
    _cylinder_nifti(tmp_path / "ct.nii.gz")
    runner = CliRunner()
    res = runner.invoke(cli, ["prompt", str(tmp_path / "ct.nii.gz"), "--box", "6,4,2,24,22,11", "--points", "14,12,6:0",
                              "-o", str(tmp_path / "m.nii.gz"), "--model", str(tmp_path / "tiny.pth")])
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "m.nii.gz").shape == (32, 28, 12)
    assert "object(s)" in res.output
    bad = runner.invoke(cli, ["prompt", str(tmp_path / "ct.nii.gz"), "--box", "6,4,2,40,22,11", "-o", str(tmp_path / "b.nii.gz"),
                              "--model", str(tmp_path / "tiny.pth")])
    assert bad.exit_code == 2 and "outside the image" in bad.output
    none = runner.invoke(cli, ["prompt", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "b.nii.gz")])
    assert none.exit_code == 2 and "--box" in none.output
    missing = runner.invoke(cli, ["prompt", str(tmp_path / "ct.nii.gz"), "--box", "1,1,1,5,5,5", "-o", str(tmp_path / "b.nii.gz"),
                                  "--model", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output and "medcnn-prompt" in missing.output
    # without --model: the bundled light model, mask on the input's grid
    bundled = runner.invoke(cli, ["prompt", str(tmp_path / "ct.nii.gz"), "--box", "6,4,2,24,22,11", "-o", str(tmp_path / "l.nii.gz")])
    assert bundled.exit_code == 0, bundled.output
    lab = np.asarray(nib.load(tmp_path / "l.nii.gz").dataobj)
    assert lab.shape == (32, 28, 12) and lab.any() and not lab[:, :, :2].any() and not lab[:, :, 11:].any()


def test_a_mask_filling_its_box_is_reported(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A box around one disc is mostly background; a box whose mask fills it (here a bright slab that
    runs past the box, like two touching lesions) gets a warning naming the box."""
    img = np.zeros((60, 80), np.uint8)
    ii, jj = np.mgrid[:60, :80]
    img[(ii - 20) ** 2 + (jj - 20) ** 2 <= 100] = 200   # a disc of radius 10
    img[40:58, 30:78] = 200                              # a slab
    Image.fromarray(img).save(tmp_path / "x.png")
    seg = PromptableSegmenter(ThresholdBackend())
    with caplog.at_level("WARNING", logger="medcnn.prompt.apply"):
        info = prompt_file(tmp_path / "x.png", tmp_path / "m.png", boxes=[(10, 10, 31, 31), (42, 35, 56, 70)], model=seg)
    assert info["box_fill"][0] == pytest.approx(317 / 441, abs=0.01)   # the disc's pixels over the box's
    assert info["box_fill"][1] == 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "fills 100 % of box 2" in warned[0]


def test_exact_box_keeps_the_mask_in_the_box_2d_and_3d(tmp_path) -> None:
    obj, _ = _cylinder_nifti(tmp_path / "ct.nii.gz")
    seg = PromptableSegmenter(ThresholdBackend())
    # a foreground click on slice k=1, outside the box's slices 2..10
    args = dict(boxes=[(6, 4, 2, 24, 22, 11)], points=[(14, 12, 1)], labels=[1], model=seg, qc_path="")
    prompt_file(tmp_path / "ct.nii.gz", tmp_path / "drawn.nii.gz", **args)
    prompt_file(tmp_path / "ct.nii.gz", tmp_path / "exact.nii.gz", exact_box=True, **args)
    drawn = np.asarray(nib.load(tmp_path / "drawn.nii.gz").dataobj) > 0
    exact = np.asarray(nib.load(tmp_path / "exact.nii.gz").dataobj) > 0
    assert drawn[14, 12, 1] and not exact[:, :, :2].any() and np.array_equal(exact, obj)
    # the CLI, bundled model, 2D: a disc in an exact box; the mask never leaves the box
    img = np.zeros((64, 64), np.uint8)
    ii, jj = np.mgrid[:64, :64]
    img[(ii - 30) ** 2 + (jj - 34) ** 2 <= 100] = 220
    Image.fromarray(img).save(tmp_path / "disc.png")
    res = CliRunner().invoke(cli, ["prompt", str(tmp_path / "disc.png"), "--box", "20,24,41,45", "--exact-box",
                                   "-o", str(tmp_path / "disc_mask.png")])
    assert res.exit_code == 0, res.output
    m = np.asarray(Image.open(tmp_path / "disc_mask.png")) > 0
    ref = img > 0
    assert not m[:20].any() and not m[41:].any() and not m[:, :24].any() and not m[:, 45:].any()
    assert 2 * (m & ref).sum() / (m.sum() + ref.sum()) > 0.9
    bad = CliRunner().invoke(cli, ["prompt", str(tmp_path / "disc.png"), "--points", "30,34", "--exact-box",
                                   "-o", str(tmp_path / "b.png")])
    assert bad.exit_code == 2 and "--exact-box" in bad.output
