"""Random finite networks become Gaussian processes as width grows (Neal 1996; Lee et al. 2018;
Matthews et al. 2018).

On a few real inputs: the outputs of many independently initialized fully-connected networks,
standardized by the exact NNGP standard deviation, should be N(0, 1) at infinite width. Per width:
sample mean, variance, skewness and excess kurtosis (with standard errors), and the Kolmogorov-Smirnov
statistic against N(0, 1) per input, averaged (its sampling floor with S networks is about
0.87 / sqrt(S); moments pool the inputs). The excess
kurtosis (the fourth cumulant) of a finite network's output is O(1 / width). Then one network's
Monte Carlo kernel error against width, NNGP and NTK, with the fitted log-log slope (theory -1/2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from .. import datasets
from ..report import Result, Table
from . import Experiment, Param
from ._common import derived_seed, kernel_error_vs_width, loglog_slope, mean_and_stderr, network_of, network_params, pyplot


def moments(z: np.ndarray) -> dict:
    """Mean, variance, skewness, excess kurtosis of a sample with normal-theory standard errors."""
    n = len(z)
    mean, mean_se = mean_and_stderr(z)
    return {"mean": mean, "mean_se": mean_se,
            "variance": float(z.var(ddof=1)), "variance_se": float(z.var(ddof=1) * math.sqrt(2.0 / (n - 1))),
            "skewness": float(stats.skew(z)), "skewness_se": math.sqrt(6.0 / n),
            "excess_kurtosis": float(stats.kurtosis(z)), "excess_kurtosis_se": math.sqrt(24.0 / n)}


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load(p["dataset"], n_train=p["n_points"] + p["mc_points"], seed=seed).flat()
    x = data.x_train[: p["n_points"]]
    xs = data.x_train[p["n_points"]:]

    def net(width):
        return network_of(p, width=width, n_out=1)

    variance = net(1).kernel(x, get="nngp").nngp.diagonal()
    widths = list(p["widths"])
    table = Table(["width", "mean", "variance", "skewness", "excess kurtosis", "KS statistic (mean over inputs)",
                   "KS p-value (Bonferroni)"],
                  caption=f"{p['n_networks']} random networks per width (depth {p['depth']} ReLU, w_std {p['w_std']}, "
                          f"b_std {p['b_std']}); outputs at {len(x)} {data.name} inputs standardized by the exact "
                          "NNGP standard deviation, pooled; N(0, 1) expected at infinite width")
    numbers: dict = {"widths": widths, "per_width": {}}
    samples = {}
    for width in tqdm(widths, desc="random networks", disable=not progress, leave=False):
        outs = []
        for s in range(p["n_networks"]):
            model = net(width).build(x.shape[1], seed=derived_seed(seed, width, s), dtype=torch.float64)
            with torch.no_grad():
                outs.append(model(x)[:, 0] / variance.sqrt())
        z = torch.stack(outs).numpy()  # (networks, points)
        pooled = z.reshape(-1)
        tests = [stats.kstest(z[:, i], "norm") for i in range(z.shape[1])]  # independent networks per input
        m = moments(pooled)
        m.update(ks_statistic=float(np.mean([t.statistic for t in tests])),
                 ks_pvalue=float(min(1.0, len(tests) * min(t.pvalue for t in tests))))  # Bonferroni over inputs
        numbers["per_width"][str(width)] = m
        samples[width] = pooled
        table.add(width, m["mean"], m["variance"], m["skewness"], m["excess_kurtosis"], m["ks_statistic"], m["ks_pvalue"])
    floor = 0.87 / math.sqrt(p["n_networks"])
    kurt = [abs(numbers["per_width"][str(w)]["excess_kurtosis"]) for w in widths]
    kurt_slope = loglog_slope(widths, kurt)
    study = kernel_error_vs_width(net, xs, p["mc_widths"], p["mc_samples"], seed, progress)
    slopes = study["slopes"]
    numbers.update(ks_floor=floor, excess_kurtosis_slope=kurt_slope[0], excess_kurtosis_slope_se=kurt_slope[1],
                   monte_carlo={"widths": study["widths"], "nngp_error": study["errors"]["nngp"],
                                "ntk_error": study["errors"]["ntk"], "nngp_slope": slopes["nngp"][0],
                                "nngp_slope_se": slopes["nngp"][1], "ntk_slope": slopes["ntk"][0],
                                "ntk_slope_se": slopes["ntk"][1]})
    mc_table = Table(["width", "NNGP relative error", "NTK relative error"],
                     caption=f"One random network's kernel vs the exact kernel on {len(xs)} inputs, RMS over "
                             f"{p['mc_samples']} networks per width")
    for i, w in enumerate(study["widths"]):
        mc_table.add(w, study["errors"]["nngp"][i], study["errors"]["ntk"][i])
    ks_first, ks_last = (numbers["per_width"][str(w)]["ks_statistic"] for w in (widths[0], widths[-1]))

    def verdict(slope, se):
        return "consistent with" if abs(slope + 0.5) <= 1.96 * se else "not consistent with"

    summary = (f"The KS distance of standardized outputs from N(0, 1) goes from {ks_first:.3f} at width {widths[0]} "
               f"to {ks_last:.3f} at width {widths[-1]} (sampling floor about {floor:.3f}); the excess kurtosis falls "
               f"with log-log slope {kurt_slope[0]:.2f} ± {kurt_slope[1]:.2f} (theory -1 while above its noise). "
               f"One network's kernel error falls with slope {slopes['nngp'][0]:.3f} ± {slopes['nngp'][1]:.3f} (NNGP, "
               f"{verdict(*slopes['nngp'])} -1/2 at 95%) and {slopes['ntk'][0]:.3f} ± {slopes['ntk'][1]:.3f} (NTK, "
               f"{verdict(*slopes['ntk'])} -1/2).")
    return Result(title="Finite networks converge to Gaussian processes", summary=summary, numbers=numbers,
                  tables={"moments": table, "kernel_error": mc_table},
                  figures=_figures(samples, widths, numbers, study))


def _figures(samples, widths, numbers, study):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    grid = np.linspace(-4, 4, 200)
    for i, w in enumerate(widths):
        axes[0].hist(samples[w], bins=60, range=(-4, 4), density=True, histtype="step", color=f"C{i}", label=f"width {w}")
    axes[0].plot(grid, stats.norm.pdf(grid), "k--", label="N(0, 1)")
    axes[0].set_xlabel("output / NNGP standard deviation")
    axes[0].set_title("Output distribution of random networks")
    axes[0].legend(fontsize=8)
    ks = [numbers["per_width"][str(w)]["ks_statistic"] for w in widths]
    axes[1].loglog(widths, ks, "o-", label="KS statistic")
    axes[1].loglog(widths, [abs(numbers["per_width"][str(w)]["excess_kurtosis"]) for w in widths], "s-",
                   label="|excess kurtosis|")
    axes[1].axhline(numbers["ks_floor"], color="gray", linestyle=":", label="KS sampling floor")
    axes[1].set_xlabel("width")
    axes[1].set_title("Distance from Gaussian vs width")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(6, 4))
    for name, marker in (("nngp", "o"), ("ntk", "s")):
        slope, se = study["slopes"][name]
        ax.loglog(study["widths"], study["errors"][name], marker=marker, label=f"{name.upper()} slope {slope:.3f} ± {se:.3f}")
    ref = [study["errors"]["nngp"][0] * (study["widths"][0] / w) ** 0.5 for w in study["widths"]]
    ax.loglog(study["widths"], ref, "k--", label="width^-1/2")
    ax.set_xlabel("width")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title("Monte Carlo kernel error vs width")
    ax.legend(fontsize=8)
    return {"output_distribution": fig, "kernel_error_vs_width": fig2}


EXPERIMENT = Experiment(
    name="gp-convergence",
    description="Outputs of random finite networks become Gaussian (moments, KS) and kernel error falls as width^-1/2",
    params={
        "dataset": Param("digits", "data set whose inputs are used"),
        "n_points": Param(4, "inputs at which outputs are sampled"),
        **network_params(depth=2, w_std=1.4, b_std=0.1),
        "widths": Param((2, 8, 32, 128, 512), "widths for the output distribution", quick=(2, 8, 32, 128)),
        "n_networks": Param(2000, "random networks per width", quick=500),
        "mc_points": Param(40, "inputs for the kernel error", quick=20),
        "mc_widths": Param((128, 256, 512, 1024, 2048), "widths for the kernel error", quick=(128, 256, 512, 1024)),
        "mc_samples": Param(16, "networks per width for the kernel error", quick=8, minimum=2),
    },
    run=run,
    details=__doc__,
)
