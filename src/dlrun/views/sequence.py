"""What a sequence task shows in TensorBoard after each validation: forecasts drawn, or decoded examples."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.engine.evaluating import evaluating
from dlrun.models.decoding import greedy_decode, to_text
from dlrun.views import EpochView, ViewInputs, draws, logs

EXAMPLES = 4  # validation windows drawn, or sequences decoded, each epoch


def _examples(inputs: ViewInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """A few validation samples spread over the split: the same ones every epoch."""
    x, y = inputs.splits.x_val, inputs.splits.y_val
    pick = torch.linspace(0, len(x) - 1, min(EXAMPLES, len(x))).round().long().to(x.device)
    return x[pick], y[pick]


def decoded_view(inputs: ViewInputs) -> EpochView | None:
    """seq2seq: a table of sources, greedy decodings and expected outputs in the Text tab."""
    if not logs(inputs) or len(inputs.splits.x_val) == 0:
        return None
    xs, ys = _examples(inputs)
    return lambda model, step: inputs.logger.text("val/decoded", decoded_examples(model, xs, ys, inputs.info), step)


def forecast_view(inputs: ViewInputs) -> EpochView | None:
    """Forecasting: a few validation windows, their true future, the network's and the naive forecasts."""
    seq = inputs.info.sequence
    if seq is None or not seq.forecasting or not draws(inputs) or len(inputs.splits.x_val) == 0:
        return None
    xs, ys = _examples(inputs)
    return lambda model, step: inputs.logger.figure("val/forecasts", forecast_figure(model, xs, ys, inputs.info),
                                                    step)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with evaluating(model):
        return model(x).float()


def forecast_figure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo):
    """Each window's past, its true future, the network's forecast and the naive one, in original units."""
    from matplotlib.figure import Figure  # imported lazily: only forecasting draws figures

    from dlrun.tasks.regression import naive_forecasts

    seq = info.sequence
    mean = float(info.target_mean[0]) if info.target_mean is not None else 0.0
    std = float(info.target_std[0]) if info.target_std is not None else 1.0
    scale = lambda t: (t.float().cpu() * std + mean).numpy()  # noqa: E731
    predicted = _predict(model, x)
    naive = naive_forecasts(x, seq)
    past, future = range(-seq.length + 1, 1), range(1, seq.horizon + 1)
    figure = Figure(figsize=(10, 2.4 * ((len(x) + 1) // 2)), layout="constrained")
    axes = figure.subplots((len(x) + 1) // 2, 2, squeeze=False).flatten()
    marker = "o" if seq.horizon == 1 else None
    for i, ax in enumerate(axes[:len(x)]):
        ax.plot(past, scale(x[i, :, seq.target_feature]), color="0.5", label="input window")
        ax.plot(future, scale(y[i]), color="black", marker=marker, label="true")
        ax.plot(future, scale(predicted[i]), color="tab:blue", marker=marker, label="forecast")
        ax.plot(future, scale(naive["naive"][i]), color="tab:orange", linestyle="--", marker=marker,
                label="naive (last value)")
        if "seasonal_naive" in naive:
            ax.plot(future, scale(naive["seasonal_naive"][i]), color="tab:green", linestyle=":", marker=marker,
                    label=f"seasonal naive (period {seq.period})")
        ax.axvline(0.5, color="0.8", linewidth=0.8)
        ax.set_xlabel("steps from the forecast origin")
    for ax in axes[len(x):]:
        ax.set_axis_off()
    axes[0].legend(fontsize="small")
    return figure


def decoded_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo) -> str:
    """A markdown table: source, greedy decoding, expected output, and whether they match."""
    seq = info.sequence
    with evaluating(model):
        decoded, _ = greedy_decode(model, x[:, :seq.source_length], seq)
    rows = ["| source | decoded | expected | exact |", "|---|---|---|---|"]
    for source, out, target in zip(x[:, :seq.source_length], decoded, y):
        match = "yes" if torch.equal(out, target) else "no"
        # Code spans, so that token names such as </s> are shown as written, not read as HTML.
        rows.append(f"| `{to_text(source, seq)}` | `{to_text(out, seq)}` | `{to_text(target, seq)}` | {match} |")
    return "\n".join(rows)
