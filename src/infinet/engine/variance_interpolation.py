"""Quadrature expectations at unequal variances at the cost of a polynomial: a three-dimensional Chebyshev
interpolant of E[phi(u) phi(v)] and E[phi'(u) phi'(v)] in (rho, log var1, log var2) (Trefethen 2013,
"Approximation Theory and Approximation Practice", chs. 3-4 and 8, tensor-product interpolation; Mason and
Handscomb 2003, "Chebyshev Polynomials", ch. 5 for the multivariate series and its truncation bound).

**Construction.** On the variance range [v_lo, v_hi] of one call (every entry's two variances), with
t = affine map of log v onto [-1, 1], the values at the tensor grid of Chebyshev-Lobatto points (rho_a, t_m,
t_m') come from the same graded polar rule as :func:`infinet.gaussian.quadrature`, written as a matrix
product: at a fixed rho the rule's points (r cos a, r cos(a - beta)) and weights are those of every variance
pair, so with Phi1[m, p] = phi(s_m X_p) and Phi2[m', p] = phi(s_m' Y_p) the whole (m, m') block is
Phi1 diag(W) Phi2^T, O(M P) evaluations of phi instead of O(M^2 P). The rule's points split into halves that
mirror each other (Y on one half is X on the other, with equal weights: ``gaussian._mirrored_halves``),
so phi is evaluated at X only and the block is A + A^T with A = Phi(X_P) diag(W_P) Phi(X_Q)^T: half the
evaluations and half the product.

**Certificate.** The coefficients c[k, m, m'] of the interpolant (a type-I DCT along each axis) are accepted
only when, along each of the three axes, the trailing quarter is below ``TOL`` x max |f| (the estimate of the
interpolation error that :func:`infinet.engine.chebyshev.fit` uses in one dimension); a failing axis gets the
next degree, and when none suffices (a kink: ELU; a variance range too wide for the largest degree) the caller
falls back to direct quadrature. Trailing coefficients are then dropped while the sum of their absolute values
(a bound on the change, |T_k| <= 1) stays below ``TOL`` x max |f|.

**Windows.** A table is built on the call's range of log v rounded outward to even units, and a call whose
range is narrower takes it restricted (:meth:`Table.restricted`: the same polynomial re-expanded, no new
quadrature) to the narrowest window of a fixed ladder that holds the range (:func:`sub_window`): its rank cut,
redone there with the same budget, keeps far fewer terms.

**Evaluation.** Each function is written as f = E(y) + x O(y) with y = 2x^2 - 1 (the even and the odd Chebyshev
terms in x; a function of one parity, as tanh's NNGP (odd) and its derivative kernel (even), has one part and
half the steps), and each coefficient matrix C_j of a part in low rank from its SVD, rank-one components dropped
smallest first while the sum of their bounds sigma |u|_1 |v|_1 stays below TOL / 2 x max |f| (:class:`Series`).
With L1 = T(t(var1)) P_j and L2 = T(t(var2)) Q_j contracted once per call (an entry's variances are those of its
row and of its column), f = sum_j T_j(y) (L1 L2^T)_j: Clenshaw's recurrence in y with one fused multiply-add and
one rank-R_j matrix product per step, over blocks small enough to stay in cache, the parts of both functions
stacked into the same passes, the loop compiled by TorchScript so that the tile pool's threads do not wait for
each other's Python (:func:`evaluate`).

Accuracy, all truncations together: at most 2 TOL x max |f| beyond the interpolation error (about TOL); against
mpmath 3e-12 relative to the entry's scale (tests/test_variance_interpolation.py).
"""

from __future__ import annotations

import math
import threading
from typing import List

import torch
from torch import Tensor

from . import chebyshev, fused, native, table_cache

#: resolution asked of the interpolant (trailing coefficients, and the dropped ones' sum, below TOL x max |f|)
TOL = 2e-11
#: degrees tried along rho and along each log variance
RHO_DEGREES = (32, 64, 128, 256)
VAR_DEGREES = (8, 12, 16, 24, 32, 48)
#: widest variance ratio v_hi / v_lo one interpolant covers (wider: direct quadrature)
MAX_RATIO = 1e8
#: the narrowest window of log variances a table is restricted to for a call (:func:`sub_window`)
MIN_WINDOW = 0.25
_TABLES: list = []  # recent (key, domain, Table or None: not resolved), newest last
_MAX_TABLES = 96
_LOCK = threading.Lock()


