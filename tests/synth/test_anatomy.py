"""Vendored MNI152 maps, derived regions (medcnn.synth.anatomy) and geometry helpers (medcnn.synth.grid)."""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from medcnn.synth import anatomy as A
from medcnn.synth import grid as G

SYNTH_DIR = Path(A.__file__).resolve().parent


# --------------------------------------------------------------------------- vendored data


def test_vendored_files_and_notice_ship_in_package() -> None:
    folder = resources.files("medcnn.data").joinpath("mni152")
    for name in A.MAP_FILES.values():
        assert folder.joinpath(name).is_file()
    total = sum(Path(str(folder.joinpath(n))).stat().st_size for n in A.MAP_FILES.values())
    assert total < 1.5e6
    notice = folder.joinpath("NOTICE").read_text(encoding="utf-8")
    assert "Louis Collins" in notice and "McGill University" in notice
    assert "Permission to use, copy, modify, and distribute" in notice
    assert folder.joinpath("README.md").is_file()


def test_vendored_maps_header_and_values() -> None:
    img = A.read_vendored_map("gm")
    assert img.shape == (78, 96, 81)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 2.0)
    assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
    # MNI origin inside the grid, near its centre
    origin = np.linalg.solve(img.affine, [0, 0, 0, 1])[:3]
    assert np.all(origin > 10) and np.all(origin < np.array(img.shape) - 10)
    with pytest.raises(ValueError, match="unknown map"):
        A.read_vendored_map("csf")


def test_load_mni152_tissues_are_plausible() -> None:
    anat = A.load_mni152()
    assert anat is A.load_mni152()  # cached
    for arr in (anat.t1, anat.gm, anat.wm, anat.csf, anat.brain):
        assert arr.shape == anat.shape and arr.dtype == np.float32
        assert arr.min() >= 0 and arr.max() <= 1.0 + 1e-6
        assert not arr.flags.writeable
    # csf = clip(brain - gm - wm): the three tissues add up to the brain mask wherever it holds them
    np.testing.assert_allclose(anat.gm + anat.wm + anat.csf, np.maximum(anat.brain, anat.gm + anat.wm), atol=1e-5)
    ml = anat.voxel_ml
    assert 1200 < anat.region("brain").sum() * ml < 2300
    assert anat.gm.sum() * ml > anat.wm.sum() * ml > anat.csf.sum() * ml > 100
    # WM brighter than GM brighter than CSF on the T1 template
    t1 = anat.t1
    assert t1[anat.wm > 0.9].mean() > t1[anat.gm > 0.9].mean() > t1[(anat.csf > 0.9)].mean()


def test_regions_are_anatomically_placed() -> None:
    anat = A.load_mni152()
    assert set(A.REGION_NAMES) <= set(anat.regions)
    xyz = anat.world_coords()
    ml = anat.voxel_ml

    vent = anat.region("ventricles")
    assert 10 < vent.sum() * ml < 50
    assert anat.csf[vent].mean() > 0.5
    c = xyz[:, vent].mean(axis=1)
    assert abs(c[0]) < 5 and -30 < c[1] < 10 and 0 < c[2] < 30
    # both lateral ventricles present
    assert vent[xyz[0] < -5].sum() > 0.3 * vent.sum() and vent[xyz[0] > 5].sum() > 0.3 * vent.sum()

    hipp = anat.region("hippocampus")
    for side in (-1, 1):
        sel = hipp & (np.sign(xyz[0]) == side)
        centre = xyz[:, sel].mean(axis=1)
        assert np.linalg.norm(centre - np.array([side * 28.0, -22.0, -14.0])) < 8.0
        assert 1.0 < sel.sum() * ml < 8.0
    assert np.all(anat.region("mtl")[hipp] | ~anat.region("brain")[hipp])

    cortex = anat.region("cortex")
    assert anat.gm[cortex].mean() > 0.5
    assert not np.any(cortex & anat.region("cerebellum"))
    left, right = anat.region("left"), anat.region("right")
    assert not np.any(left & right)
    assert np.array_equal(left | right, anat.region("brain"))
    cereb = xyz[:, anat.region("cerebellum")].mean(axis=1)
    assert cereb[1] < -45 and cereb[2] < -20
    with pytest.raises(ValueError, match="ventricles"):
        anat.region("amygdala")


@pytest.mark.parametrize(
    ("point", "lobe"),
    [((-40, 30, 30), "frontal"), ((40, -55, 45), "parietal"), ((50, -20, -15), "temporal"),
     ((20, -92, 5), "occipital"), ((20, -65, -35), "cerebellum"), ((0, -28, -30), "brainstem")],
)
def test_lobe_of(point: tuple[float, float, float], lobe: str) -> None:
    assert A.lobe_of(point) == lobe
    assert A.hemisphere_of(point) == ("left" if point[0] < 0 else "right")


