"""Given, frozen first-layer kernels (course 3 §1): the edge detectors of classical computer vision as a CNN's
first convolution, `dl-run dataset=digits model=cnn model.fixed_kernels=[sobel_x,sobel_y]`."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from dlrun.errors import ConfigError

# course 3 §1: [h_x] = 1/4 [[1, 0, -1], [2, 0, -2], [1, 0, -1]], applied as written (PyTorch's convolution, like the
# course's worked example, slides the kernel without flipping it): a step from dark (left) to bright (right) gives -1.
NAMED_KERNELS: dict[str, list[list[float]]] = {
    "sobel_x": [[0.25, 0.0, -0.25], [0.5, 0.0, -0.5], [0.25, 0.0, -0.25]],
    "sobel_y": [[0.25, 0.5, 0.25], [0.0, 0.0, 0.0], [-0.25, -0.5, -0.25]],  # sobel_x transposed: bright above
    "laplace": [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],  # second derivative: 0 on flat and ramps
}
KEY = "model.fixed_kernels"


def _is_numbers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)


def _is_matrix(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_numbers(row) for row in value)


def _items(value: Any, dims: int) -> list[Any]:
    """The kernels one by one: a name, one kernel (a list of numbers in 1-D, of rows in 2-D), or a list of them."""
    if isinstance(value, str) or (dims == 1 and _is_numbers(value)) or (dims == 2 and _is_matrix(value)):
        return [value]
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    raise ConfigError(f"'{KEY}={value}' must name kernels ({', '.join(NAMED_KERNELS)}) or give them as lists, e.g. "
                      f"{KEY}=[sobel_x,sobel_y] or {KEY}=[[[0,1,0],[1,-4,1],[0,1,0]]].", key=KEY)


def _kernel(item: Any, dims: int) -> torch.Tensor:
    """One kernel as a tensor of `dims` axes, or a ConfigError naming what would be valid."""
    if isinstance(item, str):
        if dims == 1:
            raise ConfigError(f"'{KEY}' names the 2-D kernel '{item}', but this CNN convolves a series in 1-D (along "
                              f"time). Give 1-D kernels as lists of numbers instead, e.g. {KEY}=[[1,0,-1]] (a "
                              f"difference along time, the 1-D edge detector).", key=KEY)
        if item not in NAMED_KERNELS:
            raise ConfigError(f"'{KEY}' names an unknown kernel '{item}'; valid names: {', '.join(NAMED_KERNELS)} "
                              f"(or a kernel given as a list of rows, e.g. [[0,1,0],[1,-4,1],[0,1,0]]).", key=KEY)
        return torch.tensor(NAMED_KERNELS[item])
    if dims == 1 and _is_numbers(item):
        return torch.tensor([float(v) for v in item])
    if dims == 2 and _is_matrix(item) and len({len(row) for row in item}) == 1 and len(item) == len(item[0]):
        return torch.tensor([[float(v) for v in row] for row in item])
    what = "a list of numbers (one weight per step)" if dims == 1 else "a square list of rows of numbers, e.g. a 3x3"
    raise ConfigError(f"'{KEY}' has a kernel {item!r} that is not {what}; each kernel is a name "
                      f"({', '.join(NAMED_KERNELS)}, 2-D only) or such a list.", key=KEY)


def fixed_kernel_weights(value: Any, in_channels: int, dims: int, kernel_size: int) -> torch.Tensor:
    """The first convolution's weight (kernels, in_channels, k[, k]) for the given kernels: each kernel slides over
    every input channel and the results are summed into its feature map (course 3 §2.3)."""
    kernels = [_kernel(item, dims) for item in _items(value, dims)]
    sizes = {k.shape[0] for k in kernels}
    if sizes != {kernel_size}:
        raise ConfigError(f"'{KEY}' gives kernels of size {' and '.join(map(str, sorted(sizes)))}, but the "
                          f"convolutions have model.kernel_size={kernel_size}: give kernels of that size, or set "
                          f"model.kernel_size to theirs (and model.padding to (kernel_size - 1)/2 to keep the size).",
                          key=KEY)
    weight = torch.stack(kernels).unsqueeze(1)  # (kernels, 1, k[, k])
    return weight.expand(-1, in_channels, *weight.shape[2:]).clone()


def freeze_kernels(conv: nn.Module, weight: torch.Tensor) -> None:
    """Set a convolution's kernels to `weight` and keep them out of training (requires_grad=False), its bias 0."""
    with torch.no_grad():
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()
    conv.requires_grad_(False)
