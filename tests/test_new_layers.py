"""Issue 18's layers on their own: finite modules, closed forms against independent computations, and
clear errors for bad arguments and inputs."""

import math

import numpy as np
import pytest
import torch

import infinet as inf
from infinet import gaussian

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("act", [inf.Rbf(0.6), inf.Gabor(), inf.Hermite(3), inf.Hermite(0)])
def test_closed_forms_equal_quadrature(act):
    """E[phi(u) phi(v)] and E[phi'(u) phi'(v)] against bivariate quadrature of the finite function."""
    v1 = torch.tensor([0.3, 1.0, 2.5, 0.8], dtype=F64)
    v2 = torch.tensor([0.5, 1.0, 0.7, 3.0], dtype=F64)
    cov = torch.tensor([0.2, -0.6, 1.1, 0.0], dtype=F64)
    nngp, kdot = act.expectations(cov, v1, v2)
    q_nngp, q_kdot = gaussian.quadrature(act.fn, cov, v1, v2, True)
    assert torch.allclose(nngp, q_nngp, rtol=1e-8, atol=1e-10)
    assert torch.allclose(kdot, q_kdot, rtol=1e-8, atol=1e-10)


def test_hermite_is_normalized_and_gives_powers_of_the_correlation():
    rho = torch.linspace(-1, 1, 9, dtype=F64)
    one = torch.ones_like(rho)
    for degree in range(6):
        nngp, kdot = inf.Hermite(degree).expectations(rho, one, one)
        assert torch.allclose(nngp, rho**degree, atol=1e-12)
        assert torch.allclose(kdot, degree * rho ** max(degree - 1, 0) if degree else torch.zeros_like(rho), atol=1e-12)


def test_exp_normalized_module_reproduces_its_dual_kernel():
    """The finite activation g of ExpNormalized: E[g(u) g(v)] = exp(gamma (rho + shift)) on unit variances."""
    layer = inf.ExpNormalized(gamma=2.0, shift=-0.5)
    rho = torch.tensor([-0.7, 0.0, 0.4, 0.95], dtype=F64)
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    z1, z2 = np.meshgrid(nodes, nodes, indexing="ij")
    w = np.outer(weights, weights) / (2 * math.pi)
    for r in rho.tolist():
        u = torch.as_tensor(z1, dtype=F64)
        v = torch.as_tensor(r * z1 + math.sqrt(1 - r * r) * z2, dtype=F64)
        value = float((torch.as_tensor(w) * layer.fn(u) * layer.fn(v)).sum())
        assert value == pytest.approx(math.exp(2.0 * (r - 0.5)), rel=1e-9)


def test_convlocal_module_has_weights_per_position_and_matches_a_convolution_when_tied():
    layer = inf.ConvLocal(5, (2, 3), stride=(1, 2), padding="SAME", b_std=0.3)
    model = inf.serial(layer).build((2, 4, 7), seed=0)
    module = model[0]
    assert tuple(module.weight.shape) == (5, 2, 2, 3, 4, 4) and tuple(module.bias.shape) == (5, 4, 4)
    x = randn(3, 2, 4, 7)
    with torch.no_grad():  # tie the weights across positions: a shared-weight convolution
        module.weight.copy_(module.weight[..., :1, :1].expand_as(module.weight))
        module.bias.copy_(module.bias[:, :1, :1].expand_as(module.bias))
    conv = inf.serial(inf.Conv(5, (2, 3), stride=(1, 2), padding="SAME", b_std=0.3)).build((2, 4, 7), seed=1)[0]
    with torch.no_grad():
        conv.weight.copy_(module.weight[..., 0, 0])
        conv.bias.copy_(module.bias[:, 0, 0])
    assert torch.allclose(model(x.float()), conv(x.float()), atol=1e-5)


def test_convlocal_kernel_is_zero_between_positions():
    """Below a pooling layer the full layout appears: different positions are independent."""
    x = randn(2, 3, 5)
    k = inf.ConvLocal(4, 3, padding="SAME", b_std=0.2).kernel_fn(
        inf.kernel.input_kernel(x, None, True, full=True), full_out=True)
    off = k.nngp.clone()
    off[:, :, torch.arange(5), torch.arange(5)] = 0
    assert torch.equal(off, torch.zeros_like(off)) and bool((k.nngp[:, :, 2, 2] != 0).all())


