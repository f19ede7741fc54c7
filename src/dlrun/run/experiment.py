"""One experiment from a composed config: build every piece, train, test once, write the results."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dlrun.engine import checkpoint, distributed
from dlrun.views import console, generative as generative_views
from dlrun.components.augment import AUGMENTATIONS
from dlrun.data import DATASETS, Splits, reuse
from dlrun.data.base import TASKS, Dataset, keep_subset
from dlrun.data.prepare import Prepare
from dlrun.views.dense import dense_view, refuse_moving_augmentation
from dlrun.diagnostics.cnn import last_conv
from dlrun.diagnostics.gradients import GradientMonitor
from dlrun.diagnostics.startup import batch_summary
from dlrun.errors import ConfigError
from dlrun.engine.evaluating import evaluating
from dlrun.components.init import INITS, apply_init
from dlrun.engine.signals import StopOnSignal
from dlrun.logger import LOGGERS
from dlrun.engine.memory import keep_freed_memory
from dlrun.components.losses import output_layer
from dlrun.modes import serve as serve_modes
from dlrun.models import MODELS
from dlrun.models.onednn_linear import use_onednn_linear
from dlrun.models.transfer import has_pretrained_weights, optimizer_parameters
from dlrun.components.optim import OPTIMIZERS, SCHEDULERS
from dlrun.diagnostics.reference import least_squares
from dlrun.registry import check_arguments
from dlrun.views.sequence import epoch_view
from dlrun.diagnostics.summary import summarize
from dlrun.tasks.base import INPUT_TASKS, build_loss, build_task, main_parameters, model_config, task_info
from dlrun.engine.trainer import (TrainerOptions, TrainState, autocast_for, fit, resolve_device, resolve_threads,
                         restore, use_channels_last)

TOP_LEVEL_KEYS = {"seed", "mode", "task", "resume", "dataset", "model", "loss", "optimizer", "scheduler", "init",
                  "augmentation", "trainer", "logger", "experiment", "lr_find", "predict", "export"}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Set both ways: a deterministic experiment earlier in the same process must not leave the flag on. Only
    # when it changes: the call imports torch._inductor's config, 0.9 s of every run's start on this CPU.
    if (torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled()):
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def _check_top_level(cfg: dict[str, Any]) -> None:
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"Unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_LEVEL_KEYS))}.",
                          key=unknown[0])
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"'seed={cfg.get('seed')!r}' must be an integer.", key="seed")
    if cfg.get("mode") not in MODES:
        raise ConfigError(f"'mode={cfg.get('mode')}' is not available; valid modes: {', '.join(MODES)}.", key="mode")
    if cfg.get("task") not in (None, *TASKS, *INPUT_TASKS):
        raise ConfigError(f"'task={cfg.get('task')}' is not a task dl-run knows; valid: {', '.join(TASKS + INPUT_TASKS)} "
                          f"(or leave it unset to take the dataset's).", key="task")


def lr_scale(rule: str, batch_size: int, base_batch_size: int) -> float:
    """How much to multiply the learning rate for this batch size (course 2 §4.2: adapt them together)."""
    rules = {"none": lambda r: 1.0, "linear": lambda r: r, "sqrt": lambda r: r ** 0.5}
    if rule not in rules:
        raise ConfigError(f"'optimizer.scale_lr_with_batch={rule}' must be one of {', '.join(rules)}.",
                          key="optimizer.scale_lr_with_batch")
    if base_batch_size < 1:
        raise ConfigError(f"'optimizer.base_batch_size={base_batch_size}' must be a positive integer.",
                          key="optimizer.base_batch_size")
    return rules[rule](batch_size / base_batch_size)


def hparams_of(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The run's settings for the HParams tab: each group's choice and its keys, flattened."""
    flat: dict[str, Any] = {"seed": cfg["seed"]}
    for group in ("dataset", "model", "loss", "optimizer", "scheduler", "init", "augmentation", "trainer"):
        for key, value in (cfg.get(group) or {}).items():
            if key not in ("progress", "device"):
                flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def build_data(dataset_cfg: dict[str, Any], seed: int, task: str | None = None) -> Dataset:
    """The dataset, with the class subset and training fraction that every dataset takes (course 3 §4.2)."""
    cfg = dict(dataset_cfg)
    classes, fraction = cfg.pop("classes", None), cfg.pop("train_fraction", 1.0)
    # A dataset that can serve several tasks (shapes: classes, masks or boxes) declares a `task` argument.
    # In a sweep the previous job's dataset is reused when its settings, seed and task are the same.
    dataset = reuse.build_dataset([cfg, seed, task], lambda: DATASETS.build(cfg, seed=seed, task=task))
    return keep_subset(dataset, classes, fraction, seed)


