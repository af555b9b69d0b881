"""glibc's malloc told to keep freed memory for reuse, instead of handing it back to the kernel.

Why: glibc serves an allocation above its mmap threshold (128 KB at start, then adapting to
what was freed) with a fresh mapping that it unmaps on free, and gives back a heap top past
128 KB; the next buffer of that size then page-faults every 4 KB page in again (zeroed by the
kernel). A decoded 1600×900 JPEG is a fresh 4.3 MB array: 8.5 ms a decode with the faults
against 4.3 ms without, and which of the two a process saw depended on what it had freed
before (cmcr/bench/data.py measured floors of 27 and 51 ms a sample for the same files).
Neither Python, numpy nor PyTorch exposes these settings; glibc's public ``mallopt``, called
through ctypes, is this adapter. Elsewhere (macOS, musl) nothing is changed.

The cost: a process keeps its peak heap (a loader worker its largest few batches).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes on 64-bit (HEAP_MAX_SIZE / 2): 32 MB
TRIM_THRESHOLD = 1 << 30  # give the heap's top back only past 1 GB free

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set both thresholds in this process (once); True where glibc took them.

    Allocations up to 32 MB then come from the heap, and freed heap memory stays mapped, so a
    buffer freed and allocated again each sample is not faulted in again.
    """
    global _done
    if _done is None:
        # the process's own symbols: glibc's mallopt where it is linked (no ldconfig lookup);
        # macOS has none, musl's is a stub that takes nothing (returns 0)
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        if mallopt is None:
            _done = False
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _done = (
                mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            )
    return _done
