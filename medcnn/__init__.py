"""medcnn: deep learning on medical images (CT/MRI volumes, chest X-rays) on PyTorch and MONAI.

Public API (stable names, DESIGN §3)::

    img = medcnn.load("scan.nii.gz", spacing=1.5, orientation="RAS")   # MetaTensor (C, *spatial)
    medcnn.save(mask, "mask.nii.gz", like=img)                          # back on the file's grid
"""

from __future__ import annotations

import logging

from medcnn._version import __version__
from medcnn.errors import ConfigError, InputError, MedcnnError
from medcnn.io import load, save

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["ConfigError", "InputError", "MedcnnError", "__version__", "load", "save"]
