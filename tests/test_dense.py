"""Segmentation and detection (course 3 §5.1): scenes, metrics against hand-computed cases, training, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config
from dlrun.cli import task_arguments
from dlrun.data.shapes import draw_scenes
from dlrun.tasks.detection import (YoloLoss, average_precision, decode, detection_metrics, encode_targets,
                             mean_average_precision)
from dlrun.errors import ConfigError
from dlrun.run.experiment import Experiment
from dlrun.run.training import run
from dlrun.tasks.segmentation import segmentation_metrics

QUIET = ("trainer.progress=false", "trainer.device=cpu", "logger.gradients_every_n_steps=0")
FAST = (*QUIET, "dataset.n_samples=64", "trainer.batch_size=16")


# ---- scenes -------------------------------------------------------------------------------------------------

def test_scenes_hold_several_shapes_whose_boxes_frame_their_masks():
    scenes = draw_scenes(40, 32, np.random.default_rng(1), objects=4, min_size=0.25, max_size=0.5)
    counts = (scenes.boxes[..., 0] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() > 1
    for mask, boxes in zip(scenes.masks, scenes.boxes):
        real = boxes[boxes[:, 0] >= 0]
        assert sorted(set(mask.unique().tolist()) - {0}) == sorted(set((real[:, 0] + 1).long().tolist()))
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for label, x0, y0, x1, y1 in real.tolist():
            r0, r1, c0, c1 = round(y0 * 32), round(y1 * 32), round(x0 * 32), round(x1 * 32)
            inside = mask[r0:r1, c0:c1] == label + 1
            # The box is tight: its first and last rows and columns each hold a pixel of its shape.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[r0:r1, c0:c1] |= inside
        assert torch.equal(covered, mask > 0)  # no shape pixel outside its box: shapes do not overlap


# ---- segmentation metrics --------------------------------------------------------------------------------------

def test_segmentation_metrics_match_a_hand_computed_case():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    scores = segmentation_metrics(predicted, target, num_classes=3)
    # Background: 3 hits, union 4 -> IoU 3/4, Dice 6/7. Class 1: 4 hits, union 5 -> IoU 4/5, Dice 8/9. Class 2 absent.
    assert scores["pixel_accuracy"] == pytest.approx(7 / 8)
    assert scores["mean_iou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert scores["dice"] == pytest.approx((6 / 7 + 8 / 9) / 2)


# ---- detection: targets, NMS, AP, mAP ----------------------------------------------------------------------

def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _perfect_output(boxes: torch.Tensor, grid: int, classes: int) -> torch.Tensor:
    """The output a perfect detector gives: confident objectness, exact boxes, the right class."""
    obj, box, cls = encode_targets(boxes, grid)
    out = torch.full((len(boxes), grid, grid, 5 + classes), -12.0)
    out[..., 0] = torch.where(obj, 12.0, -12.0)
    out[..., 1:5] = torch.logit(box.clamp(1e-6, 1 - 1e-6))
    out[..., 5:] = torch.nn.functional.one_hot(cls, classes) * 24.0 - 12.0
    return out.permute(0, 3, 1, 2)


def test_targets_go_to_the_cell_holding_the_box_centre_with_square_roots_of_the_size():
    boxes = torch.tensor([[[2, 0.5, 0.25, 0.75, 0.5], [-1, 0, 0, 0, 0]]])  # centre (0.625, 0.375), 0.25 x 0.25
    obj, box, cls = encode_targets(boxes, grid=4)
    assert obj.sum() == 1 and obj[0, 1, 2]
    assert box[0, 1, 2].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert cls[0, 1, 2] == 2


def test_a_perfect_output_decodes_to_the_true_boxes_and_scores_map_one():
    boxes = torch.tensor([[[0, 0.1, 0.1, 0.4, 0.3], [1, 0.6, 0.5, 0.9, 0.95]],
                          [[2, 0.3, 0.3, 0.7, 0.7], [-1, 0, 0, 0, 0]]])
    output = _perfect_output(boxes, grid=4, classes=3)
    (first, second) = decode(output, score_threshold=0.5)
    assert sorted(first["labels"].tolist()) == [0, 1] and second["labels"].tolist() == [2]
    assert second["boxes"][0].tolist() == pytest.approx([0.3, 0.3, 0.7, 0.7], abs=1e-4)
    assert detection_metrics(output, boxes, 3)["map50"] == pytest.approx(1.0)
    assert YoloLoss()(output, boxes) < 0.01 < YoloLoss()(torch.zeros_like(output), boxes)


def test_non_max_suppression_keeps_the_best_of_overlapping_boxes_of_one_class_only():
    # Two neighbouring cells predict nearly the same box: IoU well above 0.5.
    out = torch.full((1, 5 + 2, 4, 4), -12.0)
    for col, score, label in ((1, 0.9, 0), (2, 0.6, 0)):
        out[0, 0, 1, col] = _logit(score)
        out[0, 1, 1, col], out[0, 2, 1, col] = _logit(0.99 if col == 1 else 0.01), 0.0  # centre x = 0.5 for both
        out[0, 3, 1, col] = out[0, 4, 1, col] = _logit(0.5)  # sqrt(w) = 0.5: w = 0.25
        out[0, 5 + label, 1, col] = 12.0
    (kept,) = decode(out)
    assert len(kept["scores"]) == 1 and kept["scores"][0] == pytest.approx(0.9, abs=1e-3)
    out[0, 5, 1, 2], out[0, 6, 1, 2] = -12.0, 12.0  # the weaker box now says class 1: NMS keeps both
    (kept,) = decode(out)
    assert sorted(kept["labels"].tolist()) == [0, 1]


def test_average_precision_matches_the_hand_computed_area():
    # Ranked: hit, miss, hit of 3 true boxes. Precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3; the envelope
    # gives 1 on [0, 1/3] and 2/3 on [1/3, 2/3]; the last third is never reached.
    ap = average_precision(torch.tensor([True, False, True]), torch.tensor([0.9, 0.8, 0.7]), n_true=3)
    assert ap == pytest.approx(1 / 3 + 2 / 9)
    assert average_precision(torch.tensor([False, True]), torch.tensor([0.9, 0.8]), n_true=1) == pytest.approx(0.5)


def test_map_counts_duplicates_and_wrong_classes_as_false_positives():
    truths = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), "labels": torch.tensor([0, 1])}]
    detections = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0],
                                          [0.55, 0.55, 1.0, 1.0]]),
                   "scores": torch.tensor([0.6, 0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0, 1])}]
    scores = mean_average_precision(detections, truths, num_classes=3)
    # Class 0: 0.9 hit, 0.8 miss (the box is of class 1), 0.6 duplicate: AP 1. Class 1: IoU 0.2025/0.25 = 0.81,
    # a hit: AP 1. Class 2 has no true box and is left out of the mean.
    assert scores["ap_0"] == pytest.approx(1.0) and scores["ap_1"] == pytest.approx(1.0)
    assert math.isnan(scores["ap_2"]) and scores["map50"] == pytest.approx(1.0)
    detections[0]["scores"] = torch.tensor([0.6, 0.5, 0.8, 0.7])  # the wrong-class box now outranks the hit
    assert mean_average_precision(detections, truths, 3)["ap_0"] == pytest.approx(0.5)


# ---- training, end to end in-process ------------------------------------------------------------------------

def _scalars_and_images(run_dir) -> tuple[set[str], set[str]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["images"])


@pytest.mark.parametrize("task,overrides,metric,image_tag", [
    ("segmentation", ("model.channels=[8,16]",), "mean_iou", "val/masks_true_vs_predicted"),
    ("detection", ("model.channels=[8,16,16,16]", "model.convs_per_stage=1"), "map50",
     "val/boxes_true_green_predicted_red"),
])
def test_dense_tasks_train_with_a_falling_loss_and_draw_predictions(tmp_path, task, overrides, metric, image_tag):
    cfg = compose_config(f"experiment={task}", *FAST, "trainer.epochs=3", *overrides)
    metrics = run(OmegaConf.create(cfg), tmp_path, [])
    losses = [h["train/loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    assert 0.0 <= metrics["test"][metric] <= 1.0
    scalars, images = _scalars_and_images(tmp_path)
    assert f"val/{metric}" in scalars and image_tag in images


def test_the_task_picks_its_preset_unless_a_model_or_preset_is_given():
    assert task_arguments(["task=segmentation", "dataset=shapes"])[-1] == "experiment=segmentation"
    assert task_arguments(["task=detection"])[-1] == "experiment=detection"
    assert task_arguments(["task=detection", "model=cnn"]) == ["task=detection", "model=cnn"]
    assert task_arguments(["task=classification"]) == ["task=classification"]


# ---- bad input, refused before training ---------------------------------------------------------------------

@pytest.mark.parametrize("overrides,words", [
    (("experiment=segmentation", "dataset=digits"), ["task=segmentation", "digits", "no per-pixel masks"]),
    (("experiment=detection", "dataset=iris"), ["task=detection", "iris", "no boxes"]),
    (("dataset=shapes", "model=unet", "dataset.n_samples=40"), ["model=unet", "task=segmentation", "classification"]),
    (("experiment=segmentation", "model=cnn", "dataset.n_samples=40"),
     ["model=cnn", "cross_entropy", "(32, 32)", "unet"]),
    (("experiment=detection", "loss=cross_entropy", "dataset.n_samples=40"),
     ["loss=cross_entropy", "detection", "loss=yolo"]),
    (("dataset=shapes", "loss=yolo", "dataset.n_samples=40"), ["loss=yolo", "task=detection"]),
    (("experiment=segmentation", "augmentation=standard", "dataset.n_samples=40"), ["Crop", "masks", "noise, color"]),
])
def test_a_task_without_its_targets_or_model_is_refused_by_name(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as err:
        Experiment(compose_config(*overrides, *QUIET), tmp_path)
    for word in words:
        assert word in str(err.value)


def test_dl_run_task_detection_runs_the_preset_end_to_end(dl_run):
    result = dl_run("task=detection", "dataset=shapes", "dataset.n_samples=40", "trainer.epochs=1",
                    "model.channels=[8,8,8,8]", "model.convs_per_stage=1", "trainer.progress=false")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["task"] == "detection" and "map50" in metrics["test"]
    assert "experiment=detection" in metrics["overrides"]


# ---- the accuracy targets of the issue, on the default settings (minutes: run with -m slow) ---------------------

@pytest.mark.slow
@pytest.mark.parametrize("task,metric,target", [("segmentation", "mean_iou", 0.8), ("detection", "map50", 0.7)])
def test_the_default_presets_reach_their_targets_on_test(tmp_path, task, metric, target):
    cfg = compose_config(f"experiment={task}", *QUIET)
    assert run(OmegaConf.create(cfg), tmp_path, [])["test"][metric] >= target