class Experiment:
    """Every built piece of one run, ready to train; building it checks the whole config first."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path) -> None:
        _check_top_level(cfg)
        self.cfg = cfg
        self.run_dir = run_dir
        self.opts = TrainerOptions(**check_arguments(TrainerOptions, cfg["trainer"], "trainer"))
        self.device = distributed.device_for(resolve_device(self.opts.device))
        autocast_for(self.device, self.opts.precision)  # refuses fp16 off a GPU before anything is written
        if distributed.launched() and self.opts.devices not in (1, distributed.world_size()):
            raise ConfigError(f"'trainer.devices={self.opts.devices}' but torchrun started "
                              f"{distributed.world_size()} processes: give one or the other.", key="trainer.devices")
        self.threads = resolve_threads(self.opts.threads, self.opts.deterministic)
        torch.set_num_threads(self.threads)
        keep_freed_memory()
        seed_everything(cfg["seed"], self.opts.deterministic)

        self.data = build_data(cfg["dataset"], cfg["seed"], cfg.get("task"))
        self.info = task_info(cfg.get("task"), self.data.info)  # reconstruction and gan see the inputs only
        self.loss = build_loss(cfg["loss"], self.info, self.data.splits.y_train)
        # Transfer learning may pretrain its backbone first, on other classes of the same dataset (course 3 §4.2).
        other_classes = lambda classes: build_data({**cfg["dataset"], "classes": classes,  # noqa: E731
                                                    "train_fraction": 1.0}, cfg["seed"], cfg.get("task"))
        model = MODELS.build(model_config(cfg["model"], self.info), info=self.info, out_features=self.loss.out_features,
                             seed=cfg["seed"], load_classes=other_classes, run_dir=run_dir)
        last = output_layer(self.loss.output_activation)
        self.model = torch.nn.Sequential(model, last) if last is not None else model
        init_cfg = dict(cfg["init"])
        bias = init_cfg.pop("bias", 0.0)
        weight_fn = INITS.build(init_cfg)
        if weight_fn is not None and has_pretrained_weights(self.model):
            raise ConfigError(f"'init={init_cfg.get('name')}' would overwrite the pretrained backbone of "
                              f"model={cfg['model'].get('name')}: use init=default (the new head starts as PyTorch "
                              f"initialises it).", key="init")
        apply_init(self.model, weight_fn, bias)
        self.model.to(self.device)
        self.opts.channels_last = use_channels_last(self.opts.channels_last, self.device, self.model)
        if self.opts.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opts.onednn_linear = use_onednn_linear(self.opts.onednn_linear, self.device, self.model)
        self.splits = self.data.splits.to(self.device)  # held as tensors on the training device
        if self.opts.overfit_batches:
            # The same few batches for training and validation: a sanity check that the model can fit anything.
            n = self.opts.overfit_batches * self.opts.batch_size_for(len(self.splits.x_train))
            x, y = self.splits.x_train[:n], self.splits.y_train[:n]
            self.splits = Splits(x, y, x, y, self.splits.x_test, self.splits.y_test)

        optimizer_cfg = dict(cfg["optimizer"])
        self.lr_scale = lr_scale(optimizer_cfg.pop("scale_lr_with_batch", "none"),
                                 self.opts.batch_size_for(len(self.splits.x_train)),
                                 optimizer_cfg.pop("base_batch_size", 32))
        if self.lr_scale != 1.0 and "lr" in optimizer_cfg:
            optimizer_cfg["lr"] = optimizer_cfg["lr"] * self.lr_scale
        # Frozen layers are left out; a fine-tuned backbone may learn at its own rate (a second parameter group);
        # a GAN's optimizer group moves its discriminator, the task builds the generator's.
        params = main_parameters(self.model) if self.info.task == "gan" else optimizer_parameters(self.model)
        self.optimizer = OPTIMIZERS.build(optimizer_cfg, params=params)
        self.task = build_task(self.info, self.loss, self.model,
                               lambda params: OPTIMIZERS.build(optimizer_cfg, params=params),
                               cfg["scheduler"].get("name"), cfg["mode"], self.opts.early_stopping_patience)
        monitors = ["val/loss", "train/loss", *(f"val/{m}" for m in self.task.metric_names)]
        if self.opts.monitor not in monitors:
            raise ConfigError(f"'trainer.monitor={self.opts.monitor}' is not a metric of this {self.info.task} run; "
                              f"valid: {', '.join(monitors)}.", key="trainer.monitor")
        steps_per_epoch = -(-len(self.splits.x_train) // self.opts.batch_size_for(len(self.splits.x_train)))
        total = steps_per_epoch * self.opts.epochs
        if self.opts.max_steps is not None:
            total = min(total, self.opts.max_steps)
        self.schedule = SCHEDULERS.build(cfg["scheduler"], optimizer=self.optimizer, total_steps=total,
                                         steps_per_epoch=steps_per_epoch, epochs=self.opts.epochs)
        augment = AUGMENTATIONS.build(cfg["augmentation"])
        refuse_moving_augmentation(augment, self.info)
        self.prepare = Prepare(self.info, augment, self.device)
        self.logger_cfg = dict(cfg["logger"])
        # Check the logger's keys now; it is built (and writes files) only when training starts.
        check_arguments(LOGGERS.get(self.logger_cfg.get("name", "tensorboard"), "logger"),
                        {k: v for k, v in self.logger_cfg.items() if k != "name"}, "logger",
                        {"run_dir": None, "purge_step": None})
        sample = self.prepare(self.splits.x_train[:2])
        try:
            self.summary = summarize(self.model, sample)
        except RuntimeError as err:
            raise ConfigError(f"'model={cfg['model'].get('name')}' cannot take dataset '{self.info.name}' inputs of "
                              f"shape {tuple(self.info.input_shape)}: {err}", key="model") from None
        if self.info.task not in INPUT_TASKS:  # generative tasks check their own outputs (tasks.py)
            self._check_output_fits_targets(cfg, sample)

    def _check_output_fits_targets(self, cfg: dict[str, Any], sample: torch.Tensor) -> None:
        """The model's output must fit the loss and the task's targets (classes, values, masks, boxes)."""
        with torch.no_grad(), evaluating(self.model):
            output = self.model(sample).float()
        try:
            self.loss(output, self.splits.y_train[:2])
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigError(f"'model={cfg['model'].get('name')}' gives outputs of shape {tuple(output.shape[1:])}, "
                              f"which loss '{self.loss.name}' cannot score against this {self.info.task} dataset's "
                              f"targets of shape {tuple(self.splits.y_train.shape[1:])} ({str(err).splitlines()[0]}). "
                              f"Pick a model made for the task (segmentation: unet; detection: yolo).",
                              key="model") from None


def run(cfg_node: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Train (or resume) one experiment and return what metrics.json holds."""
    cfg = OmegaConf.to_container(cfg_node, resolve=True)
    started = time.perf_counter()
    exp = Experiment(cfg, run_dir)
    if MODES[cfg["mode"]] is not None:
        return MODES[cfg["mode"]](exp, cfg, run_dir, overrides)
    checkpoint_dir = run_dir / "checkpoints"
    generator = torch.Generator().manual_seed(cfg["seed"])
    state = None
    # A job that a cluster tool requeued after pre-empting it starts again in its own run directory.
    requeued = not cfg.get("resume") and bool(os.environ.get("SUBMITIT_EXECUTOR")) and checkpoint.exists(checkpoint_dir)
    if cfg.get("resume") or requeued:
        ckpt, path, problems = checkpoint.load_latest(checkpoint_dir)
        refuse_changed_optimizer(cfg, ckpt.get("config"), path)
        state = restore(ckpt, exp.model, exp.optimizer, exp.schedule, generator, path, exp.task)
        # Only now, with the config and checkpoint proved good, is anything in the run directory changed.
        for problem in problems:
            console.print_warning(f"{problem}. Resuming from the previous good checkpoint, {path}, instead.")
        if distributed.launched():
            distributed.broadcast(None)  # every rank has read the checkpoint before rank 0 moves any file
        if problems and (checkpoint_dir / checkpoint.LAST).exists() and distributed.is_main():
            checkpoint.set_aside(checkpoint_dir / checkpoint.LAST)
        if not requeued and distributed.is_main():
            record_config(run_dir, cfg_node, overrides)
        within = f" (batch {state.batch} of epoch {state.epoch + 1})" if state.batch else ""
        console.console.print(f"{'Requeued: r' if requeued else 'R'}esuming from epoch {state.epoch}, step "
                              f"{state.step}{within} ({path})")
    else:
        console.config_tree(cfg)
    for leftover in checkpoint.remove_temporary(checkpoint_dir) if distributed.is_main() else []:
        console.console.print(f"Removed {leftover.name}, a checkpoint whose writing was interrupted.")
    rows, total, trainable = exp.summary
    console.model_table(rows, total, trainable, exp.info.input_shape)
    console.console.print(f"device {exp.device} ({exp.threads} CPU thread{'s' * (exp.threads > 1)}), "
                          f"{len(exp.splits.x_train)} train / {len(exp.splits.x_val)} val / "
                          f"{len(exp.splits.x_test)} test samples, task {exp.info.task}, loss {exp.loss.name}")
    if distributed.launched():
        batch = exp.opts.batch_size_for(len(exp.splits.x_train))
        console.console.print(f"data parallel: {distributed.world_size()} processes, global batch {batch} "
                              f"(about {batch // distributed.world_size()} per process)")
    if exp.lr_scale != 1.0:
        console.console.print(f"learning rate scaled ×{exp.lr_scale:.3g} for batch size "
                              f"{exp.opts.batch_size_for(len(exp.splits.x_train))}: "
                              f"{exp.optimizer.param_groups[0]['lr']:.4g}")

    chance, initial, warning = exp.task.startup_check(exp.model, exp.prepare(exp.splits.x_train[:1024]),
                                                      exp.splits.y_train[:1024], exp.data.splits.y_train, exp.info)
    if state is None and initial is not None:
        console.console.print(f"initial loss {initial:.4f} (a constant prediction scores {chance:.4f})")
        if warning:
            console.print_warning(warning)
    logger = (LOGGERS.build(exp.logger_cfg, run_dir=run_dir, purge_step=state.step + 1 if state else None)
              if distributed.is_main() else LOGGERS.build({"name": "none"}, run_dir=run_dir))  # rank 0 logs
    if state is None:
        size = exp.opts.batch_size_for(len(exp.splits.x_train))
        logger.text("data/first_batch", batch_summary(exp.prepare(exp.splits.x_train[:size]),
                                                      exp.splits.y_train[:size], exp.info.feature_names), 0)
    extra = {"config": OmegaConf.to_yaml(cfg_node, resolve=True), "scaling": exp.info.scaling()}
    monitor = (GradientMonitor(exp.model, logger, logger.gradients_every_n_steps, logger.histograms)
               if logger.gradients_every_n_steps else None)
    try:
        with console.EpochProgress(exp.opts.progress) as progress, StopOnSignal() as stop, \
                torch.autograd.set_detect_anomaly(exp.opts.detect_anomaly):
            try:
                state = fit(exp.model, exp.loss, exp.optimizer, exp.schedule, exp.splits, exp.info, exp.opts,
                            exp.device, logger, checkpoint_dir, extra, exp.prepare, progress, state, generator,
                            monitor=monitor, stop=stop, epoch_view=epoch_views(exp, logger, state), task=exp.task)
                if not distributed.is_main():
                    return {"status": "completed", "mode": "train", "rank": distributed.rank()}  # rank 0 scores
            except RuntimeError as err:
                if exp.opts.detect_anomaly and "nan" in str(err).lower():
                    raise FloatingPointError(f"trainer.detect_anomaly: {err} The warning above shows the forward "
                                             f"operation that produced it.") from None
                raise
        vanishing = monitor.vanishing_warning() if monitor is not None else None
        if vanishing:
            console.print_warning(vanishing)
            logger.text("diagnosis/gradient_flow", vanishing, state.step)

        # Test once, after training, on the best checkpoint (course 1 §6).
        best_path = checkpoint_dir / ("best.pt" if (checkpoint_dir / "best.pt").exists() else "last.pt")
        exp.model.load_state_dict(checkpoint.load(best_path)["model"])
        results = {split: exp.task.evaluate(exp.model, *exp.splits.split(split), exp.info, exp.opts.eval_batch_size,
                                            exp.prepare) for split in ("train", "val", "test")}
        final_metrics = {f"{split}/{k}": v for split, values in results.items() for k, v in values.items()}
        logger.hparams(hparams_of(cfg, overrides), {f"hparam/{k}": v for k, v in final_metrics.items()}, state.step)
        per_class = log_test_figures(exp, logger, state.step) if logger.figures else None
        if logger.figures and exp.info.task == "classification" and last_conv(exp.model) is not None:
            log_cnn_views(exp, logger, state.step)
        verdict = exp.task.verdict(state.history, chance)  # a GAN says the verdict does not apply
        logger.text("diagnosis/verdict", verdict.markdown(), state.step)
    finally:
        if monitor is not None:
            monitor.close()
        logger.close()

    reference = None
    model_name = cfg["model"].get("name")
    if exp.info.task == "regression" and model_name in ("linear", "polynomial"):
        reference = least_squares(exp.data.splits, exp.info, cfg["model"].get("degree", 1),
                                  cfg["model"].get("basis", "monomial"))

    console.console.print(f"Scored once, with the best checkpoint ({best_path.name}, epoch {state.best_epoch}):")
    console.results_table(results, title="results")
    if reference is not None:
        console.results_table({k: v for k, v in reference.items() if k != "weights"},
                              title="closed-form least squares on the same features (course 1 §5.1)")
    console.verdict_panel(verdict)
    if state.history:
        from dlrun.views import figures

        figures.save(figures.run_curves_figure(state.history, exp.task.main_metric,
                                               f"{exp.info.name}: curves {verdict.case}"),
                     run_dir / "curves.png")
    overfit = None
    if exp.opts.overfit_batches and chance is not None:
        final = state.history[-1]["train/loss"] if state.history else math.inf
        overfit = {"batches": exp.opts.overfit_batches, "final_train_loss": final, "chance_loss": chance,
                   "fits": final < 0.05 * chance}
        message = (f"overfit_batches={exp.opts.overfit_batches}: the training loss went from {chance:.4g} (chance) "
                   f"to {final:.4g}")
        if overfit["fits"]:
            console.console.print(f"{message}: the model can learn these batches by heart, the pipeline works.",
                                  soft_wrap=True)
        else:
            console.print_warning(f"{message}, not near zero: the model cannot even fit a few batches. Check the "
                                  f"labels, the loss, the learning rate, or give the model more capacity.")
    metrics = {
        "status": "completed",
        "verdict": verdict.as_dict(),
        "overfit_check": overfit,
        "initial_loss": {"value": initial, "chance": chance, "warning": warning},
        "gradient_flow": {"first_over_last_median": monitor.median_ratio() if monitor is not None else None, "warning": vanishing},
        "task": exp.info.task,
        "dataset": exp.info.name,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best": {"epoch": state.best_epoch, "monitor": exp.opts.monitor, "value": state.best_value},
        "test": results["test"],
        "test_per_class_accuracy": per_class,
        "evaluation": results,  # every split, scored with the best checkpoint
        "last_epoch": state.history[-1] if state.history else {},
        "parameters": total,
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "overrides": overrides,
        "history": state.history,
    }
    if reference is not None:
        metrics["least_squares"] = reference
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # soft_wrap: a long path stays on one line, so it can be copied whole.
    console.console.print(f"\nRun directory: {run_dir}\nOpen the curves:  tensorboard --logdir {run_dir}",
                          soft_wrap=True)
    return metrics


