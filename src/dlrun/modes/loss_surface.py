"""mode=loss_surface: the loss over two parameters as contours, and the path an optimizer takes over it (course 1
§5.1, course 2 §1.1, §3.1). A sweep over optimizers and learning rates draws every path on one figure."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from dlrun.components.optim import OPTIMIZERS, add_l1
from dlrun.errors import ConfigError
from dlrun.loggers import build_logger
from dlrun.modes.trained import load_trained
from dlrun.registry import check_arguments
from dlrun.run.run_directory import write_whole
from dlrun.views import console, figures

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment

FIGURE = "loss_surface.png"


@dataclass
class SurfaceOptions:
    """The loss_surface config node's keys."""

    params: list[str] | None = None  # two values: 'name' (a one-value parameter) or 'name:i:j' (an entry)
    start: list[float] | None = None  # where the path starts; None: the model's initial values
    steps: int = 50  # full-batch optimizer steps
    grid: int = 41  # grid x grid loss values make the contours
    extent: list[float] | None = None  # [first_min, first_max, second_min, second_max]; None: start and minimum
    samples: int = 1000  # the first training samples the loss is measured on


@dataclass
class Entry:
    """One chosen value: a parameter's name and the index of the entry in it."""

    param: str
    index: tuple[int, ...]
    label: str


def _options(exp: Experiment) -> SurfaceOptions:
    opts = SurfaceOptions(**check_arguments(SurfaceOptions, exp.cfg.get("loss_surface") or {}, "loss_surface"))
    for key, value, low in (("steps", opts.steps, 1), ("grid", opts.grid, 5), ("samples", opts.samples, 1)):
        if value < low:
            raise ConfigError(f"'loss_surface.{key}={value}' must be at least {low}.", key=f"loss_surface.{key}")
    for key, value, size in (("start", opts.start, 2), ("extent", opts.extent, 4)):
        if value is not None and (len(value) != size or not all(math.isfinite(v) for v in value)):
            raise ConfigError(f"'loss_surface.{key}={value}' must be {size} finite numbers.", key=f"loss_surface.{key}")
    if opts.extent is not None and not (opts.extent[0] < opts.extent[1] and opts.extent[2] < opts.extent[3]):
        raise ConfigError(f"'loss_surface.extent={opts.extent}' must be [first_min, first_max, second_min, "
                          f"second_max], each min below its max.", key="loss_surface.extent")
    if exp.info.task not in ("classification", "regression"):
        raise ConfigError(f"'mode=loss_surface' draws a classification or regression loss; this run is "
                          f"{exp.info.task}.", key="mode")
    return opts


def pick_entries(model: torch.nn.Module, names: list[str] | None) -> list[Entry]:
    """The two values the surface is drawn over: the named ones, or the model's only two trainable values."""
    params = dict(model.named_parameters())
    valid = ", ".join(f"{n} {tuple(p.shape)}" for n, p in params.items())
    if names is None:
        entries = [Entry(n, i, n if p.numel() == 1 else f"{n}:{':'.join(map(str, i))}")
                   for n, p in params.items() if p.requires_grad for i in np.ndindex(tuple(p.shape))]
        if len(entries) != 2:
            raise ConfigError(f"This model has {len(entries)} trainable values, and loss_surface draws two: name them, "
                              f"the rest frozen, with loss_surface.params=[<name>,<name>] (a one-value parameter) or "
                              f"'<name>:<i>:<j>' (an entry). Parameters: {valid}. Or take a model with two, e.g. "
                              f"dataset=linear model=linear.", key="loss_surface.params")
        return entries
    if len(names) != 2:
        raise ConfigError(f"'loss_surface.params={names}' must name two values.", key="loss_surface.params")
    picked = []
    for label in names:
        name, *index = str(label).split(":")
        param = params.get(name)
        if param is None or not all(i.isdigit() for i in index) or (index and len(index) != param.dim()) or (
                not index and param.numel() != 1) or any(int(i) >= s for i, s in zip(index, param.shape)):
            raise ConfigError(f"'loss_surface.params' names '{label}', which is not a value of this model: give a "
                              f"one-value parameter by name or an entry as '<name>:<i>:<j>' (0-based). Parameters: "
                              f"{valid}.", key="loss_surface.params")
        picked.append(Entry(name, tuple(int(i) for i in index) or (0,) * param.dim(), str(label)))
    if picked[0].param == picked[1].param and picked[0].index == picked[1].index:
        raise ConfigError(f"'loss_surface.params={names}' names the same value twice.", key="loss_surface.params")
    return picked


