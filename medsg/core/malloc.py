"""The C allocator setting that keeps CPU forward passes from page-faulting on every new activation tensor."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Let glibc reuse freed tensor memory instead of returning it to the OS; True when it applied.

    By default glibc serves blocks of a few MB and more by ``mmap`` and unmaps them on free, so each new
    activation tensor of a CPU forward pass costs page faults on first touch (about 300 MB of faults per
    sgformer_s forward at batch 8, a tenth of the time of a tiny model's evaluation). Serving blocks up to
    32 MB from the heap and not trimming it keeps them mapped. The peak is unchanged: freed memory is reused.
    Does nothing where the C library is not glibc or the user set a ``MALLOC_*`` variable.
    """
    if (
        platform.system() != "Linux"
        or platform.libc_ver()[0] != "glibc"
        or any(k in os.environ for k in _MALLOC_ENV)
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
            (_M_TRIM_THRESHOLD, 2**30),
            (_M_TOP_PAD, 64 * 2**20),
        )
        return all(libc.mallopt(param, value) == 1 for param, value in settings)
    except (OSError, AttributeError):
        return False
