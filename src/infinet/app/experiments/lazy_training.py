"""Lazy training: wide networks train like their linearization (Lee et al. 2019; Chizat et al. 2019).

On a real data set, finite fully-connected networks of growing width and their linearizations
(:func:`infinet.linearize`, the same initialization) are trained by full-batch gradient descent with
the same learning rate on the MSE loss. Per width: the relative change of the weights and of the
empirical NTK over training (theory: O(width^-1/2)), and the distances on test inputs between the
trained network, its linearization, and the infinite-width prediction for that same network (its own
initial outputs evolved with the exact NTK, Lee et al. 2019 eqs. 8-9 via
:func:`infinet.predict.linearized_dynamics`); all three converge to each other as width grows.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...finite.linearization import linearize
from ...inference.predict import linearized_dynamics, max_learning_rate
from ..report import Result, Table
from ...finite.training import train_and_track
from . import Experiment, Param
from ._common import data_params, derived_seed, loglog_slope, mean_and_stderr, network_of, network_params, pyplot, training_params


def rms(a, b) -> float:
    return float((a - b).pow(2).mean().sqrt())


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=seed).flat()
    x, y, xt = data.x_train, data.y_train, data.x_test
    n_out = y.shape[1]

    def net(width):
        return network_of(p, width=width, n_out=n_out)

    k_train, k_test = net(1).kernel(x, get="ntk"), net(1).kernel(xt, x, get="ntk")
    lr = p["lr_fraction"] * max_learning_rate(k_train.ntk, n_out)
    every = max(1, p["steps"] // p["records"])
    times = None
    metrics = ("weight_change", "ntk_change", "net_vs_linearized", "net_vs_infinite", "linearized_vs_infinite")
    per_width = {w: {m: [] for m in metrics} for w in p["widths"]}
    curves = {}
    for width in tqdm(p["widths"], desc="widths", disable=not progress, leave=False):
        for s in range(p["seeds"]):
            model = net(width).build(x.shape[1], seed=derived_seed(seed, width, s), dtype=torch.float64)
            lin = linearize(model)
            with torch.no_grad():
                f0, f0_test = model(x), model(xt)
            t_net = train_and_track(model, x, y, lr, p["steps"], x_test=xt, record_every=every, ntk_inputs=x[: p["ntk_points"]])
            t_lin = train_and_track(lin, x, y, lr, p["steps"], x_test=xt, record_every=every)
            times = [lr * step for step in t_net.steps]
            f_inf = linearized_dynamics(k_train.ntk, f0, y, ntk_test_train=k_test.ntk, f0_test=f0_test, t=times,
                                        learning_rate=lr)
            e = per_width[width]
            e["weight_change"].append(t_net.weight_change[-1])
            e["ntk_change"].append(t_net.ntk_change[-1])
            e["net_vs_linearized"].append(rms(t_net.f_test[-1], t_lin.f_test[-1]))
            e["net_vs_infinite"].append(rms(t_net.f_test[-1], f_inf[-1]))
            e["linearized_vs_infinite"].append(rms(t_lin.f_test[-1], f_inf[-1]))
            if s == 0:
                curves[width] = (torch.stack(t_net.f_test)[:, 0, 0], torch.stack(t_lin.f_test)[:, 0, 0], f_inf[:, 0, 0])
    table = Table(["width"] + [f"{m} (mean)" for m in metrics] + ["weight_change s.e."],
                  caption=f"{data.name}: {len(x)} train / {len(xt)} test; depth {p['depth']} ReLU; full-batch gradient "
                          f"descent, lr {lr:.4g}, {p['steps']} steps (t = {lr * p['steps']:.4g}); {p['seeds']} seeds; "
                          "changes are relative (||theta_t - theta_0|| / ||theta_0||, ||Theta_t - Theta_0||_F / "
                          "||Theta_0||_F); distances are RMS over test outputs at the end of training")
    numbers: dict = {"learning_rate": lr, "training_time": lr * p["steps"], "per_width": {}, "slopes": {}}
    for w in p["widths"]:
        means = {m: mean_and_stderr(per_width[w][m]) for m in metrics}
        numbers["per_width"][str(w)] = {m: v[0] for m, v in means.items()}
        table.add(w, *[means[m][0] for m in metrics], means["weight_change"][1])
    for m in metrics:
        numbers["slopes"][m] = loglog_slope(p["widths"], [numbers["per_width"][str(w)][m] for w in p["widths"]])
    sl = numbers["slopes"]
    def nearest(slope):  # which scaling law the measured slope is closer to
        return "-1/2" if abs(slope + 0.5) < abs(slope + 1.0) else "-1"

    pw = numbers["per_width"]
    first, last = str(p["widths"][0]), str(p["widths"][-1])
    summary = (f"Over widths {p['widths'][0]}-{p['widths'][-1]} on {data.name} (depth {p['depth']}), the relative weight "
               f"change falls with log-log slope {sl['weight_change'][0]:.2f} ± {sl['weight_change'][1]:.2f} (theory -1/2 "
               f"with one hidden layer; hidden-to-hidden weights move as width^-1, so deeper nets fall faster), and the "
               f"NTK change with {sl['ntk_change'][0]:.2f} ± {sl['ntk_change'][1]:.2f}, closer to {nearest(sl['ntk_change'][0])} "
               f"(Lee et al. 2019 bound it by width^-1/2; Dyer and Gur-Ari 2020 predict width^-1 for its change during "
               f"training). The trained network's RMS distance to its linearization falls from "
               f"{pw[first]['net_vs_linearized']:.3g} to {pw[last]['net_vs_linearized']:.3g} (slope "
               f"{sl['net_vs_linearized'][0]:.2f}, theory -1/2) and to the infinite-width prediction from "
               f"{pw[first]['net_vs_infinite']:.3g} to {pw[last]['net_vs_infinite']:.3g} (slope {sl['net_vs_infinite'][0]:.2f}).")
    return Result(title="Lazy training: wide networks train like their linearization", summary=summary, numbers=numbers,
                  tables={"lazy_training": table}, figures=_figures(p, numbers, curves, times))


def _figures(p, numbers, curves, times):
    plt = pyplot()
    widths = list(p["widths"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, marker in (("weight_change", "o"), ("ntk_change", "s")):
        axes[0].loglog(widths, [numbers["per_width"][str(w)][m] for w in widths], marker=marker,
                       label=f"{m.replace('_', ' ')} (slope {numbers['slopes'][m][0]:.2f})")
    for m, marker in (("net_vs_linearized", "o"), ("net_vs_infinite", "s"), ("linearized_vs_infinite", "^")):
        axes[1].loglog(widths, [numbers["per_width"][str(w)][m] for w in widths], marker=marker,
                       label=f"{m.replace('_', ' ')} (slope {numbers['slopes'][m][0]:.2f})")
    for ax, title in zip(axes, ("Relative change during training", "RMS distance of test outputs")):
        ref = [ax.get_lines()[0].get_ydata()[0] * (widths[0] / w) ** 0.5 for w in widths]
        ax.loglog(widths, ref, "k--", label="width^-1/2")
        ax.set_xlabel("width")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig2, axes2 = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, w in zip(axes2, (widths[0], widths[-1])):
        net_c, lin_c, inf_c = curves[w]
        ax.plot(times, net_c, label="network")
        ax.plot(times, lin_c, "--", label="linearization")
        ax.plot(times, inf_c, ":", label="infinite width (same f0)")
        ax.set_xlabel("training time t = lr x steps")
        ax.set_title(f"width {w}: output 0 on test input 0")
        ax.legend(fontsize=8)
    fig2.tight_layout()
    return {"changes_and_distances_vs_width": fig, "output_trajectories": fig2}


EXPERIMENT = Experiment(
    name="lazy-training",
    description="Weight and NTK change vs width; network vs linearization vs infinite-width prediction (Lee et al. 2019)",
    params={
        **data_params(n_train=200, n_test=100, quick_train=100, quick_test=50),
        **network_params(depth=1, w_std=1.4, b_std=0.1),
        "widths": Param((64, 256, 1024, 4096), "widths", quick=(64, 256, 1024)),
        **training_params(steps=400, quick_steps=200, seeds=3, quick_seeds=2),
        "records": Param(40, "recorded points along training"),
        "ntk_points": Param(10, "training inputs on which the empirical NTK change is measured"),
    },
    run=run,
    details=__doc__,
)
