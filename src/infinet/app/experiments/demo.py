"""The main job: finite networks of growing width against their infinite-width limits, on real data.

On a real data set (scikit-learn digits by default): the NNGP posterior mean and the NTK
gradient-descent prediction (after the finite networks' steps and at t = inf) of a
fully-connected ReLU architecture; finite networks of the same description (widths 64 to 4096,
'ntk' parameterization) trained by full-batch gradient descent with the MSE loss normalization of
the kernel predictions; test accuracy and MSE of each, with standard errors over seeds; and the
Monte Carlo kernel error against width, whose log-log slope theory puts at -1/2.

Each finite curve has its own limit. A centered network (f - f0) converges to the NTK ensemble's mean
after the same gradient-descent steps. A network as trained keeps a random part of its initial function
and converges to one draw of the infinite-width ensemble N(mean, cov) (Lee et al. 2019, eqs. 14-16, in
their discrete-step form): its expected test MSE is exactly that of the mean plus the ensemble's variance,
and its expected accuracy is estimated from draws of that Gaussian (:func:`infinet.predict.single_network_metrics`).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...inference.predict import (gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate,
                                  single_network_metrics)
from ..report import Result, Table
from ...finite.training import train_gradient_descent
from . import Experiment, Param
from ._common import (
    accuracy,
    derived_seed,
    data_params,
    kernel_error_vs_width,
    loglog_slope,
    mean_and_stderr,
    mse,
    network_of,
    network_params,
    pyplot,
    training_params,
)


def kernel_study(p: dict, data, net, seed: int) -> dict:
    """The infinite-width predictions: the NNGP posterior mean; the NTK ensemble after the finite networks'
    gradient-descent steps (its mean, the limit of centered networks, and what one network of the ensemble
    scores on average, the limit of networks as trained); and the NTK at t = inf; on the test and training sets.
    Also the gradient-flow prediction at t = lr x steps with the diagonal regularization, the previous target."""
    x, y, xt, n_out = data.x_train, data.y_train, data.x_test, data.y_train.shape[1]
    t0 = time.perf_counter()
    k_train = net(1).kernel(x)
    k_test = net(1).kernel(xt, x)
    k_test_test = net(1).kernel(xt, get="nngp")
    kernel_time = time.perf_counter() - t0
    nngp_mean = gp_inference(k_train.nngp, k_test.nngp, y, diag_reg=p["diag_reg"]).mean
    lr = p["lr_fraction"] * max_learning_rate(k_train.ntk, n_out)
    t_train = lr * p["steps"]
    ensemble = gradient_descent_mse_ensemble(k_train, y, k_test_train=k_test, k_test_test=k_test_test,
                                             compute_cov=True, learning_rate=lr, steps=p["steps"])
    single = single_network_metrics(ensemble, data.y_test, data.labels_test, samples=p["limit_samples"], seed=seed)
    ntk_flow, ntk_inf = gradient_descent_mse(k_train.ntk, k_test.ntk, y, [t_train, float("inf")], diag_reg=p["diag_reg"])
    nngp_fit = gp_inference(k_train.nngp, k_train.nngp, y, diag_reg=p["diag_reg"]).mean
    fit_steps = gradient_descent_mse_ensemble(k_train, y, learning_rate=lr, steps=p["steps"]).mean
    fit_inf = gradient_descent_mse(k_train.ntk, k_train.ntk, y, float("inf"), diag_reg=p["diag_reg"])

    def ntk_train_fit(name):
        return nngp_fit if name.startswith("NNGP") else fit_steps if "inf" not in name else fit_inf

    kernel_rows = [("NNGP (GP posterior mean)", nngp_mean), (f"NTK after {p['steps']} steps (mean)", ensemble.mean),
                   ("NTK at t=inf", ntk_inf)]
    return {"rows": kernel_rows, "train_fit": ntk_train_fit, "lr": lr, "t_train": t_train, "ntk_t": ensemble.mean,
            "ntk_flow": ntk_flow, "single": single, "seconds": kernel_time}


def finite_study(p: dict, data, net, lr: float, ntk_t, ntk_flow, seed: int, progress: bool) -> tuple[dict, float]:
    """Finite networks of every width and seed trained by full-batch gradient descent, each twice from the same
    initialization: as it is, and centered (f - f0, i.e. trained on targets y + f0(X)), whose infinite-width
    limit is exactly the NTK mean prediction; an uncentered network converges instead to one random draw
    around it. Returns per (width, centered) the test accuracy, test MSE, train MSE, RMS distance to the NTK
    prediction after the same steps (``ntk_t``) and to the gradient-flow prediction (``ntk_flow``), and the loss
    curve of each seed, and the seconds taken."""
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    dtype = torch.float64 if p["float64"] else torch.float32
    t0 = time.perf_counter()
    runs = [(w, s, c) for w in p["widths"] for s in range(p["seeds"]) for c in (False, True)]
    per_width = {(w, c): {"acc": [], "mse": [], "train": [], "dist": [], "dist_flow": [], "curve": []}
                 for w in p["widths"] for c in (False, True)}
    for width, s, centered in tqdm(runs, desc="training finite networks", disable=not progress):
        model = net(width).build(x.shape[1], seed=derived_seed(seed, width, s), dtype=dtype)
        xd, xtd = x.to(dtype), xt.to(dtype)
        with torch.no_grad():
            f0, f0_test = (model(xd), model(xtd)) if centered else (0.0, 0.0)
        rec = train_gradient_descent(model, xd, y.to(dtype) + f0, lr, p["steps"], x_test=xtd,
                                     record_every=max(1, p["steps"] // 50))
        f_test, f_train = (rec.f_test[-1] - f0_test).double(), (rec.f_train - f0).double()
        entry = per_width[(width, centered)]
        entry["acc"].append(accuracy(f_test, data.labels_test))
        entry["mse"].append(mse(f_test, yt))
        entry["train"].append(mse(f_train, y))
        entry["dist"].append(mse(f_test, ntk_t) ** 0.5)
        entry["dist_flow"].append(mse(f_test, ntk_flow) ** 0.5)
        entry["curve"].append((rec.steps, rec.loss))
    return per_width, time.perf_counter() - t0


def monte_carlo_study(p: dict, data, net, seed: int, progress: bool) -> tuple[Table, dict, float]:
    """One random network's kernel error against width, and its log-log slopes (theory -1/2)."""
    x = data.x_train
    t0 = time.perf_counter()
    xs = x[: p["mc_points"]]
    mc_table = Table(["width", "NNGP relative error", "NTK relative error"],
                     caption=f"Kernel of one random network vs the exact kernel, RMS over {p['mc_samples']} networks "
                             f"per width on {len(xs)} training inputs: sqrt(E||K_net - K||_F^2) / ||K||_F")
    study = kernel_error_vs_width(net, xs, p["widths"], p["mc_samples"], seed, progress)
    errs, slopes = study["errors"], study["slopes"]
    for i, width in enumerate(p["widths"]):
        mc_table.add(width, errs["nngp"][i], errs["ntk"][i])
    mc_time = time.perf_counter() - t0
    numbers = {"widths": list(p["widths"]), "nngp_error": errs["nngp"], "ntk_error": errs["ntk"],
               "nngp_slope": slopes["nngp"][0], "nngp_slope_se": slopes["nngp"][1],
               "ntk_slope": slopes["ntk"][0], "ntk_slope_se": slopes["ntk"][1]}
    return mc_table, numbers, mc_time


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=seed).flat()
    if data.task != "classification":
        raise ValueError(f"the demo needs a classification data set; {p['dataset']!r} is a regression task")
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    n_out = y.shape[1]

    def net(width):
        return network_of(p, width=width, n_out=n_out)

    kernels = kernel_study(p, data, net, seed)
    kernel_rows, ntk_train_fit, lr, t_train, ntk_t = (kernels[k] for k in ("rows", "train_fit", "lr", "t_train", "ntk_t"))
    single = kernels["single"]
    table = Table(["model", "width", "test accuracy", "accuracy s.e.", "test MSE", "MSE s.e.", "train MSE",
                   "RMS to NTK mean"],
                  caption=f"{data.name}: {len(x)} train / {len(xt)} test; depth {p['depth']} ReLU, "
                          f"w_std={p['w_std']}, b_std={p['b_std']}; finite nets: {p['steps']} steps of "
                          f"gradient descent, lr={lr:.4g} ({p['lr_fraction']} x the NTK's stable limit), "
                          f"mean over {p['seeds']} seeds; 'one network of the NTK ensemble': what a single infinitely "
                          "wide network trained the same way scores on average (the limit of the networks as trained)")
    numbers = {"n_train": len(x), "n_test": len(xt), "learning_rate": lr, "training_time": t_train,
               "kernel": {}, "single_network_limit": single}
    for name, pred in kernel_rows:
        acc, err = accuracy(pred, data.labels_test), mse(pred, yt)
        table.add(name, "inf", acc, 0.0, err, 0.0, mse(ntk_train_fit(name), y), mse(pred, ntk_t) ** 0.5)
        numbers["kernel"][name] = {"test_accuracy": acc, "test_mse": err}
    table.add("one network of the NTK ensemble", "inf", single["accuracy"], single["accuracy_se"], single["mse"], 0.0,
              "", "")

    per_width, train_time = finite_study(p, data, net, lr, ntk_t, kernels["ntk_flow"], seed, progress)
    for centered in (False, True):
        name = "finite, centered f - f0" if centered else "finite network"
        key = "finite_centered" if centered else "finite"
        numbers[key] = {}
        for width in p["widths"]:
            e = per_width[(width, centered)]
            (acc, acc_se), (err, err_se) = mean_and_stderr(e["acc"]), mean_and_stderr(e["mse"])
            train, dist = mean_and_stderr(e["train"])[0], mean_and_stderr(e["dist"])[0]
            table.add(name, width, acc, acc_se, err, err_se, train, dist)
            numbers[key][str(width)] = {"test_accuracy": acc, "test_accuracy_se": acc_se, "test_mse": err,
                                        "test_mse_se": err_se, "train_mse": train, "rms_to_ntk_t": dist,
                                        "rms_to_ntk_flow": mean_and_stderr(e["dist_flow"])[0],
                                        "test_accuracy_per_seed": e["acc"], "test_mse_per_seed": e["mse"]}

    mc_table, numbers["monte_carlo"], mc_time = monte_carlo_study(p, data, net, seed, progress)
    errs = {"nngp": numbers["monte_carlo"]["nngp_error"], "ntk": numbers["monte_carlo"]["ntk_error"]}
    slopes = {k: (numbers["monte_carlo"][f"{k}_slope"], numbers["monte_carlo"][f"{k}_slope_se"]) for k in ("nngp", "ntk")}
    dist_slope = loglog_slope(p["widths"], [mean_and_stderr(per_width[(w, True)]["dist"])[0] for w in p["widths"]])
    flow_slope = loglog_slope(p["widths"], [mean_and_stderr(per_width[(w, True)]["dist_flow"])[0] for w in p["widths"]])
    numbers["centered_rms_to_ntk_slope"], numbers["centered_rms_to_ntk_slope_se"] = dist_slope
    numbers["centered_rms_to_flow_slope"], numbers["centered_rms_to_flow_slope_se"] = flow_slope
    best = max(p["widths"])
    numbers["as_trained_vs_limit"] = _approach(numbers["finite"][str(best)], single)
    figures = _figures(p, per_width, kernel_rows, data, errs, slopes, t_train, lr, single)
    acc = {name: v["test_accuracy"] for name, v in numbers["kernel"].items()}
    summary = (f"Test accuracy on {data.name}: NNGP {acc[kernel_rows[0][0]]:.3f}, NTK mean after the networks' steps "
               f"{acc[kernel_rows[1][0]]:.3f}, NTK at t=inf {acc[kernel_rows[2][0]]:.3f}. "
               + _limit_sentence(numbers, best, single) + " "
               + _slope_sentence(numbers, list(p["widths"]), dist_slope, flow_slope) + " "
               f"One network's kernel error falls with width with log-log slope {slopes['nngp'][0]:.2f} ± "
               f"{slopes['nngp'][1]:.2f} (NNGP) and {slopes['ntk'][0]:.2f} ± {slopes['ntk'][1]:.2f} (NTK); theory -1/2.")
    return Result(title=f"Finite vs infinite width on {data.name}", summary=summary, numbers=numbers,
                  timings={"kernels": kernels["seconds"], "finite networks": train_time, "monte carlo": mc_time},
                  tables={"accuracy": table, "monte_carlo": mc_table}, figures=figures)


