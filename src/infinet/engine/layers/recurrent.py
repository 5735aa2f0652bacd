"""Recurrent (Elman) layers over sequences N x C x L: finite module and exact kernel transform.

Finite network (h_0 = 0, weights shared over time):
    g_t = (w_std / sqrt(n)) W h_(t-1) + (u_std / sqrt(d)) U x_t + b_std b,   h_t = phi(g_t),
'ntk' parameterization with W, U, b ~ N(0, 1) (n = width, d = input channels); 'standard' draws
W ~ N(0, w_std^2 / n), U ~ N(0, u_std^2 / d), b ~ N(0, b_std^2) and drops the factors.

Kernel (Alemohammad, Wang, Balestriero and Baraniuk 2021, "The recurrent neural tangent kernel",
Theorem 1 and eqs. 5-7; the NNGP part is Yang 2019, "Tensor Programs I", Sec. 3), for time steps t of x
and s of x', with K the input's kernel (its NNGP and NTK Theta_in at the time pair) and
Q, Qdot = E[phi(u) phi(v)], E[phi'(u) phi'(v)] of (u, v) ~ N(0, [[S_tt(x), S_ts], [S_ts, S_ss(x')]]):

    S_ts    = w_std^2 Q_(t-1,s-1) + u_std^2 K_ts + b_std^2                 (NNGP of g; Q_(0,.) = 0)
    Th_ts   = S_ts + u_std^2 Theta_in,ts + w_std^2 Qdot_(t-1,s-1) Th_(t-1,s-1)   (NTK of g; 'ntk')
    output  nngp Q_ts, ntk Qdot_ts Th_ts (the kernel of h_t, as after any activation).

The first term of Th is the gradient with respect to W, U and b at step t; the last carries the
gradients of every earlier step through h_(t-1). Because W is shared over time, g_t and g'_s depend
on it through every earlier step, but in the infinite-width limit only pairs with the same lag
(t-k, s-k) stay correlated (Alemohammad et al. 2021, Theorem 1), so the recursion follows the
diagonals of the (t, s) grid. 'standard' replaces the parameter term by n Q_(t-1,s-1) + d K_ts (+ 1
with a bias) and keeps the factors w_std^2, u_std^2 on the carried terms (Sohl-Dickstein et al. 2020,
eq. 7, applied to each weight).

Layouts: each (t, s) pair needs only (t-1, s-1), so the same-time pairs (t, t) form a closed
recursion: a last-step readout costs O(L) per pair of sequences (diagonal layout); pooling over time
or attention later asks for every pair, O(L^2) (full layout). The planner decides, as for images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ..kernel import Kernel
from ..masks import remask
from .activations import Activation
from .base import Context, Layer, Spec, with_shape
from .dense import check_parameterization, check_std, std_repr
from ...core.checks import check_int


def sequence_shape(layer, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Check that a per-example shape is a sequence (C, L) with L >= 1; return it."""
    if shape is None:
        return None
    if len(shape) != 2:
        raise ValueError(f"{layer!r} expects sequences N x C x L (channels first, as Conv1d); got per-example "
                         f"shape {shape}" + (" (vectors: add a time axis)" if len(shape) == 1 else ""))
    if shape[1] < 1:
        raise ValueError(f"{layer!r}: the sequences are empty (length 0)")
    return shape