@torch.no_grad()
def log_test_figures(exp: Experiment, logger: Any, step: int) -> dict[str, float] | None:
    """Confusion matrix and per-class accuracy (classification) or predicted-vs-true (regression), on test."""
    from dlrun.views import figures

    if exp.info.task in ("seq2seq", "segmentation", "detection", "gan"):
        return None  # no single value or class per sample to plot; the epoch views show examples or samples
    if exp.info.task == "reconstruction":
        view = generative_views.epoch_view(exp.info, exp.model, exp.splits.x_test, exp.prepare, logger, tag="test")
        if view is not None:
            view(exp.model, step)
        return None
    exp.model.eval()
    x, y = exp.splits.x_test, exp.splits.y_test
    outputs = torch.cat([exp.model(exp.prepare(xb)) for xb in x.split(exp.opts.eval_batch_size)]).float()
    if exp.info.task != "classification":
        predicted, target = outputs.reshape(y.shape), y
        if exp.info.target_mean is not None:
            mean, std = exp.info.target_mean.to(y.device), exp.info.target_std.to(y.device)
            predicted, target = predicted * std + mean, target * std + mean
        logger.figure("test/predicted_vs_true", figures.scatter_figure(predicted, target), step)
        return None
    names = exp.info.class_names or [str(i) for i in range(exp.info.num_classes)]
    matrix = figures.confusion_matrix(exp.loss.predict_classes(outputs), y, exp.info.num_classes)
    logger.figure("test/confusion_matrix", figures.confusion_figure(matrix, names), step)
    totals = matrix.sum(dim=1)
    per_class = {name: (matrix[i, i] / totals[i]).item() for i, name in enumerate(names) if totals[i] > 0}
    logger.scalars({f"test_per_class_accuracy/{name}": value for name, value in per_class.items()}, step)
    return per_class


