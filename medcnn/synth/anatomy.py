"""Real brain anatomy for the synthetic generators: the vendored MNI152 2009 template.

The maps live in ``medcnn/data/mni152/`` (2 mm, cropped to the head, see its README and
NOTICE) and are read with :mod:`importlib.resources`, so they work from an installed wheel.
nilearn is *not* needed at run time.

From the T1 template and the GM/WM probability maps this module derives

- a soft brain (intracranial) mask and a CSF map, ``csf = brain - gm - wm``;
- rough region masks from tissue maps and MNI coordinates (no other atlas is available
  offline): lateral ventricles, hippocampus and medial temporal lobe, cerebral cortex, deep
  grey matter, cerebellum, brainstem, hemispheres; and
- a coarse lobe name for any MNI point (:func:`lobe_of`).

World coordinates are MNI152 millimetres, RAS+ (x right, y anterior, z superior).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi

from medcnn.synth.grid import affine_coords, sample, smooth_field

logger = logging.getLogger(__name__)

#: Package and folder holding the vendored maps.
DATA_PACKAGE = "medcnn.data"
DATA_FOLDER = "mni152"
#: File names of the vendored maps (written by ``medcnn/data/mni152/vendor.py``).
MAP_FILES: Mapping[str, str] = MappingProxyType(
    {"t1": "mni152_t1_2mm.nii.gz", "gm": "mni152_gm_2mm.nii.gz", "wm": "mni152_wm_2mm.nii.gz"}
)

#: Approximate MNI centres (mm) of structures used to build region masks.
HIPPOCAMPUS_CENTRE = (28.0, -22.0, -14.0)  # x is +/-
REGION_NAMES: tuple[str, ...] = (
    "brain",
    "cerebrum",
    "cerebellum",
    "brainstem",
    "deep_gm",
    "cortex",
    "ventricles",
    "hippocampus",
    "mtl",
    "left",
    "right",
)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue maps and region masks on one grid.

    All arrays share the grid ``(X, Y, Z)`` described by ``affine`` and are read-only.
    Instances compare and hash by identity (so derived data can be cached per anatomy).

    Attributes:
        affine: (4, 4) voxel->world (MNI mm, RAS+) affine.
        t1: (X, Y, Z) float32 T1 template intensity in [0, 1] (0 outside the brain).
        gm: (X, Y, Z) float32 grey-matter probability.
        wm: (X, Y, Z) float32 white-matter probability.
        csf: (X, Y, Z) float32 CSF probability, ``clip(brain - gm - wm, 0, 1)``.
        brain: (X, Y, Z) float32 soft intracranial mask in [0, 1].
        depth: (X, Y, Z) float32 distance (mm) from the outside of the brain mask (0 outside).
        regions: name -> (X, Y, Z) bool mask, names in :data:`REGION_NAMES`.
    """

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    depth: np.ndarray
    regions: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (X, Y, Z)."""
        return tuple(int(s) for s in self.gm.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def world_coords(self) -> np.ndarray:
        """World (MNI mm) coordinates of every voxel, shape (3, X, Y, Z) float32."""
        return affine_coords(self.affine, self.shape)

    def region(self, name: str) -> np.ndarray:
        """A region mask by name.

        Args:
            name: one of :data:`REGION_NAMES`.

        Returns:
            (X, Y, Z) bool array (read-only).

        Raises:
            ValueError: for an unknown name (the message lists the valid names).
        """
        if name not in self.regions:
            raise ValueError(f"unknown region {name!r}; valid: {', '.join(sorted(self.regions))}")
        return self.regions[name]

    def bounds_world(self, threshold: float = 0.5) -> np.ndarray:
        """Corners of the brain's bounding box in world coordinates.

        Args:
            threshold: brain-mask level defining the brain.

        Returns:
            (8, 3) RAS mm corner points.
        """
        idx = np.argwhere(self.brain > threshold)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T.astype(np.float64)
        return corners @ self.affine[:3, :3].T + self.affine[:3, 3]

    def padded(self, margin: int) -> Anatomy:
        """The same anatomy on a grid enlarged by ``margin`` voxels on every side.

        Args:
            margin: voxels added per side (>= 0).

        Returns:
            A new :class:`Anatomy` (arrays zero-padded, affine shifted).
        """
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if margin == 0:
            return self
        pad = lambda a: _readonly(np.pad(a, margin))  # noqa: E731
        affine = self.affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.full(3, float(margin))
        return replace(
            self,
            affine=_readonly(affine),
            t1=pad(self.t1),
            gm=pad(self.gm),
            wm=pad(self.wm),
            csf=pad(self.csf),
            brain=pad(self.brain),
            depth=pad(self.depth),
            regions=MappingProxyType({k: pad(v) for k, v in self.regions.items()}),
        )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def read_vendored_map(name: str) -> nib.Nifti1Image:
    """Read one vendored map with :mod:`importlib.resources`.

    Args:
        name: ``"t1"``, ``"gm"`` or ``"wm"``.

    Returns:
        The NIfTI image, fully loaded in memory.

    Raises:
        ValueError: for an unknown map name.
        FileNotFoundError: when the vendored file is missing from the installation.
    """
    if name not in MAP_FILES:
        raise ValueError(f"unknown map {name!r}; valid: {', '.join(MAP_FILES)}")
    resource = resources.files(DATA_PACKAGE).joinpath(DATA_FOLDER, MAP_FILES[name])
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"vendored MNI152 map missing: {path} (re-run medcnn/data/mni152/vendor.py)")
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        return nib.Nifti1Image(data, img.affine, img.header)


def load_mni152() -> Anatomy:
    """Load the vendored MNI152 2009 maps and derive CSF, brain mask and region masks.

    The result is cached (its arrays are read-only), so repeated calls are free.

    Returns:
        The template :class:`Anatomy` on its 2 mm grid (about 78 x 96 x 81 voxels).
    """
    return _load_cached()


@functools.lru_cache(maxsize=1)
def _load_cached() -> Anatomy:
    imgs = {name: read_vendored_map(name) for name in MAP_FILES}
    affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    for name, img in imgs.items():
        if img.shape != imgs["t1"].shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise ValueError(f"vendored map {name!r} is not on the T1 template's grid")
    t1 = np.clip(np.asarray(imgs["t1"].dataobj, dtype=np.float32), 0, 1)
    gm = np.clip(np.asarray(imgs["gm"].dataobj, dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(imgs["wm"].dataobj, dtype=np.float32), 0, 1)
    hard = ndi.binary_fill_holes((t1 > 0.02) | (gm + wm > 0.1))
    # Soften the 2 mm mask edge a little so that upsampled brains are not staircased, but
    # keep every voxel holding tissue inside.
    brain = np.maximum(ndi.gaussian_filter(hard.astype(np.float32), 0.7), np.clip(gm + wm, 0, 1))
    brain = np.clip(brain, 0, 1).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)
    regions = derive_regions(affine, gm, wm, csf, brain)
    vox_mm = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    depth = (ndi.distance_transform_edt(brain > 0.5) * vox_mm).astype(np.float32)
    logger.debug("loaded MNI152 template: shape=%s", t1.shape)
    return Anatomy(
        affine=_readonly(affine),
        t1=_readonly(t1),
        gm=_readonly(gm),
        wm=_readonly(wm),
        csf=_readonly(csf),
        brain=_readonly(brain),
        depth=_readonly(depth),
        regions=MappingProxyType({k: _readonly(v) for k, v in regions.items()}),
    )


def ellipsoid(
    xyz: np.ndarray, centre: tuple[float, float, float], radii: tuple[float, float, float], tilt_deg: float = 0.0
) -> np.ndarray:
    """Normalised ellipsoid distance (< 1 inside), optionally tilted in the sagittal (y-z) plane.

    Args:
        xyz: (3, ...) world coordinates.
        centre: (x, y, z) centre in mm.
        radii: semi-axes (rx, ry, rz) in mm (before tilt).
        tilt_deg: rotation about the x axis; positive raises the posterior end.

    Returns:
        (...) array of ``sqrt(sum(((R^T (p - c)) / r)^2))``.
    """
    x = xyz[0] - centre[0]
    y = xyz[1] - centre[1]
    z = xyz[2] - centre[2]
    t = np.deg2rad(tilt_deg)
    yr = np.cos(t) * y - np.sin(t) * z
    zr = np.sin(t) * y + np.cos(t) * z
    return np.sqrt((x / radii[0]) ** 2 + (yr / radii[1]) ** 2 + (zr / radii[2]) ** 2)


def infratentorial(xyz: np.ndarray) -> np.ndarray:
    """Rough infratentorial compartment (below the tentorium): cerebellum and lower brainstem.

    A dome-shaped approximation fitted by eye to the MNI152 2009 template: an ellipsoid for
    the cerebellum plus a column for the brainstem below the midbrain.

    Args:
        xyz: (3, ...) MNI coordinates.

    Returns:
        (...) bool array.
    """
    x, y, z = xyz
    cerebellum = ellipsoid(xyz, (0.0, -62.0, -40.0), (56.0, 36.0, 30.0)) < 1.0
    lower_stem = (np.abs(x) < 14) & (y > -45) & (y < -10) & (z < -22)
    return cerebellum | lower_stem


def derive_regions(
    affine: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, brain: np.ndarray
) -> dict[str, np.ndarray]:
    """Rough region masks from tissue maps and MNI coordinates.

    Args:
        affine: (4, 4) voxel->MNI affine.
        gm: (X, Y, Z) grey-matter probability.
        wm: (X, Y, Z) white-matter probability.
        csf: (X, Y, Z) CSF probability.
        brain: (X, Y, Z) soft brain mask.

    Returns:
        name -> (X, Y, Z) bool mask for every name in :data:`REGION_NAMES`.
    """
    xyz = affine_coords(affine, gm.shape)
    x = xyz[0]
    vox_mm = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    inside = brain > 0.5
    depth = ndi.distance_transform_edt(ndi.binary_fill_holes(inside)) * vox_mm

    infra = infratentorial(xyz) & inside
    brainstem = inside & (ellipsoid(xyz, (0.0, -26.0, -28.0), (12.0, 13.0, 30.0)) < 1) & (xyz[1] > -42)
    cerebellum = infra & ~brainstem
    infra = infra | brainstem
    deep_gm = _deep_grey_matter(xyz, gm, infra)
    ventricles = _lateral_ventricles(affine, xyz, csf, depth, infra)
    hippocampus, mtl = _medial_temporal(xyz, gm, csf, inside, infra)

    cerebrum = inside & ~infra & ~brainstem
    cortex = cerebrum & (gm > 0.3) & ~deep_gm & ~hippocampus & (depth < 45.0)
    return {
        "brain": inside,
        "cerebrum": cerebrum,
        "cerebellum": cerebellum,
        "brainstem": brainstem,
        "deep_gm": deep_gm,
        "cortex": cortex,
        "ventricles": ventricles,
        "hippocampus": hippocampus,
        "mtl": mtl,
        "left": inside & (x < 0),
        "right": inside & (x >= 0),
    }


def _deep_grey_matter(xyz: np.ndarray, gm: np.ndarray, infra: np.ndarray) -> np.ndarray:
    """Basal ganglia and thalami: grey matter in six ellipsoids, (X, Y, Z) bool (``xyz``: (3, X, Y, Z) mm)."""
    deep_zone = (
        (ellipsoid(xyz, (14, -18, 6), (10, 13, 10)) < 1)
        | (ellipsoid(xyz, (-14, -18, 6), (10, 13, 10)) < 1)
        | (ellipsoid(xyz, (22, 4, 2), (10, 20, 13)) < 1)
        | (ellipsoid(xyz, (-22, 4, 2), (10, 20, 13)) < 1)
        | (ellipsoid(xyz, (12, 12, 8), (7, 12, 12)) < 1)
        | (ellipsoid(xyz, (-12, 12, 8), (7, 12, 12)) < 1)
    )
    return deep_zone & (gm > 0.35) & ~infra


def _lateral_ventricles(affine: np.ndarray, xyz: np.ndarray, csf: np.ndarray, depth: np.ndarray,
                        infra: np.ndarray) -> np.ndarray:
    """Lateral ventricles: deep CSF connected to seeds in the ventricular bodies, (X, Y, Z) bool.

    Args:
        affine: (4, 4) voxel->MNI affine; ``xyz``: (3, X, Y, Z) MNI coordinates (mm).
        csf: (X, Y, Z) CSF probability; ``depth``: (X, Y, Z) distance to the brain surface (mm).
        infra: (X, Y, Z) bool infratentorial mask.
    """
    x, y, z = xyz
    candidate = (csf > 0.4) & (depth > 10.0) & ~infra & (z > -8) & (z < 36) & (y > -55) & (y < 40) & (np.abs(x) < 32)
    labels, _ = ndi.label(candidate)
    seeds = []
    for sx in (-1.0, 1.0):
        for sy, sz in ((10.0, 14.0), (-10.0, 20.0), (-30.0, 16.0)):
            ijk = np.round(np.linalg.solve(affine, [sx * 14.0, sy, sz, 1.0])[:3]).astype(int)
            # Search a small neighbourhood for a candidate voxel.
            lo = np.maximum(ijk - 3, 0)
            hi = np.minimum(ijk + 4, csf.shape)
            patch = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            seeds.extend(int(v) for v in np.unique(patch) if v)
    ventricles = np.isin(labels, np.unique(seeds)) if seeds else np.zeros_like(candidate)
    # Drop the midline cisterns/fissures that touch the ventricles at 2 mm.
    ventricles &= ~((np.abs(x) < 3) & ((z > 24) | (y > 30) | (y < -35)))
    return ndi.binary_opening(ventricles, iterations=1) | (ventricles & (np.abs(x) > 3))


def _medial_temporal(xyz: np.ndarray, gm: np.ndarray, csf: np.ndarray, inside: np.ndarray, infra: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Hippocampi and medial temporal lobes (both sides), each (X, Y, Z) bool (``xyz``: (3, X, Y, Z) mm)."""
    hipp_dist = np.minimum(
        ellipsoid(xyz, HIPPOCAMPUS_CENTRE, (6.0, 19.0, 6.5), tilt_deg=25.0),
        ellipsoid(xyz, (-HIPPOCAMPUS_CENTRE[0], *HIPPOCAMPUS_CENTRE[1:]), (6.0, 19.0, 6.5), tilt_deg=25.0),
    )
    hippocampus = (hipp_dist < 1.0) & (gm + 0.5 * csf > 0.3) & inside
    mtl_dist = np.minimum(
        ellipsoid(xyz, (26.0, -18.0, -18.0), (13.0, 27.0, 12.0), tilt_deg=20.0),
        ellipsoid(xyz, (-26.0, -18.0, -18.0), (13.0, 27.0, 12.0), tilt_deg=20.0),
    )
    mtl = (mtl_dist < 1.0) & inside & ~infra
    return hippocampus, mtl