class Table:
    """Coefficients ``c`` (F, K, M, M) of F functions (nngp, kdot) on log variances [lo, hi], and each function as
    a :class:`Series` whose low-rank truncation changes it by at most ``budget[f]``."""

    def __init__(self, c: Tensor, lo: float, hi: float, budget: Tensor):
        self.c, self.lo, self.hi, self.budget = c, lo, hi, budget
        self.series = [Series.of(c[f], float(budget[f])) for f in range(len(c))]
        self.stacks = _stacks(self.series)
        self.native_terms = _native_terms(self.series)

    def restricted(self, lo: float, hi: float) -> "Table":
        """The same interpolant on the narrower window [lo, hi] of log variances (inside [self.lo, self.hi]), with
        no new quadrature: the polynomial re-expanded in the window's own Chebyshev basis along both variance
        axes, c'[f, k] = R^T c[f, k] R with T_m(a t' + b) = sum_n R[m, n] T_n(t') (exact: a polynomial of degree
        M - 1 through M Lobatto points, :func:`infinet.engine.chebyshev.coefficients`), then cut to low rank
        again with the same budget. The values it changes are within that budget of the parent's (the
        interpolation error is the parent's, certified on the wider window), and the variances of a narrow window
        need far fewer rank terms, often fewer steps in rho (Tanh on [-1.5, 0.5] inside [-2, 2]: 143 instead of 255
        rank terms, 34 instead of 45 terms)."""
        m = self.c.shape[-1]
        t = chebyshev.lobatto_points(max(m - 1, 1), dtype=self.c.dtype)[: m]
        parent_t = ((lo + hi) + (hi - lo) * t - (self.lo + self.hi)) / (self.hi - self.lo)
        values = self._chebyshev(parent_t).T  # T_m at the window's points, in the parent's variable
        r = chebyshev.coefficients(values) if m > 1 else torch.ones(1, 1, dtype=self.c.dtype)
        c = torch.einsum("am,fkab,bn->fkmn", r, self.c, r).contiguous()
        return Table(c, lo, hi, self.budget)

    def basis(self, var: Tensor) -> Tensor:
        """T_m(t(var)) for m < M, shape var.shape + (M,)."""
        return self._chebyshev(((2.0 * torch.log(var) - (self.lo + self.hi)) / (self.hi - self.lo)).clamp(-1.0, 1.0))

    def _chebyshev(self, t: Tensor) -> Tensor:
        """T_m(t) for m < M by the three-term recurrence, shape t.shape + (M,)."""
        out = [torch.ones_like(t), t]
        for _ in range(2, self.c.shape[2]):
            out.append(2.0 * t * out[-1] - out[-2])
        return torch.stack(out[: self.c.shape[2]], -1)


def _native_terms(series: list) -> tuple[list, list, list]:
    """The series' term layout for ``clenshaw_eval`` (native_kernels.c): per function its total rank, per function
    and part (even, odd) its number of terms, and per term the (start, end) of its columns in ``left``/``right``."""
    ranks, terms, spans = [], [], []
    for s in series:
        ranks.append(s.left.shape[1])
        for part in (s.even, s.odd):
            part = part or []
            terms.append(len(part))
            for span in part:
                spans.extend(span if span is not None else (0, 0))
    return ranks, terms, spans


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
    """The table for ``key`` on [lo, hi]: the one built on [lo, hi] rounded outward to even units of log v
    (factors of e^2), restricted (:meth:`Table.restricted`) to the narrowest window of :func:`sub_window` that
    holds [lo, hi]. Each is made once per process and kept. The rounding is the whole of the choice, so a
    tile's values never depend on which tiles were computed before it (resumed and clean runs agree bit for
    bit), and tiles and layers with nearby ranges share a table. One build at a time (the tile pool's workers
    wait for it instead of repeating it)."""
    outer = chebyshev.even_units(lo, hi)
    with _LOCK:
        table = _kept(key, outer, lambda: _stored_or_built(values_at, *outer, key))
        window = sub_window(lo, hi, *outer)
        if table is None or window == outer:
            return table
        return _kept(key, window, lambda: table.restricted(*window))


