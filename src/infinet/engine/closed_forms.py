"""Gaussian expectations in closed form: the part of :mod:`infinet.engine.gaussian` (the one home of
Gaussian expectations, which re-exports every name here) that needs no quadrature.

For (u, v) jointly Gaussian with zero mean, Var u = ``var1``, Var v = ``var2`` and Cov(u, v) = ``cov``,
every activation's function returns ``(nngp, kdot)`` = (E[phi(u) phi(v)], E[phi'(u) phi'(v)]), broadcasting
over the three; also the shared helpers (correlations clamped to [-1, 1], pair norms that never overflow)
that the quadrature rules use too. Each formula names its source where it is defined.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import Tensor

Pair = tuple[Tensor, Tensor | None]

_TWO_PI = 2.0 * math.pi


def broadcast_pair(cov: Tensor, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``cov``, ``var1`` and ``var2`` broadcast to one shape (every expectation here is elementwise over them)."""
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


def _product_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """(low, high): positive variances in [low, high] form products without overflow or loss of precision."""
    fi = torch.finfo(dtype)
    return math.sqrt(fi.tiny) * 4.0, math.sqrt(fi.max) / 4.0


def product_safe(var1: Tensor, var2: Tensor) -> bool:
    """Whether var1 var2 can be formed without overflow or loss of precision (see :func:`pair_norm`)."""
    low, high = _product_bounds(var1.dtype)
    risky = lambda v: bool(((v > high) | ((v > 0) & (v < low))).any())  # noqa: E731
    return not (risky(var1) or risky(var2))


def positive_and_product_safe(*variances: Tensor) -> bool:
    """Whether every variance is positive, finite and safe to multiply (:func:`product_safe`): all within
    [4 sqrt(tiny), sqrt(max) / 4] (NaN is not), by one min-max reduction per tensor. What the compiled closed-form
    loops need of their variances."""
    for v in variances:
        if v.numel():
            low, high = _product_bounds(v.dtype)
            least, most = torch.aminmax(v)
            if not (low <= float(least) and float(most) <= high):  # NaN fails both
                return False
    return True


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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
        nngp = nngp + (a * b) * cov  # not torch.add(alpha=): compiled, that lost the term (torch 2.13)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    1 - r^2 = (1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2), and (1 - P)/P1 + 1 = (2 + var1 + var2)/P1 = e1 + e2
    (written as e1 e2 - var1 e1 var2 e2 + 1 it cancels to nothing at large variances, where var e rounds to 1).
    """
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    kdot = 0.25 + angle / _TWO_PI + t * (1.0 / (delta * delta) + e1 + e2) / _TWO_PI
    return nngp, kdot


def sin(a: float, b: float, c: float, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> Pair:
    """phi(x) = a sin(b x + c), from E[cos(w)] = exp(-Var(w)/2) for Gaussian w.

    nngp = (a^2/2) [exp(-b^2 (var1 + var2 - 2 cov)/2) - cos(2c) exp(-b^2 (var1 + var2 + 2 cov)/2)],
    kdot = (a^2 b^2/2) [exp(-b^2 (var1 + var2 - 2 cov)/2) + cos(2c) exp(-b^2 (var1 + var2 + 2 cov)/2)],
    with cov kept within +-sqrt(var1 var2) (:func:`bounded_covariance`; identical inputs then have
    var1 + var2 - 2 cov = 0 exactly) and the halves formed without overflow.
    """
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
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


__all__ = ["Pair", "abrelu", "abrelu_step", "arccos_kernel", "arccos_order1", "arccos_polynomials", "bounded_covariance", "clamp_unit", "correlation", "elementwise_flags", "erf", "exp", "exp_normalized", "gabor", "gaussian", "gelu", "monomial", "pair_norm", "polynomial", "positive_and_product_safe", "price_kdot", "product_safe", "rbf", "rectified_monomial", "sign", "sin"]
