"""medcnn: deep learning on medical images (CT/MRI volumes, chest X-rays) on PyTorch and MONAI.

Public API (stable names, DESIGN §3)::

    img = medcnn.load("scan.nii.gz", spacing=1.5, orientation="RAS")   # MetaTensor (C, *spatial)
    medcnn.save(mask, "mask.nii.gz", like=img)                          # back on the file's grid
    model = medcnn.load_model("brain-tumor"); pred = model.predict(img)   # labels on img's grid
    out = medcnn.sliding_window_inference(x, roi_size, sw_batch_size, predictor)  # MONAI drop-in
"""

from __future__ import annotations

import logging

from medcnn._version import __version__
from medcnn.errors import ConfigError, InputError, MedcnnError
from medcnn.inference import sliding_window_inference
from medcnn.io import load, save
from medcnn.predictor import Model, load_model
from medcnn.prompt import PromptableSegmenter

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConfigError", "InputError", "MedcnnError", "Model", "PromptableSegmenter", "__version__", "load", "load_model", "save",
    "sliding_window_inference",
]