def test_padded_keeps_world_positions() -> None:
    anat = A.load_mni152()
    pad = anat.padded(3)
    assert pad.shape == tuple(s + 6 for s in anat.shape)
    np.testing.assert_allclose(pad.affine @ [3, 3, 3, 1], anat.affine @ [0, 0, 0, 1])
    np.testing.assert_array_equal(pad.gm[3:-3, 3:-3, 3:-3], anat.gm)
    with pytest.raises(ValueError):
        anat.padded(-1)


def test_subject_transform_identity_and_variation() -> None:
    anat = A.load_mni152()
    pts = anat.world_coords()[:, ::9, ::9, ::9]
    ident = A.identity_subject_transform(anat)
    np.testing.assert_allclose(ident(pts), pts, atol=1e-4)
    zero = A.random_subject_transform(np.random.default_rng(0), anat, scale_range=(1, 1), axis_jitter=0, displacement_mm=(0, 0))
    np.testing.assert_allclose(zero(pts), pts, atol=1e-4)
    t1 = A.random_subject_transform(np.random.default_rng(1), anat)
    t2 = A.random_subject_transform(np.random.default_rng(1), anat)
    np.testing.assert_array_equal(t1(pts), t2(pts))
    moved = np.linalg.norm(t1(pts) - pts, axis=0)
    assert 0.5 < moved.mean() < 25
    with pytest.raises(ValueError):
        A.random_subject_transform(np.random.default_rng(0), anat, scale_range=(1.1, 0.9))


def test_runtime_modules_do_not_import_nilearn() -> None:
    for name in ("anatomy.py", "grid.py", "brain_tumor.py", "alzheimer.py"):
        tree = ast.parse((SYNTH_DIR / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "nilearn" for a in node.names), name
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "nilearn", name


# --------------------------------------------------------------------------- grid helpers


def _volume(shape: tuple[int, int, int] = (5, 6, 7)) -> tuple[np.ndarray, np.ndarray]:
    vol = np.random.default_rng(0).random(shape)
    affine = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 1.5, 20], [0, 0, 0, 1]])
    return vol, affine


def test_resample_onto_own_grid_is_identity() -> None:
    vol, affine = _volume()
    grid = G.Grid(vol.shape, affine)
    np.testing.assert_allclose(G.resample(vol, affine, grid, order=1), vol, atol=1e-12)
    np.testing.assert_array_equal(G.resample(vol, affine, grid, order=0), vol)
    labels = (vol * 4).astype(np.uint8)
    out = G.resample(labels, affine, grid, order=0)
    assert out.dtype == np.uint8 and np.array_equal(out, labels)
    stack = np.stack([vol, 2 * vol]).astype(np.float32)
    np.testing.assert_allclose(G.resample(stack, affine, grid), stack, atol=1e-6)


def test_resample_permutation_and_flip_is_exact() -> None:
    vol, affine = _volume()
    k = vol.shape[2]
    # w[a, b, c] = vol[b, c, k - 1 - a]: axes permuted (k, i, j) and the new first axis flipped.
    expected = np.flip(vol.transpose(2, 0, 1), axis=0)
    index_map = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, k - 1], [0, 0, 0, 1]], dtype=float)
    grid = G.Grid(expected.shape, affine @ index_map)
    out = G.resample(vol, affine, grid, order=1)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_array_equal(G.resample(vol, affine, grid, order=0), expected)
    # the world position of a voxel is the same in both arrays
    a, b, c = 1, 2, 3
    np.testing.assert_allclose(grid.affine @ [a, b, c, 1], affine @ [b, c, k - 1 - a, 1])
    assert out[a, b, c] == pytest.approx(vol[b, c, k - 1 - a])
    assert grid.axcodes == "IRA"
    assert grid.spacing == pytest.approx((1.5, 2.0, 3.0))


def test_sample_matches_scipy_grid_constant() -> None:
    rng = np.random.default_rng(1)
    vol = rng.random((6, 5, 7))
    coords = rng.uniform(-1.5, 7.5, size=(3, 500))
    for order in (0, 1):
        for cval in (0.0, 2.5):
            ours = G.sample(vol, coords, order=order, cval=cval)
            ref = ndi.map_coordinates(vol, coords, order=order, mode="grid-constant", cval=cval)
            np.testing.assert_allclose(ours, ref, atol=1e-12)
    with pytest.raises(ValueError):
        G.sample(vol[0], coords)
    with pytest.raises(ValueError):
        G.sample(vol, coords[:2])


