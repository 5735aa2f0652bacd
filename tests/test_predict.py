"""Kernel predictions and finite-network training, each checked against an independent computation."""

import math

import pytest
import torch

import infinet as inf
from infinet.predict import KernelMatrixError, gp_inference, gradient_descent_mse, max_learning_rate
from infinet.training import mse_loss, train_gradient_descent


def kernels(n=30, n_test=12, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = torch.randn(n_test, d, generator=g, dtype=torch.float64)
    net = inf.serial(inf.Dense(64, w_std=1.4, b_std=0.1), inf.Relu(), inf.Dense(1, w_std=1.4, b_std=0.1))
    return net.kernel(x), net.kernel(xt, x), net.kernel(xt), torch.randn(n, 3, generator=g, dtype=torch.float64)


def test_gp_inference_matches_dense_solve():
    k, ks, kss, y = kernels()
    post = gp_inference(k.nngp, ks.nngp, y, kss.nngp, diag_reg=1e-3)
    reg = k.nngp + 1e-3 * k.nngp.diagonal().mean() * torch.eye(len(k.nngp), dtype=torch.float64)
    inv = torch.linalg.inv(reg)
    assert torch.allclose(post.mean, ks.nngp @ inv @ y, rtol=1e-9, atol=1e-10)
    assert torch.allclose(post.cov, kss.nngp - ks.nngp @ inv @ ks.nngp.T, rtol=1e-9, atol=1e-10)
    assert gp_inference(k.nngp, ks.nngp, y[:, 0], diag_reg=1e-3).mean.shape == (12,)
    # on the training points with no noise, the posterior mean interpolates
    fit = gp_inference(k.nngp, k.nngp, y).mean
    assert torch.allclose(fit, y, atol=1e-6)


def test_gradient_descent_matches_matrix_exponential():
    k, ks, _, y = kernels()
    theta, theta_s = k.ntk, ks.ntk
    m = y.numel()
    for t in (0.0, 3.0, 40.0):
        expm = torch.linalg.matrix_exp(-theta * t / m)
        expected = theta_s @ torch.linalg.solve(theta, (torch.eye(len(theta), dtype=torch.float64) - expm) @ y)
        got = gradient_descent_mse(theta, theta_s, y, t)
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-10), t
    inf_pred = gradient_descent_mse(theta, theta_s, y, math.inf)
    assert torch.allclose(inf_pred, theta_s @ torch.linalg.solve(theta, y), rtol=1e-8, atol=1e-10)
    several = gradient_descent_mse(theta, theta_s, y, [0.0, math.inf])
    assert several.shape == (2, 12, 3) and torch.all(several[0] == 0)


def test_gradient_descent_equals_discrete_steps_in_the_small_step_limit():
    """Euler steps of df/dt = -Theta (f - y) / m on the training set approach the closed form."""
    k, _, _, y = kernels(n=10)
    theta, m = k.ntk, y.numel()
    f = torch.zeros_like(y)
    t, steps = 5.0, 20000
    for _ in range(steps):
        f = f - (t / steps) * theta @ (f - y) / m
    closed = gradient_descent_mse(theta, theta, y, t)
    assert torch.allclose(f, closed, rtol=0, atol=5e-4 * float(y.abs().max()))


def test_singular_kernel_uses_the_lambda_to_zero_limit():
    v = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    theta = v @ v.T  # rank one
    y = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    pred = gradient_descent_mse(theta, theta, y, [1.0, math.inf])
    assert torch.isfinite(pred).all()
    proj = v @ v.T / 14.0  # at t = inf: the projection of y on the range of theta
    assert torch.allclose(pred[1], proj @ y, atol=1e-12)


