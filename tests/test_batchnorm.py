"""BatchNorm (train mode): sampled kernel against the Laplace-method integral of Yang et al. 2019 for ReLU,
against Monte Carlo of width-1024 networks, and what it refuses (kernels without a well-defined limit)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import infinet as inf
from tests._statistics import assert_case_matches_wide_networks, max_combined_z
from infinet.layers.batchnorm import relu_batchnorm_integral

F64 = torch.float64
W = 1024


def inputs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)



@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_relu_batchnorm_matches_the_integral_formula(eps):
    x = inputs(6, 5, seed=1)
    pre = inf.Dense(8, w_std=1.3, b_std=0.2)
    sampled = inf.serial(pre, inf.BatchNorm(activation=inf.Relu(), eps=eps, samples=512)).kernel(x)
    exact = relu_batchnorm_integral(pre.kernel(x).nngp, eps=eps, nodes=400)
    assert float(sampled.nngp_se.max() / exact.abs().max()) < 0.01  # the check below has teeth
    assert max_combined_z(sampled.nngp, sampled.nngp_se, exact) < 4.0


def test_relu_batchnorm_over_feature_maps_matches_the_integral_formula():
    """Feature maps: statistics over the batch and the positions (D = B x S), seen through a global average."""
    from infinet.kernel import input_kernel

    x = inputs(3, 2, 3, 3, seed=2)
    pre = inf.Conv(4, 3, w_std=1.4)
    cov = pre.kernel_fn(input_kernel(x, None, False, full=True)).nngp  # (3, 3, 3, 3, 3, 3): every pixel pair
    d = 3 * 9
    sigma = cov.reshape(3, 3, 9, 9).permute(0, 2, 1, 3).reshape(d, d)
    exact = relu_batchnorm_integral(sigma, eps=1e-5, nodes=400).reshape(3, 9, 3, 9).permute(0, 2, 1, 3)
    out = inf.serial(pre, inf.BatchNorm(activation=inf.Relu(), samples=256), inf.GlobalAvgPool()).kernel(x)
    assert max_combined_z(out.nngp, out.nngp_se, exact.mean(dim=(2, 3))) < 4.0


CASES = {
    "dense-relu": (lambda: inf.serial(inf.Dense(W, w_std=1.3, b_std=0.2), inf.BatchNorm(activation=inf.Relu()),
                                      inf.Dense(W, w_std=1.2), inf.Erf(), inf.Dense(1)), (5, 4)),
    "dense-identity-eps": (lambda: inf.serial(inf.Dense(W, w_std=0.7), inf.BatchNorm(eps=0.3), inf.Dense(1, b_std=0.1)),
                           (4, 3)),
    "conv-relu": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.4, b_std=0.1), inf.BatchNorm(activation=inf.Relu()),
                                     inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 3, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_kernel_matches_wide_finite_networks(name):
    make, shape = CASES[name]
    assert_case_matches_wide_networks(make(), inputs(*shape, seed=3), mc_seed=5)


def test_kernel_is_symmetric_psd_and_finite():
    x = inputs(7, 3, seed=6)
    k = inf.serial(inf.Dense(4, w_std=1.5), inf.BatchNorm(activation=inf.Gelu()), inf.Dense(1)).kernel(x)
    for name in ("nngp", "ntk"):
        t, se = getattr(k, name), getattr(k, name + "_se")
        assert torch.isfinite(t).all() and torch.isfinite(se).all() and torch.equal(t, t.T)
        assert float(torch.linalg.eigvalsh(t).min()) > -4 * float(se.norm())


def test_finite_module_is_train_mode_batchnorm():
    x = inputs(6, 3, 4, 4, seed=7)
    model = inf.serial(inf.Conv(5, 3), inf.BatchNorm(activation=inf.Relu(), eps=1e-3)).build(seed=1)
    y = model[0](x).detach()
    expected = torch.relu(F.batch_norm(y, None, None, training=True, eps=1e-3))
    assert torch.allclose(model(x).detach(), expected, rtol=0, atol=1e-12)
    means = F.batch_norm(y, None, None, training=True).mean(dim=(0, 2, 3))
    assert float(means.abs().max()) < 1e-12  # statistics over the batch and the positions, per channel


def test_refusals():
    net = inf.serial(inf.Dense(4), inf.BatchNorm(activation=inf.Relu()), inf.Dense(1))
    x = inputs(5, 3)
    with pytest.raises(ValueError, match="whole batch"):
        net.kernel(x, inputs(2, 3, seed=1))
    with pytest.raises(ValueError, match="one\\s+tile|in one tile"):
        net.kernel(x, tile_size=2)
    with pytest.raises(ValueError, match="Gaussian"):
        inf.serial(inf.Dense(4), inf.Relu(), inf.BatchNorm(), inf.Dense(1)).kernel(x)
    with pytest.raises(ValueError, match="eps"):
        inf.BatchNorm(eps=-1.0)
    with pytest.raises(TypeError, match="activation"):
        inf.BatchNorm(activation="relu")
    with pytest.raises(ValueError, match="whole batch"):
        inf.monte_carlo_kernel(net, x, inputs(2, 3, seed=1), n_samples=2)


def test_repeated_examples_stay_in_the_batch():
    """Duplicates change batch statistics: they are not merged as for other networks."""
    x = inputs(3, 4, seed=8)
    batch = torch.cat([x, x[:1]])
    net = inf.serial(inf.Dense(4, w_std=1.2), inf.BatchNorm(activation=inf.Relu()), inf.Dense(1))
    k = net.kernel(batch)
    pre = inf.Dense(4, w_std=1.2).kernel(batch).nngp
    exact = relu_batchnorm_integral(pre, eps=1e-5, nodes=400)
    head = inf.serial(inf.Dense(4, w_std=1.2), inf.BatchNorm(activation=inf.Relu())).kernel(batch)
    assert max_combined_z(head.nngp, head.nngp_se, exact) < 4.0
    assert torch.allclose(k.nngp[0], k.nngp[3], atol=1e-12)  # the two copies are the same example
