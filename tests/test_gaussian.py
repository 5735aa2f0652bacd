"""Gaussian expectations: closed forms against quadrature, quadrature against a higher-order rule,
and exact values derived independently of the code under test."""

import math

import pytest
import torch

import infinet as inf
from infinet import gaussian as g

DT = torch.float64
RHOS = torch.cat([torch.linspace(-1, 1, 21, dtype=DT),
                  torch.tensor([1 - 1e-12, 1 - 1e-7, 0.999, -0.999, -1 + 1e-9], dtype=DT)])


def grid(q1, q2):
    c = RHOS * math.sqrt(q1 * q2)
    return c, torch.full_like(c, q1), torch.full_like(c, q2)


# every closed-form activation, with the variances where a fixed quadrature rule is valid for it
# (oscillating / exponentially growing functions only at moderate variance; see gaussian.quadrature)
CLOSED = [
    (inf.Relu(), [1e-4, 1.0, 1e4]),
    (inf.LeakyRelu(0.1), [1e-4, 1.0, 1e4]),
    (inf.ABRelu(-0.3, 2.0), [1e-4, 1.0, 1e4]),
    (inf.Abs(), [1e-4, 1.0, 1e4]),
    (inf.Sign(), [1e-4, 1.0, 1e4]),
    (inf.Erf(0.7, 1.3, 0.2), [1e-4, 1.0, 1e4]),
    (inf.Gelu(), [1e-4, 1.0, 1e4]),
    (inf.Sin(1.1, 0.8, 0.3), [1e-4, 0.5, 2.0]),
    (inf.Cos(0.9, 1.2, -0.4), [1e-4, 0.5, 2.0]),
    (inf.Gaussian(1.0, -1.0), [1e-4, 1.0, 1e4]),
    (inf.Gaussian(2.0, 0.1), [1e-4, 1.0]),
    (inf.Exp(1.0, 0.5), [1e-4, 1.0, 4.0]),
    (inf.Monomial(0), [1e-4, 1.0, 1e4]),
    (inf.Monomial(1), [1e-4, 1.0, 1e4]),
    (inf.Monomial(4), [1e-4, 1.0, 1e2]),
    (inf.Polynomial([0.3, -1.0, 0.5, 0.2]), [1e-4, 1.0, 1e2]),
    (inf.RectifiedMonomial(0), [1e-4, 1.0, 1e4]),
    (inf.RectifiedMonomial(1), [1e-4, 1.0, 1e4]),
    (inf.RectifiedMonomial(3), [1e-4, 1.0, 1e2]),
    (inf.RectifiedMonomial(6), [1e-4, 1.0, 1e2]),
]


@pytest.mark.parametrize("act,variances", CLOSED, ids=[repr(a) for a, _ in CLOSED])
def test_closed_form_agrees_with_quadrature(act, variances):
    for q1 in variances:
        for q2 in variances:
            c, v1, v2 = grid(q1, q2)
            nngp, kdot = act.expectations(c, v1, v2)
            qn, qk = g.quadrature(act.fn, c, v1, v2)
            scale = torch.sqrt(act.diagonal(v1) * act.diagonal(v2))
            assert torch.all((nngp - qn).abs() <= 1e-9 * scale), (q1, q2, (nngp - qn).abs().max())
            kscale = torch.sqrt(act.expectations(v1, v1, v1)[1] * act.expectations(v2, v2, v2)[1])
            assert torch.all((kdot - qk).abs() <= 1e-9 * kscale + 1e-300), (q1, q2, (kdot - qk).abs().max())
            # the diagonal map is the same expectation at rho = 1
            assert torch.allclose(act.diagonal(v1), act.expectations(v1, v1, v1, False)[0], rtol=1e-12)


QUAD = [inf.Tanh(), inf.Sigmoid(), inf.Softplus(), inf.Silu(), inf.Elu(), inf.Elu(0.5),
        inf.Elementwise(lambda x: torch.atan(2 * x) + 0.1 * x, name="atan")]


@pytest.mark.parametrize("act", QUAD, ids=repr)
def test_quadrature_against_higher_order(act):
    for q1, q2 in [(1e-4, 1e-4), (1.0, 1.0), (0.3, 3.0), (1e2, 1e2), (1e4, 1e4), (1e-4, 1e4)]:
        c, v1, v2 = grid(q1, q2)
        n, k = act.expectations(c, v1, v2)
        rn, rk = g.quadrature(act.fn, c, v1, v2, nodes=16, extra_panels=2)
        scale = torch.sqrt(act.diagonal(v1) * act.diagonal(v2))
        kscale = torch.sqrt(g.quadrature(act.fn, v1, v1, v1, nodes=16)[1] * g.quadrature(act.fn, v2, v2, v2, nodes=16)[1])
        assert torch.all((n - rn).abs() <= 1e-8 * scale), (q1, q2)
        assert torch.all((k - rk).abs() <= 1e-8 * kscale), (q1, q2)
        d = g.quadrature_diagonal(act.fn, v1, nodes=16, extra_panels=2)
        assert torch.allclose(act.diagonal(v1), d, rtol=1e-8, atol=0)


