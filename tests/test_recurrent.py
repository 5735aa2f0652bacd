"""Recurrent layers: kernels against finite networks, an independent recursion, layouts, modules, errors."""

import math

import pytest
import torch

import infinet as inf
from _statistics import assert_within_standard_errors
from infinet.empirical import empirical_ntk

F64 = torch.float64
ACTIVATIONS = {"relu": inf.Relu, "erf": inf.Erf, "tanh": inf.Tanh}


def sequences(n=3, c=3, length=5, seed=0):
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rnn(act, width, layers, readout, param, w_std=1.2, u_std=1.1, b_std=0.3):
    body = []
    for i in range(layers):
        last = i == layers - 1 and readout == "last"
        body.append(inf.Recurrent(ACTIVATIONS[act](), width, w_std=w_std, u_std=u_std, b_std=b_std,
                                  parameterization=param, return_sequence=not last))
    if readout == "mean":
        body.append(inf.GlobalAvgPool())
    return inf.serial(*body, inf.Dense(1, w_std=1.0, b_std=0.1, parameterization=param))


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_kernels_match_finite_networks(act, layers, readout, param):
    """Monte Carlo over 32 finite networks of width 1024 (fixed seed): every entry within 4 standard errors."""
    x = sequences()
    exact = rnn(act, 1024, layers, readout, param).kernel(x)
    mc = inf.monte_carlo_kernel(rnn(act, 1024, layers, readout, param), x, n_samples=32, seed=3)
    assert_within_standard_errors(exact, mc)


def _relu_pair(c, v1, v2, same):
    """Arc-cosine kernels written out (Cho and Saul 2009): E[relu relu], E[step step]. ``same``: one
    sequence at one time with itself, rho = 1 exactly (arccos near 1 would turn round-off into 1e-8)."""
    norm = math.sqrt(v1 * v2)
    rho = 1.0 if same else max(-1.0, min(1.0, c / norm))
    theta = math.acos(rho)
    return norm * (math.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi), (math.pi - theta) / (2 * math.pi)


def _direct(x1, x2, w2, u2, b2, readout, same):
    """The recursion of Alemohammad et al. 2021 (eqs. 5-7) pair by pair in plain Python floats."""
    d, length = x1.shape[0], x1.shape[1]

    def k_in(a, b, t, s):
        return sum(float(a[c, t]) * float(b[c, s]) for c in range(d)) / d

    def variances(a):
        out, q = [], 0.0
        for t in range(length):
            v = w2 * q + u2 * k_in(a, a, t, t) + b2
            out.append(v)
            q = v / 2
        return out

    va, vb = variances(x1), variances(x2)
    q = [[0.0] * length for _ in range(length)]
    p = [[0.0] * length for _ in range(length)]
    for t in range(length):
        for s in range(length):
            prev_q = q[t - 1][s - 1] if t and s else 0.0
            prev_p = p[t - 1][s - 1] if t and s else 0.0
            sigma = w2 * prev_q + u2 * k_in(x1, x2, t, s) + b2
            theta = sigma + w2 * prev_p  # input NTK is 0
            q[t][s], qdot = _relu_pair(sigma, va[t], vb[s], same and t == s)
            p[t][s] = qdot * theta
    if readout == "last":
        return q[-1][-1], p[-1][-1]
    mean = lambda m: sum(map(sum, m)) / length**2  # noqa: E731
    return mean(q), mean(p)


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_equals_a_direct_implementation(readout):
    x = sequences(n=3, c=2, length=6, seed=4)
    w, u, b = 1.3, 0.9, 0.4
    layers = [inf.Recurrent(inf.Relu(), w_std=w, u_std=u, b_std=b, return_sequence=readout == "mean")]
    if readout == "mean":
        layers.append(inf.GlobalAvgPool())
    k = inf.serial(*layers).kernel(x)
    for i in range(3):
        for j in range(3):
            q, p = _direct(x[i], x[j], w * w, u * u, b * b, readout, i == j)
            assert abs(float(k.nngp[i, j]) - q) <= 1e-12 * abs(q) + 1e-15
            assert abs(float(k.ntk[i, j]) - p) <= 1e-12 * abs(p) + 1e-15


