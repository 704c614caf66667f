"""Builders of test images with known geometry (written with SimpleITK / pydicom, not medcnn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

# (name, direction builder) covering the orientation cases of the geometry matrix
def direction(kind: str, seed: int = 0) -> np.ndarray:
    if kind == "identity":
        return np.eye(3)
    if kind == "flipped":
        return np.diag([-1.0, 1.0, -1.0])
    if kind == "permuted":  # e.g. a sagittal acquisition stored with axes (y, z, x)
        return np.eye(3)[[1, 2, 0]] * np.array([1.0, -1.0, 1.0])
    if kind == "oblique":
        return Rotation.from_euler("xyz", [17.0, -23.0, 9.0], degrees=True).as_matrix()
    if kind == "oblique-permuted":
        return Rotation.from_euler("zyx", [-31.0, 12.0, 4.0], degrees=True).as_matrix() @ np.eye(3)[[2, 0, 1]]
    raise ValueError(kind)


ORIENTATIONS = ("identity", "flipped", "permuted", "oblique", "oblique-permuted")


def make_sitk(size=(23, 19, 11), spacing=(0.9, 1.3, 3.0), kind="oblique", origin=(12.5, -40.25, 7.0),
              seed: int = 0, dtype=np.float32) -> sitk.Image:
    """A SimpleITK image with smooth content and a bright blob, given ITK size (i, j, k)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")
    arr = (100 + 3 * i + 2 * j + k + rng.normal(0, 1, size[::-1])).astype(dtype)
    arr[(i - size[0] / 3) ** 2 + (j - size[1] / 2) ** 2 + (k - size[2] / 2) ** 2 < 16] += 500
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(direction(kind, seed).ravel()))
    return img


def sitk_geometry(path: Path) -> tuple:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return r.GetSize(), np.array(r.GetOrigin()), np.array(r.GetSpacing()), np.array(r.GetDirection())


def assert_same_geometry(a: tuple, b: tuple) -> None:
    assert a[0] == b[0], f"size {a[0]} != {b[0]}"
    np.testing.assert_allclose(a[1], b[1], atol=1e-4, err_msg="origin")
    np.testing.assert_allclose(a[2], b[2], rtol=1e-5, err_msg="spacing")
    np.testing.assert_allclose(a[3], b[3], atol=1e-5, err_msg="direction")


def series_geometry(folder: Path) -> tuple:
    r = sitk.ImageSeriesReader()
    names = r.GetGDCMSeriesFileNames(str(folder))
    r.SetFileNames(names)
    img = r.Execute()
    return img.GetSize(), np.array(img.GetOrigin()), np.array(img.GetSpacing()), np.array(img.GetDirection())
