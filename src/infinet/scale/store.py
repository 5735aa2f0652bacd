"""Kernels larger than one machine's patience: tiles as Dask tasks into a resumable zarr store, and
solvers that stream the store.

:func:`kernel_to_store` computes the kernel of an architecture over a data set tile by tile with the
engine's pure tile function (:func:`infinet.engine.tiling.kernel_tile`) on the tile engine
(:mod:`infinet.engine.tiles`: the plan, the finishing step, progress; this module adds the zarr sink and
the Dask executor), as Dask tasks on an
in-process ``LocalCluster`` sized to the machine, on any existing cluster (``scheduler`` address or a
``distributed.Client``), or in this process (``workers=0``). Each tile is written into chunk-aligned
zarr v3 arrays (``nngp``, ``ntk``), then marked done in a separate ``done`` array (one chunk per tile):
a tile whose mark is missing is recomputed, so a killed run restarted with the same call computes
only the missing tiles. A symmetric kernel computes each off-diagonal tile once and writes both
mirror chunks. The store's metadata (architecture spec, data fingerprint, dtype, tile size, kernels,
library version) must match the request, or the store is refused.

:func:`solve_store` solves (K + s I) alpha = Y by preconditioned conjugate gradients whose products
stream the stored upper triangle (:class:`StoreKernel`), and :func:`predict_from_store` applies
alpha to test/train tiles of a second store.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..engine import sampling
from ..core.extras import require
from ..engine.apply import any_layer
from ..engine.kernel import as_input, parse_get
from ..engine.masks import padding_masks
from ..engine.patterns import graph_patterns
from ..inference.solve import CGReport, TiledKernel, conjugate_gradient
from ..core import __version__
from ..engine.spec import format_spec, parse_spec, round_trip_spec
from ..engine.tiles import (
    NonFiniteKernelError, TilePlan, check_tile_size, finish_tile, local_results, progress_bar, tile_part, tile_ranges,
)
from ..engine.tiling import DEFAULT_TILE, kernel_tile

FORMAT = 1
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class StoreMismatchError(ValueError):
    """A store that was made for a different job (architecture, data, dtype, tiling or kernels)."""


class StoreCorruptError(StoreMismatchError):
    """A store with tiles marked done whose chunks are missing, short or changed since they were written."""


def _tile_checksum(values: np.ndarray) -> int:
    """64-bit BLAKE2b of a tile's values as written (C order), stored beside its done-mark."""
    digest = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF or 1  # 0 means "no checksum"


@dataclass
class StoreReport:
    """What :func:`kernel_to_store` did: tiles in the job, computed now, already present, seconds."""

    path: str
    tiles_total: int
    tiles_computed: int
    tiles_skipped: int
    seconds: float
    metadata: dict = field(default_factory=dict)