def _kept(key: tuple, domain: tuple, make):
    """The table of ``key`` on ``domain`` from this process's recent ones, else ``make()``, kept (the caller
    holds _LOCK)."""
    for k, d, table in _TABLES:
        if k == key and d == domain:
            return table
    table = make()
    _TABLES.append((key, domain, table))
    if len(_TABLES) > _MAX_TABLES:
        _TABLES.pop(0)
    return table


def sub_window(lo: float, hi: float, outer_lo: float, outer_hi: float) -> tuple[float, float]:
    """The narrowest window [a, a + w] of log variances inside [outer_lo, outer_hi] that holds [lo, hi], the
    widths w a factor sqrt(2) apart from the outer width down to :data:`MIN_WINDOW`, each window's start on the
    grid of w / 8 from outer_lo (so a range up to 7 w / 8 wide always fits one): a function of the four numbers
    alone. The outer window itself where no narrower one holds the range."""
    best = (outer_lo, outer_hi)
    w = (outer_hi - outer_lo) / math.sqrt(2.0)
    while w >= MIN_WINDOW and w >= hi - lo:
        step = w / 8.0
        a = min(outer_lo + math.floor((lo - outer_lo) / step) * step, outer_hi - w)
        if not (a <= lo and a + w >= hi):
            break
        best = (a, a + w)
        w /= math.sqrt(2.0)
    return best


def _stored_or_built(values_at, lo: float, hi: float, key: tuple) -> Table | None:
    """The table from the on-disk cache (:mod:`infinet.engine.table_cache`) where one is stored for ``key``, else
    :func:`build` (and stored, where the key can be kept across processes)."""
    disk_key = table_cache.persistent_key(*key, lo, hi) if len(key) == 4 else None
    if disk_key is not None:
        found, tensors = table_cache.load(disk_key)
        if found and tensors is None:
            return None
        if found and _well_formed(tensors):
            return Table(tensors["c"], lo, hi, tensors["budget"])
    table = build(values_at, lo, hi)
    if disk_key is not None:
        table_cache.save(disk_key, None if table is None else {"c": table.c, "budget": table.budget})
    return table


def _well_formed(tensors: dict) -> bool:
    """Whether stored tensors can be a table: coefficients (2, K, M, M) and budgets (2,), float64 and finite (a
    file that passed its digest but not this is rebuilt, not used)."""
    c, budget = tensors.get("c"), tensors.get("budget")
    if not isinstance(c, Tensor) or not isinstance(budget, Tensor):
        return False
    if c.dtype != torch.float64 or budget.dtype != torch.float64 or c.ndim != 4 or c.shape[0] != 2:
        return False
    if c.shape[2] != c.shape[3] or tuple(budget.shape) != (2,):
        return False
    return bool(torch.isfinite(c).all()) and bool(torch.isfinite(budget).all() and (budget >= 0).all())


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


def _probe_degree(degrees, values_of, dim: int) -> int | None:
    """The degree along ``dim`` that the grid needs, from probe values at the ladder ``degrees`` (the first that
    resolves): the smallest degree n whose trailing quarter starts past the probe's last coefficient above TOL,
    so that the grid's own certificate can pass without the next rung's cost (None when no rung resolves the
    probe: the grid would not resolve either)."""
    for n in degrees:
        values = values_of(n)
        c = _coefficients_along(values, dim)
        size = _scale(values)
        if _resolved(c, size, dim):
            above = (c.abs().movedim(dim, 1).flatten(2).amax(2) > 0.5 * TOL * size[:, None]).any(0)
            last = int(torch.nonzero(above).max()) if bool(above.any()) else 0
            need = 4 * (last + 2) // 3 + 2
            return min(n, need + need % 2)
    return None


