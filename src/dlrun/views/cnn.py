"""Inside a CNN classifier (course 3 §5.1): Grad-CAM over a fixed panel of test images (or series, for a 1-D CNN),
drawn once here for every caller (the test views, the views during training, mode=gradcam), and the first layer's
filters and feature maps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dlrun.diagnostics.cnn import (feature_maps_grid, filters_grid, grad_cam, grad_cam_figure, grad_cam_series_figure,
                                   last_conv)
from dlrun.engine.evaluating import evaluating
from dlrun.views import EpochView, ViewInputs, class_names

PANEL = 8  # the first test images: the same panel in every run


def has_gradcam(inputs: ViewInputs) -> bool:
    """Grad-CAM needs a CNN classifier (2-D over images, or 1-D over series) with one score per class."""
    return last_conv(inputs.model) is not None and not inputs.loss.binary


def gradcam_panel(inputs: ViewInputs) -> tuple[Any, torch.Tensor]:
    """The Grad-CAM figure (image / for the predicted class / for the true class) over the test panel, and the
    prepared images."""
    images = inputs.prepare(inputs.splits.x_test[:PANEL])
    true = inputs.splits.y_test[:PANEL]
    # Called between epochs too: evaluating() hands the model back to training with dropout and BN as before.
    with torch.no_grad(), evaluating(inputs.model):
        predicted = inputs.loss.predict_classes(inputs.model(images).float())
    # a 1-D CNN's series (steps, features) get their heatmap over time under the series
    draw = grad_cam_series_figure if isinstance(last_conv(inputs.model), nn.Conv1d) else grad_cam_figure
    figure = draw(images, grad_cam(inputs.model, images, predicted), grad_cam(inputs.model, images, true),
                  predicted.tolist(), true.tolist(), class_names(inputs.info))
    return figure, images


def log_cnn_views(inputs: ViewInputs, step: int) -> None:
    """Grad-CAM, the first layer's filters and its feature maps, in TensorBoard."""
    if not has_gradcam(inputs):
        return
    figure, images = gradcam_panel(inputs)
    inputs.logger.figure("cnn/grad_cam", figure, step)
    inputs.logger.images("cnn/first_layer_filters", filters_grid(inputs.model).unsqueeze(0), step)
    inputs.logger.images("cnn/first_layer_feature_maps", feature_maps_grid(inputs.model, images).unsqueeze(0), step)


def cnn_test_views(inputs: ViewInputs, step: int) -> None:
    """After the test (logger.figures on): the CNN views of the best checkpoint."""
    if inputs.logger.figures:
        log_cnn_views(inputs, step)


def gradcam_during_training(inputs: ViewInputs) -> EpochView | None:
    """Every logger.gradcam_every_n_epochs epochs: watch where the network looks as it learns (course 3 §5.1)."""
    every = getattr(inputs.logger, "gradcam_every_n_epochs", 0)
    if not (every and inputs.logger.figures and has_gradcam(inputs)):
        return None
    epoch = inputs.first_epoch  # a resumed run keeps counting from its epoch

    def view(model: nn.Module, step: int) -> None:
        nonlocal epoch
        epoch += 1
        if epoch % every == 0:
            log_cnn_views(inputs, step)
    return view