def _approach(finite: dict, single: dict) -> dict:
    """How far the widest networks as trained are from one infinitely wide network's expected scores, in
    combined standard errors (seeds of the finite networks; the limit's accuracy is sampled, its MSE exact)."""
    acc_se = (finite["test_accuracy_se"] ** 2 + single["accuracy_se"] ** 2) ** 0.5
    return {"accuracy_z": (finite["test_accuracy"] - single["accuracy"]) / acc_se if acc_se > 0 else float("inf"),
            "mse_z": ((finite["test_mse"] - single["mse"]) / finite["test_mse_se"]
                      if finite["test_mse_se"] > 0 else float("inf"))}


def _limit_sentence(numbers: dict, best: int, single: dict) -> str:
    z = numbers["as_trained_vs_limit"]
    fin, cen = numbers["finite"][str(best)], numbers["finite_centered"][str(best)]

    def verdict(value):
        return "within" if abs(value) <= 3 else "outside"

    return (f"Networks as trained converge to one random network of the infinite-width ensemble, not to its mean: "
            f"at width {best} their accuracy {fin['test_accuracy']:.3f} ± {fin['test_accuracy_se']:.3f} against that "
            f"limit's {single['accuracy']:.3f} ± {single['accuracy_se']:.3f} ({verdict(z['accuracy_z'])} 3 standard "
            f"errors, z = {z['accuracy_z']:.1f}) and their test MSE {fin['test_mse']:.4f} ± {fin['test_mse_se']:.4f} "
            f"against its exact {single['mse']:.4f} ({verdict(z['mse_z'])} 3 standard errors, z = {z['mse_z']:.1f}); "
            f"centered networks (f - f0) reach {cen['test_accuracy']:.3f}, near the NTK mean's.")


