"""Dense(trainable=False) and the fully-connected networks of Arora et al. 2020 with their first layers fixed."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import infinet as inf
from tests._statistics import assert_within_standard_errors


def arora_recursion(x: np.ndarray, depth: int, fixed: int) -> np.ndarray:
    """The NTK of Arora, Du, Li, Salakhutdinov, Wang and Yu 2020 (Sec. 3) written from the paper's formulas:
    Sigma^(0) = x x^T; per hidden layer the arc-cosine maps of Cho and Saul 2009 at angle t = arccos(rho),
    Sigma' = sqrt(ab) (sin t + (pi - t) cos t) / (2 pi) and dSigma = (pi - t) / (2 pi); Theta gains
    Sigma^(h) for every trained layer h >= fixed."""
    sigma = x @ x.T
    theta = sigma.copy() if fixed == 0 else np.zeros_like(sigma)
    for h in range(1, depth + 1):
        norm = np.sqrt(np.outer(np.diag(sigma), np.diag(sigma)))
        t = np.arccos(np.clip(sigma / norm, -1.0, 1.0))
        sigma, dot = norm * (np.sin(t) + (math.pi - t) * np.cos(t)) / (2 * math.pi), (math.pi - t) / (2 * math.pi)
        theta = theta * dot + (sigma if h >= fixed else 0.0)
    return theta


@pytest.mark.parametrize("depth,fixed", [(d, f) for d in range(5) for f in range(d + 1)])
def test_fully_connected_is_the_arora_kernel(depth, fixed):
    x = np.random.default_rng(1).standard_normal((7, 5))
    k = inf.fully_connected(depth, fixed).kernel(torch.tensor(x) * math.sqrt(5))
    ref = arora_recursion(x, depth, fixed)
    assert np.allclose(k.ntk.numpy(), ref, rtol=1e-12, atol=0)
    if fixed == depth:  # the readout alone trains: the NTK is the NNGP
        assert np.allclose(k.ntk.numpy(), k.nngp.numpy(), rtol=1e-12)


def test_frozen_layers_give_the_ntk_of_finite_networks_with_those_layers_frozen():
    x = torch.randn(5, 6, dtype=torch.float64)
    net = inf.serial(inf.Dense(1024, w_std=1.4, b_std=0.3, trainable=False), inf.Erf(),
                     inf.Dense(1024, w_std=1.2, b_std=0.1), inf.Relu(), inf.Dense(1, w_std=1.1, b_std=0.2))
    exact = net.kernel(x)
    full = inf.serial(*[inf.Dense(l.out_features, w_std=l.w_std, b_std=l.b_std) if isinstance(l, inf.Dense) else l
                        for l in net.layers]).kernel(x)
    assert torch.all(exact.ntk.diagonal() < full.ntk.diagonal() - 0.5)  # freezing removes a term that matters here
    assert torch.equal(exact.nngp, full.nngp)
    model = net.build(6, seed=0)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, True, True]
    mc = inf.monte_carlo_kernel(net, x, n_samples=48, seed=3)
    assert_within_standard_errors(exact, mc)


def test_standard_parameterization_frozen_layer_has_no_own_term():
    x = torch.randn(4, 3, dtype=torch.float64)
    frozen = inf.serial(inf.Dense(8, w_std=1.3, b_std=0.2, parameterization="standard", trainable=False))
    assert torch.equal(frozen.kernel(x).ntk, torch.zeros(4, 4, dtype=torch.float64))


def test_trainable_in_repr_specs_and_from_torch():
    layer = inf.Dense(10, trainable=False)
    assert "trainable=False" in repr(layer) and "trainable" not in repr(inf.Dense(10))
    assert repr(inf.parse_spec(repr(layer))) == repr(layer)
    with pytest.raises(TypeError, match="trainable"):
        inf.Dense(3, trainable="no")
    with pytest.raises(ValueError, match="fixed=3 layers cannot exceed depth=2"):
        inf.fully_connected(2, 3)
    # infinet's own modules keep the flag through from_torch
    net = inf.serial(inf.Dense(16, trainable=False), inf.Relu(), inf.Dense(1))
    back = inf.from_torch(net.build(4, seed=0))
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(back.kernel(x).ntk, net.kernel(x).ntk, rtol=1e-12)
    # a torch model with a frozen Linear
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
    model[0].requires_grad_(False)
    converted = inf.from_torch(model, torch.randn(2, 4))
    assert not converted.layers[0].trainable and converted.layers[2].trainable
    model[0].bias.requires_grad_(True)
    with pytest.raises(inf.UnsupportedModuleError, match="differ in requires_grad"):
        inf.from_torch(model, torch.randn(2, 4))
