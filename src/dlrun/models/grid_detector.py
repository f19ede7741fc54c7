"""A small one-stage, YOLO-style grid detector (course 3 §5.1): a CNN whose output map is the grid."""

from __future__ import annotations

from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import image_channels
from dlrun.models.registry import MODELS


@MODELS.register("yolo")
def build_yolo(info: DataInfo, out_features: int, channels: list[int] = (16, 32, 64, 128), convs_per_stage: int = 2,
               batch_norm: bool = True) -> nn.Module:
    """Stages of 3x3 convs, max-pooled after all but the last, so an image of side W gives a grid of side
    W / 2^(stages - 1); a 1x1 conv then predicts each cell's 5 + C numbers (see dlrun.detection)."""
    in_channels, height, width = image_channels(info, "yolo")
    if info.task != "detection":
        raise ConfigError(f"'model=yolo' predicts boxes: it needs task=detection on a dataset with boxes "
                          f"(dl-run task=detection dataset=shapes), but dataset '{info.name}' is {info.task}.",
                          key="model")
    if height != width:
        raise ConfigError(f"'model=yolo' needs square images for its square grid; dataset '{info.name}' has "
                          f"{height}x{width}.", key="model")
    if not channels or any(c < 1 for c in channels) or convs_per_stage < 1:
        raise ConfigError(f"'model.channels={list(channels)}' must list positive widths, one per stage, e.g. "
                          f"[16, 32, 64, 128], and model.convs_per_stage must be at least 1.", key="model.channels")
    if height % 2 ** (len(channels) - 1):
        raise ConfigError(f"'model.channels={list(channels)}' pools {height}-pixel images {len(channels) - 1} times: "
                          f"the side must divide by {2 ** (len(channels) - 1)}. Use fewer stages or another "
                          f"dataset.image_size.", key="model.channels")
    layers: list[nn.Module] = []
    for stage, width_ in enumerate(channels):
        for _ in range(convs_per_stage):
            layers.append(nn.Conv2d(in_channels, width_, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width_))
            layers.append(nn.LeakyReLU(0.1))  # YOLO's activation
            in_channels = width_
        if stage < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
    layers.append(nn.Conv2d(in_channels, out_features, 1))
    return nn.Sequential(*layers)
