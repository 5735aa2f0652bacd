"""Deep neural networks as Gaussian processes: the Lee et al. 2018 comparison (their Table 1).

On each image data set: 1,000 training images (MNIST: from the 5,000-image sample, testing on the
other 4,000), one-hot zero-mean targets, inputs standardized and projected to the sphere. For ReLU and
tanh, the NNGP posterior mean (Lee et al. 2018, eq. 11) and the NTK t = inf prediction (Jacot et al.
2018) of fully-connected networks, and finite fully-connected networks (width ``width``) trained by
minibatch SGD with momentum on the MSE loss. Every model's hyperparameters (depth, w_std^2, b_std^2,
for finite networks also the readout's scale and the number of SGD steps) are chosen by accuracy on a
validation split of the training images (``val_fraction``, models fitted on the rest); the chosen
model is then refitted on all training images and scored once on the test set.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .. import datasets
from ...engine.layers import Relu, Tanh
from ...inference.predict import gp_inference, gradient_descent_mse
from ..report import Result, Table
from ...finite.training import train_sgd
from . import Experiment, Param
from ._common import accuracy, derived_seed, pyplot
from ._common import fully_connected as _fc

ACTIVATIONS = {"ReLU": Relu, "tanh": Tanh}
#: the accuracies Lee et al. 2018 report in Table 1 for MNIST with 1,000 training images
PAPER_MNIST_1K = {("ReLU", "NNGP"): 0.9279, ("tanh", "NNGP"): 0.9266, ("ReLU", "SGD"): 0.9252, ("tanh", "SGD"): 0.9254}


def lee_network(*, activation: str, depth: int, w2: float, b2: float, n_out: int, width: int = 512,
                readout_scale: float = 1.0):
    """``depth`` hidden Dense(width) + activation layers and a Dense readout, all with w_std^2 = w2 and
    b_std^2 = b2 (the readout's w_std times ``readout_scale``)."""
    w = math.sqrt(w2)
    return _fc(width=width, depth=depth, n_out=n_out, w_std=w, b_std=math.sqrt(b2), activation=ACTIVATIONS[activation],
               readout_w_std=w * readout_scale)


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(fraction * n)))
    return order[n_val:], order[:n_val]


def kernel_predictions(net, x_train, y_train, x_eval, diag_reg: float) -> dict:
    """NNGP posterior mean and NTK t = inf prediction on ``x_eval``."""
    k = net.kernel(x_train, progress=False)
    ke = net.kernel(x_eval, x_train, progress=False)
    return {"NNGP": gp_inference(k.nngp, ke.nngp, y_train, diag_reg=diag_reg).mean,
            "NTK": gradient_descent_mse(k.ntk, ke.ntk, y_train, diag_reg=diag_reg)}


def select_kernel_models(data, activation: str, p: dict, fit, val, progress: bool = False) -> dict:
    """Grid search over (depth, w2, b2) by validation accuracy, for NNGP and NTK separately; returns
    per kernel the chosen configuration, its validation accuracy and its test accuracy after refitting
    on all training images."""
    x, y, labels = data.x_train.flatten(1), data.y_train, data.labels_train
    grid = [(d, w2, b2) for d in p["depths"] for w2 in p["w2_grid"] for b2 in p["b2_grid"]]
    best: dict = {}
    for depth, w2, b2 in tqdm(grid, desc=f"{activation} kernels", disable=not progress, leave=False):
        net = lee_network(activation=activation, depth=depth, w2=w2, b2=b2, n_out=data.n_classes)
        for kind, pred in kernel_predictions(net, x[fit], y[fit], x[val], p["diag_reg"]).items():
            acc = accuracy(pred, labels[val])
            if kind not in best or acc > best[kind]["validation_accuracy"]:
                best[kind] = {"depth": depth, "w2": w2, "b2": b2, "validation_accuracy": acc}
    for kind, chosen in best.items():
        net = lee_network(activation=activation, depth=chosen["depth"], w2=chosen["w2"], b2=chosen["b2"],
                          n_out=data.n_classes)
        pred = kernel_predictions(net, x, y, data.x_test.flatten(1), p["diag_reg"])[kind]
        chosen["test_accuracy"] = accuracy(pred, data.labels_test)
    return best


