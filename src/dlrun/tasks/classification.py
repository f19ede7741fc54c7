"""Classification: one class per sample, scored by accuracy; a confusion matrix after the test."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.tasks.base import TASKS, Task
from dlrun.views.cnn import cnn_test_views, gradcam_during_training
from dlrun.views.test import confusion_matrix_view


def classification_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Fraction of correctly predicted classes."""
    return {"accuracy": (predicted == target).float().mean().item()}


@TASKS.register("classification")
class Classification(Task):
    """model(x) -> one score per class (or one for two classes); the predicted class is the largest."""

    name = "classification"
    metric_names = ("accuracy",)
    main_metric = "accuracy"
    higher_is_better = frozenset({"accuracy"})
    default_loss = "cross_entropy"
    epoch_views = (gradcam_during_training,)
    test_views = (confusion_matrix_view, cnn_test_views)

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        return classification_metrics(self.loss_fn.predict_classes(outputs), y)
