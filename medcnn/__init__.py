"""medcnn: deep learning on medical images (CT/MRI volumes, chest X-rays) on PyTorch and MONAI.

Public API (stable names; tests depend on them)::

    img = medcnn.load("scan.nii.gz", spacing=1.5, orientation="RAS")   # MetaTensor (C, *spatial)
    medcnn.save(mask, "mask.nii.gz", like=img)                          # back on the file's grid
    model = medcnn.load_model("brain-tumor"); pred = model.predict(img)   # labels on img's grid
    out = medcnn.sliding_window_inference(x, roi_size, sw_batch_size, predictor)  # MONAI drop-in
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path

from medcnn._version import __version__
from medcnn.errors import ConfigError, InputError, MedcnnError
from medcnn.inference import sliding_window_inference
from medcnn.io import load, save
from medcnn.predictor import Model, load_model
from medcnn.prompt import PromptableSegmenter

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _map_source_subpackages() -> None:
    """Make a source checkout import like the installed package.

    ``pip install .`` installs the repository's top-level ``pipelines/`` and ``configs/`` as
    ``medcnn.pipelines`` / ``medcnn.configs`` (pyproject ``package-dir``). When Python runs from the
    repository root (``python -m medcnn.cli.main``, ``torchrun -m ...``), the source ``medcnn/`` folder
    shadows the installed package and those two subpackages would be missing; map them to their
    source folders in that case only (an installed or editable layout is left alone).
    """
    here = Path(__file__).resolve().parent
    for name in ("pipelines", "configs"):
        full = f"{__name__}.{name}"
        src = here.parent / name / "__init__.py"
        if full in sys.modules or (here / name / "__init__.py").exists() or not src.exists():
            continue
        finders = [f for f in sys.meta_path if f is not importlib.machinery.PathFinder and hasattr(f, "find_spec")]
        if any(f.find_spec(full, __path__) is not None for f in finders):
            continue  # an editable install maps it already
        spec = importlib.util.spec_from_file_location(full, src, submodule_search_locations=[str(src.parent)])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[__name__], name, module)  # as the import system does, so "medcnn.pipelines.x" paths resolve


_map_source_subpackages()

__all__ = [
    "ConfigError", "InputError", "MedcnnError", "Model", "PromptableSegmenter", "__version__", "load", "load_model", "save",
    "sliding_window_inference",
]
