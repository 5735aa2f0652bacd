"""Bias and variance of infinitely wide networks, and double descent.

1. Infinitely wide networks trained by gradient flow on n examples form a Gaussian ensemble over
   initializations with mean mu_S(t) and covariance Sigma_S(t) (Lee et al. 2019, eqs. 14-16;
   :func:`infinet.predict.gradient_descent_mse_ensemble`). Over training sets S of size n drawn from a
   pool, the expected test MSE of one network splits exactly into
       bias^2 = mean (E_S mu_S - y)^2,   variance from the sample = mean Var_S(mu_S),
       variance from initialization = mean E_S diag Sigma_S,
   reported against n (at t = inf) and against t (at the largest n), on a real data set.
2. Double descent of minimum-norm least squares with isotropic Gaussian features (Hastie, Montanari,
   Rosset and Tibshirani 2019, Theorem 1 with Sigma = I): as n, p -> inf with p / n -> gamma, the excess
   risk ||beta_hat - beta||^2 tends to sigma^2 gamma / (1 - gamma) for gamma < 1 and to
   r^2 (1 - 1/gamma) + sigma^2 / (gamma - 1) for gamma > 1 (r = ||beta||, sigma the noise); simulated
   against it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import datasets
from ...inference.predict import gradient_descent_mse_ensemble
from ..report import Result, Table
from . import Experiment, Param
from ...core.stats import mean_and_stderr
from ._common import data_params, derived_seed, network_of, network_params, pyplot


def decompose(means: torch.Tensor, variances: torch.Tensor, y: torch.Tensor) -> dict:
    """means (R, N, C) over R training sets, variances (R, N) of one output, targets (N, C)."""
    avg = means.mean(0)
    bias2 = float((avg - y).pow(2).mean())
    sample = float(means.var(0, unbiased=False).mean())  # ddof 0: the split of the average MSE is exact
    init = float(variances.mean())
    return {"bias2": bias2, "variance_sample": sample, "variance_init": init, "total": bias2 + sample + init}


def min_norm_risk(n: int, gamma: float, r: float, sigma: float, reps: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of ||beta_hat - beta||^2 for the minimum-norm least-squares fit."""
    rng = np.random.default_rng(seed)
    p = max(1, int(round(gamma * n)))
    risks = []
    for _ in range(reps):
        x = rng.standard_normal((n, p))
        beta = rng.standard_normal(p)
        beta *= r / np.linalg.norm(beta)
        y = x @ beta + sigma * rng.standard_normal(n)
        if p > n:  # the minimum-norm interpolant X^T (X X^T)^-1 y
            beta_hat = x.T @ np.linalg.solve(x @ x.T, y)
        else:  # least squares (X^T X)^-1 X^T y
            beta_hat = np.linalg.solve(x.T @ x, x.T @ y)
        risks.append(float(np.sum((beta_hat - beta) ** 2)))
    return mean_and_stderr(risks)


def min_norm_theory(gamma: float, r: float, sigma: float) -> float:
    """Hastie et al. 2019, Theorem 1 (isotropic features): the limiting excess risk."""
    if gamma < 1:
        return sigma**2 * gamma / (1 - gamma)
    if gamma > 1:
        return r**2 * (1 - 1 / gamma) + sigma**2 / (gamma - 1)
    return math.inf


