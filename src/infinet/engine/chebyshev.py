"""Chebyshev interpolation on [-1, 1] with a built-in accuracy check (Trefethen 2013, "Approximation
Theory and Approximation Practice", chs. 3-4: coefficients from values at Chebyshev-Lobatto points,
evaluation by Clenshaw's recurrence, and the decay of the trailing coefficients as the error estimate).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def lobatto_points(n: int, dtype=torch.float64, device=None) -> Tensor:
    """The n + 1 points cos(pi j / n), j = 0..n (1 first, -1 last)."""
    j = torch.arange(n + 1, dtype=dtype, device=device)
    points = torch.cos(math.pi * j / n)
    points[0], points[-1] = 1.0, -1.0
    if n % 2 == 0:
        points[n // 2] = 0.0
    return points


def coefficients(values: Tensor) -> Tensor:
    """Chebyshev coefficients c_0..c_n of the interpolant through ``values`` (..., n + 1) taken at
    :func:`lobatto_points` (a type-I discrete cosine transform written as a matrix product)."""
    n = values.shape[-1] - 1
    j = torch.arange(n + 1, dtype=values.dtype, device=values.device)
    cos = torch.cos(math.pi * j[:, None] * j[None, :] / n)  # cos(pi k j / n)
    weights = torch.ones(n + 1, dtype=values.dtype, device=values.device)
    weights[0] = weights[-1] = 0.5
    c = (values * weights) @ cos.T * (2.0 / n)
    c[..., 0] *= 0.5
    c[..., -1] *= 0.5
    return c


def evaluate(c: Tensor, x: Tensor) -> Tensor:
    """sum_k c_k T_k(x) by Clenshaw's recurrence (``c`` 1-D, ``x`` any shape)."""
    b1 = torch.zeros_like(x)
    b2 = torch.zeros_like(x)
    two_x = 2.0 * x
    for k in range(len(c) - 1, 0, -1):
        b1, b2 = torch.addcmul(c[k] - b2, two_x, b1), b1
    return torch.addcmul(c[0] - b2, x, b1)


def fit(fn: Callable[[Tensor], Tensor], tol: float, sizes=(64, 128, 256), dtype=torch.float64,
        device=None) -> Tensor | None:
    """Coefficients (``(m, n + 1)`` for ``fn`` returning m functions of x, shape (m, len(x))) of an
    interpolant whose trailing quarter of coefficients is below ``tol`` x max|f| for every function,
    trying the degrees in ``sizes``; None when none is resolved (a kink or a singularity in [-1, 1])."""
    for n in sizes:
        values = fn(lobatto_points(n, dtype, device))
        c = coefficients(values)
        scale = values.abs().amax(dim=-1).clamp(min=torch.finfo(dtype).tiny)
        tail = c[..., -(n // 4):].abs().amax(dim=-1)
        if bool((tail <= tol * scale).all()):
            return c
    return None


def even_units(lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] rounded outward to even integers (at least 2 wide): the domain of an interpolant in log variance,
    so that every call whose range falls inside shares it and its values do not depend on earlier calls."""
    lo, hi = 2.0 * math.floor(lo / 2.0), 2.0 * math.ceil(hi / 2.0)
    return lo, (hi if hi > lo else lo + 2.0)
