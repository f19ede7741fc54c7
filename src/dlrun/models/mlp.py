"""The multi-layer perceptron: fully-connected layers with activations (course 1 §5.3, course 2)."""

from __future__ import annotations

import math

from torch import nn

from dlrun.components.activations import ACTIVATIONS, activation_width_factor
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.models.sequence import refuse_tokens

NORMS = ("none", "batch", "layer")


def norm_choice(norm: str, batch_norm: bool) -> str:
    """model.norm, with model.batch_norm=true (the older spelling) read as norm=batch; a clash is refused."""
    if norm not in NORMS:
        raise ConfigError(f"'model.norm={norm}' is not a normalisation dl-run knows; valid: {', '.join(NORMS)} "
                          f"(batch: over the batch, course 2 §3.3; layer: over each sample's own units).",
                          key="model.norm")
    if batch_norm and norm == "layer":
        raise ConfigError("'model.batch_norm=true' and 'model.norm=layer' ask for two normalisations: give one, "
                          "model.norm=batch or model.norm=layer (model.batch_norm=true is the older spelling of "
                          "model.norm=batch).", key="model.norm")
    return "batch" if batch_norm else norm


def dense_norm(norm: str, width: int) -> list[nn.Module]:
    """The normalisation after a fully-connected layer: batch norm standardises each unit over the batch (course 2
    §3.3); layer norm each sample over its own units (Ba et al. 2016), so it needs no batch and no running means."""
    if norm == "batch":
        return [nn.BatchNorm1d(width)]
    return [nn.LayerNorm(width)] if norm == "layer" else []


@MODELS.register("mlp")
def build_mlp(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
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
    norm: str = "none",
) -> nn.Module:
    """INPUT -> [FC -> (BN or LN) -> ACT -> (DROPOUT)] * len(hidden) -> FC."""
    refuse_tokens(info, "mlp")
    norm = norm_choice(norm, batch_norm)
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
        layers += dense_norm(norm, h * factor)
        layers.append(ACTIVATIONS.build({"name": activation, **act_kwargs}, key="model.activation"))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    # output_bias=false is the course's S = W³a² (course 2 §1.2): 16 parameters for 3 inputs and hidden [2, 2].
    layers.append(nn.Linear(width, out_features, bias=output_bias))
    return nn.Sequential(*layers)
