"""Token inputs and learned constants: embeddings of token indices, parameters used directly (a class token,
a positional embedding), and the concatenation of independent values along positions.

**Embedding** (``nn.Embedding``). The input is a batch of token indices (N, L). Token t at position l gives
z_c(l) = E[t, c] with E[t, c] i.i.d. N(0, w_std^2) (torch's default: w_std = 1). Indices are one-hot vectors
e_t and the embedding is the linear map E^T e_t, so with the input kernel K_in(l, l') = [x_l = x'_l'] (1 when the
two tokens are equal)

    NNGP  K(l, l')     = w_std^2 [x_l = x'_l'],
    NTK   Theta(l, l') = [x_l = x'_l']  (the gradient with respect to E[t, c] is [x_l = t]; standard
                                          parameterization, one term per table entry),

and a padding index (``padding_idx``: a zero row that is never trained) counts as equal to nothing. Values at
different positions are Gaussian and independent across channels, like a Dense output: the embedding is the
first layer of a network whose input is token indices (Lee et al. 2018 with one-hot inputs).

**Constant** (a parameter used directly in ``forward``). A tensor theta of the model's own, the same for every
input, with entries i.i.d. N(0, std^2) at initialization (the variance read off the model's values). Its kernel
does not depend on the inputs: K(x, x')(p, p') = std^2 [p = p'] and, trainable, Theta(p, p') = [p = p']
(d theta_c(p) / d theta_c(p) = 1). It is zero-mean and independent of every other value, so a sum with it (a
positional embedding) has the closed form K + std^2.

**ConcatPositions** (``torch.cat`` along a position axis, e.g. a class token before a sequence). The joined
value's kernel is block diagonal: its blocks are the branches' kernels and the cross blocks
E[a(x) b(x')] = E[a] E[b] = 0 when one of each pair of branches is zero-mean random output independent of the
other (the condition of a sum, :class:`~infinet.FanInSum`); anything else is refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...core.checks import check_int
from ..kernel import Kernel
from .base import Context, Layer, Spec, random_output
from .combinators import _FanIn
from .dense import check_std, std_repr


def _check_trainable(name: str, trainable) -> bool:
    if not isinstance(trainable, bool):
        raise TypeError(f"{name} trainable must be True or False, got {trainable!r}")
    return trainable


class Embedding(Layer):
    """Embedding of token indices: ``num_embeddings`` tokens, ``embedding_dim`` channels in the finite module,
    table entries N(0, ``w_std``^2); ``padding_idx`` a token whose embedding is zero and untrained. Reads (N, L)
    integer indices and gives N x C x L sequences. Must be the network's first layer. Kernel: see
    :mod:`infinet.layers.tokens` (Lee et al. 2018, eq. 4, on one-hot inputs)."""

    masking = "refuse"
    fresh_output = True
    reads_tokens = True

    def __init__(self, num_embeddings: int, embedding_dim: int, w_std: float = 1.0, padding_idx: int | None = None,
                 trainable: bool = True):
        check_int(num_embeddings, "Embedding num_embeddings")
        check_int(embedding_dim, "Embedding embedding_dim")
        if padding_idx is not None and (isinstance(padding_idx, bool) or not isinstance(padding_idx, int)
                                        or not -num_embeddings <= padding_idx < num_embeddings):
            raise ValueError(f"Embedding padding_idx must be None or an index below {num_embeddings}, got {padding_idx!r}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        self.trainable = _check_trainable("Embedding", trainable)

    def __repr__(self) -> str:
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}, w_std={std_repr(self.w_std)}, "
                f"padding_idx={self.padding_idx!r}{'' if self.trainable else ', trainable=False'})")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None and len(spec.shape) != 1:
            raise ValueError(f"{self!r} reads token indices of shape (N, L); got per-example shape {spec.shape}")
        if spec.ancestry or spec.gaussian:
            raise ValueError(f"{self!r} reads token indices: it must be the network's first layer")
        return random_output(spec, ctx, None if spec.shape is None else (self.embedding_dim, spec.shape[0]))

    def same_input(self, other) -> bool:
        return (self.num_embeddings, self.padding_idx) == (other.num_embeddings, other.padding_idx)

    def check_tokens(self, x: Tensor, name: str) -> None:
        """Refuse anything but (N, L) integer indices in range."""
        if x.ndim != 2:
            raise ValueError(f"{name}: {self!r} reads token indices of shape (N, L), got shape {tuple(x.shape)}")
        if bool((x != x.round()).any()) or bool((x < 0).any()) or bool((x >= self.num_embeddings).any()):
            raise ValueError(f"{name}: token indices must be integers from 0 to {self.num_embeddings - 1}")

    def input_kernel(self, x1: Tensor, x2: Tensor | None, need_ntk: bool, full: bool) -> Kernel:
        """The kernel of the one-hot tokens: [x_l = x'_l'] for every position pair (``full``) or same-position
        pairs, zero at the padding index; var1, var2 the same of each sequence with itself."""
        b = x1 if x2 is None else x2

        def live(u):  # positions holding a token other than the padding one
            return torch.ones_like(u, dtype=torch.bool) if self.padding_idx is None else u != self.padding_idx

        def equal(u, v):
            if full:
                eq = u[:, None, :, None] == v[None, :, None, :]
                return (eq & live(u)[:, None, :, None] & live(v)[None, :, None, :]).to(x1.dtype)
            return ((u[:, None] == v[None]) & live(u)[:, None] & live(v)[None]).to(x1.dtype)

        def own(u):
            if full:
                return ((u[:, :, None] == u[:, None, :]) & live(u)[:, :, None] & live(u)[:, None, :]).to(x1.dtype)
            return live(u).to(x1.dtype)

        nngp = equal(x1, b)
        var1 = own(x1)
        var2 = var1 if x2 is None else own(b)
        ntk = torch.zeros_like(nngp) if need_ntk else None
        return Kernel(nngp, ntk, var1, var2, (self.num_embeddings, x1.shape[1]), symmetric=x2 is None, full=full,
                      tokens=True)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.tokens:
            raise ValueError(f"{self!r} reads token indices: it must be the network's first layer")
        w2 = self.w_std**2
        var1, var2 = k.map_variances(lambda v: w2 * v)
        ntk = None if k.ntk is None else (k.nngp.clone() if self.trainable else torch.zeros_like(k.nngp))
        return k.replace(nngp=w2 * k.nngp, ntk=ntk, var1=var1, var2=var2, shape=(self.embedding_dim, k.shape[1]),
                         tokens=False)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        module = EmbeddingModule(self, ctx.seed())
        return module if self.trainable else module.requires_grad_(False)


class EmbeddingModule(nn.Module):
    """The finite embedding: a (num_embeddings, embedding_dim) table with N(0, w_std^2) entries (the padding
    row zero), reading (N, L) indices and giving N x C x L."""

    def __init__(self, layer: Embedding, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(layer.num_embeddings, layer.embedding_dim, generator=g) * float(layer.w_std)
        if layer.padding_idx is not None:
            table[layer.padding_idx] = 0.0
        self.weight = nn.Parameter(table)
        self.padding_idx = layer.padding_idx

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.embedding(x.long(), self.weight, self.padding_idx).transpose(1, 2)


class Constant(Layer):
    """A learned tensor used directly (a class token, a positional embedding): per-example ``shape`` (channels
    first, as infinet's layout), entries N(0, ``std``^2) at initialization, the same for every input; it reads
    its input only for the batch sizes. ``trainable`` adds its NTK term. Kernel: see
    :mod:`infinet.layers.tokens`."""

    masking = "refuse"
    fresh_output = True
    plans_layout = True
    reads_values = False  # its input gives the batch sizes only

    def __init__(self, shape, std: float = 0.0, trainable: bool = True):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not shape:
            raise ValueError("Constant shape must have a channel axis, e.g. (C,) or (C, L)")
        for s in shape:
            check_int(s, "Constant shape")
        self.shape, self.std = shape, check_std("std", std, allow_none=False)
        self.trainable = _check_trainable("Constant", trainable)

    def __repr__(self) -> str:
        return (f"Constant({self.shape!r}, std={std_repr(self.std)}"
                f"{'' if self.trainable else ', trainable=False'})")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        return random_output(Spec(None), ctx, self.shape)  # independent of the input: no ancestry of its own

    def needs_full(self, full_out):
        return False

    def kernel_fn(self, k: Kernel, full_out: bool = True) -> Kernel:
        n1, n2 = k.nngp_shape()[:2]
        spatial = self.shape[1:]
        full = bool(full_out) and bool(spatial)
        p = math.prod(spatial)
        like = k.var1
        eye = (torch.eye(p, dtype=like.dtype, device=like.device).reshape(*spatial, *spatial) if full
               else torch.ones(spatial, dtype=like.dtype, device=like.device))
        s2 = float(self.std) ** 2

        def per(n):
            return eye.expand(n, *eye.shape)

        nngp = (s2 * eye).expand(n1, n2, *eye.shape).contiguous()
        ntk = None if k.ntk is None else (eye if self.trainable else 0.0 * eye).expand(n1, n2, *eye.shape).contiguous()
        var1 = s2 * per(n1)
        var2 = var1 if k.var2 is k.var1 else s2 * per(len(k.var2))
        return Kernel(nngp, ntk, var1, var2, self.shape, symmetric=k.symmetric, full=full, sampling=k.sampling,
                      trace=None)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        module = ConstantModule(self, ctx.seed())
        return module if self.trainable else module.requires_grad_(False)


class ConstantModule(nn.Module):
    """The learned tensor of a :class:`Constant`, repeated over the batch of its input."""

    def __init__(self, layer: Constant, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.value = nn.Parameter(torch.randn(layer.shape, generator=g) * float(layer.std))

    def forward(self, x: Tensor) -> Tensor:
        return self.value.unsqueeze(0).repeat(len(x), *([1] * self.value.ndim))


class ConcatPositions(_FanIn):
    """Concatenate branches along position axis ``axis`` of N x C x ... (2 for sequences; torch's dim). Each
    pair of branches must be independent with one zero-mean random member (as for a sum); the kernel is block
    diagonal (see :mod:`infinet.layers.tokens`)."""

    keeps_law = False
    masking = "refuse"

    def __init__(self, axis: int = 2):
        check_int(axis, "ConcatPositions axis")
        if axis < 2:
            raise ValueError(f"ConcatPositions axis must be a position axis (2 or more), got {axis}; "
                             "FanInConcat joins channels")
        self.axis = axis

    def __repr__(self) -> str:
        return f"ConcatPositions({self.axis})"

    missing = ("neither is zero-mean random output independent of the other; concatenated positions need their "
               "cross-covariances, which only such branches give (zero)")

    def _check(self, stream, ctx: Context | None = None) -> tuple:
        if not isinstance(stream, tuple):
            raise ValueError(f"{self!r} joins branches but got a single input")
        for i in range(len(stream)):
            for j in range(i + 1, len(stream)):
                self._check_independent(stream, i, j)
        return stream

    def infer(self, spec, ctx):
        branches = self._check(spec, ctx)
        shapes = [b.shape for b in branches]
        shape = None
        if not any(s is None for s in shapes):
            a = self.axis - 1
            if any(len(s) <= a for s in shapes) or len({s[:a] + s[a + 1:] for s in shapes}) > 1:
                raise ValueError(f"{self!r}: branches must agree beyond position axis {self.axis}: {shapes}")
            shape = shapes[0][:a] + (sum(s[a] for s in shapes),) + shapes[0][a + 1:]
        joined = self._joined(branches, shape)
        return Spec(shape, gaussian=joined.gaussian, fresh=joined.fresh, ancestry=joined.ancestry, own=joined.own)

    def kernel_fn(self, ks):
        first = ks[0]
        a = self.axis - 1  # the axis among the per-example shape's spatial axes, from 1
        sizes = [k.shape[a] for k in ks]
        shape = first.shape[:a] + (sum(sizes),) + first.shape[a + 1:]
        d = len(shape) - 1

        def blocks(tensors, lead):
            """Block-diagonal concatenation of (lead..., *S[, *S]) tensors along the axis (twice when full)."""
            if not first.full:
                return torch.cat(tensors, dim=lead + a - 1)
            out = tensors[0].new_zeros(tensors[0].shape[:lead] + shape[1:] + shape[1:])
            at = 0
            for t, s in zip(tensors, sizes):
                index = [slice(None)] * (lead + 2 * d)
                index[lead + a - 1] = index[lead + d + a - 1] = slice(at, at + s)
                out[tuple(index)] = t
                at += s
            return out

        var1 = blocks([k.var1 for k in ks], 1)
        return first.replace(
            nngp=blocks([k.nngp for k in ks], 2),
            ntk=None if first.ntk is None else blocks([k.ntk for k in ks], 2),
            var1=var1, var2=var1 if first.var2 is first.var1 else blocks([k.var2 for k in ks], 1),
            shape=shape, law=None)

    def module(self, spec, ctx) -> nn.Module:
        self._check(spec)
        return _ConcatModule(self.axis)


class _ConcatModule(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, xs: tuple) -> Tensor:
        return torch.cat(xs, dim=self.axis)
