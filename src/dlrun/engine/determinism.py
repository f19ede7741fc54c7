"""trainer.deterministic=true on CUDA: layers whose CUDA backward torch cannot make deterministic, swapped for twins.

torch.use_deterministic_algorithms(True) raises in the backward of nn.AdaptiveAvgPool2d and of bilinear
interpolation on CUDA (their kernels add with atomics; see that function's documentation, "will throw a
RuntimeError"). The twins here compute the same function from operations that have deterministic CUDA kernels
(a mean; replicate padding, slices and weighted sums), so resnet, a cnn with global pooling, torchvision's
classifiers and a U-Net or autoencoder with upsampling=bilinear train deterministically there. They hold no
parameters or buffers: checkpoints are the same either way.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalAveragePool2d(nn.Module):
    """nn.AdaptiveAvgPool2d(1) as a mean over height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


class BilinearUpsample2d(nn.Module):
    """nn.Upsample(scale_factor=s, mode="bilinear", align_corners=False) for an integer s, one axis at a time.

    Output pixel o of an axis samples the input at o/s + (1/s - 1)/2: between two neighbours, with weights that
    depend only on o mod s. torch clamps samples beyond the edge to the edge pixel; replicate padding by one
    does the same.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        # Columns first, on the padded rows too (copies of the edge rows stay copies), then rows.
        return self._axis(self._axis(padded, -1), -2)

    def _axis(self, padded: torch.Tensor, dim: int) -> torch.Tensor:
        """Upsample along `dim` (negative) of a tensor padded by one on that axis: n + 2 -> n * scale."""
        n = padded.shape[dim] - 2
        before, here, after = (padded.narrow(dim, start, n) for start in (0, 1, 2))
        phases = []
        for j in range(self.scale):
            offset = (j + 0.5) / self.scale - 0.5  # where this phase samples, relative to its own pixel
            phases.append(here * (1 + offset) - before * offset if offset < 0 else
                          here * (1 - offset) + after * offset)
        return _interleave(phases, dim)


def _interleave(phases: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Tensors of one shape, taken in turn along `dim` (negative): a0 b0 a1 b1 ..."""
    stacked = torch.stack(phases, dim=dim)  # (..., n, scale, ...) for dim=-1: (..., n, scale)
    shape = list(phases[0].shape)
    shape[dim] *= len(phases)
    return stacked.reshape(shape)


def deterministic_twins(model: nn.Module) -> list[str]:
    """Swap, in place, each layer whose CUDA backward cannot be deterministic for its twin; the names swapped."""
    swapped = []
    for name, module in list(model.named_modules()):
        twin = _twin(module)
        if twin is None:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, twin)
        swapped.append(name)
    return swapped


def _twin(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return GlobalAveragePool2d()
    if (isinstance(module, nn.Upsample) and module.mode == "bilinear" and not module.align_corners
            and module.size is None and _integer(module.scale_factor)):
        scale = module.scale_factor
        return BilinearUpsample2d(int(scale[0] if isinstance(scale, tuple) else scale))
    return None


def _integer(scale: float | tuple[float, ...] | None) -> bool:
    values = scale if isinstance(scale, tuple) else (scale,)
    return scale is not None and len(set(values)) == 1 and float(values[0]).is_integer()
