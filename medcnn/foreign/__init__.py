"""Others' weights: MONAI bundles, plain state dicts with a named architecture, nnU-Net v2 model folders.

:func:`medcnn.load_model` dispatches here before it reads a medcnn checkpoint:

* a folder with ``configs/inference.json|yaml`` and ``models/model.pt`` -> :mod:`medcnn.foreign.monai_bundle`;
* a folder with ``plans.json``, ``dataset.json`` and ``fold_N/checkpoint_final.pth`` -> :mod:`medcnn.foreign.nnunet`;
* any weights file together with ``arch=`` -> :mod:`medcnn.foreign.state_dict`.

The first two give ``(network, config)`` that :class:`medcnn.predictor.Model` runs with medcnn's own
preprocessing; an nnU-Net folder gives a :class:`medcnn.foreign.nnunet.NnUNetModel`, which runs
nnU-Net's own preprocessing and sliding window.
"""

from __future__ import annotations

from pathlib import Path

from medcnn.foreign.common import model_config, read_model_config, read_state_dict

__all__ = ["kind_of", "model_config", "read_model_config", "read_state_dict"]


def kind_of(path: str | Path, arch: str | None = None) -> str | None:
    """Which foreign format ``path`` is: ``"monai-bundle"``, ``"nnunet"``, ``"state-dict"`` or ``None``
    (a medcnn checkpoint or a bundled name)."""
    p = Path(path)
    if arch is not None:
        return "state-dict"
    if p.is_dir():
        from medcnn.foreign.monai_bundle import is_bundle
        from medcnn.foreign.nnunet import is_model_folder

        if is_bundle(p):
            return "monai-bundle"
        if is_model_folder(p):
            return "nnunet"
    return None
