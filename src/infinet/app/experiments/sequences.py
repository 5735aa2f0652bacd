"""Sequence models on MNIST-1D (Greydanus 2020): exact kernels against trained finite networks.

Five architectures read the 40-step signals (N x 1 x 40): an Elman recurrent network read out at the
last step and one pooled over time (Alemohammad et al. 2021), a 1-D CNN with global average pooling, a
self-attention network in neural-tangents' semantics (a convolutional embedding, GlobalSelfAttention with
positional embeddings, global pooling; Hron et al. 2020) and a transformer block as people build it (tokens
from a stride-2 convolution, a residual block of standard multi-head softmax attention with 1/sqrt(d_head)
logits and independent query, key and value weights, :class:`~infinet.ScaledDotProductAttention`, whose kernel
is sampled per pair of sequences, then global pooling), on a subset of the sequences. For each: the NNGP
posterior mean and the NTK gradient-descent prediction (at the finite networks' training time and at t = inf),
and finite networks of the same descriptions trained by full-batch gradient descent at growing widths, with
standard errors over seeds. Then the recurrent network's
empirical kernel error against width (one random network vs the exact kernel), whose log-log slope
theory puts at -1/2. Last, gated recurrent networks (GRU and LSTM, read out at the last step) on the
signals averaged down to ``gated_length`` steps: their sampled NNGP and NTK (Yang 2019, 2020, "Tensor
Programs I, II"; the batch estimator of :mod:`infinet.engine.layers.gated_batch`, one draw over the training
and test sequences together), with the accuracy's standard error from the kernels' sampling error, against
the Monte Carlo NNGP of width-1024 networks and finite GRU and LSTM networks of the same descriptions
trained by gradient descent.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...engine.layers import (GRU, LSTM, Conv, Dense, FanInSum, FanOut, GlobalAvgPool, GlobalSelfAttention, Identity,
                              Recurrent, Relu, ScaledDotProductAttention, parallel, serial)
from ...finite.montecarlo import monte_carlo_kernel
from ...inference.predict import (gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate,
                                  noise_ridge, sampling_spread, single_network_metrics)
from ..report import Result, Table
from ...finite.training import max_stable_learning_rate, train_gradient_descent
from . import Experiment, Param
from ._common import accuracy, derived_seed, kernel_error_vs_width, mean_and_stderr, mse, pyplot

#: Greydanus 2020 (MNIST-1D README and paper, Table 1): test accuracy of trained models on 4,000 examples
PUBLISHED = {"logistic regression": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91}


def architectures(width: int, n_out: int, attention_samples: int = 256, attention_replicates: int = 8) -> dict:
    """The descriptions, each at hidden width ``width`` (the kernels do not depend on it). The recurrent
    networks use w_std = 1: their finite versions stay close to the limit (nearer the ReLU edge of chaos,
    w_std = sqrt(2), a width-32 network's tangent kernel can exceed the limit's a millionfold over 40 steps);
    read out at the last step they forget all but the last few steps, pooled over time they do not."""
    def rnn(return_sequence):
        return Recurrent(Relu(), width, w_std=1.0, u_std=1.0, b_std=0.1, return_sequence=return_sequence)

    readout = Dense(n_out, w_std=1.0, b_std=0.1)
    # the transformer: tokens from a stride-2 convolution (20 of them), a residual block of standard attention (its
    # output is independent of its Gaussian input: their sum is Gaussian, so the ReLU after it has its closed form),
    # global pooling (MNIST-1D's signals are shifted at random). Attention in the 'ntk' parameterization, so that the
    # kernel does not depend on the widths; heads of width 16 (one head for the kernel's width-1 description: the
    # limit takes both heads and head width to infinity)
    softmax = ScaledDotProductAttention(width, max(1, width // 16), w_std=1.0, b_std=0.1, w_out_std=1.0,
                                        parameterization="ntk", samples=attention_samples,
                                        replicates=attention_replicates)
    return {
        "RNN, last step": serial(rnn(False), readout),
        "RNN, mean over time": serial(rnn(True), GlobalAvgPool(), readout),
        "CNN + global pooling": serial(Conv(width, 5, w_std=1.4, b_std=0.1), Relu(), Conv(width, 5, w_std=1.4, b_std=0.1),
                                       Relu(), GlobalAvgPool(), readout),
        "attention": serial(Conv(width, 5, w_std=1.4, b_std=0.1), Relu(),
                            GlobalSelfAttention(width, width, width, 2, W_key_std=2.0, b_std=0.1, pos_emb_type="SUM"),
                            Relu(), GlobalAvgPool(), readout),
        "transformer": serial(Conv(width, 5, stride=2, w_std=1.4, b_std=0.1), FanOut(2), parallel(Identity(), softmax),
                              FanInSum(), Relu(), GlobalAvgPool(), readout),
    }


def architecture_study(p: dict, data, name: str, table: Table, seed: int, progress: bool, timings: dict):
    """One architecture of :func:`architectures`: its NNGP and NTK predictions and its finite networks trained
    at one learning rate stable for all of them; rows go into ``table``, seconds into ``timings``. Returns the
    numbers and the per-width accuracies and MSEs of the seeds."""
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    n_out = y.shape[1]
    t0 = time.perf_counter()
    options = dict(attention_samples=p["attention_samples"], attention_replicates=p["attention_replicates"])
    net = architectures(1, n_out, **options)[name]
    k_train, k_test = net.kernel(x), net.kernel(xt, x)
    timings[f"{name} kernels"] = time.perf_counter() - t0
    runs = [(w, s) for w in p["widths"] for s in range(p["seeds"])]
    models = {(w, s): architectures(w, n_out, **options)[name].build(tuple(x.shape[1:]),
                                                                     seed=derived_seed(seed, w, s, len(name)))
              for w, s in runs}
    # one learning rate per architecture, stable for the infinite network and for every finite one (finite
    # recurrent networks have much larger tangent kernels than their limit at small widths), so that all
    # share the training time t at which the NTK prediction is compared
    limits = {"infinite": max_learning_rate(k_train.ntk, n_out)}
    for (w, s), model in models.items():
        limits[f"{w}/{s}"] = max_stable_learning_rate(model, x.float())
    lr = p["lr_fraction"] * min(limits.values())
    t_train = lr * p["steps"]
    # a sampled kernel (the transformer's attention) goes in as a Kernel, projected onto the PSD matrices within its
    # errors, with a ridge at the level of its sampling noise (infinet.predict.noise_ridge)
    reg = {kind: max(p["diag_reg"], noise_ridge(getattr(k_train, kind), getattr(k_train, kind + "_se")))
           if k_train.sampled else p["diag_reg"] for kind in ("nngp", "ntk")}
    nngp = gp_inference(k_train, k_test, y, diag_reg=reg["nngp"]).mean
    ntk_t, ntk_inf = gradient_descent_mse(k_train, k_test, y, [t_train, float("inf")], diag_reg=reg["ntk"])
    # networks as trained converge to one draw of the infinite-width ensemble after the same steps (Lee et al.
    # 2019, eqs. 14-16): its expected MSE exactly, its expected accuracy sampled
    ensemble = gradient_descent_mse_ensemble(k_train, y, k_test_train=k_test, k_test_test=net.kernel(xt, get="nngp"),
                                             compute_cov=True, learning_rate=lr, steps=p["steps"])
    single = single_network_metrics(ensemble, yt, data.labels_test, seed=seed)
    entry = {"learning_rate": lr, "training_time": t_train, "kernel": {}, "finite": {}, "diag_reg": reg,
             "stable_learning_rates": limits, "single_network_limit": single}
    for key, label, pred in (("NNGP", "NNGP", nngp), ("NTK t=train", f"NTK t={t_train:.3g}", ntk_t),
                             ("NTK t=inf", "NTK t=inf", ntk_inf)):
        acc, err = accuracy(pred, data.labels_test), mse(pred, yt)
        table.add(name, label, "inf", acc, 0.0, err, 0.0)
        entry["kernel"][key] = {"test_accuracy": acc, "test_mse": err}
    table.add(name, "one network of the NTK ensemble", "inf", single["accuracy"], single["accuracy_se"], single["mse"], 0.0)
    t0 = time.perf_counter()
    per_width: dict = {w: {"acc": [], "mse": []} for w in p["widths"]}
    for width, s in tqdm(runs, desc=f"training {name}", disable=not progress):
        model = models[(width, s)]
        rec = train_gradient_descent(model, x.float(), y.float(), lr, p["steps"], x_test=xt.float())
        f_test = rec.f_test[-1].double()
        per_width[width]["acc"].append(accuracy(f_test, data.labels_test))
        per_width[width]["mse"].append(mse(f_test, yt))
    timings[f"{name} finite networks"] = time.perf_counter() - t0
    for width in p["widths"]:
        (acc, acc_se), (err, err_se) = mean_and_stderr(per_width[width]["acc"]), mean_and_stderr(per_width[width]["mse"])
        table.add(name, "finite network", width, acc, acc_se, err, err_se)
        entry["finite"][str(width)] = {"test_accuracy": acc, "test_accuracy_se": acc_se, "test_mse": err,
                                       "test_mse_se": err_se, "test_accuracy_per_seed": per_width[width]["acc"]}
    return entry, per_width


def rnn_kernel_error_study(p: dict, x, seed: int, progress: bool, timings: dict):
    """The recurrent network's kernel error against width (one random network vs the exact kernel)."""
    t0 = time.perf_counter()
    xs = x[: p["mc_points"]]
    rnn = "RNN, mean over time"
    study = kernel_error_vs_width(lambda w: architectures(w, 1)[rnn], xs, p["mc_widths"], p["mc_samples"], seed,
                                  progress)
    timings["RNN kernel error vs width"] = time.perf_counter() - t0
    errs, slopes = study["errors"], study["slopes"]
    mc_table = Table(["width", "NNGP relative error", "NTK relative error"],
                     caption=f"{rnn}: one random network's kernel vs the exact kernel, RMS over {p['mc_samples']} "
                             f"networks per width on {len(xs)} training sequences: sqrt(E||K_net - K||_F^2) / ||K||_F")
    for i, width in enumerate(p["mc_widths"]):
        mc_table.add(width, errs["nngp"][i], errs["ntk"][i])
    numbers = {"widths": list(p["mc_widths"]), "nngp_error": errs["nngp"], "ntk_error": errs["ntk"],
               "nngp_slope": slopes["nngp"][0], "nngp_slope_se": slopes["nngp"][1],
               "ntk_slope": slopes["ntk"][0], "ntk_slope_se": slopes["ntk"][1]}
    return mc_table, numbers, rnn


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load("mnist1d", n_train=p["n_train"], n_test=p["n_test"], seed=seed)
    x, y, xt = data.x_train, data.y_train, data.x_test
    n_out = y.shape[1]
    names = list(architectures(1, n_out))
    table = Table(["architecture", "model", "width", "test accuracy", "accuracy s.e.", "test MSE", "MSE s.e."],
                  caption=f"MNIST-1D: {len(x)} train / {len(xt)} test sequences of length {x.shape[-1]}; finite "
                          f"networks: {p['steps']} steps of full-batch gradient descent at {p['lr_fraction']} x the "
                          f"smallest stable learning rate of the NTK and of the finite networks at initialization, "
                          f"mean over {p['seeds']} seeds. The transformer (standard softmax attention over 20 tokens) on "
                          f"the first {min(len(x), p['transformer_train'])} / {min(len(xt), p['transformer_test'])} "
                          f"sequences: its attention kernel is sampled per pair of sequences ({p['attention_samples']} "
                          f"points x {p['attention_replicates']} replicates)")
    numbers: dict = {"n_train": len(x), "n_test": len(xt), "published": PUBLISHED}
    timings: dict = {}
    curves: dict = {}
    for name in names:  # the transformer's sampled attention kernel on its own (smaller) subset
        subset = data if name != "transformer" else dataclasses.replace(
            data, x_train=x[:p["transformer_train"]], y_train=y[:p["transformer_train"]],
            labels_train=data.labels_train[:p["transformer_train"]], x_test=xt[:p["transformer_test"]],
            y_test=data.y_test[:p["transformer_test"]], labels_test=data.labels_test[:p["transformer_test"]])
        numbers[name], curves[name] = architecture_study(p, subset, name, table, seed, progress, timings)
    mc_table, numbers["rnn_kernel_error"], rnn = rnn_kernel_error_study(p, x, seed, progress, timings)
    errs = {"nngp": numbers["rnn_kernel_error"]["nngp_error"], "ntk": numbers["rnn_kernel_error"]["ntk_error"]}
    slopes = {k: (numbers["rnn_kernel_error"][f"{k}_slope"], numbers["rnn_kernel_error"][f"{k}_slope_se"])
              for k in ("nngp", "ntk")}
    gated_table, numbers["gated"], timings["gated"] = _gated_study(p, data, seed, progress)
    best = max(p["widths"])
    parts = [f"{n}: NNGP {numbers[n]['kernel']['NNGP']['test_accuracy']:.3f}, NTK at t=inf "
             f"{numbers[n]['kernel']['NTK t=inf']['test_accuracy']:.3f}, NTK at the networks' training time "
             f"{numbers[n]['kernel']['NTK t=train']['test_accuracy']:.3f} and finite width {best} trained that long "
             f"{numbers[n]['finite'][str(best)]['test_accuracy']:.3f} ± {numbers[n]['finite'][str(best)]['test_accuracy_se']:.3f} "
             f"against the {numbers[n]['single_network_limit']['accuracy']:.3f} expected of one infinitely wide network "
             f"trained the same way (its limit: one draw of the NTK ensemble)" for n in names]
    summary = (f"Test accuracy on MNIST-1D with {len(x)} training sequences. " + "; ".join(parts) + ". "
               f"Published accuracies with 4,000 training sequences (Greydanus 2020): logistic regression 32%, MLP 68%, "
               f"CNN 94%, GRU 91%. The recurrent network's kernel error falls with width with log-log slope "
               f"{slopes['nngp'][0]:.2f} ± {slopes['nngp'][1]:.2f} (NNGP) and {slopes['ntk'][0]:.2f} ± "
               f"{slopes['ntk'][1]:.2f} (NTK); theory -1/2. " + _gated_summary(numbers["gated"]))
    return Result(title="Sequence models on MNIST-1D: infinite vs finite width", summary=summary, numbers=numbers,
                  timings=timings, tables={"accuracy": table, "rnn_kernel_error": mc_table, "gated": gated_table},
                  figures=_figures(p, numbers, curves, names, errs, slopes, rnn))


