"""One experiment from a composed config: every piece built and checked, ready for the Trainer or a mode."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrun import startup_collector
from dlrun.components.augment import AUGMENTATIONS
from dlrun.components.init import INITS, apply_init
from dlrun.components.losses import output_layer
from dlrun.components.optim import OPTIMIZERS, SCHEDULERS, add_l1
from dlrun.data import DATASETS, Splits
from dlrun.data.base import Dataset, keep_subset
from dlrun.data.outliers import add_outliers, check_outliers
from dlrun.data.prepare import Prepare
from dlrun.data.reuse import DatasetCache
from dlrun.diagnostics.summary import summarize
from dlrun.diagnostics.timing import phase
from dlrun.engine import distributed
from dlrun.engine.determinism import deterministic_twins
from dlrun.engine.evaluating import evaluating
from dlrun.engine.memory import check_fits_on_device, keep_freed_memory
from dlrun.engine.options import (TrainerOptions, autocast_for, resolve_device, resolve_threads, set_up_cuda,
                                  use_channels_last)
from dlrun.engine.trainer import TrainingParts
from dlrun.errors import ConfigError
from dlrun.loggers import check_logger, split_config
from dlrun.models import MODELS
from dlrun.models.onednn_linear import use_onednn_linear
from dlrun.models.transfer import has_pretrained_weights
from dlrun.registry import check_arguments, trusting
from dlrun.run.pretrain import pretrained_source
from dlrun.run.run_directory import RunDirectory
from dlrun.tasks import TASKS, Choices, build_task, task_class, task_info
from dlrun.views import ViewInputs, console

TOP_LEVEL_KEYS = {"seed", "mode", "task", "resume", "dataset", "model", "loss", "optimizer", "scheduler", "init",
                  "augmentation", "trainer", "logger", "experiment", "lr_find", "backprop", "loss_surface", "predict",
                  "export", "overwrite", "trust_code", "sweep"}


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
    from dlrun.modes import MODES

    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"Unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_LEVEL_KEYS))}.",
                          key=unknown[0])
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"'seed={seed!r}' must be an integer from 0 to 4294967295 (2**32-1, what NumPy's "
                          f"generator takes), e.g. seed=0.", key="seed")
    if not isinstance(cfg.get("overwrite", False), bool):
        raise ConfigError(f"'overwrite={cfg.get('overwrite')!r}' must be true or false.", key="overwrite")
    trusted = cfg.get("trust_code") or []
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise ConfigError(f"'trust_code={trusted!r}' must be a list of 'package.module.function' names, e.g. "
                          f"trust_code=[my_code.build_tiny_cnn].", key="trust_code")
    if cfg.get("mode") not in MODES:
        raise ConfigError(f"'mode={cfg.get('mode')}' is not available; valid modes: {', '.join(MODES)}.", key="mode")


def trusted_code(cfg: dict[str, Any]) -> list[str]:
    """The `_target_` functions the user names now (on the command line, in dl-run's configs or a --config-dir given
    now) and those listed in trust_code: the only code a run folder's saved config may make dl-run call."""
    found: list[str] = list(cfg.get("trust_code") or [])

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                found.append(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in cfg.items() if k != "trust_code"})
    return found


def _check_task(task: str | None) -> None:
    """Once the dataset is built: a user's `_target_` module may have registered its own task on import."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"'task={task}' is not a task dl-run knows; valid: {', '.join(TASKS.names())} "
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


def hparams_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's settings for the HParams tab: each group's choice and its keys, flattened."""
    flat: dict[str, Any] = {"seed": cfg["seed"]}
    for group in ("dataset", "model", "loss", "optimizer", "scheduler", "init", "augmentation", "trainer"):
        for key, value in (cfg.get(group) or {}).items():
            if key not in ("progress", "device"):
                flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def build_data(dataset_cfg: dict[str, Any], seed: int, task: str | None = None,
               cache: DatasetCache | None = None) -> Dataset:
    """The dataset, with the class subset and training fraction that every dataset takes (course 3 §4.2), and the
    outliers a regression dataset's training targets may be given on purpose (course 2 §4.1)."""
    cfg = dict(dataset_cfg)
    classes, fraction = cfg.pop("classes", None), cfg.pop("train_fraction", 1.0)
    outliers, outlier_scale = cfg.pop("outliers", 0.0), cfg.pop("outlier_scale", 10.0)
    check_outliers(outliers, outlier_scale)  # before the dataset is loaded
    # A dataset that can serve several tasks (shapes: classes, masks or boxes) declares a `task` argument.
    # In a sweep the previous job's dataset is reused when its settings, seed and task are the same.
    # An unset top-level task must not hide dataset.task (dataset=csv dataset.task=regression).
    build = lambda: DATASETS.build(cfg, seed=seed, **({} if task is None else {"task": task}))  # noqa: E731
    dataset = cache.build([cfg, seed, task], build) if cache is not None else build()
    return add_outliers(keep_subset(dataset, classes, fraction, seed), outliers, outlier_scale, seed)


