"""What segmentation and detection show in TensorBoard after each validation: masks or boxes over images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlrun.engine.evaluating import evaluating
from dlrun.views import EpochView, ViewInputs, logs

EXAMPLES = 8  # validation images drawn each epoch


def _drawn_each_epoch(inputs: ViewInputs, tag: str,
                      draw: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> EpochView | None:
    """A view drawing `draw(images, output, targets)` over the first validation images (the same ones every epoch,
    to watch the predictions improve)."""
    x = inputs.splits.x_val
    if not logs(inputs) or len(x) == 0:
        return None
    xs, ys = x[:EXAMPLES], inputs.splits.y_val[:EXAMPLES]

    @torch.no_grad()
    def view(model: torch.nn.Module, step: int) -> None:
        with evaluating(model):
            output = model(inputs.prepare(xs)).float()
        inputs.logger.images(tag, draw(xs, output, ys), step)
    return view


def masks_view(inputs: ViewInputs) -> EpochView | None:
    """Segmentation: true and predicted classes painted over each image."""
    classes = inputs.info.num_classes
    return _drawn_each_epoch(inputs, "val/masks_true_vs_predicted",
                             lambda xs, output, ys: draw_masks(xs, output.argmax(1), ys, classes))


def boxes_view(inputs: ViewInputs) -> EpochView | None:
    """Detection: true boxes in green, detections in red."""
    names = inputs.info.class_names
    return _drawn_each_epoch(inputs, "val/boxes_true_green_predicted_red",
                             lambda xs, output, ys: draw_detections(xs, output, ys, names))


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


def draw_detections(images: torch.Tensor, output: torch.Tensor, boxes: torch.Tensor, names: list[str],
                    score_threshold: float = 0.5, scale: int = 4) -> torch.Tensor:
    """uint8 images with true boxes (green) and detections scoring >= score_threshold (red), enlarged; 0..1."""
    from torchvision.utils import draw_bounding_boxes

    from dlrun.tasks.detection import decode, ground_truth  # the detection task's output format

    images = _as_rgb(images, scale)
    side = images.shape[-1]
    drawn = []
    for image, det, truth in zip(images, decode(output, score_threshold), ground_truth(boxes)):
        if len(truth["boxes"]):
            image = draw_bounding_boxes(image, truth["boxes"].cpu() * side, colors="lime")
        if len(det["boxes"]):
            labels = [f"{names[int(c)]} {s:.2f}" for c, s in zip(det["labels"], det["scores"])]
            image = draw_bounding_boxes(image, det["boxes"].cpu() * side, labels=labels, colors="red")
        drawn.append(image)
    return torch.stack(drawn).float() / 255


def _as_rgb(images: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) on the CPU as 3 channels, each pixel repeated scale x scale times (to draw on)."""
    images = images.detach().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3).contiguous()
