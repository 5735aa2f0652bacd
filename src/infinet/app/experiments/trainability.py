"""Which deep networks can be trained: the depth scale xi_c bounds it (Schoenholz et al. 2017, fig. 5).

Fully-connected tanh networks with b_std^2 = 0.05 (weights N(0, w_std^2 / n), the mean-field
initialization) are trained on a real data set for a fixed budget of Adam steps on the cross-entropy,
over a grid of depth x w_std^2. Schoenholz et al. found networks trainable when depth < about
6 xi_c: the region hugs the edge of chaos, where xi_c diverges. The report overlays 6 xi_c and the
multiple k of xi_c that best separates trainable from untrainable cells here (fitted). The default
grid runs in a few minutes on a laptop CPU; ``full=true`` runs the paper-sized grid on MNIST.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import datasets
from ...theory import meanfield as mf
from ...engine.layers import Tanh
from ..report import Result, Table
from ...finite.training import train_classifier
from . import Experiment, Param
from ._common import derived_seed, fully_connected, pyplot


def architecture(*, depth: int, width: int, n_out: int, w_var: float, b_var: float):
    """Schoenholz et al.'s networks: tanh, 'standard' parameterization, given w_std^2 and b_std^2."""
    return fully_connected(width=width, depth=depth, n_out=n_out, w_std=math.sqrt(w_var), b_std=math.sqrt(b_var),
                           activation=Tanh, parameterization="standard")


def fit_multiple(depths, w_vars, trainable: np.ndarray, xi: np.ndarray) -> tuple[float, float]:
    """The k for which 'depth <= k xi_c(w_var)' agrees best with the trainable cells, and that agreement."""
    best = (math.nan, -1.0)
    for k in np.exp(np.linspace(math.log(0.5), math.log(50.0), 400)):
        predicted = np.array([[d <= k * x for x in xi] for d in depths])
        agreement = float((predicted == trainable).mean())
        if agreement > best[1]:
            best = (float(k), agreement)
    return best


#: the full grid (``--param full=true``): hours on a 2-core machine, minutes on a GPU
FULL = {"dataset": "mnist5k", "n_train": 2000, "depths": (4, 8, 16, 32, 64, 128, 256),
        "w_vars": tuple(np.round(np.linspace(0.5, 4.0, 15), 3).tolist()), "width": 256, "steps": 800}


