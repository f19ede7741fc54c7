"""The dataset registry, in its own module so that the dataset families can import it."""

from dlrun.registry import Registry

DATASETS = Registry("dataset")
