"""Explaining classification networks: saliency maps (Grad-CAM, occlusion sensitivity) in 2D and 3D.

    from medcnn.explain import grad_cam, occlusion_sensitivity
    heat = grad_cam(model.network, x, class_index=1)          # (*spatial) in [0, 1]

For a map on the grid of the image file use :meth:`medcnn.predictor.Model.saliency`.
"""

from __future__ import annotations

from medcnn.explain.saliency import default_target_layer, grad_cam, occlusion_sensitivity

__all__ = ["default_target_layer", "grad_cam", "occlusion_sensitivity"]
