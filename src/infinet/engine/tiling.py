"""Kernels of architectures, tile by tile, with bounded memory.

:func:`kernel_tile` is the unit of work: a pure function of (architecture, x-rows, x-columns), the same
function the Dask tasks of :mod:`infinet.scale.store` run on workers. :func:`compute_kernel` prepares a
job (inputs checked, repeated rows computed once, padding masks and graphs, the tile size) and runs it
on the tile engine (:mod:`infinet.engine.tiles`: plan, finishing step, in-memory sink, executor, progress).
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import torch
from torch import Tensor

from . import conv_fusion, conv_steps, fused, laws, native_pairs, sampling
from .tiles import (  # noqa: F401  (NonFiniteKernelError and tile_ranges: importable from here, as before)
    MemorySink, NonFiniteKernelError, TilePlan, check_tile_size, finish_tile, local_results, progress_bar,
    tile_part, tile_ranges,
)
from ..core.allocator import tune_allocator
from .apply import any_layer, apply_kernel, fit_layout, replays_variances
from .kernel import Kernel, VarianceTrace, as_input, check_pair, input_kernel, parse_get, row_keys, unique_rows
from .masks import padding_masks
from .patterns import graph_patterns

#: bytes of working memory per kernel entry while a tile of a closed-form network is computed
#: (nngp, ntk and about a dozen elementwise temporaries in float64)
BYTES_PER_ENTRY = 128
DEFAULT_MAX_MEMORY = 1 << 30
#: tiles no larger than this keep each elementwise pass in cache (see benchmarks/fc_kernel.py)
DEFAULT_TILE = 384
# Spatial kernels are elementwise work over (tile^2 x entries per pair) entries: tiles of about this
# many entries stay in the CPU's L2 cache across a layer's passes (5-6x faster than one big tile;
# measured with benchmarks/conv_kernel.py: 2^17 best for the diagonal layout, 2^19 for the full one,
# whose tiles hold fewer pairs and so more per-tile overhead).
CACHE_ENTRIES = {False: 1 << 17, True: 1 << 19}
#: the diagonal layout's cap for networks with fused Conv + ReLU steps (infinet.engine.conv_fusion), which work
#: pair by pair in cache whatever the tile: larger tiles only save per-tile overhead (CNN-Flatten depth 8 on 200
#: 28x28 images: 1.34 s with tiles of 12 examples, 0.72 s with 25; depth 5 on 400 8x8: 0.35 s at 45, 0.22 s at 90)
FUSED_DIAGONAL_ENTRIES = 1 << 19


ALIGNMENT = 64  # bytes: the widest SIMD register (AVX-512); torch's allocators align at least this much


def aligned(x: Tensor) -> Tensor:
    """``x`` itself when contiguous and its data starts on a 64-byte boundary, else a fresh copy.

    Vectorized matrix products round differently depending on where their operands start in memory
    (a view 8 bytes into an array changes the last bits), so a tile computed from a slice of an array
    could differ from the same tile computed from a copy, on another worker or in another run."""
    if x.is_contiguous() and x.data_ptr() % ALIGNMENT == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def token_reader(layer):
    """The :class:`~infinet.Embedding` that reads a network's input (token indices), or None when the input is features.
    Raises when an Embedding reads the input beside layers that read it as features, or Embeddings that
    differ in what they read (their number of tokens, their padding index)."""
    readers = [r for r in layer.input_layers() if getattr(r, "reads_values", True)]
    embeddings = [r for r in readers if getattr(r, "reads_tokens", False)]
    if not embeddings:
        return None
    if len(embeddings) < len(readers) or any(not e.same_input(embeddings[0]) for e in embeddings):
        raise ValueError("the network reads its input both as token indices (Embedding) and otherwise, or with "
                         "Embeddings of different vocabularies; every layer reading token indices must be an "
                         "Embedding of the same tokens")
    return embeddings[0]


def kernel_tile(layer, x1: Tensor, x2: Tensor | None, need_ntk: bool,
                masks: tuple[Tensor, Tensor | None] | None = None,
                patterns: tuple[Tensor, Tensor | None] | None = None,
                trace: VarianceTrace | None = None, distinct: bool = False) -> Kernel:
    """Kernel of ``layer`` between the rows ``x1`` and columns ``x2`` (``None``: x2 is x1).

    Pure: it reads nothing but its arguments and returns a new :class:`~infinet.Kernel`. The inputs
    are first made contiguous and aligned (:func:`aligned`), so a tile's value does not depend on
    where its rows lie in memory: the same rows give bitwise the same tile in any process.
    ``masks``: the (rows, *S) padding masks of x1 and x2 (x2's None when x2 is None), True at padding
    (:mod:`infinet.masks`); nothing padded in either means no masks. ``patterns``: the graphs of x1 and
    x2 for :class:`~infinet.Aggregate` (x2's None when x2 is None). ``trace``: a
    :class:`~infinet.kernel.VarianceTrace` that records the self-covariances of x1 along the network, or
    replays recorded ones instead of computing them (the tile engine's business; see :func:`compute_kernel`).
    ``distinct``: the caller knows that no row of x1 equals a row of x2 (no two rows of x1 when x2 is None), so
    the search for identical inputs (:func:`~infinet.engine.kernel.identical_pairs`) is skipped.
    """
    x1, x2 = aligned(x1), (None if x2 is None else aligned(x2))
    if masks is not None:
        m1, m2 = masks[0], (masks[0] if x2 is None else masks[1])
        masks = (m1, m2) if bool(m1.any()) or bool(m2.any()) else None
    embedding = token_reader(layer)
    replicates = sampling.plan(layer, x1.shape[1:])
    if embedding is not None:  # token indices (N, L): the kernel of their one-hot vectors
        k = embedding.input_kernel(x1, x2, need_ntk, bool(layer.needs_full(False)))
    else:
        full = (bool(layer.needs_full(False)) or masks is not None) if x1.ndim > 2 else False
        out, border, deferred = None, 0, False
        grads = torch.is_grad_enabled() and (x1.requires_grad or (x2 is not None and x2.requires_grad))
        if masks is None and x1.ndim == 4 and x1.device.type == "cpu" and replicates is None and not grads:
            border = conv_fusion.input_border(layer, tuple(x1.shape[1:]))
            if border and full and x1.shape[1] <= 16:  # into the zero-bordered buffer the first convolution reads
                shape = (len(x1), len(x1 if x2 is None else x2), tuple(x1.shape[2:]), border, x1.dtype)
                # the first convolution's step reads the images: the buffer is made only if anything else reads it
                deferred = conv_fusion.reads_images(layer, x1.dtype)
                out = functools.partial(conv_steps.bordered_input, *shape) if deferred else \
                    conv_steps.bordered_input(*shape)
            elif border and not full and x1.shape[1] <= 16:  # same-position pairs: the chain reads the images
                deferred = conv_fusion.reads_images(layer, x1.dtype)
        k = input_kernel(x1, x2, need_ntk, full=full, masks=masks, patterns=patterns,
                         positions_only=trace is not None and trace.replaying and replicates is None,
                         distinct=distinct, out=out, ntk_unread=border > 0, border=border, deferred=deferred)
    if replicates is not None:  # sampled layers: R independent replicates, their mean and standard error
        return _replicated(layer, k, *replicates)
    if trace is not None:
        k = trace.step(k)
    out = fit_layout(apply_kernel(layer, k, False), False)
    require_vector_output(out)
    return out if trace is None else trace.finish(out)


def _replicated(layer, k: Kernel, replicates: int, seed: int, laws: bool = False) -> Kernel:
    """The kernel of a network with sampled layers (:mod:`infinet.sampling`): the mean of ``replicates``
    independent estimates, each with its own points in every sampled layer, and the standard errors of
    the mean in nngp_se and ntk_se."""
    outs = []
    for r in range(replicates):
        out = fit_layout(apply_kernel(layer, k.replace(sampling=sampling.SamplingState(seed, r, laws=laws)), False), False)
        require_vector_output(out)
        outs.append(out)
    nngp, nngp_se = sampling.replicate_statistics([o.nngp for o in outs])
    ntk, ntk_se = (None, None) if outs[0].ntk is None else sampling.replicate_statistics([o.ntk for o in outs])
    var1 = torch.stack([o.var1 for o in outs]).mean(0)
    var2 = var1 if outs[0].var2 is outs[0].var1 else torch.stack([o.var2 for o in outs]).mean(0)
    return outs[0].replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, nngp_se=nngp_se, ntk_se=ntk_se, sampling=None)


def require_vector_output(out) -> None:
    """Raise ValueError unless a network's output (its :class:`~infinet.layers.base.Spec` or
    :class:`~infinet.Kernel`, or a tuple of branches) is one vector per example: a kernel is (N1, N2)."""
    if isinstance(out, tuple):
        raise ValueError(f"the network ends in {len(out)} branches; join them with a FanIn layer")
    if out.shape is not None and len(out.shape) > 1:
        raise ValueError(f"the network's output has spatial shape {out.shape}; end it with Flatten() or "
                         "GlobalAvgPool() and a Dense readout to get an (N1, N2) kernel")


#: share of a GPU's free memory that one tile's working set may take when no max_memory is given
GPU_MEMORY_SHARE = 0.5


def choose_tile_size(tile_size: int | None, max_memory: int | None, entries_per_pair: int = 1,
                     full: bool = False, device: torch.device | None = None, cache_entries: int | None = None) -> int:
    """``tile_size`` if given, else the largest tile whose working set, ``BYTES_PER_ENTRY x tile^2 x
    entries_per_pair`` bytes, fits ``max_memory`` (default 1 GiB), capped at :data:`DEFAULT_TILE`
    for vectors and at ``CACHE_ENTRIES`` kernel entries for feature maps (``entries_per_pair``:
    S pixels in the diagonal layout, S^2 in the full one, ``full`` saying which; ``cache_entries`` in place of
    ``CACHE_ENTRIES`` where given).

    On a CUDA ``device`` without ``max_memory`` the budget is :data:`GPU_MEMORY_SHARE` of the device's
    free memory and there is no cache cap: a GPU wants few, large tiles (each tile is a few dozen
    kernel launches, whatever its size)."""
    if tile_size is not None:
        return check_tile_size(tile_size)
    gpu = device is not None and torch.device(device).type == "cuda"
    if gpu and max_memory is None:
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, math.isqrt(int(free * GPU_MEMORY_SHARE) // (BYTES_PER_ENTRY * entries_per_pair)))
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    if not isinstance(budget, int) or budget < BYTES_PER_ENTRY:
        raise ValueError(f"max_memory must be an integer number of bytes >= {BYTES_PER_ENTRY}, got {max_memory!r}")
    cache = CACHE_ENTRIES[full] if cache_entries is None else cache_entries
    cap = DEFAULT_TILE if entries_per_pair == 1 else math.isqrt(cache // entries_per_pair)
    if gpu:
        cap = math.isqrt(budget)  # no cache to fit
    return max(1, min(cap, math.isqrt(budget // (BYTES_PER_ENTRY * entries_per_pair))))


#: draws tensors (values and tangents of both members, and a layer's work on them) alive per kernel entry
LAW_TENSORS = 6


def spatial_cost(layer, input_shape: tuple[int, ...], masked: bool = False) -> tuple[int, bool]:
    """(kernel entries per pair of examples at the input, full layout?): 1 for vectors; S for feature
    maps of S positions in the diagonal layout, S^2 when the architecture needs the full one (pooling,
    or padded inputs); times the draws a network with joint laws keeps per entry (:mod:`infinet.engine.laws`)."""
    draws = laws.DRAWS * LAW_TENSORS if layer.draws_laws(tuple(input_shape)) else 1
    tokens = token_reader(layer) is not None  # (L,) indices: L positions
    if len(input_shape) < 2 and not tokens:
        return draws, False
    positions = math.prod(input_shape if tokens else input_shape[1:])
    full = bool(layer.needs_full(False)) or masked
    entries = positions**2 if full else positions
    if draws > 1:  # joint laws: a few tensors of DRAWS draws per entry (engine.laws)
        entries *= draws
    return entries, full


def _expand(k: Kernel, inverse1: Tensor | None, inverse2: Tensor | None) -> Kernel:
    def rows(t, inv):
        return t if t is None or inv is None else t[inv]

    def both(t):
        return None if t is None else rows(rows(t, inverse1).transpose(0, 1), inverse2).transpose(0, 1)

    var1 = rows(k.var1, inverse1)
    var2 = var1 if k.symmetric else rows(k.var2, inverse2)
    return k.replace(nngp=both(k.nngp), ntk=both(k.ntk), var1=var1, var2=var2, nngp_se=both(k.nngp_se),
                     ntk_se=both(k.ntk_se))


def _rows_of(pair, first1, first2, symmetric):
    """Per-example side data (masks, graphs) of the distinct rows."""
    if pair is None:
        return None
    a = pair[0] if first1 is None else pair[0][first1]
    return a, None if symmetric else (pair[1] if first2 is None else pair[1][first2])


def _expanded(layer, x1, x2, groups1, groups2, names, masks, patterns, **options) -> Kernel:
    """The kernel of inputs with repeated rows from the kernel of their distinct rows, so that identical
    inputs get bitwise-identical rows and columns (and the repeated work is skipped)."""
    first1, inverse1 = groups1 if groups1 is not None else (None, None)
    first2, inverse2 = groups2 if groups2 is not None else (None, None)
    if x2 is None:
        inverse2 = inverse1
    u1 = x1 if first1 is None else x1[first1]
    u2 = None if x2 is None else (x2 if first2 is None else x2[first2])
    masks = _rows_of(masks, first1, first2, x2 is None)
    patterns = _rows_of(patterns, first1, first2, x2 is None)
    try:
        k = _compute(layer, u1, u2, names, masks, patterns, **options)
    except NonFiniteKernelError as e:
        partial = None if e.partial is None else _expand(e.partial, inverse1, inverse2)
        raise NonFiniteKernelError(str(e) + " (row and column numbers count distinct inputs)", partial) from None
    return _expand(k, inverse1, inverse2)


def _same_side(first, second) -> bool:
    """Whether x2's graphs or lengths (``second``) are x1's (``first``): not given, the same object or equal."""
    if second is None or second is first:
        return True
    try:
        return bool(torch.equal(torch.as_tensor(first), torch.as_tensor(second)))
    except (TypeError, ValueError, RuntimeError):  # lists of sparse graphs, different shapes: not known equal
        return False


def compute_kernel(
    layer,
    x1,
    x2=None,
    get: str | Iterable[str] = ("nngp", "ntk"),
    *,
    dtype: torch.dtype = torch.float64,
    tile_size: int | None = None,
    max_memory: int | None = None,
    progress: bool | None = None,
    mask_constant: float | None = None,
    lengths=None,
    lengths2=None,
    pattern=None,
    pattern2=None,
) -> Kernel:
    """NNGP / NTK of ``layer`` between ``x1`` and ``x2``, tile by tile.

    Graphs (for :class:`~infinet.Aggregate`): ``pattern``, one graph per example of x1, and ``pattern2``
    for x2 (see :mod:`infinet.layers.graph` for the dense and sparse forms).

    Variable-length sequences in one batch (:mod:`infinet.masks`), so that a padded batch gives the
    kernel of the unpadded sequences: ``mask_constant``, positions (of sequences or feature maps)
    where every channel equals it are padding (neural-tangents' convention); or ``lengths`` (and
    ``lengths2`` for x2), the number of valid leading steps of each sequence N x C x L. Padded
    batches use the full layout.

    Memory: besides the (N1, N2) outputs, at most one tile's working set, about
    ``BYTES_PER_ENTRY * tile_size**2 * E`` bytes with E = 1 for vectors and, for feature maps of S
    positions, E = S (no pooling: diagonal layout) or S^2 (pooling: full layout), see
    :func:`choose_tile_size` (activations without a closed form chunk their
    quadrature to a fixed 32 MiB per temporary). When ``x2`` is None (or is ``x1``) only tiles on
    or above the diagonal are computed and mirrored. ``progress=None`` shows a tqdm bar only on an
    interactive terminal when there is more than one tile; True or False forces it.
    """
    names = parse_get(get)
    tune_allocator()
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (default) or torch.float32, got {dtype}")
    symmetric = x2 is None or (x2 is x1 and _same_side(pattern, pattern2) and _same_side(lengths, lengths2))
    if symmetric and x2 is x1:  # x2 is x1 with its own graphs / lengths given again: the symmetric kernel
        pattern2 = lengths2 = None
    x1 = as_input(x1, "x1", dtype)
    x2 = x1 if symmetric else as_input(x2, "x2", dtype)
    check_pair(x1, x2)
    embedding = token_reader(layer)
    require_vector_output(layer.check(x1.shape[1:]))
    if embedding is not None:
        for x, name in ((x1, "x1"), (x2, "x2")):
            embedding.check_tokens(x, name)
        if mask_constant is not None or lengths is not None or lengths2 is not None:
            raise ValueError("padding masks (mask_constant, lengths) are not supported for token inputs; give the "
                             "Embedding a padding_idx, whose token is embedded as zero")
    masks = padding_masks(x1, None if symmetric else x2, mask_constant, lengths, lengths2)
    patterns = graph_patterns(x1, None if symmetric else x2, pattern, pattern2)
    if patterns is not None and not any_layer(layer, lambda part: getattr(part, "takes_pattern", False)):
        raise ValueError("pattern (graphs) given, but the network has no Aggregate layer to use them")
    if sampling.shared_batch(layer) and not symmetric:  # one symmetric computation of both batches, then sliced
        if masks is not None or patterns is not None:
            raise ValueError("the network's gated layer estimates the kernel of the whole batch at once; padding "
                             "masks and graphs are not supported there")
        both = compute_kernel(layer, torch.cat([x1, x2]), get=get, dtype=dtype, tile_size=tile_size,
                              max_memory=max_memory, progress=progress)
        return both.block(slice(0, len(x1)), slice(len(x1), None))
    pairs = len(x1) * (len(x1) + 1) // 2 if symmetric else len(x1) * len(x2)
    work = pairs * spatial_cost(layer, tuple(x1.shape[1:]), masks is not None)[0] * layer.n_layers
    # in "auto" mode a network whose ReLU layers follow convolutions takes the blocked TorchScript step instead
    # (faster than the compiled one, and its tiles share the cores on the tile pool); so do the compiled closed-form
    # steps of infinet.engine.native_pairs wherever that library is had
    native_steps = native_pairs.available(x1.device, dtype or x1.dtype)
    compile_steps = fused.worth_compiling(work) and (
        fused.get_compile() == "on" or not (conv_fusion.has_pairs(layer) or native_steps))
    with fused.active(compile_steps):
        return _compute(layer, x1, None if symmetric else x2, names, masks, patterns, dtype=dtype,
                        tile_size=tile_size, max_memory=max_memory, progress_shown=progress)


def _compute(layer, x1, x2, names, masks, patterns=None, *, dtype, tile_size, max_memory,
             progress_shown) -> Kernel:
    """:func:`compute_kernel` on checked inputs (``x2`` None: symmetric) with padding ``masks`` and graphs
    ``patterns`` (or None)."""
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    need_ntk = "ntk" in names

    def keyed(x, i):  # identical rows must also have identical padding and graphs to be computed once
        parts = [t[i] for t in (masks, patterns) if t is not None]
        if not parts:
            return x
        return torch.cat([x.reshape(len(x), -1)] + [p.reshape(len(x), -1).to(x.dtype) for p in parts], 1)

    if masks is not None and layer.draws_laws(tuple(x1.shape[1:])):
        raise ValueError("the network combines correlated values (their joint law is drawn, infinet.engine.laws); "
                         "padding masks are not supported there: compute sequences of one length at a time")
    batch = sampling.whole_batch(layer)
    if batch:  # batch statistics: the whole batch, repeated rows included, is one tile
        sampling.check_whole_batch(layer, symmetric, tile_size, len(x1), masks is not None, patterns is not None)
        tile_size = len(x1)
    elif sampling.shared_batch(layer):  # errors shared across the batch: one tile
        tile_size = len(x1)
    groups1 = None if batch else unique_rows(keyed(x1, 0))
    groups2 = None if symmetric or batch else unique_rows(keyed(x2, 1))
    if groups1 is not None or groups2 is not None:  # repeated inputs: compute each once, then copy
        return _expanded(layer, x1, None if symmetric else x2, groups1, groups2, names, masks, patterns, dtype=dtype,
                         tile_size=tile_size, max_memory=max_memory, progress_shown=progress_shown)
    entries, full = spatial_cost(layer, tuple(x1.shape[1:]), masks is not None)
    cache = FUSED_DIAGONAL_ENTRIES if not full and entries > 1 and conv_fusion.has_pairs(layer) else None
    size = choose_tile_size(tile_size, max_memory, entries, full, device=x1.device, cache_entries=cache)
    plan = TilePlan(len(x1), len(x2), size, symmetric)
    rows, cols = plan.rows, plan.cols
    tasks = plan.tasks()
    # no input repeats within x1 or x2 (groups1 and groups2 are None here); without padding masks, whether a row of
    # x1 is also one of x2 (with masks, rows that differ only where they are padded become identical inputs once
    # masked, which only the tiles see)
    shared = None if masks is not None or symmetric else bool(torch.isin(row_keys(x1), row_keys(x2)).any())
    replay = None
    if _replay_pays(layer, x1, None if symmetric else x2, masks, patterns, len(tasks), size, bool(shared)):
        replay = _Replay(symmetric, len(rows), len(cols))
        tasks = replay.order(tasks)
    sink = MemorySink(plan, need_ntk, sampling.plan(layer, x1.shape[1:]) is not None, dtype, x1.device)
    distinct = masks is None and not shared  # a tile need not look for identical rows

    def work(task):
        if task[0] == "record":  # the self-covariances of one block of x1 (side 1) or x2 (side 2)
            x = x1[rows[task[2]]] if task[1] == 1 else x2[cols[task[2]]]
            return replay.record(task[1:], lambda trace: kernel_tile(layer, x, x[:1], False, trace=trace))
        i, j = task
        diagonal = plan.diagonal(i, j)

        def tile(trace=None):
            return kernel_tile(layer, x1[rows[i]], None if diagonal else x2[cols[j]], need_ntk,
                               tile_part(masks, plan, i, j), tile_part(patterns, plan, i, j), trace=trace,
                               distinct=distinct)

        if replay is None:
            k = tile()
        elif diagonal:  # a diagonal tile records its rows' self-covariances for the tiles off the diagonal
            k = replay.record((1, i), tile)
        else:
            k = tile(replay.trace(i, j))
        # written by the worker that computed it: the copies into the (N1, N2) result (and its mirror block)
        # run in parallel with the other tiles instead of one after another in this thread
        sink.write(i, j, finish_tile(k, plan, i, j))

    try:
        with progress_bar(len(plan.tasks()), progress_shown) as bar:
            for task, _ in local_results(work, tasks, x1.device):
                if task[0] != "record":
                    bar.update()
    except NonFiniteKernelError as e:
        raise NonFiniteKernelError(f"{e}; the tiles already computed are in the exception's .partial",
                                   sink.partial()) from None
    return sink.kernel(keep_nngp="nngp" in names)


def _replay_pays(layer, x1: Tensor, x2: Tensor | None, masks, patterns, n_tiles: int, size: int,
                 shared: bool) -> bool:
    """Whether tiles should replay self-covariances recorded once per block (:class:`_Replay`): feature maps
    over several tiles, a network whose every layer supports it, no padding masks or graphs, and (for x1
    against x2) no input shared by the two batches (their rows get equal self-covariances in a tile, so that
    rho = 1 exactly; ``shared``: some row of x1 is one of x2) and less work recording (about 2 (N1 + N2) kernels of
    one example) than it saves (N1 N2 (1 / rows + 1 / columns) per tile, one self-covariance per example of each
    tile)."""
    if x1.ndim < 3 or n_tiles < 2 or masks is not None or patterns is not None or not replays_variances(layer):
        return False
    if sampling.plan(layer, x1.shape[1:]) is not None:  # replicates recompute self-covariances per replicate
        return False
    if x2 is None:
        return True
    if shared:
        return False
    return len(x1) * len(x2) * 2.0 / size > 2.0 * (len(x1) + len(x2))


class _Replay:
    """Self-covariances recorded once per block of rows (and of columns, for x1 against x2) and replayed in
    every other tile (:class:`~infinet.kernel.VarianceTrace`). A symmetric kernel records them in its
    diagonal tiles, which compute those examples' pairs anyway; otherwise each block is recorded in a tile
    of its examples against its first one. Tiles that replay wait for the blocks they need; those are
    queued first (:meth:`order`) and a thread pool starts tasks in order, so the wait always ends."""

    def __init__(self, symmetric: bool, n_rows: int, n_cols: int):
        import threading

        self.symmetric = symmetric
        keys = [(1, i) for i in range(n_rows)] + ([] if symmetric else [(2, j) for j in range(n_cols)])
        self.ready = {key: threading.Event() for key in keys}
        self.entries: dict = {}

    def order(self, tasks: list) -> list:
        if self.symmetric:
            return [t for t in tasks if t[0] == t[1]] + [t for t in tasks if t[0] != t[1]]
        return [("record",) + key for key in self.ready] + tasks

    def record(self, key, compute):
        """``compute(trace)`` with a recording trace, whose entries become block ``key``'s."""
        trace = VarianceTrace()
        try:
            out = compute(trace)
            self.entries[key] = trace.entries
            return out
        finally:
            self.ready[key].set()

    def trace(self, i: int, j: int) -> VarianceTrace:
        a, b = (1, i), ((1, j) if self.symmetric else (2, j))
        for key in (a, b):
            self.ready[key].wait()
            if key not in self.entries:
                raise RuntimeError(f"the self-covariances of block {key} were not recorded (its tile failed)")
        return VarianceTrace.replay(self.entries[a], self.entries[b])


def kernel_diagonal(layer, x, kernel: str = "nngp") -> Tensor:
    """K(x_i, x_i) for each row of ``x``: the NNGP from one symmetric computation (its self-variances), the NTK
    row by row (a symmetric kernel would cost N^2). For kernel libraries' ``diag`` (GPyTorch, scikit-learn)."""
    if kernel == "nngp":
        return compute_kernel(layer, x, None, get="nngp", progress=False).var1
    if kernel != "ntk":
        raise ValueError(f"kernel must be 'nngp' or 'ntk', got {kernel!r}")
    return torch.stack([compute_kernel(layer, x[i: i + 1], None, get="ntk", progress=False).ntk[0, 0]
                        for i in range(len(x))])
