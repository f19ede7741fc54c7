"""What a task is: one class owns what its name means, and the training loop (dlrun.engine) asks it.

A task says what one training step and one evaluation compute (its `updates`: for each optimizer of the
step, the loss to back-propagate and the parameters it moves), its metrics and which way each is better,
its usual loss, the start-up check and the loss-curve verdict, its TensorBoard views after each epoch and
after the test, the preset a bare `task=<name>` runs, and what it refuses. Supervised learning has one
update: model(x) -> loss(output, y). Adding a task is one module with one subclass, registered in TASKS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dlrun.components.losses import LOSSES, Loss
from dlrun.data.base import DataInfo
from dlrun.data.prepare import as_is
from dlrun.diagnostics.curves import Verdict, chance_loss, diagnose
from dlrun.diagnostics.startup import initial_loss_check
from dlrun.engine import distributed
from dlrun.engine.evaluating import evaluating
from dlrun.errors import ConfigError
from dlrun.registry import Registry
from dlrun.views import EpochViewFactory, TestView

TASKS = Registry("task")


@dataclass
class Update:
    """One optimizer's share of a training step: the loss it descends and the parameters it moves."""

    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Choices:
    """The run's settings a task may refuse, gathered before it is built."""

    mode: str = "train"
    scheduler: str | None = None
    early_stopping_patience: int | None = None
    augment: Any = None  # the augmentation (dlrun.components.augment), or None


