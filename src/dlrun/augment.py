"""Batched data augmentation, applied on the training device to whole batches (course 3 §4.1).

Only `none` exists so far; the image augmentations come with the image work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlrun.registry import Registry

AUGMENTATIONS = Registry("augmentation")

Augment = Callable[[torch.Tensor], torch.Tensor]


@AUGMENTATIONS.register("none")
def build_none() -> Augment | None:
    """Train on the data as it is."""
    return None
