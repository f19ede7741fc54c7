"""Regression and forecasting: real-valued targets, scored by MAE, RMSE and R² in the target's own units;
a forecast is also scored against the naive forecasts it must beat."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.tasks.base import TASKS, Task
from dlrun.views.sequence import forecast_view
from dlrun.views.test import predicted_vs_true_view


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
        scores = regression_metrics(forecast.to(y.device), y, info.target_mean, info.target_std)  # y may be on the host
        out.update({f"{name}_mae": scores["mae"], f"{name}_rmse": scores["rmse"]})
    return out


@TASKS.register("regression")
class Regression(Task):
    """model(x) -> the target's values (standardised for training, scored in original units)."""

    name = "regression"
    metric_names = ("mae", "rmse", "r2")
    main_metric = "rmse"
    higher_is_better = frozenset({"r2"})
    default_loss = "mse"
    epoch_views = (forecast_view,)
    test_views = (predicted_vs_true_view,)

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        metrics = regression_metrics(outputs, y, info.target_mean, info.target_std)
        if info.sequence is not None and info.sequence.forecasting:
            metrics.update(forecast_baselines(x, y, info))
        return metrics

    def reference(self, data: Any, model_cfg: dict[str, Any]) -> dict[str, Any] | None:
        """The closed-form least-squares fit on the same features, for a linear or polynomial model (course 1 §5.1)."""
        if model_cfg.get("name") not in ("linear", "polynomial"):
            return None
        from dlrun.diagnostics.reference import least_squares

        return least_squares(data.splits, self.info, model_cfg.get("degree", 1), model_cfg.get("basis", "monomial"))
