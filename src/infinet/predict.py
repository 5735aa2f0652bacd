"""Predictions of infinitely wide networks from their kernels.

``gp_inference``: the NNGP (or any kernel used as a GP prior) posterior mean and covariance.
``gradient_descent_mse``: the mean prediction, over random initializations, of an infinitely wide
network trained by gradient flow on the MSE loss, at any training time (Lee et al. 2019).

Conventions (as in neural-tangents): loss = 1 / (2 * y_train.numel()) * sum (f - y)^2, learning
rate 1 unless given, so training time t equals learning rate x number of steps of gradient descent.
Everything runs in float64 on the kernels' device; ``diag_reg`` is relative to the mean diagonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor


class KernelMatrixError(ValueError):
    """A kernel matrix that is not finite, not square or not positive (semi-)definite."""


@dataclass(frozen=True)
class Posterior:
    """GP posterior on the test points: ``mean`` (N_test, C) and ``cov`` (N_test, N_test) or None."""

    mean: Tensor
    cov: Tensor | None


def _check(k_train_train: Tensor, k_test_train: Tensor, y_train: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    for name, m in (("k_train_train", k_train_train), ("k_test_train", k_test_train), ("y_train", y_train)):
        if not isinstance(m, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
        if not torch.isfinite(m).all():
            raise KernelMatrixError(f"{name} contains NaN or inf")
    n = k_train_train.shape[0]
    if k_train_train.ndim != 2 or k_train_train.shape[1] != n:
        raise KernelMatrixError(f"k_train_train must be square (N, N), got {tuple(k_train_train.shape)}")
    if k_test_train.ndim != 2 or k_test_train.shape[1] != n:
        raise KernelMatrixError(f"k_test_train must be (N_test, {n}), got {tuple(k_test_train.shape)}")
    vector = y_train.ndim == 1
    y = y_train[:, None] if vector else y_train
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"y_train must be ({n},) or ({n}, C), got {tuple(y_train.shape)}")
    dtype = torch.promote_types(k_train_train.dtype, torch.float64)
    return k_train_train.to(dtype), k_test_train.to(dtype), y.to(dtype), vector


def _regularize(k: Tensor, diag_reg: float) -> Tensor:
    if not (diag_reg >= 0 and math.isfinite(diag_reg)):
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")
    if diag_reg == 0:
        return k
    scale = k.diagonal().mean()
    return k + diag_reg * scale * torch.eye(len(k), dtype=k.dtype, device=k.device)


def gp_inference(
    k_train_train: Tensor,
    k_test_train: Tensor,
    y_train: Tensor,
    k_test_test: Tensor | None = None,
    diag_reg: float = 0.0,
) -> Posterior:
    """GP posterior given kernel matrices (Rasmussen & Williams 2006, eqs. 2.23-2.24):

    mean = K(x*, X) (K(X, X) + s I)^-1 Y,  cov = K(x*, x*) - K(x*, X) (K(X, X) + s I)^-1 K(X, x*),

    with s = ``diag_reg`` x mean(diag K(X, X)). ``y_train`` is (N,) or (N, C) (outputs share the
    kernel); the covariance is returned when ``k_test_test`` (N_test, N_test) is given. Solved by
    Cholesky; a matrix that is not positive definite raises :class:`KernelMatrixError`.
    """
    k, ks, y, vector = _check(k_train_train, k_test_train, y_train)
    chol, info = torch.linalg.cholesky_ex(_regularize(k, diag_reg))
    if int(info) != 0:
        raise KernelMatrixError("k_train_train (+ diag_reg) is not positive definite; "
                                "increase diag_reg (e.g. 1e-6 relative to the mean diagonal)")
    alpha = torch.cholesky_solve(y, chol)
    mean = ks @ alpha
    cov = None
    if k_test_test is not None:
        if k_test_test.shape != (len(ks), len(ks)):
            raise KernelMatrixError(f"k_test_test must be ({len(ks)}, {len(ks)}), got {tuple(k_test_test.shape)}")
        v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
        cov = k_test_test.to(k.dtype) - v.T @ v
    return Posterior(mean[:, 0] if vector else mean, cov)


def gradient_descent_mse(
    ntk_train_train: Tensor,
    ntk_test_train: Tensor,
    y_train: Tensor,
    t: float | Iterable[float] = math.inf,
    diag_reg: float = 0.0,
    learning_rate: float = 1.0,
) -> Tensor:
    """Mean test prediction of infinitely wide networks trained by gradient flow on MSE (Lee et al.
    2019, eq. 9, with zero-mean initial outputs):

    mu_t(x*) = Theta(x*, X) Theta^-1 (I - exp(-eta Theta t / m)) Y,  m = y_train.numel(),

    from one eigendecomposition Theta = V diag(lambda) V^T for all times: the factor is
    V diag(-expm1(-eta lambda t / m) / lambda) V^T, whose lambda -> 0 limit eta t / m is used for
    (near-)zero eigenvalues; at t = inf it is the pseudo-inverse. Returns (N_test, C) for one time,
    (len(t), N_test, C) for a list (C dropped for vector targets).
    """
    k, ks, y, vector = _check(ntk_train_train, ntk_test_train, y_train)
    times = torch.as_tensor([t] if isinstance(t, (int, float)) else list(t), dtype=k.dtype)
    if times.ndim != 1 or (times < 0).any() or torch.isnan(times).any():
        raise ValueError(f"training times must be >= 0, got {t!r}")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    k = _regularize(k, diag_reg)
    evals, evecs = torch.linalg.eigh(k)
    tol = evals.abs().max() * len(k) * torch.finfo(k.dtype).eps
    if evals.min() < -tol * 1e3:
        raise KernelMatrixError(f"ntk_train_train is not positive semi-definite (eigenvalue {float(evals.min()):.3g})")
    evals = evals.clamp(min=0.0)
    m = y.numel()
    proj_test = ks @ evecs  # (N_test, N)
    coeff_y = evecs.T @ y  # (N, C)
    out = []
    for time in times.tolist():
        if math.isinf(time):
            factor = torch.where(evals > tol, 1.0 / evals.clamp(min=tol), torch.zeros_like(evals))
        else:
            rate = learning_rate * time / m
            small = evals <= tol
            factor = torch.where(small, torch.full_like(evals, rate),
                                 -torch.expm1(-rate * evals) / torch.where(small, torch.ones_like(evals), evals))
        out.append(proj_test @ (factor[:, None] * coeff_y))
    result = torch.stack(out)
    if vector:
        result = result[..., 0]
    return result[0] if isinstance(t, (int, float)) else result


def max_learning_rate(ntk_train_train: Tensor, n_outputs: int = 1) -> float:
    """The largest stable gradient-descent step for the MSE loss above: 2 m / lambda_max(Theta),
    m = N x n_outputs (the linearized dynamics diverge beyond it; Lee et al. 2019, Sec. 2.3)."""
    lam = float(torch.linalg.eigvalsh(ntk_train_train.to(torch.float64)).max())
    if not lam > 0:
        raise KernelMatrixError("the NTK has no positive eigenvalue")
    return 2.0 * ntk_train_train.shape[0] * n_outputs / lam


__all__ = ["KernelMatrixError", "Posterior", "gp_inference", "gradient_descent_mse", "max_learning_rate"]
