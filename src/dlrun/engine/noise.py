"""Noise on the weights or on the gradients, as regularisers (course 3 §4.1: "noise can also be added to the weights,
gradients or activations").

Both draw from the run's own generator (the one that shuffles the epochs, seeded by `seed`, saved in every checkpoint
and the same on every rank): a resumed run draws the same noise as an uninterrupted one, and under torchrun every rank
adds the same gradient noise, so the weights stay equal. The draws are made on the CPU and moved to the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# Neelakantan et al. 2015, "Adding Gradient Noise Improves Learning for Very Deep Networks": the noise's variance
# decays as std² / (1 + t)^0.55 over the steps t.
NEELAKANTAN_DECAY = 0.55


def _noise_like(param: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
    return noise.mul_(std).to(param.device, non_blocking=True)


def gradient_noise_std(std: float, decay: float, step: int) -> float:
    """The standard deviation of step `step`'s gradient noise (0 = the first step): its variance is
    std² / (1 + step)^decay, constant for decay 0."""
    return std / (1 + step) ** (decay / 2)


def add_gradient_noise(params: Iterable[torch.Tensor], std: float, generator: torch.Generator) -> None:
    """g ← g + N(0, std²) for every parameter that has a gradient: the step then follows a noisy gradient."""
    with torch.no_grad():
        for param in params:
            if param.grad is not None:
                param.grad.add_(_noise_like(param, std, generator))


@contextmanager
def noisy_weights(params: Iterable[torch.Tensor], std: float, generator: torch.Generator) -> Iterator[None]:
    """Inside: every trainable weight is w + N(0, std²), for the forward and backward pass; after: w exactly as it
    was, so the optimizer steps from the clean weights with the gradient taken at the noisy ones."""
    params = [p for p in params if p.requires_grad]
    with torch.no_grad():
        clean = [p.detach().clone() for p in params]
        for param in params:
            param.add_(_noise_like(param, std, generator))
    try:
        yield
    finally:
        with torch.no_grad():
            for param, weights in zip(params, clean):
                param.copy_(weights)
