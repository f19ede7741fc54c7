"""The per-batch step between the data held on the device and the model: the fast path for images."""

from __future__ import annotations

import torch

from dlrun.components.augment import Augment
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError


def as_is(x: torch.Tensor, train: bool = False) -> torch.Tensor:
    """No preparation: what a loop or an evaluation uses when it is given no Prepare."""
    return x


class Prepare:
    """Make a batch ready for the model, on the training device.

    uint8 images -> pixels in 0..1 -> augmentation (training only, course 3 §4.1) -> standardised per
    channel with the training split's statistics. Keeping images as uint8 until here holds a dataset in
    a quarter of the memory and costs one multiply-add per batch. Float data (tabular, digits) passes
    through, augmented in training when asked.
    """

    def __init__(self, info: DataInfo, augment: Augment | None, device: torch.device) -> None:
        if augment is not None and len(info.input_shape) != 3:
            raise ConfigError(f"Augmentation {augment!r} works on images (channels, height, width), but dataset "
                              f"'{info.name}' gives inputs of shape {tuple(info.input_shape)}. Use augmentation=none.",
                              key="augmentation")
        self.augment = augment
        self.uint8 = info.pixel_mean is not None
        if self.uint8:
            mean = torch.tensor(info.pixel_mean, device=device).view(1, -1, 1, 1)
            std = torch.tensor(info.pixel_std, device=device).view(1, -1, 1, 1)
            self.mean, self.std = mean, std
            self.scale, self.shift = 1.0 / (255.0 * std), -mean / std  # (x/255 - mean)/std as x·scale + shift

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """The batch the model sees; augmented only when train is true."""
        if train and self.augment is not None:
            return self.standardise(self.augment(self.pixels(x)))
        if self.uint8 and x.dtype == torch.uint8:
            return x.float().mul_(self.scale).add_(self.shift)  # float() made a new tensor: safe to work in place
        return self.standardise(x)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as pixels in 0..1 (float data as it is): what augmentation works on."""
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in 0..1 -> zero mean, unit variance per channel (course 2 §3.3); float data as it is."""
        return (x - self.mean) / self.std if self.uint8 else x

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        """Undo standardise(), to show a prepared batch as an image."""
        return x * self.std + self.mean if self.uint8 else x
