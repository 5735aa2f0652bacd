"""Activations at infinite width: their kernels as functions of the input angle, and accuracy.

For ReLU, tanh, logistic sigmoid, erf and GELU: the one-layer maps E[phi(u) phi(v)] and Kdot =
E[phi'(u) phi'(v)] for unit-variance inputs at angle theta (from :mod:`infinet.gaussian`), the NNGP
and NTK of a deeper network as functions of the angle between two inputs of equal norm (normalized
by their value at theta = 0: how fast the kernel decorrelates distinct inputs), and on a real data
set the test accuracy of the NNGP, the NTK (t = inf) and finite networks of each activation trained by
full-batch gradient descent, centered (f - f0, whose infinite-width limit is the NTK mean prediction;
mean and standard error over seeds).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...engine.layers import Erf, Gelu, Relu, Sigmoid, Tanh
from ...inference.predict import gp_inference, gradient_descent_mse, max_learning_rate
from ..report import Result, Table
from ...finite.training import train_gradient_descent
from . import Experiment, Param
from ._common import accuracy, data_params, derived_seed, mean_and_stderr, network_of, network_params, pyplot, training_params

ACTIVATIONS = {"ReLU": Relu, "tanh": Tanh, "sigmoid": Sigmoid, "erf": Erf, "GELU": Gelu}


def angle_kernels(p: dict) -> dict:
    """Per activation: one-layer E[phi phi] and Kdot at unit variance, and the depth-``depth`` NNGP
    and NTK between x(0) and x(theta), all normalized by their value at theta = 0."""
    theta = torch.linspace(0.0, math.pi, p["angles"], dtype=torch.float64)
    circle = math.sqrt(2.0) * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)  # x . x / d = 1
    ones = torch.ones_like(theta)
    out = {"theta": theta}
    for name, cls in ACTIVATIONS.items():
        nngp1, kdot1 = cls().expectations(torch.cos(theta), ones, ones)
        k = network_of(p, width=1, n_out=1, activation=cls).kernel(circle[:1], circle)
        out[name] = {"nngp_1layer": nngp1 / nngp1[0], "kdot_1layer": kdot1 / kdot1[0],
                     "nngp_deep": k.nngp[0] / k.nngp[0, 0], "ntk_deep": k.ntk[0] / k.ntk[0, 0]}
    return out


def run(p: dict, seed: int, progress: bool) -> Result:
    curves = angle_kernels(p)
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=seed).flat()
    x, y, xt = data.x_train, data.y_train, data.x_test
    n_out = y.shape[1]
    table = Table(["activation", "NNGP accuracy", "NTK accuracy", "finite accuracy", "finite s.e.",
                   "NNGP correlation at 90 degrees", "NTK correlation at 90 degrees"],
                  caption=f"{data.name}: {len(x)} train / {len(xt)} test; depth {p['depth']}, w_std {p['w_std']}, b_std "
                          f"{p['b_std']}; finite width {p['width']}, centered (f - f0), {p['steps']} steps of gradient descent at "
                          f"{p['lr_fraction']} x the stable learning rate, {p['seeds']} seeds; correlations at the "
                          "kernel's depth between two inputs of equal norm at a right angle")
    numbers: dict = {}
    quarter = (p["angles"] - 1) // 2
    for name in tqdm(ACTIVATIONS, desc="activations", disable=not progress, leave=False):
        net = network_of(p, width=p["width"], n_out=n_out, activation=ACTIVATIONS[name])
        k, kt = net.kernel(x), net.kernel(xt, x)
        nngp_acc = accuracy(gp_inference(k.nngp, kt.nngp, y, diag_reg=p["diag_reg"]).mean, data.labels_test)
        ntk_acc = accuracy(gradient_descent_mse(k.ntk, kt.ntk, y, diag_reg=p["diag_reg"]), data.labels_test)
        lr = p["lr_fraction"] * max_learning_rate(k.ntk, n_out)
        finite = []
        for s in range(p["seeds"]):
            model = net.build(x.shape[1], seed=derived_seed(seed, s), dtype=torch.float32)
            with torch.no_grad():  # centered (f - f0): its infinite-width limit is the NTK mean prediction
                f0, f0_test = model(x.float()), model(xt.float())
            rec = train_gradient_descent(model, x.float(), y.float() + f0, lr, p["steps"], x_test=xt.float())
            finite.append(accuracy((rec.f_test[-1] - f0_test).double(), data.labels_test))
        acc, se = mean_and_stderr(finite)
        c = curves[name]
        numbers[name] = {"nngp_accuracy": nngp_acc, "ntk_accuracy": ntk_acc, "finite_accuracy": acc,
                         "finite_accuracy_se": se, "learning_rate": lr,
                         "nngp_correlation_90": float(c["nngp_deep"][quarter]),
                         "ntk_correlation_90": float(c["ntk_deep"][quarter])}
        table.add(name, nngp_acc, ntk_acc, acc, se, numbers[name]["nngp_correlation_90"], numbers[name]["ntk_correlation_90"])
    best = max(ACTIVATIONS, key=lambda a: numbers[a]["nngp_accuracy"])
    gaps = {a: numbers[a]["ntk_accuracy"] - numbers[a]["finite_accuracy"] for a in ACTIVATIONS}
    widest = max(gaps, key=lambda a: abs(gaps[a]))
    flattest = max(ACTIVATIONS, key=lambda a: numbers[a]["nngp_correlation_90"])
    summary = (f"On {data.name}, the best NNGP accuracy is {best}'s ({numbers[best]['nngp_accuracy']:.3f}); NTK minus "
               f"finite-width accuracy ranges over " + ", ".join(f"{a} {g:+.3f}" for a, g in gaps.items())
               + f" (largest gap: {widest}). At depth {p['depth']}, {flattest}'s NNGP keeps the highest correlation "
               f"between orthogonal inputs ({numbers[flattest]['nngp_correlation_90']:.3f}), i.e. it distinguishes "
               f"inputs least.")
    return Result(title="Activations: kernels vs input angle and accuracy", summary=summary, numbers=numbers,
                  tables={"activations": table}, figures=_figures(curves, numbers, p))


def _figures(curves, numbers, p):
    plt = pyplot()
    degrees = curves["theta"] * 180.0 / math.pi
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (("nngp_1layer", "E[phi(u) phi(v)] / E[phi(u)^2], one layer"), ("kdot_1layer", "Kdot / Kdot(0), one layer"),
              ("nngp_deep", f"NNGP at depth {p['depth']} (normalized)"), ("ntk_deep", f"NTK at depth {p['depth']} (normalized)"))
    for ax, (key, title) in zip(axes.flat, panels):
        for name in ACTIVATIONS:
            ax.plot(degrees, curves[name][key], label=name)
        ax.set_xlabel("angle between inputs (degrees)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(7, 4))
    names = list(ACTIVATIONS)
    pos = torch.arange(len(names), dtype=torch.float64)
    ax.bar(pos - 0.25, [numbers[a]["nngp_accuracy"] for a in names], 0.25, label="NNGP")
    ax.bar(pos, [numbers[a]["ntk_accuracy"] for a in names], 0.25, label="NTK (t = inf)")
    ax.bar(pos + 0.25, [numbers[a]["finite_accuracy"] for a in names], 0.25,
           yerr=[numbers[a]["finite_accuracy_se"] for a in names], label=f"finite, width {p['width']}")
    ax.set_xticks(pos.tolist(), names)
    low = min(min(v["nngp_accuracy"], v["ntk_accuracy"], v["finite_accuracy"]) for v in numbers.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Finite vs infinite width by activation")
    return {"kernels_vs_angle": fig, "accuracy": fig2}


EXPERIMENT = Experiment(
    name="activations",
    description="Kernels vs input angle (NNGP, Kdot, NTK) and finite-vs-infinite accuracy for ReLU, tanh, sigmoid, erf, GELU",
    params={
        **data_params(n_train=500, n_test=500, quick_train=300, quick_test=300),
        **network_params(depth=3, w_std=1.5, b_std=0.1, blocks="Dense > activation"),
        "width": Param(512, "width of the finite networks", quick=256),
        **training_params(steps=400, quick_steps=200, seeds=3, quick_seeds=2),
        "diag_reg": Param(1e-4, "kernel regression regularization relative to the mean diagonal"),
        "angles": Param(181, "angles between 0 and 180 degrees (odd: includes 90)"),
    },
    run=run,
    details=__doc__,
)
