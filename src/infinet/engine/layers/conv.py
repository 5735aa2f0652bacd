"""Convolutions over N x C x L, N x C x H x W and N x C x D x H x W inputs: finite modules and kernels.

Kernel transform (Novak et al. 2019, "Bayesian deep convolutional networks with many channels are
Gaussian processes", Sec. 2; Garriga-Alonso et al. 2019; the NTK as in Arora et al. 2019, Sec. 4;
fan-in = in_channels x filter size): with A the average over filter taps a of K(s p + d a, s q + d a),
i.e. the same tap on both members of a pixel pair,

    NNGP  K' = w_std^2 A(K) + b_std^2,
    NTK   'ntk':      Theta' = K' + w_std^2 A(Theta),
          'standard': Theta' = fan_in A(K) + w_std^2 A(Theta) (+1 with a bias),

exactly as :class:`~infinet.Dense` with A in place of the identity. A maps diagonal layouts to
diagonal layouts and full to full. A transposed convolution uses the adjoint placement of taps.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch import Tensor

from .. import conv_fusion
from ..kernel import Kernel
from ..masks import refuse, remask
from . import spatial as sp
from .base import Context, Layer, Spec, with_shape
from .dense import AffineModule, check_parameterization, check_std, std_repr
from ...core.checks import check_int



class _Described:
    """A layer's repr as an error message's subject, formed only when the message is (geometry runs per tile)."""

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    def __str__(self) -> str:
        return repr(self.layer)

    def __format__(self, spec: str) -> str:
        return format(repr(self.layer), spec)

class Conv(Layer):
    """Convolution with ``out_channels`` filters of ``kernel_size`` (an int or one per spatial dim).

    ``padding``: 'SAME' (zeros, ceil(n / stride) outputs), 'VALID' (no padding) or 'CIRCULAR'
    (wrap-around, same sizes as SAME). The number of spatial dimensions (1, 2 or 3) is taken from the
    input; a tuple ``kernel_size`` fixes it. Memory and time of the kernel: per pair of images,
    O(filter size x S) in the diagonal layout (no pooling later) and O(filter size x S^2) in the
    full layout (pooling later), S the number of pixels.
    """

    masking = "own"  # stride-1 SAME: positionwise; otherwise refused

    transpose = False

    replays_variances = True  # see infinet.engine.apply.replays_variances

    fresh_output = True  # independent of every value before it (infinet.engine.laws)

    blocked_tap_sums = True  # this class exactly (not its subclasses): infinet.engine.conv_fusion may compute it

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: str = "SAME",
        dilation: int | Sequence[int] = 1,
        w_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ):
        check_int(out_channels, f"{type(self).__name__} out_channels")
        self.out_channels = out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            n = 1 if isinstance(value, int) and not isinstance(value, bool) else len(tuple(value))
            sp.as_tuple(value, n, f"{type(self).__name__} {name}")
        self.padding = sp.check_padding(padding)
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.out_channels}, kernel_size={self.kernel_size!r}, stride={self.stride!r}, "
                f"padding={self.padding!r}, dilation={self.dilation!r}, w_std={std_repr(self.w_std)}, b_std={std_repr(self.b_std)}, "
                f"parameterization={self.parameterization!r})")

    # -- geometry ------------------------------------------------------------------------------------
    def geometry(self, shape: tuple[int, ...]) -> list[tuple[int, int, int, int, int, int]]:
        """Per spatial dim: (k, stride, dilation, before, after_or_n_out, n_out) for input ``shape``
        (C, *S); raises ValueError for inputs this layer cannot take."""
        name = type(self).__name__
        if len(shape) < 2 or len(shape) > 4:
            raise ValueError(f"{self!r} expects inputs N x C x L, N x C x H x W or N x C x D x H x W; got per-example "
                             f"shape {shape}" + (" (flat features: use Dense)" if len(shape) == 1 else ""))
        n = len(shape) - 1
        ks = sp.as_tuple(self.kernel_size, n, f"{name} kernel_size (one per spatial dimension of {shape})")
        ss = sp.as_tuple(self.stride, n, f"{name} stride")
        ds = sp.as_tuple(self.dilation, n, f"{name} dilation")
        described = _Described(self)  # the layer's repr, formed only where an error message needs it
        pads = sp.axis_paddings(self.padding, n, described)
        if self.transpose and not all(isinstance(p, str) for p in pads):
            raise ValueError(f"{self!r}: transposed convolutions take padding 'SAME' or 'VALID'")
        out = []
        for size, k, s, d, pad in zip(shape[1:], ks, ss, ds, pads):
            if self.transpose:
                before, n_out = sp.transpose_amounts(size, k, s, d, pad, described)
                out.append((k, s, d, before, n_out, n_out))
            else:
                before, after, n_out = sp.padding_amounts(size, k, s, d, pad, described)
                out.append((k, s, d, before, after, n_out))
        return out

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        out_shape = None
        if spec.shape is not None:
            geo = self.geometry(spec.shape)
            out_shape = (self.out_channels,) + tuple(g[5] for g in geo)
        token = ctx.token()
        return with_shape(spec, out_shape, gaussian=True, fresh=frozenset({token}), ancestry=spec.ancestry | {token},
                          own=frozenset({token}))

    # -- kernel ----------------------------------------------------------------------------------------
    def _tap_sum(self, t: Tensor | None, lead: int, geo, full: bool, scale: float = 1.0) -> Tensor | None:
        """scale x the sum over filter taps on every spatial dim (same tap on both pair members)."""
        if t is None:
            return None
        last = len(geo) - 1
        for i, (axes, (k, s, d, before, after, n_out)) in enumerate(zip(sp.pair_axes(lead, len(geo), full), geo)):
            c = scale if i == last else 1.0
            if self.transpose:
                t = sp.window_scatter(t, axes, k, s, d, before, n_out)
                t = t.mul_(c) if c != 1.0 else t
            else:
                t = sp.window_sum(t, axes, k, s, d, before, after, self.padding == "CIRCULAR", scale=c)
        return t

    def kernel_fn(self, k: Kernel) -> Kernel:
        if conv_fusion.conv_applies(self, k):  # the common case, in cache-sized blocks (same formulas)
            return conv_fusion.conv_alone(self, k)
        geo = self.geometry(k.shape)
        if k.mask1 is not None and (self.padding != "SAME" or any(g[1] != 1 for g in geo)):
            raise refuse(self, "only stride-1 SAME convolutions see padding as the zeros beyond an unpadded input")
        size = math.prod(g[0] for g in geo)
        w2 = self.w_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        alpha = w2 / size

        def scaled_taps(t, lead):  # alpha x the sum over taps (a tensor alpha stays out of place, for autograd)
            if isinstance(alpha, Tensor):
                return self._tap_sum(t, lead, geo, k.full) * alpha
            return self._tap_sum(t, lead, geo, k.full, scale=alpha)

        def affine(t, lead):  # w_std^2 A(t) + b_std^2, A the average over filter taps
            out = scaled_taps(t, lead)
            return out.add_(b2) if b2 else out  # in place on a fresh result (autograd keeps the product's inputs)

        var1, var2 = k.map_variances(lambda v: affine(v, 1))
        ntk = k.ntk
        if self.parameterization == "ntk":
            nngp = affine(k.nngp, 2)
            if ntk is not None:
                ntk = scaled_taps(ntk, 2).add_(nngp)
        else:
            sum_nngp = self._tap_sum(k.nngp, 2, geo, k.full)
            nngp = sum_nngp * alpha
            if b2:
                nngp.add_(b2)
            if ntk is not None:
                fan_in = k.shape[0] * size
                ntk = scaled_taps(ntk, 2).add_(sum_nngp, alpha=fan_in / size)
                if self.b_std is not None:
                    ntk.add_(1.0)
        shape = (self.out_channels,) + tuple(g[5] for g in geo)
        out = k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=shape)
        if k.mask1 is not None:
            out = remask(out)
        return out

    # -- finite module ---------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> ConvModule:
        self.infer(spec, Context())
        geo = None if spec.shape is None else self.geometry(spec.shape)
        in_channels = None if spec.shape is None else spec.shape[0]
        cls = ConvTransposeModule if self.transpose else ConvModule
        return cls(self, geo, in_channels, seed=ctx.seed())


class ConvTranspose(Conv):
    """Transposed convolution (the adjoint placement of filter taps): each input pixel p feeds
    outputs stride p + dilation a. 'VALID' keeps all stride (n - 1) + dilation (k - 1) + 1 outputs,
    'SAME' keeps n x stride (cropping the smaller half of the excess before). Fan-in convention:
    in_channels x filter size, as for Conv."""

    masking = "refuse"

    transpose = True

    def __init__(self, out_channels, kernel_size=3, stride=1, padding="SAME", dilation=1, w_std=1.0, b_std=None,
                 parameterization="ntk"):
        super().__init__(out_channels, kernel_size, stride, padding, dilation, w_std, b_std, parameterization)
        if self.padding == "CIRCULAR":
            raise ValueError("ConvTranspose supports padding 'SAME' or 'VALID', not 'CIRCULAR'")


class ConvLocal(Conv):
    """Locally connected layer: a convolution whose filters are not shared between output positions
    (neural-tangents' ``stax.ConvLocal``; Novak et al. 2019, "Bayesian deep convolutional networks with
    many channels are Gaussian processes", Sec. 3.1, the locally connected network LCN).

    Each output position has its own weights and bias, so outputs at different positions are
    independent at infinite width: same-position pairs transform as for :class:`Conv` (the tap average
    A on the input's same-position pairs), every other pair is 0,

        K'[p, p] = w_std^2 A(K)[p, p] + b_std^2,  K'[p, q] = 0 (p != q),  Theta' = K' + w_std^2 A(Theta) on p = q.

    Its input never needs the full pixel-pair layout; global pooling after it sees only the diagonal
    (Novak et al. 2019: without weight sharing, pooling gives the kernel of a network without it).
    ``padding`` defaults to 'VALID' as in neural-tangents. The finite module needs the input shape at
    build time (its weights are (out, in, *kernel_size, *output positions)).
    """

    plans_layout = True

    def __init__(self, out_channels, kernel_size=3, stride=1, padding="VALID", dilation=1, w_std=1.0, b_std=None,
                 parameterization="ntk"):
        super().__init__(out_channels, kernel_size, stride, padding, dilation, w_std, b_std, parameterization)

    def needs_full(self, full_out):
        return False

    def kernel_fn(self, k: Kernel, full_out: bool = False) -> Kernel:
        out = super().kernel_fn(k.to_diagonal())
        return _embed_diagonal(out) if full_out else out

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        if spec.shape is None:
            raise ValueError(f"{self!r}: build the network with input_shape (a locally connected layer has weights "
                             "per output position)")
        self.infer(spec, Context())
        return ConvLocalModule(self, self.geometry(spec.shape), spec.shape[0], seed=ctx.seed())


def _embed_diagonal(k: Kernel) -> Kernel:
    """A diagonal-layout kernel as the full layout with zeros off the position diagonal."""
    s = k.spatial
    p = math.prod(s)

    def full(t, lead):
        if t is None:
            return None
        out = t.new_zeros(*t.shape[:lead], p, p)
        out.diagonal(dim1=-2, dim2=-1).copy_(t.reshape(*t.shape[:lead], p))
        return out.reshape(*t.shape[:lead], *s, *s)

    var1 = full(k.var1, 1)
    var2 = var1 if k.var2 is k.var1 else full(k.var2, 1)
    return k.replace(nngp=full(k.nngp, 2), ntk=full(k.ntk, 2), var1=var1, var2=var2, full=True)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class ConvModule(AffineModule):
    """Finite convolution of :class:`Conv`: weight (out, in, *kernel_size), bias (out)."""

    def __init__(self, layer: Conv, geometry, in_channels: int | None, seed: int):
        self.layer = layer
        self.geo = geometry
        super().__init__(layer.out_channels, layer.w_std, layer.b_std, layer.parameterization, in_channels, seed)

    def _filter(self) -> tuple[int, ...]:
        n = len(self.geo) if self.geo is not None else None
        return sp.as_tuple(self.layer.kernel_size, n, "kernel_size") if n else ()

    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features) + self._filter()

    def fan_in(self) -> int:
        return self.in_features * math.prod(self._filter())

    def input_features(self, x: Tensor) -> int:
        self.geo = self.layer.geometry(tuple(x.shape[1:]))
        return x.shape[1]

    def _check_input(self, x: Tensor) -> list:
        if x.ndim != len(self.geo) + 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.layer!r} was built for inputs (N, {self.in_features}, ...) with {len(self.geo)} "
                             f"spatial dims; got {tuple(x.shape)}")
        return self.layer.geometry(tuple(x.shape[1:]))

    def linear(self, x: Tensor) -> Tensor:
        geo = self._check_input(x)
        circular = self.layer.padding == "CIRCULAR"
        for i, (k, s, d, before, after, n_out) in enumerate(geo):
            x = sp.pad_axis(x, 2 + i, before, after, circular)
        return _CONV[len(geo)](x, self.weight, stride=[g[1] for g in geo], dilation=[g[2] for g in geo])

    def extra_repr(self) -> str:
        return f"{self.layer!r}, in_channels={self.in_features}"


class ConvTransposeModule(ConvModule):
    """Finite transposed convolution of :class:`ConvTranspose`: weight (in, out, *kernel_size)."""

    def weight_shape(self) -> tuple[int, ...]:
        return (self.in_features, self.out_features) + self._filter()

    def linear(self, x: Tensor) -> Tensor:
        geo = self._check_input(x)
        y = _CONV_T[len(geo)](x, self.weight, stride=[g[1] for g in geo], dilation=[g[2] for g in geo])
        for i, (k, s, d, before, _, n_out) in enumerate(geo):
            keep = min(n_out, y.shape[2 + i] - before)
            y = y.narrow(2 + i, before, keep)
            if keep < n_out:
                y = sp.pad_axis(y, 2 + i, 0, n_out - keep, circular=False)
        return y


class ConvLocalModule(ConvModule):
    """Finite locally connected layer of :class:`ConvLocal`: weight (out, in, *kernel_size, *output
    positions), bias (out, *output positions); fan-in in_channels x filter size, as for Conv."""

    def __init__(self, layer: ConvLocal, geometry, in_channels: int, seed: int):
        super().__init__(layer, geometry, in_channels, seed)
        if self.bias is not None:
            self.bias = nn.Parameter(torch.empty(self.out_features, *self._positions()))
            self.reset_parameters()

    def _positions(self) -> tuple[int, ...]:
        return tuple(g[5] for g in self.geo)

    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features) + self._filter() + self._positions()

    def bias_view(self, ndim: int) -> Tensor:
        return self.bias

    def linear(self, x: Tensor) -> Tensor:
        geo = self._check_input(x)
        if [g[5] for g in geo] != list(self._positions()):
            raise ValueError(f"{self.layer!r} was built for output positions {self._positions()}; input {tuple(x.shape)} "
                             "gives others")
        circular = self.layer.padding == "CIRCULAR"
        for i, (k, s, d, before, after, n_out) in enumerate(geo):
            x = sp.pad_axis(x, 2 + i, before, after, circular)
        patches = []
        for taps in itertools.product(*(range(g[0]) for g in geo)):
            index = [slice(None), slice(None)]
            for a, (k, s, d, _, _, n_out) in zip(taps, geo):
                index.append(slice(d * a, d * a + s * (n_out - 1) + 1, s))
            patches.append(x[tuple(index)])
        patch = torch.stack(patches, dim=2)  # (N, C, taps, *positions)
        weight = self.weight.reshape(self.out_features, self.in_features, len(patches), *self._positions())
        return torch.einsum("nct...,oct...->no...", patch, weight)
