"""Ensemble predictions, linearized dynamics and solvers, against dense formulas written here from
the papers' equations, finite networks trained by gradient descent, and Cholesky."""

import math
import warnings

import pytest
import torch

import infinet as inf
from infinet.predict import gradient_descent_mse_ensemble, linearized_dynamics, max_learning_rate
from infinet.solve import JitterWarning, KernelMatrixError, TiledKernel, cholesky, conjugate_gradient, nystrom_factor

NET = inf.serial(inf.Dense(512, w_std=1.4, b_std=0.1), inf.Relu(), inf.Dense(1, w_std=1.4, b_std=0.1))


def problem(n=20, n_test=7, d=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = torch.randn(n_test, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, c, generator=g, dtype=torch.float64)
    return NET.kernel(x), NET.kernel(xt, x), NET.kernel(xt), y


def dense_ensemble(theta, theta_s, k, k_s, k_ss, y, t):
    """Lee et al. 2019, eqs. 14-16, with matrix exponentials and inverses (loss 1/(2m))."""
    m = y.numel()
    eye = torch.eye(len(theta), dtype=torch.float64)
    tt = torch.linalg.solve(theta, eye) if math.isinf(t) else torch.linalg.solve(theta, eye - torch.linalg.matrix_exp(-theta * t / m))
    mean = theta_s @ tt @ y
    cov = k_ss - theta_s @ tt @ k_s.T - k_s @ tt @ theta_s.T + theta_s @ tt @ k @ tt @ theta_s.T
    return mean, cov


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_ensemble_matches_dense_formulas(get):
    k, ks, kss, y = problem()
    times = [0.0, 5.0, 60.0, math.inf]
    out = gradient_descent_mse_ensemble(k, y, times, ks, kss, kernel=get, compute_cov=True)
    theta, theta_s = getattr(k, get), getattr(ks, get)
    for i, t in enumerate(times):
        mean, cov = dense_ensemble(theta, theta_s, k.nngp, ks.nngp, kss.nngp, y, t)
        assert torch.allclose(out.mean[i], mean, rtol=1e-8, atol=1e-10), (get, t)
        assert torch.allclose(out.cov[i], cov, rtol=1e-7, atol=1e-9), (get, t)
    assert torch.all(out.mean[0] == 0) and torch.allclose(out.cov[0], kss.nngp, atol=1e-12)  # t = 0: the prior
    if get == "nngp":  # the readout-only closed form K** - K*X K^-1 (I - exp(-2Kt/m)) KX*
        m, kk = y.numel(), k.nngp
        e2 = torch.linalg.matrix_exp(-2 * kk * 60.0 / m)
        ref = kss.nngp - ks.nngp @ torch.linalg.solve(kk, torch.eye(20, dtype=torch.float64) - e2) @ ks.nngp.T
        assert torch.allclose(out.cov[2], ref, rtol=1e-7, atol=1e-9)


def test_ensemble_on_training_points_interpolates_at_infinity():
    k, _, _, y = problem()
    out = gradient_descent_mse_ensemble(k, y, [math.inf, 1e9], compute_cov=True)
    assert torch.allclose(out.mean[0], y, atol=1e-7) and out.cov[0].abs().max() < 1e-7
    assert torch.allclose(out.mean[1], out.mean[0], atol=1e-6)  # t -> inf limit
    single = gradient_descent_mse_ensemble(k, y[:, 0], 3.0)
    assert single.mean.shape == (20,) and single.cov is None


def test_ensemble_errors():
    k, ks, kss, y = problem()
    with pytest.raises(ValueError, match="times"):
        gradient_descent_mse_ensemble(k, y, -1.0)
    with pytest.raises(ValueError, match="nngp is needed"):
        gradient_descent_mse_ensemble(k.replace(nngp=None), y, 1.0, compute_cov=True)
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent_mse_ensemble(k, y[:3], 1.0)
    with pytest.raises(ValueError, match="kernel must be"):
        gradient_descent_mse_ensemble(k, y, 1.0, kernel="both")
    with pytest.raises(ValueError, match="k_test_test.nngp is needed"):
        gradient_descent_mse_ensemble(k, y, 1.0, ks, None, compute_cov=True)


def test_finite_network_ensemble_matches_prediction():
    """200 two-layer ReLU networks of width 2048 ('ntk' parameterization) trained by full-batch gradient
    descent: their mean and variance at test points match the NTK ensemble at t = lr x steps."""
    torch.manual_seed(0)
    n, nt, d, width, nets = 6, 4, 3, 2048, 200
    g = torch.Generator().manual_seed(5)
    x, xt = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(nt, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    w_std, b_std = 1.5, 0.2
    net = inf.serial(inf.Dense(width, w_std=w_std, b_std=b_std), inf.Relu(), inf.Dense(1, w_std=w_std, b_std=b_std))
    k, ks, kss = net.kernel(x), net.kernel(xt, x), net.kernel(xt)
    lr, steps = 0.5 * max_learning_rate(k.ntk, 1), 60
    pred = gradient_descent_mse_ensemble(k, y, lr * steps, ks, kss, compute_cov=True)
    # batched finite networks: parameters (nets, ...), z = w_std / sqrt(fan_in) W h + b_std b
    w1 = torch.randn(nets, width, d, dtype=torch.float64, generator=g).requires_grad_()
    b1 = torch.randn(nets, width, 1, dtype=torch.float64, generator=g).requires_grad_()
    w2 = torch.randn(nets, 1, width, dtype=torch.float64, generator=g).requires_grad_()
    b2 = torch.randn(nets, 1, 1, dtype=torch.float64, generator=g).requires_grad_()

    def f(inputs):
        h = torch.relu(w_std / math.sqrt(d) * w1 @ inputs.T + b_std * b1)
        return (w_std / math.sqrt(width) * w2 @ h + b_std * b2)[:, 0, :]  # (nets, N)

    opt = torch.optim.SGD([w1, b1, w2, b2], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((f(x) - y[:, 0]) ** 2).sum() / y.numel()  # summed over nets: independent problems
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = f(xt)
    mean, var = out.mean(0), out.var(0)
    se = (var / nets).sqrt()
    assert float(((mean - pred.mean[:, 0]) / se).abs().max()) < 4.0
    # sample variance of a normal: relative standard error sqrt(2 / (nets - 1))
    rel = (var / pred.cov.diagonal() - 1).abs()
    assert float(rel.max()) < 4 * math.sqrt(2 / (nets - 1)), (var, pred.cov.diagonal())


def linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, xt = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = torch.randn(10, 2, generator=g, dtype=torch.float64)
    return x, xt, w0, y


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_linearized_dynamics_equal_training_a_linear_model(momentum):
    """For f(x) = x w the linearization is exact and the NTK is x x'^T: torch's SGD gives the answer."""
    x, xt, w0, y = linear_problem()
    theta, theta_s = x @ x.T, xt @ x.T
    lr = 0.3 * max_learning_rate(theta, 2)
    w = w0.clone().requires_grad_()
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
    outs = {}
    for step in range(1, 41):
        opt.zero_grad()
        (0.5 * ((x @ w - y) ** 2).sum() / y.numel()).backward()
        opt.step()
        if step in (1, 7, 40):
            outs[step] = (xt @ w).detach()
    got = linearized_dynamics(theta, x @ w0, y, ntk_test_train=theta_s, f0_test=xt @ w0, learning_rate=lr,
                              steps=[1, 7, 40], momentum=momentum)
    for i, step in enumerate((1, 7, 40)):
        assert torch.allclose(got[i], outs[step], rtol=1e-10, atol=1e-12), step


def test_linearized_gradient_flow_limits():
    x, xt, w0, y = linear_problem(1)
    theta = x @ x.T + 1e-3 * torch.eye(10, dtype=torch.float64)
    f0 = x @ w0
    flow = linearized_dynamics(theta, f0, y, t=[0.0, math.inf])
    assert torch.allclose(flow[0], f0) and torch.allclose(flow[1], y, atol=1e-9)
    small = linearized_dynamics(theta, f0, y, steps=[2000], learning_rate=1e-3 * max_learning_rate(theta, 2))
    ref = linearized_dynamics(theta, f0, y, t=2000 * 1e-3 * max_learning_rate(theta, 2))
    assert torch.allclose(small[0], ref[0], atol=5e-3)  # gradient descent with tiny steps -> gradient flow
    with pytest.raises(ValueError, match="exactly one"):
        linearized_dynamics(theta, f0, y)
    with pytest.raises(ValueError, match="f0_test"):
        linearized_dynamics(theta, f0, y, t=1.0, ntk_test_train=xt @ x.T)


# ---- solvers -----------------------------------------------------------------------------------------------
def test_cholesky_jitter_escalation_and_errors():
    x = torch.randn(6, 3, dtype=torch.float64)
    x = torch.cat([x, x[:2]])  # duplicated rows: singular
    k = NET.kernel(x).nngp
    with pytest.warns(JitterWarning, match="added jitter"):
        chol, reg = cholesky(k)
    assert reg > 0 and torch.isfinite(chol).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cholesky(k, diag_reg=1e-6)  # enough regularization: no warning
    with pytest.raises(KernelMatrixError, match="NaN"):
        cholesky(torch.full((3, 3), float("nan"), dtype=torch.float64))


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("preconditioner", ["nystrom", "pivoted-cholesky"])
def test_conjugate_gradient_matches_cholesky(tiled, preconditioner):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    b = torch.randn(300, 4, generator=g, dtype=torch.float64)
    k = NET.kernel(x).nngp
    chol, _ = cholesky(k, diag_reg=1e-4)
    direct = torch.cholesky_solve(b, chol)
    op = TiledKernel(lambda r, c: NET.kernel(x[r], x[c], get="nngp").nngp, 300, tile=64) if tiled else k
    sol, report = conjugate_gradient(op, b, diag_reg=1e-4, tol=1e-12, preconditioner_rank=60,
                                     preconditioner=preconditioner)
    assert report.converged and report.iterations < 150 and report.preconditioner == preconditioner
    assert float((sol - direct).norm() / direct.norm()) < 1e-8
    plain, plain_report = conjugate_gradient(k, b, diag_reg=1e-4, tol=1e-12, preconditioner="none")
    assert plain_report.preconditioner_rank == 0
    assert plain_report.iterations > 2 * report.iterations  # the preconditioner pays
    assert float((plain - direct).norm() / direct.norm()) < 1e-8


def test_nystrom_factor_is_exact_at_full_rank_and_near_optimal_below():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    k = NET.kernel(x).nngp
    full = nystrom_factor(lambda v: k @ v, 200, 200)
    assert torch.allclose(full @ full.T, k, rtol=0, atol=1e-10 * float(k.diagonal().max()))
    evals = torch.linalg.eigvalsh(k)
    for rank in (10, 40):
        low = nystrom_factor(lambda v: k @ v, 200, rank)
        assert low.shape[1] <= rank
        resid = torch.linalg.eigvalsh(k - low @ low.T)
        assert float(resid.min()) > -1e-10 * float(evals[-1])  # K - L L^T stays PSD (Tropp et al. 2017)
        best = float(evals[:-rank].sum())  # trace error of the best rank-r approximation
        assert best <= float(resid.sum()) <= 3 * best  # randomized: within a small factor of optimal
    assert torch.equal(nystrom_factor(lambda v: k @ v, 200, 30), nystrom_factor(lambda v: k @ v, 200, 30))  # seeded
    with pytest.raises(KernelMatrixError, match="not PSD"):
        nystrom_factor(lambda v: -(k @ v), 200, 10)


def test_conjugate_gradient_progress_line(capsys):
    k = NET.kernel(torch.randn(80, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).nngp
    conjugate_gradient(k, torch.ones(80, dtype=torch.float64), diag_reg=1e-3, tol=1e-10, progress=True)
    err = capsys.readouterr().err
    assert "CG iteration" in err and "s/iteration" in err and "ETA" in err
    assert "building the nystrom preconditioner of rank" in err


def test_conjugate_gradient_errors():
    k = NET.kernel(torch.randn(5, 3, dtype=torch.float64)).nngp
    with pytest.raises(ValueError, match="rows"):
        conjugate_gradient(k, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        conjugate_gradient(k, torch.full((5,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        conjugate_gradient(k, torch.ones(5, dtype=torch.float64), preconditioner="jacobi")
    with pytest.raises(ValueError, match="preconditioner_rank"):
        conjugate_gradient(k, torch.ones(5, dtype=torch.float64), preconditioner_rank=-1)


def test_cross_entropy_flow_equals_training_a_linear_model():
    """f(x) = x W is its own linearization with NTK x x'^T: SGD with a tiny step on the mean
    cross-entropy approximates the gradient flow the ODE solves, to O(step)."""
    from infinet.predict import gradient_descent_cross_entropy

    g = torch.Generator().manual_seed(3)
    x, xt = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(12) % 3
    w = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    lr, steps = 0.01, 2000
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ w, labels).backward()
        opt.step()
    got = gradient_descent_cross_entropy(x @ x.T, labels, [0.0, lr * steps], ntk_test_train=xt @ x.T)
    assert torch.all(got[0] == 0)
    assert torch.allclose(got[1], (xt @ w).detach(), atol=2e-3, rtol=0), (got[1], xt @ w)
    train = gradient_descent_cross_entropy(x @ x.T, labels, [lr * steps])
    assert torch.allclose(train[0], (x @ w).detach(), atol=2e-3)
    probs = train[0].softmax(1)
    assert (probs.argmax(1) == labels).double().mean() > 0.5
    with pytest.raises(ValueError, match="no t = inf"):
        gradient_descent_cross_entropy(x @ x.T, labels, math.inf)


def test_one_calling_convention():
    """Kernel objects or matrices everywhere in infinet.predict; kernel= says which matrix of a Kernel to use;
    the old get= of the ensemble still works, with a DeprecationWarning, and gives the same numbers."""
    from infinet.predict import gp_inference, gradient_descent_mse, log_marginal_likelihood

    k, ks, kss, y = problem()
    a = gp_inference(k, ks, y, kss, diag_reg=1e-3)
    b = gp_inference(k.nngp, ks.nngp, y, kss.nngp, diag_reg=1e-3)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.cov, b.cov)
    assert torch.equal(gp_inference(k, ks, y, kernel="ntk").mean, gp_inference(k.ntk, ks.ntk, y).mean)
    assert torch.equal(gradient_descent_mse(k, ks, y, 5.0), gradient_descent_mse(k.ntk, ks.ntk, y, 5.0))
    assert torch.equal(log_marginal_likelihood(k, y, 1e-3), log_marginal_likelihood(k.nngp, y, 1e-3))
    new = gradient_descent_mse_ensemble(k, y, 5.0, ks, kss, kernel="nngp", compute_cov=True)
    with pytest.warns(DeprecationWarning, match="use kernel="):
        old = gradient_descent_mse_ensemble(k, y, 5.0, ks, kss, get="nngp", compute_cov=True)
    assert torch.equal(new.mean, old.mean) and torch.equal(new.cov, old.cov)
    as_matrices = gradient_descent_mse_ensemble(k.nngp, y, 5.0, ks.nngp, kss.nngp, kernel="nngp", compute_cov=True)
    assert torch.equal(as_matrices.cov, new.cov)
    with pytest.raises(ValueError, match="the covariance needs the nngp too"):
        gradient_descent_mse_ensemble(k.ntk, y, 5.0, ks.ntk, kss.nngp, compute_cov=True)
    with pytest.raises(TypeError, match="torch.Tensor or an infinet Kernel"):
        gp_inference(k.nngp.numpy(), ks, y)


def test_ensemble_covariance_with_and_without_a_cholesky_factor(monkeypatch):
    """The covariance's NNGP term (A F)(A F)^T with F = V^T L (Cholesky of the training NNGP) is the A (V^T K V) A^T
    taken where K has no Cholesky factor, to rounding."""
    k, ks, kss, y = problem()
    times = [5.0, math.inf]
    factored = gradient_descent_mse_ensemble(k, y, times, ks, kss, compute_cov=True)
    real = torch.linalg.cholesky_ex

    def singular(a, *args, **kwargs):
        chol, info = real(a, *args, **kwargs)
        return chol, torch.ones_like(info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", singular)
    fallback = gradient_descent_mse_ensemble(k, y, times, ks, kss, compute_cov=True)
    scale = float(factored.cov.abs().max())
    assert float((fallback.cov - factored.cov).abs().max()) <= 1e-12 * scale
    assert torch.equal(fallback.mean, factored.mean)
