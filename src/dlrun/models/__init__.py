"""Models: one module per family, all registered in MODELS (imported here so none is missed)."""

from dlrun.models import (  # noqa: F401  (registers the builders)
    autoencoder, cnn, gan, grid_detector, linear, mlp, recurrent, resnet, tcn, torchvision_models, transfer,
    transformer, unet,
)
from dlrun.models.registry import MODELS

__all__ = ["MODELS"]
