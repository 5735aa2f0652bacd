"""The :class:`Kernel` dataclass and the input kernel of a network."""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from ..core.checks import all_finite

GET_CHOICES = ("nngp", "ntk")


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels between two batches of inputs at one point of a network.

    Attributes:
        nngp: covariance E[z(x1) z(x2)] of a pre-activation (the NNGP, Lee et al. 2018); None only in
            a result computed with ``get=("ntk",)``. Layout: (N1, N2) for vectors; for feature maps
            with spatial shape S, (N1, N2, *S) holding only same-position pairs ("diagonal"), or
            (N1, N2, *S, *S) holding every pixel pair (``full``).
        ntk: neural tangent kernel (Jacot et al. 2018) in the same layout, or None when not requested.
        var1: per-example self-covariances of the first batch: (N1,) for vectors, (N1, *S) per
            position (diagonal layout), (N1, *S, *S) every position pair (full layout).
        var2: the same for the second batch.
        shape: per-example feature shape of the finite network at this point (channels first);
            widths enter the 'standard' parameterization and FanInConcat, ``shape[1:]`` is spatial.
        symmetric: True when the second batch is the first, so that nngp[i, i] equals var1[i].
        full: True for the full pixel-pair layout (needed below pooling), False for the diagonal one.
        mask1, mask2: (N, *S) booleans, True at padded positions of each batch (see :mod:`infinet.masks`),
            or None when nothing is padded.
        pattern1, pattern2: the graphs of each batch for :class:`~infinet.Aggregate` (see
            :mod:`infinet.layers.graph`), or None.
        trace: the :class:`VarianceTrace` that records or replays the self-covariances along the
            network (set by the tile engine only), or None.
        nngp_se, ntk_se: standard errors of nngp and ntk when the network has sampled layers (layers
            without closed forms, :mod:`infinet.sampling`), else None.
        sampling: the replicate a tile computes, for sampled layers (set by the tile engine), or None.
        law: how the value arises, where its joint law with other values is needed (:mod:`infinet.engine.laws`),
            or None (a Gaussian value, or a value no later layer combines with a correlated one).
        tokens: True for the kernel of token indices, [x_l = x'_l'], that an :class:`~infinet.Embedding` reads
            (:mod:`infinet.layers.tokens`).
    Transforms never mutate a Kernel; they return a new one (:meth:`replace`).
    """

    nngp: Tensor | None
    ntk: Tensor | None
    var1: Tensor
    var2: Tensor
    shape: tuple[int, ...]
    symmetric: bool = False
    full: bool = False
    mask1: Tensor | None = None
    mask2: Tensor | None = None
    pattern1: Tensor | None = None
    pattern2: Tensor | None = None
    trace: "VarianceTrace | None" = field(default=None, compare=False, repr=False)
    nngp_se: Tensor | None = None
    ntk_se: Tensor | None = None
    sampling: object = field(default=None, compare=False, repr=False)
    law: object = field(default=None, compare=False, repr=False)
    tokens: bool = False

    def replace(self, **changes) -> "Kernel":
        return dataclasses.replace(self, **changes)

    def block(self, rows: slice, cols: slice) -> "Kernel":
        """The (rows, cols) block of a symmetric kernel over one batch, standard errors included: the kernel of
        the examples ``rows`` against the examples ``cols`` (symmetric when they are the same)."""
        if not self.symmetric:
            raise ValueError("Kernel.block cuts blocks from the kernel of one batch with itself")

        def cut(t):
            return None if t is None else t[rows, cols]

        return self.replace(nngp=cut(self.nngp), ntk=cut(self.ntk), nngp_se=cut(self.nngp_se),
                            ntk_se=cut(self.ntk_se), var1=self.var1[rows], var2=self.var1[cols],
                            symmetric=rows == cols)

    @property
    def spatial(self) -> tuple[int, ...]:
        """Spatial shape of the features (empty for vectors)."""
        return tuple(self.shape[1:])

    def pin_diagonal(self, inplace: bool = False) -> "Kernel":
        """For a symmetric kernel, make nngp[i, i] exactly var1[i] (guards arccos(rho ~ 1) against
        round-off). ``inplace`` writes into nngp itself, for a tensor just made by the caller. Nothing to do where
        var1 was taken from this nngp's own diagonal (:func:`diagonal_pairs`)."""
        if not self.symmetric or self.nngp is None:
            return self
        taken = getattr(self.var1, "_infinet_diagonal_of", None)
        if taken is not None and taken() is self.nngp:
            return self
        if not self.spatial and not inplace:
            return self.replace(nngp=torch.diagonal_scatter(self.nngp, self.var1))
        nngp = self.nngp if inplace else self.nngp.clone()
        idx = torch.arange(len(self.var1), device=nngp.device)
        nngp[idx, idx] = self.var1
        return self.replace(nngp=nngp)

    @property
    def sampled(self) -> bool:
        """True when the values are estimates (the network has sampled layers): see nngp_se, ntk_se."""
        return self.nngp_se is not None or self.ntk_se is not None

    @property
    def replaying(self) -> bool:
        """True inside a tile whose self-covariances come from a :class:`VarianceTrace`."""
        return self.trace is not None and self.trace.replaying

    def map_variances(self, fn) -> tuple[Tensor, Tensor]:
        """Apply ``fn`` to var1 and var2, computing it once when the two batches are the same. The one
        place layers update self-covariances: while :attr:`replaying`, nothing is computed (None, None)
        and the trace supplies the values after the layer."""
        if self.replaying:
            return None, None
        var1 = fn(self.var1)
        return var1, (var1 if self.var2 is self.var1 else fn(self.var2))

    def _position_variances(self, var: Tensor) -> Tensor:
        if not self.full or self.replaying:  # a replayed trace holds same-position variances only
            return var
        n, s = len(var), self.spatial
        p = math.prod(s)
        return var.reshape(n, p, p).diagonal(dim1=1, dim2=2).reshape(n, *s)

    def pair_variances(self) -> tuple[Tensor, Tensor]:
        """Variances of the two members of each nngp entry, broadcastable against nngp."""
        d1, d2 = self._position_variances(self.var1), self._position_variances(self.var2)
        ones = (1,) * len(self.spatial)
        if self.full:
            return d1.reshape(len(d1), 1, *self.spatial, *ones), d2.reshape(1, len(d2), *ones, *self.spatial)
        return d1.unsqueeze(1), d2.unsqueeze(0)

    def map_self(self, full_fn, diag_fn) -> tuple[Tensor, Tensor]:
        """New self-covariances var1, var2 under an elementwise map of the kernel.

        Full layout: ``full_fn(cov, var_a, var_b)`` on each example's (S, S) self-covariance with the
        variances of both positions; otherwise ``diag_fn(var)``. Computed once when var2 is var1.
        """
        if not self.full:
            return self.map_variances(diag_fn)

        def one(var):
            d = self._position_variances(var)
            ones = (1,) * len(self.spatial)
            return full_fn(var, d.reshape(len(d), *self.spatial, *ones), d.reshape(len(d), *ones, *self.spatial))

        return self.map_variances(one)

    def to_diagonal(self) -> "Kernel":
        """The same kernel with only same-position pairs kept (full -> diagonal layout)."""
        if not self.full:
            return self
        n1, n2, s = self.nngp_shape()[0], self.nngp_shape()[1], self.spatial
        p = math.prod(s)

        def diag(t, lead):
            if t is None:
                return None
            return t.reshape(*lead, p, p).diagonal(dim1=-2, dim2=-1).reshape(*lead, *s)

        if self.replaying:
            var1, var2 = self.var1, self.var2
        else:
            var1 = diag(self.var1, (len(self.var1),))
            var2 = var1 if self.var2 is self.var1 else diag(self.var2, (len(self.var2),))
        return self.replace(nngp=diag(self.nngp, (n1, n2)), ntk=diag(self.ntk, (n1, n2)), var1=var1, var2=var2,
                            full=False)

    def nngp_shape(self) -> tuple[int, ...]:
        t = self.nngp if self.nngp is not None else self.ntk
        return tuple(t.shape)


