"""Issue 18's layers against Monte Carlo of finite networks of width 1024 (within 4 standard errors),
including the cases where neural-tangents has no finite network (ExpNormalized), computes another
quantity (Hermite off unit variance) or resizes the wrong axes (ImageResize after one Conv)."""

from __future__ import annotations

import pytest
import torch

import infinet as inf
from tests._statistics import assert_within_standard_errors

F64 = torch.float64
W = 1024


def inputs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def graphs(n, v, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, v, v, generator=gen) < 0.4).to(F64) * (0.5 + torch.rand(n, v, v, generator=gen, dtype=F64))


CASES = {
    "rbf": (lambda: inf.serial(inf.Dense(W, w_std=1.2, b_std=0.1), inf.Rbf(0.7), inf.Dense(1)), (4, 5)),
    "gabor": (lambda: inf.serial(inf.Dense(W, w_std=1.3, b_std=0.2), inf.Gabor(), inf.Dense(1, b_std=0.1)), (4, 5)),
    "expnormalized": (lambda: inf.serial(inf.Dense(W, w_std=1.4, b_std=0.1), inf.ExpNormalized(1.5, -0.5),
                                         inf.Dense(1)), (4, 5)),
    "hermite-unit-variance": (lambda: inf.serial(inf.Dense(W), inf.LayerNorm(), inf.Hermite(3), inf.Dense(1)), (4, 5)),
    "hermite-any-variance": (lambda: inf.serial(inf.Dense(W, w_std=0.8, b_std=0.3), inf.Hermite(2), inf.Dense(1)),
                             (4, 5)),
    "convlocal": (lambda: inf.serial(inf.ConvLocal(W, 3, padding="SAME", w_std=1.3, b_std=0.2), inf.Relu(),
                                     inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 4, 5)),
    "convlocal-strided": (lambda: inf.serial(inf.ConvLocal(W, 2, stride=2, w_std=1.3), inf.Erf(), inf.Flatten(),
                                             inf.Dense(1)), (3, 2, 6)),
    "convlocal-standard": (lambda: inf.serial(inf.ConvLocal(W, 3, padding="SAME", w_std=1.2, b_std=0.3,
                                                          parameterization="standard"), inf.Relu(),
                                              inf.Dense(1, parameterization="standard"), inf.Flatten()), (3, 2, 5)),
    "index-last-step": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.4, b_std=0.1), inf.Relu(),
                                           inf.Index(inf.Slice[:, :, -1]), inf.Dense(1)), (3, 2, 6)),
    "index-then-relu": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.4), inf.Index(inf.Slice[:, :, ::2, 1]), inf.Relu(),
                                           inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 5, 4)),
    "resize-linear-after-one-conv": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.3, b_std=0.1), inf.Relu(),
                                                        inf.ImageResize((-1, -1, 3, 4), "linear"), inf.GlobalAvgPool(),
                                                        inf.Dense(1)), (3, 2, 5, 6)),
    "resize-nearest-up": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.3), inf.Relu(), inf.ImageResize((-1, -1, 7, -1),
                                                                                                 "nearest"),
                                             inf.Flatten(), inf.Dense(1)), (3, 2, 5, 3)),
    "resize-cubic": (lambda: inf.serial(inf.Dense(W, w_std=1.2), inf.Erf(), inf.ImageResize((-1, -1, 9), "cubic"),
                                        inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 6)),
    "dotgeneral-lhs": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.3, b_std=0.1), inf.Relu(),
                                          inf.DotGeneral(lhs=inputs(3, 6, seed=5), dimension_numbers=(((1,), (2,)),
                                                                                                      ((), ()))),
                                          inf.Flatten(), inf.Dense(1)), (3, 2, 6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_finite_networks(name):
    make, shape = CASES[name]
    x = inputs(*shape, seed=1)
    net = make()
    assert_within_standard_errors(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=48, seed=3))


@pytest.mark.parametrize("sparse", [False, True])
def test_graph_network_matches_finite_networks(sparse):
    a = graphs(3, 5, seed=2)
    pattern = a
    if sparse:  # the same graphs as arc lists, unit weights, padded with -1
        a = (a > 0).to(F64)
        arcs = torch.full((3, 25, 2), -1, dtype=torch.long)
        for n in range(3):
            tails, heads = a[n].nonzero(as_tuple=True)
            arcs[n, : len(tails), 0], arcs[n, : len(tails), 1] = tails, heads
        pattern = arcs
    impl = "SPARSE" if sparse else "DENSE"
    net = inf.serial(inf.Dense(W, w_std=1.2, b_std=0.1), inf.Aggregate(implementation=impl), inf.Relu(),
                     inf.Dense(W, w_std=1.1), inf.Aggregate(implementation=impl), inf.LayerNorm(), inf.Relu(),
                     inf.GlobalAvgPool(), inf.Dense(1))
    x = inputs(3, 2, 5, seed=4)
    exact = net.kernel(x, pattern=pattern)
    assert_within_standard_errors(exact, inf.monte_carlo_kernel(net, x, n_samples=32, seed=5, pattern=pattern))
    if sparse:
        dense = inf.serial(*[inf.Aggregate() if isinstance(layer, inf.Aggregate) else layer for layer in net.layers])
        assert torch.allclose(dense.kernel(x, pattern=a).nngp, exact.nngp, rtol=1e-12, atol=0)
