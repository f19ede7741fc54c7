"""What a task asks of a model, as small protocols: a task never imports a model class.

A model (or its output) that has these attributes is treated as such, whichever module defines it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Variational(Protocol):
    """A variational autoencoder (course 3 §5.2): a code of latent_dim values that decode() turns into inputs."""

    latent_dim: int
    beta: float

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class VariationalOutput(Protocol):
    """What a variational model's forward returns: the reconstruction and its code's distribution."""

    reconstruction: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    beta: float


@runtime_checkable
class GeneratorAndCritic(Protocol):
    """A GAN (course 3 §5.2): a generator from latent_dim noise values, and a discriminator that scores inputs."""

    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int

    def sample(self, n: int, device: torch.device | None = None) -> torch.Tensor: ...


def unwrapped(model: nn.Module) -> nn.Module:
    """The model itself, without the output activation a loss may have appended (nn.Sequential(model, act))."""
    return model[0] if isinstance(model, nn.Sequential) and len(model) == 2 else model