class VarianceTrace:
    """The self-covariances of a network's layers, recorded once per example and replayed in tiles.

    A tile of the kernel between rows x1 and columns x2 needs, at every layer, the self-covariances
    var1 and var2 of its own examples. Computed inside every tile, they cost as much as the pairs
    themselves when a tile holds one pair of large feature maps (its var1 and var2 in the full
    layout are two more (S, S) tensors per (S, S) pair). Instead the tile engine records them while
    it computes the tiles on the diagonal (``record``: after each layer, the same-position variances
    of the output, which are all a later layer reads of them), and replays them in the tiles off the
    diagonal (``replay(entries1, entries2)``): there :meth:`Kernel.map_variances` computes nothing and
    each layer's output receives the recorded values. Only networks of layers whose self-covariances
    go through that one method take part (:func:`infinet.engine.apply.replays_variances`).
    """

    def __init__(self, entries1: list | None = None, entries2: list | None = None):
        self.replaying = entries1 is not None
        self.entries: list = [] if entries1 is None else entries1
        self.entries2 = entries2
        self.cursor = 0

    @classmethod
    def replay(cls, entries1: list, entries2: list) -> "VarianceTrace":
        if len(entries1) != len(entries2):
            raise RuntimeError("internal error: the two traces of a tile have different lengths")
        return cls(entries1, entries2)

    def step(self, out):
        """Record the output (a Kernel or a tuple of branches) of one layer, or give it the recorded
        self-covariances; either way the output carries this trace on."""
        outs = out if isinstance(out, tuple) else (out,)
        if self.replaying:
            if self.cursor >= len(self.entries):
                raise RuntimeError("internal error: a tile replays more layers than were recorded")
            e1, e2 = self.entries[self.cursor], self.entries2[self.cursor]
            self.cursor += 1
            if len(e1) != len(outs):
                raise RuntimeError("internal error: a replayed layer has another number of branches than recorded")
            new = tuple(o.replace(var1=a, var2=b, trace=self) for o, a, b in zip(outs, e1, e2))
        else:
            self.entries.append(tuple(o._position_variances(o.var1).contiguous() for o in outs))
            new = tuple(o.replace(trace=self) for o in outs)
        return new if isinstance(out, tuple) else new[0]

    def finish(self, out: Kernel) -> Kernel:
        """The network's output kernel without the trace, after checking that a replay used every entry."""
        if self.replaying and self.cursor != len(self.entries):
            raise RuntimeError("internal error: a tile replayed fewer layers than were recorded")
        return out.replace(trace=None)


