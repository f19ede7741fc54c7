"""dl-run: a command-line deep-learning experiment runner (Hydra configs, registries, one loop, TensorBoard)."""

__version__ = "0.1.0"
