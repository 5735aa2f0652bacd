"""Pooling and flattening: finite modules and kernel transforms.

Pooling sums each member of a pixel pair over its own window, so it needs the full pixel-pair
covariance below it: AvgPool K'(o, o') = (1/|W|^2) sum_{a, a'} K(s o + a, s o' + a') (SumPool without
the 1/|W|^2); global pooling averages (sums) over all pairs; Flatten keeps the mean of the same-position
pairs, the covariance of the flattened vector under the next layer's 1/fan_in (Novak et al. 2019,
"Bayesian deep convolutional networks with many channels are Gaussian processes", Sec. 3; Arora et
al. 2019 for CNTK-V and CNTK-GAP). Pooling and flattening have no parameters, so the NTK transforms as the NNGP.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import native
from ..kernel import Kernel
from ..masks import remask, valid_counts
from . import spatial as sp
from .base import Context, Layer, Spec, with_shape


def _map_linear(k: Kernel, fn, **changes) -> Kernel:
    """Apply a linear map ``fn(tensor, n_batch_axes)`` to nngp, ntk and the self-covariances alike
    (parameter-free linear layers transform all of them the same way)."""
    var1, var2 = k.map_variances(lambda v: fn(v, 1))
    return k.replace(nngp=None if k.nngp is None else fn(k.nngp, 2), ntk=None if k.ntk is None else fn(k.ntk, 2),
                     var1=var1, var2=var2, **changes)


def _compiled_pool(t: Tensor, lead: int, geo, divisor: float) -> Tensor | None:
    """:meth:`_Pool._pool` of a full-layout ``t`` (lead, H, W, H, W) in one compiled pass (``pool_full`` of
    :mod:`infinet.engine.native`: every output reads its window taps once, the sums in the order of the axis by
    axis passes of :func:`~infinet.engine.layers.spatial.window_sum`), for windows equal to their strides inside the
    input (no padding reached), two spatial dimensions, float64 CPU tensors outside autograd; None elsewhere (the
    caller takes the torch passes, the same formulas)."""
    if len(geo) != 2 or t.device.type != "cpu" or t.dtype != torch.float64 or t.ndim != lead + 4 or lead > 2:
        return None
    if t.stride(-1) != 1 or (torch.is_grad_enabled() and t.requires_grad):
        return None
    sizes = t.shape[lead:lead + 2]
    if any(w != s or before != 0 or w * n_out > n or n_out < 1 for (w, s, before, _, n_out), n in zip(geo, sizes)):
        return None
    lib = native.library()
    if lib is None:
        return None
    (kh, _, _, _, oh), (kw, _, _, _, ow) = geo
    na, nb = t.shape[0], t.shape[1] if lead == 2 else 1
    sa, sb = t.stride(0), t.stride(1) if lead == 2 else 0
    strides = t.stride()[lead:lead + 3]  # h1, w1, h2 (w2 is 1)
    out = torch.empty(*t.shape[:lead], oh, ow, oh, ow, dtype=t.dtype)
    if lib.pool_full(na, nb, sa, sb, *strides, kh, kw, oh, ow, native.address(t), native.address(out), divisor):
        raise MemoryError("the compiled pool_full could not allocate its row buffers")
    return out


def _spatial_input(layer, shape, minimum=1):
    if shape is not None and len(shape) < 1 + minimum:
        raise ValueError(f"{layer!r} expects feature maps N x C x ... with at least {minimum} spatial dimension; "
                         f"got per-example shape {shape}")


class _Pool(Layer):
    scale_by_window = True
    allows_ceil = False  # MaxPool: windows overhanging the input never take their padding as the maximum

    replays_variances = True  # see infinet.engine.apply.replays_variances

    def __init__(self, window: int | Sequence[int], stride: int | Sequence[int] | None = None, padding="VALID",
                 ceil_mode: bool = False):
        self.window = window
        self.stride = window if stride is None else stride
        for name, value in (("window", self.window), ("stride", self.stride)):
            n = 1 if isinstance(value, int) and not isinstance(value, bool) else len(tuple(value))
            sp.as_tuple(value, n, f"{type(self).__name__} {name}")
        self.padding = sp.check_padding(padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"{type(self).__name__} ceil_mode must be True or False, got {ceil_mode!r}")
        if ceil_mode and not self.allows_ceil:
            raise ValueError(f"{type(self).__name__}: ceil_mode has no counterpart (PyTorch's divisor for windows that "
                             "overhang the input differs from the window size)")
        if ceil_mode and isinstance(self.padding, str):
            raise ValueError(f"{type(self).__name__}: ceil_mode goes with PyTorch's padding (a number of zeros per "
                             "side), not with 'SAME', 'VALID' or 'CIRCULAR'")
        self.ceil_mode = ceil_mode

    def _extra(self) -> str:
        return ", ceil_mode=True" if self.ceil_mode else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.window!r}, stride={self.stride!r}, padding={self.padding!r}{self._extra()})"

    def geometry(self, shape):
        _spatial_input(self, shape)
        n = len(shape) - 1
        ws = sp.as_tuple(self.window, n, f"{type(self).__name__} window (one per spatial dimension of {shape})")
        ss = sp.as_tuple(self.stride, n, f"{type(self).__name__} stride")
        pads = sp.axis_paddings(self.padding, n, repr(self))
        return [(w, s) + sp.padding_amounts(size, w, s, 1, pad, repr(self), self.ceil_mode)
                for size, w, s, pad in zip(shape[1:], ws, ss, pads)]

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is None:
            return spec
        geo = self.geometry(spec.shape)
        return with_shape(spec, (spec.shape[0],) + tuple(g[4] for g in geo))

    def needs_full(self, full_out):
        return True

    def _pool(self, t: Tensor, lead: int, geo) -> Tensor:
        divisor = float(math.prod(g[0] for g in geo) ** 2) if self.scale_by_window else 1.0
        compiled = None if self.padding == "CIRCULAR" else _compiled_pool(t, lead, geo, divisor)
        if compiled is not None:
            return compiled
        circular = self.padding == "CIRCULAR"
        for axes, (w, s, before, after, _) in zip(sp.pair_axes(lead, len(geo), True), geo):
            for ax in axes:  # each member of a pair over its own window
                t = sp.window_sum(t, (ax,), w, s, 1, before, after, circular)
        if self.scale_by_window:
            t = t / math.prod(g[0] for g in geo) ** 2
        return t

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.full:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (internal layout error)")
        geo = self.geometry(k.shape)
        return _map_linear(k, lambda t, lead: self._pool(t, lead, geo), shape=(k.shape[0],) + tuple(g[4] for g in geo))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return PoolModule(self)


class AvgPool(_Pool):
    """Average pooling over ``window`` moved by ``stride`` (default: the window), padding 'VALID'
    (default), 'SAME' (zeros, counted in the average) or 'CIRCULAR'."""


class SumPool(_Pool):
    """Sum pooling: AvgPool times the window size."""

    scale_by_window = False


class PoolModule(nn.Module):
    def __init__(self, layer: _Pool):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        geo = self.layer.geometry(tuple(x.shape[1:]))
        for i, (w, s, before, after, n_out) in enumerate(geo):
            x = sp.window_sum(x, (2 + i,), w, s, 1, before, after, self.layer.padding == "CIRCULAR")
        return x / math.prod(g[0] for g in geo) if self.layer.scale_by_window else x

    def extra_repr(self) -> str:
        return repr(self.layer)


class GlobalAvgPool(Layer):
    """Mean over all spatial positions: K' = mean_{p, p'} K(p, p') (full pixel-pair covariance needed)."""

    masking = "own"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    sum_pool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        _spatial_input(self, spec.shape)
        return with_shape(spec, None if spec.shape is None else spec.shape[:1])

    def needs_full(self, full_out):
        return True

    def kernel_fn(self, k: Kernel) -> Kernel:
        n = len(k.spatial)
        if k.mask1 is not None:  # padding is zero: sum, then divide by the valid positions of each member
            return _masked_global_pool(k, self.sum_pool)
        scale = math.prod(k.spatial) ** 2 if self.sum_pool else 1.0
        return _map_linear(k, lambda t, lead: sp.global_mean(t, lead, n, k.full) * scale, shape=k.shape[:1],
                           full=False)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return GlobalPoolModule(self.sum_pool)


def _masked_global_pool(k: Kernel, sum_pool: bool) -> Kernel:
    """Global pooling of a padded kernel: K' = sum over valid position pairs, divided by T1 T2 (the
    valid positions of each member) for the mean (see :mod:`infinet.masks`)."""
    k = remask(k)
    axes = tuple(range(1, 1 + (2 if k.full else 1) * len(k.spatial)))
    c1, c2 = valid_counts(k.mask1).to(k.var1.dtype), valid_counts(k.mask2).to(k.var1.dtype)

    def pool(t, lead, pairs):  # sum over the spatial axes after ``lead`` batch axes; the mean divides by pairs
        if t is None:
            return None
        total = t.sum(tuple(a + lead - 1 for a in axes))
        return total if sum_pool else total / pairs

    var1 = pool(k.var1, 1, c1**2)
    var2 = var1 if k.var2 is k.var1 else pool(k.var2, 1, c2**2)
    pairs = c1[:, None] * c2[None, :]
    return k.replace(nngp=pool(k.nngp, 2, pairs), ntk=pool(k.ntk, 2, pairs), var1=var1, var2=var2,
                     shape=k.shape[:1], full=False, mask1=None, mask2=None)


class GlobalSumPool(GlobalAvgPool):
    """Sum over all spatial positions: K' = sum_{p, p'} K(p, p')."""

    sum_pool = True


class GlobalPoolModule(nn.Module):
    def __init__(self, sum_pool: bool):
        super().__init__()
        self.sum_pool = sum_pool

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(2, x.ndim))
        return x.sum(dims) if self.sum_pool else x.mean(dims)