class Recurrent(Layer):
    """Elman recurrent layer of ``width`` units with activation ``activation`` (any infinet activation).

    Input sequences N x C x L; output the hidden states N x width x L (``return_sequence=True``, so
    recurrent layers stack and a readout can pool over time) or the last one, N x width. ``b_std=None``:
    no bias. ``bias_terms``: the bias is the sum of that many independent vectors of variance
    b_std^2 / bias_terms (torch's nn.RNN has two, b_ih and b_hh): the NNGP is unchanged, and the 'standard'
    NTK gains one bias term per vector. The kernel recursion and its references are in the module docstring.
    """

    masking = "own"

    def __init__(self, activation: Activation, width: int = 512, w_std: float = 1.0, u_std: float = 1.0,
                 b_std: float | None = None, parameterization: str = "ntk", return_sequence: bool = True,
                 bias_terms: int = 1):
        if not isinstance(activation, Activation):
            raise TypeError(f"Recurrent needs an infinet activation such as Relu() or Tanh(), got {activation!r}")
        check_int(width, "Recurrent width")
        if not isinstance(return_sequence, bool):
            raise TypeError(f"return_sequence must be True or False, got {return_sequence!r}")
        self.activation, self.width = activation, width
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.u_std = check_std("u_std", u_std, allow_none=False)
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.parameterization = check_parameterization(parameterization)
        self.return_sequence = return_sequence
        check_int(bias_terms, "Recurrent bias_terms")
        self.bias_terms = bias_terms

    def __repr__(self) -> str:
        return (f"Recurrent({self.activation!r}, width={self.width}, w_std={std_repr(self.w_std)}, "
                f"u_std={std_repr(self.u_std)}, b_std={std_repr(self.b_std)}, "
                f"parameterization={self.parameterization!r}, return_sequence={self.return_sequence!r}"
                + (f", bias_terms={self.bias_terms}" if self.bias_terms != 1 else "") + ")")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        shape = sequence_shape(self, spec.shape)
        token = ctx.token()
        out = None if shape is None else ((self.width, shape[1]) if self.return_sequence else (self.width,))
        return with_shape(spec, out, gaussian=False, fresh=None, ancestry=spec.ancestry | {token},
                          own=frozenset({token}))

    def needs_full(self, full_out):
        return bool(full_out) if self.return_sequence else False

    # -- kernel ---------------------------------------------------------------------------------------
    def _coefficients(self, k: Kernel) -> tuple:
        w2, u2 = self.w_std**2, self.u_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        if self.parameterization == "ntk":
            return w2, u2, b2, w2, u2, b2
        return w2, u2, b2, float(self.width), float(k.shape[0]), (0.0 if self.b_std is None else float(self.bias_terms))

    def _chain(self, k_in: Tensor, coef) -> Tensor:
        """Self-variances S_tt of g along time for each sequence, (N, L) from the input's (N, L)."""
        w2, u2, b2 = coef[:3]
        out, q = [], None
        for t in range(k_in.shape[-1]):
            s = u2 * k_in[..., t] + b2 if q is None else w2 * q + u2 * k_in[..., t] + b2
            out.append(s)
            q = self.activation.diagonal(s)
        return torch.stack(out, -1)

    def _pairs(self, nngp: Tensor, ntk: Tensor | None, va: Tensor, vb: Tensor, full: bool, coef,
               pin=None) -> tuple[Tensor, Tensor | None]:
        """(Q, Qdot Th) over time pairs from the input's nngp, ntk: (..., L) same-time pairs or
        (..., L, L) every pair. ``va``, ``vb``: variances S_tt of each member, broadcastable to (..., L).
        ``pin(q, t)``: writes the exact same-time values of identical sequences into step t's values."""
        w2, u2, b2, pw, pu, pb = coef
        act = self.activation
        length = nngp.shape[-1]
        need_ntk = ntk is not None
        if not full:
            qs, ps, q, p = [], [], None, None
            for t in range(length):
                s = u2 * nngp[..., t] + b2 if q is None else w2 * q + u2 * nngp[..., t] + b2
                if need_ntk:
                    th = pu * nngp[..., t] + pb + u2 * ntk[..., t]
                    if q is not None:
                        th = th + pw * q + w2 * p
                q, qdot = act.expectations(s, va[..., t], vb[..., t], need_kdot=need_ntk)
                if pin is not None:
                    q = q.clone()
                    pin(q, t)
                p = qdot * th if need_ntk else None
                qs.append(q)
                ps.append(p)
            return torch.stack(qs, -1), (torch.stack(ps, -1) if need_ntk else None)
        q_all = torch.zeros_like(nngp)
        p_all = torch.zeros_like(nngp) if need_ntk else None
        for r in range(length):  # row r (pairs (r, s >= r)) and column r (pairs (t > r, r)) from step r - 1
            for row in (True, False):
                if not row and r == length - 1:
                    break
                if row:
                    cur, prev = (..., r, slice(r, length)), (..., r - 1, slice(r - 1, length - 1))
                    a, b = va[..., r:r + 1], vb[..., r:]
                else:
                    cur, prev = (..., slice(r + 1, length), r), (..., slice(r, length - 1), r - 1)
                    a, b = va[..., r + 1:], vb[..., r:r + 1]
                # the same order of operations as the diagonal layout and the chain of self-variances, so
                # that a sequence paired with itself gets cov == var bit for bit
                s = u2 * nngp[cur] + b2 if r == 0 else w2 * q_all[prev] + u2 * nngp[cur] + b2
                if need_ntk:
                    th = pu * nngp[cur] + pb + u2 * ntk[cur]
                    if r > 0:
                        th = th + pw * q_all[prev] + w2 * p_all[prev]
                q, qdot = act.expectations(s, a, b, need_kdot=need_ntk)
                q_all[cur] = q
                if need_ntk:
                    p_all[cur] = qdot * th
            if pin is not None:
                pin(q_all[..., r, r], r)
        return q_all, p_all

    def kernel_fn(self, k: Kernel) -> Kernel:
        if k.mask1 is not None:
            return self._padded(k)
        out = self._sequence_kernel(k)
        return out if self.return_sequence else last_step(out)

    def _padded(self, k: Kernel) -> Kernel:
        """Padded sequences (:mod:`infinet.masks`): padded steps are skipped, the state carried over them.
        Each sequence's valid steps are gathered to its front (the same time pairs the unpadded
        sequences have), the recursion runs there, and the results go back to the padded positions
        (zero at padding) or, for the last state, to each pair's last valid steps."""
        if not k.full:
            raise ValueError(f"{self!r}: padded sequences need the full layout (internal error)")
        length = k.shape[1]

        def order(mask):
            key = mask.to(torch.int64) * length + torch.arange(length, device=mask.device)
            idx = key.argsort(dim=1)  # valid steps first, in time order, then the padded ones
            return idx, idx.argsort(dim=1), (~mask).sum(1)

        idx1, inv1, n1 = order(k.mask1)
        idx2, inv2, n2 = (idx1, inv1, n1) if k.mask2 is k.mask1 else order(k.mask2)

        def pairs(t, ia, ib):
            if t is None:
                return None
            a, b = t.shape[:2]
            t = t.gather(2, ia[:, None, :, None].expand(a, b, length, length))
            return t.gather(3, ib[None, :, None, :].expand(a, b, length, length))

        def own(v, i):
            a = len(v)
            return v.gather(1, i[:, :, None].expand(a, length, length)).gather(2, i[:, None, :].expand(a, length, length))

        var1 = own(k.var1, idx1)
        compact = k.replace(nngp=pairs(k.nngp, idx1, idx2), ntk=pairs(k.ntk, idx1, idx2), var1=var1,
                            var2=var1 if k.var2 is k.var1 else own(k.var2, idx2), mask1=None, mask2=None)
        out = self._sequence_kernel(compact)
        if self.return_sequence:
            var1 = own(out.var1, inv1)
            back = out.replace(nngp=pairs(out.nngp, inv1, inv2), ntk=pairs(out.ntk, inv1, inv2), var1=var1,
                               var2=var1 if out.var2 is out.var1 else own(out.var2, inv2), mask1=k.mask1, mask2=k.mask2)
            return remask(back)
        last1, last2 = n1 - 1, n2 - 1

        rows, cols = torch.arange(len(last1), device=last1.device), torch.arange(len(last2), device=last2.device)

        def final(t):
            return None if t is None else t[rows[:, None], cols[None, :], last1[:, None], last2[None, :]]

        v1 = out.var1[rows, last1, last1]
        v2 = v1 if out.var2 is out.var1 else out.var2[cols, last2, last2]
        return out.replace(nngp=final(out.nngp), ntk=final(out.ntk), var1=v1, var2=v2, shape=(self.width,), full=False)

    def _sequence_kernel(self, k: Kernel) -> Kernel:
        """The kernel of the hidden-state sequence from the input's (no padding), in the input's layout."""
        shape = sequence_shape(self, k.shape)
        coef = self._coefficients(k)
        full = k.full
        s1 = self._chain(k._position_variances(k.var1), coef)
        s2 = s1 if k.var2 is k.var1 else self._chain(k._position_variances(k.var2), coef)
        q1 = self.activation.diagonal(s1)
        q2 = q1 if s2 is s1 else self.activation.diagonal(s2)

        def self_kernel(var, s, q):
            if not full:
                return q

            def pin(values, r):
                values.copy_(q[:, r])

            return self._pairs(var, None, s, s, True, coef, pin)[0]

        var1 = self_kernel(k.var1, s1, q1)
        var2 = var1 if k.var2 is k.var1 else self_kernel(k.var2, s2, q2)
        pin = None
        if k.symmetric:  # a sequence paired with itself follows its own chain exactly
            idx = torch.arange(len(q1), device=q1.device)

            def pin(values, t):
                values[idx, idx] = q1[:, t]

        nngp, ntk = self._pairs(k.nngp, k.ntk, s1[:, None, :], s2[None, :, :], full, coef, pin)
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=(self.width, shape[1]))

    # -- finite module --------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        shape = sequence_shape(self, spec.shape)
        return RecurrentModule(self, None if shape is None else shape[0], seed=ctx.seed())