def run(p: dict, seed: int, progress: bool) -> Result:
    if p["full"]:
        p = {**p, **FULL}
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=10, seed=seed).flat()
    x, labels = data.x_train.float(), data.labels_train
    depths, w_vars, b_var = list(p["depths"]), list(p["w_vars"]), p["b_var"]
    xi = np.array([mf.analyze("tanh", w_std=math.sqrt(w), b_std=math.sqrt(b_var)).xi_c for w in w_vars])
    acc = np.zeros((len(depths), len(w_vars)))
    cells = [(i, j) for i in range(len(depths)) for j in range(len(w_vars))]
    for i, j in tqdm(cells, desc="networks", disable=not progress, leave=False):
        net = architecture(depth=depths[i], width=p["width"], n_out=data.n_classes, w_var=w_vars[j], b_var=b_var)
        model = net.build(x.shape[1], seed=derived_seed(seed, i, j), dtype=torch.float32)
        acc[i, j] = train_classifier(model, x, labels, p["steps"], lr=p["lr"], batch_size=p["batch"],
                                     seed=derived_seed(seed, i, j, 1))
    trainable = acc >= p["threshold"]
    k, agreement = fit_multiple(depths, w_vars, trainable, xi)
    w_crit = mf.critical_w_std("tanh", b_std=math.sqrt(b_var)) ** 2
    table = Table(["depth"] + [f"w^2={w:.2f}" for w in w_vars],
                  caption=f"training accuracy after {p['steps']} Adam steps (tanh, width {p['width']}, b_std^2 {b_var}, "
                          f"{data.name}, {len(x)} examples; chance {1 / data.n_classes:.2f}); xi_c per column: "
                          + ", ".join(f"{v:.1f}" for v in xi))
    for i, d in enumerate(depths):
        table.add(d, *[float(a) for a in acc[i]])
    deepest = {f"{w:.3f}": max([d for i, d in enumerate(depths) if trainable[i, j]], default=0)
               for j, w in enumerate(w_vars)}
    best_col = int(np.argmax([max([d for i, d in enumerate(depths) if trainable[i, j]], default=0) for j in range(len(w_vars))]))
    numbers = {"depths": depths, "w_vars": w_vars, "xi_c": xi.tolist(), "train_accuracy": acc.tolist(),
               "threshold": p["threshold"], "fitted_multiple": k, "agreement": agreement, "critical_w_var": w_crit,
               "deepest_trainable": deepest}
    summary = (f"Networks train (accuracy >= {p['threshold']}) up to depth {max(deepest.values())}, reached at "
               f"w_std^2 = {w_vars[best_col]:.2f}, {'next to' if abs(w_vars[best_col] - w_crit) <= 0.5 else 'away from'} "
               f"the edge of chaos w_std^2 = {w_crit:.3f} (b_std^2 = {b_var}). The trainable region is best described "
               f"by depth <= {k:.1f} xi_c (agreeing on {agreement:.0%} of the {acc.size} cells; Schoenholz et al. "
               f"report about 6 xi_c).")
    return Result(title="Trainability is bounded by the depth scale xi_c", summary=summary, numbers=numbers,
                  tables={"train_accuracy": table}, figures=_figures(depths, w_vars, acc, xi, k, w_crit))


def _figures(depths, w_vars, acc, xi, k, w_crit):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    mesh = ax.pcolormesh(w_vars, depths, acc, shading="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(mesh, ax=ax, label="training accuracy")
    grid = np.linspace(min(w_vars), max(w_vars), 60)
    xi_fine = np.array([mf.analyze("tanh", w_std=math.sqrt(w), b_std=math.sqrt(0.05)).xi_c for w in grid])
    ax.plot(grid, 6 * xi_fine, "w--", label="6 xi_c (Schoenholz et al.)")
    ax.plot(grid, k * xi_fine, "r-", label=f"{k:.1f} xi_c (fitted)")
    ax.axvline(w_crit, color="w", linestyle=":", label="edge of chaos")
    ax.set_yscale("log")
    ax.set_ylim(min(depths) * 0.8, max(depths) * 1.25)
    ax.set_xlabel("w_std^2")
    ax.set_ylabel("depth")
    ax.set_title("Trainability of deep tanh networks")
    ax.legend(fontsize=8, loc="upper left")
    return {"trainability": fig}


EXPERIMENT = Experiment(
    name="trainability",
    description="Train deep tanh networks over depth x w_std^2 and overlay 6 xi_c; fit the multiple of xi_c",
    params={
        "full": Param(False, "run the full grid (MNIST, depths 4-256, 15 values of w_std^2, width 256, 800 steps)"),
        "dataset": Param("digits", "classification data set"),
        "n_train": Param(1000, "training examples", quick=500),
        "depths": Param((4, 8, 16, 32, 48, 64), "depths", quick=(4, 8, 16, 32)),
        "w_vars": Param((0.5, 0.9, 1.3, 1.6, 1.76, 2.0, 2.4, 2.9, 3.4, 4.0), "w_std^2 values",
                        quick=(0.5, 1.0, 1.76, 2.5, 4.0)),
        "b_var": Param(0.05, "bias variance b_std^2"),
        "width": Param(64, "width", quick=48),
        "steps": Param(400, "Adam steps", quick=300),
        "lr": Param(1e-3, "Adam learning rate"),
        "batch": Param(128, "minibatch size"),
        "threshold": Param(0.5, "training accuracy counted as trainable"),
    },
    run=run,
    details=__doc__,
)