def fingerprint(*arrays: torch.Tensor) -> str:
    """SHA-256 of the arrays' shapes, dtypes and bytes (identifies the data set of a store)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        t = a.detach().cpu()
        t = (t.to_dense() if t.layout != torch.strided else t).contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _metadata(net, x1, x2, names, dtype: str, tile: int, side: tuple = (), sampled: bool = False) -> dict:
    """The job a store holds: architecture, data (inputs and their side data: masks, graphs), shape, dtype,
    tile size, the kernels asked for and the arrays written (with standard errors for sampled layers)."""
    arrays = list(names) + ([f"{name}_se" for name in names] if sampled else [])
    flat = [t for pair in side if pair is not None for t in pair]
    return {"infinet_store": FORMAT, "architecture": round_trip_spec(net), "data": fingerprint(x1, x2, *flat),
            "shape": [len(x1), len(x1) if x2 is None else len(x2)], "symmetric": x2 is None, "dtype": dtype,
            "tile_size": tile, "kernels": list(names), "arrays": arrays, "version": __version__}


def stored_arrays(meta: dict) -> list[str]:
    """The arrays of a store: its kernels, and their standard errors when its network has sampled layers."""
    return list(meta.get("arrays", meta["kernels"]))


def _open(path: str, meta: dict):
    zarr = require("zarr", "infinet.scale stores")

    group = zarr.open_group(path, mode="a")
    existing = dict(group.attrs)
    if existing:
        if existing.get("infinet_store") != FORMAT:
            raise StoreMismatchError(f"{path} is not an infinet kernel store (or a different format)")
        diffs = [f"{k}: store has {existing.get(k)!r}, job has {meta[k]!r}" for k in
                 ("architecture", "data", "shape", "symmetric", "dtype", "tile_size", "kernels")
                 if existing.get(k) != meta[k]]
        if diffs:
            raise StoreMismatchError(f"{path} holds a different job; refusing to mix results ({'; '.join(diffs)}). "
                                     "Use a new store path, or delete this one to start over")
        return group
    n1, n2 = meta["shape"]
    tile = meta["tile_size"]
    for name in stored_arrays(meta):
        # uncompressed: kernel values barely compress (~15% with zstd) and every CG iteration re-reads them
        group.create_array(name, shape=(n1, n2), chunks=(tile, tile), dtype=meta["dtype"], fill_value=float("nan"),
                           compressors=None)
    rows, cols = math.ceil(n1 / tile), math.ceil(n2 / tile)
    n_arrays = len(stored_arrays(meta))
    group.create_array("checksum", shape=(rows, cols, n_arrays), chunks=(1, 1, n_arrays),
                       dtype="int64", fill_value=0)
    group.create_array("done", shape=(rows, cols), chunks=(1, 1), dtype="uint8", fill_value=0)
    group.attrs.update(meta)  # written last: a store without attributes is re-initialized
    return group


def _missing(group) -> list[tuple[int, int]]:
    """The tiles of the store's job not marked done."""
    done = group["done"][...]
    return [(i, j) for i, j in _plan(dict(group.attrs)).tasks() if not done[i, j]]


DEVICES = ("auto", "cpu", "cuda")


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def tile_device(device: str = "auto") -> torch.device:
    """Where a worker computes its tiles: ``"auto"`` is the worker's GPU when torch sees one (each worker
    process uses its ``torch.cuda.current_device()``, which dask-cuda sets per worker), else the CPU."""
    _check_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but this worker has no CUDA device visible to torch")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _plan(meta: dict) -> TilePlan:
    return TilePlan(meta["shape"][0], meta["shape"][1], meta["tile_size"], meta["symmetric"])


class ZarrSink:
    """Finished tiles into a store's chunks (the tile engine's resumable sink): each kernel's values (and,
    for a symmetric store, the mirror chunk), then their checksums, then the tile's done-mark, so that a
    tile marked done always has its values and checksums."""

    def __init__(self, group, plan: TilePlan, names: list[str]):
        self.group, self.plan, self.names = group, plan, names

    def write(self, i: int, j: int, k) -> None:
        rows, cols = self.plan.rows[i], self.plan.cols[j]
        mirrored = self.plan.mirrored(i, j)
        sums, mirror_sums = [], []
        for name in self.names:
            values = getattr(k, name).cpu().numpy()
            self.group[name][rows, cols] = values
            sums.append(_tile_checksum(values))
            if mirrored:
                self.group[name][cols, rows] = values.T
                mirror_sums.append(_tile_checksum(values.T))
        if "checksum" in self.group:
            self.group["checksum"][i, j, :] = np.array(sums, dtype=np.int64)
            if mirror_sums:
                self.group["checksum"][j, i, :] = np.array(mirror_sums, dtype=np.int64)
        self.group["done"][i, j] = 1
        if mirrored:
            self.group["done"][j, i] = 1