def loss_of(exp: Experiment, entries: list[Entry], samples: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training loss as a function of the two chosen values, every other parameter frozen where it is."""
    model = exp.model.eval()  # dropout off, batch-norm statistics fixed: one surface, not a noisy one
    base = {name: p.detach() for name, p in model.named_parameters()}
    x, y = exp.prepare(exp.splits.x_train[:samples]), exp.splits.y_train[:samples]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        values = dict(base)
        for name in {e.param for e in entries}:
            values[name] = base[name].clone()
        for i, entry in enumerate(entries):
            values[entry.param][entry.index] = theta[i]
        output = torch.func.functional_call(model, values, (x,))
        return exp.loss(output.float(), y)

    return loss


def descend(loss: Callable, start: torch.Tensor, optimizer_cfg: dict[str, Any], steps: int) -> list[list[float]]:
    """The optimizer's path from start: [first, second, loss] before each step and after the last; it stops
    where the loss stops being finite (a too-high learning rate diverges)."""
    theta = start.clone().requires_grad_(True)
    settings = dict(optimizer_cfg)
    l1 = settings.pop("l1", 0.0)  # the L1 penalty's gradient joins each step, as in training
    optimizer = add_l1(OPTIMIZERS.build(settings, params=[theta]), l1)
    path = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss(theta)
        path.append([*theta.detach().tolist(), float(value.detach())])
        if not math.isfinite(path[-1][2]):
            return path
        value.backward()
        optimizer.step()
    with torch.no_grad():
        path.append([*theta.detach().tolist(), float(loss(theta))])
    return path


def minimum(loss: Callable, start: torch.Tensor) -> list[float]:
    """The minimum near start, found by L-BFGS (the same for every optimizer, so a sweep shares one surface)."""
    theta = start.clone().requires_grad_(True)
    search = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        search.zero_grad()
        value = loss(theta)
        value.backward()
        return value

    search.step(closure)
    theta = theta.detach()
    with torch.no_grad():
        value = float(loss(theta))
    if not math.isfinite(value) or value > float(loss(start.detach())):
        return [float(start[0]), float(start[1]), float(loss(start.detach()))]
    return [*theta.tolist(), value]


def _extent(start: torch.Tensor, lowest: list[float]) -> list[float]:
    """A box around the start and the minimum, with a margin."""
    s, m = start.tolist(), lowest[:2]
    span = max(abs(s[0] - m[0]), abs(s[1] - m[1]), 1e-3)
    return [min(s[0], m[0]) - 0.35 * span, max(s[0], m[0]) + 0.35 * span,
            min(s[1], m[1]) - 0.35 * span, max(s[1], m[1]) + 0.35 * span]


def surface(loss: Callable, extent: list[float], grid: int, device: torch.device) -> list[list[float]]:
    """The loss at grid x grid points of the box: rows follow the second value, columns the first."""
    firsts, seconds = np.linspace(extent[0], extent[1], grid), np.linspace(extent[2], extent[3], grid)
    with torch.no_grad():
        return [[float(loss(torch.tensor([a, b], dtype=torch.float32, device=device))) for a in firsts]
                for b in seconds]


def path_label(optimizer_cfg: dict[str, Any]) -> str:
    """How a path is named in the legend: the optimizer, its learning rate, and its momentum if it has one."""
    label = f"{optimizer_cfg.get('name') or optimizer_cfg.get('_target_')} lr={optimizer_cfg.get('lr', '?'):g}"
    if optimizer_cfg.get("momentum"):
        label += f" α={optimizer_cfg['momentum']:g}"
    return label


def run_loss_surface(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=loss_surface: the surface, one optimizer's path over it, its final loss; in a sweep, every path so far."""
    cfg = exp.cfg
    opts = _options(exp)
    reused, overwrite = bool(cfg.get("resume")), bool(cfg.get("overwrite"))
    result = exp.directory.output(exp.directory.file("loss_surface.json"), "overwrite", overwrite) if reused else None
    png_path = exp.directory.output(exp.directory.file(FIGURE), "overwrite", overwrite)
    if reused:
        load_trained(exp)  # the other parameters frozen at their trained values
    entries = pick_entries(exp.model, opts.params)
    params = dict(exp.model.named_parameters())
    start = torch.tensor(opts.start if opts.start is not None else
                         [float(params[e.param].detach()[e.index]) for e in entries], dtype=torch.float32,
                         device=exp.device)
    loss = loss_of(exp, entries, opts.samples)
    optimizer_cfg = {k: v for k, v in cfg["optimizer"].items() if k not in ("scale_lr_with_batch", "base_batch_size")}
    path = descend(loss, start, optimizer_cfg, opts.steps)
    lowest = minimum(loss, start)
    extent = opts.extent or _extent(start, lowest)
    record = {"status": "completed", "mode": "loss_surface", "params": [e.label for e in entries],
              "optimizer": path_label(optimizer_cfg), "steps": len(path) - 1, "start": start.tolist(),
              "final_loss": _finite(path[-1][2]), "diverged": not path[-1][2] <= path[0][2],  # NaN or above the start
              "minimum": {"at": lowest[:2], "loss": lowest[2]}, "path": [[_finite(v) for v in p] for p in path],
              "extent": extent, "grid": opts.grid, "surface": surface(loss, extent, opts.grid, exp.device),
              "overrides": overrides}
    title = f"loss over ({', '.join(record['params'])}), {opts.steps} full-batch steps"
    # TensorBoard only: one pass is not a training run for MLflow's or the CSV's tables.
    logger = build_logger(exp.logger_cfg, exp.run_dir, only=("tensorboard",))
    png, image = render(surface_figure(record, [record], title))
    logger.images("loss_surface/path", image, opts.steps)
    record["figure"] = str(write_whole(png_path, png))
    final = _final(record, ".6g")
    console.console.print(f"{record['optimizer']}: final loss {final} after {record['steps']} steps from "
                          f"({start[0]:.4g}, {start[1]:.4g}); the minimum is {lowest[2]:.6g} at "
                          f"({lowest[0]:.4g}, {lowest[1]:.4g}). Figure: {png_path}", soft_wrap=True)
    if result is not None:
        exp.directory.write_json(result.name, record)
    else:
        exp.directory.write_metrics(record)
        sweep_figure(exp.run_dir, record, title, logger)
    logger.close()
    return record


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _final(record: dict[str, Any], spec: str) -> str:
    """The final loss as printed: its value, and whether the path diverged (it ended above its start)."""
    final = "NaN" if record["final_loss"] is None else format(record["final_loss"], spec)
    return f"{final} (diverged)" if record["diverged"] else final


def sweep_figure(run_dir: Path, record: dict[str, Any], title: str, logger: Any) -> Path | None:
    """In a sweep (Hydra wrote multirun.yaml in the folder above the job), every finished job's path over this
    job's surface, redrawn after each job into <sweep dir>/loss_surface.png; jobs over another surface are left out."""
    sweep_dir = run_dir.parent
    if not (sweep_dir / "multirun.yaml").is_file():
        return None
    same = []
    for metrics in sorted(sweep_dir.glob("*/metrics.json")):
        try:
            other = json.loads(metrics.read_text())
        except (OSError, ValueError):
            continue  # a job writing its file right now: the next job's figure has it
        if other.get("mode") == "loss_surface" and all(other.get(k) == record[k] for k in
                                                       ("params", "start", "extent", "grid", "surface")):
            same.append(other)
    png, image = render(surface_figure(record, same, title))
    logger.images("loss_surface/sweep", image, len(same))
    path = write_whole(sweep_dir / FIGURE, png)  # whole or not at all: jobs may run side by side
    finals = "; ".join(f"{o['optimizer']} {_final(o, '.4g')}" for o in same)
    console.console.print(f"Sweep figure, {len(same)} path(s) ({finals}): {path}", soft_wrap=True)
    return path


def render(figure: Any) -> tuple[bytes, torch.Tensor]:
    """The figure drawn once: as PNG bytes for the file, and as an image (1, 3, H, W) for TensorBoard; then freed."""
    from PIL import Image

    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    figures._pyplot().close(figure)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def surface_figure(record: dict[str, Any], paths: list[dict[str, Any]], title: str):
    """Contours of log10(loss) over the box, the minimum, and each path with its final loss in the legend."""
    plt = figures._pyplot()
    extent, grid = record["extent"], record["grid"]
    values = np.array([[np.nan if v is None else v for v in row] for row in record["surface"]], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 6.6), dpi=110)
    firsts, seconds = np.linspace(extent[0], extent[1], grid), np.linspace(extent[2], extent[3], grid)
    logs = np.log10(np.clip(values, 1e-12, None))
    filled = ax.contourf(firsts, seconds, logs, levels=30, cmap="viridis")
    ax.contour(firsts, seconds, logs, levels=15, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, label="log10 training loss")
    low = record["minimum"]
    ax.plot(*low["at"], marker="*", color="white", markersize=14, markeredgecolor="black", linestyle="none",
            label=f"minimum {low['loss']:.4g}", zorder=5)  # above the paths that end on it
    for other in paths:
        points = np.array([[np.nan if v is None else v for v in p[:2]] for p in other["path"]], dtype=float)
        outside = ~((points[:, 0] >= extent[0]) & (points[:, 0] <= extent[1]) & (points[:, 1] >= extent[2])
                    & (points[:, 1] <= extent[3]))
        if other["diverged"] and outside.any():  # drawn until it leaves the box: the rest would cross the figure
            points = points[:int(np.argmax(outside)) + 1]
        ax.plot(points[:, 0], points[:, 1], marker="o", markersize=2.5, linewidth=1.2,
                label=f"{other['optimizer']}: final loss {_final(other, '.4g')}")
    ax.plot(*record["start"], marker="o", color="black", markersize=7, linestyle="none", label="start", zorder=5)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(record["params"][0])
    ax.set_ylabel(record["params"][1])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.22)
    return fig
