"""The convolutional network of course 3 §2: INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC, in 2-D
over images, in 1-D along the time axis of a series."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from dlrun.components.activations import ACTIVATIONS, activation_width_factor
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.fixed_kernels import fixed_kernel_weights, freeze_kernels
from dlrun.models.flatten import Flatten
from dlrun.models.geometry import conv_output_size, formula_text
from dlrun.models.mlp import dense_norm, norm_choice
from dlrun.models.registry import MODELS
from dlrun.models.sequence import SEQUENCE_MODELS

POOLS = ("max", "avg", "none")
IMAGE_DATASETS = "digits, mnist, fashion_mnist, cifar10, shapes, image_folder"
SERIES_DATASETS = "patterns, digits_rows, mnist_rows, sine, ar, sunspots, csv_timeseries"


class ConvLayers(NamedTuple):
    """The layer types of a convolutional network over 1 axis (time) or 2 (height, width)."""

    conv: type[nn.Module]
    max_pool: type[nn.Module]
    avg_pool: type[nn.Module]
    batch_norm: type[nn.Module]
    dropout: type[nn.Module]  # drops whole feature maps (course 3 §3.4)
    global_pool: type[nn.Module]


LAYERS_1D = ConvLayers(nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.BatchNorm1d, nn.Dropout1d, nn.AdaptiveAvgPool1d)
LAYERS_2D = ConvLayers(nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d, nn.Dropout2d, nn.AdaptiveAvgPool2d)


class FeaturesAsChannels(nn.Module):
    """(batch, steps, features) -> (batch, features, steps): each feature is an input channel of a 1-D
    convolution, which slides along time as a 2-D one slides across pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def image_channels(info: DataInfo, model: str, instead: str = "model=mlp") -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's images, or a ConfigError for non-image inputs that names
    `instead`, the model of the same family that takes flat inputs."""
    if len(info.input_shape) != 3:
        raise ConfigError(f"'model={model}' needs image inputs (channels, height, width), but dataset "
                          f"'{info.name}' gives inputs of shape {tuple(info.input_shape)}. Use {instead}, or an "
                          f"image dataset ({IMAGE_DATASETS}).", key="model")
    return tuple(info.input_shape)  # type: ignore[return-value]


def conv_input(info: DataInfo, model: str) -> tuple[int, tuple[int, ...]]:
    """(input channels, sizes) for a network that convolves images in 2-D or series in 1-D: an image's
    (channels, (height, width)), or a series' (features, (steps,)); a ConfigError naming what fits otherwise."""
    tokens = info.task == "seq2seq" or (info.sequence is not None and info.sequence.tokens)
    if tokens:
        raise ConfigError(
            f"'model={model}' reads numbers (an image, or a series of steps x features) and gives one output per "
            f"input, but dataset '{info.name}' maps a sequence of tokens to another sequence ({info.task}). Use a "
            f"sequence model: model={SEQUENCE_MODELS.replace(', ', ', model=').replace(' or ', ' or model=')}.",
            key="model")
    if len(info.input_shape) == 3:
        return info.input_shape[0], tuple(info.input_shape[1:])
    if len(info.input_shape) == 2:  # a sequence dataset's windows, or a user's own (steps, features) data
        steps, features = info.input_shape
        return features, (steps,)
    raise ConfigError(
        f"'model={model}' convolves images (channels, height, width) in 2-D or series (steps, features) in 1-D, "
        f"but dataset '{info.name}' gives inputs of shape {tuple(info.input_shape)}, one vector per sample. Use "
        f"model=mlp for it, or an image dataset ({IMAGE_DATASETS}) or a sequence dataset ({SERIES_DATASETS}).",
        key="model")


def make_activation(name: str, negative_slope: float, pieces: int) -> nn.Module:
    """An activation by name, with the course's options (leaky ReLU slope, maxout pieces)."""
    kwargs = {"leaky_relu": {"negative_slope": negative_slope}, "maxout": {"pieces": pieces}}.get(name, {})
    return ACTIVATIONS.build({"name": name, **kwargs}, key="model.activation")


def _check(key: str, value: float, low: float, what: str) -> None:
    if value < low:
        raise ConfigError(f"'model.{key}={value}' must be {what}.", key=f"model.{key}")


def _stages(channels: list, convs_per_stage: int) -> list[list[int]]:
    """Each stage's conv widths: an integer c is N convs of c kernels, a list names each conv's width."""
    stages = []
    for item in channels:
        widths = [item] * convs_per_stage if isinstance(item, int) else list(item)
        if not widths or any(w < 1 for w in widths):
            raise ConfigError(f"'model.channels={list(channels)}' must list positive kernel counts per stage, e.g. "
                              f"[32, 64] (N convs each) or [[32, 64]] (one stage of two convs).", key="model.channels")
        stages.append(widths)
    return stages


