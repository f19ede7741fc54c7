"""mode=lr_find: the learning-rate finder; the loss against a rising learning rate, and a suggestion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from dlrun.diagnostics.lr_finder import find_lr
from dlrun.loggers import build_logger
from dlrun.registry import check_arguments
from dlrun.views import console, figures

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment


def run_lr_find(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=lr_find: sweep the learning rate, plot loss against it, suggest one; the weights are thrown away."""
    cfg = exp.cfg
    # On a run of its own, its metrics.json; with resume=<run>, lr_find.json beside the training's metrics.json.
    reused, overwrite = bool(cfg.get("resume")), bool(cfg.get("overwrite"))
    result = exp.directory.output(exp.directory.file("lr_find.json"), "overwrite", overwrite) if reused else None
    png_path = exp.directory.output(exp.directory.file("lr_find.png"), "overwrite", overwrite)
    inputs = {"parts": exp.parts, "generator": torch.Generator().manual_seed(cfg["seed"])}
    finding = find_lr(**check_arguments(find_lr, cfg.get("lr_find") or {}, "lr_find", inputs))
    # TensorBoard only: the finder's curve is not a training run for MLflow's or the CSV's tables.
    logger = build_logger(exp.logger_cfg, exp.run_dir, only=("tensorboard",))
    for step, (lr, loss) in enumerate(zip(finding.lrs, finding.losses), start=1):
        logger.scalars({"lr_find/loss": loss, "lr_find/lr": lr}, step)
    figure = figures.curves_figure({"smoothed training loss": list(zip(finding.lrs, finding.losses))},
                                   "loss", "learning-rate finder", log_x=True, xlabel="learning rate")
    if finding.suggestion is not None:
        figure.axes[0].axvline(finding.suggestion, color="red", linestyle="--", linewidth=1)
    logger.figure("lr_find/curve", figure, len(finding.lrs), close=False)
    png = figures.save(figure, png_path)
    logger.close()
    metrics = {"status": "completed", "mode": "lr_find", "suggested_lr": finding.suggestion,
               "exploded": finding.stopped_early, "lrs": finding.lrs, "losses": finding.losses,
               "overrides": overrides}
    if result is not None:
        exp.directory.write_json(result.name, metrics)
    else:
        exp.directory.write_metrics(metrics)
    if finding.suggestion is None:
        console.print_warning("The loss never fell: widen the range (lr_find.min_lr, lr_find.max_lr).")
    else:
        rest = " ".join(o for o in overrides if not o.startswith(("mode=", "lr_find.")))
        console.console.print(f"Suggested learning rate: {finding.suggestion:.3g} (steepest fall of the loss). "
                              f"Train with it:\n  dl-run {rest + ' ' if rest else ''}"
                              f"optimizer.lr={finding.suggestion:.3g}", soft_wrap=True)
    console.console.print(f"Loss against learning rate: {png}", soft_wrap=True)
    return metrics
