"""Models: one module per family, all registered in MODELS (imported here so none is missed)."""

from dlrun.models import cnn, linear, mlp, resnet, torchvision_models  # noqa: F401  (registers the builders)
from dlrun.models.registry import MODELS

__all__ = ["MODELS"]
