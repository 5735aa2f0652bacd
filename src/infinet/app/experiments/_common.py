"""Small helpers shared by experiments: metrics, seeds, the one network builder, figures."""

from __future__ import annotations


import numpy as np
from torch import Tensor

from ...core.stats import loglog_slope, mean_and_stderr  # noqa: F401 (the experiments' helpers)


def accuracy(f: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose largest output is the true class."""
    return float((f.argmax(dim=1) == labels.to(f.device)).double().mean())


def mse(f: Tensor, y: Tensor) -> float:
    """Mean squared error per target entry, mean (f - y)^2."""
    return float((f - y).pow(2).mean())


def fully_connected(width: int, depth: int, n_out: int, w_std: float, b_std: float | None, *, activation=None,
                    parameterization: str = "ntk", readout_w_std: float | None = None, dropout: float = 0.0):
    """``depth`` hidden Dense(width) > activation blocks (ReLU unless ``activation``, a layer class, is
    given), Dropout(dropout) when positive, and a Dense(n_out) readout; every Dense has (w_std, b_std)
    in ``parameterization`` (the readout ``readout_w_std`` when given). The experiments' one network."""
    from ...engine.layers import Dense, Dropout, Relu, serial

    act = activation or Relu

    def dense(n, w):
        return Dense(n, w_std=w, b_std=b_std, parameterization=parameterization)

    hidden = [layer for _ in range(depth) for layer in (dense(width, w_std), act())]
    tail = [Dropout(dropout)] if dropout > 0 else []
    return serial(*hidden, *tail, dense(n_out, w_std if readout_w_std is None else readout_w_std))


def derived_seed(seed: int, *keys: int) -> int:
    """A reproducible seed for one sub-task, from the run's seed and integer keys."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0] >> 2)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (reports are written to files)."""
    from ...core.extras import require

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

    from ...finite.montecarlo import monte_carlo_kernel

    exact = make_net(1).kernel(x)
    errs: dict = {"nngp": [], "ntk": []}
    for width in tqdm(widths, desc="Monte Carlo kernels", disable=not progress, leave=False):
        mc = monte_carlo_kernel(make_net(width), x, n_samples=n_samples, seed=derived_seed(seed, 7, width))
        for name, mean, se, k in (("nngp", mc.nngp, mc.nngp_stderr, exact.nngp), ("ntk", mc.ntk, mc.ntk_stderr, exact.ntk)):
            errs[name].append(float(((mean - k).norm() ** 2 + (mc.n_samples - 1) * se.norm() ** 2).sqrt() / k.norm()))
    slopes = {name: loglog_slope(widths, values) for name, values in errs.items()}
    return {"widths": list(widths), "errors": errs, "slopes": slopes}