def run(p: dict, seed: int, progress: bool) -> Result:
    sizes = sorted(p["train_sizes"])
    data = datasets.load(p["dataset"], n_train=p["pool"], n_test=p["n_test"], seed=seed).flat()
    pool, yp, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    net = network_of(p, width=512, n_out=yp.shape[1])
    everything = torch.cat([pool, xt])
    k_all = net.kernel(everything)
    test = torch.arange(len(pool), len(everything))
    times = [float(t) for t in p["times"]] + [math.inf]
    results: dict = {}
    for n in tqdm(sizes, desc="training-set sizes", disable=not progress, leave=False):
        means, variances = [], []
        for r in range(p["draws"]):
            rows = torch.randperm(len(pool), generator=torch.Generator().manual_seed(derived_seed(seed, n, r)))[:n]
            sub = lambda a, b: k_all.replace(nngp=k_all.nngp[a][:, b], ntk=k_all.ntk[a][:, b])  # noqa: E731
            post = gradient_descent_mse_ensemble(sub(rows, rows), yp[rows], times, sub(test, rows), sub(test, test),
                                                 kernel="ntk", compute_cov=True, diag_reg=p["diag_reg"])
            means.append(post.mean)
            variances.append(post.cov.diagonal(dim1=-2, dim2=-1))
        m, v = torch.stack(means), torch.stack(variances)  # (R, T, N, C), (R, T, N)
        results[n] = [decompose(m[:, i], v[:, i], yt) for i in range(len(times))]
    table = Table(["n_train", "time", "bias^2", "variance (sample)", "variance (initialization)", "expected test MSE"],
                  caption=f"{data.name}: NTK ensembles (depth {p['depth']} ReLU), {p['draws']} training sets per size "
                          f"drawn from a pool of {len(pool)}, {len(xt)} test points")
    for n in sizes:
        for t, d in zip(times, results[n]):
            table.add(n, t, d["bias2"], d["variance_sample"], d["variance_init"], d["total"])

    gammas = [g for g in p["gammas"]]
    dd = Table(["gamma = p/n", "simulated risk", "s.e.", "Hastie et al. 2019 limit", "relative difference"],
               caption=f"minimum-norm least squares, n = {p['dd_n']}, ||beta|| = {p['dd_r']}, noise sigma = "
                       f"{p['dd_sigma']}, {p['dd_reps']} repetitions per gamma")
    double_descent = []
    for i, g in enumerate(gammas):
        sim, se = min_norm_risk(p["dd_n"], g, p["dd_r"], p["dd_sigma"], p["dd_reps"], derived_seed(seed, 99, i))
        theory = min_norm_theory(g, p["dd_r"], p["dd_sigma"])
        double_descent.append({"gamma": g, "simulated": sim, "stderr": se, "theory": theory,
                               "relative_difference": abs(sim - theory) / theory})
        dd.add(g, sim, se, theory, abs(sim - theory) / theory)
    numbers = {"times": times, "sizes": sizes, "decomposition": {str(n): results[n] for n in sizes},
               "double_descent": double_descent}
    first, last = results[sizes[0]][-1], results[sizes[-1]][-1]
    share = lambda d: d["variance_init"] / d["total"]  # noqa: E731
    worst = max(r["relative_difference"] for r in double_descent)
    peak = max(double_descent, key=lambda r: r["simulated"])
    at_t = results[sizes[-1]]
    best_t = min(range(len(times)), key=lambda i: at_t[i]["total"])
    summary = (f"On {data.name} at t = inf, growing the training set from {sizes[0]} to {sizes[-1]} lowers the expected "
               f"test MSE from {first['total']:.4f} to {last['total']:.4f} (bias^2 {first['bias2']:.4f} -> "
               f"{last['bias2']:.4f}; variance from the sample {first['variance_sample']:.4f} -> "
               f"{last['variance_sample']:.4f}; from initialization {first['variance_init']:.4f} -> "
               f"{last['variance_init']:.4f}, {share(first):.0%} -> {share(last):.0%} of the total). With n = {sizes[-1]} "
               f"the expected MSE is lowest at t = {times[best_t]:g}. Minimum-norm least squares peaks at gamma = "
               f"{peak['gamma']} (risk {peak['simulated']:.3g}) and matches the Hastie et al. limit within "
               f"{worst:.1%} at every gamma simulated.")
    return Result(title="Bias, variance and double descent", summary=summary, numbers=numbers,
                  tables={"bias_variance": table, "double_descent": dd},
                  figures=_figures(results, sizes, times, double_descent, p))


def _figures(results, sizes, times, dd, p):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    keys = (("bias2", "bias^2"), ("variance_sample", "variance (sample)"), ("variance_init", "variance (init)"),
            ("total", "expected test MSE"))
    for key, label in keys:
        axes[0].plot(sizes, [results[n][-1][key] for n in sizes], "o-", label=label)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training-set size n (t = inf)")
    axes[0].set_title("Bias-variance vs n")
    finite = [i for i, t in enumerate(times) if math.isfinite(t) and t > 0]
    for key, label in keys:
        axes[1].plot([times[i] for i in finite], [results[sizes[-1]][i][key] for i in finite], "o-", label=label)
    axes[1].set_xscale("log")
    axes[1].set_xlabel(f"training time t (n = {sizes[-1]})")
    axes[1].set_title("Bias-variance vs time")
    gam = np.linspace(0.05, 6, 400)
    gam = gam[np.abs(gam - 1) > 0.03]
    axes[2].plot(gam, [min_norm_theory(g, p["dd_r"], p["dd_sigma"]) for g in gam], "k-", label="Hastie et al. 2019")
    axes[2].errorbar([r["gamma"] for r in dd], [r["simulated"] for r in dd], yerr=[2 * r["stderr"] for r in dd],
                     fmt="o", label="simulated (± 2 s.e.)")
    axes[2].set_ylim(0, 3 * max(r["theory"] for r in dd if r["gamma"] > 1.5) + 1)
    axes[2].set_xlabel("gamma = p / n")
    axes[2].set_title("Double descent of min-norm least squares")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return {"bias_variance_and_double_descent": fig}


EXPERIMENT = Experiment(
    name="bias-variance",
    description="Bias^2 / sample variance / initialization variance of NTK ensembles vs n and t; double descent vs theory",
    params={
        **data_params(n_train=1000, quick_train=600, n_test=400, quick_test=200, train_name="pool",
                      what="classification data set (one-hot targets); training sets are drawn from a pool"),
        "train_sizes": Param((25, 50, 100, 200, 400), "training-set sizes", quick=(25, 50, 100, 200)),
        "draws": Param(10, "training sets per size", quick=6),
        "times": Param((1.0, 10.0, 100.0, 1000.0, 10000.0), "training times (t = inf is added)"),
        **network_params(depth=2, w_std=1.5, b_std=0.1),
        "diag_reg": Param(1e-6, "regularization relative to the mean NTK diagonal"),
        "gammas": Param((0.2, 0.4, 0.6, 0.75, 1.33, 1.5, 2.0, 3.0, 5.0), "p / n values for double descent"),
        "dd_n": Param(400, "samples n in the double-descent simulation"),
        "dd_r": Param(1.0, "signal norm ||beta||"),
        "dd_sigma": Param(0.5, "noise standard deviation"),
        "dd_reps": Param(60, "repetitions per gamma", quick=30),
    },
    run=run,
    details=__doc__,
)