def lobe_of(point: np.ndarray | tuple[float, float, float]) -> str:
    """Coarse anatomical location of an MNI point.

    Args:
        point: (3,) MNI coordinates in mm.

    Returns:
        One of ``"frontal"``, ``"parietal"``, ``"temporal"``, ``"occipital"``, ``"insula"``,
        ``"deep"`` (basal ganglia/thalamus/periventricular), ``"cerebellum"``, ``"brainstem"``.
    """
    x, y, z = (float(v) for v in point)
    p = np.array([x, y, z])[:, None]
    if ellipsoid(p, (0.0, -26.0, -28.0), (12.0, 13.0, 30.0))[0] < 1 and y > -42:
        return "brainstem"
    if infratentorial(p)[0]:
        return "cerebellum"
    ax = abs(x)
    if ax < 26 and -35 < y < 25 and -12 < z < 24:
        return "deep"
    if 28 <= ax < 42 and -25 < y < 15 and -10 < z < 20:
        return "insula"
    if y < -72 or (y < -60 and z < 10):
        return "occipital"
    if z < 5 - 0.25 * max(y + 20, 0) and ax > 25 and y < 15:
        return "temporal"
    # Central sulcus: runs from about y = -10 (lateral, low) to y = -40 (vertex).
    central = -12.0 - 0.35 * max(z, 0.0)
    return "frontal" if y > central else "parietal"


