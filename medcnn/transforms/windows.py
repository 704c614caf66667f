"""Named CT intensity windows, shared by the model-grid preprocessing and the MONAI presets."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["CT_WINDOWS"]

CT_WINDOWS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        # (low, high) in HU from the usual radiology (level L, width W): low = L - W/2, high = L + W/2.
        "soft_tissue": (-160.0, 240.0),  # L 40, W 400
        "lung": (-1350.0, 150.0),  # L -600, W 1500
        "bone": (-450.0, 1050.0),  # L 300, W 1500 (the values training and prediction have always used)
        "brain": (0.0, 80.0),  # L 40, W 80
    }
)
"""Named CT windows, ``name -> (low HU, high HU)``; read-only."""
