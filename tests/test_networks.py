"""Whole networks: exact known values, and agreement with Monte Carlo estimates from finite networks."""

import math

import pytest
import torch

import infinet as inf

DT = torch.float64


def inputs(n=4, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("hidden", [1, 2, 3, 5])
def test_relu_critical_known_values(hidden):
    # w_std^2 = 2, b_std = 0: every Dense output has NNGP(x, x) = 2|x|^2/d, and the readout after
    # L hidden layers has NTK(x, x) = (L + 1) 2|x|^2/d.
    x = inputs(6, 7)
    x[3] = 0.0  # a zero input row is legal
    w = math.sqrt(2.0)
    layers = []
    for depth in range(1, hidden + 2):
        layers += [inf.Dense(64, w_std=w)]
        k = inf.serial(*layers).kernel(x)
        expected = 2 * (x * x).sum(1) / x.shape[1]
        assert torch.allclose(torch.diagonal(k.nngp), expected, rtol=1e-13, atol=0)
        assert torch.allclose(k.var1, expected, rtol=1e-13, atol=0)
        assert torch.allclose(torch.diagonal(k.ntk), depth * expected, rtol=1e-13, atol=0)
        layers += [inf.Relu()]


def test_dense_standard_parameterization_first_layers():
    x = inputs(3, 4)
    k = inf.Dense(8, w_std=1.3, b_std=0.2, parameterization="standard").kernel(x)
    assert torch.allclose(k.ntk, x @ x.T + 1.0, rtol=1e-13)  # fan_in * x.x'/d + 1 (bias)
    assert torch.allclose(k.nngp, 1.69 * x @ x.T / 4 + 0.04, rtol=1e-13)
    k2 = inf.serial(inf.Dense(8, w_std=1.3, parameterization="standard"), inf.Relu(),
                    inf.Dense(3, w_std=0.7, parameterization="standard")).kernel(x)
    relu = inf.Relu().expectations(1.69 * x @ x.T / 4, (1.69 * (x * x).sum(1) / 4)[:, None],
                                    (1.69 * (x * x).sum(1) / 4)[None, :])
    expected = 8 * relu[0] + 0.49 * relu[1] * (x @ x.T)
    assert torch.allclose(k2.ntk, expected, rtol=1e-12)


def assert_agrees(exact, mc, z=4.0):
    for name in ("nngp", "ntk"):
        e, m, se = getattr(exact, name), getattr(mc, name), getattr(mc, name + "_stderr")
        tol = z * se + 1e-9 * e.abs().max()
        worst = float(((m - e).abs() / tol).max())
        assert worst <= 1.0, f"{name}: worst deviation {worst * z:.2f} standard errors"


ACTS = [inf.Relu(), inf.LeakyRelu(0.2), inf.ABRelu(-0.5, 1.5), inf.Abs(), inf.Sign(), inf.Erf(1.2, 0.9, 0.1),
        inf.Gelu(), inf.Sin(1.0, 1.3, 0.4), inf.Cos(), inf.Gaussian(), inf.Exp(0.8, 0.4), inf.Monomial(2),
        inf.Monomial(3), inf.Polynomial([0.1, 1.0, -0.3]), inf.RectifiedMonomial(0), inf.RectifiedMonomial(2),
        inf.Tanh(), inf.Sigmoid(), inf.Softplus(), inf.Silu(), inf.Elu(0.7),
        inf.Elementwise(lambda x: torch.atan(x), name="atan")]


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_activation_kernels_match_monte_carlo(act):
    x = inputs(3, 6, seed=1) / math.sqrt(2.0)
    net = inf.serial(inf.Dense(1024, w_std=1.2, b_std=0.3), act, inf.Dense(1, w_std=0.9, b_std=0.1))
    assert_agrees(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=24, seed=3))


def test_deep_network_matches_monte_carlo_both_parameterizations():
    x = inputs(4, 5, seed=2)
    for p in ("ntk", "standard"):
        net = inf.serial(inf.Dense(1024, 1.4, 0.1, p), inf.Erf(), inf.Dense(1024, 1.4, 0.1, p), inf.Relu(),
                         inf.Dense(1, 1.0, 0.1, p))
        assert_agrees(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=24, seed=4))


def residual_block(width):
    return inf.serial(inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Relu(), inf.Dense(width, 1.0, 0.1))),
                      inf.FanInSum())


def test_residual_block_matches_monte_carlo():
    x = inputs(4, 5, seed=5)
    net = inf.serial(inf.Dense(1024, 1.0, 0.1), residual_block(1024), residual_block(1024), inf.Relu(),
                     inf.Dense(1, 1.0, 0.0))
    assert_agrees(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=24, seed=6))


def test_concat_and_product_match_monte_carlo():
    x = inputs(3, 5, seed=7)
    concat = inf.serial(inf.Dense(512, 1.3, 0.2), inf.FanOut(2),
                        inf.parallel(inf.serial(inf.Relu(), inf.Dense(1024)), inf.Identity()),
                        inf.FanInConcat(), inf.Dense(1024, 1.2, 0.1), inf.Erf(), inf.Dense(1))
    prod = inf.serial(inf.FanOut(2), inf.parallel(inf.Dense(1024, 1.1, 0.3), inf.Dense(1024, 0.8, 0.5)),
                      inf.FanInProd(), inf.Dense(1, 1.0, 0.1))
    for net in (concat, prod):
        assert_agrees(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=24, seed=8))


def test_nonlinearity_directly_after_concat_is_rejected():
    """A concatenation is not one value (each branch's features have their own law); a product is one, a known
    function of Gaussian values, whose law is drawn (tests/test_joint_laws.py)."""
    net = inf.serial(inf.FanOut(2), inf.parallel(inf.Dense(8), inf.Dense(8)), inf.FanInConcat(), inf.Relu())
    with pytest.raises(ValueError, match="Gaussian input"):
        net.kernel(inputs())


def test_residual_identity_branch_kernel_is_sum():
    x = inputs(3, 4)
    body = inf.serial(inf.Dense(16, 1.5, 0.1), inf.Tanh(), inf.Dense(16, 0.9, 0.2))
    k_res = inf.serial(inf.Dense(16, 1.2), residual_block(16)).kernel(x)
    k_id = inf.Dense(16, 1.2).kernel(x)
    k_branch = inf.serial(inf.Dense(16, 1.2), inf.Relu(), inf.Dense(16, 1.0, 0.1)).kernel(x)
    assert torch.allclose(k_res.nngp, k_id.nngp + k_branch.nngp, rtol=1e-13)
    assert torch.allclose(k_res.ntk, k_id.ntk + k_branch.ntk, rtol=1e-13)
    assert body.kernel(x).ntk.shape == (3, 3)


def test_repeat_equals_explicit_serial():
    x = inputs(5, 3)
    block = inf.serial(inf.Dense(32, 1.3, 0.1), inf.Gelu())
    a = inf.repeat(block, 3).kernel(x)
    b = inf.serial(block, block, block).kernel(x)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    model = inf.repeat(block, 3).build(3, seed=0)
    w = [m.weight for m in model.modules() if isinstance(m, inf.layers.dense.DenseModule)]
    assert len(w) == 3 and not torch.equal(w[1], w[2])  # independent copies


def test_get_selects_kernels():
    x = inputs()
    net = inf.serial(inf.Dense(8), inf.Relu(), inf.Dense(1))
    only = net.kernel(x, get="nngp")
    assert only.ntk is None and torch.allclose(only.nngp, net.kernel(x).nngp)
    assert net.kernel(x, get=("ntk",)).nngp is None