class ConvSettings(NamedTuple):
    """The keys every convolution stage shares, and the layer types of its dimension."""

    layers: ConvLayers
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    pool: str
    pool_size: int
    norm: str  # none, batch or layer
    dropout2d: float
    inputs: str  # the dataset's inputs in words, for the error that refuses a geometry


def _inputs_text(in_channels: int, size: tuple[int, ...]) -> str:
    if len(size) == 1:
        return f"the dataset's sequences are {size[0]} steps of {in_channels} feature{'s' * (in_channels != 1)}"
    return f"the dataset's images are {in_channels}x{size[0]}x{size[1]}"


def _shrunk_to_nothing(layer: str, where: str, size: tuple[int, ...], kernel: int, stride: int, padding: int,
                       dilation: int, advice: str) -> ConfigError:
    side = next((n for n in size if conv_output_size(n, kernel, stride, padding, dilation) < 1), size[-1])
    what, shown, symbol = (("sequence", f"{size[0]}-step", "L_out") if len(size) == 1 else
                           ("feature map", "x".join(map(str, size)), "W_out"))
    return ConfigError(
        f"The model shrinks the {what} to nothing at {where} (layer {layer}): its {shown} input gives "
        f"{symbol} = {formula_text(side, kernel, stride, padding, dilation)} (course 3 §2.1, kernel {kernel}, stride "
        f"{stride}, padding {padding}, dilation {dilation}). {advice}", key="model")


def _conv_stage(s: int, widths: list[int], in_channels: int, size: tuple[int, ...], conv: ConvSettings,
                act: Callable[[], nn.Module], factor: int) -> tuple[nn.Sequential, int, tuple[int, ...]]:
    """Stage s: [CONV -> (BN) -> ACT]*N -> POOL? -> (DROPOUT2D), each size checked by the formula; the stage, its
    output channels and sizes."""
    layers: list[tuple[str, nn.Module]] = []
    for c, kernels in enumerate(widths, start=1):
        out = tuple(conv_output_size(n, conv.kernel_size, conv.stride, conv.padding, conv.dilation) for n in size)
        if min(out) < 1:
            raise _shrunk_to_nothing(
                f"features.stage{s}.conv{c}", f"stage {s}, conv {c}", size, conv.kernel_size, conv.stride,
                conv.padding, conv.dilation, f"Use a smaller model.kernel_size, more model.padding, a smaller stride "
                                             f"or dilation, or fewer stages; {conv.inputs}.")
        layers.append((f"conv{c}", conv.layers.conv(in_channels, kernels * factor, conv.kernel_size, conv.stride,
                                                    conv.padding, conv.dilation, bias=conv.norm == "none")))
        if conv.norm == "batch":
            layers.append((f"bn{c}", conv.layers.batch_norm(kernels * factor)))
        elif conv.norm == "layer":  # layer norm of a feature map: each sample over all its channels and positions
            layers.append((f"ln{c}", nn.GroupNorm(1, kernels * factor)))
        layers.append((f"act{c}", act()))
        in_channels, size = kernels, out
    if conv.pool != "none":
        out = tuple(conv_output_size(n, conv.pool_size, conv.pool_size) for n in size)
        if min(out) < 1:
            raise _shrunk_to_nothing(
                f"features.stage{s}.pool", f"stage {s}, {conv.pool} pooling", size, conv.pool_size, conv.pool_size,
                0, 1, f"Use fewer stages, a smaller model.pool_size, or model.pool=none; {conv.inputs}.")
        pool = conv.layers.max_pool if conv.pool == "max" else conv.layers.avg_pool
        layers.append(("pool", pool(conv.pool_size)))
        size = out
    if conv.dropout2d > 0:
        layers.append(("dropout2d", conv.layers.dropout(conv.dropout2d)))  # whole feature maps (course 3 §3.4)
    return nn.Sequential(OrderedDict(layers)), in_channels, size


def _head(features: int, hidden: list[int], norm: str, dropout: float, act: Callable[[], nn.Module],
          factor: int) -> list[tuple[str, nn.Module]]:
    """[FC -> (BN or LN) -> ACT -> (DROPOUT)]*K, flattened input first, without the output layer."""
    head: list[tuple[str, nn.Module]] = [("flatten", Flatten())]
    for k, h in enumerate(hidden, start=1):
        head.append((f"fc{k}", nn.Linear(features, h * factor)))
        head += [(f"{norm[0]}n{k}", layer) for layer in dense_norm(norm, h * factor)]
        head.append((f"act{k}", act()))
        if dropout > 0:
            head.append((f"dropout{k}", nn.Dropout(dropout)))
        features = h
    return head


