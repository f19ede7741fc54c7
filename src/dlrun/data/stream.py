"""Training images read from disk as they are needed, for folders too large to hold in memory.

`StreamedImages` stands where the in-memory uint8 tensor of the training split would: it knows its
length and shape, and decodes any rows asked for (by slice, index tensor or `split`) through a
DataLoader with worker processes. The training loop draws its batches through `dlrun.batches`, which
hands it fit()'s own shuffled order as the DataLoader's batch sampler.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from dlrun.errors import ConfigError


class UnreadableImage(ConfigError):
    """An image file that cannot be decoded, named; one line, also when raised in a DataLoader worker process.

    A worker's exception reaches the main process as its type called with torch's text "Caught ... Original
    Traceback ...", whose last line is this error's own message: only that line is kept."""

    def __init__(self, message: str, key: str | None = "dataset.path") -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message, key=key)


class ImagesOnly(torch.utils.data.Dataset):
    """Rows `indices` of an (image, label) dataset, images only: the labels are held in memory anyway.

    A file that cannot be decoded (corrupt, truncated, not an image) raises UnreadableImage naming it and `key`."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: Sequence[int], key: str = "dataset.path") -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.key = key

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            return self.dataset[self.indices[i]][0]
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for a bad file
            samples = getattr(self.dataset, "samples", None)
            file = samples[self.indices[i]][0] if samples is not None else f"image {self.indices[i]}"
            reason = ("not an image PIL can decode, whatever its suffix" if "cannot identify image" in str(err)
                      else " ".join(str(err).split()) or type(err).__name__)
            raise UnreadableImage(f"'{self.key}': cannot read the image {file} ({reason}). Remove or replace that "
                                  f"file.", key=self.key) from None


class StreamedImages:
    """A split's uint8 images (N, C, H, W) on disk, decoded on demand by `workers` DataLoader processes."""

    dtype = torch.uint8

    def __init__(self, dataset: torch.utils.data.Dataset, shape: tuple[int, ...], workers: int = 2,
                 pin_memory: bool = True, persistent_workers: bool = True, device: torch.device | str = "cpu",
                 chunk: int = 256) -> None:
        self.dataset = dataset
        self.shape = torch.Size((len(dataset), *shape))
        self.workers = workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.device = torch.device(device)
        self.chunk = chunk

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamedImages({tuple(self.shape)}, workers={self.workers}, device={self.device})"

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "StreamedImages":
        """The same files, with decoded rows delivered on `device` (nothing is loaded now)."""
        return StreamedImages(self.dataset, tuple(self.shape[1:]), self.workers, self.pin_memory,
                              self.persistent_workers, device, self.chunk)

    def loader(self, batches: Iterable[list[int]], persistent: bool = False,
               workers: int | None = None) -> torch.utils.data.DataLoader:
        """A DataLoader yielding the rows of each index list in `batches`, in that order."""
        workers = self.workers if workers is None else workers
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=workers,
            pin_memory=self.pin_memory and self.device.type == "cuda",
            persistent_workers=persistent and self.persistent_workers and workers > 0,
            generator=torch.Generator())  # its workers' seeds: not drawn from torch's global generator (dropout's)

    def rows(self, indices: Sequence[int]) -> Iterator[torch.Tensor]:
        """The decoded images of `indices`, in that order, a chunk at a time, on the device."""
        chunks = [list(indices[i:i + self.chunk]) for i in range(0, len(indices), self.chunk)]
        # A few rows (a sample, a summary) are decoded here: starting worker processes would cost more.
        for images in self.loader(chunks, workers=0 if len(chunks) == 1 else None):
            yield images.to(self.device, non_blocking=True)

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of `size` rows, decoded through one DataLoader; what evaluation iterates over."""
        pending: list[torch.Tensor] = []
        held = 0
        for images in self.rows(range(len(self))):
            pending.append(images)
            held += len(images)
            while held >= size:
                rows = torch.cat(pending)
                yield rows[:size]
                pending, held = [rows[size:]], held - size
        if held:
            yield torch.cat(pending)

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(index, slice):
            indices: Sequence[int] = range(len(self))[index]
        elif isinstance(index, torch.Tensor):
            indices = index.reshape(-1).tolist()
        else:
            indices = list(index)
        if len(indices) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8, device=self.device)
        return torch.cat(list(self.rows(indices)))

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (dim 0 only), decoded, like torch.Tensor.index_select."""
        if dim != 0:
            raise ValueError("streamed images are selected by row (dim 0)")
        return self[index]