def select_finite_model(data, activation: str, p: dict, fit, val, seed: int, progress: bool = False) -> dict:
    """SGD-trained finite networks: grid over (depth, w2, b2, readout scale), the number of steps
    chosen among the monitored checkpoints, by validation accuracy; then retrained on all training
    images (fresh initialization) for the chosen steps and scored on the test set."""
    x = data.x_train.flatten(1).float()
    y = data.y_train.float()
    labels = data.labels_train
    grid = [(d, w2, b2, r) for d in p["nn_depths"] for w2 in p["nn_w2_grid"] for b2 in p["nn_b2_grid"]
            for r in p["nn_readout_scales"]]
    best = None

    def train(net, rows, steps, monitor=None, key=0):
        model = net.build(x.shape[1], seed=derived_seed(seed, key), dtype=torch.float32)
        rec = train_sgd(model, x[rows], y[rows], lr=p["nn_lr"], steps=steps, batch_size=p["nn_batch"],
                        momentum=p["nn_momentum"], seed=derived_seed(seed, key, 1),
                        monitor=None if monitor is None else lambda m: monitor(m), monitor_every=p["nn_monitor_every"])
        return model, rec

    for i, (depth, w2, b2, scale) in enumerate(tqdm(grid, desc=f"{activation} SGD", disable=not progress, leave=False)):
        net = lee_network(activation=activation, depth=depth, w2=w2, b2=b2, n_out=data.n_classes, width=p["width"],
                          readout_scale=scale)
        try:
            _, rec = train(net, fit, p["nn_steps"], lambda m: accuracy(m(x[val]), labels[val]), key=i)
        except FloatingPointError:
            continue  # a diverged configuration is simply not chosen
        j = max(range(len(rec.validation)), key=lambda t: rec.validation[t])
        if best is None or rec.validation[j] > best["validation_accuracy"]:
            best = {"depth": depth, "w2": w2, "b2": b2, "readout_scale": scale, "steps": rec.steps[j],
                    "validation_accuracy": rec.validation[j]}
    if best is None:
        raise FloatingPointError(f"every {activation} SGD configuration diverged; lower nn_lr")
    net = lee_network(activation=activation, depth=best["depth"], w2=best["w2"], b2=best["b2"], n_out=data.n_classes,
                      width=p["width"], readout_scale=best["readout_scale"])
    model, _ = train(net, torch.arange(len(x)), best["steps"], key=len(grid))
    with torch.no_grad():
        best["test_accuracy"] = accuracy(model(data.x_test.flatten(1).float()), data.labels_test)
    return best


def _load(name: str, p: dict, seed: int):
    """The data set, or (None, why) when it is not available here; a set too small for ``n_test``
    is tested on all images left after the training set."""
    try:
        return datasets.load(name, n_train=p["n_train"], n_test=p["n_test"], seed=seed), None
    except datasets.DatasetError as err:
        if "only" not in str(err):
            return None, str(err)
    try:
        return datasets.load(name, n_train=p["n_train"], seed=seed), None
    except datasets.DatasetError as err:
        return None, str(err)


