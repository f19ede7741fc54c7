"""Metrics a learner reads: accuracy for classification; MAE, RMSE and R² for regression."""

from __future__ import annotations

import torch


def classification_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Fraction of correctly predicted classes."""
    return {"accuracy": (predicted == target).float().mean().item()}


def regression_metrics(prediction: torch.Tensor, target: torch.Tensor,
                       mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> dict[str, float]:
    """MAE, RMSE and R², in the target's original units when it was standardised for training."""
    prediction = prediction.float().reshape(target.shape)
    if mean is not None and std is not None:
        mean, std = mean.to(target.device), std.to(target.device)
        prediction, target = prediction * std + mean, target * std + mean
    error = prediction - target
    ss_res = (error ** 2).sum()
    ss_tot = ((target - target.mean(dim=0)) ** 2).sum()
    return {
        "mae": error.abs().mean().item(),
        "rmse": (error ** 2).mean().sqrt().item(),
        "r2": (1.0 - ss_res / ss_tot).item() if ss_tot > 0 else float("nan"),
    }


def metric_names(task: str) -> tuple[str, ...]:
    """What evaluate() reports besides the loss for a task."""
    return ("accuracy",) if task == "classification" else ("mae", "rmse", "r2")


def monitor_mode(metric: str) -> str:
    """Whether a metric is better when smaller ('min') or larger ('max')."""
    return "max" if metric.rsplit("/", 1)[-1] in ("accuracy", "r2") else "min"
