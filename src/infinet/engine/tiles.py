"""The tile engine: every kernel computation larger than one tile goes through it.

A :class:`TilePlan` says which tiles a job has (a grid of ``size`` x ``size`` blocks of an N1 x N2 kernel;
for a symmetric kernel only the tiles on and above the diagonal, each off-diagonal tile computed once and
mirrored). :func:`finish_tile` is the one finishing step of a computed tile (a diagonal tile made exactly
symmetric; NaN or inf refused, naming the rows and columns). A sink takes finished tiles: :class:`MemorySink`
(tensors in this process, whose :meth:`~MemorySink.partial` keeps every finished tile when a later one fails)
or the zarr store of :mod:`infinet.scale.store` (chunks with done-marks, resumable). Executors run the
tiles: :func:`local_results` in this process (a thread pool on the CPU), or Dask tasks
(:mod:`infinet.scale.store`). Progress is reported one way, by :func:`progress_bar` (a tqdm bar on stderr).

Callers: :meth:`infinet.Layer.kernel` (through :func:`infinet.engine.tiling.compute_kernel`),
:func:`infinet.scale.kernel_to_store`, the tiled products of :class:`infinet.inference.solve.TiledKernel`
and the command line.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from . import fused
from .kernel import Kernel
from ..core.allocator import large_empty
from ..core.checks import all_finite, check_int


class NonFiniteKernelError(FloatingPointError):
    """A tile produced NaN or inf. ``partial`` holds every tile finished before it (NaN elsewhere)."""

    def __init__(self, message: str, partial: Kernel | None = None):
        super().__init__(message)
        self.partial = partial


def tile_ranges(n: int, size: int) -> list[slice]:
    """Split range(n) into consecutive slices of at most ``size`` (any n, no divisibility rule)."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def check_tile_size(size) -> int:
    """``size`` if it is a positive integer; else ValueError naming it."""
    return check_int(size, "tile_size")


@dataclass(frozen=True)
class TilePlan:
    """The tiles of an ``n1`` x ``n2`` kernel in blocks of ``size``: ``rows[i]`` x ``cols[j]`` is tile (i, j).
    A ``symmetric`` plan (x2 = x1) holds only the tiles with j >= i; tile (i, j) also stands for (j, i)."""

    n1: int
    n2: int
    size: int
    symmetric: bool

    def __post_init__(self):
        check_tile_size(self.size)
        if self.symmetric and self.n1 != self.n2:
            raise ValueError(f"a symmetric kernel is square, got {self.n1} x {self.n2}")

    @cached_property
    def rows(self) -> list[slice]:
        return tile_ranges(self.n1, self.size)

    @cached_property
    def cols(self) -> list[slice]:
        return tile_ranges(self.n2, self.size)

    def tasks(self) -> list[tuple[int, int]]:
        """Every tile of the job, row by row."""
        n_rows, n_cols = math.ceil(self.n1 / self.size), math.ceil(self.n2 / self.size)
        return [(i, j) for i in range(n_rows) for j in range(n_cols) if not self.symmetric or j >= i]

    def diagonal(self, i: int, j: int) -> bool:
        """Whether tile (i, j) holds pairs of an example with itself (its own mirror image)."""
        return self.symmetric and i == j

    def mirrored(self, i: int, j: int) -> bool:
        """Whether tile (i, j) also fills tile (j, i), as its transpose."""
        return self.symmetric and i != j

    def where(self, i: int, j: int) -> str:
        r, c = self.rows[i], self.cols[j]
        return f"rows {r.start}:{r.stop}, columns {c.start}:{c.stop}"


def tile_part(pair, plan: TilePlan, i: int, j: int):
    """Tile (i, j)'s rows and columns of per-example side data ``pair`` = (x1's, x2's or None when x2 is
    x1), such as padding masks or graphs: (rows' part, columns' part or None on a diagonal tile); None
    stays None."""
    if pair is None:
        return None
    cols = None if plan.diagonal(i, j) else (pair[0] if plan.symmetric else pair[1])[plan.cols[j]]
    return pair[0][plan.rows[i]], cols


