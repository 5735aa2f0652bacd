"""Keep freed memory in the process heap instead of returning it to the OS after every tensor.

Spatial kernels run many short elementwise passes over tiles of a few MB. glibc serves such blocks by
mmap and unmaps them on free, so every pass page-faults its output again: on a 2-core machine this
cost 2.7 million page faults and doubled the time of a CNN kernel (see benchmarks/conv_kernel.py).
Raising glibc's mmap and trim thresholds (mallopt, as PyTorch's CPU performance guide suggests
through MALLOC_* variables or jemalloc) keeps those blocks in the heap. It is process-wide, done once,
only on glibc, and skipped when INFINET_KEEP_MALLOC=1 or the user set MALLOC_MMAP_THRESHOLD_.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# blocks below 16 MiB come from the heap. Not higher: larger blocks allocated and freed by the tile pool's two
# or more threads fragment the heap (small blocks settle in the holes, the next large block does not fit)
# and the process grows without bound: a Tanh kernel on 401 inputs, whose quadrature chunks are 32 MiB
# arrays, passed 23 GB at 64 MiB (tests/test_reliability.py); mmap'ed blocks go back to the OS on free
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 512 << 20  # keep up to 512 MiB of freed heap before giving it back
_done = False


def tune_allocator() -> bool:
    """Apply the thresholds once; returns whether they are in effect."""
    global _done
    if _done:
        return True
    _done = True
    if os.environ.get("INFINET_KEEP_MALLOC") == "1" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