def compute_tile(path: str, spec: str, x1: np.ndarray, x2: np.ndarray | None, i: int, j: int,
                 device: str = "auto", masks: tuple | None = None, patterns: tuple | None = None) -> tuple[int, int]:
    """One task: the (i, j) tile of the job stored at ``path`` (rows/columns from the store's tile size)
    computed on :func:`tile_device` ``(device)``, finished (:func:`~infinet.engine.tiles.finish_tile`) and
    written by :class:`ZarrSink` (its values, the mirror chunk when symmetric, then its done-mark).
    ``masks`` and ``patterns``: the padding masks and graphs of x1 and x2 (x2's None when symmetric)."""
    zarr = require("zarr", "infinet.scale stores")

    where = tile_device(device)
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs)
    plan, dtype = _plan(meta), DTYPES[meta["dtype"]]

    def on_device(pair, as_dtype=None):
        part = tile_part(pair, plan, i, j)
        return None if part is None else tuple(None if t is None else torch.as_tensor(t, dtype=as_dtype, device=where)
                                               for t in part)

    a, b = on_device((x1, x2), dtype)
    arrays = stored_arrays(meta)
    try:
        k = kernel_tile(parse_spec(spec, max_length=None), a, b, "ntk" in meta["kernels"], on_device(masks),
                        on_device(patterns))
        k = finish_tile(k, plan, i, j, arrays)
    except NonFiniteKernelError as e:
        raise NonFiniteKernelError(f"{e}; tile ({i}, {j}) was not written and nothing was marked done") from None
    ZarrSink(group, plan, arrays).write(i, j, k)
    return i, j


def kernel_to_store(
    net,
    x1,
    path: str | os.PathLike,
    x2=None,
    *,
    get: str | Iterable[str] = ("nngp", "ntk"),
    dtype: str = "float64",
    tile_size: int | None = None,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    mask_constant: float | None = None,
    lengths=None,
    lengths2=None,
    pattern=None,
    pattern2=None,
) -> StoreReport:
    """Compute ``net``'s kernels between ``x1`` and ``x2`` (None: x1 with itself) into the zarr store at
    ``path``, tile by tile (see the module docstring). ``client``/``scheduler``: run on that Dask cluster;
    else ``workers`` processes of an in-process LocalCluster (default: the machine's cores), or ``workers=0``
    for this process only. Tasks are retried twice if a worker dies. ``device``: where each worker
    computes its tiles (:func:`tile_device`; ``"auto"``: its GPU if it has one). Resumes an existing store
    of the same job; refuses (:class:`StoreMismatchError`) one made for another.

    As :meth:`~infinet.layers.base.Layer.kernel`: padded sequences (``mask_constant``, or ``lengths`` and
    ``lengths2``) and graphs for :class:`~infinet.Aggregate` (``pattern``, ``pattern2``); networks with
    sampled layers also store their standard errors (arrays ``nngp_se``, ``ntk_se``)."""
    net = parse_spec(net) if isinstance(net, str) else net
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    names = parse_get(get)
    x1 = as_input(x1, "x1", DTYPES[dtype])
    x2 = None if x2 is None else as_input(x2, "x2", DTYPES[dtype])
    net.check(tuple(x1.shape[1:]))
    masks = padding_masks(x1, x2, mask_constant, lengths, lengths2)
    patterns = graph_patterns(x1, x2, pattern, pattern2)
    if patterns is not None and not any_layer(net, lambda part: getattr(part, "takes_pattern", False)):
        raise ValueError("pattern (graphs) given, but the network has no Aggregate layer to use them")
    if sampling.whole_batch(net):
        raise ValueError("the network has BatchNorm: its kernel needs the whole batch in one computation "
                         "(net.kernel(x)); stores of tiles are not supported")
    if sampling.shared_batch(net):
        raise ValueError("the network has a GRU or LSTM with estimator='batch': its errors are shared across the "
                         "batch, which needs one computation (net.kernel(x)); stores of tiles take "
                         "estimator='pairs' (NNGP only)")
    tile = check_tile_size(DEFAULT_TILE if tile_size is None else tile_size)
    _check_device(device)  # here, before any task: the workers' devices are only known on the workers
    path = str(path)
    meta = _metadata(net, x1, x2, names, dtype, tile, (masks, patterns), sampling.plan(net, x1.shape[1:]) is not None)
    group = _open(path, meta)
    symmetric = x2 is None
    bad = check_store(path, group, checksums=True)
    if bad:  # recompute what was lost or changed since it was marked done
        print(f"{path}: recomputing {len(bad)} damaged tile(s): " + "; ".join(bad.values()), file=sys.stderr)
        for i, j in bad:
            group["done"][i, j] = 0
            if symmetric:
                group["done"][j, i] = 0
    total = len(_plan(meta).tasks())
    todo = _missing(group)
    start = time.perf_counter()
    spec = format_spec(net)
    a = x1.cpu().numpy()
    b = None if x2 is None else x2.cpu().numpy()
    def host(t):  # side data as numpy arrays for the tasks (graphs given sparse go dense)
        return None if t is None else (t.to_dense() if t.layout != torch.strided else t).cpu().numpy()

    side = tuple(None if pair is None else tuple(host(t) for t in pair) for pair in (masks, patterns))
    with progress_bar(len(todo), progress) as bar:
        if todo and workers == 0 and client is None and scheduler is None:  # this process: the engine's executor
            for _ in local_results(lambda task: compute_tile(path, spec, a, b, *task, device, *side), todo,
                                   tile_device(device)):
                bar.update()
        elif todo:
            _run_distributed(todo, path, spec, (a, b), side, client, scheduler, workers, device, bar)
    return StoreReport(path, total, len(todo), total - len(todo), time.perf_counter() - start, meta)


