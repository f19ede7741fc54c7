"""Synthetic datasets generated from a seed: nothing to download (course 1 §5, §6)."""

from __future__ import annotations

import math

import numpy as np

from dlrun.data.base import Dataset, split_arrays
from dlrun.data.registry import DATASETS
from dlrun.errors import ConfigError


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"'{key}={value}' must be positive.", key=key)


@DATASETS.register("linear")
def build_linear(
    seed: int = 0,
    n_samples: int = 200,
    inputs: int = 1,
    outputs: int = 1,
    noise: float = 0.1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = False,
    x_range: list[float] = (-1.0, 1.0),
) -> Dataset:
    """y = Wx + b + noise with a known W and b (course 1 §5.1-5.2; outputs > 1 is Y = WᵀX + B)."""
    for key, value in (("n_samples", n_samples), ("inputs", inputs), ("outputs", outputs)):
        _positive(f"dataset.{key}", value)
    if len(x_range) != 2 or not x_range[0] < x_range[1]:
        raise ConfigError(f"'dataset.x_range={list(x_range)}' must be [low, high] with low < high, e.g. [0, 2].",
                          key="dataset.x_range")
    rng = np.random.default_rng(seed)
    w = rng.uniform(-2.0, 2.0, size=(inputs, outputs))
    b = rng.uniform(-1.0, 1.0, size=outputs)
    # x away from 0 (x_range=[0,2]) couples w and b: the loss surface becomes a long narrow valley (course 2 §3.1).
    x = rng.uniform(x_range[0], x_range[1], size=(n_samples, inputs))
    y = x @ w + b + noise * rng.standard_normal((n_samples, outputs))
    data = split_arrays(x, y, task="regression", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=standardize, name="linear")
    data.info.extras.update(true_weight=w.T.tolist(), true_bias=b.tolist())
    return data


def smooth_function(x: np.ndarray) -> np.ndarray:
    """The unknown relation the polynomial capacity demo tries to recover."""
    return np.sin(math.pi * x) + 0.5 * x


@DATASETS.register("polynomial")
def build_polynomial(
    seed: int = 0,
    n_samples: int = 30,
    noise: float = 0.2,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    standardize: bool = False,
) -> Dataset:
    """A few noisy samples of a smooth 1-D function, for the capacity demo (course 1 §6)."""
    _positive("dataset.n_samples", n_samples)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n_samples, 1))
    y = smooth_function(x) + noise * rng.standard_normal((n_samples, 1))
    return split_arrays(x, y, task="regression", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=standardize, name="polynomial")


@DATASETS.register("moons")
def build_moons(
    seed: int = 0,
    n_samples: int = 1000,
    noise: float = 0.2,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
) -> Dataset:
    """Two interleaving half-circles: 2-D binary classification."""
    from sklearn.datasets import make_moons

    _positive("dataset.n_samples", n_samples)
    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return split_arrays(x, y, task="classification", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=standardize, name="moons")


@DATASETS.register("spirals")
def build_spirals(
    seed: int = 0,
    n_samples: int = 1000,
    arms: int = 2,
    turns: float = 1.5,
    noise: float = 0.1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
) -> Dataset:
    """Interleaved spiral arms, one class per arm: a 2-D problem no linear model can solve."""
    _positive("dataset.n_samples", n_samples)
    if arms < 2:
        raise ConfigError(f"'dataset.arms={arms}' must be at least 2 (one class per arm).", key="dataset.arms")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % arms
    radius = rng.uniform(0.05, 1.0, size=n_samples)
    angle = 2 * math.pi * (turns * radius + labels / arms)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x += noise * radius[:, None] * rng.standard_normal(x.shape)
    return split_arrays(x, labels, task="classification", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=standardize, name="spirals")
