"""A one-stage, YOLO-style grid detector's loss, decoding, non-max suppression and mAP@0.5 (course 3 §5.1).

The image is cut into an S x S grid; the cell holding a box's centre is responsible for it and predicts,
per cell, 5 + C numbers (channels of the model's (N, 5 + C, S, S) output):
  0       objectness (a logit): is there an object centred in this cell?
  1, 2    the centre's offset inside the cell (logits of a sigmoid: 0..1 across the cell)
  3, 4    sqrt(width), sqrt(height) of the box as fractions of the image (logits of a sigmoid)
  5..     one score per class (softmax)
Boxes are (x_min, y_min, x_max, y_max) normalised to [0, 1]. Targets are each image's boxes, padded to the
same count with class -1: the grid is built from them per batch, so the dataset does not fix the grid size.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.tasks.base import TASKS, Task
from dlrun.views.dense import boxes_view

BOX_FIELDS = 5  # objectness, x, y, sqrt(w), sqrt(h)


def encode_targets(boxes: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K, 5) boxes -> per cell: has an object (N, S, S) bool, box targets (N, S, S, 4), class (N, S, S).

    Box targets are the centre's offset in its cell and sqrt(w), sqrt(h). Two boxes centred in one cell:
    the later one wins, as in YOLO v1 (one object per cell). The winner is chosen explicitly: writing both with
    one index_put leaves which write lands undefined (torch's docs; on CUDA a cell could take one box's
    coordinates and another's class). No step here waits for the GPU: padding boxes go to a spare cell.
    """
    n, k = boxes.shape[:2]
    cells = n * grid * grid
    b = boxes.reshape(n * k, 5)
    cx, cy = (b[:, 1] + b[:, 3]) / 2 * grid, (b[:, 2] + b[:, 4]) / 2 * grid
    col, row = cx.floor().clamp(0, grid - 1), cy.floor().clamp(0, grid - 1)
    image = torch.arange(n, device=boxes.device).repeat_interleave(k)
    cell = torch.where(b[:, 0] >= 0, image * grid * grid + row.long() * grid + col.long(), cells)  # padding: spare
    order = torch.arange(n * k, device=boxes.device)
    last = torch.full((cells + 1,), -1, dtype=torch.long, device=boxes.device).scatter_reduce(
        0, cell, order, reduce="amax")  # the latest box of each cell
    cell = torch.where(last[cell] == order, cell, cells)  # boxes that lost their cell go to the spare one too
    wh = (b[:, 3:5] - b[:, 1:3]).clamp_min(0)
    obj = torch.zeros(cells + 1, dtype=torch.bool, device=boxes.device).index_fill_(0, cell, True)
    box = torch.zeros(cells + 1, 4, device=boxes.device).index_copy_(
        0, cell, torch.stack([cx - col, cy - row, wh[:, 0].sqrt(), wh[:, 1].sqrt()], dim=1))
    cls = torch.zeros(cells + 1, dtype=torch.long, device=boxes.device).index_copy_(
        0, cell, b[:, 0].long().clamp_min(0))
    return obj[:cells].view(n, grid, grid), box[:cells].view(n, grid, grid, 4), cls[:cells].view(n, grid, grid)


