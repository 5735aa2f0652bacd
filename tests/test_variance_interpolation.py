"""Quadrature activations at unequal variances by the certified interpolant in (rho, log var1, log var2)
(infinet.engine.variance_interpolation): against mpmath references (tests/data/quadrature_mpmath.py), against
direct quadrature on the kernel layouts the layers use, and its fallbacks."""

import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

import infinet as inf
from infinet.engine import chebyshev, fused, gaussian, variance_interpolation

REFERENCE = json.loads((pathlib.Path(__file__).parent / "data" / "quadrature_mpmath.json").read_text())
FUNCTIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus, "silu": F.silu}


def _no_direct_quadrature(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("direct quadrature was used")

    monkeypatch.setattr(gaussian, "_direct_quadrature", refuse)


def _call(rho, v1, v2, n=24, seed=0):
    """A (n, n) call whose entry (0, 0) is (rho, v1, v2) and whose other variances spread around v1 and v2."""
    g = torch.Generator().manual_seed(seed)
    var1 = v1 * torch.exp(0.5 * torch.rand(n, generator=g, dtype=torch.float64) - 0.25)
    var2 = v2 * torch.exp(0.5 * torch.rand(n, generator=g, dtype=torch.float64) - 0.25)
    var1[0], var2[0] = v1, v2
    corr = torch.rand(n, n, generator=g, dtype=torch.float64) * 1.8 - 0.9
    corr[0, 0] = rho
    return corr * torch.sqrt(var1[:, None] * var2[None]), var1[:, None], var2[None]


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: f"{r['activation']}-{r['rho']}-{r['var1']}-{r['var2']}")
def test_interpolant_agrees_with_mpmath_to_1e_10(monkeypatch, row):
    """Relative to sqrt(E[phi(u)^2] E[phi(v)^2]) (and likewise for phi'), the scale of the entry."""
    _no_direct_quadrature(monkeypatch)
    cov, var1, var2 = _call(row["rho"], row["var1"], row["var2"])
    nngp, kdot = gaussian.quadrature(FUNCTIONS[row["activation"]], cov, var1, var2)
    for name, value in (("nngp", nngp), ("kdot", kdot)):
        scale = (float(row[name + "_diag1"]) * float(row[name + "_diag2"])) ** 0.5
        assert abs(float(value[0, 0]) - float(row[name])) <= 1e-10 * scale, (name, float(value[0, 0]), row[name])


LAYOUTS = {"dense": ((20, 1), (1, 25)), "conv-diagonal": ((8, 1, 6), (1, 9, 6)),
           "conv-full": ((5, 1, 4, 1), (1, 7, 1, 4)), "swapped": ((1, 1, 7), (5, 6, 1)),
           "diagonal-only": ((40,), (40,)), "blocks": ((3, 1, 9, 1), (1, 2, 1, 11))}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_interpolant_agrees_with_direct_quadrature_on_kernel_layouts(monkeypatch, layout):
    """The variances of an entry are those of its row and of its column (and positions): the matrix products
    over those axes give what direct quadrature gives entry by entry, also with the rows taken from var2 (its
    axes first), with no matrix axes at all (every axis varies in both), and in blocks that split the batch, the
    rows and the columns (a tiny block size); the TorchScript loop and the plain Python one give the same bits."""
    monkeypatch.setenv("INFINET_NATIVE", "off")  # the TorchScript loops (tests/test_native.py: the compiled one)
    g = torch.Generator().manual_seed(1)
    shapes = LAYOUTS[layout]
    var1 = torch.exp(torch.rand(shapes[0], generator=g, dtype=torch.float64) * 3 - 1.5)
    var2 = torch.exp(torch.rand(shapes[1], generator=g, dtype=torch.float64) * 3 - 1.5)
    corr = torch.rand(torch.broadcast_shapes(*shapes), generator=g, dtype=torch.float64) * 2 - 1
    cov = corr * torch.sqrt(var1 * var2)
    direct = gaussian._direct_quadrature(torch.tanh, *torch.broadcast_tensors(cov, var1, var2), True, None, 8, 0,
                                         2**22, False)
    if layout == "blocks":
        monkeypatch.setattr(variance_interpolation, "BLOCK_ENTRIES", 4)
    monkeypatch.setattr(gaussian, "UNIFORM_MIN_ENTRIES", 1)
    _no_direct_quadrature(monkeypatch)
    got = gaussian.quadrature(torch.tanh, cov, var1, var2)
    plain_loop = variance_interpolation._evaluate_blocks
    monkeypatch.setitem(fused._scripts, plain_loop, plain_loop)  # the plain Python loop instead of the scripted one
    plain = gaussian.quadrature(torch.tanh, cov, var1, var2)
    for a, b, c in zip(got, direct, plain):
        assert float((a - b).abs().max()) < 1e-10
        assert torch.equal(a, c)


