"""Optimizers (course 2 §3.1) and learning-rate schedulers, with the course's parameter names."""

from __future__ import annotations

from collections.abc import Iterable
import math
from dataclasses import dataclass

import torch

from dlrun.errors import ConfigError
from dlrun.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


def _positive(key: str, value: float) -> None:
    if not 0 < value < math.inf:  # NaN and infinity fail too
        raise ConfigError(f"'{key}={value}' must be positive and finite, e.g. 0.01.", key=key)


def _non_negative(key: str, value: float) -> None:
    if not 0 <= value < math.inf:
        raise ConfigError(f"'{key}={value}' must be zero or positive, and finite, e.g. 0.0001.", key=key)


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ConfigError(f"'{key}={value}' must be in [0, 1), e.g. 0.9.", key=key)


def _fused_if_possible(optimizer: type, params: Iterable, **kwargs) -> torch.optim.Optimizer:
    """The optimizer with fused=True (one kernel updates every parameter) where torch has it for the
    parameters' device, else the default implementation: same update, on CPU a quarter of an MLP step saved."""
    params = list(params)
    try:
        return optimizer(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return optimizer(params, **kwargs)


def add_l1(optimizer: torch.optim.Optimizer, l1: float) -> torch.optim.Optimizer:
    """L1 regularisation: before each step, λ·sign(θ) is added to every gradient, the gradient of the penalty λ·Σ|θ|
    (weight_decay is the L2 penalty's); it pushes weights towards exactly zero, sparse layers (course 1 §6's
    regularisation terms, course 3 §3.4)."""
    _non_negative("optimizer.l1", l1)
    if l1 == 0:
        return optimizer

    def penalise(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad.add_(torch.sign(param), alpha=l1)

    # A hook, not a loss term: the logged loss stays the task's, and every optimizer (a user's too) takes it; a
    # gradient scaler unscales the gradients before the step, so the hook sees them on their true scale.
    optimizer.register_step_pre_hook(penalise)
    return optimizer


@OPTIMIZERS.register("sgd")
def build_sgd(params: Iterable, lr: float = 0.01, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Plain gradient descent: θ ← θ - γ∇L (full-batch, stochastic or mini-batch by trainer.batch_size)."""
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("momentum")
def build_momentum(params: Iterable, lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """u ← αu - γ∇L(θ); θ ← θ + u: inertia in the step direction (α = momentum)."""
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    _fraction("optimizer.momentum", momentum)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("nesterov")
def build_nesterov(params: Iterable, lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Momentum with the gradient taken at the look-ahead point θ + αu."""
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    _fraction("optimizer.momentum", momentum)
    if momentum == 0:
        raise ConfigError("'optimizer.momentum=0' makes Nesterov plain SGD: use optimizer=sgd, or momentum > 0.",
                          key="optimizer.momentum")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _check_adam(lr: float, rho1: float, rho2: float, eps: float, weight_decay: float) -> None:
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    _non_negative("optimizer.eps", eps)
    _fraction("optimizer.rho1", rho1)
    _fraction("optimizer.rho2", rho2)


@OPTIMIZERS.register("adam")
def build_adam(params: Iterable, lr: float = 0.001, rho1: float = 0.9, rho2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam: running means of g (ρ1) and g⊙g (ρ2), bias-corrected."""
    _check_adam(lr, rho1, rho2, eps, weight_decay)
    return _fused_if_possible(torch.optim.Adam, params, lr=lr, betas=(rho1, rho2), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def build_adamw(params: Iterable, lr: float = 0.001, rho1: float = 0.9, rho2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """Adam with weight decay applied to the weights directly, not through the gradient."""
    _check_adam(lr, rho1, rho2, eps, weight_decay)
    return _fused_if_possible(torch.optim.AdamW, params, lr=lr, betas=(rho1, rho2), eps=eps,
                              weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def build_rmsprop(params: Iterable, lr: float = 0.001, rho: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """RMSProp: r ← ρr + (1-ρ)g⊙g; θ ← θ - γ g/√r."""
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    _non_negative("optimizer.eps", eps)
    _fraction("optimizer.rho", rho)
    _non_negative("optimizer.momentum", momentum)
    return torch.optim.RMSprop(params, lr=lr, alpha=rho, eps=eps, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def build_adagrad(params: Iterable, lr: float = 0.01, eps: float = 1e-10,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adagrad: the step shrinks with the sum of all past squared gradients."""
    _positive("optimizer.lr", lr)
    _non_negative("optimizer.weight_decay", weight_decay)
    _non_negative("optimizer.eps", eps)
    return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)


@dataclass
class Schedule:
    """A scheduler and when to step it: after every optimiser step, or after every epoch."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
    interval: str = "epoch"  # "step" or "epoch"
    needs_metric: bool = False  # plateau steps on the monitored validation metric

    def step(self, interval: str, metric: float | None = None) -> None:
        if self.scheduler is None or interval != self.interval:
            return
        if self.needs_metric:
            self.scheduler.step(metric)
        else:
            self.scheduler.step()


@SCHEDULERS.register("none")
def build_none(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int) -> Schedule:
    """A constant learning rate."""
    return Schedule(None)


@SCHEDULERS.register("step")
def build_step(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
               step_size: int = 10, gamma: float = 0.1) -> Schedule:
    """Multiply the learning rate by gamma every step_size epochs."""
    _positive("scheduler.step_size", step_size)
    _positive("scheduler.gamma", gamma)
    return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


@SCHEDULERS.register("multistep")
def build_multistep(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                    milestones: list[int] = (10, 20), gamma: float = 0.1) -> Schedule:
    """Multiply the learning rate by gamma at each milestone epoch."""
    _positive("scheduler.gamma", gamma)
    return Schedule(torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma))


@SCHEDULERS.register("exponential")
def build_exponential(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                      gamma: float = 0.95) -> Schedule:
    """Multiply the learning rate by gamma every epoch."""
    _positive("scheduler.gamma", gamma)
    return Schedule(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma))


@SCHEDULERS.register("cosine")
def build_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                 min_lr: float = 0.0) -> Schedule:
    """Cosine decay from the initial learning rate to min_lr over the whole run, stepped every batch."""
    return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr),
                    interval="step")


@SCHEDULERS.register("warmup_cosine")
def build_warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                        warmup_fraction: float = 0.05, min_lr: float = 0.0) -> Schedule:
    """Linear warm-up over the first warmup_fraction of steps, then cosine decay."""
    _fraction("scheduler.warmup_fraction", warmup_fraction)
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    schedulers = [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=min_lr),
    ]
    return Schedule(torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=[warmup]),
                    interval="step")


@SCHEDULERS.register("onecycle")
def build_onecycle(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                   max_lr: float | None = None, pct_start: float = 0.3) -> Schedule:
    """Warm up to max_lr (default: the optimizer's lr) then anneal, over the whole run."""
    _fraction("scheduler.pct_start", pct_start)
    peak = max_lr if max_lr is not None else optimizer.param_groups[0]["lr"]
    _positive("scheduler.max_lr", peak)
    return Schedule(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps,
                                                        pct_start=pct_start), interval="step")


@SCHEDULERS.register("plateau")
def build_plateau(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, epochs: int,
                  factor: float = 0.1, patience: int = 5, mode: str = "min") -> Schedule:
    """Divide the learning rate when the monitored validation metric stops improving."""
    _fraction("scheduler.factor", factor)
    if mode not in ("min", "max"):
        raise ConfigError(f"'scheduler.mode={mode}' must be min or max.", key="scheduler.mode")
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor,
                                                               patience=patience), needs_metric=True)
