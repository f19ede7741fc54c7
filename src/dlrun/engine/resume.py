"""What a checkpoint holds (TrainState and every part's state) and how a run is put back where it stopped."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dlrun.components.optim import Schedule
from dlrun.engine import checkpoint
from dlrun.errors import ConfigError

if TYPE_CHECKING:
    from dlrun.tasks.base import Task


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


def snapshot(parts: Any, state: TrainState, scaler: Any, generator: torch.Generator,
             extra: dict[str, Any]) -> dict[str, Any]:
    """Everything `resume` needs, as tensors and plain data (`parts`: the Trainer's TrainingParts).

    `extra` is saved beside the state; a callable value is called now, so what it returns is current at this step
    (a monitor's statistics, accumulated as training goes on).
    """
    state.scaler = scaler.state_dict() if scaler is not None else None
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.schedule.scheduler.state_dict() if parts.schedule.scheduler is not None else None,
        "train_state": {k: _copied(k, v) for k, v in state.__dict__.items()},
        "rng": checkpoint.rng_state(generator),
        "task": parts.task.state_dict(),  # a GAN's generator optimizer, a task's running sums
        **{key: value() if callable(value) else value for key, value in extra.items()},
    }


def _copied(key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if key == "history":
        # Entries are never changed once appended: share them. A deep copy every epoch made a 3000-epoch
        # full-batch run quadratic (270 of its 309 seconds).
        return list(value)
    return copy.deepcopy(value)


def copy_snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A copy that stays as it is while training goes on: tensors and state deep-copied, history entries shared."""
    history = state["train_state"]["history"]
    state["train_state"]["history"] = None
    try:
        copied = copy.deepcopy(state)
    finally:
        state["train_state"]["history"] = history
    copied["train_state"]["history"] = list(history)
    return copied


def restore(ckpt: dict[str, Any], parts: Any, generator: torch.Generator,
            source: Path | str = "the checkpoint") -> TrainState:
    """Put the model, optimizer, schedule, task and random streams back where the checkpoint left them."""
    _refuse_other_architecture(ckpt["model"], parts.model, source)
    parts.model.load_state_dict(ckpt["model"])
    _refuse_other_optimizer(ckpt["optimizer"], parts.optimizer, source)
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    schedule: Schedule = parts.schedule
    if schedule.scheduler is not None and ckpt.get("scheduler") is not None:
        schedule.scheduler.load_state_dict(ckpt["scheduler"])
    task: Task | None = parts.task
    if task is not None and ckpt.get("task"):
        task.load_state_dict(ckpt["task"])
    checkpoint.set_rng_state(ckpt["rng"], generator)
    return TrainState(**ckpt["train_state"])


def _refuse_other_architecture(saved: dict[str, torch.Tensor], model: nn.Module, source: Path | str) -> None:
    mismatch = architecture_mismatch(saved, model.state_dict(), "this model")
    if mismatch:
        shown = "; ".join(mismatch[:12]) + (f"; and {len(mismatch) - 12} more" if len(mismatch) > 12 else "")
        raise ConfigError(f"Checkpoint {source} was written by another model architecture: {shown}. Resume with the "
                          f"run's own model settings (drop the model overrides), or start a new run.", key="resume")


def _refuse_other_optimizer(saved: dict[str, Any], optimizer: torch.optim.Optimizer, source: Path | str) -> None:
    saved_groups, groups = saved["param_groups"], optimizer.state_dict()["param_groups"]
    if len(saved_groups) != len(groups) or set(saved_groups[0]) != set(groups[0]):
        raise ConfigError(f"Checkpoint {source} was written with another optimizer (settings "
                          f"{', '.join(sorted(set(saved_groups[0]) - {'params'}))}; this one has "
                          f"{', '.join(sorted(set(groups[0]) - {'params'}))}). Resume with the run's own optimizer.",
                          key="resume")


def architecture_mismatch(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                          other: str) -> list[str]:
    """Each key that one side lacks, and each shape that differs, in words (`other`: what `current` is)."""
    lines = [f"'{k}' {tuple(saved[k].shape)} is in the checkpoint but not in {other}" for k in saved
             if k not in current]
    lines += [f"'{k}' {tuple(current[k].shape)} is in {other} but not in the checkpoint" for k in current
              if k not in saved]
    lines += [f"'{k}' has shape {tuple(saved[k].shape)} in the checkpoint but {tuple(current[k].shape)} in {other}"
              for k in saved if k in current and saved[k].shape != current[k].shape]
    return lines
