"""Joint laws of correlated values (infinet.engine.laws) and graphs of values (inf.ValueGraph)."""

from __future__ import annotations

import pytest
import torch

import infinet as inf
from tests._statistics import assert_sampled_within_standard_errors, max_combined_z

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def assert_equal_within_errors(drawn, exact, limit=4.0):
    assert drawn.sampled
    for name in ("nngp", "ntk"):
        se = getattr(exact, name + "_se")
        assert max_combined_z(getattr(drawn, name), getattr(drawn, name + "_se"), getattr(exact, name), se) < limit


def post_activation_block(width):
    return inf.serial(inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Dense(width), inf.Relu(),
                                                                               inf.Dense(width))),
                      inf.FanInSum(), inf.Relu())


def test_post_activation_residual_network_matches_its_finite_networks():
    """relu(f(h) + h) with h a ReLU output: the sum is not Gaussian, its law is drawn."""
    x = randn(4, 5, seed=1)

    def net(width):
        return inf.serial(inf.Dense(width, b_std=0.1), inf.Relu(), inf.Dense(width), post_activation_block(width),
                          post_activation_block(width), inf.Dense(1))

    kernel = net(512).kernel(x)
    assert_sampled_within_standard_errors(kernel, inf.monte_carlo_kernel(net(1024), x, n_samples=64, seed=2))


def test_a_function_of_one_value_read_twice_is_that_activation():
    """h + relu(h), then tanh: one activation of h, exact by quadrature."""
    x = randn(5, 4, seed=2)
    drawn = inf.serial(inf.Dense(32), inf.FanOut(2), inf.parallel(inf.Identity(), inf.Relu()), inf.FanInSum(),
                       inf.Tanh(), inf.Dense(1)).kernel(x)
    exact = inf.serial(inf.Dense(32), inf.Elementwise(lambda h: torch.tanh(h + torch.relu(h)), name="f"),
                       inf.Dense(1)).kernel(x)
    assert_equal_within_errors(drawn, exact)


def test_an_activation_after_max_pooling_reads_its_law():
    """Conv > MaxPool > ReLU is Conv > MaxPool(activation=ReLU): the pooled values' law is drawn."""
    x = randn(3, 1, 4, 4, seed=3)
    after = inf.serial(inf.Conv(8, 3), inf.MaxPool(2), inf.Relu(), inf.Flatten(), inf.Dense(1)).kernel(x)
    inside = inf.serial(inf.Conv(8, 3), inf.MaxPool(2, activation=inf.Relu(), samples=1024), inf.Flatten(),
                        inf.Dense(1)).kernel(x)
    assert_equal_within_errors(after, inside)


def test_a_graph_of_values_is_one_description():
    graph = inf.ValueGraph([[inf.Dense(16), [0]], [inf.Relu(), [1]], [inf.Dense(16), [2]], [inf.FanInSum(), [3, 1]],
                            [inf.Relu(), [4]], [inf.FanInProd(), [5, 1]], [inf.Dense(1), [6]]])
    assert repr(inf.parse_spec(repr(graph))) == repr(graph)
    model = graph.build(5, seed=0, dtype=F64)
    assert model(randn(3, 5)).shape == (3, 1)
    assert inf.from_torch(model).__class__ is inf.ValueGraph
    for nodes, match in (([], "at least one node"), ([[inf.Dense(4), [1]]], "index from 0"),
                         ([[inf.Dense(4)]], r"\[layer, \[input indices\]\]")):
        with pytest.raises(ValueError, match=match):
            inf.ValueGraph(nodes)


def test_values_whose_joint_law_is_not_tracked_are_refused():
    """LayerNorm's output is correlated with its input, and a sum of the two needs their joint law, which is not
    tracked through a normalization: refused, naming the layer, not computed as if independent."""
    net = inf.serial(inf.Dense(8), inf.FanOut(2), inf.parallel(inf.LayerNorm(), inf.Identity()), inf.FanInSum(),
                     inf.Relu(), inf.Dense(1))
    with pytest.raises(ValueError, match=r"LayerNorm.*not tracked"):
        net.kernel(randn(3, 4))


def test_exact_networks_stay_exact():
    """Closed forms are kept: a pre-activation residual block and independent products draw nothing."""
    x = randn(3, 4)
    residual = inf.serial(inf.Dense(8), inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Relu(), inf.Dense(8))),
                          inf.FanInSum(), inf.Relu(), inf.Dense(1))
    product = inf.serial(inf.FanOut(2), inf.parallel(inf.serial(inf.Dense(8), inf.Relu()),
                                                     inf.serial(inf.Dense(8), inf.Erf())), inf.FanInProd(),
                         inf.Dense(1))
    for net in (residual, product):
        kernel = net.kernel(x)
        assert not kernel.sampled and not net.draws_laws((4,))