def epoch_views(exp: Experiment, logger: Any, state: TrainState | None) -> Any:
    """What fit() logs after each validation: the sequence views, masks or boxes drawn over images (segmentation,
    detection), inputs and reconstructions or samples (generative tasks), and Grad-CAM every N epochs for CNNs."""
    views = [generative_views.epoch_view(exp.info, exp.model, exp.splits.x_val, exp.prepare, logger)
             if exp.info.task in INPUT_TASKS else epoch_view(exp.info, exp.splits.x_val, exp.splits.y_val, logger),
             dense_view(exp.info, exp.splits.x_val, exp.splits.y_val, logger, exp.prepare)]
    every = getattr(logger, "gradcam_every_n_epochs", 0)
    if every and logger.figures and exp.info.task == "classification" and last_conv(exp.model) is not None:
        epoch = state.epoch if state is not None else 0  # a resumed run keeps counting from its epoch

        def cnn_view(model: torch.nn.Module, step: int) -> None:
            nonlocal epoch
            epoch += 1
            if epoch % every == 0:  # course 3 §5.1: watch where the network looks as it learns
                log_cnn_views(exp, logger, step)
        views.append(cnn_view)
    views = [view for view in views if view is not None]
    if not views:
        return None
    return lambda model, step: [view(model, step) for view in views]


