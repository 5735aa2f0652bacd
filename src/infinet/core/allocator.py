"""Keep freed memory in the process heap instead of returning it to the OS after every tensor.

Spatial kernels run many short elementwise passes over tiles of a few MB. glibc serves such blocks by
mmap and unmaps them on free, so every pass page-faults its output again: on a 2-core machine this
cost 2.7 million page faults and doubled the time of a CNN kernel (see benchmarks/conv_kernel.py).
Raising glibc's mmap and trim thresholds (mallopt, as PyTorch's CPU performance guide suggests
through MALLOC_* variables or jemalloc) keeps those blocks in the heap. The tile pool's threads allocate from
glibc's per-thread arenas, whose 64 MiB heaps are unmapped as soon as they are empty, whatever the trim threshold:
a tile's 8-11 MiB buffers emptied and re-created such heaps between tiles, up to 140,000 page faults per
CNN-GAP kernel (8 images of 32 x 32) and 10% of its time on the 2-core machine. A top pad of 64 MiB (glibc's
M_TOP_PAD, the free space a heap keeps when trimmed) keeps them mapped: 2,000-9,000 faults per kernel. It is
process-wide, done once, only on glibc, and skipped when INFINET_KEEP_MALLOC=1 or the user set
MALLOC_MMAP_THRESHOLD_ (the top pad also when the user set MALLOC_TOP_PAD_).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# blocks below 16 MiB come from the heap. Not higher: larger blocks allocated and freed by the tile pool's two
# or more threads fragment the heap (small blocks settle in the holes, the next large block does not fit)
# and the process grows without bound: a Tanh kernel on 401 inputs, whose quadrature chunks are 32 MiB
# arrays, passed 23 GB at 64 MiB (tests/test_reliability.py); mmap'ed blocks go back to the OS on free
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 512 << 20  # keep up to 512 MiB of freed heap before giving it back
TOP_PAD = 64 << 20  # glibc's per-thread heaps are 64 MiB (HEAP_MAX_SIZE on 64-bit): an empty one stays mapped
_done = False


def _libc_function(name: str, argtypes: list):
    """The C library's function ``name`` with its argument types declared (returning int), or None where the C
    library or the function is not to be had."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


def tune_allocator() -> bool:
    """Apply the thresholds once; returns whether they are in effect."""
    global _done
    if _done:
        return True
    _done = True
    if os.environ.get("INFINET_KEEP_MALLOC") == "1" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:  # not glibc (macOS, Windows, musl): nothing to do
        return False
    padded = "MALLOC_TOP_PAD_" in os.environ or bool(mallopt(_M_TOP_PAD, TOP_PAD))
    return (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and padded)


# madvise(2) advice asking the kernel to back a range with transparent huge pages (Linux)
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20


def large_empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty(shape)``; on the CPU, when it is at least :data:`MMAP_THRESHOLD` bytes (memory fresh from
    the OS, never touched), first asked to be backed by transparent huge pages (``madvise(MADV_HUGEPAGE)`` on the
    2 MiB pages it covers). Writing a fresh (N, N) result otherwise takes one page fault per 4 KiB: on this
    project's 2-core machine filling a new 128 MB tensor took 65 ms, of which 38 ms were page faults, against
    27 ms with huge pages (benchmarks/fc_kernel.py). Linux with THP in ``madvise`` or ``always`` mode only;
    elsewhere (or when the advice is refused) a plain tensor, with the same contents (uninitialized)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < MMAP_THRESHOLD:
        return out
    madvise = _libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
    if madvise is not None:
        start = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (out.data_ptr() + nbytes) & ~(_HUGE_PAGE - 1)
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: a refusal leaves ordinary pages
    return out
