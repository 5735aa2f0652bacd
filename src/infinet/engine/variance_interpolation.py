"""Quadrature expectations at unequal variances at the cost of a polynomial: a three-dimensional Chebyshev
interpolant of E[phi(u) phi(v)] and E[phi'(u) phi'(v)] in (rho, log var1, log var2) (Trefethen 2013,
"Approximation Theory and Approximation Practice", chs. 3-4 and 8, tensor-product interpolation; Mason and
Handscomb 2003, "Chebyshev Polynomials", ch. 5 for the multivariate series and its truncation bound).

**Construction.** On the variance range [v_lo, v_hi] of one call (every entry's two variances), with
t = affine map of log v onto [-1, 1], the values at the tensor grid of Chebyshev-Lobatto points (rho_a, t_m,
t_m') come from the same graded polar rule as :func:`infinet.gaussian.quadrature`, written as a matrix
product: at a fixed rho the rule's points (r cos a, r cos(a - beta)) and weights are those of every variance
pair, so with Phi1[m, p] = phi(s_m X_p) and Phi2[m', p] = phi(s_m' Y_p) the whole (m, m') block is
Phi1 diag(W) Phi2^T, O(M P) evaluations of phi instead of O(M^2 P).

**Certificate.** The coefficients c[k, m, m'] of the interpolant (a type-I DCT along each axis) are accepted
only when, along each of the three axes, the trailing quarter is below ``TOL`` x max |f| (the estimate of the
interpolation error that :func:`infinet.engine.chebyshev.fit` uses in one dimension); a failing axis gets the
next degree, and when none suffices (a kink: ELU; a variance range too wide for the largest degree) the caller
falls back to direct quadrature. Trailing coefficients are then dropped while the sum of their absolute values
(a bound on the change, |T_k| <= 1) stays below ``TOL`` x max |f|.

**Evaluation.** With A1[i, m] = T_m(t(var1_i)), A2[j, m'] likewise,
f(rho_ij, i, j) = sum_k T_k(rho_ij) (A1 C_k A2^T)_ij: for each k a matrix product over the pair axes (the
variances of a kernel entry are those of its rows and of its columns), then one step of Clenshaw's recurrence
over the entries: O(K) passes per entry.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from . import chebyshev

#: resolution asked of the interpolant (trailing coefficients, and the dropped ones' sum, below TOL x max |f|)
TOL = 2e-11
#: degrees tried along rho and along each log variance
RHO_DEGREES = (32, 64, 128, 256)
VAR_DEGREES = (8, 12, 16, 24, 32, 48)
#: widest variance ratio v_hi / v_lo one interpolant covers (wider: direct quadrature)
MAX_RATIO = 1e8
_TABLES: list = []  # recent (key, domain, Table or None: not resolved), newest last
_MAX_TABLES = 32
_LOCK = threading.Lock()


class Table:
    """Coefficients ``c`` (F, K, M, M') of F functions (nngp, kdot) on log variances [lo, hi]."""

    def __init__(self, c: Tensor, lo: float, hi: float):
        self.c, self.lo, self.hi = c, lo, hi

    def basis(self, var: Tensor) -> Tensor:
        """T_m(t(var)) for m < M, shape var.shape + (M,)."""
        t = ((2.0 * torch.log(var) - (self.lo + self.hi)) / (self.hi - self.lo)).clamp(-1.0, 1.0)
        out = [torch.ones_like(t), t]
        for _ in range(2, self.c.shape[2]):
            out.append(2.0 * t * out[-1] - out[-2])
        return torch.stack(out[: self.c.shape[2]], -1)


def expectations(values_at, cov: Tensor, var1: Tensor, var2: Tensor, key: tuple) -> list | None:
    """[E[phi phi], E[phi' phi']] on the broadcast of ``cov``, ``var1``, ``var2`` (``var1`` / ``var2`` in their own,
    un-broadcast shapes, float64) from an interpolant built by ``values_at(rho_nodes, s_nodes, scale)`` ((2, K, M,
    M) values at the correlations and standard deviations given); None when the variances are not all positive,
    their ratio exceeds MAX_RATIO, or no degree resolves the table."""
    lo_v, hi_v = float(torch.minimum(var1.min(), var2.min())), float(torch.maximum(var1.max(), var2.max()))
    if not (lo_v > 0 and math.isfinite(hi_v) and hi_v / lo_v <= MAX_RATIO):
        return None
    table = _table(values_at, math.log(lo_v), math.log(hi_v), key)
    if table is None:
        return None
    return evaluate(table, cov, var1, var2)


def _table(values_at, lo: float, hi: float, key: tuple) -> Table | None:
    """The table for ``key`` on [lo, hi] rounded outward to even units of log v (factors of e^2), built once per
    process and kept: the rounding is the whole of the choice, so a tile's values never depend on which tiles
    were computed before it (resumed and clean runs agree bit for bit), and tiles and layers with nearby ranges
    share a table. One build at a time (the tile pool's workers wait for it instead of repeating it)."""
    lo, hi = 2.0 * math.floor(lo / 2.0), 2.0 * math.ceil(hi / 2.0)
    hi = hi if hi > lo else lo + 2.0
    with _LOCK:
        for k, domain, table in _TABLES:
            if k == key and domain == (lo, hi):
                return table
        table = build(values_at, lo, hi)
        _TABLES.append((key, (lo, hi), table))
        if len(_TABLES) > _MAX_TABLES:
            _TABLES.pop(0)
        return table


def _coefficients_along(values: Tensor, dim: int) -> Tensor:
    return chebyshev.coefficients(values.movedim(dim, -1)).movedim(-1, dim)


def _resolved(c: Tensor, scale: Tensor, dim: int) -> bool:
    """Whether the trailing quarter of the coefficients along ``dim`` is below TOL x scale (per function)."""
    n = c.shape[dim] - 1
    tail = c.narrow(dim, n + 1 - n // 4, n // 4).abs()
    return bool((tail.flatten(1).amax(1) <= TOL * scale).all())


def _rho_nodes(k: int) -> Tensor:
    return torch.sin(0.5 * math.pi * chebyshev.lobatto_points(k))  # Lobatto points in x = (2 / pi) arcsin(rho)


def _s_nodes(m: int, lo: float, hi: float) -> Tensor:
    return torch.exp(0.25 * (lo + hi + (hi - lo) * chebyshev.lobatto_points(m)))  # sqrt(v) at Lobatto points in t


def _first_resolved(degrees, values_of, dim: int) -> int:
    """Index of the first degree whose probe values are resolved along ``dim`` (the last index when none is)."""
    for i, n in enumerate(degrees):
        values = values_of(n)
        c = _coefficients_along(values, dim)
        size = values.flatten(1).abs().amax(1).clamp(min=torch.finfo(values.dtype).tiny)
        if _resolved(c, size, dim):
            return i
    return len(degrees) - 1


def build(values_at, lo: float, hi: float) -> Table | None:
    """The certified interpolant on log variances [lo, hi] (see the module docstring), or None. The degrees are
    first probed on lines of the grid (rho at the largest variance, where the rho dependence is steepest; the
    variances at a few correlations), then the whole grid is computed and certified, escalating a failing axis.
    ``values_at(rho, s, scale)`` gets the largest standard deviation as the scale of its quadrature rule."""
    scale = math.exp(0.5 * hi)
    s_hi = torch.tensor([math.exp(0.5 * hi)], dtype=torch.float64)
    ri = _first_resolved(RHO_DEGREES, lambda k: values_at(_rho_nodes(k), s_hi, scale), 1)
    probe = _rho_nodes(4)
    vi = _first_resolved(VAR_DEGREES, lambda m: values_at(probe, _s_nodes(m, lo, hi), scale), 2)
    while ri < len(RHO_DEGREES) and vi < len(VAR_DEGREES):
        values = values_at(_rho_nodes(RHO_DEGREES[ri]), _s_nodes(VAR_DEGREES[vi], lo, hi), scale)
        c = values
        for dim in (1, 2, 3):
            c = _coefficients_along(c, dim)
        size = values.flatten(1).abs().amax(1).clamp(min=torch.finfo(values.dtype).tiny)
        rho_ok, var_ok = _resolved(c, size, 1), _resolved(c, size, 2) and _resolved(c, size, 3)
        if rho_ok and var_ok:
            return Table(_truncated(c, size), lo, hi)
        ri, vi = ri + (not rho_ok), vi + (not var_ok)
    return None


def _truncated(c: Tensor, size: Tensor) -> Tensor:
    """Drop trailing coefficients along rho and along the variances while the dropped ones' absolute sum stays
    below TOL x size (half the budget to each)."""
    budget = 0.5 * TOL * size[:, None]

    def keep(per_index: Tensor) -> int:  # per_index: (F, n) absolute sums per index along the axis
        tail = per_index.flip(1).cumsum(1).flip(1)  # sum from index i to the end
        ok = (tail <= budget).all(0)
        n = per_index.shape[1]
        first = int(torch.nonzero(ok).min()) if bool(ok.any()) else n
        return max(first, 1)

    k = keep(c.abs().sum((2, 3)))
    c = c[:, :k]
    m = max(keep(c.abs().sum((1, 3))), keep(c.abs().sum((1, 2))))
    return c[:, :, :m, :m].contiguous()


def _pair(b1: Tensor, a2: Tensor) -> Tensor:
    """sum_m b1[..., m] a2[..., m] over the broadcast of the two leading shapes, as a matrix product: axes where
    one side has size 1 are the other's rows (or columns), axes both have are a batch."""
    s1, s2 = b1.shape[:-1], a2.shape[:-1]
    letters = "abcdefghijklnopqrstuvwxyz"
    in1, in2, out = [], [], []
    x1, x2 = b1, a2
    for d in reversed(range(len(s1))):
        if s1[d] == 1 and s2[d] > 1:
            x1 = x1.squeeze(d)
        elif s2[d] == 1 and s1[d] > 1:
            x2 = x2.squeeze(d)
    for d in range(len(s1)):
        letter = letters[d]
        if not (s1[d] == 1 and s2[d] > 1):
            in1.append(letter)
        if not (s2[d] == 1 and s1[d] > 1):
            in2.append(letter)
        out.append(letter)
    return torch.einsum(f"{''.join(in1)}m,{''.join(in2)}m->{''.join(out)}", x1, x2)


def evaluate(table: Table, cov: Tensor, var1: Tensor, var2: Tensor) -> list:
    """The interpolant at every entry (Clenshaw's recurrence along rho, matrix products along the variances)."""
    ndim = max(cov.ndim, var1.ndim, var2.ndim)
    var1 = var1.reshape((1,) * (ndim - var1.ndim) + var1.shape)
    var2 = var2.reshape((1,) * (ndim - var2.ndim) + var2.shape)
    dtype = cov.dtype  # the basis in the variances' precision (float64 here), everything after in the kernel's
    a1, a2 = table.basis(var1).to(dtype), table.basis(var2).to(dtype)
    var1, var2 = var1.to(dtype), var2.to(dtype)
    rho = torch.clamp((cov / torch.sqrt(var1 * var2)) * (1.0 + 4.0 * torch.finfo(dtype).eps), -1.0, 1.0)
    rho = torch.arcsin(rho).mul_(2.0 / math.pi)  # the interpolation variable
    two_rho = 2.0 * rho
    out = []
    for c in table.c.to(dtype=cov.dtype, device=cov.device):  # each function
        b1, b2 = torch.zeros_like(rho), torch.zeros_like(rho)
        for k in range(c.shape[0] - 1, -1, -1):
            g = _pair(a1 @ c[k], a2)
            x = two_rho if k else rho
            if g.shape == rho.shape:  # b_k = c_k + 2 x b_{k+1} - b_{k+2}, in the fresh product's memory
                g.addcmul_(x, b1).sub_(b2)
            else:
                g = torch.addcmul(g - b2, x, b1)
            b1, b2 = g, b1
        out.append(b1)
    return out
