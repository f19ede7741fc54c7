"""A small residual network: convolutions with skip connections (course 3 §3.1), over images or series."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import LAYERS_1D, LAYERS_2D, ConvLayers, FeaturesAsChannels, conv_input, make_activation
from dlrun.models.registry import MODELS


def _no_norm(_channels: int) -> nn.Module:
    """model.batch_norm=false: nothing where the batch normalisation was."""
    return nn.Identity()


class ResidualBlock(nn.Module):
    """y = act(F(x) + shortcut(x)): the gradient reaches earlier layers through the identity (course 3 §3.1).

    With skip=False the block is y = act(F(x)), two plain convolutions: the same depth with no shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, act: Callable[[], nn.Module],
                 layers: ConvLayers = LAYERS_2D, skip: bool = True, batch_norm: bool = True) -> None:
        super().__init__()
        norm = layers.batch_norm if batch_norm else _no_norm
        self.conv1 = layers.conv(in_channels, out_channels, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm(out_channels)
        self.act1 = act()
        self.conv2 = layers.conv(out_channels, out_channels, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(out_channels)
        # When the block changes the size or the depth, a 1x1 convolution makes the skip path fit.
        self.shortcut = None if not skip else nn.Identity() if stride == 1 and in_channels == out_channels else \
            nn.Sequential(layers.conv(in_channels, out_channels, 1, stride, bias=not batch_norm), norm(out_channels))
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y if self.shortcut is None else y + self.shortcut(x))


@MODELS.register("resnet")
def build_resnet(
    info: DataInfo,
    out_features: int,
    widths: list[int] = (16, 32, 64),
    blocks_per_stage: int = 2,
    activation: str = "relu",
    negative_slope: float = 0.1,
    dropout: float = 0.0,
    skip: bool = True,
    batch_norm: bool = True,
) -> nn.Module:
    """Stem conv -> stages of residual blocks (each later stage halves the size, widens) -> global pool -> FC; in
    2-D over images, in 1-D over series (steps x features, the features as input channels). skip=False drops every
    shortcut (identity and 1x1): a plain CNN of the same depth, to compare with (course 3 §3.1); batch_norm=False
    drops every batch normalisation, which otherwise keeps a plain network's gradients in scale (course 2 §3.3)."""
    in_channels, size = conv_input(info, "resnet")
    conv = LAYERS_1D if len(size) == 1 else LAYERS_2D
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"'model.widths={list(widths)}' must list positive widths, one per stage, e.g. [16, 32, 64].",
                          key="model.widths")
    if blocks_per_stage < 1:
        raise ConfigError(f"'model.blocks_per_stage={blocks_per_stage}' must be at least 1.",
                          key="model.blocks_per_stage")
    if activation == "maxout":
        raise ConfigError("'model.activation=maxout' changes the width of every layer and does not fit the skip "
                          "connections of model=resnet; use relu, leaky_relu, elu, gelu, tanh or sigmoid.",
                          key="model.activation")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"'model.dropout={dropout}' must be in [0, 1).", key="model.dropout")

    def act() -> nn.Module:
        return make_activation(activation, negative_slope, 2)

    layers: list[tuple[str, nn.Module]] = [("to_channels", FeaturesAsChannels())] if len(size) == 1 else []
    norm = conv.batch_norm if batch_norm else _no_norm
    layers.append(("stem", nn.Sequential(conv.conv(in_channels, widths[0], 3, 1, 1, bias=not batch_norm),
                                         norm(widths[0]), act())))
    width = widths[0]
    for s, w in enumerate(widths, start=1):
        # a stride of 2 halves the size; on a 1-step series or 1x1 map, the formula keeps it at 1 (course 3 §2.1)
        blocks = [ResidualBlock(width if b == 0 else w, w, 2 if (b == 0 and s > 1) else 1, act, conv, skip, batch_norm)
                  for b in range(blocks_per_stage)]
        layers.append((f"stage{s}", nn.Sequential(*blocks)))
        width = w
    layers += [("global_pool", conv.global_pool(1)), ("flatten", nn.Flatten())]
    if dropout > 0:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("out", nn.Linear(width, out_features)))
    return nn.Sequential(OrderedDict(layers))
