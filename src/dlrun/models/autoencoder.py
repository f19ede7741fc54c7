"""Autoencoders of course 3 §5.2: an MLP and a convolutional one, and the variational autoencoder (VAE).

Each maps an input to a small code and back to the input's shape; task=reconstruction scores the output
against the clean input. `noise` > 0 makes a denoising autoencoder: gaussian noise is added to the input
in training only (the target stays clean), as a first layer, on the training device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import image_channels, make_activation
from dlrun.models.flatten import Flatten
from dlrun.models.registry import MODELS
from dlrun.models.upsample import Downsample, Upsample, check_upsampling_geometry


class VAEOutput(NamedTuple):
    """What the ELBO needs: the reconstruction, the code's mean and log-variance, and the KL term's weight."""

    reconstruction: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    beta: float


class InputNoise(nn.Module):
    """Gaussian noise of standard deviation `std` added to the input in training only (denoising autoencoder)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x) if self.training and self.std > 0 else x


def refuse_other_tasks(info: DataInfo, model: str) -> None:
    """Autoencoders reconstruct their input: any other task is refused before training."""
    if info.task != "reconstruction":
        raise ConfigError(f"'model={model}' is an autoencoder: it outputs an image of its input, which a "
                          f"{info.task} task cannot score. Use task=reconstruction, e.g. dl-run task=reconstruction "
                          f"dataset={info.name or 'digits'} model={model}.", key="model")
    if info.sequence is not None and info.sequence.tokens:
        raise ConfigError(f"'model={model}' reconstructs real-valued inputs; dataset '{info.name}' holds token ids.",
                          key="model")


def _check_common(hidden: list[int], latent_dim: int, noise: float) -> None:
    if any(h < 1 for h in hidden):
        raise ConfigError(f"'model.hidden={list(hidden)}' must list positive layer widths, e.g. [128].",
                          key="model.hidden")
    if latent_dim < 1:
        raise ConfigError(f"'model.latent_dim={latent_dim}' must be a positive integer, e.g. 16.",
                          key="model.latent_dim")
    if not 0.0 <= noise < 10.0:
        raise ConfigError(f"'model.noise={noise}' must be 0 (off) or a positive standard deviation in pixel units, "
                          f"e.g. 0.3.", key="model.noise")


def _check_stages(channels: list[int], height: int, width: int) -> None:
    """Conv stages that each halve the image: positive kernel counts, and no more stages than the image has."""
    if not channels or any(c < 1 for c in channels):
        raise ConfigError(f"'model.channels={list(channels)}' must list positive kernel counts, one per stage, "
                          f"e.g. [16, 32].", key="model.channels")
    if min(height, width) >> len(channels) < 1:
        raise ConfigError(f"'model.channels={list(channels)}' halves the {height}x{width} images {len(channels)} "
                          f"times, to nothing: use at most {min(height, width).bit_length() - 1} stages.",
                          key="model.channels")


def _check_beta(beta: float) -> None:
    if beta < 0:
        raise ConfigError(f"'model.beta={beta}' must be 0 or more (1 = the ELBO; more weighs the KL term up).",
                          key="model.beta")


def _noise_in_model_units(info: DataInfo, noise: float) -> float:
    """Pixel units -> the units the model sees (uint8 images are standardised per channel before the model)."""
    if info.pixel_std is not None:
        return noise / (sum(info.pixel_std) / len(info.pixel_std))
    return noise


def _mlp(widths: list[int], activation: str, negative_slope: float, batch_norm: bool, last_plain: bool = True
         ) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_plain and i == len(widths) - 2:
            break  # the code and the output are linear: no activation squeezes them
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(make_activation(activation, negative_slope, 2))
    return layers


class Autoencoder(nn.Module):
    """encoder(x) -> code -> decoder(code) -> x's shape."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, shape: tuple[int, ...], noise: float) -> None:
        super().__init__()
        self.noise = InputNoise(noise)
        self.encoder, self.decoder, self.shape = encoder, decoder, tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.noise(x))).reshape(len(x), *self.shape)


@MODELS.register("autoencoder")
def build_autoencoder(info: DataInfo, hidden: list[int] = (128,), latent_dim: int = 16, activation: str = "relu",
                      negative_slope: float = 0.1, batch_norm: bool = False, noise: float = 0.0) -> nn.Module:
    """INPUT -> [FC -> ACT]*K -> FC (code) -> [FC -> ACT]*K (mirrored) -> FC -> the input's shape."""
    refuse_other_tasks(info, "autoencoder")
    _check_common(hidden, latent_dim, noise)
    widths = [info.input_dim, *hidden, latent_dim]
    encoder = nn.Sequential(nn.Flatten(), *_mlp(widths, activation, negative_slope, batch_norm))
    decoder = nn.Sequential(*_mlp(widths[::-1], activation, negative_slope, batch_norm))
    return Autoencoder(encoder, decoder, info.input_shape, _noise_in_model_units(info, noise))