def _run_distributed(todo, path, spec, inputs, side, client, scheduler, workers, device, bar) -> None:
    """The Dask executor: one task per tile on ``client``, a cluster at ``scheduler`` or a LocalCluster of
    ``workers`` processes; ``bar`` (:func:`~infinet.engine.tiles.progress`) counts finished tiles."""
    distributed = require("distributed", "Dask execution of infinet.scale")
    Client, LocalCluster, as_completed = distributed.Client, distributed.LocalCluster, distributed.as_completed

    own = None
    if client is None:
        if scheduler is not None:
            client = own = Client(scheduler)
        else:
            n = workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = own = Client(cluster)
    try:
        def scatter(value):  # an array, or a pair of them (side data), sent to every worker once
            if value is None:
                return None
            if isinstance(value, tuple):
                return tuple(scatter(v) for v in value)
            return client.scatter(value, broadcast=True)

        data, extra = scatter(inputs), scatter(side)
        futures = [client.submit(compute_tile, path, spec, *data, i, j, device, *extra, retries=2,
                                 pure=False) for i, j in todo]
        for future in as_completed(futures):
            future.result()  # re-raises a task's error (after its retries)
            bar.update()
    finally:
        if own is not None:
            cluster = getattr(own, "cluster", None)
            own.close()
            if cluster is not None:
                cluster.close()


def _chunk_problem(path: Path, name: str, i: int, j: int, expected: int) -> str | None:
    chunk = path / name / "c" / str(i) / str(j)
    if not chunk.is_file():
        return f"{chunk} is missing"
    size = chunk.stat().st_size
    if size != expected:
        return f"{chunk} has {size} of its {expected} bytes"
    return None


def check_store(path: str | os.PathLike, group=None, checksums: bool = True) -> dict[tuple[int, int], str]:
    """Tiles marked done whose data is damaged, as {(i, j): what is wrong, naming the chunk file}.

    Always checks that every chunk of a done tile exists with its full size (a stat per chunk, no
    reading); with ``checksums`` it also reads each done tile and compares its 64-bit BLAKE2b with
    the one written beside its done-mark (one pass over the store). A symmetric store is checked on
    its upper triangle (j >= i), the tiles the solvers read; the mirrored chunks below it are copies.
    """
    zarr = require("zarr", "infinet.scale stores")

    path = Path(path)
    group = zarr.open_group(str(path), mode="r") if group is None else group
    meta = dict(group.attrs)
    tile, plan = meta["tile_size"], _plan(meta)
    itemsize = np.dtype(meta["dtype"]).itemsize
    done = group["done"][...]
    stored = group["checksum"][...] if checksums and "checksum" in group else None
    bad: dict[tuple[int, int], str] = {}
    for i, j in zip(*np.nonzero(done)):
        i, j = int(i), int(j)
        if meta["symmetric"] and j < i:
            continue
        key = (i, j)
        for n, name in enumerate(stored_arrays(meta)):
            problem = _chunk_problem(path, name, i, j, tile * tile * itemsize)
            if problem is None and stored is not None and stored[i, j, n] != 0:
                if _tile_checksum(group[name][plan.rows[i], plan.cols[j]]) != stored[i, j, n]:
                    problem = f"{path / name / 'c' / str(i) / str(j)} changed since it was written (checksum)"
            if problem is not None:
                bad.setdefault(key, problem)
    return bad


