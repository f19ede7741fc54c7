"""The training loop: batches -> forward -> loss -> backward -> step -> log. Read it top to bottom."""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dlrun.engine import checkpoint, distributed
from dlrun.engine.batches import batch_source
from dlrun.data.base import DataInfo, Splits
from dlrun.data.prepare import Prepare
from dlrun.errors import ConfigError
from dlrun.engine.signals import Interrupted, StopOnSignal
from dlrun.components.losses import Loss
from dlrun.tasks.metrics import monitor_mode
from dlrun.components.optim import Schedule
from dlrun.tasks.base import Supervised


PRECISIONS = ("auto", "32", "bf16", "fp16")


@dataclass
class TrainerOptions:
    """The `trainer` config group, checked key by key against these types."""

    epochs: int = 50
    max_steps: int | None = None  # stop after this many optimiser steps, whatever the epoch
    batch_size: int | str = 32  # an integer, or "full" for full-batch gradient descent (course 2 §1.1)
    eval_batch_size: int = 4096
    device: str = "auto"  # auto = cuda, then mps, then cpu
    threads: int | str = "auto"  # CPU threads for torch's math; auto = the cores other work leaves free
    deterministic: bool = False
    gradient_clip: float | None = None  # max global gradient norm
    precision: str | int = "auto"  # 32, bf16 or fp16 autocast; auto = bf16 (else fp16) on a GPU, 32 elsewhere
    compile: bool = False  # torch.compile the model for training
    channels_last: bool | str = "auto"  # NHWC memory layout for CNNs; auto = on a CPU (see use_channels_last)
    onednn_linear: bool | str = "auto"  # fully connected layers through oneDNN; auto = where MKL runs slow (AMD)
    devices: int = 1  # processes training together (data parallel); >1 starts them with torchrun
    early_stopping_patience: int | None = None  # epochs without improvement of `monitor` before stopping
    monitor: str = "val/loss"  # the metric that picks the best checkpoint and drives early stopping
    checkpoint_every_n_epochs: int = 1  # last.pt/best.pt are also always written when training ends
    overfit_batches: int = 0  # train (and validate) on this many batches only: can the model learn them by heart?
    checkpoint_every_n_steps: int | None = None  # also write last.pt mid-epoch, so a kill loses at most N steps
    detect_anomaly: bool = False  # torch's autograd anomaly detection: slow, names the op that made a NaN
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"'trainer.epochs={self.epochs}' must be a positive integer, e.g. 20.",
                              key="trainer.epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"'trainer.max_steps={self.max_steps}' must be a positive integer or null.",
                              key="trainer.max_steps")
        if self.threads != "auto" and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"'trainer.threads={self.threads}' must be a positive integer or auto.",
                              key="trainer.threads")
        if isinstance(self.batch_size, str) and self.batch_size != "full":
            raise ConfigError(f"'trainer.batch_size={self.batch_size}' must be a positive integer or 'full'.",
                              key="trainer.batch_size")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ConfigError(f"'trainer.batch_size={self.batch_size}' must be a positive integer (1 is "
                              f"stochastic gradient descent) or 'full'.", key="trainer.batch_size")
        if self.eval_batch_size < 1:
            raise ConfigError(f"'trainer.eval_batch_size={self.eval_batch_size}' must be a positive integer.",
                              key="trainer.eval_batch_size")
        if self.gradient_clip is not None and self.gradient_clip <= 0:
            raise ConfigError(f"'trainer.gradient_clip={self.gradient_clip}' must be positive or null.",
                              key="trainer.gradient_clip")
        if self.checkpoint_every_n_epochs < 1:
            raise ConfigError(f"'trainer.checkpoint_every_n_epochs={self.checkpoint_every_n_epochs}' must be a "
                              f"positive integer.", key="trainer.checkpoint_every_n_epochs")
        if self.overfit_batches < 0:
            raise ConfigError(f"'trainer.overfit_batches={self.overfit_batches}' must be 0 (off) or positive.",
                              key="trainer.overfit_batches")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise ConfigError(f"'trainer.checkpoint_every_n_steps={self.checkpoint_every_n_steps}' must be a "
                              f"positive integer or null (only at epoch ends).", key="trainer.checkpoint_every_n_steps")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(f"'trainer.precision={self.precision}' is not a precision dl-run knows; valid: "
                              f"{', '.join(PRECISIONS)}.", key="trainer.precision")
        for switch in ("channels_last", "onednn_linear"):
            if getattr(self, switch) not in (True, False, "auto"):
                raise ConfigError(f"'trainer.{switch}={getattr(self, switch)}' must be true, false or auto.",
                                  key=f"trainer.{switch}")
        if self.devices < 1:
            raise ConfigError(f"'trainer.devices={self.devices}' must be a positive integer (processes that train "
                              f"together).", key="trainer.devices")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"'trainer.early_stopping_patience={self.early_stopping_patience}' must be a "
                              f"positive integer or null.", key="trainer.early_stopping_patience")

    def batch_size_for(self, n_train: int) -> int:
        return n_train if self.batch_size == "full" else min(int(self.batch_size), n_train)


