"""Infinite depth at finite width: closed forms against simulations of residual networks and the SDE."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from infinet import depth


@pytest.mark.parametrize("width", [2, 3, 8])
def test_identity_log_norm_matches_geometric_brownian_motion(width):
    sim = depth.simulate_resnet("identity", width, 400, 4000, w_std=1.3, seed=width)
    ratio = (sim["y"][-1].norm(dim=1) / sim["y"][0].norm(dim=1)).log().numpy()
    mean, var = depth.identity_log_norm_moments(width, 1.3, 1.0)
    n = len(ratio)
    assert abs(ratio.mean() - mean) < 3 * ratio.std(ddof=1) / math.sqrt(n)
    var_se = ratio.var(ddof=1) * math.sqrt(2.0 / (n - 1))
    assert abs(ratio.var(ddof=1) - var) < 3 * var_se + 2 * var / 400  # + the O(1/L) discretization bias


def test_identity_second_moment_grows_exponentially():
    sim = depth.simulate_resnet("identity", 4, 200, 20000, w_std=0.8, seed=3, record_every=50)
    sq = (sim["y"].norm(dim=2) ** 2 / sim["y"][0].norm(dim=1) ** 2).numpy()  # (T, R)
    for i, t in enumerate(sim["t"]):
        # a network of depth L has E|Y_l|^2 = (1 + sigma^2 / L)^l |Y_0|^2 exactly, -> exp(sigma^2 t)
        exact = (1 + 0.8**2 / 200) ** (t * 200)
        assert abs(sq[i].mean() - exact) < 4 * sq[i].std(ddof=1) / math.sqrt(sq.shape[1]) + 1e-12
        assert exact == pytest.approx(math.exp(0.8**2 * t), rel=0.8**4 * t / 200 + 1e-12)


def test_relu_width_one_is_exponential_brownian_motion():
    # X_t = X_0 exp(B_t - t/2): log(X_1 / X_0) ~ N(-1/2, 1) for X_0 > 0
    sim = depth.simulate_resnet("relu", 1, 1000, 6000, w_std=1.0, x=torch.ones(1, dtype=torch.float64), seed=5)
    y0, y1 = sim["y"][0, :, 0], sim["y"][-1, :, 0]
    logs = (y1[y0 > 0] / y0[y0 > 0]).log().numpy()
    n = len(logs)
    assert abs(logs.mean() + 0.5) < 3 / math.sqrt(n) + 0.5 / 1000
    assert abs(logs.var(ddof=1) - 1.0) < 3 * math.sqrt(2.0 / n) + 2 / 1000


def test_relu_covariance_ode_closed_forms():
    q0 = np.array([1.0, 0.3, 2.0])
    sol = depth.covariance_ode("relu", q0, 1.0, times=[0.25, 0.5, 1.0])
    q = sol["q"]
    assert np.allclose(q[:, 0], 1.0 * np.exp(np.array([0.25, 0.5, 1.0]) / 2), rtol=1e-10)
    assert np.allclose(q[:, 2], 2.0 * np.exp(np.array([0.25, 0.5, 1.0]) / 2), rtol=1e-10)
    # the correlation from an independent high-accuracy solve of its closed-form ODE
    ref = solve_ivp(lambda t, c: [depth.relu_correlation_rhs(c[0])], (0, 1.0), [0.3 / math.sqrt(2.0)],
                    method="DOP853", rtol=1e-13, atol=1e-15, t_eval=[0.25, 0.5, 1.0])
    c = q[:, 1] / np.sqrt(q[:, 0] * q[:, 2])
    assert np.max(np.abs(c - ref.y[0])) < 1e-9


def test_covariance_ode_is_accurate_for_smooth_activations():
    coarse = depth.covariance_ode("tanh", np.array([1.0, 0.5, 1.5]), 1.0, times=[1.0], rtol=1e-10)["q"][-1]
    fine = depth.covariance_ode("tanh", np.array([1.0, 0.5, 1.5]), 1.0, times=[1.0], rtol=1e-13)["q"][-1]
    assert np.max(np.abs(coarse - fine)) < 1e-9


def test_relu_post_activation_regime_change_between_width_3_and_4():
    exact = {n: depth.relu_post_activation_drift(n) for n in range(1, 9)}
    assert all(exact[n] < 0 for n in (1, 2, 3)) and all(exact[n] > 0 for n in range(4, 9))
    for n in (3, 4):  # simulated from the first layer of 200,000 random networks
        mean, se = depth.post_activation_drift_estimate("relu", n, 200000, depth=1000, seed=n)
        assert abs(mean - exact[n]) < 4 * se + 0.01 * abs(exact[n])
        assert (mean - 3 * se > 0) if n == 4 else (mean + 3 * se < 0)  # the confidence interval excludes zero


def test_euler_maruyama_weak_order_one():
    r = depth.weak_error_identity(4, [4, 8, 16, 32, 64, 128], 100000, w_std=1.0, seed=0)
    assert 0.85 < r["order"] < 1.15
    for mean, se, em in zip(r["means"], r["stderrs"], r["em_exact"]):
        assert abs(mean - em) < 4 * se  # the simulation has the law of the scheme
    assert abs(r["errors"][-1]) < abs(r["errors"][0]) / 10


def test_euler_maruyama_function_matches_network_law():
    x0 = torch.zeros(50000, 3, dtype=torch.float64)
    x0[:, 0] = 1.0
    x = depth.euler_maruyama("identity", x0, w_std=1.0, t_end=1.0, steps=50, seed=1)
    sq = (x.norm(dim=1) ** 2).numpy()
    assert abs(sq.mean() - (1 + 1 / 50) ** 50) < 4 * sq.std() / math.sqrt(len(sq))


def test_width_then_depth_and_depth_then_width_agree_with_scaling():
    xs = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64) * math.sqrt(2.0)  # |x|^2/d = 1, x.x'/d = 0.6
    ode = depth.covariance_ode("relu", np.array([1.0, 0.6, 1.0]), 1.0, times=[1.0])["q"][-1]
    sim = depth.simulate_resnet("relu", 128, 100, 64, x=xs, seed=2)
    y = sim["y"][-1]  # (R, n, 2)
    q12 = (y[..., 0] * y[..., 1]).mean(1)
    mean, se = float(q12.mean()), float(q12.std() / math.sqrt(len(q12)))
    assert abs(mean - ode[1]) < 4 * se + 0.02 * ode[1]  # O(1/n) + O(1/L) corrections at width 128, depth 100
    unscaled = depth.simulate_resnet("relu", 256, 40, 8, x=xs, seed=3, branch_scale=1.0)
    assert float((unscaled["y"][-1] ** 2).mean()) > 1e5  # without 1/sqrt(L) the variance explodes with depth


def test_infinite_depth_experiment(tmp_path):
    from infinet.experiments import run_experiment

    params = {"depth": 100, "networks": 3000, "drift_networks": 100000, "long_networks": 300, "weak_paths": 30000,
              "seq_widths": (8, 32), "seq_depth": 60, "seq_networks": 800, "unscaled_depths": (5, 20)}
    result, _ = run_experiment("infinite-depth", tmp_path / "d", params=params, quick=True, progress=False)
    n = result.numbers
    assert n["regime"]["3"]["simulated"] < 0 < n["regime"]["4"]["simulated"]
    assert "changes sign between widths 3 and 4" in result.summary
    assert 0.8 < n["weak_convergence"]["order"] < 1.2
    assert n["unscaled_variance"]["mean_square"][-1] > 100 * n["unscaled_variance"]["mean_square"][0]
    for v in n["identity"].values():
        assert v["ks_pvalue"] > 1e-3


def test_old_keyword_sigma_w_still_works_and_warns():
    from infinet import depth

    with pytest.warns(DeprecationWarning, match="call it w_std="):
        old = depth.identity_log_norm_moments(4, sigma_w=1.3, t=1.0)
    assert old == depth.identity_log_norm_moments(4, w_std=1.3, t=1.0)
    with pytest.raises(TypeError, match="got both"):
        depth.relu_correlation_rhs(0.5, sigma_w=1.0, w_std=1.0)