def finish_tile(k: Kernel, plan: TilePlan, i: int, j: int, names: Iterable[str] = ("nngp", "ntk")) -> Kernel:
    """The finishing step of every computed tile: a diagonal tile made exactly symmetric, (K + K^T) / 2
    (its entries (a, b) and (b, a) may differ in the last bit, or by sampling), standard errors included;
    then NaN or inf in any of the kernels ``names`` raises :class:`NonFiniteKernelError` naming the tile."""
    if plan.diagonal(i, j):
        sym = lambda t: None if t is None else 0.5 * (t + t.T)  # noqa: E731
        k = k.replace(nngp=sym(k.nngp), ntk=sym(k.ntk), nngp_se=sym(k.nngp_se), ntk_se=sym(k.ntk_se))
    bad = [name for name in names if getattr(k, name) is not None and not all_finite(getattr(k, name))]
    if bad:
        raise NonFiniteKernelError(f"{' and '.join(bad)} overflowed to NaN/inf in {plan.where(i, j)} (an activation "
                                   "such as Exp or a deep network with w_std too large)")
    return k


class MemorySink:
    """Finished tiles into (N1, N2) tensors on ``device``: ``nngp`` and ``ntk`` (when ``need_ntk``), their
    standard errors (when ``sampled``), and the per-example variances."""

    def __init__(self, plan: TilePlan, need_ntk: bool, sampled: bool, dtype: torch.dtype, device):
        def blank(*shape):
            return large_empty(*shape, dtype=dtype, device=device)

        self.plan = plan
        self.nngp, self.var1, self.var2 = blank(plan.n1, plan.n2), blank(plan.n1), blank(plan.n2)
        self.ntk = blank(plan.n1, plan.n2) if need_ntk else None
        self.nngp_se = blank(plan.n1, plan.n2) if sampled else None
        self.ntk_se = blank(plan.n1, plan.n2) if sampled and need_ntk else None
        self.shape: tuple[int, ...] = ()
        self.done: list[tuple[int, int]] = []

    def write(self, i: int, j: int, k: Kernel) -> None:
        """Tile (i, j) into the result (and its mirror block). Safe from several threads at once: tiles cover
        disjoint blocks, and tiles sharing rows write the same variances."""
        r, c = self.plan.rows[i], self.plan.cols[j]
        for name in ("nngp", "ntk", "nngp_se", "ntk_se"):
            out, value = getattr(self, name), getattr(k, name)
            if out is not None:
                out[r, c] = value
                if self.plan.mirrored(i, j):
                    out[c, r] = value.T
        self.var1[r] = k.var1
        self.var2[c] = k.var2
        self.shape = k.shape
        self.done.append((i, j))

    def kernel(self, keep_nngp: bool = True) -> Kernel:
        """The finished kernel (``keep_nngp=False``: without the NNGP, which the NTK needed on the way)."""
        var2 = self.var1 if self.plan.symmetric else self.var2
        return Kernel(self.nngp if keep_nngp else None, self.ntk, self.var1, var2, self.shape, self.plan.symmetric,
                      nngp_se=self.nngp_se if keep_nngp else None, ntk_se=self.ntk_se)

    def partial(self) -> Kernel:
        """The kernel with every finished tile and NaN elsewhere (for :class:`NonFiniteKernelError`)."""
        mask = torch.ones(self.plan.n1, self.plan.n2, dtype=torch.bool, device=self.nngp.device)
        for i, j in self.done:
            r, c = self.plan.rows[i], self.plan.cols[j]
            mask[r, c] = False
            if self.plan.mirrored(i, j):
                mask[c, r] = False
        keep = lambda t: None if t is None else t.masked_fill(mask, math.nan)  # noqa: E731
        var2 = self.var1 if self.plan.symmetric else self.var2
        return Kernel(keep(self.nngp), keep(self.ntk), self.var1, var2, self.shape, self.plan.symmetric)


