"""Transfer learning as kernel regression: fine-tuning a pretrained CNN against its tangent kernel.

A small CNN (two stride-2 3x3 convolutions with ReLU, a flattening dense readout) is pretrained by Adam on
the source task, images of classes 0-4, and then meets a target task, classes 5-9 of the same data set
(relabelled 0-4), with a new random readout and few target training images. Over target training-set
sizes and seeds (each seed its own training subset and new readout):

  fine-tuning   the whole network by full-batch gradient descent on the MSE (lr a fraction of the stable
                limit 2 / lambda_max of the Gauss-Newton matrix)
  linearized    its first-order Taylor expansion in the parameters around the pretrained ones
                (:func:`infinet.linearize`), trained identically: how far fine-tuning leaves the kernel regime
  eNTK          kernel regression with the empirical NTK of the pretrained network (with its new readout)
                on the residuals y - f0: the linearized network trained to convergence (Malladi, Wettig, Yu,
                Chen and Arora 2023, "A kernel-based view of language model fine-tuning", Sec. 4)
  readout       training only the new readout to convergence: kernel regression with the readout's own
                tangent kernel, the features' Gram matrix
  NNGP, NTK     the infinite-width kernels of the same architecture, no pretraining
  scratch       the finite network trained from a random initialization like fine-tuning

Kernel regressions choose their ridge by leave-one-out on the training set. By default every finite
network is centered (Chizat, Oyallon and Bach 2019): it is trained and read as f - f0, so that the new
random readout's initial outputs, noise of the size of the targets, neither need to be unlearned on the
training images nor stay in the test predictions; the kernel regressions then fit y itself.
``centered=False`` keeps f0 (the eNTK and readout regressions then fit y - f0 and add f0 back). How close fine-tuning stays
to its linearization: the RMS distance between their test outputs relative to how far fine-tuning moved
them, the fraction of test images on which they predict the same class, and the relative change of the
empirical NTK over fine-tuning (on training images). The claim (Malladi et al. 2023) is that
fine-tuning behaves like eNTK regression when it stays in this kernel regime.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import datasets
from ...finite.empirical import empirical_ntk
from ...inference.fitting import kernel_regression_by_leave_one_out, ridge_by_leave_one_out
from ...engine.layers import Conv, Dense, Flatten, Relu, serial
from ...finite.linearization import linearize
from ...inference.predict import gradient_descent_mse
from ..report import Result, Table
from ...finite.training import (
    max_stable_learning_rate,
    readout_parameters,
    replace_readout,
    train_classifier,
    train_gradient_descent,
)
from . import Experiment, Param
from ._common import accuracy, derived_seed, mean_and_stderr, pyplot

METHODS = ("fine-tuning", "linearized", "eNTK", "readout", "NNGP", "NTK", "scratch")
CLASSES = 5


def architecture(p: dict):
    """The CNN of the module docstring (NTK parameterization, as infinet's kernels assume)."""
    c = p["channels"]
    return serial(Conv(c, 3, stride=2, w_std=1.4, b_std=0.1), Relu(), Conv(c, 3, stride=2, w_std=1.4, b_std=0.1),
                  Relu(), Flatten(), Dense(CLASSES, w_std=1.0, b_std=0.1))


def tasks(p: dict, seed: int) -> dict:
    """Source images (classes 0-4, with labels) and the target pool and test set (classes 5-9, labels 0-4)."""
    data = datasets.load(p["dataset"], n_train=p["pool"], n_test=p["n_test"] * 2 + 100, seed=seed)
    if data.task != "classification" or data.n_classes < 2 * CLASSES or len(data.input_shape) != 3:
        raise ValueError(f"transfer-learning needs an image data set with >= 10 classes; {p['dataset']!r} is not one")
    src = data.labels_train < CLASSES
    tgt = torch.nonzero((data.labels_train >= CLASSES) & (data.labels_train < 2 * CLASSES)).squeeze(1)[: p["target_pool"]]
    test = torch.nonzero((data.labels_test >= CLASSES) & (data.labels_test < 2 * CLASSES)).squeeze(1)[: p["n_test"]]
    src_test = torch.nonzero(data.labels_test < CLASSES).squeeze(1)[: p["n_test"]]
    return dict(name=data.name, shape=data.input_shape,
                x_src=data.x_train[src], l_src=data.labels_train[src],
                x_src_test=data.x_test[src_test], l_src_test=data.labels_test[src_test],
                x_pool=data.x_train[tgt], l_pool=data.labels_train[tgt] - CLASSES,
                x_test=data.x_test[test], l_test=data.labels_test[test] - CLASSES)


def targets(labels: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(datasets.one_hot_targets(labels.numpy(), CLASSES), dtype=torch.float64)


def kernel_regression(k_train, k_test_train, y, f0=None, f0_test=None) -> torch.Tensor:
    """Test predictions of kernel ridge regression (ridge by leave-one-out), on the residuals y - f0 when
    initial outputs are given (the linearized network trained to convergence)."""
    out, _ = kernel_regression_by_leave_one_out(k_train, k_test_train, y if f0 is None else y - f0)
    return out if f0_test is None else out + f0_test


def ntk_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float(torch.linalg.norm(after - before) / torch.linalg.norm(before))


def one_task(p, data, pretrained, n, s, seed, infinite) -> dict:
    """Every method on one target training set of n images (seed s); accuracies and kernel-regime measures."""
    gen = torch.Generator().manual_seed(derived_seed(seed, 17, n, s))
    idx = torch.randperm(len(data["x_pool"]), generator=gen)[:n]
    x, y, xt, lt = data["x_pool"][idx], targets(data["l_pool"][idx]), data["x_test"], data["l_test"]
    net = architecture(p)
    fresh = net.build(data["shape"], seed=derived_seed(seed, 19, n, s), dtype=torch.float64)
    model = replace_readout(pretrained, fresh)
    both = torch.cat([x, xt])
    with torch.no_grad():
        f0, f0_test = model(x), model(xt)
    if p["centered"]:  # train f - f0: full-batch training on targets y + f0(x) moves f exactly as f - f0 on y
        offset, offset_test = f0, f0_test
    else:
        offset, offset_test = torch.zeros_like(f0), torch.zeros_like(f0_test)
    out = {}
    entk = empirical_ntk(model, both, trace=True)
    out["eNTK"] = kernel_regression(entk[:n, :n], entk[n:, :n], y, f0 - offset, f0_test - offset_test)
    head = empirical_ntk(model, both, trace=True, params=readout_parameters(model))
    out["readout"] = kernel_regression(head[:n, :n], head[n:, :n], y, f0 - offset, f0_test - offset_test)
    for name in ("nngp", "ntk"):  # the infinite kernels hold the target pool first, then the test images
        k = getattr(infinite, name)
        k_train, k_test = k[idx][:, idx], k[len(data["x_pool"]):][:, idx]
        if name == "nngp":
            out["NNGP"] = kernel_regression(k_train, k_test, y)
        else:
            ridge, _ = ridge_by_leave_one_out(k_train, y)
            out["NTK"] = gradient_descent_mse(k_train, k_test, y, diag_reg=ridge)
    lr = p["lr_fraction"] * max_stable_learning_rate(model, x)
    lin = linearize(model)
    before = entk[:n, :n][: p["ntk_points"], : p["ntk_points"]]
    train_gradient_descent(model, x, y + offset, lr, p["steps"])
    train_gradient_descent(lin, x, y + offset, lr, p["steps"])
    with torch.no_grad():
        out["fine-tuning"], out["linearized"] = model(xt) - offset_test, lin(xt) - offset_test
    after = empirical_ntk(model, x[: p["ntk_points"]], trace=True)
    scratch = net.build(data["shape"], seed=derived_seed(seed, 23, n, s), dtype=torch.float64)
    with torch.no_grad():
        s0, s0_test = (scratch(x), scratch(xt)) if p["centered"] else (0.0, 0.0)
    train_gradient_descent(scratch, x, y + s0, p["lr_fraction"] * max_stable_learning_rate(scratch, x), p["steps"])
    with torch.no_grad():
        out["scratch"] = scratch(xt) - s0_test
    acc = {m: accuracy(out[m], lt) for m in METHODS}
    moved = float((out["fine-tuning"] - (f0_test - offset_test)).pow(2).mean().sqrt())
    regime = dict(distance=float((out["fine-tuning"] - out["linearized"]).pow(2).mean().sqrt()) / max(moved, 1e-300),
                  agreement=float((out["fine-tuning"].argmax(1) == out["linearized"].argmax(1)).double().mean()),
                  ntk_change=ntk_change(before, after), learning_rate=lr)
    return dict(accuracy=acc, regime=regime)


def run(p: dict, seed: int, progress: bool) -> Result:
    data = tasks(p, seed)
    net = architecture(p)
    pretrained = net.build(data["shape"], seed=derived_seed(seed, 13), dtype=torch.float64)
    source_train = train_classifier(pretrained, data["x_src"], data["l_src"], p["pretrain_steps"], lr=p["pretrain_lr"],
                                    seed=derived_seed(seed, 29))
    with torch.no_grad():
        source_test = accuracy(pretrained(data["x_src_test"]), data["l_src_test"])
    # the infinite-width kernels over the whole target pool and test set, once
    infinite = net.kernel(torch.cat([data["x_pool"], data["x_test"]]), progress=progress)
    results = {}
    jobs = [(n, s) for n in p["sizes"] for s in range(p["seeds"])]
    for n, s in tqdm(jobs, desc="target tasks", disable=not progress, leave=False):
        results[(n, s)] = one_task(p, data, pretrained, n, s, seed, infinite)
    return _report(p, data, results, source_train, source_test)


def _report(p, data, results, source_train, source_test) -> Result:
    acc_table = Table(["n_target", "method", "test accuracy", "s.e."],
                      caption=f"{data['name']}: pretrained on classes 0-4 ({len(data['x_src'])} images, {p['pretrain_steps']} "
                              f"Adam steps: source accuracy {source_train:.3f} train / {source_test:.3f} test); target "
                              f"classes 5-9, {len(data['x_test'])} test images; mean and standard error over "
                              f"{p['seeds']} seeds (training subset and new readout)")
    regime_table = Table(["n_target", "relative distance fine-tuned vs linearized", "s.e.", "same predicted class",
                          "eNTK change", "learning rate"],
                         caption="How close fine-tuning stays to its linearization: RMS distance of test outputs over "
                                 "the RMS distance fine-tuning moved them; the fraction of test images on which both "
                                 "predict the same class; ||Theta_after - Theta_before||_F / ||Theta_before||_F on "
                                 f"{p['ntk_points']} training images")
    numbers: dict = {"source_accuracy": {"train": source_train, "test": source_test}, "accuracy": {}, "regime": {}}
    for n in p["sizes"]:
        runs = [results[(n, s)] for s in range(p["seeds"])]
        numbers["accuracy"][n] = {}
        for m in METHODS:
            mean, se = mean_and_stderr([r["accuracy"][m] for r in runs])
            numbers["accuracy"][n][m] = (mean, se)
            acc_table.add(n, m, mean, se)
        reg = {key: mean_and_stderr([r["regime"][key] for r in runs]) for key in runs[0]["regime"]}
        numbers["regime"][n] = {key: v[0] for key, v in reg.items()}
        numbers["regime"][n]["distance_se"] = reg["distance"][1]
        regime_table.add(n, reg["distance"][0], reg["distance"][1], reg["agreement"][0], reg["ntk_change"][0],
                         reg["learning_rate"][0])
    summary, verdicts = _findings(p, numbers)
    numbers["verdicts"] = verdicts
    return Result(title="Transfer learning as kernel regression with the pretrained network's tangent kernel",
                  summary=summary, numbers=numbers, tables={"accuracy": acc_table, "kernel_regime": regime_table},
                  figures=_figures(p, numbers))


def _findings(p, numbers) -> tuple[str, dict]:
    acc, regime, sizes = numbers["accuracy"], numbers["regime"], p["sizes"]

    def gap(a, b, n):  # difference in accuracy and its combined standard error
        return acc[n][a][0] - acc[n][b][0], float(np.hypot(acc[n][a][1], acc[n][b][1]))

    def within(a, b, n):  # equal within two combined standard errors or 2 points of accuracy
        diff, se = gap(a, b, n)
        return abs(diff) <= max(2 * se, 0.02)

    close = [n for n in sizes if within("fine-tuning", "eNTK", n)]
    linear = [n for n in sizes if within("fine-tuning", "linearized", n)]
    # where fine-tuning misses the converged eNTK regression but its linearization, trained as long, misses it
    # too, the gap is training time, not a departure from the kernel
    timing = [n for n in sizes if n not in close and n in linear and not within("linearized", "eNTK", n)]
    pretrain_helps = [n for n in sizes if gap("fine-tuning", "scratch", n)[0] > 2 * gap("fine-tuning", "scratch", n)[1]]
    beats_infinite = [n for n in sizes if acc[n]["eNTK"][0] > max(acc[n]["NNGP"][0], acc[n]["NTK"][0])]
    lazy = [n for n in sizes if regime[n]["distance"] < 0.25]
    verdicts = {"fine_tuning_matches_entk": len(close) == len(sizes),
                "fine_tuning_matches_linearization": len(linear) == len(sizes), "kernel_regime": len(lazy) == len(sizes),
                "pretraining_helps": len(pretrain_helps) == len(sizes)}
    first, last = sizes[0], sizes[-1]
    sentences = [
        f"Fine-tuning reaches test accuracy {acc[first]['fine-tuning'][0]:.3f} with {first} target images and "
        f"{acc[last]['fine-tuning'][0]:.3f} with {last}; eNTK regression {acc[first]['eNTK'][0]:.3f} and "
        f"{acc[last]['eNTK'][0]:.3f}; the new readout alone {acc[first]['readout'][0]:.3f} and {acc[last]['readout'][0]:.3f}; "
        f"the infinite-width NTK from scratch {acc[first]['NTK'][0]:.3f} and {acc[last]['NTK'][0]:.3f}; the finite "
        f"network from scratch {acc[first]['scratch'][0]:.3f} and {acc[last]['scratch'][0]:.3f}.",
        f"Fine-tuning agrees with its linearization trained as long within two standard errors (or 2 points) at "
        f"{len(linear)} of {len(sizes)} sizes and with the converged eNTK regression at {len(close)} "
        f"({', '.join(map(str, close)) or 'none'})"
        + (f"; where it does not ({', '.join(map(str, timing))}), the linearization misses the eNTK regression as "
           "well, so the gap is unfinished training, not a departure from the kernel" if timing else "")
        + f"; pretraining beats training from scratch by more "
        f"than two standard errors at {len(pretrain_helps)} of {len(sizes)}, and the pretrained eNTK beats both "
        f"infinite-width kernels at {len(beats_infinite)}.",
        f"Fine-tuned test outputs differ from the linearization's by {regime[first]['distance']:.2f} (n = {first}) to "
        f"{regime[last]['distance']:.2f} (n = {last}) of how far fine-tuning moved them, with the same predicted class "
        f"on {regime[first]['agreement']:.1%} to {regime[last]['agreement']:.1%} of test images and an eNTK change of "
        f"{regime[first]['ntk_change']:.2f} to {regime[last]['ntk_change']:.2f}: "
        + ("fine-tuning stays in the kernel regime at every size." if len(lazy) == len(sizes) else
           f"the kernel regime (relative distance < 0.25) holds at {len(lazy)} of {len(sizes)} sizes."),
        "The claim held as stated: fine-tuning behaved like kernel regression with the pretrained eNTK."
        if verdicts["fine_tuning_matches_entk"] and verdicts["kernel_regime"] else
        ("The claim held: fine-tuning stayed in the kernel regime and matched its linearization at every size; it "
         "matched the converged eNTK regression wherever training had converged."
         if verdicts["fine_tuning_matches_linearization"] and verdicts["kernel_regime"] and len(close) + len(timing) == len(sizes)
         else "The claim held only in part: see the verdicts in results.json and the tables."),
    ]
    return " ".join(sentences), verdicts


def _figures(p, numbers):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    sizes = p["sizes"]
    for m in METHODS:
        means = [numbers["accuracy"][n][m][0] for n in sizes]
        ses = [numbers["accuracy"][n][m][1] for n in sizes]
        axes[0].errorbar(sizes, means, yerr=ses, marker="o", ms=3, capsize=2, label=m)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("target training images")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7)
    axes[0].set_title("Target task accuracy")
    axes[1].errorbar(sizes, [numbers["regime"][n]["distance"] for n in sizes],
                     yerr=[numbers["regime"][n]["distance_se"] for n in sizes], marker="o", capsize=2,
                     label="fine-tuned vs linearized (relative)")
    axes[1].plot(sizes, [numbers["regime"][n]["ntk_change"] for n in sizes], marker="s", label="eNTK change")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("target training images")
    axes[1].legend(fontsize=7)
    axes[1].set_title("Distance from the kernel regime")
    fig.tight_layout()
    return {"accuracy_and_kernel_regime": fig}


EXPERIMENT = Experiment(
    name="transfer-learning",
    description="Pretrained CNN fine-tuned on new classes vs its eNTK regression, readout, infinite-width kernels "
                "(Malladi et al. 2023)",
    params={
        "dataset": Param("mnist5k", "image data set with >= 10 classes (e.g. mnist5k, fashion_mnist)"),
        "pool": Param(3500, "training images drawn from the data set (source and target pool)", quick=1200),
        "target_pool": Param(1000, "target-class training images the target training sets are drawn from", quick=300),
        "n_test": Param(500, "test images of each task", quick=150),
        "channels": Param(32, "channels of each convolution", quick=16),
        "pretrain_steps": Param(800, "Adam steps of pretraining on the source classes", quick=150),
        "pretrain_lr": Param(2e-3, "Adam learning rate of pretraining"),
        "sizes": Param((10, 25, 50, 100, 200, 400), "target training-set sizes", quick=(10, 40)),
        "seeds": Param(3, "target training subsets (and new readouts) per size", quick=2),
        "steps": Param(500, "full-batch gradient descent steps of fine-tuning", quick=200),
        "lr_fraction": Param(0.5, "learning rate as a fraction of the stable limit"),
        "centered": Param(True, "train and predict f - f0 (removes the new random readout's initial outputs)"),
        "ntk_points": Param(20, "training images on which the eNTK change is measured", quick=10),
    },
    run=run,
    details=__doc__,
)
