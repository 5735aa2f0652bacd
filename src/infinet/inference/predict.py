"""Predictions of infinitely wide networks from their kernels.

``gp_inference``: the NNGP (or any kernel used as a GP prior) posterior mean and covariance.
``gradient_descent_mse_ensemble``: mean and covariance over random initializations of infinitely wide
networks trained by gradient flow on the MSE loss, at any list of times (Lee et al. 2019).
``gradient_descent_mse``: its mean on test points (the NTK case). ``linearized_dynamics``: one
network's linearized outputs under gradient flow, gradient descent or momentum.
``log_marginal_likelihood`` and ``fit_hyperparameters`` (from :mod:`infinet.fitting`): the evidence
of NNGP regression and its maximization over w_std, b_std and the noise.

Conventions (as in neural-tangents): loss = 1 / (2 * y_train.numel()) * sum (f - y)^2, learning
rate 1 unless given, so training time t equals learning rate x number of steps of gradient descent.
Everything runs in float64 on the kernels' device; ``diag_reg`` is relative to the mean diagonal.

One calling convention: every kernel argument is either a matrix (a tensor) or a :class:`~infinet.Kernel`,
and ``kernel='nngp'|'ntk'`` says which of a Kernel's matrices to use ("use this one"); ``get=`` is kept for
"compute these" (``net.kernel(x, get=...)``). ``gradient_descent_mse_ensemble(get=...)`` still works for
one release with a DeprecationWarning.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from ..core.deprecation import deprecated_keyword
from ..engine.kernel import Kernel
from .solve import KernelMatrixError, require_psd, check_kernel_matrix, cholesky, eigh_psd, regularized
from ..core.checks import all_finite, check_int


@dataclass(frozen=True)
class Posterior:
    """Posterior on the test points: ``mean`` (N_test, C) and ``cov`` (N_test, N_test) or None;
    with several times, a leading time axis on both."""

    mean: Tensor
    cov: Tensor | None


KERNELS = ("nngp", "ntk")


def _check_kernel_name(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be 'nngp' or 'ntk', got {kernel!r}")
    return kernel


def kernel_matrix(k: Tensor | Kernel | None, kernel: str, name: str) -> Tensor | None:
    """The matrix a kernel argument stands for: a tensor as it is, or the ``kernel`` ('nngp' or 'ntk') matrix
    of a :class:`~infinet.Kernel` (ValueError when that Kernel was computed without it)."""
    if k is None or isinstance(k, Tensor):
        return k
    if isinstance(k, Kernel):
        value = getattr(k, _check_kernel_name(kernel))
        if value is None:
            raise ValueError(f"{name}.{kernel} is needed (compute it with get=('nngp', 'ntk'))")
        se = getattr(k, kernel + "_se")
        if k.symmetric and se is not None:
            return psd_within_error(value, se, f"{name}.{kernel}")
        return value
    raise TypeError(f"{name} must be a torch.Tensor or an infinet Kernel, got {type(k).__name__}")


#: a sampled kernel's negative eigenvalues count as sampling error down to this many Frobenius norms of its
#: standard errors (the largest eigenvalue change a perturbation of that size can cause)
PSD_ERROR_MULTIPLE = 4.0


def psd_within_error(matrix: Tensor, se: Tensor, name: str = "kernel") -> Tensor:
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0) to a symmetric kernel
    estimated by sampling (:mod:`infinet.sampling`), whose entries carry standard errors ``se``: such an
    estimate is PSD only within its error. Raises :class:`~infinet.solve.KernelMatrixError` when an
    eigenvalue lies below -``PSD_ERROR_MULTIPLE`` x ||se||_F (Weyl: no perturbation of that size moves
    an eigenvalue further), which sampling error cannot explain."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    bound = PSD_ERROR_MULTIPLE * float(torch.linalg.matrix_norm(se))
    if float(values.min()) < -bound:
        raise KernelMatrixError(f"{name} has eigenvalue {float(values.min()):.3g}, below -{bound:.3g} (its sampling "
                                "error): it is not a kernel matrix")
    if float(values.min()) >= 0:
        return matrix
    projected = (vectors * values.clamp(min=0.0)) @ vectors.T
    return 0.5 * (projected + projected.T)


def noise_ridge(matrix: Tensor, se: Tensor) -> float:
    """A diagonal regularizer, relative to the mean diagonal (``diag_reg``), at the level of a sampled training
    kernel's noise: 2 sqrt(n) x the rms of its standard errors, the spectral norm of an n x n symmetric matrix of
    independent errors of that size (the semicircle law's edge), over the mean diagonal. A smaller ridge lets the
    solve fit the sampling noise in the kernel's small eigen-directions."""
    n = matrix.shape[0]
    return 2.0 * n**0.5 * float(se.pow(2).mean().sqrt()) / float(matrix.diagonal().mean())


def target_matrix(y_train: Tensor, n: int) -> tuple[Tensor, bool]:
    """Targets of ``n`` training points as an (n, C) matrix, and whether they came as a vector (n,); refuses
    other types, a wrong number of rows and NaN or inf."""
    if not isinstance(y_train, Tensor):
        raise TypeError(f"y_train must be a torch.Tensor, got {type(y_train).__name__}")
    vector = y_train.ndim == 1
    y = y_train[:, None] if vector else y_train
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"y_train must be ({n},) or ({n}, C), got {tuple(y_train.shape)}")
    if not all_finite(y):
        raise ValueError("y_train contains NaN or inf")
    return y.to(torch.promote_types(y.dtype, torch.float64)), vector