def parse_get(get: str | Iterable[str]) -> tuple[str, ...]:
    """Normalize ``get`` ("nngp", "ntk" or a tuple of them) and reject unknown names."""
    names = tuple(n.strip() for n in get.split(",")) if isinstance(get, str) else tuple(get)  # "nngp,ntk" as the CLI
    if not names:
        raise ValueError(f"get must name at least one of {GET_CHOICES}")
    for name in names:
        if name not in GET_CHOICES:
            raise ValueError(f"unknown kernel {name!r} in get; choose from {GET_CHOICES}")
    return names


def as_input(x, name: str, dtype: torch.dtype | None) -> Tensor:
    """Validate one batch of inputs: a tensor (or array) of shape (N, features...) with finite values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, features...), batch first; got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if dtype is not None:
        x = x.to(dtype)
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first in row {bad})")
    return x


def check_pair(x1: Tensor, x2: Tensor) -> None:
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same feature shape; got {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}"
        )
    if x1.device != x2.device:
        raise ValueError(f"x1 is on {x1.device} but x2 is on {x2.device}; put both on one device")


_HASH_MULTIPLIERS: dict = {}


def row_keys(x: Tensor) -> Tensor:
    """An int64 key per row (example) of ``x``, equal for rows with bitwise-equal values.

    The bits of each value times a fixed odd random multiplier, summed in wrapping integer arithmetic:
    exact and independent of summation order, so equal rows always get equal keys (unequal rows collide
    with probability ~2^-64; callers confirm equality).
    """
    flat = x.reshape(len(x), -1)
    if flat.dtype == torch.float64:
        bits = flat.contiguous().view(torch.int64)
    elif flat.dtype in (torch.float32, torch.float16, torch.bfloat16):
        bits = flat.contiguous().view({torch.float32: torch.int32, torch.float16: torch.int16,
                                       torch.bfloat16: torch.int16}[flat.dtype]).to(torch.int64)
    else:
        bits = flat.to(torch.int64)
    d = flat.shape[1]
    key = (d, str(x.device))
    if key not in _HASH_MULTIPLIERS:
        g = torch.Generator().manual_seed(0x1F2E3D4C)
        _HASH_MULTIPLIERS[key] = (torch.randint(-(2**62), 2**62, (d,), generator=g) * 2 + 1).to(x.device)
    return (bits * _HASH_MULTIPLIERS[key]).sum(1)


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(first, inverse)`` with ``x[first][inverse]`` equal to ``x`` when ``x`` has repeated rows, else None."""
    if len(x) < 2:
        return None
    keys = row_keys(x)
    groups, inverse = torch.unique(keys, return_inverse=True)
    if len(groups) == len(x):
        return None
    first = torch.full((len(groups),), len(x), dtype=torch.long, device=x.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(x), device=x.device), reduce="amin")
    if not torch.equal(x[first][inverse], x):  # a hash collision (probability ~2^-64): exact grouping
        _, inverse = torch.unique(x.reshape(len(x), -1), dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.long, device=x.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(x), device=x.device), reduce="amin")
        if len(first) == len(x):
            return None
    return first, inverse