@dataclass
class TrainState:
    """Where a run stands: saved in every checkpoint so `resume` continues from here."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0
    # Inside the current epoch, so a run stopped mid-epoch resumes exactly where it was:
    batch: int = 0  # batches of this epoch done
    order: torch.Tensor | None = None  # this epoch's permutation of the training samples
    running_loss: torch.Tensor | None = None  # sum of this epoch's batch losses so far
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else must be a device torch knows and has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"'trainer.device={name}' is not a device: use auto, cpu, cuda, cuda:N or mps.",
                          key="trainer.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'trainer.device={name}' but no CUDA GPU is available here: use trainer.device=auto "
                          f"or cpu.", key="trainer.device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"'trainer.device={name}' but MPS is not available here: use auto or cpu.",
                          key="trainer.device")
    return device


def resolve_threads(threads: int | str, deterministic: bool) -> int:
    """How many CPU threads torch's math gets: `auto` = the cores not already busy with other work, at least 1.

    On an oversubscribed machine torch's threads wait on each other for cores they cannot get: on 2
    shared cores a small CNN trains ten times slower with 2 threads than with 1. A deterministic run
    takes every core, so that its thread count (and its floating-point sums) do not depend on the load.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads != "auto":
        return int(threads)
    if deterministic or not hasattr(os, "getloadavg"):
        return cores
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def use_channels_last(setting: bool | str, device: torch.device, model: nn.Module) -> bool:
    """Whether the model and its image batches use NHWC (channels-last) memory layout.

    `auto` picks it on a CPU for models with 2-D convolutions: NHWC is oneDNN's own layout, so the
    convolutions skip reordering their inputs, and max-pooling has a vectorised kernel for it. One training
    step on this project's 2-core CPU, NHWC against NCHW (batch 64, real data): the MNIST CNN of the
    benchmark 0.95, with batch norm 0.67, the default digits CNN 0.71, lenet5 0.87, resnet 0.79, the
    conv autoencoder 0.77, the U-Net 0.79, the grid detector 0.70. torchvision's architectures keep NCHW
    (resnet18 on 32x32 images: 1.10, its last stages' 1x1 maps make every weight gradient a copy); a model
    says so with `channels_last_on_cpu = False`. On a GPU it is off unless asked for (true): it pays
    there with bf16/fp16 tensor cores, not measured here.
    """
    if setting != "auto":
        return bool(setting)
    return (device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
            and all(getattr(m, "channels_last_on_cpu", True) for m in model.modules()))


