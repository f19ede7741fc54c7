"""Inside a CNN classifier (course 3 §5.1): Grad-CAM over a fixed panel of test images (or series, for a 1-D CNN),
drawn once here for every caller (the test views, the views during training, mode=gradcam), the first layer's
filters and a layer's feature maps; logger.gradcam_layer and logger.feature_map_layer pick the layers by name."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.diagnostics.cnn import (conv_by_name, feature_maps_grid, filters_grid, grad_cam_figure, grad_cam_maps,
                                   grad_cam_series_figure, last_conv)
from dlrun.engine.evaluating import evaluating
from dlrun.views import EpochView, ViewInputs, class_names

PANEL = 8  # the first test images: the same panel in every run


def has_gradcam(inputs: ViewInputs) -> bool:
    """Grad-CAM needs a CNN classifier (2-D over images, or 1-D over series) with one score per class."""
    return last_conv(inputs.model) is not None and not inputs.loss.binary


def gradcam_panel(inputs: ViewInputs) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The Grad-CAM figure (image / for the predicted class / for the true class) over the test panel, the
    prepared images, and the heatmaps for the predicted class at the layer's own resolution."""
    images = inputs.prepare(inputs.splits.x_test[:PANEL])
    true = inputs.splits.y_test[:PANEL]
    # Called between epochs too: evaluating() hands the model back to training with dropout and BN as before.
    with torch.no_grad(), evaluating(inputs.model):
        predicted = inputs.loss.predict_classes(inputs.model(images).float())
    layer = conv_by_name(inputs.model, inputs.gradcam_layer, "logger.gradcam_layer") or last_conv(inputs.model)
    # a 1-D CNN's series (steps, features) get their heatmap over time under the series
    draw = grad_cam_series_figure if isinstance(layer, nn.Conv1d) else grad_cam_figure
    maps, maps_true = (grad_cam_maps(inputs.model, images, classes, layer) for classes in (predicted, true))
    figure = draw(images, _upsampled(maps, images), _upsampled(maps_true, images), predicted.tolist(), true.tolist(),
                  class_names(inputs.info))
    return figure, images, maps


def _upsampled(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Heatmaps at a layer's resolution stretched over the images (series) they were computed for."""
    if maps.dim() == 2:  # series: (N, length) over their steps
        return F.interpolate(maps.unsqueeze(1), size=images.shape[1], mode="linear", align_corners=False).squeeze(1)
    return F.interpolate(maps.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)


def log_cnn_views(inputs: ViewInputs, step: int) -> None:
    """Grad-CAM (the figure, and the heatmaps at the layer's own resolution), the first layer's filters and a
    layer's feature maps (the first by default), in TensorBoard."""
    if not has_gradcam(inputs):
        return
    figure, images, maps = gradcam_panel(inputs)
    inputs.logger.figure("cnn/grad_cam", figure, step)
    # one heatmap per panel image, side by side, h x w each: how coarse the chosen layer sees (course 3 §5.1)
    inputs.logger.images("cnn/grad_cam_map", (maps.unsqueeze(0) if maps.dim() == 2 else maps).unsqueeze(1), step)
    inputs.logger.images("cnn/first_layer_filters", filters_grid(inputs.model).unsqueeze(0), step)
    layer = conv_by_name(inputs.model, inputs.feature_map_layer, "logger.feature_map_layer")
    tag = "cnn/first_layer_feature_maps" if layer is None else f"cnn/feature_maps/{inputs.feature_map_layer}"
    inputs.logger.images(tag, feature_maps_grid(inputs.model, images, layer=layer).unsqueeze(0), step)


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
