"""Checks before training: does the untrained model start where it should?"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrun.engine.evaluating import evaluating
from dlrun.components.losses import Loss


@torch.no_grad()
def initial_loss_check(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor, chance: float,
                       num_classes: int | None) -> tuple[float, str | None]:
    """The loss before any step, and a warning when it is far from a constant prediction's.

    An untrained classifier should score about ln(number of classes): much more hints at too-large
    initial weights or a label bug (course 2 §3.2).
    """
    with evaluating(model):
        value = float(loss(model(x).float(), y))
    # ln(classes) is a class-score loss's reference; a loss with its own chance level (a regression loss on class
    # indices, loss.check=false; YOLO's) is compared with that.
    reference = f"ln({num_classes}) = {math.log(num_classes):.3f}" if num_classes and loss.chance is None \
        else f"{chance:.4g}"
    if not math.isfinite(value):
        return value, f"The initial loss is {value}: the untrained model already produces non-finite outputs."
    if value > 3 * chance + 0.1:
        return value, (f"The initial loss {value:.4g} is far above a constant prediction's ({reference}): the "
                       f"initial weights are probably too large (try init=he_normal or xavier_uniform), or the "
                       f"targets do not match the outputs.")
    return value, None


def batch_summary(x: torch.Tensor, y: torch.Tensor, feature_names: list[str] | None = None,
                  max_features: int = 32) -> str:
    """Per-feature mean, std, min and max of one batch as a markdown table, and the target's spread.

    A feature with a huge range or zero spread is visible at a glance (course 2 §3.3: standardise inputs).
    """
    flat = x.detach().float().flatten(1).cpu()
    names = feature_names if feature_names and len(feature_names) == flat.shape[1] else \
        [str(i) for i in range(flat.shape[1])]
    lines = ["| feature | mean | std | min | max |", "|---|---|---|---|---|"]
    for i in range(min(flat.shape[1], max_features)):
        col = flat[:, i]
        lines.append(f"| {names[i]} | {col.mean():.4g} | {col.std(correction=0):.4g} | {col.min():.4g} "
                     f"| {col.max():.4g} |")
    if flat.shape[1] > max_features:
        lines.append(f"| … {flat.shape[1] - max_features} more | | | | |")
    target = y.detach().cpu()
    if target.is_floating_point():
        spread = f"targets: mean {target.float().mean():.4g}, std {target.float().std():.4g}"
    else:
        counts = torch.bincount(target.flatten().long())
        spread = "targets per class: " + ", ".join(f"{c}: {int(n)}" for c, n in enumerate(counts) if n)
    return f"First batch: {flat.shape[0]} samples, {flat.shape[1]} features.\n\n" + "\n".join(lines) + \
        f"\n\n{spread}"