def local_slopes(widths, values) -> list[float]:
    """Log-log slopes between consecutive widths: d log(value) / d log(width)."""
    return [math.log(values[i + 1] / values[i]) / math.log(widths[i + 1] / widths[i]) for i in range(len(widths) - 1)]


def _slope_sentence(numbers: dict, widths, dist_slope, flow_slope) -> str:
    """The distance-to-limit slope, what the local slopes show, and whether the time discretization and the
    ridge of the flow prediction matter, all from the numbers."""
    dist = [numbers["finite_centered"][str(w)]["rms_to_ntk_t"] for w in widths]
    local = local_slopes(widths, dist) if len(widths) > 1 else []
    errors = numbers["monte_carlo"]["ntk_error"]
    numbers["centered_rms_to_ntk_local_slopes"] = local
    reach = abs(dist_slope[0] + 0.5) <= max(3 * dist_slope[1], 0.05)
    text = (f"The centered networks' RMS distance to the NTK mean after the same gradient-descent steps falls with "
            f"log-log slope {dist_slope[0]:.2f} ± {dist_slope[1]:.2f} over widths {widths[0]}-{widths[-1]} "
            f"({'consistent with' if reach else 'shallower than'} the theory's -1/2)")
    if len(local) > 1:
        steeper = all(b <= a + 0.05 for a, b in zip(local, local[1:])) and local[-1] < local[0]
        text += (f"; between consecutive widths the slope is {', '.join(f'{v:.2f}' for v in local)}, "
                 + ("steepening towards -1/2 as one network's NTK error falls from "
                    f"{errors[0]:.2f} to {errors[-1]:.2f} (relative): the distance is linear in the kernel's error, "
                    "with the theory's slope, only once that error is small" if steeper else
                    "without a trend towards -1/2 at these widths"))
    same = abs(flow_slope[0] - dist_slope[0]) <= 0.05
    text += (f". Against the gradient-flow prediction at t = lr x steps with the diagonal regularization the slope is "
             f"{flow_slope[0]:.2f}: {'the same, so neither the discrete steps nor the ridge explain it' if same else 'different, so the discrete steps and the ridge matter here'}.")
    return text