def last_step(k: Kernel) -> Kernel:
    """The kernel of the last time step's features (vectors) from a sequence kernel in either layout."""
    def last(t, lead):
        if t is None:
            return None
        return t[(slice(None),) * lead + ((-1, -1) if k.full else (-1,))]

    var1 = last(k.var1, 1)
    var2 = var1 if k.var2 is k.var1 else last(k.var2, 1)
    return k.replace(nngp=last(k.nngp, 2), ntk=last(k.ntk, 2), var1=var1, var2=var2, shape=k.shape[:1], full=False)


class RecurrentModule(LazyModuleMixin, nn.Module):
    """Finite Elman network of :class:`Recurrent`: parameters ``weight_hh`` (n, n), ``weight_ih`` (n, d)
    and ``bias`` (n; absent when b_std is None), all N(0, 1) in the 'ntk' parameterization and scaled
    at use, or N(0, w_std^2 / n), N(0, u_std^2 / d), N(0, b_std^2) in the 'standard' one. Initialized
    from a private generator seeded with ``seed`` (eager or lazy alike)."""

    cls_to_become = None

    def __init__(self, layer: Recurrent, in_channels: int | None, seed: int):
        super().__init__()
        self.layer, self.seed, self.in_channels = layer, seed, in_channels
        n = layer.width
        self.weight_hh = nn.Parameter(torch.empty(n, n))
        self.weight_ih = UninitializedParameter() if in_channels is None else nn.Parameter(torch.empty(n, in_channels))
        if layer.b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(layer.bias_terms, n))  # summed at use (torch's b_ih + b_hh)
        if in_channels is not None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        layer, n, d = self.layer, self.layer.width, self.in_channels
        gen = torch.Generator().manual_seed(self.seed)
        standard = layer.parameterization == "standard"
        b_scale = (layer.b_std or 0.0) / math.sqrt(layer.bias_terms)
        scales = (layer.w_std / math.sqrt(n), layer.u_std / math.sqrt(d), b_scale) if standard else (1, 1, 1)
        with torch.no_grad():
            for param, scale in zip((self.weight_hh, self.weight_ih, self.bias), scales):
                if param is not None:
                    param.copy_((torch.randn(param.shape, generator=gen, dtype=torch.float64) * scale).to(param))

    def initialize_parameters(self, x: Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            self.in_channels = x.shape[1]
            with torch.no_grad():
                self.weight_ih.materialize((self.layer.width, self.in_channels), dtype=x.dtype, device=x.device)
                self.weight_hh.data = self.weight_hh.data.to(dtype=x.dtype, device=x.device)
                if self.bias is not None:
                    self.bias.data = self.bias.data.to(dtype=x.dtype, device=x.device)
            self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if x.ndim != 3 or x.shape[1] != self.in_channels or x.shape[2] < 1:
            raise ValueError(f"RecurrentModule expects sequences (N, {self.in_channels}, L) with L >= 1, got {tuple(x.shape)}")
        n, d = layer.width, self.in_channels
        w_hh, w_ih, bias = self.weight_hh, self.weight_ih, self.bias
        if layer.parameterization == "ntk":
            w_hh, w_ih = w_hh * (layer.w_std / math.sqrt(n)), w_ih * (layer.u_std / math.sqrt(d))
            bias = None if bias is None else bias * (layer.b_std / math.sqrt(layer.bias_terms))
        bias = None if bias is None else bias.sum(0)
        inputs = x.movedim(2, 0) @ w_ih.T  # (L, N, n): every step's input term in one product
        if bias is not None:
            inputs = inputs + bias
        h, states = None, []
        for t in range(len(inputs)):
            g = inputs[t] if h is None else inputs[t] + h @ w_hh.T
            h = layer.activation.fn(g)
            states.append(h)
        return torch.stack(states, 2) if layer.return_sequence else h

    def extra_repr(self) -> str:
        return repr(self.layer)
