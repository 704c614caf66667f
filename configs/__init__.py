"""Bundled YAML configs (installed as ``medcnn.configs``)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """Folder holding the bundled ``*.yaml`` configs."""
    return Path(__file__).resolve().parent