def autocast_for(device: torch.device, precision: str | int):
    """The autocast context for the forward pass, and a gradient scaler for fp16 (None otherwise)."""
    precision = str(precision)
    if precision == "auto":  # as before trainer.precision existed: mixed precision on a GPU only
        if device.type != "cuda":
            return nullcontext(), None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "32":
        return nullcontext(), None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"'trainer.precision=fp16' needs a CUDA GPU (its gradient scaler is CUDA only); this "
                              f"run is on {device.type}. Use trainer.precision=bf16 (works on CPU) or 32.",
                              key="trainer.precision")
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("'trainer.precision=bf16' but this GPU has no bfloat16 support: use fp16 or 32.",
                          key="trainer.precision")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def _as_is(x: torch.Tensor, train: bool = False) -> torch.Tensor:
    return x


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
             batch_size: int = 4096, prepare: Prepare | None = None) -> dict[str, float]:
    """Mean loss and the task's metrics over one split, in evaluation mode (dropout off, BN frozen, no augmentation)."""
    return Supervised(loss_fn).evaluate(model, x, y, info, batch_size, prepare)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


def fit(
    model: nn.Module,
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    data: Splits,
    info: DataInfo,
    opts: TrainerOptions,
    device: torch.device,
    logger: Any,
    checkpoint_dir: Path,
    extra_state: dict[str, Any],
    prepare: Prepare | None = None,
    progress: Any = None,
    state: TrainState | None = None,
    generator: torch.Generator | None = None,
    monitor: Any = None,
    stop: StopOnSignal | None = None,
    epoch_view: Callable[[nn.Module, int], None] | None = None,
    task: Supervised | None = None,
) -> TrainState:
    """Train for opts.epochs (or opts.max_steps), validating every epoch and checkpointing last and best.

    A signal caught by `stop` ends the current step, writes last.pt and raises Interrupted.
    `epoch_view(model, step)`, if given, logs what the task shows after each validation (a figure, text).
    `task` says what a step and an evaluation compute (dlrun.tasks); by default model(x) -> loss_fn(output, y).
    """
    task = task or Supervised(loss_fn)
    updates = task.updates(model, optimizer)
    state = state or TrainState()
    generator = generator or torch.Generator()
    prepare = prepare or _as_is
    show_batch = getattr(prepare, "augment", None) is not None and state.step == 0
    source = batch_source(data.x_train, data.y_train)  # in memory, or streamed from disk by workers
    n_train = len(data.x_train)
    batch_size = opts.batch_size_for(n_train)
    mode = monitor_mode(opts.monitor)
    autocast, scaler = autocast_for(device, opts.precision)
    if scaler is not None and state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    log_every = getattr(logger, "log_every_n_steps", 0)
    # Reading the loss syncs with the GPU, so there it is checked every few steps; on the CPU it is free.
    check_every = 1 if device.type == "cpu" or opts.detect_anomaly else (log_every or 10)
    finite_at = state.step  # the last step whose loss is known to be finite
    best_snapshot = None  # a best checkpoint not yet written: it goes to disk with the next last.pt
    # Training runs through DDP (gradients averaged over ranks) and torch.compile when asked; evaluation and
    # checkpoints use the plain model, so checkpoints are the same whatever the number of processes.
    forward = distributed.wrap(model, device)
    if opts.compile:
        forward = torch.compile(forward)
    model.train()

    while state.epoch < opts.epochs and not _done(state, opts):
        started = time.perf_counter()
        if state.order is None:  # a new epoch; one resumed mid-way goes on with its saved permutation
            # Shuffle indices, not samples: the data stays where it is, batches are gathered by index.
            state.order = torch.randperm(n_train, generator=generator)
            state.batch, state.running_loss = 0, torch.zeros(())
        running_loss = state.running_loss.to(device)
        # Every rank cuts the same global batches from the shared order and trains its own slice of each.
        batches = distributed.usable_batches(state.order.to(source.index_device).split(batch_size))
        n_batches = len(batches)
        if progress is not None:
            progress.start_epoch(state.epoch + 1, opts.epochs, n_batches, done=state.batch)
        for xb, yb in source.batches([distributed.shard(idx) for idx in batches[state.batch:]]):
            xb = prepare(xb, train=True)
            if show_batch:  # course 3 §4.1: the first augmented batch, as the network sees it
                logger.images("train/augmented_batch", prepare.unstandardise(xb[:64]), state.step)
                show_batch = False
            if monitor is not None:
                monitor.before_forward(state.step + 1)
            if opts.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = None
            for update in updates:  # one; a GAN has two, the discriminator's then the generator's (course 3 §5.2)
                with autocast:
                    update_loss = update.loss(forward, xb, yb)
                update.optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(update_loss).backward()
                    scaler.unscale_(update.optimizer)
                else:
                    update_loss.backward()
                if monitor is not None:
                    monitor.after_backward(state.step + 1)  # gradient flow, before clipping changes it
                if opts.gradient_clip is not None:
                    nn.utils.clip_grad_norm_(update.parameters, opts.gradient_clip)
                if scaler is not None:
                    scaler.step(update.optimizer)
                else:
                    update.optimizer.step()
                loss = update_loss if loss is None else loss  # the first update's loss is the run's train/loss
            if scaler is not None:
                scaler.update()
            schedule.step("step")
            state.step += 1
            state.batch += 1
            running_loss += loss.detach()
            if state.step % check_every == 0:
                finite_at = _check_finite(running_loss, state, finite_at, optimizer, checkpoint_dir)
            if log_every and state.step % log_every == 0:
                # One device sync per log interval, not per step.
                step_values = {"train/loss_step": loss.item(), **{k: float(v) for k, v in task.step_scalars().items()}}
                if schedule.interval == "step" and schedule.scheduler is not None:
                    step_values["lr"] = optimizer.param_groups[0]["lr"]  # changes within the epoch
                logger.scalars(step_values, state.step)
            if progress is not None:
                progress.advance(loss, state.step)
            if _done(state, opts):
                break
            stopping = _stopping(stop)
            every = opts.checkpoint_every_n_steps
            # Mid-epoch checkpoints only: at the epoch's last batch the epoch-end checkpoint follows at once.
            if state.batch < n_batches and (stopping or (every and state.step % every == 0)):
                finite_at = _check_finite(running_loss, state, finite_at, optimizer, checkpoint_dir)
                # The mean over ranks: every rank resumes from it, and the epoch's mean comes out the same.
                state.running_loss = distributed.mean(running_loss)
                now = time.perf_counter()
                state.train_seconds, started = state.train_seconds + now - started, now
                snapshot = _checkpoint_state(model, optimizer, schedule, scaler, state, generator, extra_state, task)
                _save_checkpoints(checkpoint_dir, snapshot, best_snapshot, logger, model)
                best_snapshot = None
                if stopping:
                    raise Interrupted(_signum(stop), f"in epoch {state.epoch + 1}, after step {state.step}")

        finite_at = _check_finite(running_loss, state, finite_at, optimizer, checkpoint_dir)
        # The mean over ranks; .item() waits for the device, so the epoch's time is complete.
        train_loss = distributed.mean(running_loss / max(state.batch, 1)).item()
        state.epoch += 1
        state.batch, state.order, state.running_loss = 0, None, None
        state.train_seconds += time.perf_counter() - started
        distributed.sync_buffers(model)  # every rank scores the same weights and statistics, so all decide alike
        train_terms = task.epoch_scalars()  # a task's own training terms (a VAE's KL, a GAN's generator loss)
        val = task.evaluate(model, data.x_val, data.y_val, info, opts.eval_batch_size, prepare, all_ranks=True)
        epoch_metrics = {"train/loss": train_loss, **train_terms, **{f"val/{k}": v for k, v in val.items()},
                         "lr": optimizer.param_groups[0]["lr"]}
        state.history.append({"epoch": state.epoch, "step": state.step, **epoch_metrics})
        logger.scalars({"train/loss_epoch": train_loss, **train_terms, **{f"val/{k}": v for k, v in val.items()},
                        "epoch": state.epoch, **({} if schedule.interval == "step" and schedule.scheduler else
                                                 {"lr": epoch_metrics["lr"]})}, state.step)
        if epoch_view is not None:
            epoch_view(model, state.step)
        monitored = epoch_metrics.get(opts.monitor)
        schedule.step("epoch", monitored)

        # A GAN has no loss that picks its best generator: its latest epoch counts as best.
        is_best = not task.picks_best or (monitored is not None and _improved(monitored, state.best_value, mode))
        if is_best:
            state.best_value, state.best_epoch, state.bad_epochs = monitored, state.epoch, 0
        else:
            state.bad_epochs += 1
        if opts.early_stopping_patience is not None and state.bad_epochs >= opts.early_stopping_patience:
            state.stopped_early = True
        finished = state.epoch >= opts.epochs or _done(state, opts)
        stopping = _stopping(stop)
        saving = finished or stopping or state.epoch % opts.checkpoint_every_n_epochs == 0
        snapshot = (_checkpoint_state(model, optimizer, schedule, scaler, state, generator, extra_state, task)
                    if saving or is_best else None)
        if is_best:
            # Written now from last.pt's own bytes; or kept in memory (a copy: the weights move on) and written with
            # the next checkpoint: many tiny epochs need not each hit the disk.
            best_snapshot = snapshot if saving else _copy_snapshot(snapshot)
        if saving:
            _save_checkpoints(checkpoint_dir, snapshot, best_snapshot, logger, model)
            best_snapshot = None
        if progress is not None:
            progress.end_epoch(state.epoch, epoch_metrics, is_best)
        if stopping and not finished:
            raise Interrupted(_signum(stop), f"at the end of epoch {state.epoch} (step {state.step})")
        if state.stopped_early:
            break
    return state