def _scale(values: Tensor) -> Tensor:
    """max |f| of each function (F, ...) of a grid: the scale every tolerance is relative to."""
    return values.flatten(1).abs().amax(1).clamp(min=torch.finfo(values.dtype).tiny)


def _next_rung(degrees, n: int) -> int | None:
    return next((d for d in degrees if d > n), None)


def build(values_at, lo: float, hi: float) -> Table | None:
    """The certified interpolant on log variances [lo, hi] (see the module docstring), or None. The degrees are
    first probed on lines of the grid (rho at the largest variance, where the rho dependence is steepest; the
    variances at a few correlations), then the whole grid is computed and certified, a failing axis escalated to
    the next rung. ``values_at(rho, s, scale)`` gets the largest standard deviation as the scale of its rule."""
    scale = math.exp(0.5 * hi)
    s_hi = torch.tensor([scale], dtype=torch.float64)
    k = _probe_degree(RHO_DEGREES, lambda n: values_at(_rho_nodes(n), s_hi, scale), 1)
    probe = _rho_nodes(4)
    m = _probe_degree(VAR_DEGREES, lambda n: values_at(probe, _s_nodes(n, lo, hi), scale), 2)
    while k is not None and m is not None:
        values = values_at(_rho_nodes(k), _s_nodes(m, lo, hi), scale)
        c = values
        for dim in (1, 2, 3):
            c = _coefficients_along(c, dim)
        size = _scale(values)
        rho_ok, var_ok = _resolved(c, size, 1), _resolved(c, size, 2) and _resolved(c, size, 3)
        if rho_ok and var_ok:
            return Table(_truncated(c, size), lo, hi, 0.5 * TOL * size)
        k = k if rho_ok else _next_rung(RHO_DEGREES, k)
        m = m if var_ok else _next_rung(VAR_DEGREES, m)
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


def _odd_in_y(c: Tensor) -> Tensor:
    """d with sum_i c_i T_{2i+1}(x) = x sum_i d_i T_i(2x^2 - 1), from x T_i(y) = (T_{2i+1}(x) + T_{|2i-1|}(x)) / 2:
    c_0 = d_0 + d_1 / 2 and c_i = (d_i + d_{i+1}) / 2 for i >= 1, solved from the top (``c`` (I, ...): the
    coefficients of T_1, T_3, ...)."""
    d = torch.empty_like(c)
    if len(c) == 1:
        d[0] = c[0]  # x T_0(y) = T_1(x)
        return d
    d[-1] = 2.0 * c[-1]
    for i in range(len(c) - 2, 0, -1):
        d[i] = 2.0 * c[i] - d[i + 1]
    d[0] = c[0] - 0.5 * d[1]
    return d


class Series:
    """One function of a table as f = E(y) + x O(y) with y = 2x^2 - 1 = T_2(x) (E from the even, O from the odd
    Chebyshev terms in x) and each coefficient matrix of E and O in low-rank form P_j Q_j^T: term j of a part is
    the slice ``terms[j]`` of the columns of ``left`` (M, R) and ``right`` (M, R), or None (rank 0). A function
    of one parity (tanh's NNGP is odd in rho, its derivative kernel even) has one part, so half the steps."""

    def __init__(self, left: Tensor, right: Tensor, even: list | None, odd: list | None):
        self.left, self.right, self.even, self.odd = left, right, even, odd

    @classmethod
    def of(cls, c: Tensor, budget: float) -> "Series":
        """From coefficients ``c`` (K, M, M) in x: drop the rank-one components of the SVDs of the parts'
        coefficient matrices, smallest first, while the sum of their bounds s |u|_1 |v|_1 (|x|, |T| <= 1) stays
        within ``budget``."""
        parts = [c[0::2], _odd_in_y(c[1::2]) if len(c) > 1 else c[:0]]
        svds = [torch.linalg.svd(part) for part in parts]
        bounds = torch.cat([(s * u.abs().sum(-2) * vh.abs().sum(-1)).flatten() for u, s, vh in svds])
        order = torch.argsort(bounds)
        dropped = order[: int((bounds[order].cumsum(0) <= budget).sum())]
        keep = torch.ones(len(bounds), dtype=torch.bool)
        keep[dropped] = False
        lefts, rights, series, at, base = [], [], [], 0, 0
        for u, s, vh in svds:
            terms, rank = [], u.shape[-1]
            for j in range(len(u)):
                kept = keep[base + j * rank: base + (j + 1) * rank]
                r = int(kept.sum())
                terms.append((at, at + r) if r else None)
                if r:
                    lefts.append(u[j][:, kept] * s[j][kept])
                    rights.append(vh[j][kept].T)
                    at += r
            base += len(u) * rank
            while terms and terms[-1] is None:
                terms.pop()
            series.append(terms or None)
        m = c.shape[-1]
        left = torch.cat(lefts, 1) if lefts else c.new_zeros(m, 0)
        right = torch.cat(rights, 1) if rights else c.new_zeros(m, 0)
        return cls(left, right, *series)

    def flops(self) -> int:
        """Rank summed over terms: the matrix-product work per entry (for tests and benchmarks)."""
        return self.left.shape[1]


