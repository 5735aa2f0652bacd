"""linearize / taylor_expand: agreement with the model to the expected order in the parameter step."""

import copy
import math

import pytest
import torch
from torch import nn

import infinet as inf
from infinet.linearization import linearize, taylor_expand

F64 = torch.float64


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3)).double()
    return model, torch.randn(6, 4, dtype=F64)


def shifted(module, direction, eps):
    with torch.no_grad():
        for p, d in zip([p for p in module.parameters()], direction):
            p.add_(eps * d)


def errors(order, eps_list):
    model, x = model_and_data()
    expansion = taylor_expand(model, order)
    direction = [torch.randn_like(p) for p in model.parameters()]
    out = []
    for eps in eps_list:
        moved, exp = copy.deepcopy(model), copy.deepcopy(expansion)
        shifted(moved, direction, eps)
        shifted(exp, direction, eps)
        with torch.no_grad():
            out.append(float((moved(x) - exp(x)).abs().max()))
    return out


def test_linearization_error_is_second_order():
    eps = [1e-2, 5e-3, 2.5e-3]
    err = errors(1, eps)
    slopes = [math.log(err[i] / err[i + 1]) / math.log(2) for i in range(2)]
    assert all(abs(s - 2.0) < 0.1 for s in slopes), slopes


def test_second_order_expansion_error_is_third_order():
    eps = [2e-2, 1e-2, 5e-3]
    err = errors(2, eps)
    slopes = [math.log(err[i] / err[i + 1]) / math.log(2) for i in range(2)]
    assert all(abs(s - 3.0) < 0.15 for s in slopes), slopes


def test_linearized_matches_at_start_and_is_linear_in_parameters():
    model, x = model_and_data()
    lin = linearize(model)
    with torch.no_grad():
        assert torch.allclose(lin(x), model(x), atol=1e-14)
    params = list(lin.parameters())
    d = [torch.randn_like(p) for p in params]
    outs = []
    for s in (0.0, 1.0, 2.0):
        moved = copy.deepcopy(lin)
        shifted(moved, d, s)
        with torch.no_grad():
            outs.append(moved(x))
    assert torch.allclose(outs[2] - outs[1], outs[1] - outs[0], atol=1e-12)


def test_linearized_trains_with_torch_optimizers():
    model, x = model_and_data()
    y = torch.randn(6, 3, dtype=F64)
    lin = linearize(inf.serial(inf.Dense(32), inf.Relu(), inf.Dense(3)).build(4, seed=0, dtype=F64))
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = ((lin(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="order"):
        taylor_expand(model, -1)


def test_train_and_track_network_and_linearization_agree_when_wide():
    from infinet.training import train_and_track

    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 5, generator=g, dtype=F64)
    y = torch.randn(20, 1, generator=g, dtype=F64)
    gaps, changes = [], []
    for width in (64, 4096):
        model = inf.serial(inf.Dense(width, w_std=1.4), inf.Relu(), inf.Dense(1, w_std=1.4)).build(5, seed=1, dtype=F64)
        lin = linearize(model)
        t_net = train_and_track(model, x, y, lr=1.0, steps=100, x_test=x[:5], record_every=50, ntk_inputs=x[:4])
        t_lin = train_and_track(lin, x, y, lr=1.0, steps=100, x_test=x[:5], record_every=50)
        assert t_net.steps == [0, 50, 100] and t_net.loss[-1] < t_net.loss[0]
        gaps.append(float((t_net.f_test[-1] - t_lin.f_test[-1]).abs().max()))
        changes.append((t_net.weight_change[-1], t_net.ntk_change[-1]))
    assert gaps[1] < gaps[0] / 3  # the network approaches its linearization as width grows (theory: /8)
    assert changes[1][0] < changes[0][0] and changes[1][1] < changes[0][1]
