"""Graph neural networks on Zachary's karate club: node-classification kernels against trained finite GCNs.

The data set is Zachary's karate club (Zachary 1977; shipped with networkx, nothing is downloaded): 34
members, 78 friendships, and which of the two clubs each member joined after the split. A few members per
club are labelled; the task is to predict the club of every other member. Node features are one-hot
identities (the graph has none), so without the graph no model can generalize: the fully-connected
network's kernel is the identity between different nodes.

The graph network is a graph convolutional network (Kipf and Welling 2017): two rounds of message passing
with the normalized adjacency D^(-1/2) (A + I) D^(-1/2), each after a Dense layer and before a ReLU, and a
Dense readout at every node. Its infinite-width kernels between nodes (the graph neural tangent kernel of
Du et al. 2019, read out at each node) give the NNGP posterior mean and the NTK gradient-descent
prediction (at the finite networks' training time and at t = inf); finite networks of the same
description are trained by full-batch gradient descent at growing widths. Accuracies are means over random
choices of the labelled members, with standard errors.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import datasets
from ...engine.layers import Aggregate, Dense, NodeModel, Relu, node_kernel, normalized_adjacency, serial
from ...inference.predict import gp_inference, gradient_descent_mse, max_learning_rate
from ..report import Result, Table
from ...finite.training import train_gradient_descent
from . import Experiment, Param
from ._common import accuracy, derived_seed, loglog_slope, mean_and_stderr, pyplot


def gcn(width: int, n_out: int, w_std: float, b_std: float, graph: bool = True):
    """Dense > [Aggregate] > Relu > Dense > [Aggregate] > Relu > Dense(n_out), on node features N x C x V."""
    def hidden():
        return [Dense(width, w_std=w_std, b_std=b_std)] + ([Aggregate()] if graph else []) + [Relu()]

    return serial(*hidden(), *hidden(), Dense(n_out, w_std=1.0, b_std=b_std))


def labelled_split(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random members of each class for training, every other member for testing."""
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == c), per_class, replace=False)
                            for c in range(int(labels.max()) + 1)])
    test = np.setdiff1d(np.arange(len(labels)), train)
    return torch.as_tensor(np.sort(train)), torch.as_tensor(test)


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.karate_club()
    n_out = len(data.classes)
    targets = torch.nn.functional.one_hot(data.labels, n_out).double() - 1.0 / n_out
    pattern = normalized_adjacency(data.adjacency).unsqueeze(0)
    timings: dict = {}
    t0 = time.perf_counter()
    kernels = {"GCN": node_kernel(gcn(1, n_out, p["w_std"], p["b_std"]), data.x, pattern),
               "MLP (no graph)": node_kernel(gcn(1, n_out, p["w_std"], p["b_std"], graph=False), data.x, pattern)}
    timings["node kernels"] = time.perf_counter() - t0
    table = Table(["labelled per club", "model", "width", "test accuracy", "accuracy s.e."],
                  caption=f"{data.description}: club of the unlabelled members, mean over {p['splits']} random "
                          f"choices of the labelled ones; finite GCNs: {p['steps']} steps of full-batch gradient "
                          f"descent at {p['lr_fraction']} x the largest stable learning rate of the NTK")
    numbers: dict = {"data": data.description, "n_nodes": data.n_nodes}
    curves: dict = {}
    distances: dict = {}
    t0 = time.perf_counter()
    for per_class in p["labelled"]:
        scores: dict = {}
        for split in tqdm(range(p["splits"]), desc=f"{per_class} labelled per club", disable=not progress):
            train, test = labelled_split(data.labels, per_class, derived_seed(seed, per_class, split))
            y, labels_test = targets[train], data.labels[test]

            def score(name, f):
                scores.setdefault(name, []).append(accuracy(f, labels_test))

            ntk = kernels["GCN"].ntk
            lr = p["lr_fraction"] * max_learning_rate(ntk[train][:, train], n_out)
            t_train = lr * p["steps"]
            for kname, k in kernels.items():
                nngp = gp_inference(k.nngp[train][:, train], k.nngp[test][:, train], y, diag_reg=p["diag_reg"]).mean
                score(f"{kname} NNGP", nngp)
                f_t, f_inf = gradient_descent_mse(k.ntk[train][:, train], k.ntk[test][:, train], y,
                                                  [t_train, float("inf")], diag_reg=p["diag_reg"])
                score(f"{kname} NTK t=inf", f_inf)
                if kname == "GCN":
                    score("GCN NTK t=train", f_t)
            for width in p["widths"]:
                model = gcn(width, n_out, p["w_std"], p["b_std"]).build(tuple(data.x.shape[1:]),
                                                                        seed=derived_seed(seed, per_class, split, width))
                nodes = NodeModel(model, data.x.float(), pattern.float())
                with torch.no_grad():
                    f0 = nodes(torch.arange(data.n_nodes)).double()
                rec = train_gradient_descent(nodes, train, y.float(), lr, p["steps"], x_test=test)
                score(f"GCN width {width}", rec.f_test[-1].double())
                # the infinite-width prediction from this network's own initial outputs (Lee et al. 2019, eq. 9)
                change = gradient_descent_mse(ntk[train][:, train], ntk[test][:, train], y - f0[train], t_train)
                distance = float((rec.f_test[-1].double() - f0[test] - change).norm() / change.norm())
                distances.setdefault(per_class, {}).setdefault(width, []).append(distance)
        entry = {}
        for name, values in scores.items():
            mean, se = mean_and_stderr(values)
            entry[name] = {"test_accuracy": mean, "test_accuracy_se": se}
            width = name.split()[-1] if name.startswith("GCN width") else "inf"
            model = "finite GCN" if name.startswith("GCN width") else name
            table.add(per_class, model, width, mean, se)
        numbers[str(per_class)] = entry
        curves[per_class] = entry
    timings["predictions and training"] = time.perf_counter() - t0
    gap = Table(["labelled per club", "width", "relative distance", "s.e."],
                caption="Trained finite GCN vs the infinite-width prediction from its own initial outputs f0 at the "
                        "same training time, f0 + Theta Theta^-1 (I - exp(-eta Theta t / m)) (y - f0) with the exact NTK "
                        "(Lee et al. 2019, eq. 9): ||f_width - prediction|| / ||prediction - f0|| over the unlabelled "
                        "members' outputs, mean over splits")
    numbers["distance_to_ntk"] = {}
    for per_class, by_width in distances.items():
        numbers["distance_to_ntk"][str(per_class)] = {}
        for width, values in by_width.items():
            mean, se = mean_and_stderr(values)
            gap.add(per_class, width, mean, se)
            numbers["distance_to_ntk"][str(per_class)][str(width)] = {"mean": mean, "se": se}
        ws = sorted(by_width)
        numbers["distance_to_ntk"][str(per_class)]["slope"] = loglog_slope(ws, [np.mean(by_width[w]) for w in ws])
    summary = _summary(p, numbers)
    return Result(title="Graph networks on Zachary's karate club: infinite vs finite width", summary=summary,
                  numbers=numbers, timings=timings, tables={"accuracy": table, "distance_to_ntk": gap},
                  figures=_figures(p, curves))


