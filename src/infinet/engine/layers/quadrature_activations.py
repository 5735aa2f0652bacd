"""Activations without a closed form: their kernels by the bivariate quadrature of :func:`infinet.gaussian.quadrature`
(E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]]); Lee et al. 2018, eq. 4;
Jacot et al. 2018, Thm. 1), large calls through its certified interpolant
(:mod:`infinet.engine.variance_interpolation`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import gaussian
from .activations import Activation


class _Quadrature(Activation):
    """Activation without a closed form: bivariate quadrature (see :func:`infinet.gaussian.quadrature`).

    Entries whose two inputs are identical (cov = var1 = var2 exactly, as for duplicated input rows)
    take the diagonal values E[phi(u)^2] and E[phi'(u)^2] of the same variance, so identical inputs
    keep identical kernel rows: the bivariate rule, its interpolant and the one-dimensional diagonal
    rule agree only to ~1e-11, and in the chaotic phase the correlation map amplifies any difference
    by chi_1 per layer.
    """

    def diagonal(self, var: Tensor) -> Tensor:
        self._check_range(var)
        identity = self.expectation_identity()
        return gaussian.quadrature_diagonal(self.fn, var, identity=None if identity is None else (identity, "phi"))

    def _check_range(self, *variances):
        try:
            gaussian.check_quadrature_range(*variances)
        except ValueError as e:
            raise ValueError(f"{self!r}: {e}") from None

    def step(self, cov: Tensor, ntk: Tensor | None, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`Activation.step` (no compiled or fused step here): E[phi'(u) phi'(v)] x ntk multiplied into the
        new expectation tensor itself where it has the product's shape (outside autograd), not into a third one."""
        nngp, kdot = self.expectations(cov, var1, var2, need_kdot=ntk is not None)
        if ntk is None:
            return nngp, None
        if kdot.shape == ntk.shape and kdot.is_contiguous() and not (
                torch.is_grad_enabled() and (kdot.requires_grad or ntk.requires_grad)):
            return nngp, kdot.mul_(ntk)
        return nngp, kdot * ntk

    def expectations(self, cov, var1, var2, need_kdot=True):
        if max(torch.as_tensor(t).ndim for t in (cov, var1, var2)) == 0:  # one entry: as a vector of one
            nngp, kdot = self.expectations(*(torch.as_tensor(t)[None] for t in (cov, var1, var2)), need_kdot)
            return nngp[0], None if kdot is None else kdot[0]
        self._check_range(var1, var2)
        nngp, kdot = super().expectations(cov, var1, var2, need_kdot)
        own1, own2 = (gaussian.compact(v.detach()).reshape(-1) for v in (var1, var2))
        if not bool(torch.isin(own1, own2).any()):  # no equal variances: no identical inputs
            return nngp, kdot
        cov, var1, var2 = torch.broadcast_tensors(cov, var1, var2)
        # the candidates first, from the variances alone (no pass over cov), then cov = var at those entries only
        at = (var1 == var2).nonzero(as_tuple=True)
        keep = (cov[at] == var1[at]) & (var1[at] > 0)
        at = tuple(i[keep] for i in at)
        if len(at[0]) == 0:
            return nngp, kdot
        values = var1[at]
        nngp = _put(nngp, at, self.diagonal(values), cov.shape)  # what the self-covariances use
        if kdot is not None:  # E[phi'(u)^2]: a one-dimensional rule, refined (it costs one line per entry)
            dfn = self.derivative() or gaussian.autograd_derivative(self.fn)
            identity = self.expectation_identity()
            own = gaussian.quadrature_diagonal(dfn, values, nodes=16, extra_panels=2,
                                               identity=None if identity is None else (identity, "dphi"))
            kdot = _put(kdot, at, own, cov.shape)
        return nngp, kdot


def _put(t: Tensor, at: tuple, values: Tensor, shape) -> Tensor:
    """``t`` broadcast to ``shape`` with ``values`` at the indices ``at``: in place on a contiguous result of that
    shape outside autograd (the caller's own new tensor), else a copy."""
    values = values.to(t.dtype)
    if t.shape != shape:
        t = t.expand(shape).contiguous()
    if t.is_contiguous() and not (torch.is_grad_enabled() and (t.requires_grad or values.requires_grad)):
        return t.index_put_(at, values)
    return t.index_put(at, values)


# ---------------------------------------------------------------- quadrature
class Tanh(_Quadrature):
    """phi = tanh; kernel by :func:`infinet.gaussian.quadrature` (no closed form)."""

    def fn(self, x):
        return torch.tanh(x)

    def derivative(self):
        return lambda x: 1.0 - torch.tanh(x) ** 2

    def value_and_derivative(self, x, need_derivative=True):
        """(tanh x, 1 - tanh^2 x) from one tanh (the derivative's own bits)."""
        t = torch.tanh(x)
        return t, ((t * t).neg_().add_(1.0) if need_derivative else None)


class Sigmoid(_Quadrature):
    """phi = logistic sigmoid 1 / (1 + exp(-x)) (the true logistic, not an erf stand-in); by quadrature."""

    def fn(self, x):
        return torch.sigmoid(x)

    def derivative(self):
        return lambda x: torch.sigmoid(x) * torch.sigmoid(-x)

    def value_and_derivative(self, x, need_derivative=True):
        """(sigma(x), sigma(x) sigma(-x)) with sigma(x) evaluated once (the derivative's own bits)."""
        s = torch.sigmoid(x)
        return s, (s * torch.sigmoid(-x) if need_derivative else None)


class Softplus(_Quadrature):
    """phi(x) = log(1 + exp(x)); by quadrature."""

    def fn(self, x):
        return torch.logaddexp(x, torch.zeros_like(x))

    def derivative(self):
        return torch.sigmoid


class Silu(_Quadrature):
    """phi(x) = x sigmoid(x) (SiLU / swish); by quadrature."""

    def fn(self, x):
        return F.silu(x)


class Elu(_Quadrature):
    """phi(x) = x for x > 0, alpha (exp(x) - 1) otherwise; by quadrature (its kink at 0 is a panel edge)."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def _args(self):
        return (self.alpha,)

    def fn(self, x):
        return F.elu(x, self.alpha)


class Elementwise(_Quadrature):
    """Any elementwise torch function ``fn``.

    Kernels by :func:`infinet.gaussian.quadrature` (phi' from autograd unless ``dfn`` is given), or from
    a closed form ``nngp_fn(cov, var1, var2) = E[fn(u) fn(v)]`` when given, with ``kdot_fn`` or, without
    it, kdot = d nngp_fn / d cov by Price's theorem (:func:`infinet.gaussian.price_kdot`).
    ``fn`` must act elementwise and accept tensors.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        dfn: Callable[[Tensor], Tensor] | None = None,
        nngp_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        kdot_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        name: str | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"Elementwise needs a callable fn, got {type(fn).__name__}")
        self._fn, self._dfn, self.nngp_fn, self.kdot_fn = fn, dfn, nngp_fn, kdot_fn
        self.name = name or getattr(fn, "__name__", "fn")

    def __repr__(self) -> str:
        return f"Elementwise({self.name})"

    def fn(self, x):
        return self._fn(x)

    def derivative(self):
        return self._dfn

    def expectation_identity(self):
        return None  # a user function: interpolants are shared by this layer only

    def expectations(self, cov, var1, var2, need_kdot=True):
        if self.nngp_fn is None:
            return super().expectations(cov, var1, var2, need_kdot)
        cov, var1, var2 = torch.broadcast_tensors(cov, var1, var2)
        nngp = self.nngp_fn(cov, var1, var2)
        if not need_kdot:
            return nngp, None
        if self.kdot_fn is not None:
            return nngp, self.kdot_fn(cov, var1, var2)
        return nngp, gaussian.price_kdot(self.nngp_fn, cov, var1, var2)

    def diagonal(self, var):
        if self.nngp_fn is None:
            return super().diagonal(var)
        return self.nngp_fn(var, var, var)