def hemisphere_of(point: np.ndarray | tuple[float, float, float]) -> str:
    """``"left"`` for x < 0, ``"right"`` otherwise (RAS+ world)."""
    return "left" if float(point[0]) < 0 else "right"


@dataclass(frozen=True)
class SubjectTransform:
    """Maps a subject's world coordinates to template (MNI) world coordinates.

    ``z = centre + linear @ (x - centre) + u(x)`` where ``u`` is a smooth displacement field in mm
    stored on the template grid (subject space and template space nearly coincide). The
    generators pull template maps through it to give every subject its own anatomy.

    Attributes:
        centre: (3,) centre of the linear part (the brain's centre), mm.
        linear: (3, 3) linear part (inverse of the subject's head scaling).
        displacement: (3, X, Y, Z) float32 smooth displacement in mm on the grid ``affine``.
        affine: (4, 4) voxel->world affine of ``displacement``.
    """

    centre: np.ndarray
    linear: np.ndarray
    displacement: np.ndarray
    affine: np.ndarray

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        """Template coordinates of subject points.

        Args:
            xyz: (3, ...) subject world coordinates, mm.

        Returns:
            (3, ...) float32 template world coordinates.
        """
        xyz = np.asarray(xyz, dtype=np.float32)
        inv = np.linalg.inv(self.affine).astype(np.float32)
        flat = xyz.reshape(3, -1)
        vox = inv[:3, :3] @ flat + inv[:3, 3:]
        u = sample(self.displacement, vox, order=1)
        lin = self.linear.astype(np.float32)
        c = self.centre.astype(np.float32)[:, None]
        out = lin @ (flat - c) + c + u
        return out.reshape(xyz.shape)

    def approx_inverse(self, points: np.ndarray) -> np.ndarray:
        """Approximate subject positions of template points (ignores the small displacement).

        Args:
            points: (N, 3) template world points.

        Returns:
            (N, 3) subject world points.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (pts - self.centre) @ np.linalg.inv(self.linear).T + self.centre


def brain_centre(anatomy: Anatomy) -> np.ndarray:
    """Centre of mass of the brain mask, world mm, shape (3,)."""
    com = np.array(ndi.center_of_mass(anatomy.brain))
    return anatomy.affine[:3, :3] @ com + anatomy.affine[:3, 3]


def random_subject_transform(
    rng: np.random.Generator,
    anatomy: Anatomy,
    *,
    scale_range: tuple[float, float] = (0.9, 1.1),
    axis_jitter: float = 0.04,
    displacement_mm: tuple[float, float] = (0.5, 3.0),
    n_ctrl: int = 5,
) -> SubjectTransform:
    """Draw a subject's anatomical variability: head scaling plus a smooth nonlinear warp.

    Args:
        rng: random generator.
        anatomy: the template (its grid carries the displacement field).
        scale_range: range of the global head-size factor (1 = template size).
        axis_jitter: extra relative size change per axis (standard deviation).
        displacement_mm: range of the standard deviation of each displacement component, mm.
        n_ctrl: control points per axis of the displacement (more = more local variation).

    Returns:
        The subject -> template transform (identity when all amplitudes are zero).
    """
    if scale_range[0] <= 0 or scale_range[1] < scale_range[0]:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    if displacement_mm[0] < 0 or displacement_mm[1] < displacement_mm[0]:
        raise ValueError(f"displacement_mm must be (low, high) with 0 <= low <= high, got {displacement_mm}")
    scale = rng.uniform(*scale_range) * np.exp(rng.normal(0.0, axis_jitter, size=3)) if axis_jitter > 0 else np.full(
        3, rng.uniform(*scale_range)
    )
    amp = float(rng.uniform(*displacement_mm))
    field = smooth_field(rng, anatomy.shape, n_ctrl, channels=3) * np.float32(amp)
    return SubjectTransform(
        centre=brain_centre(anatomy),
        linear=np.diag(1.0 / scale),
        displacement=field.astype(np.float32),
        affine=np.asarray(anatomy.affine, dtype=np.float64),
    )


def identity_subject_transform(anatomy: Anatomy) -> SubjectTransform:
    """The identity :class:`SubjectTransform` on the template grid."""
    return SubjectTransform(
        centre=brain_centre(anatomy),
        linear=np.eye(3),
        displacement=np.zeros((3, *anatomy.shape), dtype=np.float32),
        affine=np.asarray(anatomy.affine, dtype=np.float64),
    )
