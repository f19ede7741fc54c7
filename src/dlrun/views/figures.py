"""Figures drawn with matplotlib (imported only when a figure is drawn, so start-up stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    index = target.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_figure(matrix: torch.Tensor, class_names: Sequence[str]):
    """The confusion matrix as an image: rows are true classes, columns predicted ones."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max().item() or 1
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            if value:
                ax.text(j, i, value, ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


def scatter_figure(predicted: torch.Tensor, target: torch.Tensor):
    """Predicted against true values: a perfect model puts every point on the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    p, t = predicted.flatten().cpu().numpy(), target.flatten().cpu().numpy()
    ax.scatter(t, p, s=8, alpha=0.6)
    low, high = min(t.min(), p.min()), max(t.max(), p.max())
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("test predictions")
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, list[tuple[int, float]]], ylabel: str, title: str, log_x: bool = False,
                  xlabel: str = "epoch"):
    """Several curves on one set of axes (x, y pairs), labelled by name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, linewidth=1.2)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def spans_decades(values: Sequence[float]) -> bool:
    """Whether positive values span more than a decade: then only a log axis shows every one of them apart."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def sweep_curves_figure(curves: dict[str, list[tuple[int, float, float]]], ylabel: str, title: str):
    """A sweep's curves, one per label (what differs between its jobs): (x, mean, std) points, drawn with a band of
    ±1 std where several seeds make one; a log axis when the values span more than a decade, so that a run far above
    the others does not flatten them into one line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = ["-", "--", "-.", ":"]
    values = [y for points in curves.values() for _, y, _ in points]
    log = spans_decades(values)
    for i, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        xs, means, stds = zip(*points)
        line, = ax.plot(xs, means, styles[(i // 10) % len(styles)], label=name, linewidth=1.4)
        if any(stds):
            low = [max(m - s, m / 10) if log else m - s for m, s in zip(means, stds)]  # a log axis cannot show <= 0
            ax.fill_between(xs, low, [m + s for m, s in zip(means, stds)], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> Path:
    """Write a figure as PNG and free it."""
    plt = _pyplot()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_curves_figure(history: list[dict[str, float]], metric: str | None, title: str):
    """Training and validation loss per epoch, and the main validation metric beside them."""
    plt = _pyplot()
    panels = 2 if metric else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    epochs = [h["epoch"] for h in history]
    loss_ax = axes[0][0]
    loss_ax.plot(epochs, [h["train/loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val/loss"] for h in history], label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    if metric:
        axes[0][1].plot(epochs, [h.get(f"val/{metric}") for h in history], color="tab:orange")
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_ylabel(f"validation {metric}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
