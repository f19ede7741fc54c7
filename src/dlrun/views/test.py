"""What a task shows once, after the test, with the best checkpoint: a confusion matrix and per-class accuracy
(classification), predicted against true values (regression)."""

from __future__ import annotations

import torch

from dlrun.views import ViewInputs, class_names


@torch.no_grad()
def _test_outputs(inputs: ViewInputs) -> torch.Tensor:
    inputs.model.eval()
    x = inputs.splits.x_test
    return torch.cat([inputs.model(inputs.prepare(xb)) for xb in x.split(inputs.eval_batch_size)]).float()


def confusion_matrix_view(inputs: ViewInputs, step: int) -> dict[str, dict[str, float]] | None:
    """The confusion matrix in TensorBoard's Images tab, each class's accuracy as scalars and in metrics.json."""
    from dlrun.views import figures

    if not inputs.logger.figures:
        return None
    names, y = class_names(inputs.info), inputs.splits.y_test
    matrix = figures.confusion_matrix(inputs.loss.predict_classes(_test_outputs(inputs)), y, inputs.info.num_classes)
    inputs.logger.figure("test/confusion_matrix", figures.confusion_figure(matrix, names), step)
    totals = matrix.sum(dim=1)
    per_class = {name: (matrix[i, i] / totals[i]).item() for i, name in enumerate(names) if totals[i] > 0}
    inputs.logger.scalars({f"test_per_class_accuracy/{name}": value for name, value in per_class.items()}, step)
    return {"test_per_class_accuracy": per_class}


def predicted_vs_true_view(inputs: ViewInputs, step: int) -> None:
    """Each test sample's prediction against its true value, in the target's units."""
    from dlrun.views import figures

    if not inputs.logger.figures:
        return
    info, y = inputs.info, inputs.splits.y_test
    predicted, target = _test_outputs(inputs).reshape(y.shape), y
    if info.target_mean is not None:
        mean, std = info.target_mean.to(y.device), info.target_std.to(y.device)
        predicted, target = predicted * std + mean, target * std + mean
    inputs.logger.figure("test/predicted_vs_true", figures.scatter_figure(predicted, target), step)