def _done(state: TrainState, opts: TrainerOptions) -> bool:
    return state.stopped_early or (opts.max_steps is not None and state.step >= opts.max_steps)


def _stopping(stop: StopOnSignal | None) -> bool:
    """A signal reached this process, or (under torchrun) any rank: all ranks stop at the same step."""
    return distributed.any_rank(stop is not None and stop.signum is not None)


def _signum(stop: StopOnSignal | None) -> int:
    """The signal this process caught, or SIGTERM when only another rank caught one."""
    return stop.signum if stop is not None and stop.signum is not None else signal.SIGTERM


def _check_finite(running_loss: torch.Tensor, state: TrainState, finite_at: int, optimizer: torch.optim.Optimizer,
                  checkpoint_dir: Path) -> int:
    """Stop at the first non-finite loss, before any checkpoint is written from its weights; return the step."""
    total = running_loss.item()
    if not distributed.any_rank(not math.isfinite(total)):
        return state.step
    where = (f"at step {state.step}" if finite_at >= state.step - 1 else
             f"between step {finite_at + 1} and step {state.step} (read every few steps to spare GPU syncs)")
    last = checkpoint_dir / checkpoint.LAST
    kept = f" The last good checkpoint, {last}, is untouched." if last.exists() else ""
    anomaly = "" if torch.is_anomaly_enabled() else "; trainer.detect_anomaly=true names the operation that made it"
    raise FloatingPointError(
        f"The training loss became {total} {where}, in epoch {state.epoch + 1}. The learning rate "
        f"({optimizer.param_groups[0]['lr']:g}) is probably too high for this model and data: lower optimizer.lr, or "
        f"set trainer.gradient_clip{anomaly}.{kept}"
    )


