"""Evaluation mode for a while: dropout off, batch norm on its running statistics, then back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`with evaluating(model):` runs the block in eval mode and restores the model's mode, even on error.

    Views and checks run between training steps: leaving the model in eval mode would train on with
    dropout and batch-norm updates switched off.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