def test_axcodes_matrix_and_validation() -> None:
    np.testing.assert_array_equal(G.axcodes_matrix("LPS"), np.diag([-1.0, -1.0, 1.0]))
    m = G.axcodes_matrix("PIR")
    assert "".join(nib.aff2axcodes(np.block([[m, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))) == "PIR"
    assert len(G.ALL_AXCODES) == 48 and len(set(G.ALL_AXCODES)) == 48
    for bad in ("RRS", "RA", "XYZ"):
        with pytest.raises(ValueError):
            G.axcodes_matrix(bad)


def test_random_grid_covers_points_and_varies() -> None:
    pts = np.array([[-70.0, -105, -60], [72, 70, 82], [0, 0, 0], [-70, 70, -60]])
    seen = set()
    for seed in range(25):
        grid = G.random_grid(np.random.default_rng(seed), pts)
        vox = np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(grid.affine).T
        assert np.all(vox[:, :3] >= 0) and np.all(vox[:, :3] <= np.array(grid.shape) - 1)
        direction = grid.affine[:3, :3] / np.array(grid.spacing)
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)
        assert max(grid.spacing) <= 5.0 + 1e-6 and min(grid.spacing) >= 0.8
        # float32-exact so a NIfTI round trip keeps it
        np.testing.assert_array_equal(grid.affine, grid.affine.astype(np.float32).astype(np.float64))
        seen.add(grid.axcodes)
    assert len(seen) >= 5
    fixed = G.random_grid(np.random.default_rng(0), pts, spacing=(1.0, 2.0, 4.0), oriented=False, axcodes="LPS")
    assert fixed.axcodes == "LPS"
    assert fixed.spacing == pytest.approx((1.0, 2.0, 4.0))
    np.testing.assert_allclose(np.abs(fixed.affine[:3, :3]), np.diag([1.0, 2.0, 4.0]))
    with pytest.raises(ValueError):
        G.random_grid(np.random.default_rng(0), pts, spacing=-1.0)


def test_oblique_grid_rotation_is_bounded() -> None:
    pts = np.array([[-70.0, -100, -60], [70, 70, 80]])
    for seed in range(20):
        grid = G.random_grid(np.random.default_rng(seed), pts, max_rotation_deg=20.0)
        direction = grid.affine[:3, :3] / np.array(grid.spacing)
        nearest = G.axcodes_matrix(grid.axcodes)
        cos = np.clip((np.trace(nearest.T @ direction) - 1) / 2, -1, 1)
        assert np.degrees(np.arccos(cos)) <= 20.0 + 1e-3


def test_smooth_field_bias_noise_and_slice_profile() -> None:
    f = G.smooth_field(np.random.default_rng(3), (30, 40, 20), 4)
    assert f.shape == (30, 40, 20) and f.dtype == np.float32
    assert 0.4 < f.std() < 2.0
    np.testing.assert_array_equal(f, G.smooth_field(np.random.default_rng(3), (30, 40, 20), 4))
    assert np.abs(np.diff(f, axis=0)).max() < 0.5  # smooth
    assert G.smooth_field(np.random.default_rng(3), (8, 8, 8), 3, channels=2).shape == (2, 8, 8, 8)

    np.testing.assert_array_equal(G.bias_field(np.random.default_rng(0), (4, 4, 4), 0.0), 1.0)
    b = G.bias_field(np.random.default_rng(0), (20, 20, 20), 0.3)
    assert b.min() > 0 and b.std() > 0.01

    zeros = np.zeros((50, 50, 50), dtype=np.float32)
    noisy = G.rician_noise(np.random.default_rng(0), zeros, 2.0)
    assert noisy.min() >= 0
    assert noisy.mean() == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh background
    np.testing.assert_array_equal(G.rician_noise(np.random.default_rng(0), zeros + 3, 0.0), 3.0)

    iso = G.Grid((10, 10, 10), np.diag([1.0, 1.0, 1.0, 1.0]))
    assert len(G.slice_profile_offsets(iso)) == 1
    thick = G.Grid((10, 10, 10), np.diag([1.0, 4.0, 1.0, 1.0]))
    offs = np.array(G.slice_profile_offsets(thick))
    assert len(offs) == 3 and np.allclose(offs[:, [0, 2]], 0) and abs(offs[:, 1].mean()) < 1e-12


def test_save_nifti_round_trip(tmp_path: Path) -> None:
    grid = G.random_grid(np.random.default_rng(5), np.array([[-20.0, -20, -20], [20, 20, 20]]), spacing=2.0)
    arr = np.arange(np.prod(grid.shape), dtype=np.int16).reshape(grid.shape)
    path = G.save_nifti(tmp_path / "sub" / "x.nii.gz", arr, grid.affine)
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr)
    np.testing.assert_allclose(img.affine, grid.affine, atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.nii.gz"]  # no temp files left


def test_warp_zero_and_shift() -> None:
    vol = np.random.default_rng(2).random((6, 7, 8))
    np.testing.assert_allclose(G.warp(vol, np.zeros((3, *vol.shape))), vol, atol=1e-6)
    disp = np.zeros((3, *vol.shape))
    disp[1] = 1.0  # pull from j + 1
    out = G.warp(vol, disp, order=1)
    np.testing.assert_allclose(out[:, :-1], vol[:, 1:], atol=1e-6)
    assert np.all(out[:, -1] == 0)
    with pytest.raises(ValueError):
        G.warp(vol, np.zeros((3, 2, 2, 2)))
