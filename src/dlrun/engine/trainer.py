"""The training loop: batches -> forward -> loss -> backward -> step -> log. Read it top to bottom.

The Trainer reads what it trains from TrainingParts (filled by the run, dlrun.run.experiment) and sends what
it produces to TrainingOutputs; it never sees how a run was assembled. Once per step: `step`. Once per epoch:
`train_epoch` (its steps, and mid-epoch checkpoints), then `end_epoch` (validate, log, pick the best, stop
early, checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from dlrun.components.optim import Schedule
from dlrun.data.base import DataInfo, Splits
from dlrun.data.prepare import as_is
from dlrun.diagnostics.timing import phase
from dlrun.engine import distributed
from dlrun.engine.batches import batch_source
from dlrun.engine.noise import add_gradient_noise, gradient_noise_std, noisy_weights
from dlrun.engine.options import TrainerOptions, autocast_for
from dlrun.engine.resume import TrainState, copy_snapshot, snapshot
from dlrun.engine.signals import Interrupted, StopOnSignal
from dlrun.logger import Logger, NullLogger
from dlrun.tasks import Task, monitor_mode


# Under torchrun, the steps between two checks for a signal that any rank caught: each check all-reduces a flag.
STOP_POLL_STEPS = 10


class CheckpointStore(Protocol):
    """Where checkpoints go (dlrun.run.run_directory.RunDirectory is the one the runs use)."""

    last_checkpoint: Path

    def save_checkpoints(self, last: dict[str, Any], best: dict[str, Any] | None) -> None: ...


@dataclass
class TrainingParts:
    """What the loop trains, filled by the run: every piece built, on its device."""

    model: nn.Module
    task: Task  # what a step and an evaluation compute (dlrun.tasks)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    splits: Splits
    info: DataInfo
    options: TrainerOptions
    device: torch.device
    prepare: Callable[..., torch.Tensor] | None = None  # standardise and augment a batch (dlrun.data.prepare)


@dataclass
class TrainingOutputs:
    """Where the loop's results go: checkpoints, curves, the progress bar; and what may stop it."""

    checkpoints: CheckpointStore
    logger: Logger = NullLogger()
    progress: Any = None  # dlrun.views.console.EpochProgress, or None
    monitor: Any = None  # dlrun.diagnostics.gradients.GradientMonitor, or None
    stop: StopOnSignal | None = None
    view: Callable[[nn.Module, int], None] | None = None  # what the task shows after each validation
    # Saved in every checkpoint beside the state (config, scaling, the start-up report); a callable value is called
    # when the checkpoint is taken (the gradient monitor's statistics so far).
    checkpoint_extra: dict[str, Any] | None = None
    # Told each epoch's number and monitored validation value; True stops training at the end of that epoch (a
    # search's pruner gives up on the trial: hydra_plugins.dlrun_optuna_sweeper).
    should_stop: Callable[[int, float | None], bool] | None = None