def test_kinks_wide_ranges_and_zero_variances_fall_back_to_direct_quadrature():
    """A zero variance or a range wider than MAX_RATIO is not interpolated (no table is built); ELU's kink at 0
    is resolved by no degree of the interpolant: each gives direct quadrature's values."""
    def never(*args):
        raise AssertionError("a table was built")

    cases = [(F.elu, (0.5, 2.0)), (torch.tanh, (0.0, 2.0)), (torch.tanh, (1e-5, 1e4))]
    for i, (fn, (lo, hi)) in enumerate(cases):
        v = torch.linspace(lo, hi, 20, dtype=torch.float64)
        cov = 0.3 * torch.sqrt(v[:, None] * v[None])
        if fn is torch.tanh:
            assert variance_interpolation.expectations(never, cov, v[:, None], v[None], ("probe",)) is None
        got = gaussian.quadrature(fn, cov, v[:, None], v[None])
        direct = gaussian._direct_quadrature(fn, *torch.broadcast_tensors(cov, v[:, None], v[None]), True, None, 8,
                                             0, 2**22, False)
        for a, b in zip(got, direct):
            assert torch.allclose(a, b, rtol=0, atol=1e-10), i


def test_a_tanh_network_on_unnormalized_inputs_takes_the_interpolant(monkeypatch):
    """Dense > Tanh with biases on inputs of unequal norms: every layer is served by the interpolant (direct
    quadrature would be refused here), and its kernel matches direct quadrature's."""
    x = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * torch.linspace(
        0.3, 2.0, 40, dtype=torch.float64)[:, None]
    net = inf.serial(inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(1))
    with monkeypatch.context() as m:
        m.setattr(gaussian, "_interpolated", lambda *args: None)
        direct = net.kernel(x)
    _no_direct_quadrature(monkeypatch)
    variance_interpolation._TABLES.clear()
    fast = net.kernel(x)
    assert torch.allclose(fast.nngp, direct.nngp, rtol=1e-9, atol=1e-11)
    assert torch.allclose(fast.ntk, direct.ntk, rtol=1e-9, atol=1e-11)


def test_values_do_not_depend_on_what_was_computed_before():
    """A table's range is the call's range rounded outward to even units of log v, whatever tables exist: a
    kernel is bit for bit the same computed first or after kernels of other data (resumed stores rely on it)."""
    net = inf.serial(inf.Dense(32, 1.5, 0.1), inf.Tanh(), inf.Dense(32, 1.5, 0.1), inf.Tanh(), inf.Dense(1))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    other = 5.0 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    variance_interpolation._TABLES.clear()
    first = net.kernel(x, tile_size=10)
    variance_interpolation._TABLES.clear()
    net.kernel(other, tile_size=10)
    net.kernel(torch.cat([other, x]), tile_size=10)
    again = net.kernel(x, tile_size=10)
    assert torch.equal(first.nngp, again.nngp) and torch.equal(first.ntk, again.ntk)


