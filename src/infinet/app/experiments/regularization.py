"""Regularization at infinite width, each on a real data set.

1. Weight decay vs ridge: a network trained with the penalty (lambda / 2) ||theta - theta_0||^2 and
   centered outputs (f - f0) converges, in the linear regime, to NTK kernel ridge regression
   Theta(x, X) (Theta + m lambda I)^-1 Y (m = y.numel()), i.e. ``diag_reg = m lambda / mean diag
   Theta``. Finite wide networks trained to convergence against the kernel prediction, per lambda.
2. Early stopping vs training time: the NTK prediction at time t (gradient flow, Lee et al. 2019)
   against a finite centered network recorded along training; finite t acts like a ridge ~ 1/t.
3. Dropout's kernel effect: Dropout(rate) before the readout multiplies each unit's self-covariance
   by 1 / (1 - rate) and leaves distinct inputs' covariances alone, so its NNGP is the plain NNGP
   plus a diagonal term: the posterior mean equals ridge regression with that diagonal (checked).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...inference.predict import gp_inference, gradient_descent_mse, max_learning_rate
from ..report import Result, Table
from ...finite.training import train_and_track
from . import Experiment, Param
from ._common import accuracy, data_params, derived_seed, mse, network_of, network_params, pyplot


def noisy_targets(data, fraction: float, seed: int) -> torch.Tensor:
    """The training targets with a ``fraction`` of the labels replaced by uniformly random classes (so
    that regularization has something to do); the test targets stay clean."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    labels = data.labels_train.clone()
    flip = torch.rand(len(labels), generator=gen) < fraction
    labels[flip] = torch.randint(0, data.n_classes, (int(flip.sum()),), generator=gen)
    patterns = {int(c): data.y_train[int((data.labels_train == c).nonzero()[0, 0])] for c in data.labels_train.unique()}
    return torch.stack([patterns[int(c)] for c in labels])


def centered_network(net, x, y, xt, lr, steps, seed, record_every, weight_decay=0.0):
    """Train a fresh network on targets y + f0(X) (so that f - f0 starts at 0); return the trace and f0."""
    model = net.build(x.shape[1], seed=seed, dtype=torch.float64)
    with torch.no_grad():
        f0, f0_test = model(x), model(xt)
    trace = train_and_track(model, x, y + f0, lr, steps, x_test=xt, record_every=record_every, weight_decay=weight_decay)
    return trace, f0_test


def weight_decay_study(p, data, y, net, k, kt, lr, seed, progress) -> tuple[Table, list]:
    """Centered networks trained with weight decay toward the initialization against NTK ridge regression."""
    x, xt, yt, m = data.x_train, data.x_test, data.y_test, y.numel()
    mean_diag = float(k.ntk.diagonal().mean())
    ridge = Table(["diag_reg", "lambda (weight decay)", "steps", "NTK ridge test MSE", "network test MSE",
                   "RMS network - kernel"],
                  caption=f"centered networks of width {p['width']} trained with (lambda/2)||theta - theta_0||^2; "
                          f"lambda = diag_reg x mean diag Theta / m, m = {m}")
    rows = []
    for r in tqdm(p["ridges"], desc="weight decay", disable=not progress, leave=False):
        lam = r * mean_diag / m
        steps = min(p["max_steps"], math.ceil(p["convergence"] / (lr * lam)))
        kernel_pred = gradient_descent_mse(k.ntk, kt.ntk, y, diag_reg=r)
        trace, f0_test = centered_network(net(p["width"]), x, y, xt, lr, steps, derived_seed(seed, 1), steps,
                                          weight_decay=lam)
        f_net = trace.f_test[-1] - f0_test
        row = {"diag_reg": r, "lambda": lam, "steps": steps, "kernel_test_mse": mse(kernel_pred, yt),
               "network_test_mse": mse(f_net, yt), "rms_network_kernel": float((f_net - kernel_pred).pow(2).mean().sqrt())}
        rows.append(row)
        ridge.add(*row.values())

    return ridge, rows


