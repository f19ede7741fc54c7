"""The learning-rate finder: train with an exponentially growing learning rate and watch the loss.

Too small a rate barely moves the loss, too large a one makes it explode; the rate where the loss
falls fastest is a good starting point (course 2 §1.1: the learning rate is the first thing to tune).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlrun.engine.options import autocast_for
from dlrun.engine.trainer import TrainingParts  # at run time: the lr_find keys are checked against the signature
from dlrun.errors import ConfigError


@dataclass
class LRFinding:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float | None
    stopped_early: bool  # the loss exploded before max_lr


def check_range(min_lr: float, max_lr: float, steps: int) -> None:
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"'lr_find.min_lr={min_lr}' must be positive and below 'lr_find.max_lr={max_lr}'.",
                          key="lr_find.min_lr")
    if steps < 10:
        raise ConfigError(f"'lr_find.steps={steps}' must be at least 10.", key="lr_find.steps")


def find_lr(parts: TrainingParts, generator: torch.Generator, min_lr: float = 1e-7, max_lr: float = 10.0,
            steps: int = 200, divergence_factor: float = 4.0, smoothing: float = 0.9) -> LRFinding:
    """Sweep the learning rate from min_lr to max_lr over `steps` mini-batches of the training split; suggest the
    steepest descent. The keys after `generator` are the lr_find config group's."""
    check_range(min_lr, max_lr, steps)
    model, optimizer, prepare = parts.model, parts.optimizer, parts.prepare
    x, y = parts.splits.x_train, parts.splits.y_train
    batch_size = parts.options.batch_size_for(len(x))
    model.train()
    autocast, scaler = autocast_for(parts.device, parts.options.precision)
    lrs, losses = [], []
    average, best = 0.0, math.inf
    order = torch.empty(0, dtype=torch.long)
    stopped = False
    for i in range(steps):
        if len(order) < batch_size:  # a fresh permutation whenever the current one runs out
            order = torch.cat([order, torch.randperm(len(x), generator=generator)])
        idx, order = order[:batch_size].to(x.device), order[batch_size:]
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        xb = x[idx] if prepare is None else prepare(x[idx], train=True)  # uint8 images: standardise (augment)
        with autocast:  # the run's precision: the rate found is the one training in it can take
            loss = parts.task.loss(model, xb, y[idx])
        _step(loss, optimizer, scaler)
        value = loss.item()  # the finder needs every value: a sync per step is its point
        average = smoothing * average + (1 - smoothing) * value if math.isfinite(value) else math.inf
        smoothed = average / (1 - smoothing ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or (i > steps // 10 and smoothed > divergence_factor * best):
            stopped = True
            break
    return LRFinding(lrs, losses, suggest(lrs, losses), stopped)


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """One optimiser step on the loss (fp16: through its gradient scaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest per decade of learning rate, before its minimum."""
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if len(finite) < 5:
        return None
    lowest = min(range(len(finite)), key=lambda i: finite[i][1])
    start = len(finite) // 10
    window = finite[start:lowest + 1]
    if len(window) < 3:
        return finite[lowest][0] / 10
    slopes = [(window[i + 1][1] - window[i - 1][1]) / (math.log10(window[i + 1][0]) - math.log10(window[i - 1][0]))
              for i in range(1, len(window) - 1)]
    steepest = min(range(len(slopes)), key=lambda i: slopes[i])
    return window[steepest + 1][0]
