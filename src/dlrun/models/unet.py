"""U-Net (course 3 §5.1): an encoder/decoder with skip connections that gives every pixel a class."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import image_channels
from dlrun.models.registry import MODELS
from dlrun.models.upsample import Downsample, Upsample, check_upsampling_geometry


def conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions that keep the map's size, each followed by (BN and) ReLU."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder: conv blocks, each map halved by max-pooling. Decoder: upsample, concatenate the encoder's map of
    the same size (the skip connection: the fine detail pooling lost), conv block. A 1x1 conv scores each class."""

    def __init__(self, in_channels: int, classes: int, channels: list[int], upsampling: str, batch_norm: bool,
                 upsampling_kernel: int | None = None) -> None:
        super().__init__()
        unpool = upsampling == "unpool"
        self.encoder = nn.ModuleList()
        for width in channels:
            self.encoder.append(conv_block(in_channels, width, batch_norm))
            in_channels = width
        self.down = nn.ModuleList(Downsample(2, keep_indices=unpool) for _ in channels[:-1])
        # Max-unpooling puts values back where the pooling took them from, so its input needs the pooled map's
        # channels: a 1x1 convolution brings the deeper map down to them first.
        self.narrow = nn.ModuleList(nn.Conv2d(deep, skip, 1) if unpool else nn.Identity()
                                    for deep, skip in zip(channels[1:], channels[:-1]))
        self.up = nn.ModuleList(Upsample(upsampling, skip if unpool else deep, skip, kernel=upsampling_kernel)
                                for deep, skip in zip(channels[1:], channels[:-1]))
        self.decoder = nn.ModuleList(conv_block(2 * skip, skip, batch_norm) for skip in channels[:-1])
        self.classify = nn.Conv2d(channels[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, indices = [], []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < len(self.down):
                skips.append(x)
                x, idx = self.down[level](x)
                indices.append(idx)
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            x = self.up[level](self.narrow[level](x), indices[level], size=tuple(skip.shape[-2:]))
            x = self.decoder[level](torch.cat([skip, x], dim=1))
        return self.classify(x)


@MODELS.register("unet")
def build_unet(info: DataInfo, out_features: int, channels: list[int] = (16, 32, 64), upsampling: str = "transposed",
               batch_norm: bool = True, upsampling_kernel: int | None = None, upsampling_stride: int = 2) -> nn.Module:
    """A U-Net whose levels have `channels` kernels, deepest last; upsampling transposed|nearest|bilinear|unpool."""
    in_channels, height, width = image_channels(info, "unet")
    if info.task != "segmentation":
        raise ConfigError(f"'model=unet' gives every pixel a class: it needs task=segmentation on a dataset with "
                          f"per-pixel masks (dl-run task=segmentation dataset=shapes), but dataset '{info.name}' is "
                          f"{info.task}.", key="model")
    check_upsampling_geometry(upsampling, upsampling_kernel, upsampling_stride)
    if len(channels) < 2 or any(c < 1 for c in channels):
        raise ConfigError(f"'model.channels={list(channels)}' must list at least two positive widths, one per level, "
                          f"e.g. [16, 32, 64].", key="model.channels")
    if min(height, width) < 2 ** (len(channels) - 1):
        raise ConfigError(f"'model.channels={list(channels)}' halves the {height}x{width} images "
                          f"{len(channels) - 1} times, to nothing: use fewer levels.", key="model.channels")
    return UNet(in_channels, out_features, list(channels), upsampling, batch_norm, upsampling_kernel)