def _figures(p, per_width, kernel_rows, data, errs, slopes, t_train, lr, single):
    plt = pyplot()
    widths = list(p["widths"])
    figs = {}
    for key, label, metric in (("acc", "test accuracy", accuracy), ("mse", "test MSE", mse)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for centered, marker in ((False, "o"), (True, "s")):
            means = [mean_and_stderr(per_width[(w, centered)][key]) for w in widths]
            label_c = "finite, centered f - f0" if centered else "finite networks"
            ax.errorbar(widths, [m for m, _ in means], yerr=[s for _, s in means], marker=marker, capsize=3,
                        label=f"{label_c} (mean ± s.e.)")
        for (name, pred), style in zip(kernel_rows, ("--", ":", "-.")):
            value = metric(pred, data.labels_test if key == "acc" else data.y_test)
            label_k = name + (": limit of the centered networks" if "steps" in name else "")
            ax.axhline(value, linestyle=style, color="k" if "NNGP" in name else "C1" if "steps" in name else "C3",
                       label=label_k)
        limit = single["accuracy"] if key == "acc" else single["mse"]
        ax.axhline(limit, color="C0", lw=2, alpha=0.6, label="one network of the NTK ensemble: limit of the networks "
                                                            "as trained")
        if key == "acc":
            ax.axhspan(limit - 2 * single["accuracy_se"], limit + 2 * single["accuracy_se"], color="C0", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs width ({data.name}): each curve beside its own limit")
        ax.legend(fontsize=7)
        figs[f"{key}_vs_width"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in (("nngp", "o"), ("ntk", "s")):
        ax.loglog(widths, errs[name], marker=marker, label=f"{name.upper()} (slope {slopes[name][0]:.2f})")
    ref = errs["nngp"][0] * (widths[0] / torch.tensor(widths, dtype=torch.float64)) ** 0.5
    ax.loglog(widths, ref.tolist(), "k--", label="width^-1/2")
    ax.set_xlabel("width")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title("Monte Carlo kernel error vs width")
    ax.legend(fontsize=8)
    figs["mc_error_vs_width"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, w in enumerate(widths):
        steps, loss = per_width[(w, False)]["curve"][0]
        ax.semilogy([s * lr for s in steps], loss, color=f"C{i}", label=f"width {w}")
    ax.set_xlabel("training time t = lr x steps")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss (first seed)")
    ax.legend(fontsize=8)
    figs["training_loss"] = fig
    return figs


EXPERIMENT = Experiment(
    name="demo",
    description="Finite ReLU networks (widths 64-4096) vs NNGP and NTK predictions on digits, and Monte Carlo kernel error vs width",
    params={
        **data_params(n_train=1000, n_test=797, quick_train=300, quick_test=300,
                      what="classification data set (see `infinet data`)"),
        **network_params(depth=1, w_std=1.5, b_std=0.05),
        "widths": Param((64, 256, 1024, 4096), "hidden widths of the finite networks", quick=(32, 128, 512)),
        **training_params(steps=500, quick_steps=200, seeds=3, quick_seeds=2),
        "diag_reg": Param(1e-4, "diagonal regularization relative to the mean kernel diagonal (NNGP, t = inf)"),
        "limit_samples": Param(4000, "draws of the infinite-width ensemble for one network's expected accuracy",
                               minimum=2),
        "mc_points": Param(50, "inputs for the Monte Carlo kernel error", quick=30),
        "float64": Param(False, "train the finite networks in float64 (kernels are always float64)"),
        "mc_samples": Param(8, "random networks per width for the Monte Carlo kernels (>= 2: standard errors)",
                            quick=4, minimum=2),
    },
    run=run,
    details=__doc__,
)
