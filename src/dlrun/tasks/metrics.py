"""Metrics a learner reads: accuracy for classification; MAE, RMSE and R² for regression; for forecasting
the same errors of the naive forecasts; exact-sequence accuracy for sequence to sequence."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.models.decoding import greedy_decode
from dlrun.tasks.detection import detection_metrics
from dlrun.components.losses import Loss
from dlrun.tasks.segmentation import segmentation_metrics


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
    return {"classification": ("accuracy",), "seq2seq": ("token_accuracy", "sequence_accuracy"),
            "segmentation": ("pixel_accuracy", "mean_iou", "dice"), "detection": ("map50",)}.get(
        task, ("mae", "rmse", "r2"))


def naive_forecasts(x: torch.Tensor, seq: SequenceInfo) -> dict[str, torch.Tensor]:
    """The trivial forecasts a network must beat: the last value, and the value one period earlier."""
    series = x[:, :, seq.target_feature]
    forecasts = {"naive": series[:, -1:].expand(-1, seq.horizon)}
    if seq.period is not None:
        # Step h ahead repeats the value ceil(h/period) periods back, which the window holds (period <= length).
        ahead = torch.arange(1, seq.horizon + 1)
        back = ahead - seq.period * torch.ceil(ahead / seq.period).long()
        forecasts["seasonal_naive"] = series[:, (seq.length - 1 + back).to(x.device)]
    return forecasts


def forecast_baselines(x: torch.Tensor, y: torch.Tensor, info: DataInfo) -> dict[str, float]:
    """MAE and RMSE of the naive forecasts, in the target's original units."""
    out = {}
    for name, forecast in naive_forecasts(x, info.sequence).items():
        scores = regression_metrics(forecast, y, info.target_mean, info.target_std)
        out.update({f"{name}_mae": scores["mae"], f"{name}_rmse": scores["rmse"]})
    return out


@torch.no_grad()
def seq2seq_metrics(model: nn.Module, predicted: torch.Tensor, x: torch.Tensor, y: torch.Tensor, seq: SequenceInfo,
                    batch_size: int) -> dict[str, float]:
    """Token accuracy with the true previous tokens given, and exact-sequence accuracy of greedy decoding."""
    real = y != seq.pad_token
    token_accuracy = ((predicted == y) & real).sum() / real.sum()
    # Exact sequences are scored as the model would be used: decoding its own tokens, not the true ones.
    decoded = torch.cat([greedy_decode(model, xb[:, :seq.source_length], seq)[0] for xb in x.split(batch_size)])
    exact = (decoded == y).all(dim=1).float().mean()
    return {"token_accuracy": token_accuracy.item(), "sequence_accuracy": exact.item()}


def task_metrics(model: nn.Module, loss_fn: Loss, output: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 info: DataInfo, batch_size: int) -> dict[str, float]:
    """The metrics of the dataset's task, computed from the model's outputs over one split."""
    if info.task == "classification":
        return classification_metrics(loss_fn.predict_classes(output), y)
    if info.task == "segmentation":
        return segmentation_metrics(loss_fn.predict_classes(output), y, info.num_classes)
    if info.task == "detection":
        return detection_metrics(output, y, info.num_classes)
    if info.task == "seq2seq":
        return seq2seq_metrics(model, loss_fn.predict_classes(output), x, y, info.sequence, batch_size)
    metrics = regression_metrics(output, y, info.target_mean, info.target_std)
    if info.sequence is not None and info.sequence.forecasting:
        metrics.update(forecast_baselines(x, y, info))
    return metrics


def monitor_mode(metric: str) -> str:
    """Whether a metric is better when smaller ('min') or larger ('max')."""
    name = metric.rsplit("/", 1)[-1]
    return "max" if name.endswith("accuracy") or name in ("r2", "mean_iou", "dice", "map50") else "min"