def _final_sign(last: int) -> float:
    """The sign :func:`_clenshaw` ends with when it starts from + (its steps on signs alone)."""
    sign, s2, zero = 1.0, 1.0, True
    for _ in range(last - 1):
        if zero:
            s2, zero = sign, False
        else:
            sign, s2 = -s2, sign
    return sign if zero else -s2


def _add_term(buf: Tensor, rows: Tensor, cols: Tensor, alpha: float, beta: float) -> bool:
    """buf <- beta buf + alpha rows cols^T over the stacked batch (False, nothing done, when the term is zero)."""
    if rows.shape[-1] == 0:
        return False
    b, p, r, c = buf.shape
    buf.view(b * p, r, c).baddbmm_(rows.flatten(0, 1), cols.flatten(0, 1).transpose(1, 2), beta=beta, alpha=alpha)
    return True


def _clenshaw(rows: List[Tensor], cols: List[Tensor], y: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """sum_j A_j T_j(y) for a stack of P series at once, A_j = rows[j] cols[j]^T ((B, P, r, R_j) and
    (B, P, c, R_j); R_j = 0: a zero term), y (B, 1, r, c); the result is left in one of the two (B, P, r, c)
    buffers, which is returned. Clenshaw's recurrence b_j = A_j + 2y b_{j+1} - b_{j+2} runs in the buffers, each
    holding +-b so that a step is one fused multiply-add in place and one accumulating matrix product, with no
    temporaries; the starting sign is the one that ends at +."""
    last = len(rows) - 1
    if last == 0:
        _add_term(b1, rows[0], cols[0], 1.0, 0.0)
        return b1
    sign = _final_sign(last)
    _add_term(b1, rows[last], cols[last], sign, 0.0)  # b_J, held as sign b_J
    cur1, cur2, s1, s2 = b1, b2, sign, sign  # b_{j+1} = s1 cur1, b_{j+2} = s2 cur2
    fresh = True  # b_{j+2} = 0 (cur2 not yet written)
    for j in range(last - 1, 0, -1):
        if fresh:  # b_j = A_j + 2y b_{j+1}
            torch.mul(y, cur1, out=cur2)
            if not _add_term(cur2, rows[j], cols[j], s1, 2.0):
                cur2.mul_(2.0)
            cur1, cur2 = cur2, cur1
            s2 = s1
            fresh = False
        else:  # cur2 <- s2 b_{j+2} - s2 2y b_{j+1} - s2 A_j = -s2 b_j
            cur2.addcmul_(y, cur1, value=-2.0 * s2 * s1)
            _add_term(cur2, rows[j], cols[j], -s2, 1.0)
            cur1, cur2, s1, s2 = cur2, cur1, -s2, s1
    if fresh:  # f = A_0 + y b_1, here s1 = +1
        cur1.mul_(y)
        _add_term(cur1, rows[0], cols[0], 1.0, 1.0)
        return cur1
    cur2.addcmul_(y, cur1, value=-s2 * s1)  # f = A_0 + y b_1 - b_2 = -s2 (s2 b_2 - s2 y b_1 - s2 A_0), -s2 = +1
    _add_term(cur2, rows[0], cols[0], 1.0, 1.0)
    return cur2


def _evaluate_blocks(cov: Tensor, sd_rows: Tensor, sd_cols: Tensor, outs: List[Tensor], rows: List[List[Tensor]],
                     cols: List[List[Tensor]], parts: List[List[int]], steps: List[int]) -> None:
    """The block loop of :func:`evaluate` (one TorchScript call when it compiles, so that the tile pool's threads
    do not contend for the GIL at every step): cov (B, r, c) with the standard deviations of its rows (B, r, 1)
    and columns (B, c, 1), the stacks' factors per term, their parts (2 function + 1 if odd), and the block steps
    (batch, rows, cols)."""
    batch, n_rows, n_cols = cov.shape
    for b0 in range(0, batch, steps[0]):
        b = min(batch, b0 + steps[0])
        for r0 in range(0, n_rows, steps[1]):
            r = min(n_rows, r0 + steps[1])
            for c0 in range(0, n_cols, steps[2]):
                c = min(n_cols, c0 + steps[2])
                x = torch.mul(sd_rows[b0:b, r0:r], sd_cols[b0:b, c0:c].transpose(1, 2))
                torch.div(cov[b0:b, r0:r, c0:c], x, out=x)  # rho, pushed up 4 ulps: rounding never hides rho = 1
                x.clamp_(-1.0, 1.0).arcsin_().mul_(2.0 / math.pi)  # the interpolation variable
                y = torch.mul(x, x).mul_(2.0).sub_(1.0)[:, None]  # y = 2 x^2 - 1 = T_2(x), against the stack axis
                written = [False for _ in outs]
                for k in range(len(rows)):
                    block_rows = [t[b0:b, :, r0:r] for t in rows[k]]
                    block_cols = [t[b0:b, :, c0:c] for t in cols[k]]
                    size = [b - b0, len(parts[k]), r - r0, c - c0]
                    value = _clenshaw(block_rows, block_cols, y, x.new_empty(size), x.new_empty(size))
                    for p in range(len(parts[k])):
                        f, odd = parts[k][p] // 2, parts[k][p] % 2 == 1
                        target = outs[f][b0:b, r0:r, c0:c]
                        part = value[:, p]
                        if odd and written[f]:
                            target.addcmul_(x, part)
                        elif odd:
                            torch.mul(x, part, out=target)
                        elif written[f]:
                            target.add_(part)
                        else:
                            target.copy_(part)
                        written[f] = True
                for f in range(len(outs)):
                    if not written[f]:
                        outs[f][b0:b, r0:r, c0:c].zero_()


def _stacks(series: list) -> tuple[list, list, list]:
    """The parts of all functions' series stacked so that one pass serves them all: (lefts, rights, parts), per
    stack the coefficient factors of each term j, (P, M, R_j) zero-padded to the largest rank of the stack
    (R_j = 0: a zero term), and its parts (2 function + 1 if odd). Constant parts (one term) form a stack of
    their own, so that they do not run the longer recurrences."""
    all_parts = [(f, odd, terms) for f, s in enumerate(series)
                 for odd, terms in ((False, s.even), (True, s.odd)) if terms is not None]
    lefts, rights, codes = [], [], []
    for group in ([p for p in all_parts if len(p[2]) > 1], [p for p in all_parts if len(p[2]) == 1]):
        if not group:
            continue
        stacked = ([], [])
        for j in range(max(len(terms) for _, _, terms in group)):
            spans = [terms[j] if j < len(terms) else None for _, _, terms in group]
            rank = max((e - s for s, e in filter(None, spans)), default=0)
            for side in (0, 1):
                w = series[0].left.new_zeros(len(group), series[0].left.shape[0], rank)
                for i, ((f, _, _), span) in enumerate(zip(group, spans)):
                    if span is not None:
                        factor = series[f].left if side == 0 else series[f].right
                        w[i, :, : span[1] - span[0]] = factor[:, span[0]: span[1]]
                stacked[side].append(w)
        lefts.append(stacked[0])
        rights.append(stacked[1])
        codes.append([2 * f + int(odd) for f, odd, _ in group])
    return lefts, rights, codes


#: entries per block of the evaluation on CPUs (on GPUs one block per call): the stacked buffers of a block stay
#: in a core's L2 cache across the Clenshaw steps
BLOCK_ENTRIES = 1 << 15


def _kinds(var1: Tensor, var2: Tensor) -> list:
    """Per axis: "b" where both variances vary, "c" where only var2 does, "r" otherwise."""
    return ["b" if a > 1 and b > 1 else "c" if b > 1 else "r" for a, b in zip(var1.shape, var2.shape)]


def _matrix_layout(var1: Tensor, var2: Tensor) -> tuple[int, int, bool]:
    """(start, split, swapped): the trailing axes [start, split) are the rows and [split, ndim) the columns of a
    batch of matrices, every axis before ``start`` a batch axis. Columns are the longest trailing run of axes
    along which only one of the variances varies (or neither), rows the run before it along which only the other
    does; ``swapped`` when the rows are ``var2``'s."""
    kind = _kinds(var1, var2)
    split = len(kind)
    while split > 0 and kind[split - 1] == kind[-1] != "b":
        split -= 1
    start, rows = split, "r" if kind and kind[-1] == "c" else "c"
    while start > 0 and kind[start - 1] == rows:
        start -= 1
    return start, split, rows == "c"


def _as_matrices(t: Tensor, shape, start: int, split: int, side: str) -> Tensor:
    """``t`` (broadcastable to ``shape`` + its own trailing (R,)) as (B, rows, R) (side "rows") or (B, cols, R)
    ("cols"), taking index 0 along the other side's axes (where ``t`` does not vary)."""
    extra = t.shape[len(shape):]
    full = t.expand(tuple(shape) + extra)
    index = [slice(None)] * len(shape)
    for d in (range(split, len(shape)) if side == "rows" else range(start, split)):
        index[d] = slice(0, 1)
    part = full[tuple(index)]
    kept = range(start, split) if side == "rows" else range(split, len(shape))
    return part.reshape(-1, math.prod(shape[d] for d in kept), *extra)


def _contract(basis: Tensor, steps: list, dtype) -> list:
    """basis (B, n, M) times each term's stacked factors (P, M, R_j): [(B, P, n, R_j)], one matrix product in float64
    for all terms, then each term contiguous in the kernel's precision."""
    b, n, m = basis.shape
    flat = torch.cat([w.permute(1, 0, 2).reshape(m, -1) for w in steps], 1).to(basis.device)
    product = (basis.reshape(b * n, m) @ flat).to(dtype)
    out, at = [], 0
    for w in steps:
        p, _, r = w.shape
        out.append(product[:, at: at + p * r].reshape(b, n, p, r).permute(0, 2, 1, 3).contiguous())
        at += p * r
    return out


def evaluate(table: Table, cov: Tensor, var1: Tensor, var2: Tensor) -> list:
    """The interpolant at every entry. The broadcast shape is read as a batch of (rows, cols) matrices
    (:func:`_matrix_layout`: an entry's two variances are those of its row and of its column), the variance
    factors of every term are contracted once per call, and each block of about :data:`BLOCK_ENTRIES` entries
    runs the :class:`Series` parts by :func:`_clenshaw`."""
    ndim = max(cov.ndim, var1.ndim, var2.ndim)
    var1 = var1.reshape((1,) * (ndim - var1.ndim) + var1.shape)
    var2 = var2.reshape((1,) * (ndim - var2.ndim) + var2.shape)
    shape = torch.broadcast_shapes(cov.shape, var1.shape, var2.shape)
    dtype, device = cov.dtype, cov.device
    start, split, swapped = _matrix_layout(var1, var2)
    if math.prod(shape[start:]) < 1024:  # small matrices (a batch axis last, as positions in the diagonal layout):
        kind = _kinds(var1, var2)  # evaluate with the batch axes moved first, the rows and columns after them
        order = [d for k in "brc" for d in range(ndim) if kind[d] == k]
        if order != list(range(ndim)):
            out = evaluate(table, cov.expand(shape).permute(order), var1.permute(order), var2.permute(order))
            back = [order.index(d) for d in range(ndim)]
            return [o.permute(back).contiguous() for o in out]
    v_rows, v_cols = (var2, var1) if swapped else (var1, var2)
    eps = torch.finfo(dtype).eps
    sd_rows = _as_matrices((torch.sqrt(v_rows) / (1.0 + 4.0 * eps))[..., None].to(dtype), shape, start, split, "rows")
    sd_cols = _as_matrices(torch.sqrt(v_cols)[..., None].to(dtype), shape, start, split, "cols")
    basis_rows = _as_matrices(table.basis(v_rows), shape, start, split, "rows")  # T_m(t(var)) (B, n, M)
    basis_cols = _as_matrices(table.basis(v_cols), shape, start, split, "cols")
    batch, n_rows, n_cols = sd_rows.shape[0], sd_rows.shape[1], sd_cols.shape[1]
    cov = cov.expand(shape).reshape(batch, n_rows, n_cols)
    out = [torch.empty(shape, dtype=dtype, device=device) for _ in table.series]
    views = [o.view(batch, n_rows, n_cols) for o in out]
    lib = native.library() if device.type == "cpu" and dtype == torch.float64 else None
    if lib is not None:
        _evaluate_native(lib, table, cov, sd_rows, sd_cols, basis_rows, basis_cols, swapped, views)
        return out
    # each term's stacked factors (P, M, R_j) contracted with the bases: (B, P, n, R_j)
    lefts, rights, parts = table.stacks
    lefts, rights = (rights, lefts) if swapped else (lefts, rights)
    rows = [_contract(basis_rows, steps, dtype) for steps in lefts]
    cols = [_contract(basis_cols, steps, dtype) for steps in rights]
    per_matrix = n_rows * n_cols
    limit = BLOCK_ENTRIES if device.type == "cpu" else 1 << 24
    if per_matrix <= limit:
        block = [max(1, limit // max(1, per_matrix)), max(1, n_rows), max(1, n_cols)]
    else:
        col_step = min(n_cols, limit)
        block = [1, max(1, limit // col_step), col_step]
    fused.scripted(_evaluate_blocks)(cov, sd_rows, sd_cols, views, rows, cols, parts, block)
    return out


def _evaluate_native(lib, table: Table, cov: Tensor, sd_rows: Tensor, sd_cols: Tensor, basis_rows: Tensor,
                     basis_cols: Tensor, swapped: bool, views: List[Tensor]) -> None:
    """:func:`evaluate`'s loop compiled (:mod:`infinet.engine.native`, ``clenshaw_eval``): the interpolation
    variable x = (2 / pi) arcsin(rho) written into the first output in one compiled pass (``interpolation_x``, the
    TorchScript loop's formula), each function's factors contracted with the bases whole, L (B, rows, R) and
    C^T (B, R, cols), and every entry's Clenshaw recurrences in registers."""
    x = views[0]
    batch, n_rows, n_cols = x.shape
    cov = cov.contiguous()
    sd_rows, sd_cols = sd_rows.reshape(batch, n_rows).contiguous(), sd_cols.reshape(batch, n_cols).contiguous()
    if lib.interpolation_x(batch, n_rows, n_cols, cov.data_ptr(), sd_rows.data_ptr(), sd_cols.data_ptr(),
                           x.data_ptr()):
        raise MemoryError("the compiled interpolation variable could not allocate its buffer")
    basis_rows, basis_cols = basis_rows.contiguous(), basis_cols.contiguous()
    rows, cols = [], []
    for s in table.series:
        left, right = (s.right, s.left) if swapped else (s.left, s.right)
        rows.append((basis_rows.view(-1, basis_rows.shape[-1]) @ left).view(batch, n_rows, -1))
        cols.append(torch.matmul(right.T, basis_cols.transpose(1, 2)).contiguous())  # (B, R, cols)
    ranks, terms, spans = table.native_terms
    failed = lib.clenshaw_eval(batch, n_rows, n_cols, len(views), native.pointers(views), native.pointers(rows),
                               native.pointers(cols), native.int64s(ranks), native.int64s(terms),
                               native.int64s(spans))
    if failed:
        raise MemoryError("the compiled interpolant could not allocate its tile buffers")