def test_float32_kernels_take_the_interpolant_in_their_precision():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.3, 2.0, 40)[:, None]
    net = inf.serial(inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(1))
    single, double = net.kernel(x, dtype=torch.float32), net.kernel(x.double())
    assert single.nngp.dtype == torch.float32 and single.ntk.dtype == torch.float32
    assert torch.allclose(single.ntk.double(), double.ntk, rtol=1e-5, atol=1e-6)


def _naive(c: torch.Tensor, x: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """sum_kmn c[k, m, n] T_k(x) T_m(t1) T_n(t2), term by term (the reference for the fast evaluation)."""
    k, m, n = (torch.arange(d, dtype=torch.float64) for d in c.shape)
    tk = torch.cos(k * torch.arccos(x)[..., None])
    tm = torch.cos(m * torch.arccos(t1)[..., None])
    tn = torch.cos(n * torch.arccos(t2)[..., None])
    return torch.einsum("kmn,...k,...m,...n->...", c, tk, tm, tn)


def test_parity_split_and_low_rank_series_stay_within_their_bound():
    """The Series form (even and odd parts in y = 2x^2 - 1, each term in low rank) of random decaying
    coefficients agrees with the plain triple sum to within the budget given to its truncation (plus rounding,
    mostly the round trip x -> rho -> x of the test's points), a budget of zero keeping it exact to rounding; an
    odd function keeps only its odd part."""
    g = torch.Generator().manual_seed(5)
    decay = 0.6 ** torch.arange(12, dtype=torch.float64)
    c = torch.randn(12, 7, 7, generator=g, dtype=torch.float64) * decay[:, None, None] * decay[None, :7, None]
    x, t1, t2 = (torch.rand(30, 40, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(3))
    want = _naive(c, x, t1, t2)
    for budget in (0.0, 1e-6, 1e-3):
        s = variance_interpolation.Series.of(c, budget)
        got = _series_value(s, x, t1, t2)
        assert float((got - want).abs().max()) <= budget + 1e-11, budget
    for k in (1, 2, 3):  # the shortest series: a constant, one odd term, one term of each parity and one more
        s = variance_interpolation.Series.of(c[:k], 0.0)
        assert torch.allclose(_series_value(s, x, t1, t2), _naive(c[:k], x, t1, t2), rtol=0, atol=1e-11), k
    full, cut = variance_interpolation.Series.of(c, 0.0), variance_interpolation.Series.of(c, 1e-3)
    assert cut.flops() < full.flops()
    odd = c.clone()
    odd[0::2] = 0
    s = variance_interpolation.Series.of(odd, 1e-14)
    assert s.even is None and s.odd is not None
    assert torch.allclose(_series_value(s, x, t1, t2), _naive(odd, x, t1, t2), rtol=0, atol=1e-11)


def _series_value(s, x, t1, t2):
    """A Series evaluated at points given directly in (x, t1, t2), through the module's own block loop."""
    m = s.left.shape[0]
    basis = lambda t: torch.cos(torch.arange(m, dtype=torch.float64) * torch.arccos(t)[..., None])  # noqa: E731
    out = torch.empty(x.numel(), dtype=torch.float64)
    b1, b2 = (basis(t.flatten())[:, None, None, :] for t in (t1, t2))  # every entry its own 1 x 1 matrix
    lefts, rights, parts = variance_interpolation._stacks([s])
    rows = [[b1 @ w for w in steps] for steps in lefts]
    cols = [[b2 @ w for w in steps] for steps in rights]
    cov = torch.sin(0.5 * torch.pi * x.flatten())[:, None, None]
    ones = torch.ones(x.numel(), 1, 1, dtype=torch.float64)
    loop = fused.scripted(variance_interpolation._evaluate_blocks)
    loop(cov, ones, ones, [out.view(-1, 1, 1)], rows, cols, parts, [7, 1, 1])
    return out.view(x.shape)


@pytest.mark.parametrize("n_terms", range(1, 8))
def test_clenshaw_with_signed_buffers_matches_the_sum_for_every_length_and_zero_pattern(n_terms):
    g = torch.Generator().manual_seed(n_terms)
    y = torch.rand(1, 1, 3, 4, generator=g, dtype=torch.float64) * 2 - 1
    for pattern in range(2 ** (n_terms - 1)):
        rows, cols, want = [], [], torch.zeros(1, 2, 3, 4, dtype=torch.float64)
        for j in range(n_terms):
            rank = 2 if (pattern >> j) & 1 or j == n_terms - 1 else 0
            rows.append(torch.randn(1, 2, 3, rank, generator=g, dtype=torch.float64))
            cols.append(torch.randn(1, 2, 4, rank, generator=g, dtype=torch.float64))
            want += (rows[-1] @ cols[-1].transpose(-1, -2)) * torch.cos(j * torch.arccos(y))
        buffers = torch.empty(1, 2, 3, 4, dtype=torch.float64), torch.empty(1, 2, 3, 4, dtype=torch.float64)
        got = variance_interpolation._clenshaw(rows, cols, y, *buffers)
        assert torch.allclose(got, want, rtol=0, atol=1e-12), pattern


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_diagonal_expectations_of_many_variances_take_their_certified_interpolant(name):
    """E[phi(u)^2] at 300 variances over e^-4 .. e^4 (every position of every example, in convolutional networks):
    the interpolant in log var agrees with the one-dimensional rule to 1e-11 relative (the rule's own error varies
    by about 1e-12 between its nodes; against mpmath: the next test), its fit is kept under the
    identity given (one per activation, whatever the callable), and a function whose E[phi^2] vanishes somewhere
    (no logarithm) is left to the rule."""
    fn = FUNCTIONS[name]
    var = torch.exp(torch.linspace(-4.0, 4.0, 300, dtype=torch.float64))
    rule = gaussian._diagonal_rule(fn, var, float(var.max().sqrt()), 8, 0)
    gaussian._DIAGONAL_FITS.clear()
    got = gaussian.quadrature_diagonal(lambda x: fn(x), var, identity=("test", name))
    assert float((got / rule - 1).abs().max()) < 1e-11
    assert [k[0] for k in gaussian._DIAGONAL_FITS] == [("test", name)]
    assert next(iter(gaussian._DIAGONAL_FITS.values())) is not None
    again = gaussian.quadrature_diagonal(lambda x: fn(x), var, identity=("test", name))
    assert torch.equal(got, again) and len(gaussian._DIAGONAL_FITS) == 1
    zero = gaussian.quadrature_diagonal(lambda x: torch.relu(x - 3.0) * 0.0, var)
    assert torch.equal(zero, torch.zeros_like(var))


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_diagonal_interpolants_agree_with_mpmath_to_1e_10(name):
    """The interpolated E[phi(u)^2] and E[phi'(u)^2] (as the layers call them: phi' on the refined rule) at the
    variances of the mpmath references (tests/data/quadrature_mpmath.py), inside a call of 300 variances."""
    rows = [r for r in REFERENCE if r["activation"] == name]
    points = {r[v]: (r["nngp_" + d], r["kdot_" + d]) for r in rows for v, d in (("var1", "diag1"), ("var2", "diag2"))}
    given = torch.tensor(sorted(points), dtype=torch.float64)
    var = torch.cat([given, torch.exp(torch.linspace(-1.6, 3.2, 300, dtype=torch.float64))])
    fn = FUNCTIONS[name]
    gaussian._DIAGONAL_FITS.clear()
    phi2 = gaussian.quadrature_diagonal(fn, var, identity=(name, "phi"))
    dphi2 = gaussian.quadrature_diagonal(gaussian.autograd_derivative(fn), var, nodes=16, extra_panels=2,
                                         identity=(name, "dphi"))
    assert all(c is not None for c in gaussian._DIAGONAL_FITS.values())  # both were interpolated
    for i, v in enumerate(sorted(points)):
        for got, want in ((phi2[i], points[v][0]), (dphi2[i], points[v][1])):
            assert abs(float(got) - float(want)) <= 1e-10 * abs(float(want)), (v, float(got), want)


@pytest.mark.parametrize("scale", [0.3, 3.0, 40.0])
def test_the_polar_rule_halves_mirror_each_other(scale):
    """The table build evaluates phi at X only: in the order of gaussian._mirrored_halves, the rule's Y at the
    first half is X at the second and the reverse (to rounding of the angles), the halves' weights are equal,
    and the order is a permutation of all points; at correlations inside and at the ends of [-1, 1]."""
    rho = torch.tensor([-1.0, -0.97, -0.3, 0.0, 0.41, 0.999, 1.0], dtype=torch.float64)
    radius, radial_w = gaussian._radial_rule(scale, 8, 0, torch.float64, None)
    arc_t, arc_w = gaussian._arc_rule(scale, 8, 0, torch.float64, None)
    x, y, w = gaussian._polar_points(rho, radius, radial_w, arc_t, arc_w)
    order = gaussian._mirrored_halves(len(arc_t), None)
    half = len(order) // 2
    assert sorted(order.tolist()) == list(range(x.shape[1]))
    x, y, w = x[:, order], y[:, order], w[:, order]
    reach = float(radius.max())
    assert float((y[:, :half] - x[:, half:]).abs().max()) <= 64 * 2.0**-53 * reach
    assert float((y[:, half:] - x[:, :half]).abs().max()) <= 64 * 2.0**-53 * reach
    assert torch.equal(w[:, :half], w[:, half:])


@pytest.mark.parametrize("lo,hi", [(-1.32, -0.15), (-1.16, 0.03), (0.1, 0.2), (-1.9, 1.9), (-2.0, 2.0), (1.7, 1.99),
                                   (-1.99, -1.7), (3.0, 3.0)])
def test_a_call_takes_the_narrowest_window_of_the_ladder_that_holds_its_range(lo, hi):
    """The window holds the range and lies inside the outer one, its width on the ladder outer / sqrt(2)^k (no
    narrower than MIN_WINDOW, where not the outer one), its start on the grid of width / 8; the next narrower
    width of the ladder holds the range at no start of its grid (inside the outer window)."""
    outer = chebyshev.even_units(lo, hi)
    a, b = variance_interpolation.sub_window(lo, hi, *outer)
    assert outer[0] <= a <= lo and hi <= b <= outer[1]
    width = b - a
    k = round(2 * math.log2((outer[1] - outer[0]) / width))
    assert math.isclose(width, (outer[1] - outer[0]) / math.sqrt(2) ** k, rel_tol=1e-12)
    if (a, b) != outer:
        assert width >= variance_interpolation.MIN_WINDOW
        assert math.isclose((a - outer[0]) / (width / 8), round((a - outer[0]) / (width / 8)), abs_tol=1e-9) \
            or math.isclose(b, outer[1])
    narrower = width / math.sqrt(2)
    if narrower >= variance_interpolation.MIN_WINDOW:
        step = narrower / 8
        starts = [outer[0] + i * step for i in range(int((outer[1] - outer[0]) / step) + 1)] + [outer[1] - narrower]
        assert not any(s <= lo and s + narrower >= hi and s >= outer[0] and s + narrower <= outer[1] for s in starts)
    assert variance_interpolation.sub_window(lo, hi, *outer) == (a, b)  # a function of its arguments


def test_a_restricted_table_is_the_same_polynomial_in_fewer_rank_terms(monkeypatch):
    """Table.restricted re-expands the interpolant on a narrower window: its coefficients give the parent's
    polynomial there (to rounding), its low-rank series stays within the parent's budget of it, and it needs far
    fewer rank terms than the parent; the kernel of a call in that window takes it."""
    _no_direct_quadrature(monkeypatch)
    variance_interpolation._TABLES.clear()
    g = torch.Generator().manual_seed(6)
    var1 = torch.exp(torch.rand(30, 1, generator=g, dtype=torch.float64) * 1.1 - 0.8)  # log v in [-0.8, 0.3]
    var2 = torch.exp(torch.rand(1, 40, generator=g, dtype=torch.float64) * 1.1 - 0.8)
    cov = (torch.rand(30, 40, generator=g, dtype=torch.float64) * 2 - 1) * torch.sqrt(var1 * var2)
    got = gaussian.quadrature(torch.tanh, cov, var1, var2)
    domains = [domain for _, domain, _ in variance_interpolation._TABLES]
    assert (-2.0, 2.0) in domains and len(domains) == 2  # the outer table and the one restricted from it
    parent = next(t for _, d, t in variance_interpolation._TABLES if d == (-2.0, 2.0))
    sub = next(t for _, d, t in variance_interpolation._TABLES if d != (-2.0, 2.0))
    logs = torch.log(torch.cat([var1.flatten(), var2.flatten()]))
    assert sub.hi - sub.lo < 2.0 and sub.lo <= float(logs.min()) and float(logs.max()) <= sub.hi
    t = torch.linspace(-1, 1, 9, dtype=torch.float64)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    parent_t = ((sub.lo + sub.hi) + (sub.hi - sub.lo) * t - (parent.lo + parent.hi)) / (parent.hi - parent.lo)
    for f in range(2):
        want = _naive(parent.c[f], x[:, None, None], parent_t[None, :, None], parent_t[None, None, :])
        have = _naive(sub.c[f], x[:, None, None], t[None, :, None], t[None, None, :])
        assert float((want - have).abs().max()) <= 1e-13 * float(want.abs().max())
        series = _series_value(sub.series[f], *torch.broadcast_tensors(x[:, None, None], t[None, :, None],
                                                                         t[None, None, :]))
        assert float((series - have).abs().max()) <= float(sub.budget[f]) + 1e-13
        assert sub.series[f].flops() < 0.6 * parent.series[f].flops(), (sub.series[f].flops(), parent.series[f].flops())
    whole = variance_interpolation.evaluate(parent, cov, var1, var2)
    for a, b, budget in zip(got, whole, parent.budget):
        assert float((a - b).abs().max()) <= 2 * float(budget) + 1e-13


@pytest.mark.parametrize("name", ["Tanh", "Sigmoid"])
def test_tables_built_from_one_evaluation_of_phi_and_phi_prime_keep_their_bits(monkeypatch, name):
    """Tanh and Sigmoid give phi and phi' from one evaluation (value_and_derivative: the derivative from tanh's
    own value, sigma(x) once): the same bits as the two functions apart, and so the same tables and kernels."""
    monkeypatch.setenv("INFINET_CACHE", "off")
    act = getattr(inf, name)()
    z = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    value, slope = act.value_and_derivative(z)
    assert torch.equal(value, act.fn(z)) and torch.equal(slope, act.derivative()(z))
    assert act.value_and_derivative(z, need_derivative=False)[1] is None
    g = torch.Generator().manual_seed(7)
    var1 = torch.exp(torch.rand(20, 1, generator=g, dtype=torch.float64) * 2 - 1)
    var2 = torch.exp(torch.rand(1, 30, generator=g, dtype=torch.float64) * 2 - 1)
    cov = (torch.rand(20, 30, generator=g, dtype=torch.float64) * 2 - 1) * torch.sqrt(var1 * var2)
    _no_direct_quadrature(monkeypatch)
    got = []
    for joint in (act.value_and_derivative, None):
        variance_interpolation._TABLES.clear()
        got.append(gaussian.quadrature(act.fn, cov, var1, var2, dfn=act.derivative(), joint=joint))
    assert all(torch.equal(a, b) for a, b in zip(*got))
