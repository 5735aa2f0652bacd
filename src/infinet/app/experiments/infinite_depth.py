"""Infinite depth at finite width: residual networks as diffusions (Hayou 2023; Hayou and Yang 2023).

1. phi = identity: log(|X_1| / |X_0|) of deep residual networks against its normal law
   N((1/2 - 1/n) w_std^2, w_std^2 / n) for several widths (moments, Kolmogorov-Smirnov, QQ plot).
2. ReLU at width 1, w_std = 1: X_1 = X_0 exp(B_1 - 1/2), so log(X_1 / X_0) ~ N(-1/2, 1) when X_0 > 0.
3. The change of regime between widths 3 and 4 for ReLU: the drift of log |phi(X_t)|^2 at t = 0 (exact,
   and estimated from random networks with 95% intervals) for n = 1..8, and the post-activation norms
   over longer times.
4. Euler-Maruyama's weak convergence (order 1), i.e. depth-L networks converging to the diffusion.
5. Sequential limits: the width-then-depth covariance ODE against depth-then-width (large L, growing n)
   and the joint limit (n = L), with the 1/sqrt(L) branch scaling; without it the variance explodes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from ...theory import depth
from ..report import Result, Table
from . import Experiment, Param
from ...core.stats import mean_and_stderr
from ._common import pyplot


def identity_study(p: dict, seed: int, plt, numbers: dict, tables: dict, figs: dict) -> None:
    """Identity residual networks: log |X_1| / |X_0| is normal with the diffusion's mean and variance."""
    t1 = Table(["width", "mean", "theory mean", "variance", "theory variance", "KS statistic", "KS p-value"],
               caption=f"phi = identity, w_std = {p['w_std']}, depth {p['depth']}, {p['networks']} networks")
    fig, axes = plt.subplots(2, len(p["widths_identity"]), figsize=(4 * len(p["widths_identity"]), 7), squeeze=False)
    numbers["identity"] = {}
    for k, n in enumerate(p["widths_identity"]):
        sim = depth.simulate_resnet("identity", n, p["depth"], p["networks"], w_std=p["w_std"], seed=seed + n,
                                    record_every=p["depth"])
        z = (sim["y"][-1].norm(dim=1) / sim["y"][0].norm(dim=1)).log().numpy()
        mean, var = depth.identity_log_norm_moments(n, p["w_std"], 1.0)
        ks = stats.kstest(z, "norm", args=(mean, math.sqrt(var)))
        numbers["identity"][str(n)] = {"mean": float(z.mean()), "variance": float(z.var(ddof=1)), "theory_mean": mean,
                                       "theory_variance": var, "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}
        t1.add(n, float(z.mean()), mean, float(z.var(ddof=1)), var, float(ks.statistic), float(ks.pvalue))
        grid = np.linspace(z.min(), z.max(), 200)
        axes[0, k].hist(z, bins=60, density=True, alpha=0.6)
        axes[0, k].plot(grid, stats.norm.pdf(grid, mean, math.sqrt(var)), "k--")
        axes[0, k].set_title(f"identity, width {n}: log(|X_1|/|X_0|)")
        q = np.sort(z)
        theory_q = stats.norm.ppf((np.arange(len(q)) + 0.5) / len(q), mean, math.sqrt(var))
        axes[1, k].plot(theory_q, q, ".", ms=1)
        axes[1, k].plot(theory_q, theory_q, "k--")
        axes[1, k].set_xlabel("normal quantiles")
        axes[1, k].set_title("QQ plot")
    fig.tight_layout()
    figs["identity_log_norm"] = fig
    tables["identity"] = t1


def relu_width1_study(p: dict, seed: int, plt, numbers: dict, tables: dict, figs: dict) -> None:
    """ReLU at width 1: log(X_1 / X_0) ~ N(-1/2, 1) for X_0 > 0."""
    sim = depth.simulate_resnet("relu", 1, p["depth"], p["networks"], w_std=1.0, x=torch.ones(1, dtype=torch.float64),
                                seed=seed + 101, record_every=p["depth"])
    y0, y1 = sim["y"][0, :, 0], sim["y"][-1, :, 0]
    z = (y1[y0 > 0] / y0[y0 > 0]).log().numpy()
    ks = stats.kstest(z, "norm", args=(-0.5, 1.0))
    numbers["relu_width1"] = {"mean": float(z.mean()), "variance": float(z.var(ddof=1)), "ks": float(ks.statistic),
                              "ks_pvalue": float(ks.pvalue), "positive_starts": int(len(z))}


def regime_study(p: dict, seed: int, plt, numbers: dict, tables: dict, figs: dict) -> None:
    """The drift of log |relu(X)|^2 at t = 0 changes sign between widths 3 and 4; longer times."""
    t3 = Table(["width", "exact drift", "simulated drift", "95% interval"],
               caption=f"drift at t = 0 of log |relu(X_t)|^2 (w_std = 1): exact w_std^2 E[k - 2 | k >= 1] / n and "
                       f"from the first layer of {p['drift_networks']} random networks (depth {p['depth']})")
    numbers["regime"] = {}
    for n in range(1, 9):
        exact = depth.relu_post_activation_drift(n)
        est, se = depth.post_activation_drift_estimate("relu", n, p["drift_networks"], depth=p["depth"], seed=seed + n)
        numbers["regime"][str(n)] = {"exact": exact, "simulated": est, "stderr": se}
        t3.add(n, exact, est, f"[{est - 1.96 * se:.4f}, {est + 1.96 * se:.4f}]")
    tables["regime_change"] = t3
    fig3, axes3 = plt.subplots(1, 2, figsize=(11, 4))
    widths = list(range(1, 9))
    axes3[0].plot(widths, [numbers["regime"][str(n)]["exact"] for n in widths], "k-", label="exact")
    axes3[0].errorbar(widths, [numbers["regime"][str(n)]["simulated"] for n in widths],
                      yerr=[1.96 * numbers["regime"][str(n)]["stderr"] for n in widths], fmt="o", label="random networks (95%)")
    axes3[0].axhline(0, color="gray", lw=0.8)
    axes3[0].set_xlabel("width n")
    axes3[0].set_title("drift of log|relu(X)|^2 at t = 0")
    axes3[0].legend(fontsize=8)
    horizon = p["long_time"]
    numbers["long_time"] = {}
    for n in widths:  # time T with w_std = 1 is time 1 with w_std^2 = T (Brownian scaling)
        s = depth.simulate_resnet("relu", n, p["depth"], p["long_networks"], w_std=math.sqrt(horizon), seed=seed + 200 + n,
                                  record_every=max(1, p["depth"] // 50))
        norms = s["post_norm"]
        alive = norms[0] > 0
        logs = (norms[:, alive] / norms[0, alive]).log()
        med = logs.median(dim=1).values.numpy()
        numbers["long_time"][str(n)] = {"t": (s["t"] * horizon).tolist(), "median_log_ratio": med.tolist()}
        axes3[1].plot(s["t"] * horizon, med, label=f"n = {n}")
    axes3[1].set_xlabel("t (w_std = 1)")
    axes3[1].set_ylabel("median log(|relu(X_t)| / |relu(X_0)|)")
    axes3[1].set_title("post-activation norms over longer times")
    axes3[1].legend(fontsize=7, ncol=2)
    fig3.tight_layout()
    figs["regime_change"] = fig3


def weak_order_study(p: dict, seed: int, plt, numbers: dict, tables: dict, figs: dict) -> None:
    """Euler-Maruyama: depth-L networks converge weakly with order 1."""
    weak = depth.weak_error_identity(p["weak_width"], p["weak_steps"], p["weak_paths"], w_std=1.0, seed=seed)
    numbers["weak_convergence"] = weak
    fig4, ax4 = plt.subplots(figsize=(6, 4))
    ax4.loglog(weak["h"], np.abs(weak["errors"]), "o-", label=f"simulated (fitted order {weak['order']:.2f})")
    ax4.loglog(weak["h"], np.abs(np.array(weak["em_exact"]) - weak["exact"]), "k--", label="exact for the scheme")
    ax4.set_xlabel("step h = 1 / depth")
    ax4.set_ylabel("|E|X_1|^2 - e^(sigma^2)|")
    ax4.set_title("Weak convergence of depth-L networks (Euler-Maruyama)")
    ax4.legend(fontsize=8)
    figs["weak_convergence"] = fig4


def sequential_study(p: dict, seed: int, plt, numbers: dict, tables: dict, figs: dict) -> None:
    """Depth-then-width and joint limits against the width-then-depth covariance ODE; unscaled branches."""
    xs = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64) * math.sqrt(2.0)  # q11 = q22 = 1, q12 = 0.6
    ode = depth.covariance_ode("relu", np.array([1.0, 0.6, 1.0]), 1.0, times=[1.0])["q"][-1]
    t5 = Table(["width n", "networks", "depth-then-width q12 (L = %d)" % p["seq_depth"], "s.e.", "joint q12 (L = n)", "s.e.",
                "width-then-depth q12 (ODE)"],
               caption="ReLU, w_std = 1, inputs with x.x'/d = 0.6: mean over networks of (1/n) Y_L(x).Y_L(x')")
    numbers["sequential"] = {"ode_q12": float(ode[1]), "widths": list(p["seq_widths"]), "depth_then_width": [], "joint": [],
                             "depth_then_width_se": [], "joint_se": []}
    for n in p["seq_widths"]:
        count = max(16, p["seq_networks"] // n)  # fewer networks at larger width: q12 self-averages over units
        vals = []
        for L in (p["seq_depth"], n):
            s = depth.simulate_resnet("relu", n, L, count, x=xs, seed=seed + 300 + n + L, record_every=L)
            y = s["y"][-1]
            q12 = (y[..., 0] * y[..., 1]).mean(1)
            vals += [float(v) for v in mean_and_stderr(q12, dim=0)]
        for key, (v, se) in (("depth_then_width", vals[:2]), ("joint", vals[2:])):
            numbers["sequential"][key].append(v)
            numbers["sequential"][key + "_se"].append(se)
        t5.add(n, count, vals[0], vals[1], vals[2], vals[3], float(ode[1]))
    tables["sequential_limits"] = t5
    unscaled = []
    for L in p["unscaled_depths"]:
        s = depth.simulate_resnet("relu", 64, L, 8, x=xs, seed=seed + 400 + L, branch_scale=1.0, record_every=L)
        unscaled.append(float((s["y"][-1] ** 2).mean()))
    numbers["unscaled_variance"] = {"depths": list(p["unscaled_depths"]), "mean_square": unscaled}
    fig5, axes5 = plt.subplots(1, 2, figsize=(11, 4))
    seq = numbers["sequential"]
    axes5[0].errorbar(p["seq_widths"], seq["depth_then_width"], yerr=[2 * v for v in seq["depth_then_width_se"]], fmt="o-",
                      capsize=3, label=f"depth {p['seq_depth']}, then width (± 2 s.e.)")
    axes5[0].errorbar(p["seq_widths"], seq["joint"], yerr=[2 * v for v in seq["joint_se"]], fmt="s-", capsize=3,
                      label="joint (L = n)")
    axes5[0].axhline(ode[1], color="k", linestyle="--", label="width then depth (ODE)")
    axes5[0].set_xscale("log")
    axes5[0].set_xlabel("width n")
    axes5[0].set_ylabel("q_1(x, x')")
    axes5[0].set_title("With 1/sqrt(L) branches the limits agree")
    axes5[0].legend(fontsize=8)
    axes5[1].semilogy(p["unscaled_depths"], unscaled, "o-")
    axes5[1].set_xlabel("depth L (branches not scaled)")
    axes5[1].set_ylabel("mean Y_L^2")
    axes5[1].set_title("Without the scaling the variance explodes")
    fig5.tight_layout()
    figs["sequential_limits"] = fig5


def summarize(p: dict, numbers: dict) -> str:
    """The report's summary, computed from the studies' numbers."""
    weak, horizon = numbers["weak_convergence"], p["long_time"]
    ode_q12, seq = numbers["sequential"]["ode_q12"], numbers["sequential"]
    unscaled = numbers["unscaled_variance"]["mean_square"]
    z_seq = max(abs(v - ode_q12) / se for key in ("depth_then_width", "joint")
                for v, se in zip(seq[key], seq[key + "_se"]))
    idn = numbers["identity"]
    worst_p = min(v["ks_pvalue"] for v in idn.values())
    reg = numbers["regime"]
    sign_change = [n for n in range(1, 8) if reg[str(n)]["simulated"] < 0 <= reg[str(n + 1)]["simulated"]]
    long3 = numbers["long_time"]["3"]["median_log_ratio"][-1]
    long4 = numbers["long_time"]["4"]["median_log_ratio"][-1]
    summary = (f"Deep identity residual networks have log-normal norms as the diffusion predicts (smallest KS p-value "
               f"{worst_p:.2f} over widths {tuple(p['widths_identity'])}); at width 1 ReLU gives log(X_1/X_0) with mean "
               f"{numbers['relu_width1']['mean']:.3f} (theory -0.5) and variance {numbers['relu_width1']['variance']:.3f} "
               f"(theory 1). The simulated drift of log|relu(X)|^2 changes sign between widths "
               f"{', '.join(f'{n} and {n + 1}' for n in sign_change) or '(no sign change found)'} "
               f"({reg['3']['simulated']:+.4f} ± {1.96 * reg['3']['stderr']:.4f} at n = 3, {reg['4']['simulated']:+.4f} ± "
               f"{1.96 * reg['4']['stderr']:.4f} at n = 4); by t = {horizon:g} the median log norm ratio is {long3:+.2f} at n = 3 "
               f"and {long4:+.2f} at n = 4. Euler-Maruyama (depth-L networks) converges weakly with fitted order "
               f"{weak['order']:.2f} (theory 1). With 1/sqrt(L) branches, depth-then-width and joint-limit covariances "
               f"agree with the width-then-depth ODE's {ode_q12:.4f} within {z_seq:.1f} standard errors at every width; without the scaling, the mean square reaches "
               f"{unscaled[-1]:.3g} at depth {p['unscaled_depths'][-1]}.")
    return summary


def run(p: dict, seed: int, progress: bool) -> Result:
    numbers: dict = {}
    tables: dict = {}
    figs: dict = {}
    plt = pyplot()
    for study in (identity_study, relu_width1_study, regime_study, weak_order_study, sequential_study):
        study(p, seed, plt, numbers, tables, figs)
    return Result(title="Infinite depth at finite width", summary=summarize(p, numbers), numbers=numbers, tables=tables,
                  figures=figs)


EXPERIMENT = Experiment(
    name="infinite-depth",
    description="Residual networks of finite width as diffusions: closed forms, the width 3/4 regime change, weak order, sequential limits",
    params={
        "w_std": Param(1.0, "branch weight scale for the identity study"),
        "widths_identity": Param((2, 3, 8), "widths for the identity study"),
        "depth": Param(500, "depth L of the simulated networks", quick=200),
        "networks": Param(20000, "networks per width", quick=5000),
        "drift_networks": Param(400000, "networks for the drift estimates", quick=100000),
        "long_time": Param(5.0, "time horizon of the long-time study"),
        "long_networks": Param(4000, "networks per width in the long-time study", quick=1000),
        "weak_width": Param(4, "width for the weak-convergence study"),
        "weak_steps": Param((4, 8, 16, 32, 64, 128), "numbers of steps (depths)"),
        "weak_paths": Param(200000, "paths", quick=50000),
        "seq_widths": Param((8, 32, 128), "widths for the sequential limits"),
        "seq_depth": Param(200, "depth for depth-then-width", quick=100),
        "seq_networks": Param(3200, "networks per point times width (at least 16 networks)", quick=1600),
        "unscaled_depths": Param((5, 10, 20, 40), "depths without branch scaling"),
    },
    run=run,
    details=__doc__,
)