def _upsampling_stages(channels: list[int], upsampling: str, activation: str, negative_slope: float,
                       batch_norm: bool, kernel: int | None = None) -> tuple[nn.ModuleList, nn.ModuleList]:
    """A conv decoder's stages, mirroring the encoder's channels: the upsamplings and the (BN ->) ACT after each."""
    ups, acts = nn.ModuleList(), nn.ModuleList()
    widths = list(channels[::-1]) + [channels[0]]
    for c_from, c_to in zip(widths, widths[1:]):
        ups.append(Upsample(upsampling, c_from, c_to, kernel=kernel))
        acts.append(nn.Sequential(*([nn.BatchNorm2d(c_to)] if batch_norm else []),
                                  make_activation(activation, negative_slope, 2)))
    return ups, acts


class ConvAutoencoder(nn.Module):
    """[CONV -> ACT -> POOL]*M -> (FC code) -> [UPSAMPLE -> ACT]*M -> CONV; unpooling uses the encoder's indices."""

    def __init__(self, in_channels: int, size: tuple[int, int], channels: list[int], upsampling: str,
                 latent_dim: int | None, activation: str, negative_slope: float, batch_norm: bool,
                 noise: float, upsampling_kernel: int | None = None) -> None:
        super().__init__()
        self.noise = InputNoise(noise)
        unpool = upsampling == "unpool"
        self.encode_convs, self.pools, self.sizes = nn.ModuleList(), nn.ModuleList(), []
        c_in = in_channels
        for c in channels:
            self.encode_convs.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), *(
                [nn.BatchNorm2d(c)] if batch_norm else []), make_activation(activation, negative_slope, 2)))
            self.pools.append(Downsample(2, keep_indices=unpool))
            self.sizes.append(size)
            size, c_in = (size[0] // 2, size[1] // 2), c
        self.code_shape = (channels[-1], *size)
        flat = channels[-1] * size[0] * size[1]
        # An optional dense bottleneck: a code of latent_dim numbers instead of the last feature maps.
        self.code = (nn.Sequential(Flatten(), nn.Linear(flat, latent_dim), nn.Linear(latent_dim, flat),
                                   make_activation(activation, negative_slope, 2)) if latent_dim else None)
        self.ups, self.decode_acts = _upsampling_stages(channels, upsampling, activation, negative_slope, batch_norm,
                                                        upsampling_kernel)
        self.out = nn.Conv2d(channels[0], in_channels, 3, padding=1)  # linear: the target is the standardised input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, indices = self.noise(x), []
        for conv, pool in zip(self.encode_convs, self.pools):
            h, index = pool(conv(h))
            indices.append(index)
        if self.code is not None:
            h = self.code(h).reshape(len(x), *self.code_shape)
        for up, act, index, size in zip(self.ups, self.decode_acts, indices[::-1], self.sizes[::-1]):
            h = act(up(h, index, size))
        return self.out(h)


@MODELS.register("conv_autoencoder")
def build_conv_autoencoder(info: DataInfo, channels: list[int] = (16, 32), upsampling: str = "transposed",
                           latent_dim: int | None = None, activation: str = "relu", negative_slope: float = 0.1,
                           batch_norm: bool = False, noise: float = 0.0, upsampling_kernel: int | None = None,
                           upsampling_stride: int = 2) -> nn.Module:
    """A convolutional encoder that halves the image per stage and a decoder that upsamples it back."""
    refuse_other_tasks(info, "conv_autoencoder")
    in_channels, height, width = image_channels(info, "conv_autoencoder", "model=autoencoder")
    check_upsampling_geometry(upsampling, upsampling_kernel, upsampling_stride)
    _check_common([1], latent_dim or 1, noise)
    _check_stages(channels, height, width)
    return ConvAutoencoder(in_channels, (height, width), list(channels), upsampling, latent_dim, activation,
                           negative_slope, batch_norm, _noise_in_model_units(info, noise), upsampling_kernel)


class VAE(nn.Module):
    """encoder -> (mean, log-variance) of a gaussian code -> a sample of it -> decoder (course 3 §5.2)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, shape: tuple[int, ...], latent_dim: int,
                 beta: float, noise: float) -> None:
        super().__init__()
        self.noise = InputNoise(noise)
        self.encoder, self.decoder = encoder, decoder
        self.shape, self.latent_dim, self.beta = tuple(shape), latent_dim, beta

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> images in the input's shape (samples from the prior, traversals)."""
        return self.decoder(z).reshape(len(z), *self.shape)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mean, log_var = self.encoder(self.noise(x)).chunk(2, dim=1)
        # The reparameterisation trick: z = mean + sigma * eps keeps the sample differentiable in mean and sigma.
        # In evaluation the code is its mean, so scores and pictures do not change from one call to the next.
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        return VAEOutput(self.decode(z), mean, log_var, self.beta)


@MODELS.register("vae")
def build_vae(info: DataInfo, hidden: list[int] = (256,), latent_dim: int = 8, activation: str = "relu",
              negative_slope: float = 0.1, batch_norm: bool = False, beta: float = 1.0,
              noise: float = 0.0) -> nn.Module:
    """MLP encoder -> 2 x latent_dim (mean, log-variance) -> sampled code -> MLP decoder -> the input's shape."""
    refuse_other_tasks(info, "vae")
    _check_common(hidden, latent_dim, noise)
    _check_beta(beta)
    widths = [info.input_dim, *hidden]
    encoder = nn.Sequential(nn.Flatten(), *_mlp(widths + [2 * latent_dim], activation, negative_slope, batch_norm))
    decoder = nn.Sequential(*_mlp([latent_dim, *hidden[::-1], info.input_dim], activation, negative_slope,
                                  batch_norm))
    return VAE(encoder, decoder, info.input_shape, latent_dim, beta, _noise_in_model_units(info, noise))


class ConvDecoder(nn.Module):
    """A code -> FC -> the last feature maps -> [UPSAMPLE -> ACT]*M -> CONV: a conv VAE's decoder, which must
    work from any code (a sample of the prior too), so it has no encoder indices to unpool with."""

    def __init__(self, latent_dim: int, out_channels: int, sizes: list[tuple[int, int]], channels: list[int],
                 upsampling: str, activation: str, negative_slope: float, batch_norm: bool,
                 upsampling_kernel: int | None = None) -> None:
        super().__init__()
        self.code_shape = (channels[-1], *sizes[-1])
        self.project = nn.Sequential(nn.Linear(latent_dim, channels[-1] * sizes[-1][0] * sizes[-1][1]),
                                     make_activation(activation, negative_slope, 2))
        self.sizes = sizes[-2::-1]  # the map size each upsampling restores (odd sizes come back exactly)
        self.ups, self.acts = _upsampling_stages(channels, upsampling, activation, negative_slope, batch_norm,
                                                 upsampling_kernel)
        self.out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(len(z), *self.code_shape)
        for up, act, size in zip(self.ups, self.acts, self.sizes):
            h = act(up(h, None, size))
        return self.out(h)


@MODELS.register("conv_vae")
def build_conv_vae(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
        info: DataInfo, channels: list[int] = (32, 64), upsampling: str = "transposed", latent_dim: int = 16,
        activation: str = "relu", negative_slope: float = 0.1, batch_norm: bool = True, beta: float = 1.0,
        noise: float = 0.0, upsampling_kernel: int | None = None, upsampling_stride: int = 2) -> nn.Module:
    """[CONV -> ACT -> MAXPOOL]*M -> FC -> (mean, log-variance) -> sampled code -> FC -> [UPSAMPLE -> ACT]*M -> CONV."""
    refuse_other_tasks(info, "conv_vae")
    in_channels, height, width = image_channels(info, "conv_vae", "model=vae")
    check_upsampling_geometry(upsampling, upsampling_kernel, upsampling_stride)
    if upsampling == "unpool":
        raise ConfigError("'model.upsampling=unpool' needs the encoder's max-pool indices, which a VAE's decoder "
                          "does not have when it decodes a sample of the prior: use transposed, nearest or "
                          "bilinear.", key="model.upsampling")
    _check_common([1], latent_dim, noise)
    _check_beta(beta)
    _check_stages(channels, height, width)
    sizes, layers, c_in = [(height, width)], [], in_channels
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), *([nn.BatchNorm2d(c)] if batch_norm else []),
                   make_activation(activation, negative_slope, 2), nn.MaxPool2d(2)]
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        c_in = c
    encoder = nn.Sequential(*layers, Flatten(), nn.Linear(c_in * sizes[-1][0] * sizes[-1][1], 2 * latent_dim))
    decoder = ConvDecoder(latent_dim, in_channels, sizes, list(channels), upsampling, activation, negative_slope,
                          batch_norm, upsampling_kernel)
    return VAE(encoder, decoder, info.input_shape, latent_dim, beta, _noise_in_model_units(info, noise))
