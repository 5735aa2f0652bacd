"""Vanishing and exploding gradients through depth (Schoenholz et al. 2017, sec. 4).

The squared norm of the gradient with respect to layer l's pre-activations changes by chi_1 per
layer, so it vanishes geometrically in the ordered phase (chi_1 < 1), explodes in the chaotic phase
(chi_1 > 1) and is preserved at the edge of chaos. Wide random tanh networks at an ordered, a
critical and a chaotic (w_std^2, b_std^2): measured ||dL/dh^l||^2 (mean and standard error over
networks) against chi_1^(L - l), and the fitted per-layer rate against log chi_1.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from ...core import stats
from ...theory import meanfield as mf
from ..report import Result, Table
from . import Experiment, Param
from ._common import pyplot


def run(p: dict, seed: int, progress: bool) -> Result:
    b = p["b_var"]
    w_crit = mf.critical_w_std(p["activation"], b_std=math.sqrt(b)) ** 2  # experiments grid variances
    if not math.isfinite(w_crit):
        raise ValueError(f"{p['activation']} has no edge of chaos at b_std^2 = {b}; choose another b_var")
    points = {"ordered": p["ordered_factor"] * w_crit, "critical": w_crit, "chaotic": p["chaotic_factor"] * w_crit}
    depth = p["depth"]
    table = Table(["phase", "w_std^2", "chi_1", "theory log-rate per layer", "measured log-rate", "s.e."],
                  caption=f"{p['activation']}, b_std^2 = {b}, depth {depth}, width {p['width']}, {p['networks']} networks; "
                          "log-rate: slope of log ||dL/dh^l||^2 against l")
    numbers: dict = {"critical_w_var": w_crit, "phases": {}}
    for name, w in tqdm(points.items(), desc="phases", disable=not progress, leave=False):
        r = mf.analyze(p["activation"], w_std=math.sqrt(w), b_std=math.sqrt(b))
        sim = mf.simulate(p["activation"], r.q_star, 0.5, w_std=math.sqrt(w), b_std=math.sqrt(b), depth=depth,
                          width=p["width"], n_networks=p["networks"], seed=seed)
        layers = np.arange(p["skip"], depth)
        logs = np.log(sim["grad_norm2"][layers])
        slope, slope_se = stats.slope(layers, logs)
        theory = -math.log(r.chi_1)  # the norm grows by 1/chi_1 going from layer l + 1 down to l: slope in l is -log chi_1
        numbers["phases"][name] = {"w_var": w, "chi_1": r.chi_1, "theory_slope": theory, "measured_slope": float(slope),
                                   "measured_slope_se": slope_se,
                                   "grad_norm2": sim["grad_norm2"].tolist(), "grad_norm2_se": sim["grad_norm2_se"].tolist(),
                                   "predicted": (sim["grad_norm2"][-1] * mf.gradient_growth(p["activation"], w_std=math.sqrt(w), b_std=math.sqrt(b), depth=depth)).tolist()}
        table.add(name, w, r.chi_1, theory, slope, slope_se)
    ph = numbers["phases"]
    def back(name):  # the factor per layer going back toward the input, and over all layers
        v = ph[name]
        return math.exp(-v["measured_slope"]), math.exp(-depth * v["measured_slope"])

    summary = (f"Through {depth} layers of {p['activation']} (b_std^2 = {b}), each layer back toward the input multiplies "
               f"the squared gradient norm by {back('ordered')[0]:.4f} in the ordered phase (theory chi_1 = "
               f"{ph['ordered']['chi_1']:.4f}: vanishing, a factor {back('ordered')[1]:.2g} over all layers), by "
               f"{back('critical')[0]:.4f} at the edge of chaos (theory 1; {back('critical')[1]:.2g} overall) and by "
               f"{back('chaotic')[0]:.4f} in the chaotic phase (theory {ph['chaotic']['chi_1']:.4f}: exploding, "
               f"{back('chaotic')[1]:.2g} overall).")
    return Result(title="Vanishing and exploding gradients", summary=summary, numbers=numbers, tables={"gradients": table},
                  figures=_figures(numbers, depth))


def _figures(numbers, depth):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layers = np.arange(depth + 1)
    for i, (name, v) in enumerate(numbers["phases"].items()):
        ax.errorbar(layers, v["grad_norm2"], yerr=v["grad_norm2_se"], fmt="o", ms=3, color=f"C{i}",
                    label=f"{name} (chi_1 = {v['chi_1']:.3f}) random networks")
        ax.plot(layers, v["predicted"], "-", color=f"C{i}", label=f"{name} theory chi_1^(L-l)")
    ax.set_yscale("log")
    ax.set_xlabel("layer l")
    ax.set_ylabel("||dL/dh^l||^2")
    ax.set_title("Gradient norms through depth")
    ax.legend(fontsize=7)
    return {"gradient_norms": fig}


EXPERIMENT = Experiment(
    name="gradients",
    description="Vanishing and exploding gradients through depth in each phase vs mean-field theory",
    params={
        "activation": Param("tanh", "activation"),
        "b_var": Param(0.05, "bias variance b_std^2"),
        "ordered_factor": Param(0.6, "ordered point: this times the critical w_std^2"),
        "chaotic_factor": Param(2.0, "chaotic point: this times the critical w_std^2"),
        "depth": Param(100, "layers", quick=50),
        "width": Param(1000, "width", quick=500),
        "networks": Param(8, "random networks", quick=4),
        "skip": Param(5, "first layers left out of the slope fit (transient)"),
    },
    run=run,
    details=__doc__,
)