class Task:
    """model(x) -> loss(output, y), scored by the subclass's metrics. Subclasses set the class attributes."""

    name: ClassVar[str] = "task"
    metric_names: ClassVar[tuple[str, ...]] = ()  # what evaluate() reports besides the loss
    main_metric: ClassVar[str] = "loss"  # the one the tables, figures and sweep summaries lead with
    higher_is_better: ClassVar[frozenset[str]] = frozenset()  # the metrics whose larger values are better
    default_loss: ClassVar[str] = "mse"  # what loss=auto builds
    preset: ClassVar[str | None] = None  # the experiment preset a bare `task=<name>` runs (no classifier fits)
    takes_labels: ClassVar[bool] = True  # False: it learns from the inputs alone, whatever the dataset's labels
    picks_best: ClassVar[bool] = True  # the monitored validation metric picks the best checkpoint
    lacks: ClassVar[str] = ""  # what a dataset of another task lacks for this one, for the error
    example_dataset: ClassVar[str] = ""  # a dataset that serves this task, for the error
    targets_on_pixels: ClassVar[str | None] = None  # "masks", "boxes": augmentations that move pixels are refused
    epoch_views: ClassVar[tuple[EpochViewFactory, ...]] = ()  # made once, called after each validation
    test_views: ClassVar[tuple[TestView, ...]] = ()  # called once, after the test

    def __init__(self, loss_fn: Loss, info: DataInfo, model: nn.Module | None = None,
                 make_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> None:
        self.loss_fn = loss_fn
        self.info = info

    # ---- before the task is built: the data, model, loss and optimizer it needs ---------------------------------

    @classmethod
    def info_for(cls, info: DataInfo) -> DataInfo:
        """The DataInfo the model, loss and metrics see when `task=<name>` is asked of this dataset."""
        if info.task == cls.name:
            return info
        raise ConfigError(f"'task={cls.name}' does not fit dataset '{info.name}', which is {info.task}{cls.lacks}. "
                          f"Leave task unset, or pick a {cls.name} dataset{cls.example_dataset}.", key="task")

    @classmethod
    def model_config(cls, model_cfg: dict[str, Any]) -> dict[str, Any]:
        """The model config this task trains (a GAN reads model=mlp as its MLP pair)."""
        return model_cfg

    @classmethod
    def build_loss(cls, loss_cfg: dict[str, Any], info: DataInfo, train_targets: torch.Tensor) -> Loss:
        """The loss group's choice, checked against the task (loss=auto: default_loss)."""
        cfg = dict(loss_cfg)
        if "_target_" in cfg and cfg.get("check") is True:
            # `loss.check` is the shipped losses' switch (true in their YAMLs): a user's own loss built over one of
            # them (loss=mse +loss._target_=my.loss) gets it only when it is turned off.
            del cfg["check"]
        return LOSSES.build(cfg, info=info, train_targets=train_targets if cls.takes_labels else None)

    @classmethod
    def optimizer_parameters(cls, model: nn.Module) -> Any:
        """What the optimizer group's optimizer moves: the trainable parameters, in groups for a transfer model."""
        from dlrun.models.transfer import optimizer_parameters

        return optimizer_parameters(model)

    @classmethod
    def refuse(cls, choices: Choices) -> None:
        """Raise ConfigError for a setting this task cannot train with."""
        if not cls.takes_labels and choices.mode == "lr_find":
            raise ConfigError(f"'mode=lr_find' sweeps a supervised loss; task={cls.name} is not supported. Train "
                              f"with mode=train.", key="mode")
        if cls.targets_on_pixels is not None:
            _refuse_moving_augmentation(cls, choices.augment)

    # ---- a training step ------------------------------------------------------------------------------------------

    def updates(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Update, ...]:
        return (Update(optimizer, list(model.parameters()), self.loss),)

    def compiled(self, forward: nn.Module) -> nn.Module:
        """What a step calls with trainer.compile=true: the model torch.compile'd (a GAN compiles its two players)."""
        return torch.compile(forward)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model(x).float(), y)

    def step_scalars(self) -> dict[str, torch.Tensor]:
        """Values beside train/loss_step at each logging step (none here)."""
        return {}

    def epoch_scalars(self) -> dict[str, float]:
        """This epoch's means of the task's own training terms; resets them."""
        return {}

    # ---- evaluation -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo, batch_size: int,
                 prepare: Callable | None = None, all_ranks: bool = False) -> dict[str, float]:
        """Mean loss and the task's metrics over one split, in evaluation mode (no dropout, no augmentation).

        all_ranks: every rank of a torchrun job calls this together (validation during training), and each
        computes a share of the outputs; the metrics come out the same on every rank."""
        prepare = prepare or as_is
        with evaluating(model):
            # Under the run's autocast the model answers in bf16/fp16: each batch's outputs are kept in float32 for
            # the loss and metrics (converted batch by batch: the whole split is never held twice).
            outputs = _split_outputs(lambda xb: model(prepare(xb)).float(), x, batch_size, all_ranks)
            y = y.to(outputs.device)  # outputs too large for the GPU are scored on the host (memory.outputs_home)
            metrics = {"loss": self._loss_on(outputs.device, outputs, y, back_to=x.device)}
            metrics.update(self.metrics(model, outputs, x, y, info, batch_size))
        return metrics

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        """The task's metrics from the model's outputs over one split."""
        return {}

    def _loss_on(self, device: torch.device, outputs: torch.Tensor, y: torch.Tensor, back_to: torch.device) -> float:
        """The mean loss scored on `device`, the loss's buffers (msle's statistics) returned to `back_to` after."""
        try:
            return self.loss_fn.to(device)(outputs, y).item()
        finally:
            self.loss_fn.to(back_to)

    def startup_check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_train: torch.Tensor,
                      info: DataInfo) -> tuple[float | None, float | None, str | None]:
        """(chance loss, initial loss, warning): the untrained model against a constant prediction."""
        chance = chance_loss(self.loss_fn, y_train, info.num_classes)
        initial, warning = initial_loss_check(model, self.loss_fn, x, y, chance, info.num_classes)
        return chance, initial, warning

    def verdict(self, history: list[dict[str, float]], chance: float | None) -> Verdict:
        """The loss-curve verdict of course 2 §4.2."""
        lrs = [h["lr"] for h in history] if all("lr" in h for h in history) else None
        return diagnose([h["train/loss"] for h in history], [h["val/loss"] for h in history], chance, lrs)

    def reference(self, data: Any, model_cfg: dict[str, Any]) -> dict[str, Any] | None:
        """A closed-form solution to print beside the trained model's scores, where the task has one."""
        return None

    # ---- what a checkpoint keeps ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _split_outputs(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
                   all_ranks: bool) -> torch.Tensor:
    """forward over a split's rows, batch by batch, gathered where they fit (memory.outputs_home): on the GPU, or on
    the host when the whole split's outputs would crowd the GPU (a segmentation's scores per pixel and class)."""
    from dlrun.engine.memory import outputs_home

    if all_ranks:  # every rank of a torchrun job computes a share; the gather needs the device
        outputs = distributed.forward_shared(forward, x, batch_size)
        return outputs.to(outputs_home(outputs[:1], len(x)))
    batches = x.split(batch_size)
    first = forward(batches[0])
    home = outputs_home(first, len(x))
    return torch.cat([first.to(home), *(forward(xb).to(home) for xb in batches[1:])])


def _refuse_moving_augmentation(task: type[Task], augment: Any) -> None:
    """Flips, rotations and crops move an image's pixels but not its masks or boxes: refused for such tasks."""
    from dlrun.components.augment import Compose, Crop, Flip, Rotate

    steps = augment.steps if isinstance(augment, Compose) else [augment]
    moving = [s for s in steps if isinstance(s, (Crop, Flip, Rotate))]
    if moving:
        raise ConfigError(f"'augmentation' {moving[0]!r} moves the pixels of the images but not their "
                          f"{task.targets_on_pixels}: "
                          f"task={task.name} takes only augmentations that leave pixels in place (noise, color), or "
                          f"augmentation=none.", key="augmentation")