def run(p: dict, seed: int, progress: bool) -> Result:
    table = Table(["data set", "n_train", "n_test", "model", "activation", "test accuracy", "validation accuracy",
                   "depth", "w_std^2", "b_std^2", "notes"],
                  caption="Lee et al. 2018 Table 1 layout: for each data set and activation, the SGD-trained "
                          "finite network (NN) and the NNGP / NTK regression, each with the hyperparameters chosen "
                          "on the validation split. Paper, MNIST 1k: NN-ReLU 0.9252, NNGP-ReLU 0.9279, NN-tanh "
                          "0.9254, NNGP-tanh 0.9266.")
    numbers: dict = {}
    skipped: dict = {}
    for name in p["datasets"]:
        data, why = _load(name, p, seed)
        if data is None:
            skipped[name] = why
            continue
        if data.task != "classification":
            raise ValueError(f"lee2018 needs a classification data set; {name!r} is a {data.task} task")
        fit, val = validation_split(len(data.x_train), p["val_fraction"], derived_seed(seed, 7))
        numbers[name] = {"n_train": len(data.x_train), "n_test": len(data.x_test)}
        for a, activation in enumerate(p["activations"]):
            if activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {activation!r}; choose from {tuple(ACTIVATIONS)}")
            kernels = select_kernel_models(data, activation, p, fit, val, progress)
            models = dict(kernels)
            if p["nn_steps"] > 0:
                models["SGD"] = select_finite_model(data, activation, p, fit, val, derived_seed(seed, a), progress)
            numbers[name][activation] = models
            for kind in ("SGD", "NNGP", "NTK"):
                if kind not in models:
                    continue
                m = models[kind]
                note = (f"width {p['width']}, readout x{m['readout_scale']}, {m['steps']} steps"
                        if kind == "SGD" else f"diag_reg {p['diag_reg']}")
                table.add(data.name, len(data.x_train), len(data.x_test), "NN (SGD)" if kind == "SGD" else kind,
                          activation, m["test_accuracy"], m["validation_accuracy"], m["depth"], m["w2"], m["b2"], note)
    if not numbers:
        raise datasets.DatasetError("no data set could be loaded: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    numbers["skipped_datasets"] = skipped
    figures = {"test_accuracy": _figure(numbers, p)}
    summary = _summary(numbers, p)
    return Result(title="Deep networks as Gaussian processes (Lee et al. 2018, Table 1)", summary=summary,
                  numbers=numbers, tables={"table1": table}, figures=figures)


def _figure(numbers: dict, p: dict):
    plt = pyplot()
    names = [n for n in numbers if n != "skipped_datasets"]
    kinds = [k for k in ("SGD", "NNGP", "NTK") if any(k in numbers[n][a] for n in names for a in p["activations"])]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = [(n, a, k) for n in names for a in p["activations"] for k in kinds]
    ax.bar(range(len(bars)), [numbers[n][a][k]["test_accuracy"] for n, a, k in bars],
           color=[f"C{kinds.index(k)}" for _, _, k in bars])
    ax.set_xticks(range(len(bars)), [f"{n}\n{a} {k}" for n, a, k in bars], rotation=90, fontsize=7)
    low = min(numbers[n][a][k]["test_accuracy"] for n, a, k in bars)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title("Finite SGD-trained networks vs NNGP and NTK (hyperparameters chosen on validation)")
    fig.tight_layout()
    return fig


def _summary(numbers: dict, p: dict) -> str:
    parts = []
    for name, entry in numbers.items():
        if name == "skipped_datasets":
            continue
        n_test = entry["n_test"]
        se = math.sqrt(0.07 * 0.93 / n_test)
        cells = ", ".join(f"{k if k != 'SGD' else 'NN'}-{a} {entry[a][k]['test_accuracy']:.4f}"
                          for a in p["activations"] for k in ("SGD", "NNGP", "NTK") if k in entry[a])
        parts.append(f"{name} ({entry['n_train']} train / {n_test} test; accuracy standard error about {se:.4f}): {cells}")
    text = ". ".join(parts) + ". Lee et al. 2018 report on MNIST with 1,000 training images NN-ReLU 0.9252, " \
        "NNGP-ReLU 0.9279, NN-tanh 0.9254 and NNGP-tanh 0.9266 (10,000 test images, larger grids)."
    if numbers["skipped_datasets"]:
        text += " Not available here: " + "; ".join(f"{k} ({v})" for k, v in numbers["skipped_datasets"].items()) + "."
    return text


EXPERIMENT = Experiment(
    name="lee2018",
    description="NNGP / NTK vs SGD-trained finite networks, ReLU and tanh, 1,000 training images (Lee et al. 2018 Table 1)",
    params={
        "datasets": Param(("mnist5k", "fashion_mnist", "digits"), "image data sets (unavailable ones are reported and skipped)",
                          quick=("mnist5k",)),
        "activations": Param(("ReLU", "tanh"), "activations"),
        "n_train": Param(1000, "training images (a validation split is taken from them)"),
        "n_test": Param(4000, "test images (MNIST 5k: the other 4,000; fewer where a set is smaller)"),
        "val_fraction": Param(0.2, "fraction of the training images held out for model selection"),
        "depths": Param((1, 2, 3, 5), "hidden layers tried for the kernels", quick=(1, 3)),
        "w2_grid": Param((1.0, 1.6, 2.2, 3.0), "w_std^2 values tried for the kernels", quick=(1.6, 2.2)),
        "b2_grid": Param((0.0, 0.05, 0.2), "b_std^2 values tried for the kernels", quick=(0.0, 0.05)),
        "diag_reg": Param(1e-3, "kernel regression noise relative to the mean kernel diagonal"),
        "width": Param(512, "hidden width of the finite networks"),
        "nn_depths": Param((1, 2, 3), "hidden layers tried for the finite networks", quick=(2,)),
        "nn_w2_grid": Param((1.0, 2.0), "w_std^2 values tried for the finite networks", quick=(2.0,)),
        "nn_b2_grid": Param((0.1,), "b_std^2 values tried for the finite networks"),
        "nn_readout_scales": Param((1.0, 0.3), "readout w_std multipliers tried (smaller: less initial-output noise)",
                                   quick=(0.3,)),
        "nn_lr": Param(8.0, "SGD learning rate (loss 1/(2 B C) sum (f - y)^2, 'ntk' parameterization)"),
        "nn_momentum": Param(0.9, "SGD momentum"),
        "nn_batch": Param(100, "SGD minibatch size"),
        "nn_steps": Param(2500, "SGD steps (the best checkpoint on validation is kept); 0 skips finite networks",
                          quick=1000),
        "nn_monitor_every": Param(250, "validation checkpoints every this many steps"),
    },
    run=run,
    details=__doc__,
)
