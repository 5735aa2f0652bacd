"""The order-chaos phase diagram of deep random networks (Poole et al. 2016; Schoenholz et al. 2017).

For tanh, ReLU, erf and GELU over a grid of (w_std^2, b_std^2): chi_1 (the slope of the correlation
map at c = 1) and the correlation depth scale xi_c, with the edge of chaos chi_1 = 1 drawn on top
(for ReLU it is the single point (2, 0); Hayou et al. 2019). Then correlation propagation through
depth at an ordered, a critical and a chaotic point of tanh: theory (the correlation map) against
wide random networks (mean and standard error over networks).
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from ...theory import meanfield as mf
from ..report import Result, Table
from . import Experiment, Param
from ._common import pyplot

ACTS = ("tanh", "relu", "erf", "gelu")


def run(p: dict, seed: int, progress: bool) -> Result:
    w_grid = np.linspace(*p["w_var_range"], p["grid"])
    b_grid = np.linspace(*p["b_var_range"], p["grid_b"])
    maps, edges = {}, {}
    for act in tqdm(ACTS, desc="activations", disable=not progress, leave=False):
        chi = np.full((len(b_grid), len(w_grid)), np.nan)
        xi = np.full_like(chi, np.nan)
        for i, b in enumerate(b_grid):
            for j, w in enumerate(w_grid):
                r = mf.analyze(act, w_std=math.sqrt(w), b_std=math.sqrt(b))
                chi[i, j], xi[i, j] = r.chi_1, r.xi_c
        maps[act] = (chi, xi)
        edges[act] = [mf.critical_w_std(act, b_std=math.sqrt(b), w_std_range=(math.sqrt(w_grid[0]), math.sqrt(w_grid[-1])))
                      ** 2 for b in b_grid]  # the diagram is drawn in variances
    table = Table(["activation", "b_std^2", "critical w_std^2 (chi_1 = 1)"],
                  caption="edge of chaos per bias variance (NaN: no critical point with a finite stable length)")
    for act in ACTS:
        for b, w in zip(b_grid, edges[act]):
            table.add(act, float(b), float(w))
    b_star = p["b_var_depth"]
    w_crit = mf.critical_w_std("tanh", b_std=math.sqrt(b_star)) ** 2
    points = {"ordered": 0.5 * w_crit, "critical": w_crit, "chaotic": 2.0 * w_crit}
    depth_runs = {}
    for name, w in points.items():
        r = mf.analyze("tanh", w_std=math.sqrt(w), b_std=math.sqrt(b_star))
        theory_q, theory_c = mf.propagate("tanh", r.q_star, p["c0"], w_std=math.sqrt(w), b_std=math.sqrt(b_star),
                                         depth=p["depth"])
        sim = mf.simulate("tanh", r.q_star, p["c0"], w_std=math.sqrt(w), b_std=math.sqrt(b_star), depth=p["depth"],
                          width=p["width"], n_networks=p["networks"], seed=seed)
        z = np.abs(sim["c"][1:] - theory_c[1:]) / np.maximum(sim["c_se"][1:], 1e-12)
        depth_runs[name] = {"w_var": w, "chi_1": r.chi_1, "xi_c": r.xi_c, "c_star": r.c_star, "theory_c": theory_c.tolist(),
                            "simulated_c": sim["c"].tolist(), "simulated_c_se": sim["c_se"].tolist(),
                            "max_abs_z": float(z.max())}
    numbers = {"w_var_grid": w_grid.tolist(), "b_var_grid": b_grid.tolist(),
               "chi_1": {a: maps[a][0].tolist() for a in ACTS}, "xi_c": {a: maps[a][1].tolist() for a in ACTS},
               "edge_of_chaos": {a: edges[a] for a in ACTS}, "depth_propagation": depth_runs}
    tanh_edge = [w for w in edges["tanh"] if math.isfinite(w)]
    relu_points = [(float(b), w) for b, w in zip(b_grid, edges["relu"]) if math.isfinite(w)]
    worst_z = max(v["max_abs_z"] for v in depth_runs.values())
    summary = (f"The tanh edge of chaos rises from w_std^2 = {tanh_edge[0]:.3f} at b_std^2 = {b_grid[0]:g} to "
               f"{tanh_edge[-1]:.3f} at b_std^2 = {b_grid[-1]:g}; ReLU is critical only at "
               + (", ".join(f"(w_std^2, b_std^2) = ({w:.3f}, {b:g})" for b, w in relu_points) or "no grid point")
               + f". Through {p['depth']} layers of width {p['width']}, tanh correlations (b_std^2 = {b_star}) converge to "
               f"c* = {depth_runs['ordered']['c_star']:.3f} in the ordered phase (xi_c = {depth_runs['ordered']['xi_c']:.2f}) "
               f"and c* = {depth_runs['chaotic']['c_star']:.3f} in the chaotic one (xi_c = {depth_runs['chaotic']['xi_c']:.2f}), "
               f"while at the critical point xi_c = {depth_runs['critical']['xi_c']:.3g} "
               f"({'longer than' if depth_runs['critical']['xi_c'] > max(depth_runs['ordered']['xi_c'], depth_runs['chaotic']['xi_c']) else 'not longer than'} "
               f"both); random networks stay within {worst_z:.1f} standard errors of theory.")
    return Result(title="Order-chaos phase diagram", summary=summary, numbers=numbers, tables={"edge_of_chaos": table},
                  figures=_figures(w_grid, b_grid, maps, edges, depth_runs))


def _figures(w_grid, b_grid, maps, edges, depth_runs):
    plt = pyplot()
    fig, axes = plt.subplots(2, len(ACTS), figsize=(4 * len(ACTS), 7), squeeze=False)
    for k, act in enumerate(ACTS):
        chi, xi = maps[act]
        for row, (data, title) in enumerate(((np.log(chi), "log chi_1"), (np.log(np.clip(xi, 1e-3, 1e3)), "log xi_c"))):
            ax = axes[row, k]
            mesh = ax.pcolormesh(w_grid, b_grid, data, shading="auto", cmap="RdBu_r" if row == 0 else "viridis")
            fig.colorbar(mesh, ax=ax)
            ax.plot(edges[act], b_grid, "k-", lw=2, label="chi_1 = 1")
            ax.set_title(f"{act}: {title}")
            ax.set_xlabel("w_std^2")
            ax.set_ylabel("b_std^2")
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(7, 4))
    for i, (name, run) in enumerate(depth_runs.items()):
        layers = np.arange(len(run["theory_c"]))
        ax.plot(layers, run["theory_c"], color=f"C{i}", label=f"{name} (w_std^2 = {run['w_var']:.2f}) theory")
        ax.errorbar(layers, run["simulated_c"], yerr=run["simulated_c_se"], fmt="o", ms=3, color=f"C{i}",
                    label=f"{name} random networks")
    ax.set_xlabel("layer")
    ax.set_ylabel("correlation c^l")
    ax.set_title("tanh: correlation through depth in each phase")
    ax.legend(fontsize=7)
    return {"phase_diagram": fig, "correlation_vs_depth": fig2}


EXPERIMENT = Experiment(
    name="phase-diagram",
    description="chi_1 and xi_c over (w_std^2, b_std^2) for tanh, ReLU, erf, GELU with the edge of chaos; correlations through depth",
    params={
        "w_var_range": Param((0.5, 4.0), "w_std^2 range"),
        "b_var_range": Param((0.0, 0.3), "b_std^2 range"),
        "grid": Param(36, "grid points along w_std^2", quick=14),
        "grid_b": Param(16, "grid points along b_std^2", quick=6),
        "b_var_depth": Param(0.05, "b_std^2 of the depth-propagation study"),
        "c0": Param(0.2, "input correlation of the depth-propagation study"),
        "depth": Param(50, "layers in the depth-propagation study", quick=30),
        "width": Param(1000, "width of the random networks", quick=500),
        "networks": Param(8, "random networks per point", quick=4),
    },
    run=run,
    details=__doc__,
)
