"""Batched data augmentation, applied on the training device to whole batches (course 3 §4.1).

Every augmentation takes a batch of images (N, C, H, W) with pixels in 0..1 and returns a new batch
of the same shape; labels are untouched. Each image draws its own random parameters, with tensor
ops over the whole batch: torchvision's transforms draw one set of parameters per call, so a batch
would flip or rotate all together.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dlrun.errors import ConfigError
from dlrun.registry import Registry

AUGMENTATIONS = Registry("augmentation")

Augment = Callable[[torch.Tensor], torch.Tensor]


def _per_image(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One uniform draw per image, shaped to broadcast over (C, H, W)."""
    return torch.empty(len(x), 1, 1, 1, device=x.device).uniform_(low, high)


class Flip:
    """Mirror each image left-right (and/or upside down) with probability p."""

    def __init__(self, p: float, horizontal: bool, vertical: bool) -> None:
        self.p, self.horizontal, self.vertical = p, horizontal, vertical

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for dim, on in ((-1, self.horizontal), (-2, self.vertical)):
            if on:
                x = torch.where(_per_image(x, 0, 1) < self.p, x.flip(dim), x)
        return x

    def __repr__(self) -> str:
        return f"Flip(p={self.p}, horizontal={self.horizontal}, vertical={self.vertical})"


class Rotate:
    """Rotate each image by its own angle in [-degrees, degrees] about its centre; corners fill with 0."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        angle = torch.empty(len(x), device=x.device).uniform_(-self.degrees, self.degrees) * (math.pi / 180)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __repr__(self) -> str:
        return f"Rotate(degrees={self.degrees})"


class Scale:
    """Zoom each image in or out about its centre by its own factor in [low, high]: above 1 it grows and its edges
    are cut off, below 1 it shrinks inside a black border; the batch keeps its size."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        factor = torch.empty(len(x), device=x.device).uniform_(self.low, self.high)
        # affine_grid maps each output pixel to where it samples the input: 1/factor of the way from the centre.
        inverse, zero = 1.0 / factor, torch.zeros_like(factor)
        theta = torch.stack([torch.stack([inverse, zero, zero], 1), torch.stack([zero, inverse, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __repr__(self) -> str:
        return f"Scale(low={self.low}, high={self.high})"


class Crop:
    """Pad each image by `padding` zeros, then cut a random window of the original size (a random shift)."""

    def __init__(self, padding: int) -> None:
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))
        top = torch.randint(0, 2 * p + 1, (n, 1), device=x.device) + torch.arange(h, device=x.device)
        left = torch.randint(0, 2 * p + 1, (n, 1), device=x.device) + torch.arange(w, device=x.device)
        rows = padded.gather(2, top[:, None, :, None].expand(n, c, h, w + 2 * p))
        return rows.gather(3, left[:, None, None, :].expand(n, c, h, w))

    def __repr__(self) -> str:
        return f"Crop(padding={self.padding})"


class Noise:
    """Add gaussian noise of standard deviation std to every pixel, kept within 0..1."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.std * torch.randn_like(x)).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Noise(std={self.std})"


class Color:
    """Scale each image's brightness by a factor in [1 - brightness, 1 + brightness] and stretch its contrast
    about its mean by a factor in [1 - contrast, 1 + contrast], as torchvision's ColorJitter does."""

    def __init__(self, brightness: float, contrast: float) -> None:
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x * _per_image(x, 1 - self.brightness, 1 + self.brightness)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * _per_image(x, 1 - self.contrast, 1 + self.contrast) + mean).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Color(brightness={self.brightness}, contrast={self.contrast})"


class Compose:
    """Apply augmentations one after the other."""

    def __init__(self, steps: list[Augment]) -> None:
        self.steps = steps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.steps))})"


def _check(key: str, value: float, low: float, high: float, what: str) -> None:
    if not low <= value <= high:
        raise ConfigError(f"'augmentation.{key}={value}' must be {what}.", key=f"augmentation.{key}")


@AUGMENTATIONS.register("none")
def build_none() -> Augment | None:
    """Train on the data as it is."""
    return None


@AUGMENTATIONS.register("flip")
def build_flip(p: float = 0.5, horizontal: bool = True, vertical: bool = False) -> Augment:
    """Random mirror images."""
    _check("p", p, 0.0, 1.0, "a probability in [0, 1]")
    return Flip(p, horizontal, vertical)


@AUGMENTATIONS.register("rotate")
def build_rotate(degrees: float = 15.0) -> Augment:
    """Random rotations by up to ±degrees."""
    _check("degrees", degrees, 0.0, 180.0, "between 0 and 180")
    return Rotate(degrees)


@AUGMENTATIONS.register("scale")
def build_scale(zoom: float = 0.2) -> Augment:
    """Random zoom in and out: each image scaled by a factor in [1 - zoom, 1 + zoom] about its centre."""
    _check("zoom", zoom, 0.0, 0.9, "in [0, 0.9], e.g. 0.2 for factors 0.8 to 1.2 (a factor must stay above 0)")
    return Scale(1.0 - zoom, 1.0 + zoom)


@AUGMENTATIONS.register("crop")
def build_crop(padding: int = 4) -> Augment:
    """Random crops of the zero-padded image: shifts by up to ±padding pixels."""
    _check("padding", padding, 1, 10_000, "a positive number of pixels, e.g. 4")
    return Crop(padding)


@AUGMENTATIONS.register("noise")
def build_noise(std: float = 0.1) -> Augment:
    """Gaussian pixel noise."""
    _check("std", std, 0.0, 1.0, "between 0 and 1 (pixels run 0..1)")
    return Noise(std)


@AUGMENTATIONS.register("color")
def build_color(brightness: float = 0.2, contrast: float = 0.2) -> Augment:
    """Random brightness and contrast."""
    _check("brightness", brightness, 0.0, 0.99, "in [0, 1)")
    _check("contrast", contrast, 0.0, 0.99, "in [0, 1)")
    return Color(brightness, contrast)


@AUGMENTATIONS.register("standard")
def build_standard(padding: int = 4, p: float = 0.5) -> Augment:
    """The usual recipe for small natural images: random crop with padding, then a horizontal flip."""
    return Compose([build_crop(padding), build_flip(p)])


@AUGMENTATIONS.register("compose")
def build_compose(steps: list[str | dict] = ("crop", "rotate")) -> Augment | None:
    """Several augmentations in order, each a name or a mapping with its keys: [crop, {name: rotate, degrees: 10}]."""
    built = []
    for i, step in enumerate(steps):
        cfg = {"name": step} if isinstance(step, str) else dict(step)
        augment = AUGMENTATIONS.build(cfg, key=f"augmentation.steps[{i}]")
        if augment is not None:
            built.append(augment)
    return Compose(built) if built else None