def early_stopping_study(p, data, y, net, k, kt, lr, seed) -> dict:
    """A centered network's test error along training against the NTK prediction at the same times."""
    x, xt, yt = data.x_train, data.x_test, data.y_test
    steps = p["time_steps"]
    every = max(1, steps // p["records"])
    trace, f0_test = centered_network(net(p["width"]), x, y, xt, lr, steps, derived_seed(seed, 2), every)
    times = [lr * s for s in trace.steps]
    kernel_t = gradient_descent_mse(k.ntk, kt.ntk, y, times)
    kernel_mse = [mse(f, yt) for f in kernel_t]
    net_mse = [mse(f - f0_test, yt) for f in trace.f_test]
    ntk_inf = mse(gradient_descent_mse(k.ntk, kt.ntk, y), yt)
    best_k = min(range(len(times)), key=lambda i: kernel_mse[i])
    best_n = min(range(len(times)), key=lambda i: net_mse[i])
    return {"times": times, "kernel_test_mse": kernel_mse, "network_test_mse": net_mse,
            "kernel_best_time": times[best_k], "network_best_time": times[best_n],
            "ntk_t_inf_test_mse": ntk_inf}


def dropout_study(p, data, y, net, k, kt) -> tuple[Table, list]:
    """Dropout before the readout: its NNGP posterior mean against ridge regression with its diagonal."""
    x, xt, yt = data.x_train, data.x_test, data.y_test
    drop = Table(["dropout rate", "NNGP test MSE", "NNGP test accuracy", "max |dropout NNGP - ridge equivalent|"],
                 caption="Dropout(rate) before the readout: its NNGP posterior mean vs the plain NNGP with the "
                         "diagonal difference added as ridge")
    rows = []
    plain = k.nngp
    for rate in p["dropout_rates"]:
        kd = net(1, rate)
        k_drop, kt_drop = kd.kernel(x, get="nngp"), kd.kernel(xt, x, get="nngp")
        pred = gp_inference(k_drop.nngp, kt_drop.nngp, y, diag_reg=p["diag_reg"]).mean
        extra = torch.diag(k_drop.nngp.diagonal() - plain.diagonal())
        reg = p["diag_reg"] * float(k_drop.nngp.diagonal().mean())  # the same absolute noise as above
        equiv = gp_inference(plain + extra + reg * torch.eye(len(plain), dtype=plain.dtype), kt.nngp, y).mean
        row = {"rate": rate, "test_mse": mse(pred, yt), "test_accuracy": accuracy(pred, data.labels_test),
               "max_difference_to_ridge": float((pred - equiv).abs().max())}
        rows.append(row)
        drop.add(*row.values())

    return drop, rows


def summarize(p, data, numbers) -> str:
    """The report's summary, computed from the studies' numbers."""
    wd = numbers["weight_decay"]
    worst = max(r["rms_network_kernel"] / max(r["network_test_mse"] ** 0.5, 1e-300) for r in wd)
    best_ridge = min(wd, key=lambda r: r["kernel_test_mse"])
    es = numbers["early_stopping"]
    dr = numbers["dropout"]
    ntk_inf = es["ntk_t_inf_test_mse"]
    if min(es["kernel_test_mse"]) < ntk_inf:
        stopping = (f"Early stopping helps: the NTK test MSE is lowest at t = {es['kernel_best_time']:.3g} "
                    f"({min(es['kernel_test_mse']):.4f}, vs {ntk_inf:.4f} at t = inf)")
    else:
        stopping = (f"Early stopping does not help here: the NTK test MSE falls all the way to its t = inf value "
                    f"{ntk_inf:.4f}")
    summary = (f"On {data.name} with {p['label_noise']:.0%} of the training labels randomized: weight decay toward the initialization reproduces NTK ridge regression, the RMS gap "
               f"between the width-{p['width']} network and the kernel prediction being at most {worst:.1%} of the "
               f"network's RMS test error over diag_reg {p['ridges'][0]:g}-{p['ridges'][-1]:g} (best ridge "
               f"{best_ridge['diag_reg']:g}: test MSE {best_ridge['kernel_test_mse']:.4f}). {stopping}; the network's is lowest at "
               f"t = {es['network_best_time']:.3g} ({min(es['network_test_mse']):.4f}). Dropout before the readout changes the NNGP test MSE from "
               f"{dr[0]['test_mse']:.4f} (rate {dr[0]['rate']}) to {dr[-1]['test_mse']:.4f} (rate {dr[-1]['rate']}) and "
               f"equals ridge regression with its diagonal to {max(r['max_difference_to_ridge'] for r in dr):.1e}.")
    return summary


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=seed).flat()
    y = noisy_targets(data, p["label_noise"], derived_seed(seed, 3))
    n_out = y.shape[1]

    def net(width, dropout=0.0):
        return network_of(p, width=width, n_out=n_out, dropout=dropout)

    k, kt = net(1).kernel(data.x_train), net(1).kernel(data.x_test, data.x_train)
    lr = p["lr_fraction"] * max_learning_rate(k.ntk, n_out)
    numbers: dict = {"learning_rate": lr}
    ridge, numbers["weight_decay"] = weight_decay_study(p, data, y, net, k, kt, lr, seed, progress)
    numbers["early_stopping"] = early_stopping_study(p, data, y, net, k, kt, lr, seed)
    drop, numbers["dropout"] = dropout_study(p, data, y, net, k, kt)
    return Result(title="Regularization: weight decay, early stopping and dropout at infinite width",
                  summary=summarize(p, data, numbers), numbers=numbers, tables={"weight_decay": ridge, "dropout": drop},
                  figures=_figures(numbers, p))


