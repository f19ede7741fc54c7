"""Where fit() gets its training batches: gathered from tensors in memory, or streamed from disk by workers.

Either way the loop owns the order: each epoch it hands over its seeded permutation of the training
samples and the batch to start from (a run resumed mid-epoch), and gets (inputs, targets) batches back.
"""

from __future__ import annotations

from typing import Iterator

import torch

from dlrun.data.stream import StreamedImages


class InMemoryBatches:
    """The fast path: the split is held on the training device and each batch is gathered by index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    @property
    def index_device(self) -> torch.device:
        return self.x.device

    def batches(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One (inputs, targets) batch per tensor of sample indices."""
        for idx in index_batches:
            # index_select gathers rows far faster than x[idx] (on CPU ~20x for uint8 images).
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def epoch(self, order: torch.Tensor, batch_size: int,
              start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `order`, from batch `start` on."""
        return self.batches(order.to(self.index_device).split(batch_size)[start:])


class _Batches:
    """A DataLoader batch sampler whose index lists are set anew each epoch (workers stay alive between)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamedBatches:
    """Images decoded from disk by DataLoader workers in the loop's order; the targets are held in memory."""

    def __init__(self, x: StreamedImages, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.sampler = _Batches()
        self.loader = x.loader(self.sampler, persistent=True)

    index_device = torch.device("cpu")  # the workers read file lists by index

    def batches(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One (inputs, targets) batch per tensor of sample indices, decoded ahead by the workers."""
        self.sampler.batches = [idx.tolist() for idx in index_batches]
        for idx, xb in zip(index_batches, self.loader):
            yield xb.to(self.x.device, non_blocking=True), self.y.index_select(0, idx.to(self.y.device))

    def epoch(self, order: torch.Tensor, batch_size: int,
              start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `order`, from batch `start` on."""
        return self.batches(list(order.split(batch_size)[start:]))


def batch_source(x: torch.Tensor | StreamedImages, y: torch.Tensor) -> InMemoryBatches | StreamedBatches:
    """Streamed batches for a split kept on disk, gathered ones for a split in memory."""
    return StreamedBatches(x, y) if isinstance(x, StreamedImages) else InMemoryBatches(x, y)