def test_prediction_errors():
    k, ks, _, y = kernels()
    bad = k.nngp.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(KernelMatrixError, match="NaN"):
        gp_inference(bad, ks.nngp, y)
    with pytest.raises(KernelMatrixError, match="square"):
        gp_inference(ks.nngp, ks.nngp, y)
    with pytest.raises(ValueError, match="y_train"):
        gp_inference(k.nngp, ks.nngp, y[:5])
    evals, evecs = torch.linalg.eigh(k.nngp)
    v = evecs[:, :1]  # push the smallest eigenvalue to -mean diagonal: positive diagonal, not PSD
    non_psd = k.nngp - (evals[0] + k.nngp.diagonal().mean()) * (v @ v.T)
    assert (non_psd.diagonal() > 0).all()
    with pytest.raises(KernelMatrixError, match="not positive semi-definite"):
        gp_inference(non_psd, ks.nngp, y)
    with pytest.raises(KernelMatrixError, match="not positive semi-definite"):
        gradient_descent_mse(non_psd, ks.ntk, y)
    with pytest.raises(KernelMatrixError, match="mean diagonal"):
        gp_inference(-k.nngp, ks.nngp, y)
    with pytest.raises(ValueError, match="y_train contains NaN"):
        gp_inference(k.nngp, ks.nngp, torch.full_like(y, float("nan")))
    with pytest.raises(KernelMatrixError, match="not symmetric"):
        gp_inference(k.nngp + torch.triu(torch.ones_like(k.nngp), 1), ks.nngp, y)
    with pytest.raises(ValueError, match="diag_reg"):
        gp_inference(k.nngp, ks.nngp, y, diag_reg=-1.0)
    with pytest.raises(ValueError, match="times"):
        gradient_descent_mse(k.ntk, ks.ntk, y, -1.0)


def test_max_learning_rate():
    k, _, _, y = kernels()
    lr = max_learning_rate(k.ntk, 3)
    assert abs(lr - 2 * 30 * 3 / float(torch.linalg.eigvalsh(k.ntk).max())) < 1e-12 * lr