def _check_cnn_keys(channels: list, hidden: list[int], pool: str, dropouts: dict[str, float],
                    global_pool: bool, sizes: dict[str, tuple[int, int, str]]) -> None:
    for key, (value, low, what) in sizes.items():
        _check(key, value, low, what)
    if pool not in POOLS:
        raise ConfigError(f"'model.pool={pool}' must be one of {', '.join(POOLS)}.", key="model.pool")
    for key, p in dropouts.items():
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"'model.{key}={p}' must be in [0, 1).", key=f"model.{key}")
    if any(h < 1 for h in hidden):
        raise ConfigError(f"'model.hidden={list(hidden)}' must list positive layer widths, e.g. [128].",
                          key="model.hidden")
    if global_pool and not channels:
        raise ConfigError("'model.global_pool=true' needs at least one convolution stage in model.channels.",
                          key="model.global_pool")


@MODELS.register("cnn")
def build_cnn(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    info: DataInfo,
    out_features: int,
    channels: list[int | list[int]] = (32, 64),
    convs_per_stage: int = 1,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    pool: str = "max",
    pool_size: int = 2,
    hidden: list[int] = (128,),
    activation: str = "relu",
    negative_slope: float = 0.1,
    pieces: int = 2,
    batch_norm: bool = False,
    dropout: float = 0.0,
    dropout2d: float = 0.0,
    global_pool: bool = False,
    norm: str = "none",
    fixed_kernels: list | str | None = None,
) -> nn.Module:
    """INPUT -> [[CONV -> (BN or LN) -> ACT]*N -> POOL? -> (DROPOUT2D)]*M -> [FC -> ACT -> (DROPOUT)]*K -> FC: 2-D over
    images, 1-D over series (steps x features, the features as input channels), with the same keys."""
    in_channels, size = conv_input(info, "cnn")
    norm = norm_choice(norm, batch_norm)
    _check_cnn_keys(channels, hidden, pool, {"dropout": dropout, "dropout2d": dropout2d}, global_pool, {
        "kernel_size": (kernel_size, 1, "at least 1"), "stride": (stride, 1, "at least 1"),
        "padding": (padding, 0, "0 or more"), "dilation": (dilation, 1, "at least 1"),
        "pool_size": (pool_size, 1, "at least 1")})
    ACTIVATIONS.get(activation, "model.activation")
    factor = activation_width_factor(activation, pieces)

    def act() -> nn.Module:
        return make_activation(activation, negative_slope, pieces)

    layers = LAYERS_1D if len(size) == 1 else LAYERS_2D
    conv = ConvSettings(layers, kernel_size, stride, padding, dilation, pool, pool_size, norm, dropout2d,
                        _inputs_text(in_channels, size))
    widths_per_stage = _stages(channels, convs_per_stage)
    fixed = _fixed_first_conv(fixed_kernels, in_channels, size, kernel_size, activation, widths_per_stage)
    stages: list[tuple[str, nn.Module]] = []
    for s, widths in enumerate(widths_per_stage, start=1):
        stage, in_channels, size = _conv_stage(s, widths, in_channels, size, conv, act, factor)
        stages.append((f"stage{s}", stage))
    # global pooling: one number per feature map, so the head no longer depends on the image size or series length
    head = [("global_pool", layers.global_pool(1))] if global_pool else []
    features = in_channels if global_pool else in_channels * math.prod(size)
    head += _head(features, hidden, norm, dropout, act, factor)
    head.append(("out", nn.Linear(hidden[-1] if hidden else features, out_features)))
    parts = [("features", nn.Sequential(OrderedDict(stages))), ("head", nn.Sequential(OrderedDict(head)))]
    if len(size) == 1:  # a series comes as (batch, steps, features)
        parts.insert(0, ("to_channels", FeaturesAsChannels()))
    model = nn.Sequential(OrderedDict(parts))
    if fixed is not None:
        freeze_kernels(model.features.stage1.conv1, fixed)
    return model


def _fixed_first_conv(fixed_kernels: list | str | None, in_channels: int, size: tuple[int, ...], kernel_size: int,
                      activation: str, widths_per_stage: list[list[int]]) -> torch.Tensor | None:
    """The weight of the given first-layer kernels (course 3 §1), or None; the first conv gets one output channel
    per kernel (its width in model.channels is replaced)."""
    if fixed_kernels is None:
        return None
    if not widths_per_stage:
        raise ConfigError("'model.fixed_kernels' sets the first convolution's kernels, but model.channels=[] has "
                          "none: give at least one stage, e.g. model.channels=[32].", key="model.fixed_kernels")
    if activation == "maxout":  # maxout pairs each kernel with others of its own: no one map per given kernel
        raise ConfigError("'model.fixed_kernels' gives one feature map per kernel, which model.activation=maxout "
                          "would merge in groups: pick another activation (relu, tanh, ...).",
                          key="model.fixed_kernels")
    weight = fixed_kernel_weights(fixed_kernels, in_channels, len(size), kernel_size)
    widths_per_stage[0][0] = weight.shape[0]
    return weight
