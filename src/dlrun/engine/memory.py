"""Keep freed CPU memory in the process, so that training steps reuse it instead of asking the OS again."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