def _save_checkpoints(checkpoint_dir: Path, last: dict[str, Any], best: dict[str, Any] | None, logger: Any,
                      model: nn.Module) -> None:
    """Curves first, then best, then last: a checkpoint is never ahead of what it claims was done."""
    params = [p.detach().isfinite().all() for p in model.parameters()]
    if params and not bool(torch.stack(params).all()):
        raise FloatingPointError(f"The weights became NaN or infinite at step {last['train_state']['step']} "
                                 f"although the loss was finite: lower optimizer.lr or set trainer.gradient_clip. "
                                 f"No checkpoint was written from them.")
    flush = getattr(logger, "flush", None)
    if flush is not None:
        flush()  # events up to this step reach the disk: a resumed run purges only later ones
    if not distributed.is_main():
        return  # rank 0 writes; the others hold the same weights
    # A best checkpoint of this very epoch is the same state: serialised once, written twice.
    data = checkpoint.serialize(last, checkpoint_dir / checkpoint.LAST) if best is last else last
    if best is not None:
        checkpoint.save(checkpoint_dir / checkpoint.BEST, data if best is last else best)
    checkpoint.save(checkpoint_dir / checkpoint.LAST, data, keep_previous=True)


def _checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, scaler: Any,
                      state: TrainState, generator: torch.Generator, extra: dict[str, Any],
                      task: Supervised) -> dict[str, Any]:
    state.scaler = scaler.state_dict() if scaler is not None else None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
        "train_state": {k: _copied(k, v) for k, v in state.__dict__.items()},
        "rng": checkpoint.rng_state(generator),
        "task": task.state_dict(),  # a GAN's generator optimizer, a task's running sums
        **extra,
    }


