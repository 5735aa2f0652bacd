"""Finite networks from a description: seeds, initialization distribution, lazy building, modules."""

import math

import pytest
import torch

import infinet as inf
from infinet.layers.dense import DenseModule

NET = inf.serial(inf.Dense(256, w_std=1.5, b_std=0.5), inf.Relu(), inf.Dense(3, w_std=0.7, b_std=0.05))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_seeds_are_honored():
    a, b, c = NET.build(10, seed=1), NET.build(10, seed=1), NET.build(10, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b)))
    assert not torch.equal(params(a)[0], params(c)[0])
    torch.manual_seed(5)
    d = NET.build(10)
    torch.manual_seed(5)
    e = NET.build(10)
    assert all(torch.equal(p, q) for p, q in zip(params(d), params(e)))


def test_lazy_build_equals_eager():
    x = torch.randn(4, 10)
    lazy, eager = NET.build(seed=3), NET.build(10, seed=3)
    assert torch.equal(lazy(x), eager(x))
    assert all(torch.equal(p, q) for p, q in zip(params(lazy), params(eager)))


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_initialization_distribution(parameterization):
    fan_in = 400
    model = inf.Dense(2000, w_std=1.7, b_std=0.4, parameterization=parameterization).build(fan_in, seed=0)
    w, b = model.weight.detach().double(), model.bias.detach().double()
    std_w = 1.0 if parameterization == "ntk" else 1.7 / math.sqrt(fan_in)
    std_b = 1.0 if parameterization == "ntk" else 0.4
    for values, std in ((w, std_w), (b, std_b)):
        n = values.numel()
        assert abs(float(values.mean())) <= 4 * std / math.sqrt(n)
        # the sample variance has standard error std^2 sqrt(2 / n)
        assert abs(float(values.var()) - std**2) <= 4 * std**2 * math.sqrt(2 / n)


def test_forward_outputs_have_nngp_variance():
    # across many random networks, Var f(x) equals the NNGP diagonal (readout integrated out by sampling)
    x = torch.randn(1, 6, dtype=torch.float64)
    net = inf.serial(inf.Dense(512, 1.3, 0.2), inf.Tanh(), inf.Dense(1, 1.1, 0.3))
    with torch.no_grad():
        outs = torch.stack([net.build(6, seed=s, dtype=torch.float64)(x)[0, 0] for s in range(400)])
    k = float(net.kernel(x).nngp[0, 0])
    n = len(outs)
    assert abs(float((outs**2).mean()) - k) <= 4 * float((outs**2).std()) / math.sqrt(n)


def test_module_behaves_like_torch():
    model = NET.build(10, seed=0, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    state = model.state_dict()
    other = NET.build(10, seed=9, dtype=torch.float64)
    other.load_state_dict(state)
    x = torch.randn(2, 10, dtype=torch.float64)
    assert torch.equal(model(x), other(x))
    loss = model(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model[0], DenseModule)


def test_no_bias_when_b_std_is_none():
    model = inf.Dense(4).build(3, seed=0)
    assert model.bias is None and len(list(model.parameters())) == 1


def test_wrong_input_width_is_a_clear_error():
    model = NET.build(10, seed=0)
    with pytest.raises(ValueError, match=r"shape \(N, 10\)"):
        model(torch.randn(2, 11))
