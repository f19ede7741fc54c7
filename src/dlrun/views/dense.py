"""What segmentation and detection show in TensorBoard after each validation: masks or boxes over images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.data.prepare import Prepare
from dlrun.tasks.detection import draw_detections
from dlrun.errors import ConfigError
from dlrun.engine.evaluating import evaluating
from dlrun.tasks.segmentation import draw_masks

EXAMPLES = 8  # validation images drawn each epoch


def refuse_moving_augmentation(augment: Any, info: DataInfo) -> None:
    """Flips, rotations and crops move an image's pixels but not its masks or boxes: refuse them for these tasks."""
    from dlrun.components.augment import Compose, Crop, Flip, Rotate

    steps = augment.steps if isinstance(augment, Compose) else [augment]
    moving = [s for s in steps if isinstance(s, (Crop, Flip, Rotate))]
    if info.task in ("segmentation", "detection") and moving:
        raise ConfigError(f"'augmentation' {moving[0]!r} moves the pixels of the images but not their "
                          f"{'masks' if info.task == 'segmentation' else 'boxes'}: task={info.task} takes only "
                          f"augmentations that leave pixels in place (noise, color), or augmentation=none.",
                          key="augmentation")


def dense_view(info: DataInfo, x: torch.Tensor, y: torch.Tensor, logger: Any,
               prepare: Prepare) -> Callable[[nn.Module, int], None] | None:
    """A function (model, step) that draws predictions over a few validation images; None for other tasks."""
    if info.task not in ("segmentation", "detection") or getattr(logger, "log_dir", None) is None or len(x) == 0:
        return None
    xs, ys = x[:EXAMPLES], y[:EXAMPLES]  # the same images every epoch, to watch the predictions improve

    @torch.no_grad()
    def view(model: nn.Module, step: int) -> None:
        with evaluating(model):
            output = model(prepare(xs)).float()
        if info.task == "segmentation":
            logger.images("val/masks_true_vs_predicted",
                          draw_masks(xs, output.argmax(1), ys, info.num_classes), step)
        else:
            logger.images("val/boxes_true_green_predicted_red",
                          draw_detections(xs, output, ys, info.class_names), step)
    return view