def _gated_study(p: dict, data, seed: int, progress: bool):
    """GRU and LSTM NNGP and NTK (the batch estimator, one draw over the training and test sequences) against the
    NNGP of width-1024 finite networks (Monte Carlo, one joint sample of every sequence per network) and trained
    finite GRU and LSTM, on shortened MNIST-1D signals, read out at the last step."""
    t0 = time.perf_counter()
    n, m, length = p["gated_train"], p["gated_test"], p["gated_length"]
    full = data.x_train.shape[-1]
    if full % length:
        raise ValueError(f"gated_length must divide the signal length {full}, got {length}")

    def shorten(x):  # mean over consecutive blocks of steps: (N, 1, 40) -> (N, 1, length)
        return x.reshape(len(x), x.shape[1], length, full // length).mean(-1)

    x, xt = shorten(data.x_train[:n]), shorten(data.x_test[:m])
    y, labels = data.y_train[:n], data.labels_test[:m]
    n_out = y.shape[1]
    options = dict(samples=p["gated_samples"], replicates=p["gated_replicates"], seed=seed % 2**31)

    def network(cls, width):
        return serial(cls(width, w_std=1.0, u_std=1.0, b_std=0.1, **options), Dense(n_out, w_std=1.0, b_std=0.1))

    table = Table(["layer", "model", "width", "test accuracy", "accuracy s.e."],
                  caption=f"Gated recurrent networks on MNIST-1D averaged to {length} steps, read out at the last step: "
                          f"{n} train / {m} test sequences. Sampled NNGP and NTK (batch estimator): one finite layer "
                          f"of {p['gated_samples']} units on Gaussian inputs x {p['gated_replicates']} replicates, over "
                          f"the training and test sequences together; accuracy s.e. from {p['gated_draws']} redraws of "
                          f"the kernels with independent entry errors of their standard errors (an upper estimate: "
                          f"the estimator's errors are shared across the batch); Monte Carlo NNGP: {p['gated_mc']} "
                          f"width-1024 networks; finite networks: {p['steps']} steps of full-batch gradient descent at "
                          f"{p['lr_fraction']} x their smallest stable learning rate, mean over {p['seeds']} seeds")
    numbers: dict = {"length": length, "n_train": n, "n_test": m}
    both = torch.cat([x, xt])
    for cls in (GRU, LSTM):
        name = cls.__name__
        net = network(cls, 1)
        k = net.kernel(both)  # one draw: the test block comes from the same finite layer as the training block
        k_train, k_test = k.block(slice(0, n), slice(0, n)), k.block(slice(n, None), slice(0, n))
        entry: dict = {"finite": {}}
        reg = p["diag_reg"]
        for kernel, label, predict in (
                ("nngp", "NNGP", lambda a, b: gp_inference(a, b, y, diag_reg=reg).mean),
                ("ntk", "NTK t=inf", lambda a, b: gradient_descent_mse(a, b, y, float("inf"), diag_reg=reg))):
            acc = accuracy(predict(k_train, k_test), labels)
            spread = [accuracy(f, labels) for f in sampling_spread(predict, k_train, k_test, kernel=kernel,
                                                                     draws=p["gated_draws"], seed=seed)]
            acc_se = float(torch.tensor(spread, dtype=torch.float64).std())
            table.add(name, f"{label} (sampled, batch estimator)", "inf", acc, acc_se)
            entry[kernel] = {"test_accuracy": acc, "test_accuracy_sampling_se": acc_se, "diag_reg": reg,
                             "kernel_max_relative_se": float(getattr(k_train, kernel + "_se").max()
                                                             / getattr(k_train, kernel).abs().max())}
        mc = monte_carlo_kernel(network(cls, 1024), both, n_samples=p["gated_mc"], seed=seed, get="nngp").nngp
        mc_acc = accuracy(gp_inference(mc[:n, :n], mc[n:, :n], y, diag_reg=reg).mean, labels)
        table.add(name, f"NNGP (Monte Carlo, {p['gated_mc']} networks)", 1024, mc_acc, float("nan"))
        entry["nngp_monte_carlo"] = {"test_accuracy": mc_acc, "networks": p["gated_mc"]}
        for width in p["gated_widths"]:
            accs = []
            for s in tqdm(range(p["seeds"]), desc=f"training {name} width {width}", disable=not progress):
                model = network(cls, width).build(tuple(x.shape[1:]), seed=derived_seed(seed, width, s, len(name)))
                lr = p["lr_fraction"] * max_stable_learning_rate(model, x.float())
                rec = train_gradient_descent(model, x.float(), y.float(), lr, p["steps"], x_test=xt.float())
                accs.append(accuracy(rec.f_test[-1].double(), labels))
            mean, se = mean_and_stderr(accs)
            table.add(name, "finite network", width, mean, se)
            entry["finite"][str(width)] = {"test_accuracy": mean, "test_accuracy_se": se, "per_seed": accs}
        numbers[name] = entry
    return table, numbers, time.perf_counter() - t0


def _gated_summary(g: dict) -> str:
    parts = []
    for name in ("GRU", "LSTM"):
        e = g[name]
        width = max(e["finite"], key=int)
        f = e["finite"][width]
        parts.append(f"{name}: sampled NNGP {e['nngp']['test_accuracy']:.3f} ± {e['nngp']['test_accuracy_sampling_se']:.3f} "
                     f"and NTK {e['ntk']['test_accuracy']:.3f} ± {e['ntk']['test_accuracy_sampling_se']:.3f} (sampling "
                     f"error), Monte Carlo NNGP of {e['nngp_monte_carlo']['networks']} width-1024 networks "
                     f"{e['nngp_monte_carlo']['test_accuracy']:.3f}, trained width {width} {f['test_accuracy']:.3f} ± "
                     f"{f['test_accuracy_se']:.3f}")
    gap = max(g[name]["nngp_monte_carlo"]["test_accuracy"] - g[name]["nngp"]["test_accuracy"] for name in ("GRU", "LSTM"))
    verdict = (f"The sampled NNGP predicts up to {gap:.2f} worse than the Monte Carlo kernel." if gap > 0.05 else
               "The sampled NNGP predicts as well as the Monte Carlo kernel, within their errors.")
    return f"Gated networks on {g['n_train']} sequences of {g['length']} steps: " + "; ".join(parts) + ". " + verdict


def _figures(p, numbers, curves, names, errs, slopes, rnn):
    plt = pyplot()
    widths = list(p["widths"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), sharey=True)
    for ax, name in zip(axes, names):
        means = [mean_and_stderr(curves[name][w]["acc"]) for w in widths]
        ax.errorbar(widths, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3, label="finite networks")
        ax.axhline(numbers[name]["single_network_limit"]["accuracy"], color="C0", lw=2, alpha=0.6,
                   label="one network of the NTK ensemble (their limit)")
        for label, style in (("NNGP", ":"), ("NTK t=inf", "--")):
            ax.axhline(numbers[name]["kernel"][label]["test_accuracy"], linestyle=style, color="k" if label == "NNGP" else "C3",
                       label=label)
        ax.set_xscale("log")
        ax.set_xlabel("width")
        ax.set_title(name)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(5, 4))
    for key, marker in (("nngp", "o"), ("ntk", "s")):
        ax.loglog(p["mc_widths"], errs[key], marker=marker, label=f"{key.upper()} (slope {slopes[key][0]:.2f})")
    ax.set_xlabel("width")
    ax.set_ylabel("relative kernel error")
    ax.set_title(f"{rnn}: kernel error vs width (theory: slope -1/2)", fontsize=9)
    ax.legend()
    fig2.tight_layout()
    return {"accuracy_vs_width": fig, "rnn_kernel_error": fig2}


