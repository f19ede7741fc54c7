"""The convolutional network of course 3 §2: INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from dlrun.components.activations import ACTIVATIONS, activation_width_factor
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.flatten import Flatten
from dlrun.models.geometry import conv_output_size, formula_text
from dlrun.models.registry import MODELS

POOLS = ("max", "avg", "none")


def image_channels(info: DataInfo, model: str, instead: str = "model=mlp") -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's images, or a ConfigError for non-image inputs that names
    `instead`, the model of the same family that takes flat inputs."""
    if len(info.input_shape) != 3:
        raise ConfigError(f"'model={model}' needs image inputs (channels, height, width), but dataset "
                          f"'{info.name}' gives inputs of shape {tuple(info.input_shape)}. Use {instead}, or an "
                          f"image dataset (digits, mnist, fashion_mnist, cifar10, shapes, image_folder).", key="model")
    return tuple(info.input_shape)  # type: ignore[return-value]


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


def _shrunk_to_nothing(layer: str, where: str, size: tuple[int, int], kernel: int, stride: int, padding: int,
                       dilation: int, advice: str) -> ConfigError:
    h, w = size
    side = h if conv_output_size(h, kernel, stride, padding, dilation) < 1 else w
    return ConfigError(
        f"The model shrinks the feature map to nothing at {where} (layer {layer}): its {h}x{w} input gives "
        f"W_out = {formula_text(side, kernel, stride, padding, dilation)} (course 3 §2.1, kernel {kernel}, stride "
        f"{stride}, padding {padding}, dilation {dilation}). {advice}", key="model")


@MODELS.register("cnn")
def build_cnn(  # noqa: PLR0913, PLR0915 - a registered builder: its parameters are the config's keys
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
) -> nn.Module:
    """INPUT -> [[CONV -> (BN) -> ACT]*N -> POOL? -> (DROPOUT2D)]*M -> [FC -> ACT -> (DROPOUT)]*K -> FC."""
    in_channels, height, width = image_channels(info, "cnn")
    for key, value, low, what in (("kernel_size", kernel_size, 1, "at least 1"), ("stride", stride, 1, "at least 1"),
                                  ("padding", padding, 0, "0 or more"), ("dilation", dilation, 1, "at least 1"),
                                  ("pool_size", pool_size, 1, "at least 1")):
        _check(key, value, low, what)
    if pool not in POOLS:
        raise ConfigError(f"'model.pool={pool}' must be one of {', '.join(POOLS)}.", key="model.pool")
    for key, p in (("dropout", dropout), ("dropout2d", dropout2d)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"'model.{key}={p}' must be in [0, 1).", key=f"model.{key}")
    if any(h < 1 for h in hidden):
        raise ConfigError(f"'model.hidden={list(hidden)}' must list positive layer widths, e.g. [128].",
                          key="model.hidden")
    if global_pool and not channels:
        raise ConfigError("'model.global_pool=true' needs at least one convolution stage in model.channels.",
                          key="model.global_pool")
    ACTIVATIONS.get(activation, "model.activation")
    factor = activation_width_factor(activation, pieces)

    stages: list[tuple[str, nn.Module]] = []
    size = (height, width)
    for s, widths in enumerate(_stages(channels, convs_per_stage), start=1):
        layers: list[tuple[str, nn.Module]] = []
        for c, kernels in enumerate(widths, start=1):
            out = tuple(conv_output_size(n, kernel_size, stride, padding, dilation) for n in size)
            if min(out) < 1:
                raise _shrunk_to_nothing(
                    f"features.stage{s}.conv{c}", f"stage {s}, conv {c}", size, kernel_size, stride, padding,
                    dilation, f"Use a smaller model.kernel_size, more model.padding, a smaller stride or dilation, "
                              f"or fewer stages; the dataset's images are {in_channels}x{height}x{width}.")
            layers.append((f"conv{c}", nn.Conv2d(in_channels, kernels * factor, kernel_size, stride, padding, dilation,
                                                 bias=not batch_norm)))
            if batch_norm:
                layers.append((f"bn{c}", nn.BatchNorm2d(kernels * factor)))
            layers.append((f"act{c}", make_activation(activation, negative_slope, pieces)))
            in_channels, size = kernels, out
        if pool != "none":
            out = tuple(conv_output_size(n, pool_size, pool_size) for n in size)
            if min(out) < 1:
                raise _shrunk_to_nothing(
                    f"features.stage{s}.pool", f"stage {s}, {pool} pooling", size, pool_size, pool_size, 0, 1,
                    f"Use fewer stages, a smaller model.pool_size, or model.pool=none; the dataset's images are "
                    f"{info.input_shape[0]}x{height}x{width}.")
            layers.append(("pool", nn.MaxPool2d(pool_size) if pool == "max" else nn.AvgPool2d(pool_size)))
            size = out
        if dropout2d > 0:
            layers.append(("dropout2d", nn.Dropout2d(dropout2d)))  # drops whole feature maps (course 3 §3.4)
        stages.append((f"stage{s}", nn.Sequential(OrderedDict(layers))))

    head: list[tuple[str, nn.Module]] = []
    if global_pool:  # one number per feature map: the head no longer depends on the image size
        head.append(("global_pool", nn.AdaptiveAvgPool2d(1)))
        features = in_channels
    else:
        features = in_channels * size[0] * size[1]
    head.append(("flatten", Flatten()))
    for k, h in enumerate(hidden, start=1):
        head.append((f"fc{k}", nn.Linear(features, h * factor)))
        if batch_norm:
            head.append((f"bn{k}", nn.BatchNorm1d(h * factor)))
        head.append((f"act{k}", make_activation(activation, negative_slope, pieces)))
        if dropout > 0:
            head.append((f"dropout{k}", nn.Dropout(dropout)))
        features = h
    head.append(("out", nn.Linear(features, out_features)))
    return nn.Sequential(OrderedDict([("features", nn.Sequential(OrderedDict(stages))),
                                      ("head", nn.Sequential(OrderedDict(head)))]))
