"""Models: ``ClassificationModule`` (metrics, logging) and a small zoo."""

from lightning_mlcycle.models.classification import ClassificationModule, classification_metrics
from lightning_mlcycle.models.zoo import (
    MLP,
    SmallCNN,
    create_model,
    list_models,
    mobilenet_v3_small,
    register_model,
    resnet18,
)

__all__ = [
    "MLP",
    "ClassificationModule",
    "SmallCNN",
    "classification_metrics",
    "create_model",
    "list_models",
    "mobilenet_v3_small",
    "register_model",
    "resnet18",
]
