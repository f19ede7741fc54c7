"""What a user looks at: TensorBoard views per task, figures, the console.

Every view has one of two signatures. An epoch view is made once from the run's ViewInputs and then called
after each validation with (model, step); a test view is called once after the test with (inputs, step) and
returns values for metrics.json (or None). A task lists its views (dlrun.tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept light: `dl-run --help` imports dlrun.views.console
    import torch
    from torch import nn

    from dlrun.components.losses import Loss
    from dlrun.data.base import DataInfo, Splits
    from dlrun.logger import Logger


@dataclass
class ViewInputs:
    """What a view may draw from: the model, the data it scores, how batches are prepared, where it logs."""

    model: nn.Module
    info: DataInfo
    loss: Loss
    splits: Splits
    prepare: Callable[..., torch.Tensor]
    logger: Logger
    eval_batch_size: int = 4096
    first_epoch: int = 0  # epochs done before this process started (a resumed run keeps counting)
    gradcam_layer: str | None = None  # logger.gradcam_layer: the conv Grad-CAM reads (None: the last)
    feature_map_layer: str | None = None  # logger.feature_map_layer: the conv whose maps are shown (None: the first)


EpochView = Callable[["nn.Module", int], None]
EpochViewFactory = Callable[[ViewInputs], "EpochView | None"]
TestView = Callable[[ViewInputs, int], "dict[str, Any] | None"]


def logs(inputs: ViewInputs) -> bool:
    """Whether the logger writes files at all (NullLogger does not): views with nothing to write skip their work."""
    return getattr(inputs.logger, "log_dir", None) is not None


def draws(inputs: ViewInputs) -> bool:
    """Whether the logger keeps matplotlib figures: it writes files and logger.figures is on."""
    return logs(inputs) and getattr(inputs.logger, "figures", True)


def class_names(info: DataInfo) -> list[str]:
    return info.class_names or [str(i) for i in range(info.num_classes)]


def all_of(views: list[EpochView | None]) -> EpochView | None:
    """One epoch view that calls each given one in turn (None when none is given)."""
    views = [view for view in views if view is not None]
    if not views:
        return None
    return lambda model, step: [view(model, step) for view in views]