def _figures(numbers, p):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    wd = numbers["weight_decay"]
    axes[0].loglog([r["diag_reg"] for r in wd], [r["kernel_test_mse"] for r in wd], "o-", label="NTK ridge")
    axes[0].loglog([r["diag_reg"] for r in wd], [r["network_test_mse"] for r in wd], "s--",
                   label=f"network, weight decay (width {p['width']})")
    axes[0].set_xlabel("diag_reg = m lambda / mean diag Theta")
    axes[0].set_ylabel("test MSE")
    axes[0].set_title("Weight decay vs ridge")
    es = numbers["early_stopping"]
    axes[1].semilogx(es["times"][1:], es["kernel_test_mse"][1:], label="NTK at time t")
    axes[1].semilogx(es["times"][1:], es["network_test_mse"][1:], "--", label="network (centered)")
    axes[1].axhline(es["ntk_t_inf_test_mse"], color="gray", linestyle=":", label="NTK t = inf")
    axes[1].set_xlabel("training time t")
    axes[1].set_title("Early stopping")
    dr = numbers["dropout"]
    axes[2].plot([r["rate"] for r in dr], [r["test_mse"] for r in dr], "o-")
    axes[2].set_xlabel("dropout rate before the readout")
    axes[2].set_title("Dropout's NNGP (= ridge on the diagonal)")
    for ax in axes:
        ax.legend(fontsize=8) if ax.get_legend_handles_labels()[0] else None
    fig.tight_layout()
    return {"regularization": fig}


EXPERIMENT = Experiment(
    name="regularization",
    description="Weight decay vs ridge, early stopping vs training time, and dropout's kernel effect",
    params={
        **data_params(n_train=100, n_test=300, quick_test=200, what="classification data set (one-hot targets, MSE)"),
        "label_noise": Param(0.3, "fraction of training labels replaced by random classes"),
        **network_params(depth=1, w_std=1.5, b_std=0.1),
        "width": Param(2048, "finite network width", quick=1024),
        "lr_fraction": Param(0.5, "learning rate as a fraction of the stable limit"),
        "ridges": Param((0.03, 0.1, 0.3, 1.0, 3.0), "ridge values (relative to the mean NTK diagonal)",
                        quick=(0.1, 0.3, 1.0, 3.0)),
        "convergence": Param(8.0, "steps x lr x lambda for training with weight decay (e-folds of the slowest mode)"),
        "max_steps": Param(4000, "cap on those steps", quick=2000),
        "time_steps": Param(3000, "steps of the early-stopping run", quick=1500),
        "records": Param(30, "recorded times of the early-stopping run"),
        "dropout_rates": Param((0.0, 0.1, 0.3, 0.5, 0.7), "dropout rates"),
        "diag_reg": Param(1e-4, "NNGP regularization for the dropout study"),
    },
    run=run,
    details=__doc__,
)