@pytest.mark.parametrize("act, rtol", [(inf.Erf, 1e-13), (inf.Tanh, 1e-10)])  # Tanh: quadrature, ~1e-12
def test_same_time_pairs_agree_between_layouts(act, rtol):
    """The diagonal layout (linear in L) holds the same-time entries of the full one."""
    from infinet.kernel import input_kernel

    x = sequences(n=4, length=7)
    layer = inf.Recurrent(act(), w_std=1.4, b_std=0.2)
    diag = layer.kernel_fn(input_kernel(x, None, True, full=False))
    full = layer.kernel_fn(input_kernel(x, None, True, full=True))
    for name in ("nngp", "ntk"):
        got = getattr(full, name).diagonal(dim1=2, dim2=3)
        assert torch.allclose(got, getattr(diag, name), rtol=rtol, atol=0)
    assert torch.equal(full.var1.diagonal(dim1=1, dim2=2), diag.var1)


def test_symmetric_psd_and_tiling_invariant():
    x = sequences(n=7, length=6, seed=2)
    net = inf.serial(inf.Recurrent(inf.Erf(), w_std=1.6, b_std=0.1), inf.Recurrent(inf.Relu(), return_sequence=False),
                     inf.Dense(1))
    k = net.kernel(x)
    tiled = net.kernel(x, tile_size=2)
    for a, b in ((k.nngp, tiled.nngp), (k.ntk, tiled.ntk)):
        assert torch.equal(a, a.T)
        assert float(torch.linalg.eigvalsh(a).min()) >= -1e-12 * float(a.trace())
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_module_shapes_seeds_and_initialization():
    layer = inf.Recurrent(inf.Relu(), 300, w_std=1.5, u_std=0.7, b_std=0.2, parameterization="standard")
    a, b = layer.build((4, 9), seed=5), layer.build((4, 9), seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.randn(2, 4, 9)).shape == (2, 300, 9)
    # standard parameterization: W ~ N(0, w^2 / n), U ~ N(0, u^2 / d), b ~ N(0, b^2), within 5 standard errors
    for p, std in ((a.weight_hh, 1.5 / math.sqrt(300)), (a.weight_ih, 0.7 / 2), (a.bias, 0.2)):
        se = std * math.sqrt(2 / (p.numel() - 1))
        assert abs(float(p.detach().std()) - std) < 5 * se
    last = inf.Recurrent(inf.Tanh(), 16, return_sequence=False).build(seed=1)  # lazy: shape from the first call
    assert last(torch.randn(3, 2, 5)).shape == (3, 16)
    torch.manual_seed(7)
    c = layer.build((4, 9))
    torch.manual_seed(7)
    d = layer.build((4, 9))
    assert torch.equal(c.weight_hh, d.weight_hh)


def test_empirical_ntk_implementations_agree_on_a_recurrent_model():
    """The weights are shared over time: every implementation must count every use."""
    net = inf.serial(inf.Recurrent(inf.Erf(), 12, b_std=0.1), inf.Dense(5, b_std=0.2), inf.Relu(), inf.GlobalAvgPool(),
                     inf.Dense(2))
    model = net.build((3, 4), seed=0, dtype=F64)
    x = sequences(n=3, c=3, length=4)
    ref = empirical_ntk(model, x, implementation="jacobian")
    for impl in ("ntvp", "structured", "auto"):
        assert torch.allclose(empirical_ntk(model, x, implementation=impl), ref, rtol=1e-10, atol=1e-12)


