"""Semantic segmentation's metrics and pictures (course 3 §5.1): a class for every pixel, background 0."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.tasks.base import TASKS, Task
from dlrun.views.dense import masks_view



def confusion(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) pixel counts: row = true class, column = predicted class."""
    index = target.flatten().long() * num_classes + predicted.flatten().long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_metrics(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Pixel accuracy; IoU = |P∩T| / |P∪T| and Dice = 2|P∩T| / (|P| + |T|) per class over the whole split,
    averaged over the classes that occur (in the truth or the prediction), background included."""
    matrix = confusion(predicted, target, num_classes).double()
    hits = matrix.diag()
    true, guessed = matrix.sum(1), matrix.sum(0)
    present = (true + guessed) > 0
    iou = hits[present] / (true + guessed - hits)[present]
    dice = 2 * hits[present] / (true + guessed)[present]
    return {"pixel_accuracy": float(hits.sum() / matrix.sum()), "mean_iou": float(iou.mean()),
            "dice": float(dice.mean())}


@TASKS.register("segmentation")
class Segmentation(Task):
    """model(image) -> one score per class at every pixel; a U-Net (model=unet) by its preset."""

    name = "segmentation"
    metric_names = ("pixel_accuracy", "mean_iou", "dice")
    main_metric = "mean_iou"
    higher_is_better = frozenset({"pixel_accuracy", "mean_iou", "dice"})
    default_loss = "cross_entropy"
    preset = "segmentation"
    lacks = " (it has no per-pixel masks)"
    example_dataset = " such as shapes"
    targets_on_pixels = "masks"
    epoch_views = (masks_view,)

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        return segmentation_metrics(self.loss_fn.predict_classes(outputs), y, info.num_classes)
