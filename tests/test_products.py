"""FanInProd of independent branches (issue 18, defect 4): accepted when one branch passes through random
layers of its own, refused when the branches are truly correlated."""

import pytest
import torch

import infinet as inf
from _statistics import assert_within_standard_errors

F64 = torch.float64


def products(width):
    relu_erf = inf.serial(inf.FanOut(2), inf.parallel(inf.serial(inf.Dense(width, w_std=1.3), inf.Relu()),
                                                      inf.serial(inf.Dense(width, w_std=1.1, b_std=0.2), inf.Erf())),
                          inf.FanInProd(), inf.Dense(1, b_std=0.1))
    deeper = inf.serial(inf.Dense(width, w_std=1.2), inf.Relu(), inf.FanOut(2),
                        inf.parallel(inf.serial(inf.Dense(width), inf.Tanh(), inf.Dense(width), inf.Relu()),
                                     inf.serial(inf.Dense(width, w_std=1.4), inf.Gelu())),
                        inf.FanInProd(), inf.Dense(1))
    return {"relu-erf": relu_erf, "deeper": deeper}


@pytest.mark.parametrize("name", ["relu-erf", "deeper"])
def test_products_of_independent_branches_match_finite_networks(name):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = products(1024)[name].kernel(x)
    mc = inf.monte_carlo_kernel(products(1024)[name], x, n_samples=64, seed=1)
    assert_within_standard_errors(exact, mc)


@pytest.mark.parametrize("branches, one_activation", [
    ((inf.Identity(), inf.Identity()), inf.Monomial(2)),
    ((inf.Relu(), inf.Erf()), inf.Elementwise(lambda h: torch.relu(h) * torch.erf(h), name="relu_erf")),
])
def test_correlated_products_are_the_one_activation_they_compute(branches, one_activation):
    """A product of two functions of one Gaussian value is drawn from their joint law (infinet.engine.laws):
    within its standard errors of the single activation h -> f(h) g(h), whose kernel is exact."""
    from _statistics import max_combined_z

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    drawn = inf.serial(inf.Dense(8, b_std=0.2), inf.FanOut(2), inf.parallel(*branches), inf.FanInProd(),
                       inf.Dense(1)).kernel(x)
    exact = inf.serial(inf.Dense(8, b_std=0.2), one_activation, inf.Dense(1)).kernel(x)
    assert drawn.sampled
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(drawn, name), getattr(drawn, name + "_se"), getattr(exact, name)) < 4.0


@pytest.mark.parametrize("net", [
    inf.serial(inf.Dense(8), inf.FanOut(2), inf.parallel(inf.LayerNorm(), inf.serial(inf.Relu(), inf.Dropout(0.2))),
               inf.FanInProd(), inf.Dense(1)),
])
def test_correlated_products_are_refused(net):
    with pytest.raises(ValueError, match="branches 0 and 1 are correlated"):
        net.kernel(torch.randn(3, 5, dtype=F64))