def _cross(k: Tensor, n: int, name: str) -> Tensor:
    if not isinstance(k, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(k).__name__}")
    if k.ndim != 2 or k.shape[1] != n:
        raise KernelMatrixError(f"{name} must be (N_test, {n}), got {tuple(k.shape)}")
    if not all_finite(k):
        raise KernelMatrixError(f"{name} contains NaN or inf")
    return k.to(torch.promote_types(k.dtype, torch.float64))


def _check(k_train_train: Tensor, k_test_train: Tensor, y_train: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    k = check_kernel_matrix(k_train_train, "k_train_train")
    ks = _cross(k_test_train, len(k), "k_test_train")
    y, vector = target_matrix(y_train, len(k))
    return k, ks, y, vector


def gp_inference(
    k_train_train: Tensor | Kernel,
    k_test_train: Tensor | Kernel,
    y_train: Tensor,
    k_test_test: Tensor | Kernel | None = None,
    diag_reg: float = 0.0,
    *,
    kernel: str = "nngp",
) -> Posterior:
    """GP posterior given kernel matrices (Rasmussen & Williams 2006, eqs. 2.23-2.24):

    mean = K(x*, X) (K(X, X) + s I)^-1 Y,  cov = K(x*, x*) - K(x*, X) (K(X, X) + s I)^-1 K(X, x*),

    with s = ``diag_reg`` x mean(diag K(X, X)) the observation noise. ``y_train`` is (N,) or (N, C)
    (outputs share the kernel); the covariance is returned when ``k_test_test`` (N_test, N_test) is
    given. Solved by Cholesky with jitter escalation (a warning says what was added); a kernel that
    is not positive semi-definite or holds NaN raises :class:`KernelMatrixError`. Kernel arguments are
    matrices or :class:`~infinet.Kernel` objects, of which the ``kernel`` matrix is used (default 'nngp').
    """
    k_train_train, k_test_train, k_test_test = (kernel_matrix(k, kernel, name) for k, name in (
        (k_train_train, "k_train_train"), (k_test_train, "k_test_train"), (k_test_test, "k_test_test")))
    k, ks, y, vector = _check(k_train_train, k_test_train, y_train)
    chol, _ = cholesky(k, diag_reg, name="k_train_train")
    mean = ks @ torch.cholesky_solve(y, chol)
    cov = None
    if k_test_test is not None:
        kss = check_kernel_matrix(k_test_test, "k_test_test")
        if kss.shape != (len(ks), len(ks)):
            raise KernelMatrixError(f"k_test_test must be ({len(ks)}, {len(ks)}), got {tuple(kss.shape)}")
        require_psd(kss, "k_test_test")
        v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
        cov = kss - v.T @ v
    return Posterior(mean[:, 0] if vector else mean, cov)


def log_marginal_likelihood(k_train_train: Tensor | Kernel, y_train: Tensor, diag_reg: float | Tensor = 0.0, *,
                            kernel: str = "nngp") -> Tensor:
    """Log evidence of GP regression with kernel K and noise s I, s = ``diag_reg`` x mean(diag K)
    (Rasmussen & Williams 2006, eq. 2.30), summed over the C columns of ``y_train`` (independent
    outputs sharing the kernel, zero prior mean):

        log p(Y | X) = -1/2 tr(Y^T (K + s I)^-1 Y) - C/2 log det(K + s I) - N C/2 log(2 pi).

    A 0-dim tensor; differentiable with respect to K (and so, through the kernel computation, to
    w_std and b_std given as tensors) and to a tensor ``diag_reg``. Factored by :func:`~infinet.solve.cholesky`
    (jitter escalation with a warning; a non-PSD or non-finite K raises :class:`KernelMatrixError`).
    """
    k_train_train = kernel_matrix(k_train_train, kernel, "k_train_train")
    k = check_kernel_matrix(k_train_train, "k_train_train")
    y, _ = target_matrix(y_train, len(k))
    chol, _ = cholesky(k, diag_reg, name="k_train_train")
    alpha = torch.linalg.solve_triangular(chol, y, upper=False)  # L^-1 Y: tr(Y^T K^-1 Y) = |L^-1 Y|^2
    n, c = y.shape
    log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (alpha * alpha).sum() - 0.5 * c * log_det - 0.5 * n * c * math.log(2.0 * math.pi)


def _times(t) -> tuple[Tensor, bool]:
    """Training times as a float64 vector, and whether a single time (a number, numpy scalar or 0-d
    tensor/array) was given."""
    single = isinstance(t, numbers.Real) or (isinstance(t, (Tensor, np.ndarray)) and t.ndim == 0)
    if isinstance(t, bool) or (single and not isinstance(t, numbers.Real) and t.dtype == torch.bool):
        raise ValueError(f"training times must be numbers >= 0 (inf allowed), got {t!r}")
    try:
        times = torch.as_tensor([float(t)] if single else [float(v) for v in t], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError(f"training times must be numbers >= 0 (inf allowed), got {t!r}") from None
    if times.ndim != 1 or len(times) == 0 or bool(torch.isnan(times).any()) or bool((times < 0).any()):
        raise ValueError(f"training times must be numbers >= 0 (inf allowed), got {t!r}")
    return times, single


def _flow_factor(evals: Tensor, time: float, rate: float) -> Tensor:
    """g(lambda) = (1 - exp(-rate lambda t)) / lambda, with its limits rate t at lambda -> 0 and 1/lambda
    (0 on the null space) at t = inf."""
    tol = float(evals.max()) * len(evals) * torch.finfo(evals.dtype).eps if len(evals) else 0.0
    small = evals <= tol
    if math.isinf(time):
        return torch.where(small, torch.zeros_like(evals), 1.0 / torch.where(small, torch.ones_like(evals), evals))
    x = rate * time
    return torch.where(small, torch.full_like(evals, x),
                       -torch.expm1(-x * evals) / torch.where(small, torch.ones_like(evals), evals))


def gradient_descent_mse(
    ntk_train_train: Tensor | Kernel,
    ntk_test_train: Tensor | Kernel,
    y_train: Tensor,
    t: float | Iterable[float] = math.inf,
    diag_reg: float = 0.0,
    learning_rate: float = 1.0,
    *,
    kernel: str = "ntk",
) -> Tensor:
    """Mean test prediction of infinitely wide networks trained by gradient flow on MSE (Lee et al.
    2019, eq. 9, with zero-mean initial outputs):

    mu_t(x*) = Theta(x*, X) Theta^-1 (I - exp(-eta Theta t / m)) Y,  m = y_train.numel(),

    from one eigendecomposition Theta = V diag(lambda) V^T for all times: the factor is
    V diag(-expm1(-eta lambda t / m) / lambda) V^T, whose lambda -> 0 limit eta t / m is used for
    (near-)zero eigenvalues; at t = inf it is the pseudo-inverse. Returns (N_test, C) for one time,
    (len(t), N_test, C) for a list (C dropped for vector targets). For covariances and the NNGP
    (readout-only) case see :func:`gradient_descent_mse_ensemble`. Kernel arguments are matrices or
    :class:`~infinet.Kernel` objects, of which the ``kernel`` matrix is used (default 'ntk').
    """
    theta = kernel_matrix(ntk_train_train, kernel, "ntk_train_train")
    theta_s = kernel_matrix(ntk_test_train, kernel, "ntk_test_train")
    return gradient_descent_mse_ensemble(theta, y_train, t, theta_s, diag_reg=diag_reg,
                                         learning_rate=learning_rate).mean


def _nngp_parts(need, k_train_train, k_test_train, k_test_test, n: int, evecs: Tensor):
    """The NNGP pieces of the ensemble covariance: K(x*, x*'), a factor F of V^T K(X, X) V = F F^T and
    V^T K(X, x*) (test points are the training points when ``k_test_train`` is None).

    F = V^T L with K(X, X) = L L^T (Cholesky) is one N^3 product where V^T K V is two, and the covariance's term
    (A F)(A F)^T is then positive semi-definite by construction; where K(X, X) is singular (no Cholesky factor),
    F is V^T K V itself and the term is A F A^T."""
    k = check_kernel_matrix(need(k_train_train, "k_train_train", "nngp"), "k_train_train.nngp")
    if k_test_train is None:
        k_s, k_ss = k, k
    else:
        k_s = _cross(need(k_test_train, "k_test_train", "nngp"), n, "k_test_train.nngp")
        k_ss = check_kernel_matrix(need(k_test_test, "k_test_test", "nngp"), "k_test_test.nngp")
        if k_ss.shape != (len(k_s), len(k_s)):
            raise KernelMatrixError(f"k_test_test must be ({len(k_s)}, {len(k_s)}), got {tuple(k_ss.shape)}")
    chol, info = torch.linalg.cholesky_ex(k)
    factor = (evecs.T @ chol, True) if int(info) == 0 else (evecs.T @ k @ evecs, False)
    return k_ss, factor, evecs.T @ k_s.T


def _descent_factor(evals: Tensor, steps: float, rate: float) -> Tensor:
    """g(lambda) = (1 - (1 - rate lambda)^k) / lambda for k steps of gradient descent (limit rate k at lambda
    -> 0), computed as -expm1(k log1p(-rate lambda)) / lambda where rate lambda < 1."""
    tol = float(evals.max()) * len(evals) * torch.finfo(evals.dtype).eps if len(evals) else 0.0
    small = evals <= tol
    x = rate * evals
    stable = x < 1
    power = torch.where(stable, -torch.expm1(steps * torch.log1p(-torch.where(stable, x, torch.zeros_like(x)))),
                        1.0 - (1.0 - x) ** steps)
    return torch.where(small, torch.full_like(evals, rate * steps), power / torch.where(small, torch.ones_like(evals), evals))


def _step_counts(steps) -> tuple[Tensor, bool]:
    single = isinstance(steps, (int, np.integer)) and not isinstance(steps, bool)
    values = [steps] if single else list(steps) if isinstance(steps, (list, tuple)) else None
    if values is None or not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                                           for v in values):
        raise ValueError(f"steps must be an integer >= 0 or a list of them, got {steps!r}")
    return torch.tensor([float(v) for v in values], dtype=torch.float64), single


def gradient_descent_mse_ensemble(
    k_train_train: Kernel | Tensor,
    y_train: Tensor,
    t: float | Iterable[float] | None = None,
    k_test_train: Kernel | Tensor | None = None,
    k_test_test: Kernel | Tensor | None = None,
    *,
    kernel: str = "ntk",
    compute_cov: bool = False,
    diag_reg: float = 0.0,
    learning_rate: float = 1.0,
    get: str | None = None,
    steps: int | Iterable[int] | None = None,
) -> Posterior:
    """Mean and covariance over random initializations of infinitely wide networks trained by gradient
    flow on the MSE loss above, at every time in ``t`` (default inf; Lee et al. 2019, eqs. 14-16), or with
    ``steps`` instead by that many steps of gradient descent with step ``learning_rate``: then
    T_k = Theta^-1 (I - (I - eta Theta / m)^k) (their Sec. 2.3, the discrete form of the same solution),
    the exact limit of finite networks trained by full-batch gradient descent at that step size. With Theta the
    NTK (``kernel='ntk'``: all layers train) or the NNGP K (``kernel='nngp'``: only the readout trains),
    m = y_train.numel(), eta the learning rate and T_t = Theta^-1 (I - exp(-eta Theta t / m)):

        mean_t(x*) = Theta(x*, X) T_t Y,
        cov_t(x*, x*') = K(x*, x*') - Theta(x*, X) T_t K(X, x*') - K(x*, X) T_t Theta(X, x*')
                         + Theta(x*, X) T_t K(X, X) T_t Theta(X, x*'),

    which for Theta = K reduces to K** - K*X K^-1 (I - exp(-2 eta K t / m)) KX*. t = 0 gives the prior
    (mean 0, cov K**), t = inf the kernel regression limit. One eigendecomposition Theta = V diag(l)
    V^T serves all times. ``k_test_train``/``k_test_test`` as :class:`~infinet.Kernel` objects with the
    kernels needed (both nngp and ntk for the NTK covariance); without them, predictions are on the
    training points. Returns a :class:`Posterior` with ``mean`` (T, N*, C) and ``cov`` (T, N*, N*)
    (no time axis for a single time; C dropped for vector targets). A matrix (tensor) in place of a Kernel
    stands for its ``kernel`` matrix: enough for the mean, and for the covariance when ``kernel='nngp'``.
    ``get=`` is the old name of ``kernel=`` (deprecated).
    """
    if get is not None:
        deprecated_keyword("gradient_descent_mse_ensemble", "get", "kernel", get,
                           " ('get' means 'compute these' elsewhere in infinet)")
        kernel = get
    get = _check_kernel_name(kernel)
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")

    def need(k, name, which):
        if isinstance(k, Tensor):
            if which != get:
                raise ValueError(f"{name} is a matrix, taken as the {get}; the covariance needs the nngp too: pass "
                                 "Kernel objects computed with get=('nngp', 'ntk')")
            return k
        if k is None:
            raise ValueError(f"{name}.{which} is needed (compute it with get=('nngp', 'ntk'))")
        return kernel_matrix(k, which, name)

    theta = check_kernel_matrix(need(k_train_train, "k_train_train", get), f"k_train_train.{get}")
    n = len(theta)
    y, vector = target_matrix(y_train, n)
    if steps is not None and t is not None:
        raise ValueError("give the training time t (gradient flow) or steps (gradient descent), not both")
    times, single = _step_counts(steps) if steps is not None else _times(math.inf if t is None else t)
    factor = _descent_factor if steps is not None else _flow_factor
    on_train = k_test_train is None
    theta_s = theta if on_train else _cross(need(k_test_train, "k_test_train", get), n, f"k_test_train.{get}")
    evals, evecs = eigh_psd(regularized(theta, diag_reg), f"k_train_train.{get}")
    rate = learning_rate / y.numel()
    if steps is not None and len(evals) and float(rate * evals.max()) >= 2.0 and float(times.max()) > 0:
        raise ValueError(f"learning_rate={learning_rate:g} is above the stable limit 2 m / lambda_max = "
                         f"{2.0 / float(evals.max()) * y.numel():g}: gradient descent diverges, its ensemble has no "
                         "finite value (see max_learning_rate)")
    a = theta_s @ evecs  # Theta(x*, X) V
    coeff_y = evecs.T @ y
    if compute_cov:
        k_ss, b, c = _nngp_parts(need, k_train_train, k_test_train, k_test_test, n, evecs)
    means, covs = [], []
    for time in times.tolist():
        g = factor(evals, time, rate)
        means.append(a @ (g[:, None] * coeff_y))
        if compute_cov:
            ag = a * g  # Theta(x*, X) T_t expressed in the eigenbasis
            cross = ag @ c
            f, is_factor = b
            af = ag @ f
            spread = af @ af.T if is_factor else af @ ag.T
            covs.append(k_ss - cross - cross.T + spread)
    mean = torch.stack(means)
    if vector:
        mean = mean[..., 0]
    cov = torch.stack(covs) if compute_cov else None
    if single:
        mean, cov = mean[0], (None if cov is None else cov[0])
    return Posterior(mean, cov)


def linearized_dynamics(
    ntk_train_train: Tensor,
    f0_train: Tensor,
    y_train: Tensor,
    *,
    ntk_test_train: Tensor | None = None,
    f0_test: Tensor | None = None,
    t: float | Iterable[float] | None = None,
    learning_rate: float = 1.0,
    steps: int | Iterable[int] | None = None,
    momentum: float = 0.0,
) -> Tensor:
    """Outputs of one linearized network f_lin(x; theta) = f0(x) + J(x)(theta - theta0) trained on the
    MSE loss above, from its (empirical or analytic) NTK and its initial outputs (Lee et al. 2019,
    eqs. 8-9). With r = f0(X) - Y and m = y.numel():

    * gradient flow (``t`` given): f_t(X) = Y + exp(-eta Theta t / m) r and
      f_t(x*) = f0(x*) - Theta(x*, X) Theta^-1 (I - exp(-eta Theta t / m)) r;
    * gradient descent (``steps`` given, momentum 0): residuals r_k = (I - eta Theta / m)^k r and
      f_k(x*) = f0(x*) - Theta(x*, X) sum_{j<k} (eta / m) r_j, by this recursion in Theta's eigenbasis;
    * heavy-ball momentum beta: the velocity recursion v_{k+1} = beta v_k - (eta / m) r_k,
      delta_{k+1} = delta_k + v_{k+1} in the eigenbasis (r_k = r + Theta delta_k).

    Returns outputs at every requested time or step count: (T, N, C) on the test points if given,
    else on the training points. Stable for eta < 2 m / lambda_max (:func:`max_learning_rate`).
    """
    theta = check_kernel_matrix(ntk_train_train, "ntk_train_train")
    n = len(theta)
    y, vector = target_matrix(y_train, n)
    f0, _ = target_matrix(f0_train, n)
    if (t is None) == (steps is None):
        raise ValueError("give exactly one of t (gradient flow) or steps (gradient descent)")
    if not (learning_rate > 0 and math.isfinite(learning_rate)) or not 0 <= momentum < 1:
        raise ValueError(f"need learning_rate > 0 and 0 <= momentum < 1, got {learning_rate!r}, {momentum!r}")
    test = ntk_test_train is not None
    if test and f0_test is None:
        raise ValueError("f0_test (the network's initial outputs on the test points) is needed with ntk_test_train")
    theta_s = _cross(ntk_test_train, n, "ntk_test_train") if test else theta
    base = target_matrix(f0_test, len(theta_s))[0] if test else f0
    evals, evecs = eigh_psd(theta, "ntk_train_train")
    rate = learning_rate / y.numel()
    r = evecs.T @ (f0 - y)  # initial residual in the eigenbasis
    a = theta_s @ evecs
    outs = []
    if t is not None:
        times, _ = _times(t)
        for time in times.tolist():
            outs.append(base - a @ (_flow_factor(evals, time, rate)[:, None] * r))
    else:
        counts = [steps] if isinstance(steps, int) else list(steps)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in counts):
            raise ValueError(f"steps must be integers >= 0, got {steps!r}")
        # delta: accumulated parameter-space step mapped to coefficients, f = f0 - Theta V delta_coeff
        delta, velocity, done = torch.zeros_like(r), torch.zeros_like(r), 0
        lam = evals[:, None]
        for target in sorted(set(counts)):
            for _ in range(target - done):
                residual = r - lam * delta
                velocity = momentum * velocity + rate * residual
                delta = delta + velocity
            done = target
            outs.append((target, base - a @ delta))
        lookup = dict(outs)
        outs = [lookup[k] for k in counts]
    out = torch.stack(outs)
    return out[..., 0] if vector else out


