"""Tasks: one class per kind of learning problem, registered in TASKS by name (imported here so none is missed).

`task=<name>` on the command line, or the dataset's own task, picks the class; dlrun.tasks.base says what a
task owns. To add one, write a module with a Task subclass registered under its name (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlrun.components.losses import Loss
from dlrun.data.base import DataInfo
from dlrun.tasks import (  # noqa: F401  (registers the tasks)
    classification, detection, gan, reconstruction, regression, segmentation, seq2seq,
)
from dlrun.tasks.base import TASKS, Choices, Task, Update

__all__ = ["TASKS", "Choices", "Task", "Update", "build_task", "evaluate", "monitor_mode", "task_class", "task_info"]


def task_class(name: str) -> type[Task]:
    """The class registered as `name`; a ConfigError listing the valid names if there is none."""
    return TASKS.get(name, "task")


def task_info(task: str | None, info: DataInfo) -> DataInfo:
    """The DataInfo the model, loss and metrics see: the dataset's own, or what `task=<name>` makes of it."""
    return info if task in (None, info.task) else task_class(task).info_for(info)


def build_task(info: DataInfo, loss: Loss, model: nn.Module, make_optimizer: Callable[[Any], torch.optim.Optimizer],
               choices: Choices) -> Task:
    """The task object the Trainer asks what a step and an evaluation compute, once it accepts the run's choices."""
    cls = task_class(info.task)
    cls.refuse(choices)
    return cls(loss, info, model, make_optimizer)


def monitor_mode(metric: str) -> str:
    """Whether a metric is better when smaller ('min') or larger ('max'), as the task that reports it declares."""
    name = metric.rsplit("/", 1)[-1]
    larger = any(name in TASKS.get(task).higher_is_better for task in TASKS.names())
    return "max" if larger or name.endswith("accuracy") else "min"


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
             batch_size: int = 4096, prepare: Callable | None = None) -> dict[str, float]:
    """Mean loss and the dataset task's metrics over one split, in evaluation mode."""
    return task_class(info.task)(loss_fn, info).evaluate(model, x, y, info, batch_size, prepare)