def test_index_resize_and_dot_general_modules():
    x = randn(2, 3, 4, 6)
    assert torch.equal(inf.Index(":, :, 1:3, -1").build((3, 4, 6))(x), x[:, :, 1:3, -1])
    m = randn(6, 2, seed=1)
    rhs = inf.DotGeneral(rhs=m, dimension_numbers=(((3,), (0,)), ((), ()))).build((3, 4, 6))(x)
    lhs = inf.DotGeneral(lhs=m.T, dimension_numbers=(((1,), (3,)), ((), ()))).build((3, 4, 6))(x)
    assert torch.allclose(rhs, x @ m) and torch.allclose(lhs, (x @ m).transpose(2, 3))
    assert torch.allclose(inf.DotGeneral(rhs=2.5).build((3, 4, 6))(x), 2.5 * x)
    nearest = inf.ImageResize((-1, -1, 8, 12), "nearest").build((3, 4, 6))(x)
    assert torch.equal(nearest, x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_graph_modules_take_the_graph_per_call():
    net = inf.serial(inf.Dense(4), inf.Aggregate(), inf.GlobalSumPool())
    model = net.build((3, 5), seed=0)
    x = randn(2, 3, 5).float()
    a = torch.eye(5).expand(2, 5, 5)
    plain = inf.serial(inf.Dense(4), inf.GlobalSumPool()).build((3, 5), seed=0)
    assert torch.allclose(model(x, pattern=a), plain(x))  # identity graph: no message passing
    arcs = torch.tensor([[[0, 1], [2, 1], [-1, 3]], [[4, 4], [4, 4], [0, 0]]])
    dense = torch.zeros(2, 5, 5)
    dense[0, 0, 1] = dense[0, 2, 1] = 1
    dense[1, 4, 4], dense[1, 0, 0] = 2, 1
    sparse = inf.serial(inf.Dense(4), inf.Aggregate(implementation="SPARSE"), inf.GlobalSumPool()).build((3, 5), seed=0)
    assert torch.allclose(sparse(x, pattern=arcs), model(x, pattern=dense), atol=1e-6)
    with pytest.raises(ValueError, match="pattern="):
        model(x)


@pytest.mark.parametrize("make, message", [
    (lambda: inf.Rbf(-1.0), "gamma must be a finite number >= 0"),
    (lambda: inf.ExpNormalized(gamma=-0.5), "not a covariance"),
    (lambda: inf.Hermite(-1), "degree must be an integer >= 0"),
    (lambda: inf.Hermite(2.5), "degree must be an integer >= 0"),
    (lambda: inf.Index("1:2:3:4"), "cannot read"),
    (lambda: inf.Index((0.5,)), "integers, slices"),
    (lambda: inf.ImageResize((-1, 3, 4, 4)), "keep the batch and channel axes"),
    (lambda: inf.ImageResize((-1, -1, 0)), "positive, or -1"),
    (lambda: inf.ImageResize((-1, -1, 4), method="bicubical"), "unknown resize method"),
    (lambda: inf.DotGeneral(), "exactly one constant operand"),
    (lambda: inf.DotGeneral(lhs=1.0, rhs=1.0), "exactly one constant operand"),
    (lambda: inf.DotGeneral(rhs=[1.0, float("nan")]), "must be finite"),
    (lambda: inf.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((2,), (0,)), ((0,), (0,)))), "batch dimensions"),
    (lambda: inf.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((2,), (1,)), ((), ()))), "do not fit a constant"),
    (lambda: inf.Aggregate(aggregate_axis=1), "position axes"),
    (lambda: inf.Aggregate(implementation="COO"), "unknown Aggregate implementation"),
    (lambda: inf.ConvLocal(0), "positive integer"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("net, shape, message", [
    (inf.serial(inf.Dense(4), inf.Index(":, 0"), inf.Flatten(), inf.Dense(1)), (3, 5), "keep the channel axis"),
    (inf.serial(inf.Dense(4), inf.Index(":, :, 7"), inf.Dense(1)), (3, 5), "out of range"),
    (inf.serial(inf.Dense(4), inf.Index(":, :, 3:3"), inf.Flatten(), inf.Dense(1)), (3, 5), "selects no position"),
    (inf.serial(inf.Dense(4), inf.ImageResize((-1, -1, 3, 3)), inf.Flatten(), inf.Dense(1)), (3, 5), "spatial axes"),
    (inf.serial(inf.Dense(4), inf.DotGeneral(rhs=torch.ones(4), dimension_numbers=(((2,), (0,)), ((), ()))),
                inf.Dense(1)), (3, 5), "has size 5"),
    (inf.serial(inf.Dense(4), inf.DotGeneral(rhs=torch.ones(4), dimension_numbers=(((1,), (0,)), ((), ()))),
                inf.Dense(1)), (3, 5), "only position axes"),
    (inf.serial(inf.Dense(4), inf.Aggregate(), inf.Dense(1)), (5,), "not vectors"),
])
def test_bad_architectures_are_named_before_any_kernel(net, shape, message):
    with pytest.raises(ValueError, match=message):
        net.kernel(randn(2, *shape))


def test_graph_inputs_are_checked():
    net = inf.serial(inf.Dense(4), inf.Aggregate(), inf.GlobalAvgPool(), inf.Dense(1))
    x = randn(3, 2, 5)
    a = torch.ones(3, 5, 5, dtype=F64)
    with pytest.raises(ValueError, match="needs the graphs"):
        net.kernel(x)
    with pytest.raises(ValueError, match="one graph per example"):
        net.kernel(x, pattern=a[:2])
    with pytest.raises(ValueError, match=r"must have shape \(N, \*\(5,\), \*\(5,\)\)"):
        net.kernel(x, pattern=torch.ones(3, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match="contains NaN"):
        net.kernel(x, pattern=a * float("nan"))
    with pytest.raises(ValueError, match="pass its graphs as pattern2"):
        net.kernel(x, x[:2], pattern=a)
    with pytest.raises(ValueError, match="pattern2 is for x2"):
        net.kernel(x, pattern=a, pattern2=a)
    with pytest.raises(ValueError, match="no Aggregate layer"):
        inf.serial(inf.Dense(4), inf.GlobalAvgPool(), inf.Dense(1)).kernel(x, pattern=a)
    sparse = inf.serial(inf.Dense(4), inf.Aggregate(implementation="SPARSE"), inf.GlobalAvgPool(), inf.Dense(1))
    with pytest.raises(ValueError, match="integer node coordinates"):
        sparse.kernel(x, pattern=torch.zeros(3, 4, 2, dtype=F64))
    with pytest.raises(ValueError, match="beyond the positions"):
        sparse.kernel(x, pattern=torch.full((3, 4, 2), 5))
    with pytest.raises(ValueError, match=r"shape \(N, E, 1, 2\)"):
        sparse.kernel(x, pattern=torch.zeros(3, 4, 3, dtype=torch.long))


def test_rectangular_graph_kernels_match_the_symmetric_one():
    net = inf.serial(inf.Dense(6, b_std=0.1), inf.Aggregate(), inf.Erf(), inf.Dense(6), inf.Aggregate(),
                     inf.GlobalAvgPool(), inf.Dense(1))
    x = randn(5, 2, 4)
    a = (torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(3)) < 0.5).to(F64)
    full = net.kernel(x, pattern=a)
    rect = net.kernel(x[:2], x[2:], pattern=a[:2], pattern2=a[2:])
    assert torch.allclose(rect.ntk, full.ntk[:2, 2:], rtol=1e-12)
    same_x_other_graph = net.kernel(x[:1], x[:1], pattern=a[:1], pattern2=a[1:2])
    assert not torch.allclose(same_x_other_graph.nngp, full.nngp[:1, :1])  # graphs are part of the input


def test_exp_normalized_refuses_a_series_it_cannot_form():
    assert len(inf.ExpNormalized(0.0).coefficients()) == 1
    with pytest.raises(ValueError, match="above 700"):
        inf.ExpNormalized(800.0).coefficients()
