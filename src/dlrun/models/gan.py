"""Generative adversarial networks of course 3 §5.2: a generator and a discriminator, MLP or DCGAN-style conv.

The generator maps gaussian noise z to a sample in the units the data reaches the model in: pixels
through tanh to 0..1, then standardised like the real batches (uint8 images), or left in 0..1 (digits).
The discriminator gives one raw score (a logit) per sample: real or fake.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import image_channels, make_activation
from dlrun.models.flatten import Flatten
from dlrun.models.registry import MODELS
from dlrun.models.upsample import Upsample, check_upsampling_geometry


class PixelOutput(nn.Module):
    """Raw generator output -> tanh -> pixels in 0..1 -> standardised per channel as the real images are."""

    def __init__(self, info: DataInfo) -> None:
        super().__init__()
        channels = info.input_shape[0] if len(info.input_shape) == 3 else 1
        mean = torch.tensor(info.pixel_mean or (0.0,) * channels).view(1, -1, *([1] * (len(info.input_shape) - 1)))
        std = torch.tensor(info.pixel_std or (1.0,) * channels).view_as(mean)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((torch.tanh(x) + 1) / 2 - self.mean) / self.std


class GAN(nn.Module):
    """The two players; task=gan trains them with one optimizer each, in turns."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.generator, self.discriminator, self.latent_dim = generator, discriminator, latent_dim

    def sample(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """n samples from fresh noise (or from `generator`'s, for a fixed grid)."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=device or self.device_())
        return self.generator(z)

    def device_(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's scores of x; the generator runs too on zeros, so the summary lists both."""
        self.generator(torch.zeros(len(x), self.latent_dim, device=x.device))
        return self.discriminator(x)


def refuse_other_tasks(info: DataInfo, model: str) -> None:
    if info.task != "gan":
        raise ConfigError(f"'model={model}' is a generator and a discriminator: it trains only with task=gan, "
                          f"e.g. dl-run task=gan dataset={info.name or 'digits'} model={model}.", key="model")


def _check(latent_dim: int, widths: list[int], key: str) -> None:
    if latent_dim < 1:
        raise ConfigError(f"'model.latent_dim={latent_dim}' must be a positive integer, e.g. 32.",
                          key="model.latent_dim")
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"'model.{key}={list(widths)}' must list positive widths, e.g. [128, 256].",
                          key=f"model.{key}")


def _pixels(info: DataInfo) -> bool:
    """Image data whose pixels run 0..1 before standardisation: the generator ends with tanh to that range."""
    return len(info.input_shape) == 3


@MODELS.register("gan")
def build_gan(info: DataInfo, latent_dim: int = 32, hidden: list[int] = (128, 256), activation: str = "leaky_relu",
              negative_slope: float = 0.2, batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """Generator: z -> [FC -> (BN) -> ACT]*K -> FC -> the data's shape; discriminator: the mirror -> 1 logit."""
    refuse_other_tasks(info, "gan")
    _check(latent_dim, hidden, "hidden")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"'model.dropout={dropout}' must be in [0, 1).", key="model.dropout")
    act = lambda: make_activation(activation, negative_slope, 2)  # noqa: E731
    g_layers: list[nn.Module] = []
    width = latent_dim
    for h in hidden:
        g_layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm else []), act()]
        width = h
    g_layers += [nn.Linear(width, info.input_dim), nn.Unflatten(1, tuple(info.input_shape))]
    if _pixels(info):
        g_layers.append(PixelOutput(info))
    d_layers: list[nn.Module] = [nn.Flatten()]
    width = info.input_dim
    for h in hidden[::-1]:
        # No batch norm in the discriminator: it would mix real and fake statistics within a batch.
        d_layers += [nn.Linear(width, h), act(), *([nn.Dropout(dropout)] if dropout else [])]
        width = h
    d_layers.append(nn.Linear(width, 1))
    return GAN(nn.Sequential(*g_layers), nn.Sequential(*d_layers), latent_dim)


@MODELS.register("dcgan")
def build_dcgan(info: DataInfo, latent_dim: int = 32, channels: list[int] = (64, 32), upsampling: str = "transposed",
                negative_slope: float = 0.2, upsampling_kernel: int | None = None,
                upsampling_stride: int = 2) -> nn.Module:
    """DCGAN (Radford et al. 2015): z -> FC -> [UPSAMPLE -> BN -> ReLU]*M -> CONV -> image;
    discriminator: [CONV stride 2 -> LeakyReLU]*M -> FC -> 1 logit (strided convolutions, no pooling)."""
    refuse_other_tasks(info, "dcgan")
    in_channels, height, width = image_channels(info, "dcgan", "model=gan (MLPs)")
    check_upsampling_geometry(upsampling, upsampling_kernel, upsampling_stride)
    if upsampling == "unpool":
        raise ConfigError("'model.upsampling=unpool' needs an encoder's pooling indices; a generator starts from "
                          "noise and has none. Use transposed, nearest or bilinear.", key="model.upsampling")
    _check(latent_dim, channels, "channels")
    stages = len(channels)
    if min(height, width) >> stages < 1:
        raise ConfigError(f"'model.channels={list(channels)}' halves the {height}x{width} images {stages} times, "
                          f"to nothing: use at most {min(height, width).bit_length() - 1} stages.",
                          key="model.channels")
    sizes = [(height, width)]
    for _ in channels:  # the discriminator's map sizes, stride 2 with padding 1: ceil(n / 2)
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    widths = [in_channels, *channels[::-1]]  # the mirror of the generator: more kernels as the map shrinks
    d_layers: list[nn.Module] = []
    for c_in, c_out in zip(widths, widths[1:]):
        d_layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
    d_layers += [Flatten(), nn.Linear(channels[0] * sizes[-1][0] * sizes[-1][1], 1)]
    generator = _DCGenerator(info, latent_dim, list(channels), upsampling, sizes, upsampling_kernel)
    return GAN(generator, nn.Sequential(*d_layers), latent_dim)

class _DCGenerator(nn.Module):
    """z -> FC to the smallest map -> upsample stage by stage back to the image size (DCGAN's generator)."""

    def __init__(self, info: DataInfo, latent_dim: int, channels: list[int], upsampling: str,
                 sizes: list[tuple[int, int]], upsampling_kernel: int | None = None) -> None:
        super().__init__()
        self.start = (channels[0], *sizes[-1])
        self.project = nn.Sequential(nn.Linear(latent_dim, channels[0] * sizes[-1][0] * sizes[-1][1]),
                                     nn.BatchNorm1d(channels[0] * sizes[-1][0] * sizes[-1][1]), nn.ReLU())
        widths = [*channels, channels[-1]]
        self.ups = nn.ModuleList(Upsample(upsampling, a, b, kernel=upsampling_kernel)
                                 for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(b), nn.ReLU()) for b in widths[1:])
        self.sizes = sizes[-2::-1]  # the size each stage brings the map back to
        self.out = nn.Sequential(nn.Conv2d(channels[-1], info.input_shape[0], 3, padding=1), PixelOutput(info))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(len(z), *self.start)
        for up, norm, size in zip(self.ups, self.norms, self.sizes):
            h = norm(up(h, size=size))
        return self.out(h)
