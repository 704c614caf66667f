"""Networks: a registry of MONAI-backed models (``create_model``, ``list_models``)."""

from medcnn.models.registry import (
    CompactCNN,
    create_model,
    list_models,
    model_arguments,
    model_task,
    nnunet_topology,
    register_model,
)

__all__ = ["CompactCNN", "create_model", "list_models", "model_arguments", "model_task", "nnunet_topology", "register_model"]