class Experiment:
    """Every built piece of one run, ready to train; building it checks the whole config first."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path, datasets: DatasetCache | None = None) -> None:
        _check_top_level(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.directory = RunDirectory(run_dir)
        self._set_up_machine()
        with phase("data"):
            self.data = build_data(cfg["dataset"], cfg["seed"], cfg.get("task"), datasets)
        _check_task(cfg.get("task"))
        for warning in self.data.warnings:  # also kept in metrics.json: bad data is never used without a word
            console.print_warning(warning)
        self.info = task_info(cfg.get("task"), self.data.info)  # reconstruction and gan see the inputs only
        self.task_class = task_class(self.info.task)
        self.loss = self.task_class.build_loss(cfg["loss"], self.info, self.data.splits.y_train)
        if self.loss.warning:  # loss.check=false: kept in metrics.json too, a wrong loss is never used without a word
            console.print_warning(self.loss.warning)
        with phase("model and initialisation"):
            self._build_model()
        with phase("optimizer, augmentation, task"):
            self._build_optimization()
        startup_collector.resume()  # the last heavy import (torch._dynamo, by the optimizer) is behind
        with phase("checks: logger keys, model summary, a first batch"):
            self._check_fit()

    def _set_up_machine(self) -> None:
        """Trainer options, device, CPU threads and seeds: before anything random is drawn."""
        self.opts = TrainerOptions(**check_arguments(TrainerOptions, self.cfg["trainer"], "trainer"))
        self.device = distributed.device_for(resolve_device(self.opts.device))
        autocast_for(self.device, self.opts.precision)  # refuses fp16 off a GPU before anything is written
        set_up_cuda(self.device, self.opts.deterministic)  # before CUDA's first matrix product
        if distributed.launched() and self.opts.devices not in (1, distributed.world_size()):
            raise ConfigError(f"'trainer.devices={self.opts.devices}' but torchrun started "
                              f"{distributed.world_size()} processes: give one or the other.", key="trainer.devices")
        self.threads = resolve_threads(self.opts.threads, self.opts.deterministic)
        torch.set_num_threads(self.threads)
        keep_freed_memory()
        seed_everything(self.cfg["seed"], self.opts.deterministic)

    def _build_model(self) -> None:
        """The model (after pretraining its backbone, for model=transfer), initialised, on its device and layout."""
        cfg = self.cfg
        # Transfer learning may pretrain its backbone first, on other classes of the same dataset (course 3 §4.2):
        # a step of the experiment, before the model is built; the builder receives the trained run as its source.
        model_cfg = pretrained_source(self.task_class.model_config(cfg["model"]), cfg, self.run_dir, self.device)
        try:
            with trusting(trusted_code(cfg)):  # a transfer source's saved config may not call other code
                model = MODELS.build(model_cfg, info=self.info, out_features=self.loss.out_features)
        except (RuntimeError, MemoryError, OverflowError) as err:  # e.g. a layer of 10^11 units
            sizes = ", ".join(f"model.{k}={v}" for k, v in model_cfg.items() if isinstance(v, (int, float, list))
                              and not isinstance(v, bool))
            raise ConfigError(f"'model={model_cfg.get('name') or model_cfg.get('_target_')}' cannot be built with "
                              f"{sizes or 'these settings'}: {str(err).splitlines()[0][:200]}. A layer this size does "
                              f"not fit in memory: give smaller sizes.", key="model") from None
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
        self.loss.to(self.device)  # a loss's buffers too (msle's target statistics)
        if self.opts.deterministic and self.device.type == "cuda":
            deterministic_twins(self.model)  # layers whose CUDA backward would refuse deterministic mode
        self.opts.channels_last = use_channels_last(self.opts.channels_last, self.device, self.model)
        if self.opts.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opts.onednn_linear = use_onednn_linear(self.opts.onednn_linear, self.device, self.model)
        check_fits_on_device(self.data.splits.tensors(), self.device)
        self.splits = self.data.splits.to(self.device)  # held as tensors on the training device
        if self.opts.overfit_batches:
            # The same few batches for training and validation: a sanity check that the model can fit anything.
            n = self.opts.overfit_batches * self.opts.batch_size_for(len(self.splits.x_train))
            x, y = self.splits.x_train[:n], self.splits.y_train[:n]
            self.splits = Splits(x, y, x, y, self.splits.x_test, self.splits.y_test)

    def _build_optimization(self) -> None:
        """Optimizer (its learning rate scaled with the batch when asked), augmentation, task and schedule."""
        cfg = self.cfg
        optimizer_cfg = dict(cfg["optimizer"])
        batch_size = self.opts.batch_size_for(len(self.splits.x_train))
        self.lr_scale = lr_scale(optimizer_cfg.pop("scale_lr_with_batch", "none"), batch_size,
                                 optimizer_cfg.pop("base_batch_size", 32))
        if self.lr_scale != 1.0 and "lr" in optimizer_cfg:
            optimizer_cfg["lr"] = optimizer_cfg["lr"] * self.lr_scale
        # Frozen layers are left out; a fine-tuned backbone may learn at its own rate (a second parameter group);
        # a GAN's optimizer group moves its discriminator, the task builds the generator's.
        l1 = optimizer_cfg.pop("l1", 0.0)  # the L1 penalty: a hook on whichever optimizer is built
        optimizer = OPTIMIZERS.build(optimizer_cfg, params=self.task_class.optimizer_parameters(self.model))
        self.optimizer = add_l1(optimizer, l1)
        augment = AUGMENTATIONS.build(cfg["augmentation"])
        choices = Choices(cfg["mode"], cfg["scheduler"].get("name"), self.opts.early_stopping_patience, augment)
        self.task = build_task(self.info, self.loss, self.model,
                               lambda params: OPTIMIZERS.build(optimizer_cfg, params=params), choices)
        monitors = ["val/loss", "train/loss", *(f"val/{m}" for m in self.task.metric_names)]
        if self.opts.monitor not in monitors:
            raise ConfigError(f"'trainer.monitor={self.opts.monitor}' is not a metric of this {self.info.task} run; "
                              f"valid: {', '.join(monitors)}.", key="trainer.monitor")
        steps_per_epoch = -(-len(self.splits.x_train) // batch_size)
        total = steps_per_epoch * self.opts.epochs
        if self.opts.max_steps is not None:
            total = min(total, self.opts.max_steps)
        self.schedule = SCHEDULERS.build(cfg["scheduler"], optimizer=self.optimizer, total_steps=total,
                                         steps_per_epoch=steps_per_epoch, epochs=self.opts.epochs)
        self.prepare = Prepare(self.info, augment, self.device)

    def _check_fit(self) -> None:
        """The logger's keys, and a first batch through the model: its output must fit the loss and targets."""
        self.logger_cfg = dict(self.cfg["logger"])
        # Check the logger's keys, packages and servers now; it is built (and writes files) only when training starts.
        check_logger(self.logger_cfg, self.run_dir)
        self.view_layers = view_layers(self.model, self.logger_cfg)
        sample = self.prepare(self.splits.x_train[:2])
        model_name = self.cfg["model"].get("name")
        try:
            self.summary = summarize(self.model, sample)
        except RuntimeError as err:
            raise ConfigError(f"'model={model_name}' cannot take dataset '{self.info.name}' inputs of "
                              f"shape {tuple(self.info.input_shape)}: {err}", key="model") from None
        if not self.task_class.takes_labels:  # generative tasks check their own outputs
            return
        with torch.no_grad(), evaluating(self.model):
            try:  # the task's own loss: it may read the targets its own way
                self.task.loss(self.model, sample, self.splits.y_train[:2])
                return
            except (RuntimeError, ValueError, IndexError) as err:
                problem, output = str(err).splitlines()[0], self.model(sample)
        raise ConfigError(f"'model={model_name}' gives outputs of shape {tuple(output.shape[1:])}, "
                          f"which loss '{self.loss.name}' cannot score against this {self.info.task} dataset's "
                          f"targets of shape {tuple(self.splits.y_train.shape[1:])} ({problem}). "
                          f"Pick a model made for the task (segmentation: unet; detection: yolo).", key="model")

    def score_every_split(self) -> dict[str, dict[str, float]]:
        """The loss and the task's metrics of the model as it is now, on the train, val and test splits."""
        with autocast_for(self.device, self.opts.precision)[0]:  # as it was trained and validated
            return {split: self.task.evaluate(self.model, *self.splits.split(split), self.info,
                                              self.opts.eval_batch_size, self.prepare)
                    for split in ("train", "val", "test")}

    @property
    def parts(self) -> TrainingParts:
        """What the Trainer trains."""
        return TrainingParts(self.model, self.task, self.optimizer, self.schedule, self.splits, self.info, self.opts,
                             self.device, self.prepare)

    def view_inputs(self, logger: Any, first_epoch: int = 0) -> ViewInputs:
        """What the task's views draw from."""
        return ViewInputs(self.model, self.info, self.loss, self.splits, self.prepare, logger,
                          self.opts.eval_batch_size, first_epoch, **self.view_layers)


def view_layers(model: torch.nn.Module, logger_cfg: dict[str, Any]) -> dict[str, str | None]:
    """logger.gradcam_layer and logger.feature_map_layer, each a convolution of the model by name (checked now,
    before training: a wrong name is refused with the valid ones), for the CNN views."""
    from dlrun.diagnostics.cnn import conv_by_name

    shared = split_config(logger_cfg)[0]
    layers = {key: shared[key] for key in ("gradcam_layer", "feature_map_layer")}
    for key, name in layers.items():
        conv_by_name(model, name, f"logger.{key}")
    return layers