EXPERIMENT = Experiment(
    name="sequences",
    description="Recurrent, 1-D convolutional and attention networks on MNIST-1D: NNGP/NTK vs trained finite networks",
    params={
        "n_train": Param(500, "training sequences", quick=200),
        "n_test": Param(500, "test sequences", quick=200),
        "widths": Param((64, 128, 256), "hidden widths of the finite networks", quick=(64, 128)),
        "seeds": Param(3, "finite networks per width", quick=2, minimum=2),
        "steps": Param(300, "gradient-descent steps of the finite networks", quick=200),
        "lr_fraction": Param(0.5, "learning rate as a fraction of the smallest stable one (of the NTK and of every finite network)"),
        "diag_reg": Param(1e-4, "diagonal regularizer of the kernel solves (relative to the mean diagonal)"),
        "mc_points": Param(30, "sequences for the recurrent kernel error", quick=16),
        "mc_widths": Param((128, 256, 512, 1024, 2048), "widths for the recurrent kernel error", quick=(32, 64, 128, 256, 512)),
        "mc_samples": Param(16, "random networks per width for the kernel error", quick=8, minimum=2),
        "transformer_train": Param(150, "training sequences of the transformer (its attention kernel is sampled per pair)",
                                   quick=60),
        "transformer_test": Param(150, "test sequences of the transformer", quick=60),
        "attention_samples": Param(128, "points per replicate of the transformer's attention kernel", quick=32,
                                   minimum=2),
        "attention_replicates": Param(4, "replicates of the transformer's attention kernel", quick=2, minimum=2),
        "gated_train": Param(120, "training sequences of the GRU/LSTM comparison", quick=50),
        "gated_test": Param(150, "test sequences of the GRU/LSTM comparison", quick=60),
        "gated_length": Param(10, "steps the signals are averaged down to for GRU/LSTM (divides 40)", quick=5),
        "gated_samples": Param(256, "points per replicate of the GRU/LSTM kernels", quick=256, minimum=2),
        "gated_replicates": Param(4, "replicates of the GRU/LSTM kernels (standard errors)", quick=2, minimum=2),
        "gated_draws": Param(16, "kernel redraws for the accuracy's sampling error", quick=8, minimum=2),
        "gated_widths": Param((64, 256), "widths of the finite GRU/LSTM networks", quick=(64,)),
        "gated_mc": Param(8, "width-1024 networks of the Monte Carlo GRU/LSTM kernels", quick=4, minimum=2),
    },
    run=run,
    details=__doc__,
)
