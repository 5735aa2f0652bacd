"""Convolutional vs fully-connected kernels on real images.

The same training sets, three architectures: a fully-connected ReLU network, a CNN-GAP (Arora et al.
2019) and Myrtle-5 (Shankar et al. 2020); for each, the NNGP posterior mean and the NTK prediction at
t = inf, their test accuracy and MSE as the training set grows, and the time to compute the kernels. Convolutional kernels
encode locality and (with pooling) translation invariance, which the fully-connected kernel lacks.
Last, max pooling against average pooling in the same small CNN: the max-pooling kernel has no closed
form and is sampled per layer (:class:`~infinet.MaxPool`), with its sampling error carried into the
accuracies.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...engine.architectures import cntk, myrtle
from ...engine.layers import AvgPool, Conv, Dense, GlobalAvgPool, MaxPool, Relu, serial
from ...engine.kernel import Kernel
from ...inference.predict import gp_inference, gradient_descent_mse, kernel_matrix, noise_ridge, sampling_spread
from ..report import Result, Table
from . import Experiment, Param
from ._common import accuracy, mse, pyplot


def architectures(p: dict, n_out: int) -> dict:
    fc = serial(*[layer for _ in range(p["fc_depth"]) for layer in (Dense(512, w_std=2**0.5), Relu())],
                Dense(n_out, w_std=2**0.5))
    return {f"FC-{p['fc_depth']} (flattened)": fc, f"CNN-GAP-{p['cnn_depth']}": cntk(p["cnn_depth"], n_out=n_out),
            "Myrtle-5": myrtle(5, n_out=n_out)}


def run(p: dict, seed: int, progress: bool) -> Result:
    sizes = sorted(p["train_sizes"])
    data = datasets.load(p["dataset"], n_train=sizes[-1], n_test=p["n_test"], seed=seed)
    if data.task != "classification" or len(data.input_shape) != 3:
        raise ValueError(f"conv-kernels needs an image classification data set; {p['dataset']!r} is not one")
    n_max = sizes[-1]
    images = torch.cat([data.x_train, data.x_test])  # one symmetric kernel serves every training size
    test = slice(n_max, len(images))
    table = Table(["architecture", "kernel", "n_train", "test accuracy", "test MSE"],
                  caption=f"{data.name}: training sets are the first n of {n_max} stratified-shuffled images; "
                          f"{len(data.x_test)} test images {data.input_shape}; diag_reg {p['diag_reg']}")
    numbers, timings = {}, {}
    for name, net in tqdm(architectures(p, data.n_classes).items(), desc="architectures", disable=not progress):
        x = images.flatten(1) if name.startswith("FC") else images
        t0 = time.perf_counter()
        k = net.kernel(x, progress=progress)
        timings[name] = time.perf_counter() - t0
        numbers[name] = {}
        for n in sizes:
            train = slice(0, n)
            preds = {"NNGP": gp_inference(k.nngp[train, train], k.nngp[test, train], data.y_train[:n],
                                          diag_reg=p["diag_reg"]).mean,
                     "NTK": gradient_descent_mse(k.ntk[train, train], k.ntk[test, train], data.y_train[:n],
                                                 diag_reg=p["diag_reg"])}
            for kind, pred in preds.items():
                acc, err = accuracy(pred, data.labels_test), mse(pred, data.y_test)
                numbers[name].setdefault(kind, {})[str(n)] = {"test_accuracy": acc, "test_mse": err}
                table.add(name, kind, n, acc, err)
    names = list(numbers)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(names):
        for kind, style in (("NTK", "-"), ("NNGP", "--")):
            ax.plot(sizes, [numbers[name][kind][str(n)]["test_accuracy"] for n in sizes], style, marker="o",
                    color=f"C{i}", label=f"{name} {kind}")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Infinite-width kernels on {data.name}: accuracy vs training set size")
    ax.legend(fontsize=8)
    fc = names[0]
    wins = {}
    for n in sizes:
        best = max(names[1:], key=lambda a: numbers[a]["NTK"][str(n)]["test_accuracy"])
        lowest_mse = min(numbers[a]["NTK"][str(n)]["test_mse"] for a in names[1:])
        wins[str(n)] = {"best_conv": best, "margin": numbers[best]["NTK"][str(n)]["test_accuracy"]
                        - numbers[fc]["NTK"][str(n)]["test_accuracy"],
                        "mse_ratio": lowest_mse / numbers[fc]["NTK"][str(n)]["test_mse"]}
    numbers["best_conv_minus_fc_ntk_accuracy"] = wins
    summary = ("NTK test accuracy, best convolutional kernel minus fully-connected, by training set size: "
               + ", ".join(f"n={n}: {w['margin']:+.3f} ({w['best_conv']})" for n, w in wins.items())
               + "; lowest convolutional test MSE over the fully-connected one: "
               + ", ".join(f"{w['mse_ratio']:.2f}" for w in wins.values())
               + f". The accuracy standard error of {len(data.x_test)} test images is about "
               + f"{(0.05 * 0.95 / len(data.x_test)) ** 0.5:.3f} at 95% accuracy.")
    pool_table, numbers["pooling"], timings["pooling"] = _pooling_study(p, data, seed)
    summary += " " + _pooling_summary(numbers["pooling"])
    return Result(title=f"Convolutional vs fully-connected kernels on {data.name}", summary=summary,
                  numbers=numbers, tables={"accuracy": table, "pooling": pool_table},
                  figures={"accuracy_vs_n_train": fig}, timings=timings)


def _pooling_study(p: dict, data, seed: int):
    """Max vs average pooling: Conv(3x3, VALID) > pooling 2x2 > Conv(3x3) > Relu > global average > Dense."""
    t0 = time.perf_counter()
    n, m = min(p["pool_train"], len(data.x_train)), min(p["pool_test"], len(data.x_test))
    images = torch.cat([data.x_train[:n], data.x_test[:m]])
    w, c = 2**0.5, data.n_classes
    first = Conv(1, 3, padding="VALID", w_std=w)
    pools = {"average pooling": [first, Relu(), AvgPool(2)],
             "max pooling": [first, MaxPool(2, activation=Relu(), samples=p["pool_samples"],
                                            replicates=p["pool_replicates"], seed=seed % 2**31)]}
    table = Table(["pooling", "kernel", "test accuracy", "accuracy s.e. (sampling)", "diag_reg"],
                  caption=f"{data.name}: {n} train / {m} test images; Conv(3x3, VALID) > Relu > 2x2 pooling > Conv(3x3) > "
                          f"Relu > global average pooling > Dense; the max-pooling kernel sampled with "
                          f"{p['pool_samples']} points x {p['pool_replicates']} replicates (ridge at the level of its "
                          f"sampling noise)")
    numbers: dict = {"n_train": n, "n_test": m}
    y, labels = data.y_train[:n], data.labels_test[:m]
    for name, head in pools.items():
        net = serial(*head, Conv(1, 3, w_std=w), Relu(), GlobalAvgPool(), Dense(c, w_std=w))
        k = net.kernel(images)
        numbers[name] = {}
        for kind in ("nngp", "ntk"):
            full, se = getattr(k, kind), getattr(k, kind + "_se")
            k_train = Kernel(full[:n, :n], None, full.diagonal()[:n], full.diagonal()[:n], (), symmetric=True,
                             nngp_se=None if se is None else se[:n, :n])
            k_test = Kernel(full[n:, :n], None, full.diagonal()[n:], full.diagonal()[:n], (),
                            nngp_se=None if se is None else se[n:, :n])
            reg = p["diag_reg"] if se is None else max(p["diag_reg"], noise_ridge(full[:n, :n], se[:n, :n]))

            def predict(train, test, kind=kind, reg=reg):
                return (gp_inference(train, test, y, diag_reg=reg).mean if kind == "nngp"
                        else gradient_descent_mse(train, test, y, diag_reg=reg))

            acc = accuracy(predict(kernel_matrix(k_train, "nngp", "k_train"), k_test.nngp), labels)
            accs = [accuracy(f, labels) for f in sampling_spread(predict, k_train, k_test, draws=p["pool_draws"],
                                                                   seed=seed)]
            spread = float(torch.tensor(accs, dtype=torch.float64).std()) if len(accs) > 1 else 0.0
            numbers[name][kind.upper()] = {"test_accuracy": acc, "sampling_se": spread, "diag_reg": reg}
            table.add(name, kind.upper(), acc, spread, reg)
    return table, numbers, time.perf_counter() - t0


def _pooling_summary(q: dict) -> str:
    """One clause per kernel: the accuracy difference, and whether it exceeds twice its standard error (the
    test set's binomial error of both accuracies and the sampling error of the max-pooling one)."""
    clauses = []
    for kind in ("NNGP", "NTK"):
        mx, av = q["max pooling"][kind], q["average pooling"][kind]
        diff = mx["test_accuracy"] - av["test_accuracy"]
        binomial = sum(a * (1 - a) for a in (mx["test_accuracy"], av["test_accuracy"])) / q["n_test"]
        se = (binomial + mx["sampling_se"] ** 2) ** 0.5
        verdict = ("max pooling better" if diff > 2 * se else "average pooling better" if diff < -2 * se
                   else "no difference beyond the errors")
        clauses.append(f"{kind} {mx['test_accuracy']:.3f} (max) vs {av['test_accuracy']:.3f} (average), "
                       f"{diff:+.3f} ± {se:.3f}: {verdict}")
    return f"Max vs average pooling kernels with {q['n_train']} training images: " + "; ".join(clauses) + "."


EXPERIMENT = Experiment(
    name="conv-kernels",
    description="Fully-connected vs CNN-GAP vs Myrtle-5 NNGP/NTK test accuracy vs training set size on digits",
    params={
        "dataset": Param("digits", "image classification data set"),
        "train_sizes": Param((25, 50, 100, 200, 400), "training set sizes (the largest is loaded)",
                             quick=(25, 50, 100)),
        "n_test": Param(300, "test images", quick=150),
        "fc_depth": Param(2, "hidden layers of the fully-connected network"),
        "cnn_depth": Param(3, "Conv + Relu layers of the CNN-GAP"),
        "diag_reg": Param(1e-4, "diagonal regularization relative to the mean kernel diagonal"),
        "pool_train": Param(100, "training images of the max vs average pooling comparison", quick=40),
        "pool_test": Param(200, "test images of the pooling comparison", quick=80),
        "pool_samples": Param(128, "points per replicate of the max-pooling kernel", quick=64, minimum=2),
        "pool_replicates": Param(4, "replicates of the max-pooling kernel", quick=2, minimum=2),
        "pool_draws": Param(8, "kernel redraws for the accuracy's sampling error", quick=4, minimum=2),
    },
    run=run,
    details=__doc__,
)