class Flatten(Layer):
    """Flatten N x C x ... feature maps to N x (C ...) vectors; K' = mean_p K(p, p) (only the
    same-position pairs are needed, so the layers before it keep the diagonal layout)."""

    masking = "own"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    def __repr__(self) -> str:
        return "Flatten()"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        return with_shape(spec, None if spec.shape is None else (math.prod(spec.shape),))

    def needs_full(self, full_out):
        return False

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.spatial:
            return k
        if k.mask1 is not None:  # padded positions are zeros of the flattened vector
            k = remask(k).replace(mask1=None, mask2=None)
        k = k.to_diagonal()
        n = len(k.spatial)
        return self.of_means(k, *(None if t is None else sp.global_mean(t, 2, n, False) for t in (k.nngp, k.ntk)))

    def of_means(self, k: Kernel, nngp: Tensor, ntk: Tensor | None) -> Kernel:
        """The output of :meth:`kernel_fn` on ``k`` (diagonal layout, no masks) given the means of its nngp and
        ntk over the positions, computed elsewhere (the fused steps before it: ``k`` then carries no nngp or
        ntk, only its self-covariances and shape)."""
        n = len(k.spatial)
        var1, var2 = k.map_variances(lambda v: sp.global_mean(v, 1, n, False))
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=(math.prod(k.shape),))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        return nn.Flatten(1)



class FlattenPositions(Layer):
    """Merge the positions of N x C x H x W ... into one axis, N x C x (H W ...) (torch's ``x.flatten(2)``: image
    patches as a sequence of tokens). The kernel is the same numbers with the position axes merged, in the order
    torch flattens them (row-major)."""

    masking = "refuse"

    def __repr__(self) -> str:
        return "FlattenPositions()"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None and len(spec.shape) < 2:
            raise ValueError(f"{self!r} merges positions: inputs N x C x ..., got per-example shape {spec.shape}")
        shape = None if spec.shape is None else (spec.shape[0], math.prod(spec.shape[1:]))
        return with_shape(spec, shape)

    def kernel_fn(self, k: Kernel) -> Kernel:
        p, full = math.prod(k.spatial), k.full

        def merged(t, lead):
            return None if t is None else t.reshape(*t.shape[:lead], *((p, p) if full else (p,)))

        return k.replace(nngp=merged(k.nngp, 2), ntk=merged(k.ntk, 2), var1=merged(k.var1, 1),
                         var2=merged(k.var2, 1), shape=(k.shape[0], p))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        return nn.Flatten(2)
