"""The C allocator's settings for CPU work: freed tensors are kept for the next ones, not handed back to the OS.

torch's CPU tensors come from ``malloc``. glibc serves a block above its *mmap threshold* with a fresh
``mmap`` (freed with ``munmap``), and returns free memory at the top of its heap to the OS past its *trim
threshold*; both thresholds start small (128 KiB) and only grow as blocks are freed. A process that samples or
trains a network on a CPU allocates and frees the same activation sizes thousands of times, so with those
defaults the kernel faults in and zeroes the pages again and again: ``fmkit sample`` of 200 guided MNIST images
(1 thread) spent 38.7 s in the kernel beside 56.9 s of computation, 17.3 million page faults
(bench/results/sample_route.md). Raising both thresholds once keeps such blocks in the heap; blocks above
glibc's largest threshold (32 MiB) are mapped whatever it says, which sampling avoids by calling the model on
slices of its chunk (:mod:`fmkit.flow.batching`).
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit): blocks above it are always mmap'd
MMAP_THRESHOLD = 32 * 2**20
#: free memory the heap may keep at its top before giving it back to the OS
TRIM_THRESHOLD = 1 * 2**30

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; a no-op elsewhere: macOS, Windows,
    musl). Returns whether the allocator took the settings. Held memory is reused by the next tensors; the
    process's resident size stays near its peak instead of falling between calls."""
    if "done" not in _state:
        _state["done"] = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _state["done"]


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn(param, value) == 1
