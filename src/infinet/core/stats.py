"""Statistics of repeated measurements: the one home of standard errors and fitted slopes.

Used by Monte Carlo kernels, sampled layers, simulations and the experiments, so every reported
"± s.e." means the same thing: the sample standard deviation (Bessel's correction, ddof = 1) over
sqrt(n), the standard error of the mean of n independent values; and every slope is ordinary least
squares with the usual standard error sqrt(s^2 / sum (x - mean x)^2), s^2 = RSS / (n - 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mean_and_stderr(values, dim: int | None = None):
    """Sample mean and its standard error, sd (ddof = 1) / sqrt(n).

    ``dim=None``: ``values`` is a sequence of numbers; returns two floats (standard error 0 for a single
    value). ``dim`` given: ``values`` is a tensor (or a list of equal-shape tensors, stacked along ``dim``)
    of at least 2 independent replicates along ``dim``; returns (mean, standard error) tensors."""
    if dim is None:
        a = np.asarray(values, dtype=np.float64)
        if a.size < 2:
            return float(a.mean()), 0.0
        return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))
    stack = torch.stack(list(values), dim) if isinstance(values, (list, tuple)) else values
    n = stack.shape[dim]
    if n < 2:
        raise ValueError("standard errors need at least 2 replicates")
    return stack.mean(dim), stack.std(dim, correction=1) / math.sqrt(n)


def slope(x, y) -> tuple[float, float]:
    """Least-squares slope of y against x and its standard error (NaN with fewer than 3 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if x.size > 2:
        sigma2 = float(np.sum((y - design @ coef) ** 2)) / (x.size - 2)
        se = math.sqrt(sigma2 / float(np.sum((x - x.mean()) ** 2)))
    else:
        se = float("nan")
    return float(coef[0]), se


def loglog_slope(x, y) -> tuple[float, float]:
    """Least-squares slope of log y against log x and its standard error (a power law's exponent)."""
    return slope(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)))


__all__ = ["loglog_slope", "mean_and_stderr", "slope"]