def test_logistic_sigmoid_is_not_an_erf_stand_in():
    v = torch.tensor([1.0], dtype=DT)
    sig = inf.Sigmoid().diagonal(v)
    erf_like = inf.Erf(0.5, 1 / 2.4020563531719796, 0.5).diagonal(v)
    assert abs(float(sig - erf_like)) > 1e-5


def test_arccos_polynomials_known_orders():
    # Cho and Saul 2009: J0 = pi - t, J1 = sin t + (pi - t) cos t, J2 = 3 sin t cos t + (pi - t)(1 + 2 cos^2 t)
    assert g.arccos_polynomials(0) == ((0.0,), (1.0,))
    p1, q1 = g.arccos_polynomials(1)
    assert p1[0] == 1 and q1[:2] == (0.0, 1.0)
    p2, q2 = g.arccos_polynomials(2)
    assert p2[:2] == (0.0, 3.0) and q2[:3] == (1.0, 0.0, 2.0)


@pytest.mark.parametrize("k", [0, 1, 2, 7, 12, 25])
def test_arccos_kernel_exact_moments(k):
    q = torch.tensor([0.7], dtype=DT)
    # rho = 1: E[u^2k 1(u>0)] = q^k (2k-1)!! / 2 ; rho = 0: (E[u^k 1(u>0)])^2 = q^k (2^(k/2-1) G((k+1)/2)/sqrt(pi))^2
    double_fact = math.prod(range(2 * k - 1, 0, -2)) if k else 1
    at_one = float(g.arccos_kernel(k, q, q, q))
    assert at_one == pytest.approx(0.7**k * double_fact / 2, rel=1e-12)
    m = 2 ** (k / 2 - 1) * math.gamma((k + 1) / 2) / math.sqrt(math.pi)
    at_zero = float(g.arccos_kernel(k, torch.zeros(1, dtype=DT), q, q))
    assert at_zero == pytest.approx(0.7**k * m * m, rel=1e-12)
    assert float(g.arccos_kernel(k, -q, q, q)) == pytest.approx(0.0, abs=1e-12 * at_one)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_monomial_exact_moments(k):
    q1, q2 = 0.8, 1.7
    cov = torch.tensor([math.sqrt(q1 * q2)], dtype=DT)
    # rho = 1: E[u^k v^k] = sqrt(q1 q2)^k E[z^2k] = sqrt(q1 q2)^k (2k-1)!!
    expected = math.sqrt(q1 * q2) ** k * math.prod(range(2 * k - 1, 0, -2))
    n, kd = g.monomial(k, cov, torch.tensor([q1], dtype=DT), torch.tensor([q2], dtype=DT))
    assert float(n) == pytest.approx(expected, rel=1e-12)
    expected_dot = k * k * math.sqrt(q1 * q2) ** (k - 1) * math.prod(range(2 * k - 3, 0, -2))
    assert float(kd) == pytest.approx(expected_dot, rel=1e-12)


ALL = [a for a, _ in CLOSED] + QUAD


@pytest.mark.parametrize("act", ALL, ids=repr)
def test_degenerate_inputs_are_finite(act):
    v = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0], dtype=DT)
    w = torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0, 2.0], dtype=DT)
    c = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, -2.0], dtype=DT)  # zero variance, rho = +1, rho = -1
    n, k = act.expectations(c, v, w)
    assert torch.isfinite(n).all() and torch.isfinite(k).all()
    assert torch.isfinite(act.diagonal(v)).all()
    # a zero-variance input is the constant 0: E[phi(0) phi(v)] = phi(0) E[phi(v)]
    zero = torch.zeros(1, dtype=DT)
    assert float(n[0]) == pytest.approx(float(act.fn(zero)) ** 2, abs=1e-12)


def test_gaussian_activation_divergence_is_an_error():
    v = torch.tensor([10.0], dtype=DT)
    with pytest.raises(ValueError, match="infinite"):
        g.gaussian(1.0, 0.1, v, v, v)


def test_price_theorem_kdot_for_user_closed_form():
    def nngp_fn(c, v1, v2):  # erf closed form
        return (2 / math.pi) * torch.asin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2)))

    act = inf.Elementwise(torch.erf, nngp_fn=nngp_fn)
    c, v1, v2 = grid(0.5, 2.0)
    c = c[1:-6]  # away from rho = +-1 where asin's derivative is singular
    v1, v2 = v1[1:-6], v2[1:-6]
    _, kdot = act.expectations(c, v1, v2)
    _, exact = g.erf(1.0, 1.0, 0.0, c, v1, v2)
    assert torch.allclose(kdot, exact, rtol=1e-10)


