"""The multi-layer perceptron: fully-connected layers with activations (course 1 §5.3, course 2)."""

from __future__ import annotations

import math

from torch import nn

from dlrun.components.activations import ACTIVATIONS, activation_width_factor
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.models.sequence import refuse_tokens


@MODELS.register("mlp")
def build_mlp(
    info: DataInfo,
    out_features: int,
    hidden: list[int] = (128, 64),
    activation: str = "relu",
    negative_slope: float = 0.1,
    pieces: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
    output_bias: bool = True,
    alpha: float = 1.0,
) -> nn.Module:
    """INPUT -> [FC -> (BN) -> ACT -> (DROPOUT)] * len(hidden) -> FC."""
    refuse_tokens(info, "mlp")
    if any(h < 1 for h in hidden):
        raise ConfigError(f"'model.hidden={list(hidden)}' must list positive layer widths, e.g. [128, 64].",
                          key="model.hidden")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"'model.dropout={dropout}' must be in [0, 1).", key="model.dropout")
    if not 0.0 <= alpha < math.inf:  # NaN fails too
        raise ConfigError(f"'model.alpha={alpha}' must be 0 or more (ELU's α in α(eˣ - 1) for x < 0), e.g. 1.0.",
                          key="model.alpha")
    if activation == "maxout" and pieces < 2:
        raise ConfigError(f"'model.pieces={pieces}' must be at least 2 for maxout.", key="model.pieces")
    ACTIVATIONS.get(activation, "model.activation")
    act_kwargs = {"leaky_relu": {"negative_slope": negative_slope}, "maxout": {"pieces": pieces},
                  "elu": {"alpha": alpha}}.get(activation, {})
    factor = activation_width_factor(activation, pieces)
    layers: list[nn.Module] = [nn.Flatten()]
    width = info.input_dim
    for h in hidden:
        layers.append(nn.Linear(width, h * factor))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h * factor))
        layers.append(ACTIVATIONS.build({"name": activation, **act_kwargs}, key="model.activation"))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    # output_bias=false is the course's S = W³a² (course 2 §1.2): 16 parameters for 3 inputs and hidden [2, 2].
    layers.append(nn.Linear(width, out_features, bias=output_bias))
    return nn.Sequential(*layers)