def log_cnn_views(exp: Experiment, logger: Any, step: int, panel: int = 8) -> None:
    """Grad-CAM over a fixed panel of test images, the first layer's filters and feature maps (course 3 §5.1)."""
    from dlrun.diagnostics.cnn import feature_maps_grid, filters_grid, grad_cam, grad_cam_figure

    images = exp.prepare(exp.splits.x_test[:panel])  # the first test images: the same panel in every run
    true = exp.splits.y_test[:panel]
    # Called between epochs too: evaluating() hands the model back to training with dropout and BN as before.
    with torch.no_grad(), evaluating(exp.model):
        predicted = exp.loss.predict_classes(exp.model(images).float())
    if exp.loss.binary:
        return  # one output: Grad-CAM per class needs one score per class
    names = exp.info.class_names or [str(i) for i in range(exp.info.num_classes)]
    figure = grad_cam_figure(images, grad_cam(exp.model, images, predicted), grad_cam(exp.model, images, true),
                             predicted.tolist(), true.tolist(), names)
    logger.figure("cnn/grad_cam", figure, step)
    filters = filters_grid(exp.model)
    maps = feature_maps_grid(exp.model, images)
    logger.images("cnn/first_layer_filters", filters.unsqueeze(0), step)
    logger.images("cnn/first_layer_feature_maps", maps.unsqueeze(0), step)


