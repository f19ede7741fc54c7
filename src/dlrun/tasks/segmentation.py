"""Semantic segmentation's metrics and pictures (course 3 §5.1): a class for every pixel, background 0."""

from __future__ import annotations

import torch

from dlrun.tasks.detection import _as_rgb


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


# One colour per class (background left clear): red, green, blue, then yellow, magenta, cyan.
COLOURS = ["red", "lime", "blue", "yellow", "magenta", "cyan"]


def draw_masks(images: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, num_classes: int,
               scale: int = 4) -> torch.Tensor:
    """Each uint8 image twice, side by side: the true classes, then the predicted ones, painted over it; 0..1."""
    from torchvision.utils import draw_segmentation_masks

    images = _as_rgb(images, scale)
    colours = [COLOURS[(c - 1) % len(COLOURS)] for c in range(1, num_classes)]
    tiles = []
    for image, pred, true in zip(images, predicted.cpu(), target.cpu()):
        pair = []
        for classes in (true, pred):
            big = classes.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
            masks = torch.stack([big == c for c in range(1, num_classes)])
            pair.append(draw_segmentation_masks(image, masks, alpha=0.45, colors=colours))
        tiles.append(torch.cat(pair, dim=2))
    return torch.stack(tiles).float() / 255
