"""Activation functions of course 2 §2, by name."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.registry import Registry

ACTIVATIONS = Registry("activation")


class Step(nn.Module):
    """The first neuron's threshold: 1 if x > 0 else 0 (course 1 §5.3).

    Its gradient is zero almost everywhere, so gradient descent cannot train the layers
    before it: it is here to show why smooth activations are needed.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)


class Maxout(nn.Module):
    """max(w1ᵀx + b1, ..., wkᵀx + bk): the layer before it gives k pieces per unit (course 2 §2)."""

    def __init__(self, pieces: int = 2) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (x.shape[1] // self.pieces, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


@ACTIVATIONS.register("sigmoid")
def sigmoid() -> nn.Module:
    return nn.Sigmoid()


@ACTIVATIONS.register("tanh")
def tanh() -> nn.Module:
    return nn.Tanh()


@ACTIVATIONS.register("relu")
def relu() -> nn.Module:
    return nn.ReLU()


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(negative_slope: float = 0.1) -> nn.Module:
    # The course writes leaky ReLU as max(0.1x, x); PyTorch's default slope is 0.01.
    return nn.LeakyReLU(negative_slope)


@ACTIVATIONS.register("elu")
def elu(alpha: float = 1.0) -> nn.Module:
    return nn.ELU(alpha)


@ACTIVATIONS.register("gelu")
def gelu() -> nn.Module:
    return nn.GELU()


@ACTIVATIONS.register("identity")
def identity() -> nn.Module:
    # No non-linearity at all: stacked linear layers then compute one linear map, however deep (course 1 §5.2).
    return nn.Identity()


@ACTIVATIONS.register("maxout")
def maxout(pieces: int = 2) -> nn.Module:
    return Maxout(pieces)


@ACTIVATIONS.register("step")
def step() -> nn.Module:
    return Step()


def activation_width_factor(name: str, pieces: int = 2) -> int:
    """How many pre-activations each unit needs: k for maxout, 1 otherwise."""
    return pieces if name == "maxout" else 1
