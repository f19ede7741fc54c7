"""Checks before training: does the untrained model start where it should?"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrun.losses import Loss


@torch.no_grad()
def initial_loss_check(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor, chance: float,
                       num_classes: int | None) -> tuple[float, str | None]:
    """The loss before any step, and a warning when it is far from a constant prediction's.

    An untrained classifier should score about ln(number of classes): much more hints at too-large
    initial weights or a label bug (course 2 §3.2).
    """
    was_training = model.training
    model.eval()
    value = float(loss(model(x).float(), y))
    model.train(was_training)
    reference = f"ln({num_classes}) = {math.log(num_classes):.3f}" if num_classes else f"{chance:.4g}"
    if not math.isfinite(value):
        return value, f"The initial loss is {value}: the untrained model already produces non-finite outputs."
    if value > 3 * chance + 0.1:
        return value, (f"The initial loss {value:.4g} is far above a constant prediction's ({reference}): the "
                       f"initial weights are probably too large (try init=he_normal or xavier_uniform), or the "
                       f"targets do not match the outputs.")
    return value, None
