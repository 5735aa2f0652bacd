"""Gaussian expectations of activations: the one home for E[phi(u) phi(v)] and E[phi'(u) phi'(v)].

For (u, v) jointly Gaussian with zero mean, Var u = ``var1``, Var v = ``var2`` and Cov(u, v) = ``cov``,
every function here returns ``(nngp, kdot)``:

* ``nngp = E[phi(u) phi(v)]``  (the NNGP map of the activation, Neal 1996; Lee et al. 2018, eq. 4),
* ``kdot = E[phi'(u) phi'(v)]`` (the derivative kernel of the NTK recursion, Jacot et al. 2018, Thm. 1),

broadcasting over ``cov``, ``var1`` and ``var2``. ``kdot`` is ``None`` when ``need_kdot`` is false.
Closed forms are used where they exist (:mod:`infinet.engine.closed_forms`, every name of which is
importable from here); :func:`quadrature` is an accurate bivariate rule for any elementwise function. Kernels (``infinet.layers``), mean-field theory and the infinite-depth ODE all
call these functions; none of them integrates a Gaussian on its own.

Degenerate inputs are legal: a zero variance (a zero input row) gives the exact limit with the
derivative convention of PyTorch's autograd at 0 (for example relu'(0) = 0), and correlations at
+-1 never produce NaN.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import chebyshev as _chebyshev
from .closed_forms import *  # noqa: F401,F403  (the closed forms: one home for all Gaussian expectations)
from .closed_forms import Pair, broadcast_pair, clamp_unit, correlation


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


def autograd_derivative(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """phi' of an elementwise ``fn`` by autograd (zero where ``fn`` does not depend on its input), itself
    differentiable when its input requires grad: the derivative kernel's integrand where no closed form is given."""
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
    identity=None,
    joint: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
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

    Calls of at least ``UNIFORM_MIN_ENTRIES`` entries (not differentiated) instead evaluate an interpolant of
    this rule built once per process: in rho alone when every variance is the same, else in (rho, log var1,
    log var2) (:mod:`infinet.engine.variance_interpolation`), each certified to ``2e-11`` x max |f| by its
    trailing Chebyshev coefficients or not used (kinks away from 0, variance ratios beyond 1e8, zero
    variances). The environment variable ``INFINET_QUADRATURE=direct`` turns the second off. ``identity``: a
    hashable that determines ``fn`` and ``dfn`` (infinet's activations pass their class and arguments), so that
    every layer of that kind shares the interpolants; by default the two functions themselves. ``joint``: (phi(x),
    phi'(x)) in one evaluation where the two share work (tanh: 1 - tanh^2), for building the interpolants.
    """
    cov, var1, var2 = broadcast_pair(cov, var1, var2)
    own1, own2 = compact(var1), compact(var2)  # checks read each variance once, not once per entry
    check_quadrature_range(own1, own2)
    differentiate = torch.is_grad_enabled() and (cov.requires_grad or var1.requires_grad or var2.requires_grad)
    if cov.numel() >= UNIFORM_MIN_ENTRIES and not differentiate:
        out = _uniform_variance(fn, cov, own1, own2, need_kdot, dfn, nodes, extra_panels)
        if out is None and os.environ.get("INFINET_QUADRATURE", "interpolate") != "direct":
            out = _interpolated(fn, cov, own1, own2, need_kdot, dfn, nodes, extra_panels, identity, joint)
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
    if differentiate:
        nngp, kdot = _DifferentiableQuadrature.apply(cov, var1, var2,
                                                     (fn, need_kdot, dfn, nodes, extra_panels, max_elements))
        return nngp, (kdot if need_kdot else None)
    return _quadrature_values(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels, max_elements, None)


class _DifferentiableQuadrature(torch.autograd.Function):
    """Quadrature whose gradient never holds a chunk's graph: the expectations act entrywise, so their
    Jacobian is diagonal: three partial derivatives per entry and output (d/dcov, d/dvar1, d/dvar2), taken by
    autograd one chunk at a time in the forward pass and kept, O(entries) memory. The backward pass is then
    a product with them, itself differentiable in the incoming gradient (scikit-learn's kernel gradient
    differentiates it once more in that, hyperparameter fitting does not); second derivatives in the
    hyperparameters through quadrature are not formed (they come out as zero)."""

    @staticmethod
    def forward(ctx, cov, var1, var2, options):
        fn, need_kdot, dfn, nodes, extra_panels, max_elements = options
        partials: list = []
        nngp, kdot = _quadrature_values(fn, cov.detach(), var1.detach(), var2.detach(), need_kdot, dfn, nodes,
                                        extra_panels, max(1, max_elements // 4), partials)
        ctx.save_for_backward(*partials)
        ctx.need_kdot = need_kdot
        return nngp, (kdot if need_kdot else torch.zeros_like(nngp))

    @staticmethod
    def backward(ctx, grad_nngp, grad_kdot):
        saved = ctx.saved_tensors
        grads = [grad_nngp * saved[i] for i in range(3)]
        if ctx.need_kdot and grad_kdot is not None:
            grads = [g + grad_kdot * saved[3 + i] for i, g in enumerate(grads)]
        return grads[0], grads[1], grads[2], None


def _chunk_with_partials(fn, derivative, need_kdot, cov, var1, var2, rule) -> tuple:
    """One chunk's values and their partial derivatives in (cov, var1, var2), by autograd on the chunk alone."""
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (cov, var1, var2)]
        n_val, k_val = _polar_chunk(fn, derivative, need_kdot, *inputs, *rule)
        d_n = torch.autograd.grad(n_val.sum(), inputs, retain_graph=need_kdot, allow_unused=True)
        d_k = torch.autograd.grad(k_val.sum(), inputs, allow_unused=True) if need_kdot else (None,) * 3
    zero = torch.zeros_like(cov)
    return (n_val.detach(), None if k_val is None else k_val.detach(),
            [zero if d is None else d for d in d_n] + [zero if d is None else d for d in d_k])


def _quadrature_values(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels, max_elements, partials):
    """The polar rule over all entries, chunked; with ``partials`` (a list) also the six partial derivatives
    (nngp then kdot, each in cov, var1, var2), appended to it in the entries' shape."""
    shape, dtype, device = cov.shape, cov.dtype, cov.device
    cov_f, var1_f, var2_f = cov.reshape(-1), var1.reshape(-1), var2.reshape(-1)
    if cov_f.numel() == 0:
        empty = torch.zeros(shape, dtype=dtype, device=device)
        if partials is not None:
            partials.extend(empty.clone() for _ in range(6))
        return empty, (empty.clone() if need_kdot else None)
    scale = math.sqrt(max(float(var1_f.detach().max()), float(var2_f.detach().max()), 0.0))
    radius, radial_w = _radial_rule(scale, nodes, extra_panels, dtype, device)
    arc_t, arc_w = _arc_rule(scale, nodes, extra_panels, dtype, device)
    derivative = dfn if dfn is not None else autograd_derivative(fn)
    chunk = max(1, max_elements // (radius.numel() * 4 * arc_t.numel()))
    rule = (radius, radial_w, arc_t, arc_w)
    nngp_parts, kdot_parts, partial_parts = [], [], []
    for start in range(0, cov_f.numel(), chunk):
        sl = slice(start, start + chunk)
        if partials is None:
            n_val, k_val = _polar_chunk(fn, derivative, need_kdot, cov_f[sl], var1_f[sl], var2_f[sl], *rule)
        else:
            n_val, k_val, d = _chunk_with_partials(fn, derivative, need_kdot, cov_f[sl], var1_f[sl], var2_f[sl], rule)
            partial_parts.append(d)
        nngp_parts.append(n_val)
        kdot_parts.append(k_val)
    if partials is not None:
        partials.extend(torch.cat([p[i] for p in partial_parts]).reshape(shape) for i in range(6))
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


def compact(t: Tensor) -> Tensor:
    """``t`` without the axes a broadcast expanded (stride 0): the shape its values really have."""
    for d in range(t.ndim):
        if t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def _interpolated(fn, cov, var1, var2, need_kdot, dfn, nodes, extra_panels, identity=None,
                  joint=None) -> Pair | None:
    """Unequal variances: the certified interpolant in (rho, log var1, log var2) of
    :mod:`infinet.engine.variance_interpolation`, built from this module's polar rule (None: not resolved).
    ``identity``: a hashable that determines ``fn`` and ``dfn`` (see :func:`quadrature`), else the two functions;
    ``joint``: both at once (see :func:`quadrature`)."""
    from . import variance_interpolation
    from .tiles import idle_threads_map

    derivative = dfn if dfn is not None else autograd_derivative(fn)
    both = joint if joint is not None else (lambda z: (fn(z), derivative(z)))
    device = cov.device

    def values_at(rho: Tensor, s: Tensor, scale: float) -> Tensor:
        rho, s = rho.to(device), s.to(device)
        radius, radial_w = _radial_rule(scale, nodes, extra_panels, torch.float64, device)
        arc_t, arc_w = _arc_rule(scale, nodes, extra_panels, torch.float64, device)
        x, _, w = _polar_points(rho, radius, radial_w, arc_t, arc_w)  # (E, arcs x t, radii)
        # the points in two halves P, Q with Y_P = X_Q and Y_Q = X_P point by point, and equal weights
        # (_mirrored_halves): sum_p phi(s X_p) W_p phi(s' Y_p) = A + A^T, A = (phi(s X_P) W_P) phi(s' X_Q)^T
        order = _mirrored_halves(len(arc_t), device)
        half = len(order) // 2
        x, w = x[:, order], w[:, order[:half]]
        # blocks of one correlation, all arc points and at most 2^18 evaluations (2 MB): a block's arrays stay in
        # cache and in the heap a thread already holds (whole rows of points were MBs each, and on the tile
        # pool's threads cost millions of page faults)
        parts = range(len(rho))
        step = max(1, 2**18 // (len(s) * x.shape[1]))

        def block(i):  # phi and phi' (both, always: one table serves all calls) at the same points
            totals = [None, None]
            for p in range(0, x.shape[2], step):
                for f, values in enumerate(both(s[:, None, None] * x[i, None, :, p: p + step])):  # (M, arcs x t, radii)
                    first = (values[:, :half] * w[i, None, :, p: p + step]).flatten(1)
                    second = values[:, half:].flatten(1)
                    totals[f] = first @ second.T if totals[f] is None else totals[f].addmm_(first, second.T)
            return [(t + t.T)[None] for t in totals]

        blocks = idle_threads_map(block, parts) if device.type == "cpu" else [block(i) for i in parts]
        return torch.stack([torch.cat([b[f] for b in blocks]) for f in range(2)])

    key = (identity if identity is not None else (fn, dfn), nodes, extra_panels, str(device))
    values = variance_interpolation.expectations(values_at, cov, var1.to(torch.float64), var2.to(torch.float64), key)
    if values is None:
        return None
    values = [v.to(cov.dtype) for v in values]
    return values[0], (values[1] if need_kdot else None)


def _polar_points(rho: Tensor, radius, radial_w, arc_t, arc_w) -> tuple[Tensor, Tensor, Tensor]:
    """The polar rule of :func:`quadrature` at correlations ``rho`` (E,): (X, Y, W), each (E, arcs, radii), with
    u = s1 X, v = s2 Y and E[f(u, v)] = sum W f."""
    beta = torch.arccos(rho)
    zero = torch.zeros_like(beta)
    # four arcs: [pi/2, pi/2 + beta], [pi/2 + beta, 3pi/2], [3pi/2, 3pi/2 + beta], [3pi/2 + beta, 5pi/2]
    starts = torch.stack([zero, beta, zero, beta], dim=-1) + rho.new_tensor([0.5, 0.5, 1.5, 1.5]) * math.pi
    lengths = torch.stack([beta, math.pi - beta, beta, math.pi - beta], dim=-1)
    angle = (starts[:, :, None] + lengths[:, :, None] * arc_t).reshape(len(rho), -1, 1)
    weight = (lengths[:, :, None] * arc_w).reshape(len(rho), -1, 1) * (radial_w / (2.0 * math.pi))
    return torch.cos(angle) * radius, torch.cos(angle - beta[:, None, None]) * radius, weight


def _mirrored_halves(n: int, device) -> Tensor:
    """An order of the polar rule's arc points (4 arcs of the ``n`` template points, ``n`` even, in the order of
    :func:`_polar_points`) whose second half Q mirrors its first half P point by point: Y_P = X_Q, Y_Q = X_P
    (up to rounding) and W_P = W_Q. With theta = start + length t, cos(theta - beta) on the first arc at t is cos
    of the third arc's angle at 1 - t (both sin(beta (1 - t))) and the reverse; on the second and the fourth arc
    it is cos of the same arc's angle at 1 - t. The template is symmetric under t -> 1 - t (points and weights),
    so P = (arc 1, first halves of arcs 2 and 4) and Q = (arc 3 reversed, second halves of arcs 2 and 4
    reversed): phi is evaluated at X only, and the rule's sum is a matrix product and its transpose."""
    k, h = torch.arange(n, device=device), torch.arange(n // 2, device=device)
    first = torch.cat([k, n + h, 3 * n + h])
    second = torch.cat([3 * n - 1 - k, 2 * n - 1 - h, 4 * n - 1 - h])
    return torch.cat([first, second])


def _polar_chunk(fn, dfn, need_kdot, cov, var1, var2, radius, radial_w, arc_t, arc_w):
    rho, _, _ = correlation(cov, var1, var2)
    x, y, weight = _polar_points(rho, radius, radial_w, arc_t, arc_w)
    s1 = torch.sqrt(torch.clamp(var1, min=0.0))[:, None, None]
    s2 = torch.sqrt(torch.clamp(var2, min=0.0))[:, None, None]
    u, v = s1 * x, s2 * y
    nngp = (fn(u) * fn(v) * weight).sum((-1, -2))
    if not need_kdot:
        return nngp, None
    return nngp, (dfn(u) * dfn(v) * weight).sum((-1, -2))


def quadrature_diagonal(
    fn: Callable[[Tensor], Tensor], var: Tensor, nodes: int = 8, extra_panels: int = 0, identity=None
) -> Tensor:
    """E[phi(u)^2] for u ~ N(0, var): Gauss-Legendre on [-9, 9] graded toward 0 (as in :func:`quadrature`).

    Calls of at least ``DIAGONAL_MIN_VALUES`` positive variances (every position of every example, in
    convolutional networks) instead evaluate a Chebyshev interpolant of log E[phi(u)^2] in log var (Trefethen 2013,
    ch. 3), fitted to the same rule at Chebyshev-Lobatto points of the call's range rounded outward to even units
    of log var, and used only where its trailing coefficients are below ``DIAGONAL_TOL`` x max |log E[phi^2]|
    (the relative error of the values is about that absolute error of their logarithm). ``identity``: a hashable
    that determines ``fn`` (layers of one activation then share the interpolant), else ``fn`` itself."""
    if var.numel() == 0:
        return torch.zeros_like(var)
    check_quadrature_range(var)
    if var.numel() >= DIAGONAL_MIN_VALUES and not var.requires_grad:
        values = _diagonal_interpolated(fn, var, nodes, extra_panels, fn if identity is None else identity)
        if values is not None:
            return values
    return _diagonal_rule(fn, var, math.sqrt(max(float(var.detach().max()), 0.0)), nodes, extra_panels)


def _diagonal_rule(fn, var: Tensor, scale: float, nodes: int, extra_panels: int) -> Tensor:
    z, w = _line_rule(scale, nodes, extra_panels, var.dtype, var.device)
    u = torch.sqrt(torch.clamp(var, min=0.0))[..., None] * z
    return (fn(u) ** 2 * w).sum(-1)


#: quadrature_diagonal calls with at least this many variances interpolate in log var
DIAGONAL_MIN_VALUES = 256
#: resolution asked of the diagonal interpolant of log E[phi^2] (trailing coefficients below this x max |log f|)
DIAGONAL_TOL = 1e-13  # the rule's own noise floor in these coefficients is a few 1e-14 (softplus)
_DIAGONAL_FITS: dict = {}  # recent (identity, nodes, panels, dtype, device, lo, hi) -> coefficients or None


def _diagonal_interpolated(fn, var: Tensor, nodes: int, extra_panels: int, identity) -> Tensor | None:
    """:func:`quadrature_diagonal` by its interpolant in log var (None where a variance is not positive or the
    fit is not resolved: a kink of E[phi^2] in var, a zero value)."""
    low, high = torch.aminmax(var.detach())
    if not (float(low) > 0 and math.isfinite(float(high))):
        return None
    lo, hi = _chebyshev.even_units(math.log(float(low)), math.log(float(high)))
    key = (identity, nodes, extra_panels, var.dtype, str(var.device), lo, hi)
    if key not in _DIAGONAL_FITS:
        def log_values(t: Tensor) -> Tensor:
            at = torch.exp(0.5 * (lo + hi) + 0.5 * (hi - lo) * t)
            values = _diagonal_rule(fn, at, math.exp(0.5 * hi), nodes, extra_panels)
            if not bool((values > 0).all()) or not bool(torch.isfinite(values).all()):
                return torch.full_like(values, math.nan)[None]  # refused by the fit (its tail is not below tol)
            return torch.log(values)[None]

        c = _chebyshev.fit(log_values, DIAGONAL_TOL, dtype=torch.float64)
        _DIAGONAL_FITS[key] = None if c is None else c[0].to(var.device)
        if len(_DIAGONAL_FITS) > 64:
            _DIAGONAL_FITS.pop(next(iter(_DIAGONAL_FITS)))
    c = _DIAGONAL_FITS[key]
    if c is None:
        return None
    t = ((2.0 * torch.log(var.to(torch.float64)) - (lo + hi)) / (hi - lo)).clamp(-1.0, 1.0)
    return torch.exp(_chebyshev.evaluate(c, t)).to(var.dtype)