class Trainer:
    """Trains TrainingParts for options.epochs (or max_steps), validating each epoch, checkpointing last and best.

    A signal caught by `outputs.stop` ends the current step, writes last.pt and raises Interrupted.
    """

    def __init__(self, parts: TrainingParts, outputs: TrainingOutputs, state: TrainState | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.parts, self.out = parts, outputs
        self.opts = parts.options
        self.state = state or TrainState()
        self.generator = generator or torch.Generator()
        self.prepare = parts.prepare or as_is
        self.updates = parts.task.updates(parts.model, parts.optimizer)
        self.source = batch_source(parts.splits.x_train, parts.splits.y_train)  # in memory, or streamed by workers
        self.batch_size = self.opts.batch_size_for(len(parts.splits.x_train))
        self.autocast, self.scaler = autocast_for(parts.device, self.opts.precision)
        if self.scaler is not None and self.state.scaler is not None:
            self.scaler.load_state_dict(self.state.scaler)
        self.log_every = getattr(outputs.logger, "log_every_n_steps", 0)
        # Reading the loss syncs with the GPU, so there it is checked every few steps; on the CPU it is free.
        self.check_every = 1 if parts.device.type == "cpu" or self.opts.detect_anomaly else (self.log_every or 10)
        self.finite_at = self.state.step  # the last step whose loss is known to be finite
        self.best_snapshot: dict[str, Any] | None = None  # a best checkpoint not yet written: it goes with last.pt
        self.show_batch = getattr(self.prepare, "augment", None) is not None and self.state.step == 0
        # Training runs through DDP (gradients averaged over ranks) and torch.compile when asked; evaluation and
        # checkpoints use the plain model, so checkpoints are the same whatever the number of processes.
        self.forward = distributed.wrap(parts.model, parts.device)
        if self.opts.compile:
            self.forward = parts.task.compiled(self.forward)
        self.started = 0.0  # when the current stretch of training began (perf_counter)
        self.stop_poll_steps = STOP_POLL_STEPS if distributed.launched() else 1

    def fit(self) -> TrainState:
        """Train until the last epoch, max_steps or early stopping; return where the run stands."""
        self.parts.model.train()
        while self.state.epoch < self.opts.epochs and not self._done():
            self.started = time.perf_counter()
            with phase("steps"):
                train_loss = self.train_epoch()
            if self.end_epoch(train_loss):
                break
        return self.state

    # ---- once per epoch: its steps --------------------------------------------------------------------------

    def train_epoch(self) -> float:
        """One epoch of steps (or the rest of one a resumed run stopped in); its mean training loss."""
        state = self.state
        if state.order is None:  # a new epoch; one resumed mid-way goes on with its saved permutation
            # Shuffle indices, not samples: the data stays where it is, batches are gathered by index.
            state.order = torch.randperm(len(self.parts.splits.x_train), generator=self.generator)
            state.batch, state.running_loss = 0, torch.zeros(())
        running_loss = state.running_loss.to(self.parts.device)
        # Every rank cuts the same global batches from the shared order and trains its own slice of each.
        batches = distributed.usable_batches(state.order.to(self.source.index_device).split(self.batch_size))
        if self.out.progress is not None:
            self.out.progress.start_epoch(state.epoch + 1, self.opts.epochs, len(batches), done=state.batch)
        for xb, yb in self.source.batches([distributed.shard(idx) for idx in batches[state.batch:]]):
            loss = self.step(xb, yb)
            running_loss += loss.detach()
            self._after_step(loss, running_loss)
            if self._done():
                break
            self._checkpoint_mid_epoch(running_loss, len(batches))
        self._check_finite(running_loss)
        # The mean over ranks; .item() waits for the device, so the epoch's time is complete.
        return distributed.mean(running_loss / max(state.batch, 1)).item()

    # ---- once per step ------------------------------------------------------------------------------------------

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimiser step (a GAN: one per player) on a batch; the loss the run reports as train/loss."""
        xb = self.prepare(xb, train=True)
        if self.show_batch:  # course 3 §4.1: the first augmented batch, as the network sees it
            self.out.logger.images("train/augmented_batch", self.prepare.unstandardise(xb[:64]), self.state.step)
            self.show_batch = False
        monitor, scaler, clip = self.out.monitor, self.scaler, self.opts.gradient_clip
        if monitor is not None:
            monitor.before_forward(self.state.step + 1)
        if self.opts.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = None
        for update in self.updates:  # one; a GAN has two, the discriminator's then the generator's (course 3 §5.2)
            with self._weights_for_forward(update.parameters):
                with self.autocast:
                    update_loss = update.loss(self.forward, xb, yb)
                update.optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(update_loss).backward()
                    scaler.unscale_(update.optimizer)
                else:
                    update_loss.backward()
            if monitor is not None:
                monitor.after_backward(self.state.step + 1)  # gradient flow, before clipping changes it
            if clip is not None:
                nn.utils.clip_grad_norm_(update.parameters, clip)
            if self.opts.gradient_noise > 0:  # course 3 §4.1: a noisy gradient, after clipping
                std = gradient_noise_std(self.opts.gradient_noise, self.opts.gradient_noise_decay, self.state.step)
                add_gradient_noise(update.parameters, std, self.generator)
            if scaler is not None:
                scaler.step(update.optimizer)
            else:
                update.optimizer.step()
            loss = update_loss if loss is None else loss  # the first update's loss is the run's train/loss
        if scaler is not None:
            scaler.update()
        self.parts.schedule.step("step")
        self.state.step += 1
        self.state.batch += 1
        return loss

    def _weights_for_forward(self, params: list[nn.Parameter]) -> Any:
        """The weights the step's forward and backward pass see: noisy with trainer.weight_noise (course 3 §4.1)."""
        if self.opts.weight_noise > 0:
            return noisy_weights(params, self.opts.weight_noise, self.generator)
        return contextlib.nullcontext()

    def _after_step(self, loss: torch.Tensor, running_loss: torch.Tensor) -> None:
        """Check the loss is finite, log the step's scalars every log interval, advance the progress bar."""
        step = self.state.step
        if step % self.check_every == 0:
            self._check_finite(running_loss)
        if self.log_every and step % self.log_every == 0:
            # One device sync per log interval, not per step.
            values = {"train/loss_step": loss.item(),
                      **{k: float(v) for k, v in self.parts.task.step_scalars().items()}}
            schedule = self.parts.schedule
            if schedule.interval == "step" and schedule.scheduler is not None:
                values["lr"] = self.parts.optimizer.param_groups[0]["lr"]  # changes within the epoch
            self.out.logger.scalars(values, step)
        if self.out.progress is not None:
            self.out.progress.advance(loss, step)

    def _checkpoint_mid_epoch(self, running_loss: torch.Tensor, n_batches: int) -> None:
        """Every checkpoint_every_n_steps, or when a signal came: last.pt now (then stop, for a signal)."""
        every = self.opts.checkpoint_every_n_steps
        due = bool(every and self.state.step % every == 0)
        # Mid-epoch checkpoints only: at the epoch's last batch the epoch-end checkpoint follows at once.
        if self.state.batch >= n_batches:
            return
        # Under torchrun asking whether any rank caught a signal is a collective: it is asked every few steps (and
        # at each checkpoint step), the same steps on every rank; in one process it costs nothing, so every step.
        stopping = self._stopping() if due or self.state.step % self.stop_poll_steps == 0 else False
        if not (stopping or due):
            return
        self._check_finite(running_loss)
        # The mean over ranks: every rank resumes from it, and the epoch's mean comes out the same.
        self.state.running_loss = distributed.mean(running_loss)
        self._add_train_seconds()
        self._save(self._snapshot())
        if stopping:
            raise Interrupted(self._signum(), f"in epoch {self.state.epoch + 1}, after step {self.state.step}")

    # ---- at the end of an epoch ---------------------------------------------------------------------------------

    def end_epoch(self, train_loss: float) -> bool:
        """Validate, log, pick the best, decide on early stopping, checkpoint; True when training should stop."""
        state, parts = self.state, self.parts
        state.epoch += 1
        state.batch, state.order, state.running_loss = 0, None, None
        self._add_train_seconds()
        with phase("validation, epoch logging and views"):
            epoch_metrics = self._validate_and_log(train_loss)
        monitored = epoch_metrics.get(self.opts.monitor)
        parts.schedule.step("epoch", monitored)
        is_best = self._note_best(monitored)
        if self.out.should_stop is not None and self.out.should_stop(state.epoch, monitored):
            state.stopped_early = True
        finished = state.epoch >= self.opts.epochs or self._done()
        stopping = self._stopping()
        saving = finished or stopping or state.epoch % self.opts.checkpoint_every_n_epochs == 0
        current = self._snapshot() if saving or is_best else None
        if is_best:
            # Written now from last.pt's own bytes; or kept in memory (a copy: the weights move on) and written with
            # the next checkpoint: many tiny epochs need not each hit the disk.
            self.best_snapshot = current if saving else copy_snapshot(current)
        if saving:
            with phase("checkpoints"):
                self._save(current)
        if self.out.progress is not None:
            self.out.progress.end_epoch(state.epoch, epoch_metrics, is_best)
        if stopping and not finished:
            raise Interrupted(self._signum(), f"at the end of epoch {state.epoch} (step {state.step})")
        return state.stopped_early

    def _validate_and_log(self, train_loss: float) -> dict[str, float]:
        """Score the validation split (every rank the same weights), log the epoch, append it to the history."""
        parts, state = self.parts, self.state
        distributed.sync_buffers(parts.model)  # every rank scores the same weights and statistics, so all decide alike
        train_terms = parts.task.epoch_scalars()  # a task's own training terms (a VAE's KL, a GAN's generator loss)
        with self.autocast:  # the precision the model trains in: on a GPU, half the memory and tensor cores
            val = parts.task.evaluate(parts.model, parts.splits.x_val, parts.splits.y_val, parts.info,
                                      self.opts.eval_batch_size, self.prepare, all_ranks=True)
        val = {f"val/{k}": v for k, v in val.items()}
        lr = parts.optimizer.param_groups[0]["lr"]
        epoch_metrics = {"train/loss": train_loss, **train_terms, **val, "lr": lr}
        state.history.append({"epoch": state.epoch, "step": state.step, **epoch_metrics})
        per_step_lr = parts.schedule.interval == "step" and parts.schedule.scheduler
        self.out.logger.scalars({"train/loss_epoch": train_loss, **train_terms, **val, "epoch": state.epoch,
                                 **({} if per_step_lr else {"lr": lr})}, state.step)
        if self.out.view is not None:
            self.out.view(parts.model, state.step)
        return epoch_metrics

    def _note_best(self, monitored: float | None) -> bool:
        """Whether this epoch is the best so far; counts the epochs without improvement for early stopping."""
        state = self.state
        # A GAN has no loss that picks its best generator: its latest epoch counts as best.
        is_best = not self.parts.task.picks_best or (
            monitored is not None and _improved(monitored, state.best_value, monitor_mode(self.opts.monitor)))
        if is_best:
            state.best_value, state.best_epoch, state.bad_epochs = monitored, state.epoch, 0
        else:
            state.bad_epochs += 1
        patience = self.opts.early_stopping_patience
        if patience is not None and state.bad_epochs >= patience:
            state.stopped_early = True
        return is_best

    # ---- helpers --------------------------------------------------------------------------------------------------

    def _done(self) -> bool:
        max_steps = self.opts.max_steps
        return self.state.stopped_early or (max_steps is not None and self.state.step >= max_steps)

    def _add_train_seconds(self) -> None:
        now = time.perf_counter()
        self.state.train_seconds, self.started = self.state.train_seconds + now - self.started, now

    def _stopping(self) -> bool:
        """A signal reached this process, or (under torchrun) any rank: all ranks stop at the same step."""
        stop = self.out.stop
        return distributed.any_rank(stop is not None and stop.signum is not None)

    def _signum(self) -> int:
        """The signal this process caught, or SIGTERM when only another rank caught one."""
        stop = self.out.stop
        return stop.signum if stop is not None and stop.signum is not None else signal.SIGTERM

    def _snapshot(self) -> dict[str, Any]:
        return snapshot(self.parts, self.state, self.scaler, self.generator, self.out.checkpoint_extra or {})

    def _check_finite(self, running_loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, before any checkpoint is written from its weights."""
        state = self.state
        total = running_loss.item()
        if not distributed.any_rank(not math.isfinite(total)):
            self.finite_at = state.step
            return
        where = (f"at step {state.step}" if self.finite_at >= state.step - 1 else
                 f"between step {self.finite_at + 1} and step {state.step} (read every few steps to spare GPU syncs)")
        last = self.out.checkpoints.last_checkpoint
        kept = f" The last good checkpoint, {last}, is untouched." if last.exists() else ""
        anomaly = "" if torch.is_anomaly_enabled() else "; trainer.detect_anomaly=true names the operation that made it"
        raise FloatingPointError(
            f"The training loss became {total} {where}, in epoch {state.epoch + 1}. The learning rate "
            f"({self.parts.optimizer.param_groups[0]['lr']:g}) is probably too high for this model and data: lower "
            f"optimizer.lr, or set trainer.gradient_clip{anomaly}.{kept}"
        )

    def _save(self, last: dict[str, Any]) -> None:
        """Curves first, then best, then last: a checkpoint is never ahead of what it claims was done."""
        params = [p.detach().isfinite().all() for p in self.parts.model.parameters()]
        if params and not bool(torch.stack(params).all()):
            raise FloatingPointError(f"The weights became NaN or infinite at step {last['train_state']['step']} "
                                     f"although the loss was finite: lower optimizer.lr or set trainer.gradient_clip. "
                                     f"No checkpoint was written from them.")
        self.out.logger.flush()  # events up to this step reach the disk: a resumed run purges only later ones
        if distributed.is_main():  # rank 0 writes; the others hold the same weights
            self.out.checkpoints.save_checkpoints(last, self.best_snapshot)
        self.best_snapshot = None


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best