class YoloLoss(nn.Module):
    """YOLO v1's sum of squares on the box (with sqrt(w), sqrt(h)), objectness and class terms, per image.

    The square roots make an error of a few pixels count more on a small box than on a large one (course 3
    §5.1). Objectness and class use cross-entropies instead of v1's squared errors: the same targets, better
    gradients for the logits. lambda_coord weights the box term up, lambda_noobj the many empty cells down.
    """

    def __init__(self, lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> None:
        super().__init__()
        self.lambda_coord = lambda_coord
        self.lambda_noobj = lambda_noobj
        self.grid: int | None = None  # the side of the last output's grid

    def forward(self, output: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if output.dim() != 4 or output.shape[2] != output.shape[3] or output.shape[1] <= BOX_FIELDS:
            raise ValueError(f"a grid detector's output must be (batch, 5 + classes, S, S), got {tuple(output.shape)}")
        if boxes.dim() != 3 or boxes.shape[-1] != 5:
            raise ValueError(f"detection targets must be (batch, boxes, 5), got {tuple(boxes.shape)}")
        self.grid = output.shape[-1]
        obj, box, cls = encode_targets(boxes, self.grid)
        out = output.permute(0, 2, 3, 1)  # (N, S, S, 5 + C)
        # Every term is a sum over cells weighted by has-object (1) or not (0): no boolean indexing, whose result's
        # size the GPU would first have to report to the host.
        has = obj.to(out.dtype)
        objectness = nn.functional.binary_cross_entropy_with_logits(out[..., 0], has, reduction="none")
        loss = (objectness * has).sum() + self.lambda_noobj * (objectness * (1 - has)).sum()
        predicted = torch.sigmoid(out[..., 1:BOX_FIELDS])
        loss = loss + self.lambda_coord * (((predicted - box) ** 2).sum(-1) * has).sum()
        classes = out[..., BOX_FIELDS:]
        # One row per cell (a 1-D cross-entropy: deterministic on CUDA, unlike the (N, C, S, S) form).
        class_loss = nn.functional.cross_entropy(classes.reshape(-1, classes.shape[-1]), cls.reshape(-1),
                                                 reduction="none")
        return (loss + (class_loss * has.reshape(-1)).sum()) / output.shape[0]


def decode(output: torch.Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5,
           max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Each image's detections after non-max suppression: boxes (k, 4) in [0, 1], scores (k,), labels (k,).

    A box's score is objectness x the probability of its most likely class.
    """
    n, _, grid, _ = output.shape
    out = output.float().permute(0, 2, 3, 1)
    probs = torch.softmax(out[..., BOX_FIELDS:], dim=-1)
    class_prob, labels = probs.max(dim=-1)
    scores = torch.sigmoid(out[..., 0]) * class_prob
    offsets = torch.sigmoid(out[..., 1:BOX_FIELDS])
    rows, cols = torch.meshgrid(torch.arange(grid, device=out.device), torch.arange(grid, device=out.device),
                                indexing="ij")
    cx, cy = (cols + offsets[..., 0]) / grid, (rows + offsets[..., 1]) / grid
    w, h = offsets[..., 2] ** 2, offsets[..., 3] ** 2
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)
    from torchvision.ops import batched_nms  # here: importing torchvision takes ~1 s that other runs need not pay

    cells = grid * grid
    keep = (scores.reshape(-1) >= score_threshold).nonzero().squeeze(1)
    image = keep // cells
    b, s, c = boxes.reshape(-1, 4)[keep], scores.reshape(-1)[keep], labels.reshape(-1)[keep]
    # Non-max suppression (course 3 §5.1): of boxes of one class overlapping by IoU > iou_threshold, only the
    # highest-scoring survives. One batched_nms call for every image, each (image, class) pair its own group.
    kept = batched_nms(b, s, image * probs.shape[-1] + c, iou_threshold)  # by decreasing score
    kept_image = image[kept]
    detections = []
    for i in range(n):
        mine = kept[kept_image == i][:max_detections]
        detections.append({"boxes": b[mine], "scores": s[mine], "labels": c[mine]})
    return detections


def ground_truth(boxes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """(N, K, 5) padded targets -> each image's real boxes (k, 4) and labels (k,)."""
    return [{"boxes": b[b[:, 0] >= 0, 1:], "labels": b[b[:, 0] >= 0, 0].long()} for b in boxes]


def average_precision(tp: torch.Tensor, scores: torch.Tensor, n_true: int) -> float:
    """Area under the precision-recall curve of ranked detections, with precision made monotone (VOC, all points)."""
    if n_true == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = scores.argsort(descending=True, stable=True)
    hits = tp[order].float().cumsum(0)
    recall = hits / n_true
    precision = hits / torch.arange(1, len(tp) + 1, device=tp.device)
    # Precision at recall r = the best precision at any recall >= r (the envelope).
    envelope = precision.flip(0).cummax(0).values.flip(0)
    steps = torch.diff(recall, prepend=torch.zeros(1, device=recall.device))
    return float((steps * envelope).sum())


def mean_average_precision(detections: list[dict[str, torch.Tensor]], truths: list[dict[str, torch.Tensor]],
                           num_classes: int, iou_threshold: float = 0.5) -> dict[str, float]:
    """mAP@iou_threshold: per class, rank every detection by score; a detection is a true positive when it
    overlaps a not yet matched true box of its class by IoU >= iou_threshold; AP per class, mean over the
    classes that have true boxes. Also returns each class's AP as ap_<class index>."""
    from torchvision.ops import box_iou

    per_class = {}
    for c in range(num_classes):
        tp, scores, n_true = [], [], 0
        for det, truth in zip(detections, truths):
            true_boxes = truth["boxes"][truth["labels"] == c]
            n_true += len(true_boxes)
            pick = det["labels"] == c
            boxes, s = det["boxes"][pick], det["scores"][pick]
            if len(s) == 0:
                continue
            order = s.argsort(descending=True, stable=True)
            boxes, s = boxes[order], s[order]
            matched = torch.zeros(len(true_boxes), dtype=torch.bool, device=boxes.device)
            hit = torch.zeros(len(s), dtype=torch.bool, device=boxes.device)
            if len(true_boxes):
                iou = box_iou(boxes, true_boxes)
                for k in range(len(s)):  # greedy, best score first, each true box matched once
                    candidates = iou[k].masked_fill(matched, -1.0)
                    best = int(candidates.argmax())
                    if candidates[best] >= iou_threshold:
                        matched[best] = hit[k] = True
            tp.append(hit)
            scores.append(s)
        ap = average_precision(torch.cat(tp) if tp else torch.zeros(0, dtype=torch.bool),
                               torch.cat(scores) if scores else torch.zeros(0), n_true)
        per_class[f"ap_{c}"] = ap
    present = [v for v in per_class.values() if v == v]  # NaN: a class with no true box is left out of the mean
    return {"map50" if iou_threshold == 0.5 else f"map{int(iou_threshold * 100)}":
            sum(present) / len(present) if present else float("nan"), **per_class}


def detection_metrics(output: torch.Tensor, boxes: torch.Tensor, num_classes: int) -> dict[str, float]:
    """mAP@0.5 of the decoded, suppressed detections against the true boxes."""
    # On the host: matching detections to true boxes is a loop that reads values one by one, each read a wait
    # for the GPU if the tensors stayed there.
    output, boxes = output.cpu(), boxes.cpu()
    scores = mean_average_precision(decode(output), ground_truth(boxes), num_classes)
    return {"map50": scores["map50"]}


@TASKS.register("detection")
class Detection(Task):
    """model(image) -> a grid of boxes, objectness and class scores (model=yolo by its preset), scored by mAP@0.5."""

    name = "detection"
    metric_names = ("map50",)
    main_metric = "map50"
    higher_is_better = frozenset({"map50"})
    default_loss = "yolo"
    preset = "detection"
    lacks = " (it has no boxes)"
    example_dataset = " such as shapes"
    targets_on_pixels = "boxes"
    epoch_views = (boxes_view,)

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        return detection_metrics(outputs, y, info.num_classes)