def identical_pairs(x1: Tensor, x2: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Index pairs (i, j), i != j when ``x2`` is None, of bitwise-identical rows x1[i] == x2[j]; None if none."""
    k1 = row_keys(x1)
    if x2 is None:
        _, inverse, counts = torch.unique(k1, return_inverse=True, return_counts=True)
        i_cand = (counts[inverse] > 1).nonzero()[:, 0]
        j_cand, k2, other = i_cand, k1, x1
    else:
        k2 = row_keys(x2)
        i_cand = torch.isin(k1, k2).nonzero()[:, 0]
        j_cand, other = torch.isin(k2, k1).nonzero()[:, 0], x2
    if len(i_cand) == 0:
        return None
    i, j = (k1[i_cand][:, None] == k2[j_cand][None, :]).nonzero().unbind(1)
    i, j = i_cand[i], j_cand[j]
    keep = (x1[i].reshape(len(i), -1) == other[j].reshape(len(j), -1)).all(1)
    if x2 is None:
        keep &= i != j
    if not bool(keep.any()):
        return None
    return i[keep], j[keep]


def _equalize_identical(nngp: Tensor, var1: Tensor, var2: Tensor, pairs, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Make identical inputs' entries exactly their common self-covariance (Gram entries and norms are
    summed in different orders, so they differ in the last bits otherwise, which the chaotic phase
    amplifies); returns the new (var1, var2). ``nngp`` is written in place."""
    i, j = pairs
    if symmetric:  # every member of a group takes the variance of the group's first member
        first = torch.arange(len(var1), device=var1.device)
        first = first.scatter_reduce(0, torch.maximum(i, j), torch.minimum(i, j), reduce="amin")
        var1 = var1[first]
        var2 = var1
        nngp[i, i] = var1[i]
    else:
        var2 = var2.clone()
        var2[j] = var1[i]
    nngp[i, j] = var1[i]
    return var1, var2


def input_kernel(x1: Tensor, x2: Tensor | None, need_ntk: bool, full: bool = False,
                 masks: tuple[Tensor, Tensor] | None = None,
                 patterns: tuple[Tensor, Tensor | None] | None = None, positions_only: bool = False,
                 distinct: bool = False, out: Tensor | Callable[[], Tensor] | None = None,
                 ntk_unread: bool = False, border: int = 0, deferred: bool = False) -> Kernel:
    """:func:`_input_kernel`, carrying the graphs ``patterns`` of x1 and x2 (x2's None: x2 is x1).
    ``positions_only``: the caller replaces var1 and var2 (a replaying :class:`VarianceTrace`), so that feature
    maps' self-covariances are returned as same-position variances (N, *S) even in the full layout, unless
    identical inputs need the full ones. ``distinct``: the caller knows no row of x1 equals one of x2 (nor two
    of x1 when x2 is None): :func:`identical_pairs` is not searched. ``out``: where a full-layout NNGP of feature
    maps with at most 16 channels and no masks is written, a (N1, N2, *S, *S) tensor of any strides (such as the
    interior of a zero-bordered buffer that the first convolution reads in place), or a function that makes it
    (called only where it is written); ignored elsewhere.
    ``border``: ``out`` is the interior of such a buffer (its ``_base``, (N1, N2, *(S + 2 border), *(S + 2
    border))), which is then written whole in the same passes, as the products of the images zero-padded by
    ``border`` (the border comes out zero: no separate fills). ``ntk_unread``: the first layer never reads the
    input NTK of feature maps without masks (a convolution that :mod:`~infinet.engine.conv_fusion` computes), which
    is then one zero expanded (:func:`zero_ntk`). ``deferred`` (with ``border``, or for same-position pairs; where no two
    inputs are identical): ``out`` is not written; the NNGP is a placeholder carrying the images
    (:class:`ChannelProducts`), which the first convolution's compiled step reads instead, and which
    :func:`realized` writes wherever anything else would read it."""
    spatial = masks is None and x1.ndim > 2
    direct = spatial and full and x1.shape[1] <= 16
    k = _input_kernel(x1, x2, need_ntk, full, masks, positions_only, distinct, out if direct else None,
                      spatial and ntk_unread, border if direct and out is not None else 0, deferred)
    if patterns is None:
        return k
    return k.replace(pattern1=patterns[0], pattern2=patterns[0] if x2 is None else patterns[1])


def _input_kernel(x1: Tensor, x2: Tensor | None, need_ntk: bool, full: bool = False,
                  masks: tuple[Tensor, Tensor] | None = None, positions_only: bool = False,
                  distinct: bool = False, out: Tensor | None = None, ntk_unread: bool = False,
                  border: int = 0, deferred: bool = False) -> Kernel:
    """Kernel of the inputs themselves (design notes): nngp = x1 . x2 / d for vectors, d = number of
    features; for feature maps (N, C, *S), the channel average sum_c x1[c, p] x2[c, q] / C per position
    pair (p, q), all pairs when ``full`` and same-position pairs otherwise (a convolution's fan-in is
    C x filter size, and it averages over the filter itself).

    The NTK of the inputs is 0 (inputs carry no parameters). ``x2=None`` means x2 is x1. ``masks``:
    the (N, *S) padding masks of x1 and x2 (:mod:`infinet.masks`); padded positions count as zeros and
    the masks travel with the kernel.
    """
    if masks is not None:
        x1 = x1.masked_fill(masks[0].unsqueeze(1), 0.0)
        x2 = None if x2 is None else x2.masked_fill(masks[1].unsqueeze(1), 0.0)
        k = _spatial_input_kernel(x1, x2, need_ntk, full, distinct=distinct)
        return k.replace(mask1=masks[0], mask2=masks[1])
    if x1.ndim > 2:
        return _spatial_input_kernel(x1, x2, need_ntk, full, positions_only, distinct, out, ntk_unread, border,
                                     deferred)
    n_features = x1[0].numel()
    f1 = x1.reshape(len(x1), -1)
    var1 = _mean_squares(f1)
    f2 = f1 if x2 is None else x2.reshape(len(x2), -1)
    gram = torch.addmm(f1.new_zeros(()), f1, f2.T, beta=0.0, alpha=1.0 / n_features)
    if x2 is None:
        nngp = torch.diagonal_scatter(gram, var1)
        var2 = var1
    else:
        nngp = gram
        var2 = _mean_squares(f2)
    pairs = None if distinct else identical_pairs(x1, x2)
    if pairs is not None:
        var1, var2 = _equalize_identical(nngp, var1, var2, pairs, x2 is None)
    ntk = torch.zeros_like(nngp) if need_ntk else None
    return Kernel(nngp, ntk, var1, var2, tuple(x1.shape[1:]), symmetric=x2 is None)


def diagonal_pairs(nngp: Tensor) -> Tensor:
    """``nngp[i, i]`` for every i: each example's kernel with itself, its self-covariance (a copy), marked as taken
    from ``nngp``, so that :meth:`Kernel.pin_diagonal` does not write the same values back (on a full-layout tile
    that is an (S, S) plane per example). Transforms never write into a kernel they receive, so the two stay equal
    while both are this kernel's."""
    index = torch.arange(len(nngp), device=nngp.device)
    own = nngp[index, index]
    own._infinet_diagonal_of = weakref.ref(nngp)
    return own


def _mean_squares(f: Tensor) -> Tensor:
    """Each row's mean square, |f_i|^2 / d: one fused pass (the norm), four times faster than a product and a sum."""
    return torch.linalg.vector_norm(f, dim=1).square_().div_(f.shape[1])


def _spatial_input_kernel(x1: Tensor, x2: Tensor | None, need_ntk: bool, full: bool,
                          positions_only: bool = False, distinct: bool = False, out: Tensor | None = None,
                          ntk_unread: bool = False, border: int = 0, deferred: bool = False) -> Kernel:
    c, s = x1.shape[1], tuple(x1.shape[2:])
    p = math.prod(s)
    a = x1.reshape(len(x1), c, p)
    b = a if x2 is None else x2.reshape(len(x2), c, p)
    pairs = None if distinct else identical_pairs(x1, x2)
    full_var = full and (not positions_only or pairs is not None)

    def self_cov(t):
        if full_var:  # (N, P, P) per example
            return _channel_mean(t.transpose(1, 2) @ t, c).reshape(len(t), *s, *s)
        return _channel_mean((t * t).sum(1), c).reshape(len(t), *s)

    products = None
    if full and c <= 16:  # few channels: outer products (N1, N2, *S, *S) written in place, no permuted copy
        defer = deferred and border and pairs is None
        if callable(out):  # the buffer made only where it is written
            out = ChannelProducts.later(out) if defer else out()
        if isinstance(out, Tensor) and tuple(out.shape) != (len(a), len(b), *s, *s):
            raise ValueError(f"out must be {(len(a), len(b), *s, *s)}, got {tuple(out.shape)}")
        target, ra, rb, shape = out, a, b, s
        if border:  # the whole bordered buffer, from the zero-padded images
            shape = tuple(n + 2 * border for n in s)
            target = out._base if isinstance(out, Tensor) else out
            if target is None or (isinstance(out, Tensor)
                                  and tuple(target.shape) != (len(a), len(b), *shape, *shape)):
                raise ValueError(f"out must be the interior of a {(len(a), len(b), *shape, *shape)} buffer")
            pad = lambda x: torch.nn.functional.pad(x, (border,) * (2 * len(s))).reshape(len(x), c, -1)  # noqa: E731
            ra = pad(x1)
            rb = ra if x2 is None else pad(x2)
        products = ChannelProducts(ra, rb, shape, target, out if border else None)
        if defer:
            nngp = a.new_zeros(()).expand(len(a), len(b), *s, *s)
            nngp._infinet_products = products
        else:
            nngp = products.write()
    elif full:  # (N1, 1, P, C) @ (1, N2, C, P) -> (N1, N2, P, P)
        nngp = torch.matmul(a.transpose(1, 2)[:, None], b[None]).div_(c).reshape(len(a), len(b), *s, *s)
    elif c <= 16:  # few channels: broadcast products beat a batched matmul with a tiny inner dimension
        products = ChannelProducts(a, b, s, None, same_position=True)
        if deferred and pairs is None:
            nngp = a.new_zeros(()).expand(len(a), len(b), *s)
            nngp._infinet_products = products
        else:
            nngp = products.write()
    else:  # per position: (P, N1, C) @ (P, C, N2) -> (N1, N2, P)
        gram = a.permute(2, 0, 1) @ b.permute(2, 1, 0)
        nngp = gram.permute(1, 2, 0).reshape(len(a), len(b), *s) / c
    var1 = self_cov(a)
    var2 = var1 if x2 is None else self_cov(b)
    nngp = nngp if nngp is out or products is not None else nngp.contiguous()
    if pairs is not None:
        var1, var2 = _equalize_identical(nngp, var1, var2, pairs, x2 is None)
    k = Kernel(nngp, None, var1, var2, tuple(x1.shape[1:]), symmetric=x2 is None, full=full)
    if channel_products(nngp) is None:
        k = k.pin_diagonal(inplace=True)
    return k.replace(ntk=zero_ntk(k.nngp, stored=not ntk_unread) if need_ntk else None)


def _channel_mean(t: Tensor, c: int) -> Tensor:
    """The sum over channels / c, in place (x / 1 is x: no pass for it)."""
    return t.div_(c) if c > 1 else t


class ChannelProducts:
    """An input kernel of feature maps with few channels as the images it is made of: nngp[i, j, p, q] = sum over c
    of x1[i, c, p] x2[j, c, q] / C, from ``x1`` (N1, C, P) and ``x2`` (N2, C, P) (zero-padded to ``shape`` where
    the kernel is written into a zero-bordered buffer); ``same_position``: only q = p, (N1, N2, *shape).
    :meth:`write` writes it into ``target`` ((N1, N2, *shape, *shape); None: a new tensor) and returns
    ``interior`` (``target`` itself when None); both may be a :meth:`later` (a buffer made when first written)."""

    def __init__(self, x1: Tensor, x2: Tensor, shape: tuple[int, ...], target, interior=None,
                 same_position: bool = False):
        self.x1, self.x2, self.shape, self.target, self.interior = x1, x2, shape, target, interior
        self.same_position = same_position

    class later:
        """The interior view that ``make()`` returns, and its base, made on first use."""

        def __init__(self, make):
            self.make, self.made = make, None

        def __call__(self) -> Tensor:
            if self.made is None:
                self.made = self.make()
            return self.made

    @property
    def channels(self) -> int:
        return self.x1.shape[1]

    def write(self) -> Tensor:
        if self.same_position:
            nngp = self.x1[:, None, 0] * self.x2[None, :, 0]
            for ch in range(1, self.channels):
                nngp.addcmul_(self.x1[:, None, ch], self.x2[None, :, ch])
            return _channel_mean(nngp, self.channels).reshape(len(self.x1), len(self.x2), *self.shape)
        if isinstance(self.interior, ChannelProducts.later):
            self.interior = self.interior()
            self.target = self.interior._base
        ones = (1,) * len(self.shape)
        rows = lambda ch: self.x1[:, ch].reshape(len(self.x1), 1, *self.shape, *ones)  # noqa: E731
        cols = lambda ch: self.x2[:, ch].reshape(1, len(self.x2), *ones, *self.shape)  # noqa: E731
        nngp = torch.mul(rows(0), cols(0)) if self.target is None else torch.mul(rows(0), cols(0), out=self.target)
        for ch in range(1, self.channels):
            nngp.addcmul_(rows(ch), cols(ch))
        nngp = _channel_mean(nngp, self.channels)
        return nngp if self.interior is None else self.interior


def channel_products(t: Tensor | None) -> ChannelProducts | None:
    """The :class:`ChannelProducts` that ``t`` stands for when it is a deferred input kernel (``input_kernel(...,
    deferred=True)``: its entries are not there), else None."""
    return getattr(t, "_infinet_products", None) if t is not None else None


def realized(k):
    """``k`` (a Kernel or a tuple of branches) with a deferred input kernel written (:class:`ChannelProducts`) and
    its diagonal pinned, as :func:`input_kernel` gives it without deferring; any other ``k`` as it is."""
    if isinstance(k, tuple):
        return tuple(realized(x) for x in k)
    products = channel_products(getattr(k, "nngp", None))
    if products is None:
        return k
    return k.replace(nngp=products.write()).pin_diagonal(inplace=True)


_ZEROS: "weakref.WeakValueDictionary[int, Tensor]" = weakref.WeakValueDictionary()


def zero_ntk(like: Tensor, stored: bool = True) -> Tensor:
    """The NTK of the inputs, zeros shaped like ``like``, remembered as zero (:func:`known_zero`): the first
    layer's transform may skip arithmetic on it (transforms never write into a kernel they receive).
    ``stored=False``: one zero expanded to that shape (no memory written; a write into it raises), for a first
    layer that does not read it."""
    out = torch.zeros_like(like) if stored else like.new_zeros(()).expand(like.shape)
    _ZEROS[id(out)] = out
    return out


def known_zero(t: Tensor | None) -> bool:
    """Whether ``t`` is an input NTK made by :func:`zero_ntk` (all zeros)."""
    return t is not None and _ZEROS.get(id(t)) is t