def open_store(path: str | os.PathLike, verify: bool = True):
    """The zarr group of a kernel store, checked complete (every tile marked done) and undamaged
    (:func:`check_store`: chunk files present and full, and with ``verify`` their checksums)."""
    zarr = require("zarr", "infinet.scale stores")

    path = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no kernel store at {path}")
    group = zarr.open_group(path, mode="r")
    meta = dict(group.attrs)
    if meta.get("infinet_store") != FORMAT:
        raise StoreMismatchError(f"{path} is not an infinet kernel store")
    missing = _missing(group)
    if missing:
        raise StoreMismatchError(f"{path} is incomplete: {len(missing)} of {len(_plan(meta).tasks())} tiles missing; "
                                 "rerun the same kernel command to finish it")
    bad = check_store(path, group, checksums=verify)
    if bad:
        shown = "; ".join(list(bad.values())[:5]) + ("; ..." if len(bad) > 5 else "")
        raise StoreCorruptError(f"{path} is damaged: {len(bad)} tile(s) marked done are not as written ({shown}); "
                                "rerun the same kernel command to recompute them")
    return group


def _upper_row_product(array, i: int, tile: int, n: int, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row tile i's share of K v read from the upper triangle only, chunk by chunk (j >= i): returns
    (K[r_i, start_i:] v[start_i:], K[r_i, after r_i]^T v[r_i]) -- the second is the mirrored lower
    triangle's contribution to the rows after r_i. Each chunk is cast to float64 into one reused buffer."""
    r0, r1 = i * tile, min((i + 1) * tile, n)
    own = np.zeros((r1 - r0,) + v.shape[1:])
    mirror = np.zeros((n - r1,) + v.shape[1:])
    buffer = np.empty((r1 - r0, tile))
    for c0 in range(r0, n, tile):
        c1 = min(c0 + tile, n)
        block = buffer[:, :c1 - c0]
        np.copyto(block, array[r0:r1, c0:c1])
        own += block @ v[c0:c1]
        if c0 >= r1:
            mirror[c0 - r1:c1 - r1] += block.T @ v[r0:r1]
    return own, mirror


def _store_row_product(path: str, name: str, i: int, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Dask task of a distributed product: :func:`_upper_row_product` reading the store at ``path``."""
    zarr = require("zarr", "infinet.scale stores")

    array = zarr.open_group(path, mode="r")[name]
    return _upper_row_product(array, i, array.chunks[0], array.shape[0], v)


class StoreKernel(TiledKernel):
    """A stored symmetric kernel as a :class:`~infinet.solve.TiledKernel`. Products K v read only the
    upper triangle, one row tile at a time (each stored entry is read once per product and used twice),
    in this process or, given a ``distributed.Client``, as one task per row tile on its workers (largest
    first; the workers share the reading and the arithmetic). Memory: one row tile and the vectors."""

    def __init__(self, path: str, name: str, client=None):
        group = open_store(path)
        meta = dict(group.attrs)
        if not meta["symmetric"]:
            raise StoreMismatchError(f"{path} holds a cross kernel; solving needs the symmetric train/train store")
        if name not in meta["kernels"]:
            raise StoreMismatchError(f"{path} has no {name!r} kernel (it has {meta['kernels']})")
        self.array, self.path, self.name, self.client = group[name], str(path), name, client
        super().__init__(lambda r, c: torch.from_numpy(np.asarray(self.array[r, c])).to(torch.float64),
                         meta["shape"][0], tile=meta["tile_size"])

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float64)
        out = np.zeros_like(arr)

        def add(i, parts):  # each row tile's parts are summed in as they come, then dropped
            r1 = min((i + 1) * self.tile, self.n)
            out[i * self.tile:r1] += parts[0]
            out[r1:] += parts[1]

        rows = range(len(self._slices()))
        if self.client is None:
            for i in rows:
                add(i, _upper_row_product(self.array, i, self.tile, self.n, arr))
        else:
            as_completed = require("distributed", "Dask execution of infinet.scale").as_completed

            shared = self.client.scatter(arr, broadcast=True, hash=False)  # a fresh key per product
            futures = {self.client.submit(_store_row_product, self.path, self.name, i, shared, pure=False, retries=2): i
                       for i in rows}  # row 0 (the longest) first
            for future in as_completed(futures):  # a result is dropped (freed on the worker) once added in
                add(futures.pop(future), future.result())
            del shared
        return torch.from_numpy(out).to(v)

    def column(self, j: int) -> torch.Tensor:
        """K[:, j] from the upper triangle: K[:t, j] above j's row tile, then row j (= column j) from there."""
        t0 = (j // self.tile) * self.tile
        parts = (np.asarray(self.array[:t0, j]), np.asarray(self.array[j, t0:]))
        return torch.from_numpy(np.concatenate(parts).astype(np.float64))


def stored_kernel(path, name: str = "nngp", client=None) -> StoreKernel:
    """The stored symmetric ``name`` kernel as a :class:`StoreKernel` (products streamed from disk)."""
    return StoreKernel(str(path), name, client)


def solve_store(path, y: torch.Tensor, *, kernel: str = "nngp", diag_reg: float = 0.0, tol: float = 1e-10,
                max_iter: int | None = None, preconditioner_rank: int = 100, preconditioner: str = "nystrom",
                client=None, progress: bool = False) -> tuple[torch.Tensor, CGReport]:
    """alpha = (K + s I)^-1 Y for the stored train/train ``kernel``, s = diag_reg x mean diag K, by
    preconditioned CG (:func:`infinet.solve.conjugate_gradient`; randomized Nystrom preconditioner by
    default, built from one extra pass) whose products stream the store's upper triangle (memory: one
    row tile and the vectors), in this process or, given a ``distributed.Client``, as one task per row
    tile on its workers. K alpha is the GP posterior mean (Rasmussen and Williams 2006, eq. 2.25) / the
    NTK t = inf prediction (Jacot et al. 2018) on the training points; :func:`predict_from_store` gives
    it on test points."""
    return conjugate_gradient(stored_kernel(path, kernel, client), torch.as_tensor(y, dtype=torch.float64), diag_reg,
                              tol=tol, max_iter=max_iter, preconditioner_rank=preconditioner_rank,
                              preconditioner=preconditioner, progress=progress)


def predict_from_store(path, alpha: torch.Tensor, *, kernel: str = "nngp") -> torch.Tensor:
    """K(test, train) alpha, streaming the row tiles of a test/train store."""
    group = open_store(path)
    meta = dict(group.attrs)
    array = group[kernel]
    n1, tile = meta["shape"][0], meta["tile_size"]
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    parts = [torch.from_numpy(np.asarray(array[r, :])).to(torch.float64) @ alpha for r in tile_ranges(n1, tile)]
    return torch.cat(parts)


__all__ = ["DEVICES", "StoreCorruptError", "StoreKernel", "StoreMismatchError", "StoreReport", "ZarrSink", "check_store", "compute_tile", "fingerprint", "kernel_to_store", "open_store",
           "predict_from_store", "solve_store", "stored_kernel", "tile_device"]
