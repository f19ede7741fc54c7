"""Linear and polynomial regression models (course 1 §5.1-5.2, §6)."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS


@MODELS.register("linear")
def build_linear(info: DataInfo, out_features: int, bias: bool = True) -> nn.Module:
    """Y = WᵀX + B: one fully-connected layer, no activation."""
    return nn.Sequential(nn.Flatten(), nn.Linear(info.input_dim, out_features, bias=bias))


class PolynomialFeatures(nn.Module):
    """x -> [x, x², ..., x^d] for each input feature (no cross terms)."""

    def __init__(self, degree: int) -> None:
        super().__init__()
        self.degree = degree
        self.register_buffer("powers", torch.arange(1, degree + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).unsqueeze(-1) ** self.powers).flatten(1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


@MODELS.register("polynomial")
def build_polynomial(info: DataInfo, out_features: int, degree: int = 3) -> nn.Module:
    """A degree-d polynomial of the inputs: d·inputs monomial features feeding a linear layer.

    Its cost: d·inputs + 1 parameters per output, all learned by gradient descent.
    """
    if degree < 1:
        raise ConfigError(f"'model.degree={degree}' must be at least 1.", key="model.degree")
    return nn.Sequential(PolynomialFeatures(degree), nn.Linear(info.input_dim * degree, out_features))