def _direct(monkeypatch, act, cov, var):
    with monkeypatch.context() as patch:
        patch.setattr(g, "UNIFORM_MIN_ENTRIES", 10**15)
        return g.quadrature(act.fn, cov, var, var, True, dfn=act.derivative())


@pytest.mark.parametrize("act", [inf.Tanh(), inf.Sigmoid(), inf.Softplus(), inf.Silu(),
                                 inf.Elementwise(lambda x: torch.tanh(x) + 0.1 * x * x)], ids=repr)
@pytest.mark.parametrize("variance", [1e-2, 1.0, 30.0])
def test_uniform_variance_interpolation_matches_direct_quadrature(monkeypatch, act, variance):
    monkeypatch.setattr(g, "UNIFORM_MIN_ENTRIES", 256)  # fewer entries for a quick direct reference
    gen = torch.Generator().manual_seed(0)
    rho = torch.cat([torch.rand(400, generator=gen, dtype=torch.float64) * 2 - 1,
                     torch.tensor([1.0, -1.0, 1 - 1e-12, -1 + 1e-9, 0.0], dtype=torch.float64)])
    cov, var = rho * variance, torch.full_like(rho, variance)
    fast = g.quadrature(act.fn, cov, var, var, True, dfn=act.derivative())
    slow = _direct(monkeypatch, act, cov, var)
    for a, b in zip(fast, slow):
        assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max())


def test_uniform_variance_interpolation_declines_kinks_and_unequal_variances(monkeypatch):
    kinked = inf.Elementwise(torch.relu)  # E[relu relu] has a (1 - rho)^(3/2) term: not resolved -> direct
    monkeypatch.setattr(g, "UNIFORM_MIN_ENTRIES", 256)
    gen = torch.Generator().manual_seed(1)
    rho = torch.rand(400, generator=gen, dtype=torch.float64) * 2 - 1
    var = torch.ones_like(rho)
    assert g._uniform_variance(kinked.fn, rho, var, var, True, None, 8, 0) is None
    unequal = var.clone()
    unequal[0] = 1.0 + 1e-9
    assert g._uniform_variance(inf.Tanh().fn, rho, unequal, var, True, None, 8, 0) is None
    fast = g.quadrature(kinked.fn, rho, var, var, True)  # served by the (rho, log var) interpolant instead
    slow = _direct(monkeypatch, kinked, rho, var)
    for a, b in zip(fast, slow):
        assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max())


def test_relu_family_derivative_is_exact_in_the_input_precision():
    """phi' of ABRelu (what the sampled layers apply) is a and b themselves, not float32 roundings of them."""
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    for act in (inf.LeakyRelu(0.01), inf.ABRelu(-0.3, 1.7), inf.Relu()):
        expected = torch.tensor([act.a, act.a, act.b], dtype=torch.float64)
        assert torch.equal(act.derivative()(x), expected)
        assert torch.equal(act.derivative()(x), g.autograd_derivative(act.fn)(x))


def test_quadrature_expectations_of_one_entry_and_of_identical_inputs():
    """A scalar entry (mean-field maps call the kernel on one) gives the value of a vector of one; an entry whose
    two inputs are the same (cov = var1 = var2) takes the one-dimensional diagonal rule, in any shape."""
    act = inf.Tanh()
    var = torch.tensor(0.7, dtype=torch.float64)
    for cov in (torch.tensor(0.3, dtype=torch.float64), var):
        nngp, kdot = act.expectations(cov, var, var)
        vec = act.expectations(cov[None], var[None], var[None])
        assert nngp.ndim == 0 and kdot.ndim == 0
        assert torch.equal(nngp, vec[0][0]) and torch.equal(kdot, vec[1][0])
    nngp, _ = act.expectations(var, var, var)
    assert torch.equal(nngp, act.diagonal(var[None])[0])
    v = torch.tensor([0.5, 0.9, 0.5], dtype=torch.float64)
    cov = torch.outer(v.sqrt(), v.sqrt()) * 0.4
    cov.diagonal().copy_(v)
    cov[0, 2] = cov[2, 0] = 0.5  # examples 0 and 2 identical (variance 0.5, covariance 0.5); 0 and 1 not
    nngp, kdot = act.expectations(cov, v[:, None], v[None, :])
    diag = act.diagonal(v)
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 2), (2, 0)):
        assert float(nngp[i, j]) == float(diag[i if i == j else 0])
    assert float(nngp[0, 1]) != float(diag[0])