def run_gradcam(exp: Experiment, cfg: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """mode=gradcam resume=<run dir>: Grad-CAM of a trained CNN over its test panel, into the same run."""
    from dlrun.views import figures
    from dlrun.diagnostics.cnn import grad_cam, grad_cam_figure

    if not cfg.get("resume"):
        raise ConfigError("'mode=gradcam' looks inside a trained run: give it with resume=<run dir>, e.g. "
                          "dl-run mode=gradcam resume=outputs/2026-01-01/12-00-00_1234.", key="mode")
    if exp.info.task != "classification" or last_conv(exp.model) is None or exp.loss.binary:
        raise ConfigError(f"'mode=gradcam' needs a CNN classifier with one score per class; the run at {run_dir} "
                          f"trains model={cfg['model'].get('name')} on {exp.info.task}.", key="mode")
    checkpoint_dir = run_dir / "checkpoints"
    path = checkpoint_dir / ("best.pt" if (checkpoint_dir / "best.pt").exists() else checkpoint.LAST)
    exp.model.load_state_dict(checkpoint.load(path)["model"])
    images, true = exp.prepare(exp.splits.x_test[:8]), exp.splits.y_test[:8]
    with torch.no_grad():
        exp.model.eval()
        predicted = exp.loss.predict_classes(exp.model(images).float())
    names = exp.info.class_names or [str(i) for i in range(exp.info.num_classes)]
    figure = grad_cam_figure(images, grad_cam(exp.model, images, predicted), grad_cam(exp.model, images, true),
                             predicted.tolist(), true.tolist(), names)
    png = figures.save(figure, run_dir / "grad_cam.png")
    console.console.print(f"Grad-CAM of {path.name} over 8 test images: {png}", soft_wrap=True)
    return {"status": "completed", "mode": "gradcam", "checkpoint": str(path), "figure": str(png)}


def run_lr_find(exp: Experiment, cfg: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """mode=lr_find: sweep the learning rate, plot loss against it, suggest one; the weights are thrown away."""
    from dlrun.views import figures
    from dlrun.diagnostics.lr_finder import find_lr

    inputs = {"model": exp.model, "loss_fn": exp.loss, "optimizer": exp.optimizer, "x": exp.splits.x_train,
              "y": exp.splits.y_train, "batch_size": exp.opts.batch_size_for(len(exp.splits.x_train)),
              "generator": torch.Generator().manual_seed(cfg["seed"]), "prepare": exp.prepare}
    finding = find_lr(**check_arguments(find_lr, cfg.get("lr_find") or {}, "lr_find", inputs))
    logger = LOGGERS.build(exp.logger_cfg, run_dir=run_dir)
    for step, (lr, loss) in enumerate(zip(finding.lrs, finding.losses), start=1):
        logger.scalars({"lr_find/loss": loss, "lr_find/lr": lr}, step)
    figure = figures.curves_figure({"smoothed training loss": list(zip(finding.lrs, finding.losses))},
                                   "loss", "learning-rate finder", log_x=True, xlabel="learning rate")
    if finding.suggestion is not None:
        figure.axes[0].axvline(finding.suggestion, color="red", linestyle="--", linewidth=1)
    logger.figure("lr_find/curve", figure, len(finding.lrs), close=False)
    png = figures.save(figure, run_dir / "lr_find.png")
    logger.close()
    metrics = {"status": "completed", "mode": "lr_find", "suggested_lr": finding.suggestion,
               "exploded": finding.stopped_early, "lrs": finding.lrs, "losses": finding.losses,
               "overrides": overrides}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if finding.suggestion is None:
        console.print_warning("The loss never fell: widen the range (lr_find.min_lr, lr_find.max_lr).")
    else:
        rest = " ".join(o for o in overrides if not o.startswith(("mode=", "lr_find.")))
        console.console.print(f"Suggested learning rate: {finding.suggestion:.3g} (steepest fall of the loss). "
                              f"Train with it:\n  dl-run {rest + ' ' if rest else ''}"
                              f"optimizer.lr={finding.suggestion:.3g}", soft_wrap=True)
    console.console.print(f"Loss against learning rate: {png}", soft_wrap=True)
    return metrics


def refuse_changed_optimizer(cfg: dict[str, Any], saved_yaml: str | None, path: Path) -> None:
    """A resumed run continues its optimizer and scheduler from their saved state, which holds their settings
    (learning rate, momentum, schedule): a changed setting would be silently overwritten, so it is refused."""
    if not saved_yaml:
        return
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml), resolve=True)
    changed = [f"{group}.{key}={cfg[group].get(key)} (was {saved[group].get(key)})"
               for group in ("optimizer", "scheduler") if isinstance(saved.get(group), dict)
               for key in sorted(set(cfg[group]) | set(saved[group])) if cfg[group].get(key) != saved[group].get(key)]
    if changed:
        raise ConfigError(f"Resuming from {path} continues the optimizer and scheduler from their saved state, so "
                          f"{', '.join(changed)} would have no effect. Resume without these overrides, or start a new "
                          f"run with them.", key=changed[0].split("=", 1)[0])


# mode=<name> -> what runs it; None is training, in run() itself. eval, predict and export are in modes.py.
MODES: dict[str, Callable[..., dict[str, Any]] | None] = {"train": None, "lr_find": run_lr_find,
                                                          "gradcam": run_gradcam, **serve_modes.MODES}


def record_config(run_dir: Path, cfg_node: DictConfig, overrides: list[str]) -> None:
    """Update .hydra/config.yaml and overrides.yaml of a resumed run, as Hydra writes them for a new one."""
    hydra_dir = run_dir / ".hydra"
    OmegaConf.save(cfg_node, hydra_dir / "config.yaml")
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))


def remove_unfinished(run_dir: Path) -> None:
    """After bad input, leave no run directory that looks like a run: remove one holding only Hydra's files."""
    if not run_dir.is_dir():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)
