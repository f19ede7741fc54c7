"""Memory: keep freed CPU memory in the process (training steps reuse it), and check data fits a GPU before it moves."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Sequence
from typing import Any

from dlrun.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 1 GiB for reuse; True if it was set (Linux with glibc only).

    By default glibc hands blocks over 32 MB back to the OS when they are freed (and trims the heap), so
    a CPU training step whose activations are that large gets fresh pages every step, each one a page
    fault: on MNIST at batch 512 the kernel's page-zeroing took longer than the convolutions. The cost:
    the process keeps its peak memory (up to 1 GiB more) until it ends.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):  # another C library (musl) without mallopt
        return False


# At most this share of a GPU's free memory holds the data; the model, its activations and the optimizer need the rest.
DATA_SHARE_OF_GPU = 0.5


def check_fits_on_device(tensors: Sequence[Any], device: Any, free_bytes: int | None = None) -> None:
    """Refuse to move a dataset's tensors to a GPU they would mostly fill (`free_bytes`: its free memory, else asked).

    Datasets are held in memory up to a limit on host RAM (image_folder's max_memory_gb); a GPU often has less.
    """
    import torch

    if device.type != "cuda" and free_bytes is None:
        return
    size = sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor) and t.device != device)
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if size > DATA_SHARE_OF_GPU * free_bytes:
        gib = 2 ** 30
        raise ConfigError(f"The dataset's splits take {size / gib:.2f} GiB, but {device} has "
                          f"{free_bytes / gib:.2f} GiB free and dl-run gives the data at most "
                          f"{DATA_SHARE_OF_GPU:.0%} of it (the model, its activations and the optimizer need the "
                          f"rest). Stream images from disk "
                          f"(dataset=image_folder dataset.in_memory=false), train on part of the data "
                          f"(dataset.train_fraction=0.5), or use trainer.device=cpu.", key="dataset")


# A split's outputs (one row of scores per example, or per pixel) stay on the GPU while they take at most this share
# of its free memory; beyond it they are gathered on the host, batch by batch, and scored there.
OUTPUTS_SHARE_OF_GPU = 0.25


def outputs_home(first: Any, rows: int, free_bytes: int | None = None) -> Any:
    """Where a split's outputs are gathered: their device, or the CPU when all `rows` of outputs shaped like the first
    batch's (`first`) would take more than OUTPUTS_SHARE_OF_GPU of the GPU's free memory (`free_bytes`, else asked)."""
    import torch

    if first.device.type != "cuda" and free_bytes is None:
        return first.device
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(first.device)[0]
    size = first.nbytes * rows / max(len(first), 1)
    return first.device if size <= OUTPUTS_SHARE_OF_GPU * free_bytes else torch.device("cpu")