def _copied(key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if key == "history":
        # Entries are never changed once appended: share them. A deep copy every epoch made a 3000-epoch
        # full-batch run quadratic (270 of its 309 seconds).
        return list(value)
    return copy.deepcopy(value)


def _copy_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A copy that stays as it is while training goes on: tensors and state deep-copied, history entries shared."""
    history = snapshot["train_state"]["history"]
    snapshot["train_state"]["history"] = None
    try:
        copied = copy.deepcopy(snapshot)
    finally:
        snapshot["train_state"]["history"] = history
    copied["train_state"]["history"] = list(history)
    return copied


def restore(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
            generator: torch.Generator, source: Path | str = "the checkpoint", task: Supervised | None = None
            ) -> TrainState:
    """Put a run back where its checkpoint left it; return its TrainState."""
    mismatch = _architecture_mismatch(ckpt["model"], model.state_dict())
    if mismatch:
        shown = "; ".join(mismatch[:12]) + (f"; and {len(mismatch) - 12} more" if len(mismatch) > 12 else "")
        raise ConfigError(f"Checkpoint {source} was written by another model architecture: {shown}. Resume with the "
                          f"run's own model settings (drop the model overrides), or start a new run.", key="resume")
    model.load_state_dict(ckpt["model"])
    saved_groups, groups = ckpt["optimizer"]["param_groups"], optimizer.state_dict()["param_groups"]
    if len(saved_groups) != len(groups) or set(saved_groups[0]) != set(groups[0]):
        raise ConfigError(f"Checkpoint {source} was written with another optimizer (settings "
                          f"{', '.join(sorted(set(saved_groups[0]) - {'params'}))}; this one has "
                          f"{', '.join(sorted(set(groups[0]) - {'params'}))}). Resume with the run's own optimizer.",
                          key="resume")
    optimizer.load_state_dict(ckpt["optimizer"])
    if schedule.scheduler is not None and ckpt.get("scheduler") is not None:
        schedule.scheduler.load_state_dict(ckpt["scheduler"])
    if task is not None and ckpt.get("task"):
        task.load_state_dict(ckpt["task"])
    checkpoint.set_rng_state(ckpt["rng"], generator)
    return TrainState(**ckpt["train_state"])


def _architecture_mismatch(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[str]:
    """Each key that one side lacks, and each shape that differs, in words."""
    lines = [f"'{k}' {tuple(saved[k].shape)} is in the checkpoint but not in this model" for k in saved
             if k not in current]
    lines += [f"'{k}' {tuple(current[k].shape)} is in this model but not in the checkpoint" for k in current
              if k not in saved]
    lines += [f"'{k}' has shape {tuple(saved[k].shape)} in the checkpoint but {tuple(current[k].shape)} in this model"
              for k in saved if k in current and saved[k].shape != current[k].shape]
    return lines
