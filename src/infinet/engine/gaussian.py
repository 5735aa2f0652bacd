"""Gaussian expectations of activations: the one home for E[phi(u) phi(v)] and E[phi'(u) phi'(v)].

For (u, v) jointly Gaussian with zero mean, Var u = ``var1``, Var v = ``var2`` and Cov(u, v) = ``cov``,
every function here returns ``(nngp, kdot)``:

* ``nngp = E[phi(u) phi(v)]``  (the NNGP map of the activation, Neal 1996; Lee et al. 2018, eq. 4),
* ``kdot = E[phi'(u) phi'(v)]`` (the derivative kernel of the NTK recursion, Jacot et al. 2018, Thm. 1),

broadcasting over ``cov``, ``var1`` and ``var2``. ``kdot`` is ``None`` when ``need_kdot`` is false.
Closed forms are used where they exist; :func:`quadrature` is an accurate bivariate rule for any
elementwise function. Kernels (``infinet.layers``), mean-field theory and the infinite-depth ODE all
call these functions; none of them integrates a Gaussian on its own.

Degenerate inputs are legal: a zero variance (a zero input row) gives the exact limit with the
derivative convention of PyTorch's autograd at 0 (for example relu'(0) = 0), and correlations at
+-1 never produce NaN.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from torch import Tensor

from . import chebyshev as _chebyshev

Pair = tuple[Tensor, Tensor | None]

_TWO_PI = 2.0 * math.pi


def _broadcast(cov: Tensor, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.broadcast_tensors(cov, var1, var2)


def clamp_unit(rho: Tensor) -> Tensor:
    """Clamp a correlation to [-1, 1], treating |rho| within 4 ulps of 1 as exactly +-1.

    Kernel entries determine rho only to a few ulps, and arccos amplifies an error d near rho = 1 to
    sqrt(2 d) (1.5e-8 in float64 for d = 1 ulp), which would break the exact rank deficiency (and
    positive semi-definiteness) of kernels of collinear inputs. Scaling by 1 + 4 eps before the
    clamp snaps those values to +-1 and changes no other rho by more than 4 ulps.
    """
    return torch.clamp(rho * (1.0 + 4.0 * torch.finfo(rho.dtype).eps), -1.0, 1.0)


def pair_norm(var1: Tensor, var2: Tensor) -> Tensor:
    """sqrt(var1 var2) without overflow or underflow of the product.

    Inside the safe range it is sqrt(fl(var1 var2)), which is exactly q when var1 = var2 = q (IEEE
    arithmetic), so that rho = 1 exactly on the diagonal; where a variance is so large (or so small)
    that the product would overflow (or lose precision), sqrt(var1) sqrt(var2) instead. Negative
    variances count as 0.
    """
    return _pair_norm(var1, var2, product_safe(var1, var2))


def product_safe(var1: Tensor, var2: Tensor) -> bool:
    """Whether var1 var2 can be formed without overflow or loss of precision (see :func:`pair_norm`)."""
    fi = torch.finfo(var1.dtype)
    high, low = math.sqrt(fi.max) / 4.0, math.sqrt(fi.tiny) * 4.0
    risky = lambda v: bool(((v > high) | ((v > 0) & (v < low))).any())  # noqa: E731
    return not (risky(var1) or risky(var2))


def _pair_norm(var1: Tensor, var2: Tensor, safe: bool) -> Tensor:
    var1, var2 = torch.clamp(var1, min=0.0), torch.clamp(var2, min=0.0)
    return torch.sqrt(var1 * var2) if safe else torch.sqrt(var1) * torch.sqrt(var2)


def correlation(cov: Tensor, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(rho, sqrt(var1 * var2), nondegenerate)`` with rho clamped to [-1, 1].

    Where a variance is zero, ``rho`` is 0 and ``nondegenerate`` is False, so that formulas written in
    rho stay finite; callers mask those entries with their exact limit.
    """
    norm = pair_norm(var1, var2)
    nondegenerate = norm > 0
    safe = torch.where(nondegenerate, norm, torch.ones_like(norm))
    rho = torch.where(nondegenerate, cov / safe, torch.zeros_like(cov))
    return clamp_unit(rho), norm, nondegenerate


