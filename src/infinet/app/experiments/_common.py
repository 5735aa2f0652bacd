"""Small helpers shared by experiments: metrics, seeds, the one network builder, figures."""

from __future__ import annotations


import numpy as np
from torch import Tensor

from ...core.stats import loglog_slope, mean_and_stderr  # noqa: F401 (the experiments' helpers)
from ...engine.layers import Dense, Dropout, Relu, serial
from ...finite.montecarlo import monte_carlo_kernel
from . import _UNSET, Param
from ...core.extras import require


def accuracy(f: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose largest output is the true class."""
    return float((f.argmax(dim=1) == labels.to(f.device)).double().mean())


def mse(f: Tensor, y: Tensor) -> float:
    """Mean squared error per target entry, mean (f - y)^2."""
    return float((f - y).pow(2).mean())


def fully_connected(*, width: int, depth: int, n_out: int, w_std: float, b_std: float | None, activation=None,
                    parameterization: str = "ntk", readout_w_std: float | None = None, dropout: float = 0.0):
    """``depth`` hidden Dense(width) > activation blocks (ReLU unless ``activation``, a layer class, is
    given), Dropout(dropout) when positive, and a Dense(n_out) readout; every Dense has (w_std, b_std)
    in ``parameterization`` (the readout ``readout_w_std`` when given). The experiments' one network
    builder (keyword-only; :func:`network_of` fills in the :func:`network_params` group)."""
    act = activation or Relu

    def dense(n, w):
        return Dense(n, w_std=w, b_std=b_std, parameterization=parameterization)

    hidden = [layer for _ in range(depth) for layer in (dense(width, w_std), act())]
    tail = [Dropout(dropout)] if dropout > 0 else []
    return serial(*hidden, *tail, dense(n_out, w_std if readout_w_std is None else readout_w_std))


# -- parameter groups shared by experiments ------------------------------------------------------------------
def _param(default, help: str, quick=_UNSET, **options) -> Param:
    return Param(default, help, quick=quick, **options)


def data_params(*, n_train: int, n_test: int, quick_train=_UNSET, quick_test=_UNSET, dataset: str = "digits",
                what: str = "classification data set", train_name: str = "n_train") -> dict[str, Param]:
    """The data group: ``dataset`` (a name of :func:`infinet.datasets.load`), training and test examples."""
    return {"dataset": _param(dataset, what), train_name: _param(n_train, "training examples", quick_train),
            "n_test": _param(n_test, "test examples", quick_test)}


#: the keys of the network group, read by :func:`network_of`
NETWORK = ("depth", "w_std", "b_std")


def network_params(*, depth: int, w_std: float, b_std: float, blocks: str = "Dense > Relu") -> dict[str, Param]:
    """The network group of a fully-connected experiment: hidden blocks and the weight and bias standard deviations."""
    return {"depth": _param(depth, f"hidden {blocks} blocks"), "w_std": _param(w_std, "weight standard deviation"),
            "b_std": _param(b_std, "bias standard deviation")}


def training_params(*, steps: int, quick_steps=_UNSET, seeds: int | None = None, quick_seeds=_UNSET,
                    lr_fraction: float = 0.5) -> dict[str, Param]:
    """The training group of finite networks: networks per setting (``seeds``, when given), full-batch gradient
    descent steps, and the learning rate as a fraction of the stable limit 2 m / lambda_max(NTK)."""
    group = {} if seeds is None else {"seeds": _param(seeds, "finite networks trained per setting", quick_seeds)}
    group["steps"] = _param(steps, "gradient descent steps", quick_steps)
    group["lr_fraction"] = _param(lr_fraction, "learning rate as a fraction of the stable limit 2m/lambda_max(NTK)")
    return group


def network_of(p: dict, **choices):
    """:func:`fully_connected` with the network group's values from the parameters ``p`` and ``choices``
    (``width``, ``n_out``, and any override) as keywords."""
    return fully_connected(**{**{key: p[key] for key in NETWORK}, **choices})


def derived_seed(seed: int, *keys: int) -> int:
    """A reproducible seed for one sub-task, from the run's seed and integer keys."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 2)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (reports are written to files)."""
    matplotlib = require("matplotlib", "the experiments' figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kernel_error_vs_width(make_net, x, widths, n_samples: int, seed: int, progress: bool = False) -> dict:
    """One random network's relative kernel error sqrt(E ||K_net - K||_F^2) / ||K||_F against width, for
    the NNGP and the NTK, from :func:`infinet.monte_carlo_kernel` with ``n_samples`` networks per width
    (E||K_s - K||^2 = ||mean - K||^2 + (S - 1) ||stderr||^2 over S samples), and the fitted log-log
    slopes with standard errors (theory: -1/2, the central limit theorem over hidden units)."""
    from tqdm.auto import tqdm



    exact = make_net(1).kernel(x)
    errs: dict = {"nngp": [], "ntk": []}
    for width in tqdm(widths, desc="Monte Carlo kernels", disable=not progress, leave=False):
        mc = monte_carlo_kernel(make_net(width), x, n_samples=n_samples, seed=derived_seed(seed, 7, width))
        for name, mean, se, k in (("nngp", mc.nngp, mc.nngp_stderr, exact.nngp), ("ntk", mc.ntk, mc.ntk_stderr, exact.ntk)):
            errs[name].append(float(((mean - k).norm() ** 2 + (mc.n_samples - 1) * se.norm() ** 2).sqrt() / k.norm()))
    slopes = {name: loglog_slope(widths, values) for name, values in errs.items()}
    return {"widths": list(widths), "errors": errs, "slopes": slopes}
