"""The model registry, in its own module so that the model families can import it."""

from dlrun.registry import Registry

MODELS = Registry("model")
