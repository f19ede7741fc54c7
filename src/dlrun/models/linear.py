"""Linear and polynomial regression models (course 1 §5.1-5.2, §6)."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.models.sequence import refuse_tokens


@MODELS.register("linear")
def build_linear(info: DataInfo, out_features: int, bias: bool = True) -> nn.Module:
    """Y = WᵀX + B: one fully-connected layer, no activation."""
    refuse_tokens(info, "linear")
    return nn.Sequential(nn.Flatten(), nn.Linear(info.input_dim, out_features, bias=bias))


BASES = ("legendre", "monomial")


class PolynomialFeatures(nn.Module):
    """Degree-1..d features of each input (no cross terms): x^k, or the Legendre polynomials P_k(x).

    Both span the same polynomials of degree d. On [-1, 1] the monomials x^k are nearly
    collinear for large k, so gradient descent needs far more steps to reach the least-squares
    fit; the Legendre polynomials are orthogonal there, so it gets there quickly.
    """

    def __init__(self, degree: int, basis: str = "monomial") -> None:
        super().__init__()
        self.degree = degree
        self.basis = basis
        self.register_buffer("powers", torch.arange(1, degree + 1, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).unsqueeze(-1)
        if self.basis == "monomial":
            return (x ** self.powers.to(x.dtype)).flatten(1)
        # Bonnet's recursion: (n+1) P_{n+1} = (2n+1) x P_n - n P_{n-1}
        terms = [torch.ones_like(x), x]
        for n in range(1, self.degree):
            terms.append(((2 * n + 1) * x * terms[n] - n * terms[n - 1]) / (n + 1))
        return torch.cat(terms[1:self.degree + 1], dim=-1).flatten(1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, basis={self.basis}"


@MODELS.register("polynomial")
def build_polynomial(info: DataInfo, out_features: int, degree: int = 3, basis: str = "legendre") -> nn.Module:
    """A degree-d polynomial of the inputs: d·inputs features feeding a linear layer.

    Its cost: d·inputs + 1 parameters per output, all learned by gradient descent.
    """
    refuse_tokens(info, "polynomial")
    if degree < 1:
        raise ConfigError(f"'model.degree={degree}' must be at least 1.", key="model.degree")
    if basis not in BASES:
        raise ConfigError(f"'model.basis={basis}' must be one of {', '.join(BASES)}.", key="model.basis")
    return nn.Sequential(PolynomialFeatures(degree, basis), nn.Linear(info.input_dim * degree, out_features))
