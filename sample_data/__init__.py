"""The sample cases (installed as ``medcnn.sample_data``, so that ``medcnn demo`` and the bundled configs find
them after a plain ``pip install``)."""

from __future__ import annotations

from pathlib import Path


def sample_data_dir() -> Path:
    """Folder holding the sample cases (``brain-tumor/``, ``alzheimer/``, ``chest-xray/``, ``prompt/``, ``dicom/``)."""
    return Path(__file__).resolve().parent