def test_dense_acts_on_channels_of_sequences():
    """Dense on N x C x L is a 1x1 convolution: the same kernel, and the same finite function."""
    x = sequences(n=3, c=4, length=5)
    a = inf.serial(inf.Dense(8, w_std=1.3, b_std=0.2), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    b = inf.serial(inf.Conv(8, 1, w_std=1.3, b_std=0.2), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    ka, kb = a.kernel(x), b.kernel(x)
    assert torch.allclose(ka.nngp, kb.nngp, rtol=1e-13) and torch.allclose(ka.ntk, kb.ntk, rtol=1e-13)
    ma, mb = a.build((4, 5), seed=0, dtype=F64), b.build((4, 5), seed=0, dtype=F64)
    mb[0].weight.data.copy_(ma[0].weight.data.reshape(mb[0].weight.shape))
    mb[0].bias.data.copy_(ma[0].bias.data)
    mb[3].weight.data.copy_(ma[3].weight.data)
    assert torch.allclose(ma(x), mb(x), rtol=1e-12)


def test_spec_round_trip():
    net = inf.parse_spec("Recurrent(Tanh(), width=64, w_std=1.5, b_std=0.1, return_sequence=False) > Dense(1)")
    assert inf.parse_spec(repr(net)).kernel(sequences()).nngp.equal(net.kernel(sequences()).nngp)


@pytest.mark.parametrize("bad, message", [
    (lambda: inf.Recurrent(inf.Relu()).check((5,)), "expects sequences N x C x L"),
    (lambda: inf.Recurrent(inf.Relu()).check((3, 4, 4)), "expects sequences N x C x L"),
    (lambda: inf.Recurrent(inf.Relu()).check((3, 0)), "empty"),
    (lambda: inf.Recurrent(inf.Dense(3)), "needs an infinet activation"),
    (lambda: inf.Recurrent(inf.Relu(), width=0), "width must be a positive integer"),
    (lambda: inf.Recurrent(inf.Relu(), w_std=-1.0), "w_std must be a finite number >= 0"),
    (lambda: inf.Recurrent(inf.Relu(), return_sequence="no"), "return_sequence must be True or False"),
    (lambda: inf.Recurrent(inf.Relu(), parameterization="mup"), "unknown parameterization"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bad()


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_bidirectional_matches_finite_networks(readout):
    x = sequences(n=3, length=4, seed=6)

    def net(width):
        cell = inf.Recurrent(inf.Tanh(), width, w_std=1.3, b_std=0.2, return_sequence=readout == "mean")
        tail = [inf.Dense(width, w_std=1.1), inf.Relu(), inf.GlobalAvgPool()] if readout == "mean" else []
        return inf.serial(inf.bidirectional(cell), *tail, inf.Dense(1, b_std=0.1))

    exact = net(1024).kernel(x)
    mc = inf.monte_carlo_kernel(net(1024), x, n_samples=32, seed=2)
    assert_within_standard_errors(exact, mc)


def test_reverse_kernel_matches_reversed_inputs():
    """A network reading Reverse(x) has the kernel of the same network reading the flipped sequences,
    in both layouts (last step: diagonal; pooling: full)."""
    x = sequences(n=4, length=6, seed=8)
    for tail in ([inf.Recurrent(inf.Relu(), return_sequence=False)], [inf.Recurrent(inf.Erf()), inf.SumPool(2)]):
        head = [inf.Dense(6, w_std=1.2), inf.Tanh()]
        a = inf.serial(*head, inf.Reverse(), *tail, inf.Flatten(), inf.Dense(1)).kernel(x)
        b = inf.serial(*head, *tail, inf.Flatten(), inf.Dense(1)).kernel(torch.flip(x, (-1,)))
        assert torch.allclose(a.nngp, b.nngp, rtol=1e-13) and torch.allclose(a.ntk, b.ntk, rtol=1e-13)
    model = inf.Reverse().build((3, 6))
    assert torch.equal(model(x), torch.flip(x, (-1,)))


def test_concat_of_correlated_branches_matches_finite_networks():
    """FanInConcat needs no independence: two branches reading one input (the second a copy of it)."""
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)

    def net(width):
        return inf.serial(inf.Dense(width, w_std=1.4), inf.FanOut(2), inf.parallel(inf.Relu(), inf.Identity()),
                          inf.FanInConcat(), inf.Dense(1, b_std=0.2))

    exact = net(1024).kernel(x)
    mc = inf.monte_carlo_kernel(net(1024), x, n_samples=64, seed=0)
    assert_within_standard_errors(exact, mc)