def local_results(work: Callable, tasks: list, device: torch.device) -> Iterator[tuple[object, object]]:
    """The executor of this process: ``(task, work(task))`` in task order.

    On the CPU with several tasks and T > 1 intra-op threads, the tasks run T at a time on a thread pool
    with single-threaded torch operations instead of one at a time with T-threaded ones: a tile is hundreds
    of short elementwise passes, and a multi-threaded pass ends in a barrier that waits for every thread,
    so on a shared machine each pass waited for a thread the other process had descheduled (24x slower
    beside a 2-thread torch job; see benchmarks/under_load.py). Independent tiles share the cores with no
    barriers (torch releases the GIL inside each operation). At most 2T tasks are in flight; an error or an
    abandoned generator starts no further task. The pool's threads are kept for the next call (:func:`_pool`):
    new threads each call got fresh malloc arenas, whose memory every tile then faulted in again (40,000-80,000
    page faults per CNN-GAP kernel)."""
    threads = torch.get_num_threads()
    pooled = os.environ.get("INFINET_TILE_POOL", "1") != "0"  # 0: the old way, for benchmarks/under_load.py
    # compiled steps (infinet.engine.fused) hold the GIL for their whole loop, so tiles on a pool would wait
    # for each other; there a tile is a few fused passes, each parallel over all threads
    if device.type != "cpu" or threads < 2 or len(tasks) < 2 or not pooled or fused.compiling():
        for task in tasks:
            yield task, work(task)
        return
    global _POOL_WIDTH
    torch.set_num_threads(1)
    _POOL_WIDTH = threads
    pending: deque = deque()

    pool = _pool(threads)  # a call from inside a task sees one intra-op thread (set above) and runs inline
    try:
        queue = iter(tasks)
        for task in queue:
            pending.append((task, pool.submit(work, task)))
            if len(pending) >= 2 * threads:
                break
        while pending:
            task, future = pending.popleft()
            result = future.result()
            for nxt in queue:
                pending.append((nxt, pool.submit(work, nxt)))
                break
            yield task, result
    finally:  # no task of this call runs on after it (an error or an abandoned generator)
        for _, future in pending:
            future.cancel()
        futures_wait([future for _, future in pending])
        _POOL_WIDTH = 0
        torch.set_num_threads(threads)


_POOL_WIDTH = 0  # the threads of the running tile pool (0: none)
_POOLS: dict[int, ThreadPoolExecutor] = {}  # width -> the kept tile pool of this process
_POOL_LOCK = threading.Lock()

def _pool(width: int) -> ThreadPoolExecutor:
    """The tile pool of ``width`` threads, made once per process and kept (its threads, and the malloc arenas they
    hold, serve every later call)."""
    with _POOL_LOCK:
        pool = _POOLS.get(width)
        if pool is None:
            pool = _POOLS[width] = ThreadPoolExecutor(max_workers=width, thread_name_prefix="infinet-tile")
        return pool


def _forget_pools() -> None:
    """In a forked child the kept pools' threads do not exist: make new ones there."""
    global _POOL_LOCK
    _POOLS.clear()
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def idle_threads_map(fn: Callable, items: list) -> list:
    """[fn(item) for item in items], on the tile pool's width of threads when called from inside a pool whose
    other workers are waiting for this result (a table every tile needs, built once under a lock): there each
    operation runs on one thread, so without this the build would use one core of the pool's."""
    if _POOL_WIDTH < 2 or torch.get_num_threads() > 1 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=_POOL_WIDTH, thread_name_prefix="infinet-build") as pool:
        return list(pool.map(fn, items))


def progress_bar(total: int, show: bool | None, desc: str = "kernel tiles"):
    """The one progress report of tiled work: a tqdm bar on stderr over ``total`` tiles (a context manager
    with ``update()``). ``show=None`` shows it only on an interactive terminal when there is more than one
    tile; True or False forces it."""
    from tqdm.auto import tqdm  # a core dependency, imported with the first tiled job

    show = show if show is not None else (total > 1 and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, disable=not show, leave=False)