def test_linear_model_training_matches_closed_form_iteration():
    """Gradient descent on mse_loss for f(x) = x w: w <- w - lr X^T (X w - y) / m, exactly."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randn(20, 2, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(4, 2, bias=False).double()
    w = model.weight.detach().T.clone()
    rec = train_gradient_descent(model, x, y, lr=0.5, steps=30, record_every=10)
    for _ in range(30):
        w = w - 0.5 * x.T @ (x @ w - y) / y.numel()
    assert torch.allclose(model.weight.detach().T, w, atol=1e-12)
    assert rec.steps == [0, 10, 20, 30] and rec.loss[-1] == pytest.approx(float(mse_loss(x @ w, y)), rel=1e-10)
    assert rec.loss == sorted(rec.loss, reverse=True)


def test_training_divergence_is_reported():
    x = torch.randn(10, 3, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    with pytest.raises(FloatingPointError, match="diverged"):
        train_gradient_descent(model, x, torch.zeros(10, 1, dtype=torch.float64), lr=1e6, steps=200)


def test_ensemble_after_gradient_descent_steps_is_the_discrete_solution():
    """gradient_descent_mse_ensemble(steps=k): its mean is the linearized network's k-step recursion from f0 = 0
    (infinet.predict.linearized_dynamics, computed step by step), its covariance Monte Carlo of that recursion over
    f0 ~ N(0, K) for the NNGP readout-only case, and many small steps approach gradient flow at t = lr x steps."""
    from infinet.predict import gradient_descent_mse_ensemble, linearized_dynamics

    torch.manual_seed(0)
    net = inf.serial(inf.Dense(8, w_std=1.3, b_std=0.1), inf.Relu(), inf.Dense(1, w_std=1.2, b_std=0.1))
    x, xt = torch.randn(12, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y = torch.randn(12, 2, dtype=torch.float64)
    k, ks, kss = net.kernel(x), net.kernel(xt, x), net.kernel(xt)
    lr = 0.5 * inf.predict.max_learning_rate(k.ntk, 2)
    post = gradient_descent_mse_ensemble(k, y, k_test_train=ks, k_test_test=kss, compute_cov=True, learning_rate=lr,
                                         steps=[0, 7, 40])
    zeros, zeros_t = torch.zeros_like(y), torch.zeros(5, 2, dtype=torch.float64)
    for i, steps in enumerate((0, 7, 40)):
        recursion = linearized_dynamics(k.ntk, zeros, y, ntk_test_train=ks.ntk, f0_test=zeros_t, learning_rate=lr,
                                        steps=steps)
        assert torch.allclose(post.mean[i], recursion, rtol=1e-10, atol=1e-12)
    assert torch.allclose(post.cov[0], kss.nngp, rtol=1e-12)  # no step: the prior
    flow = gradient_descent_mse_ensemble(k, y, 40 * lr, ks, kss, compute_cov=True, learning_rate=1.0)
    fine = gradient_descent_mse_ensemble(k, y, k_test_train=ks, k_test_test=kss, compute_cov=True,
                                         learning_rate=lr / 100, steps=4000)
    assert torch.allclose(fine.mean, flow.mean, atol=1e-3) and torch.allclose(fine.cov, flow.cov, atol=1e-3)
    # the readout-only (NNGP) ensemble's covariance against Monte Carlo of the recursion from random f0
    nngp = gradient_descent_mse_ensemble(k.nngp, y[:, 0], kernel="nngp", k_test_train=ks.nngp, k_test_test=kss.nngp,
                                         compute_cov=True, learning_rate=lr, steps=7)
    joint = torch.cat([torch.cat([k.nngp, ks.nngp.T], 1), torch.cat([ks.nngp, kss.nngp], 1)])
    f0 = torch.distributions.MultivariateNormal(torch.zeros(17, dtype=torch.float64),
                                                joint + 1e-12 * torch.eye(17)).sample((4000,))
    outs = torch.stack([linearized_dynamics(k.nngp, f[:12, None], y[:, :1], ntk_test_train=ks.nngp, f0_test=f[12:, None],
                                            learning_rate=lr, steps=7).reshape(-1) for f in f0])
    se = outs.var(0).sqrt() / 4000 ** 0.5
    assert torch.all((outs.mean(0) - nngp.mean).abs() < 4 * se)
    assert torch.allclose(torch.cov(outs.T), nngp.cov, atol=0.1 * float(nngp.cov.diagonal().max()))
    with pytest.raises(ValueError, match="not both"):
        gradient_descent_mse_ensemble(k, y, 1.0, steps=3)
    with pytest.raises(ValueError, match="steps must be an integer"):
        gradient_descent_mse_ensemble(k, y, steps=-1)
    with pytest.raises(ValueError, match="above the stable limit"):  # divergent steps: no number, an error
        gradient_descent_mse_ensemble(k, y, learning_rate=2.5 * lr, steps=50)


def test_single_network_metrics_of_a_gaussian_ensemble():
    """The expected MSE is exact (squared error of the mean plus the variance); the expected accuracy agrees with
    draws of the whole joint Gaussian within standard errors."""
    from infinet.predict import Posterior, single_network_metrics

    gen = torch.Generator().manual_seed(1)
    mean = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    a = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    cov = a @ a.T / 40
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=gen)
    out = single_network_metrics(Posterior(mean, cov), y, labels, samples=20000, seed=2)
    assert out["mse"] == pytest.approx(float((mean - y).pow(2).mean() + cov.diagonal().mean()), rel=1e-12)
    draws = torch.distributions.MultivariateNormal(torch.zeros(40, dtype=torch.float64), cov).sample((20000, 3))
    f = mean + draws.transpose(1, 2)  # (samples, 40, 3): correlated over examples, independent over classes
    direct = (f.argmax(-1) == labels).double().mean(-1)
    assert abs(float(direct.mean()) - out["accuracy"]) < 4 * (out["accuracy_se"] ** 2 + float(direct.var()) / 20000) ** 0.5
    assert out["accuracy_se"] > 0 and float((f - y).pow(2).mean()) == pytest.approx(out["mse"], rel=0.02)
    with pytest.raises(ValueError, match="needs one time's posterior with its covariance"):
        single_network_metrics(Posterior(mean, None), y)


def test_kernel_matrix_checks_find_one_bad_entry_anywhere():
    """The blocked symmetry check sees a single asymmetric pair in any block (sizes that are not multiples of the
    block, pairs far from the diagonal and in the last partial block), and the finiteness check a single NaN or
    inf; a symmetric matrix passes unchanged."""
    from infinet.inference.solve import _max_asymmetry, check_kernel_matrix

    g = torch.Generator().manual_seed(0)
    for n in (1, 255, 300, 700):
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        k = x @ x.T
        k = (k + k.T) / 2
        assert check_kernel_matrix(k) is k and _max_asymmetry(k) == 0.0
        for i, j in ((n - 1, 0), (n // 2, n - 1), (0, n // 3)):
            if i == j:
                continue
            bad = k.clone()
            bad[i, j] += 1e-3 * float(k.abs().max())
            assert _max_asymmetry(bad) == float((bad - bad.T).abs().max()) > 0
            with pytest.raises(KernelMatrixError, match="not symmetric"):
                check_kernel_matrix(bad)
        for value in (float("nan"), float("inf"), -float("inf")):
            bad = k.clone()
            bad[n - 1, n // 2] = value
            with pytest.raises(KernelMatrixError, match="NaN or inf"):
                check_kernel_matrix(bad)