def gradient_descent_cross_entropy(
    ntk_train_train: Tensor,
    y_train: Tensor,
    t: float | Iterable[float],
    *,
    ntk_test_train: Tensor | None = None,
    f0_train: Tensor | None = None,
    f0_test: Tensor | None = None,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> Tensor:
    """Outputs of an infinitely wide (or linearized) network trained by gradient flow on the softmax
    cross-entropy loss L = (1/N) sum_i CE(softmax(f(x_i)), y_i), from its NTK and initial outputs
    (default 0, the mean of the prior): df(X)/dt = -(eta / N) Theta (softmax(f(X)) - Y), solved by a
    stiff implicit solver (scipy's BDF, Curtiss and Hirschfelder 1952) with the exact Jacobian
    -(eta / N) Theta (x) (diag p - p p^T). Test outputs follow without another ODE:
    f_t(x*) = f0(x*) + Theta(x*, X) Theta^+ (f_t(X) - f0(X)), since both integrate the same
    Theta-weighted gradient (Theta^+ the pseudo-inverse: f_t(X) - f0(X) lies in Theta's range).

    ``y_train``: (N, C) one-hot targets or (N,) integer labels. Returns logits (T, N, C) at the times
    ``t`` on the test points when ``ntk_test_train`` is given, else on the training points; softmax
    of them gives the predicted class probabilities. The Jacobian is dense, (N C)^2 float64 entries:
    meant for classification problems of up to a few thousand outputs N x C.
    """
    import numpy as np
    from scipy.integrate import solve_ivp

    theta = check_kernel_matrix(ntk_train_train, "ntk_train_train")
    n = len(theta)
    if y_train.ndim == 1:
        if y_train.dtype.is_floating_point or len(y_train) != n:
            raise ValueError(f"y_train must be ({n},) integer labels or ({n}, C) one-hot targets")
        y = torch.nn.functional.one_hot(y_train.long()).to(torch.float64)
    else:
        y, _ = target_matrix(y_train, n)
    c = y.shape[1]
    times, _ = _times(t)
    if bool(torch.isinf(times).any()):
        raise ValueError("cross-entropy training has no t = inf limit (the logits grow without bound); give finite times")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    f0 = torch.zeros(n, c, dtype=torch.float64) if f0_train is None else target_matrix(f0_train, n)[0]
    rate = learning_rate / n
    th, yy = theta.cpu().numpy(), y.cpu().numpy()

    def softmax(f):
        e = np.exp(f - f.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def rhs(_, z):
        return (-rate * th @ (softmax(z.reshape(n, c)) - yy)).ravel()

    def jac(_, z):
        p = softmax(z.reshape(n, c))
        s = np.einsum("jc,cd->jcd", p, np.eye(c)) - p[:, :, None] * p[:, None, :]  # per-example softmax Jacobian
        return (-rate * th[:, None, :, None] * s[None, :, :, :].transpose(0, 2, 1, 3)).reshape(n * c, n * c)

    order = torch.argsort(times)
    sol = solve_ivp(rhs, (0.0, float(times.max())), f0.cpu().numpy().ravel(), method="BDF", jac=jac,
                    t_eval=times[order].numpy(), rtol=rtol, atol=atol)
    if not sol.success:
        raise FloatingPointError(f"the ODE solver failed: {sol.message}")
    f_train = torch.empty(len(times), n, c, dtype=torch.float64)
    f_train[order] = torch.from_numpy(sol.y.T.reshape(-1, n, c).copy())
    f_train = f_train.to(theta.device)
    if ntk_test_train is None:
        return f_train
    theta_s = _cross(ntk_test_train, n, "ntk_test_train")
    base = torch.zeros(len(theta_s), c, dtype=torch.float64, device=theta.device) if f0_test is None \
        else target_matrix(f0_test, len(theta_s))[0]
    evals, evecs = eigh_psd(regularized(theta, diag_reg), "ntk_train_train")
    inverse = _flow_factor(evals, math.inf, 1.0)  # 1 / lambda, 0 on the null space (f_t - f0 lies in Theta's range)
    delta = (f_train - f0.to(theta.device)).permute(1, 0, 2).reshape(n, -1)
    coeff = (evecs @ (inverse[:, None] * (evecs.T @ delta))).reshape(n, len(times), c).permute(1, 0, 2)
    return base + theta_s @ coeff


def max_learning_rate(ntk_train_train: Tensor, n_outputs: int = 1) -> float:
    """The largest stable gradient-descent step for the MSE loss above: 2 m / lambda_max(Theta),
    m = N x n_outputs (the linearized dynamics diverge beyond it; Lee et al. 2019, Sec. 2.3)."""
    lam = float(torch.linalg.eigvalsh(ntk_train_train.to(torch.float64)).max())
    if not lam > 0:
        raise KernelMatrixError("the NTK has no positive eigenvalue")
    return 2.0 * ntk_train_train.shape[0] * n_outputs / lam


__all__ = ["KernelMatrixError", "Posterior", "gp_inference", "kernel_matrix", "log_marginal_likelihood", "gradient_descent_cross_entropy", "gradient_descent_mse",
           "gradient_descent_mse_ensemble",
           "linearized_dynamics", "max_learning_rate", "noise_ridge", "psd_within_error", "sampling_spread",
           "single_network_metrics"]


def single_network_metrics(posterior: Posterior, y_test: Tensor, labels: Tensor | None = None,
                           samples: int = 4000, seed: int = 0) -> dict:
    """What one network drawn from an ensemble with Gaussian outputs N(mean, cov) per output (the
    infinite-width ensemble of :func:`gradient_descent_mse_ensemble`, Lee et al. 2019, eqs. 14-16) scores on
    average: its expected test MSE exactly, E[mean_(i,c) (f_ic - y_ic)^2] = mean (mean - y)^2 + mean_i cov_ii
    (the squared error of the mean plus the variance of one network), and, with class ``labels``, its
    expected accuracy E[mean_i 1(argmax_c f_ic = label_i)] estimated from ``samples`` draws of every
    example's outputs (independent N(mean_ic, cov_ii) over classes c; the accuracy needs only these
    marginals) with the standard error of that estimate. Returns {"mse", "accuracy", "accuracy_se"}."""
    check_int(samples, "samples", 2)
    mean = posterior.mean if posterior.mean.ndim == 2 else posterior.mean[:, None]
    y = y_test if y_test.ndim == 2 else y_test[:, None]
    if posterior.cov is None or posterior.cov.ndim != 2 or mean.shape != y.shape:
        raise ValueError("single_network_metrics needs one time's posterior with its covariance (compute_cov=True) "
                         f"and targets of the mean's shape {tuple(mean.shape)}, got {tuple(y.shape)}")
    var = posterior.cov.diagonal().clamp(min=0.0)
    out = {"mse": float((mean - y).pow(2).mean() + var.mean())}
    if labels is not None:
        gen = torch.Generator(device=mean.device).manual_seed(seed)
        hits = []
        for start in range(0, samples, 500):
            draw = torch.randn((min(500, samples - start), *mean.shape), generator=gen, dtype=mean.dtype,
                               device=mean.device)
            f = mean + draw * var.sqrt()[:, None]
            hits.append((f.argmax(-1) == labels.to(mean.device)).to(mean.dtype).mean(-1))
        per_draw = torch.cat(hits)
        out["accuracy"] = float(per_draw.mean())
        out["accuracy_se"] = float(per_draw.std() / math.sqrt(samples))
    return out


def sampling_spread(predict: Callable[[Tensor, Tensor], Tensor], k_train: Kernel, k_test: Kernel,
                    kernel: str = "nngp", draws: int = 16, seed: int = 0) -> list[Tensor]:
    """Predictions from kernels redrawn within their sampling error, for kernels of networks with sampled
    layers (:mod:`infinet.sampling`): ``predict(K_train, K_test)`` on ``draws`` pairs of matrices
    K + E, E with independent entries N(0, se^2) (symmetric for the training kernel), from the standard
    errors the kernels carry (``nngp_se`` / ``ntk_se``); each redrawn training kernel is projected back onto
    the positive semi-definite matrices (:func:`psd_within_error`), where the kernel it estimates lies.
    The spread of any statistic of the returned
    predictions (an accuracy, an error) over the draws is its standard error due to sampling, to first
    order; treating the entries' errors as independent is an approximation (entries sampled with common
    points err together, which moves smooth statistics less). Kernels without standard errors give one
    prediction."""
    check_int(draws, "draws", 2)
    train, test = kernel_matrix(k_train, kernel, "k_train"), kernel_matrix(k_test, kernel, "k_test")
    se_train, se_test = getattr(k_train, kernel + "_se", None), getattr(k_test, kernel + "_se", None)
    if se_train is None and se_test is None:
        return [predict(train, test)]
    gen = torch.Generator(device=train.device).manual_seed(seed)
    out = []
    for _ in range(draws):
        noisy_train = train
        if se_train is not None:
            e = torch.randn(train.shape, generator=gen, dtype=train.dtype, device=train.device) * se_train
            e = torch.triu(e) + torch.triu(e, 1).T
            noisy_train = psd_within_error(train + e, 2.0**0.5 * se_train, "a redrawn k_train")
        noisy_test = test
        if se_test is not None:
            noisy_test = test + torch.randn(test.shape, generator=gen, dtype=test.dtype, device=test.device) * se_test
        out.append(predict(noisy_train, noisy_test))
    return out