def bounded_covariance(cov: Tensor, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(cov', rho, norm)`` with cov' = rho sqrt(var1 var2) and rho from :func:`correlation`.

    Every closed form written in ``cov`` goes through this first, so that |cov'| <= sqrt(var1 var2)
    (Cauchy-Schwarz) holds exactly: entries that round-off put a few ulps outside it (identical
    inputs whose Gram entry and norms were summed in different orders) become exactly +-sqrt(var1 var2).
    In the chaotic phase (chi_1 > 1) the correlation map amplifies such errors by chi_1 per layer, so
    without this a deep kernel loses positive semi-definiteness and eventually overflows.
    """
    rho, norm, _ = correlation(cov, var1, var2)
    return rho * norm, rho, norm


def _one_minus_r2(rho: Tensor, e1: Tensor, e2: Tensor) -> Tensor:
    """1 - rho^2 (1 - e1)(1 - e2) without cancellation: (1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2)."""
    return torch.clamp((1.0 - rho) * (1.0 + rho) + rho * rho * (e1 + e2 - e1 * e2), min=0.0)


# ---------------------------------------------------------------------------------------------
# Arc-cosine kernels of every order (Cho and Saul 2009, eq. 6), for phi_k(x) = x^k 1(x > 0).
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def arccos_polynomials(order: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients (lowest degree first) of p_n, q_n with J_n(theta) = p_n(c) sin(theta) + q_n(c) (pi - theta).

    Cho and Saul 2009, eq. 7, define J_n(theta) = (-1)^n sin(theta)^(2n+1) (1/sin d/dtheta)^n
    ((pi - theta)/sin theta). With c = cos(theta) and s = sin(theta) the operator is -d/dc, and
    d^n/dc^n [(pi - arccos c)/s] = (p_n s + q_n (pi - arccos c)) / s^(2n+1) with p_0 = 0, q_0 = 1 and
    p_{n+1} = (1 - c^2) p_n' + 2n c p_n + q_n,  q_{n+1} = (1 - c^2) q_n' + (2n + 1) c q_n,
    computed here exactly in integers.
    """
    if order < 0:
        raise ValueError(f"arc-cosine kernel order must be >= 0, got {order}")
    p: list[int] = [0]
    q: list[int] = [1]
    for n in range(order):
        p, q = _arccos_step(p, q, n)
    return tuple(float(v) for v in p), tuple(float(v) for v in q)


def _arccos_step(p: list[int], q: list[int], n: int) -> tuple[list[int], list[int]]:
    def deriv(a: list[int]) -> list[int]:
        return [i * a[i] for i in range(1, len(a))] or [0]

    def add(*polys: list[int]) -> list[int]:
        out = [0] * max(len(a) for a in polys)
        for a in polys:
            for i, v in enumerate(a):
                out[i] += v
        return out

    def one_minus_c2(a: list[int]) -> list[int]:
        return add(a, [0, 0] + [-v for v in a])

    def times_c(a: list[int], k: int) -> list[int]:
        return [0] + [k * v for v in a]

    p_next = add(one_minus_c2(deriv(p)), times_c(p, 2 * n), q)
    q_next = add(one_minus_c2(deriv(q)), times_c(q, 2 * n + 1))
    return p_next, q_next


def _horner(coefficients: Sequence[float], x: Tensor) -> Tensor:
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def arccos_kernel(order: int, cov: Tensor, var1: Tensor, var2: Tensor) -> Tensor:
    """E[phi_k(u) phi_k(v)] for phi_k(x) = x^k 1(x > 0): (var1 var2)^(k/2) J_k(theta) / (2 pi).

    Cho and Saul 2009, eqs. 6-7 (their kernel is twice this expectation); theta = arccos(rho).
    Exact for every integer order k >= 0; zero where either variance is zero.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    rho, norm, ok = correlation(cov, var1, var2)
    p, q = arccos_polynomials(order)
    sin = torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0))
    angle = math.pi - torch.arccos(rho)
    j = _horner(p, rho) * sin + _horner(q, rho) * angle
    value = norm**order * j / _TWO_PI if order else j / _TWO_PI
    return torch.where(ok, value, torch.zeros_like(value))


# ---------------------------------------------------------------------------------------------
# Closed forms.
# ---------------------------------------------------------------------------------------------
def arccos_order1(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """(E[relu(u) relu(v)], P(u > 0, v > 0)) sharing one arccos: the hot path of ReLU networks.

    E[relu relu] = sqrt(var1 var2) (sin(theta) + (pi - theta) cos(theta)) / (2 pi) and
    P(u > 0, v > 0) = (pi - theta) / (2 pi), theta = arccos(rho) (Cho and Saul 2009, eq. 6).
    Written as a dozen fused elementwise passes over ``cov``; both are 0 where a variance is 0
    (relu(0) = 0 and relu'(0) = 0 under autograd).
    """
    if torch.is_grad_enabled() and (cov.requires_grad or var1.requires_grad or var2.requires_grad):
        return _arccos_order1_autograd(cov, var1, var2, need_kdot)
    return _arccos_order1(cov, var1, var2, need_kdot, *elementwise_flags(var1, var2))


def elementwise_flags(var1: Tensor, var2: Tensor) -> tuple[bool, bool]:
    """(some variance is <= 0, var1 var2 is safe to form): the two facts about the (small) variance
    tensors that the elementwise formulas branch on, decided once outside them (so that the formulas
    compile to one fused loop, see :mod:`infinet.fused`)."""
    return bool((var1 <= 0).any()) or bool((var2 <= 0).any()), product_safe(var1, var2)


def _arccos_order1(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool, degenerate: bool,
                   safe: bool) -> Pair:
    """:func:`arccos_order1` given :func:`elementwise_flags`: elementwise work only, no branch on data."""
    # each step below is one elementwise pass; in-place ops touch only temporaries made here.
    # rho = cov / sqrt(var1 var2) is exactly 1 where cov = var1 = var2 (sqrt(fl(q^2)) = q in IEEE
    # arithmetic), which keeps arccos(rho) exact on the diagonal.
    norm = _pair_norm(var1, var2, safe)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm)) if degenerate else norm
    rho = torch.div(cov, safe).mul_(1.0 + 4.0 * torch.finfo(cov.dtype).eps).clamp_(-1.0, 1.0)  # clamp_unit
    angle = torch.rsub(torch.arccos(rho), math.pi)  # pi - theta
    c = 1.0 / _TWO_PI  # folded into the passes: c sqrt(1 - rho^2) = sqrt(c^2 - c^2 rho^2)
    nngp = torch.addcmul(rho.new_full((), c * c), rho, rho, value=-c * c).sqrt_().addcmul_(angle, rho, value=c)
    nngp = nngp.mul_(norm)
    if not need_kdot:
        return nngp, None
    kdot = angle.mul_(c)
    if degenerate:
        kdot = torch.where(norm > 0, kdot, torch.zeros_like(kdot))
    return nngp, kdot


class _ReluCorrelation(torch.autograd.Function):
    """J(rho) = sqrt(1 - rho^2) + (pi - arccos rho) rho, with dJ/drho = pi - arccos(rho): finite at
    rho = +-1, where the derivatives of the two terms are infinite and cancel."""

    @staticmethod
    def forward(ctx, rho: Tensor) -> Tensor:
        angle = math.pi - torch.arccos(rho)
        ctx.save_for_backward(angle)
        return torch.sqrt(torch.clamp(1.0 - rho * rho, min=0.0)) + angle * rho

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (angle,) = ctx.saved_tensors
        return grad * angle


class _ReluAngle(torch.autograd.Function):
    """pi - arccos(rho), with derivative 1 / sqrt(1 - rho^2) inside (-1, 1) and 0 at rho = +-1 (where
    only the diagonal, or exactly collinear inputs, sit: their rho does not move with hyperparameters)."""

    @staticmethod
    def forward(ctx, rho: Tensor) -> Tensor:
        ctx.save_for_backward(rho)
        return math.pi - torch.arccos(rho)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (rho,) = ctx.saved_tensors
        inside = rho.abs() < 1.0
        return torch.where(inside, grad / torch.sqrt(torch.where(inside, 1.0 - rho * rho, 1.0)), 0.0)


def _arccos_order1_autograd(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool) -> Pair:
    """:func:`arccos_order1` out of place with finite derivatives everywhere, for differentiating
    kernels with respect to hyperparameters (:mod:`infinet.fitting`)."""
    cov, var1, var2 = _broadcast(cov, var1, var2)
    rho, norm, ok = correlation(cov, var1, var2)
    nngp = torch.where(ok, norm * _ReluCorrelation.apply(rho) / _TWO_PI, 0.0)
    if not need_kdot:
        return nngp, None
    return nngp, torch.where(ok, _ReluAngle.apply(rho) / _TWO_PI, 0.0)


def abrelu(a: float, b: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a min(x, 0) + b max(x, 0) = a x + (b - a) relu(x).

    nngp = a b cov + (b - a)^2 E[relu(u) relu(v)] (arc-cosine kernel of order 1, Cho and Saul 2009);
    kdot = a^2 + a (b - a) (P(u > 0) + P(v > 0)) + (b - a)^2 (pi - theta) / (2 pi).
    """
    if torch.is_grad_enabled() and (cov.requires_grad or var1.requires_grad or var2.requires_grad):
        return _abrelu(a, b, *arccos_order1(cov, var1, var2, need_kdot), cov, var1, var2, need_kdot)
    return abrelu_step(cov, None, var1, var2, a, b, need_kdot, *elementwise_flags(var1, var2))


def abrelu_step(cov: Tensor, ntk: Tensor | None, var1: Tensor, var2: Tensor, a: float, b: float,
                need_kdot: bool, degenerate: bool, safe: bool):
    """One ABRelu layer's elementwise work (:func:`abrelu`) given :func:`elementwise_flags`: (nngp, kdot)
    when ``ntk`` is None, else (nngp, kdot x ntk), the new NTK (Jacot et al. 2018). Pure and free of
    branches on data, so :mod:`infinet.fused` compiles it into one loop over the tile."""
    relu, both = _arccos_order1(cov, var1, var2, need_kdot or ntk is not None, degenerate, safe)
    nngp, kdot = _abrelu(a, b, relu, both, cov, var1, var2, need_kdot or ntk is not None)
    return (nngp, kdot) if ntk is None else (nngp, kdot * ntk)


def _abrelu(a, b, relu, both, cov, var1, var2, need_kdot):
    """ABRelu's expectations from ReLU's (see :func:`abrelu`)."""
    nngp = relu * (b - a) ** 2 if b - a != 1.0 else relu
    if a != 0.0:
        nngp = torch.add(nngp, cov, alpha=a * b)
    if not need_kdot:
        return nngp, None
    kdot = both * (b - a) ** 2 if b - a != 1.0 else both
    if a != 0.0:
        positive = 0.5 * ((var1 > 0).to(cov.dtype) + (var2 > 0).to(cov.dtype))
        kdot = kdot + (a * a + a * (b - a) * positive)
    return nngp, kdot


def sign(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi = sign: nngp = (2 / pi) arcsin(rho) (0 where a variance is 0, as sign(0) = 0).

    The derivative is zero almost everywhere, so kdot = 0: parameters before a Sign receive no
    gradient, exactly as in the finite network under autograd.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    rho, _, ok = correlation(cov, var1, var2)
    nngp = torch.where(ok, torch.arcsin(rho) * (2.0 / math.pi), torch.zeros_like(rho))
    return nngp, (torch.zeros_like(nngp) if need_kdot else None)


def rectified_monomial(degree: int, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = x^k 1(x > 0): the arc-cosine kernel of order k; kdot = k^2 (arc-cosine of order k - 1).

    Cho and Saul 2009, eqs. 6-7. For k = 0 (the step function) kdot = 0 (zero gradient a.e.).
    """
    if degree == 1:  # ReLU: the fused path shared with abrelu
        return arccos_order1(cov, var1, var2, need_kdot)
    nngp = arccos_kernel(degree, cov, var1, var2)
    if not need_kdot:
        return nngp, None
    if degree == 0:
        return nngp, torch.zeros_like(nngp)
    return nngp, degree * degree * arccos_kernel(degree - 1, cov, var1, var2)


def erf(a: float, b: float, c: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a erf(b x) + c (Williams 1997, eq. 11).

    nngp = a^2 (2/pi) arcsin(2 b^2 cov / sqrt((1 + 2 b^2 var1)(1 + 2 b^2 var2))) + c^2,
    kdot = a^2 b^2 (4/pi) / sqrt((1 + 2 b^2 var1)(1 + 2 b^2 var2) - 4 b^4 cov^2).
    Evaluated in overflow-free form: with e_i = 1 / (1 + 2 b^2 var_i), the arcsin argument is
    r = 2 b^2 cov sqrt(e1 e2) and 1 - r^2 = (1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2), so the result
    stays finite for every finite variance (erf is bounded) and exact near rho = +-1.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, rho, _ = bounded_covariance(cov, var1, var2)
    b2 = b * b
    x1, x2 = 2.0 * b2 * torch.clamp(var1, min=0.0), 2.0 * b2 * torch.clamp(var2, min=0.0)
    e1, e2 = 1.0 / (1.0 + x1), 1.0 / (1.0 + x2)
    root_e = torch.sqrt(e1) * torch.sqrt(e2)
    if bool(torch.isfinite(x1).all()) and bool(torch.isfinite(x2).all()):
        r = cov * torch.sqrt(e1) * torch.sqrt(e2) * (2.0 * b2)  # no factor overflows: |2 b^2 cov| <= max x
    else:  # 2 b^2 var beyond the float range: r = rho sqrt(x1 e1 x2 e2), with x e = 1 where x is inf
        ge = lambda x, e: torch.sqrt(torch.where(torch.isinf(x), 1.0, x * e))  # noqa: E731
        r = rho * ge(x1, e1) * ge(x2, e2)
    r = torch.clamp(r, -1.0, 1.0)
    root = torch.sqrt(_one_minus_r2(rho, e1, e2))
    nngp = a * a * (2.0 / math.pi) * torch.atan2(r, root) + c * c
    if not need_kdot:
        return nngp, None
    kdot = a * a * b2 * (4.0 / math.pi) * root_e / root
    return nngp, kdot


def gelu(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = x Phi(x) (Hendrycks and Gimpel 2016), exact (not the tanh approximation).

    With P = var1 var2, P1 = (1 + var1)(1 + var2), D = sqrt(P1 - cov^2) and A = arctan2(cov, D)
    (Tsuchida et al. 2021, "Avoiding kernel fixed points", sec. 3; as in neural-tangents):
    nngp = cov / 4 + [cov A + (cov^2 + P D^2) / (P1 D)] / (2 pi),
    kdot = 1/4 + A / (2 pi) + cov (1/D^2 + (1 - P)/P1 + 1) / (2 pi D).
    Evaluated without forming P, P1 or cov^2 (which overflow at variances near 1e154 while the result,
    of the order of the variance, is representable): with e_i = 1 / (1 + var_i) and r = cov sqrt(e1 e2),
    (cov^2 + P D^2) / (P1 D) = r^2 / D + var1 e1 var2 e2 D, D = sqrt(1 - r^2) / sqrt(e1 e2) and
    1 - r^2 = (1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2).
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, rho, _ = bounded_covariance(cov, var1, var2)
    v1, v2 = torch.clamp(var1, min=0.0), torch.clamp(var2, min=0.0)
    e1, e2 = 1.0 / (1.0 + v1), 1.0 / (1.0 + v2)
    root_e = torch.sqrt(e1) * torch.sqrt(e2)
    r = torch.clamp(cov * torch.sqrt(e1) * torch.sqrt(e2), -1.0, 1.0)
    root = torch.sqrt(_one_minus_r2(rho, e1, e2))
    delta = root / root_e
    angle = torch.atan2(r, root)
    ratio = (v1 * e1) * (v2 * e2)  # P / P1
    nngp = 0.25 * cov + (cov * angle + r * r / delta + ratio * delta) / _TWO_PI
    if not need_kdot:
        return nngp, None
    t = cov / delta
    kdot = 0.25 + angle / _TWO_PI + t * (1.0 / (delta * delta) + e1 * e2 - ratio + 1.0) / _TWO_PI
    return nngp, kdot


def sin(a: float, b: float, c: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a sin(b x + c), from E[cos(w)] = exp(-Var(w)/2) for Gaussian w.

    nngp = (a^2/2) [exp(-b^2 (var1 + var2 - 2 cov)/2) - cos(2c) exp(-b^2 (var1 + var2 + 2 cov)/2)],
    kdot = (a^2 b^2/2) [exp(-b^2 (var1 + var2 - 2 cov)/2) + cos(2c) exp(-b^2 (var1 + var2 + 2 cov)/2)],
    with cov kept within +-sqrt(var1 var2) (:func:`bounded_covariance`; identical inputs then have
    var1 + var2 - 2 cov = 0 exactly) and the halves formed without overflow.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, _, _ = bounded_covariance(cov, var1, var2)
    half = 0.5 * torch.clamp(var1, min=0.0) + 0.5 * torch.clamp(var2, min=0.0)
    minus = torch.exp(-b * b * torch.clamp(half - cov, min=0.0))
    plus = math.cos(2.0 * c) * torch.exp(-b * b * torch.clamp(half + cov, min=0.0))
    nngp = 0.5 * a * a * (minus - plus)
    return nngp, (0.5 * a * a * b * b * (minus + plus) if need_kdot else None)


def exp(a: float, b: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a exp(b x): nngp = a^2 exp(b^2 (var1 + var2 + 2 cov) / 2), kdot = b^2 nngp (log-normal moments).

    Grows without bound with the variances; an overflow is reported by the kernel driver.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, _, _ = bounded_covariance(cov, var1, var2)
    nngp = a * a * torch.exp(b * b * (0.5 * var1 + 0.5 * var2 + cov))
    return nngp, (b * b * nngp if need_kdot else None)


def gaussian(a: float, b: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a exp(b x^2), with D = (1 - 2 b var1)(1 - 2 b var2) - 4 b^2 cov^2.

    nngp = a^2 / sqrt(D) and kdot = 4 a^2 b^2 cov / D^(3/2) (Gaussian integral of exp of a quadratic
    form, det(I - 2 b Sigma)^(-1/2)). With e_i = 1 / (1 - 2 b var_i), D = (1 - r^2) / (e1 e2) where
    1 - r^2 = (1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2) for either sign of b, evaluated so that
    nothing overflows. For b > 0, E[phi(u)^2] = a^2 / sqrt(1 - 4 b var) is finite only for
    var < 1 / (4 b); otherwise a ValueError.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    if b > 0 and bool(torch.any(torch.maximum(var1, var2) >= 1.0 / (4.0 * b))):
        raise ValueError(
            f"Gaussian(b={b}): E[exp(2 b u^2)] is infinite for input variance >= 1/(4b) = {1 / (4 * b):g}; "
            "lower the variance or use b < 0"
        )
    cov, rho, _ = bounded_covariance(cov, var1, var2)
    e1 = 1.0 / (1.0 - 2.0 * b * torch.clamp(var1, min=0.0))
    e2 = 1.0 / (1.0 - 2.0 * b * torch.clamp(var2, min=0.0))
    root_e = torch.sqrt(e1) * torch.sqrt(e2)
    q = _one_minus_r2(rho, e1, e2)
    nngp = a * a * root_e / torch.sqrt(q)
    if not need_kdot:
        return nngp, None
    kdot = 4.0 * a * a * b * b * (cov * torch.sqrt(e1) * torch.sqrt(e2)) * (e1 * e2) / (q * torch.sqrt(q))
    return nngp, kdot


def rbf(gamma: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4), whose dual is the RBF kernel (neural-tangents' ``Rbf``):

    nngp = exp(-gamma (var1 + var2 - 2 cov)) (= exp(-gamma |x - x'|^2 / d) on inputs), kdot = 2 gamma nngp;
    :func:`sin` with a = sqrt(2), b = sqrt(2 gamma), c = pi/4, where cos(2c) = 0 drops the second term
    (Rahimi and Recht 2007, random Fourier features). Identical inputs give exactly 1.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, _, _ = bounded_covariance(cov, var1, var2)
    half = 0.5 * torch.clamp(var1, min=0.0) + 0.5 * torch.clamp(var2, min=0.0)
    nngp = torch.exp(-2.0 * gamma * torch.clamp(half - cov, min=0.0))
    return nngp, (2.0 * gamma * nngp if need_kdot else None)


def gabor(cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = exp(-x^2) sin(x) (neural-tangents' ``Gabor``).

    The Gaussian factor folds into the covariance: for Sigma = [[a, c], [c, b]],
    N(z; Sigma) exp(-|z|^2) = det(I + 2 Sigma)^(-1/2) N(z; Sigma') with Sigma' = Sigma (I + 2 Sigma)^(-1)
    = [[a + 2 delta, c], [c, b + 2 delta]] / D, delta = ab - c^2, D = det(I + 2 Sigma) = 1 + 2(a + b) + 4 delta;
    then E[sin u sin v] under Sigma' (see :func:`sin`) gives, with s = a + b + 4 delta,

        nngp = (Em - Ep) / (2 sqrt(D)),  Em = exp(-(s - 2c) / (2D)),  Ep = exp(-(s + 2c) / (2D)),

    and kdot = d nngp / dc (Price 1958) = 4c D^(-3/2) (Em - Ep) / 2 + (Em gm - Ep gp) / (2 sqrt(D)) with
    gm = ((8c + 2) D - 8c (s - 2c)) / (2 D^2), gp = ((8c - 2) D - 8c (s + 2c)) / (2 D^2). delta is formed as
    ab (1 - rho)(1 + rho) (no cancellation).
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, rho, _ = bounded_covariance(cov, var1, var2)
    a, b = torch.clamp(var1, min=0.0), torch.clamp(var2, min=0.0)
    delta = a * b * (1.0 - rho) * (1.0 + rho)
    d = 1.0 + 2.0 * (a + b) + 4.0 * delta
    s = a + b + 4.0 * delta
    e_minus = torch.exp(-(s - 2.0 * cov) / (2.0 * d))
    e_plus = torch.exp(-(s + 2.0 * cov) / (2.0 * d))
    root = torch.sqrt(d)
    nngp = (e_minus - e_plus) / (2.0 * root)
    if not need_kdot:
        return nngp, None
    g_minus = ((8.0 * cov + 2.0) * d - 8.0 * cov * (s - 2.0 * cov)) / (2.0 * d * d)
    g_plus = ((8.0 * cov - 2.0) * d - 8.0 * cov * (s + 2.0 * cov)) / (2.0 * d * d)
    kdot = 2.0 * cov * (e_minus - e_plus) / (d * root) + (e_minus * g_minus - e_plus * g_plus) / (2.0 * root)
    return nngp, kdot


def exp_normalized(gamma: float, shift: float, cov: Tensor, var1: Tensor, var2: Tensor,
                   need_kdot: bool = True) -> Pair:
    """The normalized Gaussian kernel of Shankar, Fang, Guo, Fridovich-Keil, Schmidt, Ragan-Kelley and
    Recht 2020 ("Neural kernels without tangents", Sec. 3; neural-tangents' ``ExpNormalized``):

        nngp = sqrt(var1 var2) exp(gamma (rho + shift)),  kdot = gamma exp(gamma (rho + shift)),

    rho = cov / sqrt(var1 var2) clamped to [-1, 1] (so neural-tangents' ``do_clip`` is always on);
    zero variance gives 0. For gamma >= 0 it is the dual of the normalized activation
    r g(y / r), g = sum_n sqrt(exp(gamma shift) gamma^n / n!) He_n / sqrt(n!) (Mehler), r the
    root-mean-square over channels (see :class:`~infinet.ExpNormalized`).
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    rho, norm, nondegenerate = correlation(cov, var1, var2)
    factor = torch.exp(gamma * (rho + shift))
    nngp = torch.where(nondegenerate, norm * factor, torch.zeros_like(norm))
    return nngp, (gamma * factor if need_kdot else None)


@lru_cache(maxsize=None)
def _hermite_table(max_power: int) -> tuple[tuple[float, ...], ...]:
    """t[p][n] = coefficient of He_n in x^p: p! / (m! n! 2^m) with p - n = 2m >= 0."""
    table = []
    for p in range(max_power + 1):
        row = []
        for n in range(max_power + 1):
            m2 = p - n
            if m2 < 0 or m2 % 2:
                row.append(0.0)
            else:
                m = m2 // 2
                row.append(float(Fraction(math.factorial(p), math.factorial(m) * math.factorial(n) * 2**m)))
        table.append(tuple(row))
    return tuple(table)


def _polynomial_moment(coefficients: Sequence[float], cov: Tensor, var1: Tensor, var2: Tensor) -> Tensor:
    """E[P(u) P(v)] = sum_n n! cov^n A_n(var1) A_n(var2), A_n(q) = sum_m a_{n+2m} t[n+2m][n] q^m.

    This is the Hermite (Mehler) expansion x^p = sum_n t[p][n] He_n(x) with E[He_n He_m] = n! rho^n
    delta_nm, rescaled to variances so that no division by a variance occurs (exact at zero variance).
    """
    degree = len(coefficients) - 1
    table = _hermite_table(degree)
    total = torch.zeros_like(cov)
    cov_power = torch.ones_like(cov)
    for n in range(degree + 1):
        a1 = torch.zeros_like(var1)
        a2 = torch.zeros_like(var2)
        for m in range((degree - n) // 2 + 1):
            p = n + 2 * m
            if coefficients[p] == 0.0:
                continue
            weight = coefficients[p] * table[p][n]
            a1 = a1 + weight * var1**m
            a2 = a2 + weight * var2**m
        total = total + math.factorial(n) * cov_power * a1 * a2
        cov_power = cov_power * cov
    return total


def polynomial(
    coefficients: Sequence[float], cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True
) -> Pair:
    """phi(x) = sum_p coefficients[p] x^p, exact for any degree via the Hermite expansion (Mehler 1866).

    kdot is the same moment of the derivative polynomial sum_p p coefficients[p] x^(p-1).
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    cov, _, _ = bounded_covariance(cov, var1, var2)
    coefficients = [float(c) for c in coefficients] or [0.0]
    nngp = _polynomial_moment(coefficients, cov, var1, var2)
    if not need_kdot:
        return nngp, None
    derivative = [p * coefficients[p] for p in range(1, len(coefficients))] or [0.0]
    return nngp, _polynomial_moment(derivative, cov, var1, var2)


def monomial(degree: int, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = x^k: E[u^k v^k] = sum_n n! cov^n (t[k][n])^2 (var1 var2)^((k-n)/2) (see :func:`polynomial`)."""
    return polynomial([0.0] * degree + [1.0], cov, var1, var2, need_kdot)


def price_kdot(nngp_fn: Callable[[Tensor, Tensor, Tensor], Tensor], cov: Tensor, var1: Tensor, var2: Tensor) -> Tensor:
    """kdot = d nngp / d cov by Price's theorem (Price 1958): d/dcov E[f(u) g(v)] = E[f'(u) g'(v)].

    Used for user closed forms given without their derivative kernel; computed by autograd.
    """
    with torch.enable_grad():
        c = cov.detach().clone().requires_grad_(True)
        value = nngp_fn(c, var1.detach(), var2.detach())
        (grad,) = torch.autograd.grad(value.sum(), c)
    return grad


# ---------------------------------------------------------------------------------------------
# Quadrature for any elementwise function.
# ---------------------------------------------------------------------------------------------
_HALF_WIDTH = 9.0  # |z| > 9 carries Gaussian mass < 3e-19; r > 9 carries 3e-18


@lru_cache(maxsize=None)
def _graded_rule(panels: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre rule on [0, 1], panels [2^-j, 2^-(j-1)] graded geometrically toward 0."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = [0.0] + [2.0 ** -(panels - 1 - j) for j in range(panels)]
    xs, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        xs.append(lo + (hi - lo) * (x + 1.0) / 2.0)
        ws.append((hi - lo) * w / 2.0)
    return np.concatenate(xs), np.concatenate(ws)


def _panels_for(scale: float, min_panels: int) -> int:
    """Panels such that the innermost one is no wider than 1/scale (the activation's feature size)."""
    if scale * _HALF_WIDTH <= 1.0:
        return min_panels
    return max(min_panels, 1 + math.ceil(math.log2(_HALF_WIDTH * scale)))


def _as(a: np.ndarray, dtype, device) -> Tensor:
    return torch.as_tensor(a, dtype=dtype, device=device)


def _half_line_rule(scale: float, nodes: int, extra_panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [0, 9]: [0, 1] graded toward 0 down to the activation's scale 1/scale,
    [1, 9] in equal panels of width 1 (fine enough for r^k exp(-r^2/2) at the accuracy claimed)."""
    return _half_line_template(_panels_for(scale / _HALF_WIDTH, 2) + extra_panels, nodes, extra_panels)


@lru_cache(maxsize=None)
def _half_line_template(graded_panels: int, nodes: int, extra_panels: int) -> tuple[np.ndarray, np.ndarray]:
    t, tw = _graded_rule(graded_panels, nodes)
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(1.0, _HALF_WIDTH, 8 + 4 * extra_panels + 1)
    ut = np.concatenate([lo + (hi - lo) * (x + 1.0) / 2.0 for lo, hi in zip(edges[:-1], edges[1:])])
    uw = np.concatenate([(hi - lo) * w / 2.0 for lo, hi in zip(edges[:-1], edges[1:])])
    return np.concatenate([t, ut]), np.concatenate([tw, uw])


def _line_rule(scale: float, nodes: int, extra_panels: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Nodes and weights (standard normal density included) on [-9, 9]."""
    t, tw = _half_line_rule(scale, nodes, extra_panels)
    z = _as(np.concatenate([-t[::-1], t]), dtype, device)
    w = _as(np.concatenate([tw[::-1], tw]), dtype, device)
    return z, w * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _radial_rule(scale: float, nodes: int, extra_panels: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Radius nodes on [0, 9], with the weight r exp(-r^2 / 2) included."""
    t, tw = _half_line_rule(scale, nodes, extra_panels)
    r = _as(t, dtype, device)
    return r, _as(tw, dtype, device) * r * torch.exp(-0.5 * r * r)


def _arc_rule(scale: float, nodes: int, extra_panels: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Template on [0, 1] graded toward both ends (the kink rays bounding an arc)."""
    t, tw = _graded_rule(_panels_for(scale * math.pi, 4) + extra_panels, nodes)
    both = np.concatenate([0.5 * t, 1.0 - 0.5 * t[::-1]])
    return _as(both, dtype, device), _as(np.concatenate([0.5 * tw, 0.5 * tw[::-1]]), dtype, device)


def _derivative(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def dfn(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # keep phi' differentiable (hyperparameter fitting)
            y = fn(x)
            if not y.requires_grad:
                return torch.zeros_like(x)
            return torch.autograd.grad(y.sum(), x, create_graph=True)[0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = fn(xg)
            if not y.requires_grad:  # piecewise-constant functions (comparisons): zero derivative
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), xg)
        return g

    return dfn


def quadrature(
    fn: Callable[[Tensor], Tensor],
    cov: Tensor,
    var1: Tensor,
    var2: Tensor,
    need_kdot: bool = True,
    dfn: Callable[[Tensor], Tensor] | None = None,
    nodes: int = 8,
    extra_panels: int = 0,
    max_elements: int = 2**22,
) -> Pair:
    """E[phi(u) phi(v)] and E[phi'(u) phi'(v)] for any elementwise ``fn`` by graded polar quadrature.

    With u = s1 z1, v = s2 (rho z1 + sqrt(1 - rho^2) z2), z = r (cos a, sin a) and cos(beta) = rho,
    E[phi(u) phi(v)] = (1 / 2 pi) int_0^2pi da int_0^inf r exp(-r^2/2) phi(s1 r cos a) phi(s2 r cos(a - beta)) dr.
    The arguments of phi vanish on four rays, a = pi/2, pi/2 + beta, 3 pi/2, 3 pi/2 + beta, which cut
    the circle into four arcs whose edges are exactly the kinks (ReLU, ELU), jumps (step, sign) and
    steep transitions (tanh at large variance) of activations whose features sit at 0, for every rho
    including rho -> +-1. Each arc carries a composite Gauss-Legendre rule graded geometrically toward
    both ends; the radius a rule on [0, 9] graded toward 0 (mass beyond r = 9 is 3e-18). The innermost
    panels are no wider than the activation's own scale 1 / s_max, so convergence is exponential on
    every panel. phi' comes from autograd when ``dfn`` is None.

    Accuracy (tests/test_gaussian.py, against ``nodes=16, extra_panels=2``): better than 1e-9 relative
    to sqrt(E[phi(u)^2] E[phi(v)^2]) (and likewise for phi') for tanh, logistic sigmoid, softplus,
    SiLU, ELU, GELU, erf and the ReLU family over rho in [-1, 1] and variances in [1e-4, 1e4].
    Out of scope: kinks away from 0 (algebraic convergence), oscillation or growth on a scale much
    smaller than the standard deviation (sin or exp at large variance; those have closed forms).
    Cost: (radial nodes) x (angular nodes), about 2e4 evaluations per entry at unit variance, more
    (logarithmically) at large variance; chunked to ``max_elements`` evaluations at a time.
    """
    cov, var1, var2 = _broadcast(cov, var1, var2)
    check_quadrature_range(var1, var2)
    differentiate = torch.is_grad_enabled() and (cov.requires_grad or var1.requires_grad or var2.requires_grad)
    if cov.numel() >= UNIFORM_MIN_ENTRIES and not differentiate:
        out = _uniform_variance(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels)
        if out is not None:
            return out
    return _direct_quadrature(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels, max_elements, differentiate)


#: largest variance at which :func:`quadrature` is verified (tests/test_gaussian.py: tanh against its
#: large-variance asymptotics to 1e-11 up to 1e40); beyond it a ValueError, never a silent value
QUADRATURE_MAX_VARIANCE = 1e40


def check_quadrature_range(*variances: Tensor) -> None:
    """Raise a ValueError naming the accurate range when a variance exceeds :data:`QUADRATURE_MAX_VARIANCE`."""
    for var in variances:
        if var.numel() and not bool((var.detach() <= QUADRATURE_MAX_VARIANCE).all()):
            worst = float(var.detach().max())
            raise ValueError(
                f"pre-activation variance {worst:.3g} is outside the accurate range of bivariate quadrature "
                f"(variances 0 to {QUADRATURE_MAX_VARIANCE:.0e}); lower w_std or b_std"
            )


def _direct_quadrature(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels, max_elements, differentiate):
    shape, dtype, device = cov.shape, cov.dtype, cov.device
    cov_f, var1_f, var2_f = cov.reshape(-1), var1.reshape(-1), var2.reshape(-1)
    if cov_f.numel() == 0:
        empty = torch.zeros(shape, dtype=dtype, device=device)
        return empty, (empty.clone() if need_kdot else None)
    scale = math.sqrt(max(float(var1_f.detach().max()), float(var2_f.detach().max()), 0.0))
    radius, radial_w = _radial_rule(scale, nodes, extra_panels, dtype, device)
    arc_t, arc_w = _arc_rule(scale, nodes, extra_panels, dtype, device)
    derivative = dfn if dfn is not None else _derivative(fn)
    if differentiate:  # backward holds a chunk's graph (phi, phi' and their derivatives): smaller chunks
        max_elements = max(1, max_elements // 4)
    chunk = max(1, max_elements // (radius.numel() * 4 * arc_t.numel()))
    nngp_parts, kdot_parts = [], []
    for start in range(0, cov_f.numel(), chunk):
        sl = slice(start, start + chunk)
        args = (fn, derivative, need_kdot, cov_f[sl], var1_f[sl], var2_f[sl], radius, radial_w, arc_t, arc_w)
        if differentiate:  # differentiating (hyperparameter fitting): keep only each chunk's inputs, recompute in backward
            n_val, k_val = checkpoint(_polar_chunk, *args, use_reentrant=False)
        else:
            n_val, k_val = _polar_chunk(*args)
        nngp_parts.append(n_val)
        kdot_parts.append(k_val)
    nngp = torch.cat(nngp_parts).reshape(shape)
    kdot = torch.cat(kdot_parts).reshape(shape) if need_kdot else None
    return nngp, kdot


#: quadrature calls with at least this many entries try the uniform-variance interpolation first
UNIFORM_MIN_ENTRIES = 256
#: relative spread of the variances below which they count as one (its effect is of the same order)
UNIFORM_VARIANCE_RTOL = 1e-13
#: resolution asked of the interpolant: trailing Chebyshev coefficients below this x max value
UNIFORM_TOL = 2e-11
_UNIFORM_FITS: dict = {}  # recent fits (or None: not resolved), oldest first


def _uniform_variance(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels) -> Pair | None:
    """When every variance is the same v (fully-connected layers on inputs of equal norm, as after the
    usual projection to the sphere), E[phi(u) phi(v)] and E[phi'(u) phi'(v)] are functions of rho alone:
    quadrature at Chebyshev-Lobatto points in rho, then Chebyshev interpolation (see
    :mod:`infinet._chebyshev`), used only if the trailing coefficients show it resolved to
    ``UNIFORM_TOL`` (smooth activations; a kink such as ELU's falls back to direct quadrature).
    Cost: a few hundred quadratures plus a degree-n Clenshaw pass per entry, instead of ~1e4
    evaluations per entry."""
    low, high = torch.aminmax(torch.stack([var1.detach().amin(), var2.detach().amin(),
                                           var1.detach().amax(), var2.detach().amax()]))
    v = float(high)
    if not (float(low) > 0 and v - float(low) <= UNIFORM_VARIANCE_RTOL * v):
        return None

    def values(rho: Tensor) -> Tensor:
        var = torch.full_like(rho, v)
        n_val, k_val = _direct_quadrature(fn, rho * v, var, var, need_kdot, dfn, nodes, extra_panels, 2**22, False)
        return torch.stack([n_val, k_val]) if need_kdot else n_val[None]

    # tiles of one layer share v up to round-off: one fit serves them all (keyed on fn: dfn is fn')
    key = (fn, need_kdot, nodes, extra_panels, cov.dtype, str(cov.device), float(f"{v:.12e}"))
    if key in _UNIFORM_FITS:
        c = _UNIFORM_FITS[key]
    else:
        c = _chebyshev.fit(values, UNIFORM_TOL, dtype=cov.dtype, device=cov.device)
        _UNIFORM_FITS[key] = c
        if len(_UNIFORM_FITS) > 64:
            _UNIFORM_FITS.pop(next(iter(_UNIFORM_FITS)))
    if c is None:
        return None
    rho = clamp_unit(cov / v)
    nngp = _chebyshev.evaluate(c[0], rho)
    return nngp, (_chebyshev.evaluate(c[1], rho) if need_kdot else None)


def _polar_chunk(fn, dfn, need_kdot, cov, var1, var2, radius, radial_w, arc_t, arc_w):
    rho, _, _ = correlation(cov, var1, var2)
    beta = torch.arccos(rho)
    zero = torch.zeros_like(beta)
    # four arcs: [pi/2, pi/2 + beta], [pi/2 + beta, 3pi/2], [3pi/2, 3pi/2 + beta], [3pi/2 + beta, 5pi/2]
    starts = torch.stack([zero, beta, zero, beta], dim=-1) + cov.new_tensor([0.5, 0.5, 1.5, 1.5]) * math.pi
    lengths = torch.stack([beta, math.pi - beta, beta, math.pi - beta], dim=-1)
    angle = (starts[:, :, None] + lengths[:, :, None] * arc_t).reshape(len(cov), -1, 1)
    weight = (lengths[:, :, None] * arc_w).reshape(len(cov), -1, 1) * (radial_w / (2.0 * math.pi))
    s1 = torch.sqrt(torch.clamp(var1, min=0.0))[:, None, None]
    s2 = torch.sqrt(torch.clamp(var2, min=0.0))[:, None, None]
    u = s1 * torch.cos(angle) * radius
    v = s2 * torch.cos(angle - beta[:, None, None]) * radius
    nngp = (fn(u) * fn(v) * weight).sum((-1, -2))
    if not need_kdot:
        return nngp, None
    return nngp, (dfn(u) * dfn(v) * weight).sum((-1, -2))


def quadrature_diagonal(
    fn: Callable[[Tensor], Tensor], var: Tensor, nodes: int = 8, extra_panels: int = 0
) -> Tensor:
    """E[phi(u)^2] for u ~ N(0, var): Gauss-Legendre on [-9, 9] graded toward 0 (as in :func:`quadrature`)."""
    if var.numel() == 0:
        return torch.zeros_like(var)
    check_quadrature_range(var)
    z, w = _line_rule(math.sqrt(max(float(var.detach().max()), 0.0)), nodes, extra_panels, var.dtype, var.device)
    u = torch.sqrt(torch.clamp(var, min=0.0))[..., None] * z
    return (fn(u) ** 2 * w).sum(-1)