def _summary(p, numbers) -> str:
    parts = []
    widest = max(p["widths"])
    for per_class in p["labelled"]:
        e = numbers[str(per_class)]

        def a(name):
            return f"{e[name]['test_accuracy']:.3f} ± {e[name]['test_accuracy_se']:.3f}"

        parts.append(f"with {per_class} labelled per club, GCN NNGP {a('GCN NNGP')}, GCN NTK at t=inf "
                     f"{a('GCN NTK t=inf')}, at the networks' training time {a('GCN NTK t=train')}, finite width "
                     f"{widest} {a(f'GCN width {widest}')}; without the graph (MLP NNGP) {a('MLP (no graph) NNGP')}")
    gaps = [abs(numbers[str(c)][f"GCN width {widest}"]["test_accuracy"]
                - numbers[str(c)]["GCN NTK t=train"]["test_accuracy"]) for c in p["labelled"]]
    widths = sorted(p["widths"])
    slopes = [numbers["distance_to_ntk"][str(c)]["slope"] for c in p["labelled"]]
    slope_text = ", ".join(f"{s:.2f} ± {se:.2f}" for s, se in slopes)
    return ("Test accuracy on the unlabelled karate-club members: " + "; ".join(parts) + ". "
            f"From width {widths[0]} to {widths[-1]} the trained networks' outputs approach the infinite-width "
            f"prediction from their own initial outputs with log-log slopes {slope_text} of the relative distance "
            f"against width (per number labelled; theory: -1/2). "
            f"The widest finite GCN and the NTK prediction at the same training time differ by at most "
            f"{max(gaps):.3f} in accuracy; without the graph the kernels cannot tell unlabelled members apart "
            "(one-hot features), so the graph carries all the information.")


def _figures(p, curves):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(p["labelled"])
    names = ["GCN NNGP", "GCN NTK t=inf", "GCN NTK t=train"] + [f"GCN width {w}" for w in p["widths"]] + \
        ["MLP (no graph) NNGP"]
    for name in names:
        means = [curves[c][name]["test_accuracy"] for c in xs]
        ses = [curves[c][name]["test_accuracy_se"] for c in xs]
        style = "--" if "NT" in name or "NNGP" in name else "-"
        ax.errorbar(xs, means, yerr=ses, marker="o", capsize=3, linestyle=style, label=name)
    ax.set_xlabel("labelled members per club")
    ax.set_ylabel("test accuracy")
    ax.set_title("Karate club: infinite-width kernels vs trained GCNs", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return {"accuracy_vs_labelled": fig}


EXPERIMENT = Experiment(
    name="graphs",
    description="Graph convolutional networks on Zachary's karate club: node-level NNGP/NTK vs trained finite GCNs",
    params={
        "labelled": Param((1, 2, 4, 8), "labelled members per club", quick=(1, 4)),
        "splits": Param(20, "random choices of the labelled members", quick=4, minimum=2),
        "widths": Param((64, 256, 1024), "hidden widths of the finite GCNs", quick=(64, 256)),
        "steps": Param(1000, "gradient-descent steps of the finite GCNs", quick=300),
        "lr_fraction": Param(0.1, "learning rate as a fraction of the NTK's largest stable one (small: at 0.5 the "
                                  "narrow networks leave the linear regime early)"),
        "w_std": Param(1.4, "weight standard deviation of the hidden layers"),
        "b_std": Param(0.1, "bias standard deviation"),
        "diag_reg": Param(1e-4, "diagonal regularizer of the kernel solves (relative to the mean diagonal)"),
    },
    run=run,
    details=__doc__,
)
