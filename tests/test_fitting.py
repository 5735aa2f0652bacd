"""Marginal likelihood and hyperparameter fitting: the evidence against scipy's multivariate normal,
gradients through the kernel computation against finite differences, and fits that must reach at
least the likelihood of the hyperparameters that generated the data."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import infinet as inf
from infinet.fitting import affine_layers
from infinet.predict import fit_hyperparameters, log_marginal_likelihood
from infinet.solve import KernelMatrixError

F64 = torch.float64


def relu_net(w, b, depth=2, width=512):
    layers = []
    for _ in range(depth):
        layers += [inf.Dense(width, w_std=w, b_std=b), inf.Relu()]
    return inf.serial(*layers, inf.Dense(1, w_std=w, b_std=b))


def test_log_marginal_likelihood_matches_scipy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(25, 3, generator=g, dtype=F64)
    y = torch.randn(25, 2, generator=g, dtype=F64)
    k = relu_net(1.3, 0.2).kernel(x, get="nngp").nngp
    reg = 0.1
    cov = (k + reg * k.diagonal().mean() * torch.eye(25, dtype=F64)).numpy()
    expected = sum(multivariate_normal(np.zeros(25), cov).logpdf(y[:, c].numpy()) for c in range(2))
    assert float(log_marginal_likelihood(k, y, reg)) == pytest.approx(expected, rel=1e-12)
    # a vector target is one output
    expected1 = multivariate_normal(np.zeros(25), cov).logpdf(y[:, 0].numpy())
    assert float(log_marginal_likelihood(k, y[:, 0], reg)) == pytest.approx(expected1, rel=1e-12)


ARCHITECTURES = {
    "relu": lambda w, b: relu_net(w, b, depth=3),
    "tanh-quadrature": lambda w, b: inf.serial(inf.Dense(8, w_std=w, b_std=b), inf.Tanh(), inf.Dense(1, w_std=w, b_std=b)),
    "erf-gelu": lambda w, b: inf.serial(inf.Dense(8, w_std=w, b_std=b), inf.Erf(), inf.Dense(8, w_std=w, b_std=b),
                                        inf.Gelu(), inf.Dense(1, w_std=w, b_std=b)),
    "residual-layernorm-dropout": lambda w, b: inf.serial(
        inf.Dense(8, w_std=w, b_std=b),
        inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Relu(), inf.Dense(8, w_std=w, b_std=b))),
        inf.FanInSum(), inf.LayerNorm(), inf.Dropout(0.2), inf.Dense(1, w_std=w, b_std=b)),
    "standard-parameterization": lambda w, b: inf.serial(
        inf.Dense(8, w_std=w, b_std=b, parameterization="standard"), inf.Relu(),
        inf.Dense(1, w_std=w, b_std=b, parameterization="standard")),
}
CONV = {
    "cnn-pool-ntk": "ntk",
    "cnn-pool-standard": "standard",
}


def conv_net(param):
    def make(w, b):
        return inf.serial(
            inf.Conv(3, (3, 3), w_std=w, b_std=b, padding="SAME", parameterization=param), inf.Relu(),
            inf.AvgPool((2, 2)), inf.Conv(3, (2, 2), w_std=w, b_std=b, parameterization=param), inf.Erf(),
            inf.GlobalAvgPool(), inf.Dense(1, w_std=w, b_std=b, parameterization=param))
    return make


def _finite_difference_check(make, x, y, kernel):
    def lml(w, b, reg):
        k = getattr(make(w, b).kernel(x, get=kernel), kernel)
        return log_marginal_likelihood(k, y, reg)

    w = torch.tensor(1.3, dtype=F64, requires_grad=True)
    b = torch.tensor(0.3, dtype=F64, requires_grad=True)
    reg = torch.tensor(0.05, dtype=F64, requires_grad=True)
    grads = torch.autograd.grad(lml(w, b, reg), [w, b, reg])
    h = 1e-5
    with torch.no_grad():
        fd = [
            (lml(1.3 + h, 0.3, 0.05) - lml(1.3 - h, 0.3, 0.05)) / (2 * h),
            (lml(1.3, 0.3 + h, 0.05) - lml(1.3, 0.3 - h, 0.05)) / (2 * h),
            (lml(1.3, 0.3, 0.05 + h) - lml(1.3, 0.3, 0.05 - h)) / (2 * h),
        ]
    for name, got, want in zip(("w_std", "b_std", "diag_reg"), grads, fd):
        assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
def test_gradient_through_kernel_matches_finite_differences(name, kernel):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 4, generator=g, dtype=F64)
    y = torch.randn(12, 2, generator=g, dtype=F64)
    _finite_difference_check(ARCHITECTURES[name], x, y, kernel)


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_gradient_through_conv_kernel_matches_finite_differences(param):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, 4, generator=g, dtype=F64)
    y = torch.randn(5, generator=g, dtype=F64)
    _finite_difference_check(conv_net(param), x, y, "ntk")


def test_relu_gradient_finite_for_collinear_inputs():
    # correlation exactly +-1 off the diagonal: derivative of the arc-cosine kernel stays finite
    x = torch.tensor([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0], [0.5, -0.3]], dtype=F64)
    w = torch.tensor(1.5, dtype=F64, requires_grad=True)
    k = relu_net(w, 0.0, depth=3).kernel(x, get=("nngp", "ntk"))
    gw = torch.autograd.grad(k.nngp.sum() + k.ntk.sum(), w)[0]
    h = 1e-6
    with torch.no_grad():
        kp, km = relu_net(1.5 + h, 0.0, 3).kernel(x), relu_net(1.5 - h, 0.0, 3).kernel(x)
        fd = ((kp.nngp.sum() + kp.ntk.sum()) - (km.nngp.sum() + km.ntk.sum())) / (2 * h)
    assert math.isfinite(float(gw))
    assert float(gw) == pytest.approx(float(fd), rel=1e-7)


def _prior_sample(net, x, reg, outputs, seed):
    k = net.kernel(x, get="nngp").nngp
    cov = k + reg * k.diagonal().mean() * torch.eye(len(k), dtype=F64)
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.cholesky(cov) @ torch.randn(len(k), outputs, generator=g, dtype=F64)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_fit_reaches_the_likelihood_of_the_true_hyperparameters(optimizer):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 4, generator=g, dtype=F64)
    true = relu_net(1.6, 0.4)
    y = _prior_sample(true, x, 0.05, outputs=3, seed=5)
    lml_true = float(log_marginal_likelihood(true.kernel(x, get="nngp").nngp, y, 0.05))
    start = relu_net(1.0, 0.1)
    lml_start = float(log_marginal_likelihood(start.kernel(x, get="nngp").nngp, y, 0.01))
    steps = 60 if optimizer == "lbfgs" else 300
    fit = fit_hyperparameters(start, x, y, optimizer=optimizer, steps=steps, restarts=2, learning_rate=0.05)
    # the maximum likelihood is at least the likelihood at the generating values (up to optimizer slack)
    slack = 1e-6 if optimizer == "lbfgs" else 0.5
    assert fit.log_marginal_likelihood >= lml_true - slack
    assert fit.log_marginal_likelihood > lml_start
    # what is reported is what the returned architecture gives
    k = fit.net.kernel(x, get="nngp").nngp
    assert float(log_marginal_likelihood(k, y, fit.diag_reg)) == pytest.approx(fit.log_marginal_likelihood, rel=1e-10)
    assert all(run["status"] == "ok" for run in fit.restarts)
    assert fit.history[-1] <= fit.history[0]
    assert repr(inf.parse_spec(repr(fit.net))) == repr(fit.net)
    if optimizer == "lbfgs":  # a stationary point: both restarts agree
        values = [run["log_marginal_likelihood"] for run in fit.restarts]
        assert max(values) - min(values) < 1e-4 * abs(max(values))
        assert fit.w_std[0] == pytest.approx(1.6, rel=0.15)


def test_per_layer_fit_is_at_least_as_good_as_shared():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(120, 3, generator=g, dtype=F64)
    net = inf.serial(inf.Dense(64, w_std=2.0, b_std=0.05), inf.Erf(), inf.Dense(1, w_std=0.7, b_std=0.5))
    y = _prior_sample(net, x, 0.02, outputs=2, seed=7)
    shared = fit_hyperparameters(net, x, y, restarts=1)
    per_layer = fit_hyperparameters(net, x, y, share=False, restarts=1)
    assert len(per_layer.w_std) == 2 and per_layer.w_std[0] != per_layer.w_std[1]
    assert len(set(shared.w_std)) == 1
    assert per_layer.log_marginal_likelihood >= shared.log_marginal_likelihood - 1e-6


def test_fixed_noise_spec_string_and_ntk_kernel():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 3, generator=g, dtype=F64)
    y = torch.randn(40, generator=g, dtype=F64)
    fit = fit_hyperparameters("Dense(32, w_std=1.2, b_std=0.1) > Relu() > Dense(1, w_std=1.2, b_std=0.1)", x, y,
                              kernel="ntk", diag_reg=0.3, fit_diag_reg=False, restarts=1, steps=20)
    assert fit.diag_reg == pytest.approx(0.3)
    assert isinstance(fit.net, inf.Layer)


def test_affine_layers_and_no_bias():
    block = inf.serial(inf.Dense(8, w_std=1.0, b_std=None), inf.Relu())
    net = inf.serial(inf.repeat(block, 3), inf.Dense(1, w_std=1.0, b_std=0.0))
    layers = affine_layers(net)
    assert len(layers) == 2  # the repeated block's Dense appears once
    g = torch.Generator().manual_seed(9)
    x = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.randn(30, generator=g, dtype=F64)
    fit = fit_hyperparameters(net, x, y, share=False, restarts=1, steps=15)
    assert fit.b_std[0] is None and fit.b_std[1] > 0  # b_std=None stays without bias; 0 is fitted


def test_tensor_hyperparameters_validated():
    with pytest.raises(ValueError, match="0-dim"):
        inf.Dense(3, w_std=torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match=">= 0"):
        inf.Dense(3, w_std=torch.tensor(-1.0))
    with pytest.raises(TypeError, match="w_std must be a number"):
        inf.Dense(3, w_std="1.0")
    d = inf.Dense(3, w_std=torch.tensor(1.5, requires_grad=True))
    assert repr(d).startswith("Dense(3, w_std=1.5,")


def test_fit_errors():
    x = torch.randn(10, 3, dtype=F64)
    y = torch.randn(10, dtype=F64)
    net = relu_net(1.0, 0.1, depth=1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit_hyperparameters(net, x, y, optimizer="sgd")
    with pytest.raises(ValueError, match="kernel must be"):
        fit_hyperparameters(net, x, y, kernel="cntk")
    with pytest.raises(ValueError, match="no layer with w_std"):
        fit_hyperparameters(inf.Relu(), x, y)
    with pytest.raises(ValueError, match="NaN"):
        fit_hyperparameters(net, x, torch.full((10,), math.nan, dtype=F64))
    with pytest.raises(ValueError, match=r"y_train must be \(10,\)"):
        fit_hyperparameters(net, x, y[:7])
    with pytest.raises(ValueError, match="restarts"):
        fit_hyperparameters(net, x, y, restarts=0)
    with pytest.raises(ValueError, match="diag_reg"):
        log_marginal_likelihood(net.kernel(x).nngp, y, -1.0)
    not_psd = torch.eye(10, dtype=F64)
    not_psd[0, 1] = not_psd[1, 0] = 2.0
    with pytest.raises(KernelMatrixError, match="positive semi-definite"):
        log_marginal_likelihood(not_psd, y)


def test_every_restart_failing_is_an_error():
    x = torch.randn(10, 3, dtype=F64)
    y = torch.randn(10, dtype=F64)
    net = inf.serial(inf.Dense(8, w_std=900.0, b_std=0.1), inf.Exp(), inf.Dense(8, w_std=900.0), inf.Exp(),
                     inf.Dense(1, w_std=900.0))
    with pytest.raises(KernelMatrixError, match="every restart failed"):
        fit_hyperparameters(net, x * 30, y, restarts=2, steps=3)


@pytest.mark.parametrize("first", ["infinet", "infinet.fitting", "infinet.predict"])
def test_import_order(first):
    import subprocess
    import sys

    code = f"import {first}; from infinet.predict import fit_hyperparameters; import infinet; infinet.fit_hyperparameters"
    subprocess.run([sys.executable, "-c", code], check=True)
