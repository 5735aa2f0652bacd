"""Convolutional vs fully-connected kernels on real images.

The same training set, three architectures: a fully-connected ReLU network, a CNN-GAP (Arora et al.
2019) and Myrtle-5 (Shankar et al. 2020); for each, the NNGP posterior mean and the NTK prediction at
t = inf, their test accuracy and MSE, and the time to compute the kernels. Convolutional kernels
encode locality and (with pooling) translation invariance, which the fully-connected kernel lacks.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from .. import datasets
from ..architectures import cntk, myrtle
from ..layers import Dense, Relu, serial
from ..predict import gp_inference, gradient_descent_mse
from ..report import Result, Table
from . import Experiment, Param
from ._common import accuracy, mse, pyplot


def architectures(p: dict, n_out: int) -> dict:
    fc = serial(*[layer for _ in range(p["fc_depth"]) for layer in (Dense(512, w_std=2**0.5), Relu())],
                Dense(n_out, w_std=2**0.5))
    return {f"FC-{p['fc_depth']} (flattened)": fc, f"CNN-GAP-{p['cnn_depth']}": cntk(p["cnn_depth"], n_out=n_out),
            "Myrtle-5": myrtle(5, n_out=n_out)}


def run(p: dict, seed: int, progress: bool) -> Result:
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=seed)
    if data.task != "classification" or len(data.input_shape) != 3:
        raise ValueError(f"conv-kernels needs an image classification data set; {p['dataset']!r} is not one")
    table = Table(["architecture", "kernel", "test accuracy", "test MSE", "kernel seconds"],
                  caption=f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test images "
                          f"{data.input_shape}, diag_reg {p['diag_reg']}")
    numbers, timings = {}, {}
    for name, net in tqdm(architectures(p, data.n_classes).items(), desc="architectures", disable=not progress):
        flat = name.startswith("FC")
        x, xt = (data.x_train.flatten(1), data.x_test.flatten(1)) if flat else (data.x_train, data.x_test)
        t0 = time.perf_counter()
        k_train = net.kernel(x, progress=progress)
        k_test = net.kernel(xt, x, progress=progress)
        timings[name] = time.perf_counter() - t0
        preds = {"NNGP": gp_inference(k_train.nngp, k_test.nngp, data.y_train, diag_reg=p["diag_reg"]).mean,
                 "NTK": gradient_descent_mse(k_train.ntk, k_test.ntk, data.y_train, diag_reg=p["diag_reg"])}
        numbers[name] = {}
        for kind, pred in preds.items():
            acc, err = accuracy(pred, data.labels_test), mse(pred, data.y_test)
            numbers[name][kind] = {"test_accuracy": acc, "test_mse": err}
            table.add(name, kind, acc, err, round(timings[name], 2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(numbers)
    for i, kind in enumerate(("NNGP", "NTK")):
        ax.bar([j + 0.38 * i for j in range(len(names))], [numbers[n][kind]["test_accuracy"] for n in names],
               width=0.38, label=kind)
    ax.set_xticks([j + 0.19 for j in range(len(names))], names)
    low = min(numbers[n][k]["test_accuracy"] for n in names for k in ("NNGP", "NTK"))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Infinite-width kernels on {data.name} ({len(data.x_train)} training images)")
    ax.legend()
    fc, best_conv = names[0], max(names[1:], key=lambda n: numbers[n]["NTK"]["test_accuracy"])
    summary = (f"NTK test accuracy: {fc} {numbers[fc]['NTK']['test_accuracy']:.3f}, "
               + ", ".join(f"{n} {numbers[n]['NTK']['test_accuracy']:.3f}" for n in names[1:])
               + f"; the best convolutional kernel ({best_conv}) "
               + ("beats" if numbers[best_conv]["NTK"]["test_accuracy"] > numbers[fc]["NTK"]["test_accuracy"]
                  else "does not beat") + " the fully-connected one on the same training set.")
    return Result(title=f"Convolutional vs fully-connected kernels on {data.name}", summary=summary,
                  numbers=numbers, tables={"accuracy": table}, figures={"accuracy": fig}, timings=timings)


EXPERIMENT = Experiment(
    name="conv-kernels",
    description="Fully-connected vs CNN-GAP vs Myrtle-5 NNGP/NTK test accuracy on real images (digits)",
    params={
        "dataset": Param("digits", "image classification data set"),
        "n_train": Param(500, "training images", quick=200),
        "n_test": Param(300, "test images", quick=150),
        "fc_depth": Param(2, "hidden layers of the fully-connected network"),
        "cnn_depth": Param(3, "Conv + Relu layers of the CNN-GAP"),
        "diag_reg": Param(1e-4, "diagonal regularization relative to the mean kernel diagonal"),
    },
    run=run,
    details=__doc__,
)
