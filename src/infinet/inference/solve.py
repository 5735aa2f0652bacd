"""Linear algebra for kernel predictions that never fails silently.

* :func:`check_kernel_matrix`: finite, square, symmetric (a clear :class:`KernelMatrixError` otherwise);
* :func:`cholesky`: Cholesky factor of K + s I with s = diag_reg x mean(diag K), escalating a jitter by
  factors of 10 when K is numerically singular (a warning reports what was added), and an error
  when K is not positive semi-definite beyond round-off;
* :func:`eigh_psd`: eigendecomposition with the same PSD check (negative round-off clipped to 0);
* :func:`conjugate_gradient`: matrix-free preconditioned CG (Hestenes and Stiefel 1952) for
  (K + s I) x = b, with a low-rank-plus-shift preconditioner applied by the Woodbury identity, its
  factor from a randomized Nystrom sketch (Tropp et al. 2017; Frangella, Tropp and Udell 2023) or a
  pivoted Cholesky (Harbrecht, Peters and Schneider 2012; Gardner et al. 2018, GPyTorch); K may be a
  dense tensor or only available tile by tile (:class:`TiledKernel`). It never forms an inverse.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..engine.tiles import TilePlan, tile_ranges
from ..core.checks import all_finite, check_int


class KernelMatrixError(ValueError):
    """A kernel matrix that is not finite, not square, not symmetric or not positive semi-definite."""


class JitterWarning(UserWarning):
    """Extra diagonal jitter was needed to factor a kernel matrix."""


PSD_TOLERANCE = 1e-8  # relative to the largest eigenvalue


def check_kernel_matrix(k: Tensor, name: str = "kernel") -> Tensor:
    """Validate a square, finite, symmetric kernel matrix; return it in float64 or wider."""
    if not isinstance(k, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(k).__name__}")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise KernelMatrixError(f"{name} must be square (N, N), got {tuple(k.shape)}")
    k = k.to(torch.promote_types(k.dtype, torch.float64))
    plain = k.detach()
    scale = float(torch.linalg.vector_norm(plain, float("inf"))) if k.numel() else 0.0  # NaN where one is
    if not math.isfinite(scale):
        raise KernelMatrixError(f"{name} contains NaN or inf")
    asymmetry = _max_asymmetry(plain) if k.numel() else 0.0
    if asymmetry > 1e-10 * max(scale, 1e-300):
        raise KernelMatrixError(f"{name} is not symmetric (max |K - K^T| = {asymmetry:.3g})")
    return k


def _max_asymmetry(k: Tensor, block: int = 256) -> float:
    """max |K - K^T|. On the CPU block by block, each pair of mirrored blocks once while both are in cache (a
    transposed pass over a large matrix misses the cache at every entry: 10x slower at N = 3,000)."""
    if k.device.type != "cpu":
        return float((k - k.T).abs().max())
    worst = k.new_zeros(())
    for i in range(0, len(k), block):
        for j in range(i, len(k), block):
            worst = torch.maximum(worst, (k[i:i + block, j:j + block] - k[j:j + block, i:i + block].T).abs().max())
    return float(worst)


def regularized(k: Tensor, diag_reg: float | Tensor) -> Tensor:
    """K + diag_reg x mean(diag K) I (the design notes' relative diagonal regularization).

    ``diag_reg`` may be a 0-dim tensor (differentiable, for hyperparameter fitting)."""
    value = float(diag_reg.detach()) if isinstance(diag_reg, Tensor) and diag_reg.ndim == 0 else diag_reg
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")
    if value == 0:
        return k
    return k + diag_reg * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype, device=k.device)


def cholesky(k: Tensor, diag_reg: float = 0.0, max_tries: int = 8, name: str = "kernel") -> tuple[Tensor, float]:
    """Lower Cholesky factor of K + s I, s = diag_reg x mean(diag K), and the relative regularization
    actually used. If K + s I is numerically singular, a jitter starting at 1e-12 x mean(diag K) is
    added and multiplied by 10 until the factorization succeeds (at most ``max_tries`` times), with a
    :class:`JitterWarning`; a matrix with an eigenvalue below -1e-8 x lambda_max is rejected."""
    k = check_kernel_matrix(k, name)
    mean_diag = float(k.detach().diagonal().mean()) if len(k) else 1.0
    if mean_diag <= 0 and len(k):
        raise KernelMatrixError(f"{name} has a non-positive mean diagonal ({mean_diag:.3g}); not a kernel matrix")
    base = float(diag_reg.detach()) if isinstance(diag_reg, Tensor) else diag_reg
    jitter = 0.0
    for attempt in range(max_tries + 1):
        chol, info = torch.linalg.cholesky_ex(regularized(k, diag_reg + jitter if jitter else diag_reg))
        if int(info) == 0:
            if jitter:
                warnings.warn(f"{name}: added jitter {jitter:.1e} x mean diagonal to factor it "
                              f"(diag_reg={base}); pass a larger diag_reg to silence this", JitterWarning,
                              stacklevel=3)
            return chol, base + jitter
        if attempt == 0:
            require_psd(k.detach(), name)
        jitter = max(base, 1e-12) * 10 ** (attempt + (0 if base < 1e-12 else 1)) - base
    raise KernelMatrixError(f"{name} could not be factored even with diag_reg {base + jitter:.1e}")


def require_psd(k: Tensor, name: str) -> None:
    """Raise :class:`KernelMatrixError` naming ``name`` unless the symmetric ``k`` is positive semi-definite up to
    round-off: its smallest eigenvalue at least -PSD_TOLERANCE times the largest in magnitude."""
    evals = torch.linalg.eigvalsh(k)
    top = float(evals.abs().max()) if len(evals) else 0.0
    if float(evals.min()) < -PSD_TOLERANCE * max(top, 1e-300):
        raise KernelMatrixError(f"{name} is not positive semi-definite: smallest eigenvalue {float(evals.min()):.3g} "
                                f"vs largest {top:.3g}")


def eigh_psd(k: Tensor, name: str = "kernel") -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending, negative round-off clipped to 0) and eigenvectors of a PSD kernel matrix."""
    k = check_kernel_matrix(k, name)
    evals, evecs = torch.linalg.eigh(k)
    top = float(evals.abs().max()) if len(evals) else 0.0
    if len(evals) and float(evals.min()) < -PSD_TOLERANCE * max(top, 1e-300):
        raise KernelMatrixError(f"{name} is not positive semi-definite: smallest eigenvalue {float(evals.min()):.3g} "
                                f"vs largest {top:.3g}")
    return evals.clamp(min=0.0), evecs


# ---------------------------------------------------------------------------------------------------
# matrix-free solves
class TiledKernel:
    """A symmetric N x N kernel matrix available only block by block: ``block(rows, cols)`` returns
    K[rows, cols] for two slices (e.g. ``lambda r, c: net.kernel(x[r], x[c]).nngp``). Products stream
    the blocks (memory: one block at a time) and never hold the matrix."""

    def __init__(self, block: Callable[[slice, slice], Tensor], n: int, tile: int = 1024,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.block, self.n, self.tile, self.dtype, self.device = block, n, tile, dtype, device
        self._diag: Tensor | None = None

    def _slices(self):
        return tile_ranges(self.n, self.tile)

    def matmul(self, v: Tensor) -> Tensor:
        """K v over the tile engine's symmetric plan: each block on or above the diagonal is evaluated once
        and used twice (K[r, c] v[c] and K[r, c]^T v[r]), half the blocks of the full grid."""
        plan = TilePlan(self.n, self.n, self.tile, symmetric=True)
        out = torch.zeros(self.n, *v.shape[1:], dtype=v.dtype, device=v.device)
        for i, j in plan.tasks():
            r, c = plan.rows[i], plan.cols[j]
            block = self.block(r, c).to(v)
            out[r] += block @ v[c]
            if plan.mirrored(i, j):
                out[c] += block.T @ v[r]
        return out

    def diagonal(self) -> Tensor:
        if self._diag is None:
            self._diag = torch.cat([torch.diagonal(self.block(r, r)) for r in self._slices()]).to(self.dtype)
        return self._diag

    def column(self, j: int) -> Tensor:
        return torch.cat([self.block(r, slice(j, j + 1))[:, 0] for r in self._slices()]).to(self.dtype)


def _operator(k):
    if isinstance(k, TiledKernel):
        return k.matmul, k.diagonal, k.column, k.n
    k = check_kernel_matrix(k)
    return (lambda v: k @ v), (lambda: k.diagonal()), (lambda j: k[:, j]), len(k)


def pivoted_cholesky(diagonal: Tensor, column: Callable[[int], Tensor], rank: int, tol: float = 1e-12) -> Tensor:
    """Low-rank factor L (N x r, r <= rank) with K ~ L L^T, greedily pivoting on the largest remaining
    diagonal (Harbrecht, Peters and Schneider 2012, Algorithm 1); stops when the trace error is below
    ``tol`` x trace(K). Needs only K's diagonal and ``rank`` of its columns."""
    n = len(diagonal)
    d = diagonal.clone()
    trace = float(d.sum())
    cols = []
    for _ in range(min(rank, n)):
        i = int(torch.argmax(d))
        if float(d[i]) <= tol * max(trace, 1e-300) or float(d.sum()) <= tol * max(trace, 1e-300):
            break
        col = column(i).clone()
        for prev in cols:
            col -= prev * prev[i]
        col /= math.sqrt(float(d[i]))
        cols.append(col)
        d = (d - col * col).clamp_(min=0.0)
    return torch.stack(cols, 1) if cols else diagonal.new_zeros(n, 0)


def nystrom_factor(matmul: Callable[[Tensor], Tensor], n: int, rank: int, *, dtype: torch.dtype = torch.float64,
                   device=None, seed: int = 0) -> Tensor:
    """Low-rank factor L (N x r) with K ~ L L^T from one product of K with a random N x r test matrix:
    the stabilized randomized Nystrom approximation K<Omega> = (K Omega)(Omega^T K Omega)^+ (K Omega)^T
    (Tropp, Yurtsever, Udell and Cevher 2017, SIAM J. Matrix Anal. Appl., Algorithm 3; Frangella, Tropp and
    Udell 2023, Algorithm 2.1): Omega orthonormal Gaussian, a shift nu = eps x ||K Omega||_F keeps the
    small Cholesky factorization well posed and is removed from the eigenvalues afterwards. For a matrix
    streamed from disk this costs one pass (``rank`` columns at once), where pivoting needs ``rank``
    passes. Deterministic for a fixed ``seed``."""
    rank = min(rank, n)
    if rank <= 0:
        return torch.zeros(n, 0, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    omega = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=dtype)).Q.to(device)
    y = matmul(omega).to(dtype)
    nu = torch.finfo(dtype).eps * math.sqrt(n) * float(y.norm())
    y = y + nu * omega
    small = omega.T @ y
    chol, info = torch.linalg.cholesky_ex(0.5 * (small + small.T))
    if int(info) != 0:
        raise KernelMatrixError("the Nystrom sketch Omega^T K Omega is not positive definite: the kernel is not PSD")
    b = torch.linalg.solve_triangular(chol, y.T, upper=False).T  # y C^-T
    u, sing, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (sing**2 - nu).clamp(min=0.0)
    keep = lam > 0
    return u[:, keep] * lam[keep].sqrt()


PRECONDITIONERS = ("nystrom", "pivoted-cholesky", "none")


@dataclass
class CGReport:
    """How a conjugate-gradient solve went: iterations, relative residual per iteration, convergence,
    the preconditioner, and seconds spent building it and iterating."""

    iterations: int
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    preconditioner_rank: int = 0
    preconditioner: str = "nystrom"
    setup_seconds: float = 0.0
    seconds: float = 0.0


def _cg_progress(report: CGReport, tol: float, start: float) -> None:
    """One status line: iteration, residual, seconds per iteration and an ETA extrapolating the
    residual's geometric decrease over the last 10 iterations."""
    it, res = report.iterations, report.residuals
    per = (time.perf_counter() - start) / it
    eta = "?"
    back = min(10, it - 1)
    if back >= 1 and 0 < res[-1] < res[-1 - back]:
        rate = (math.log(res[-1 - back]) - math.log(res[-1])) / back
        eta = f"{max(math.log(res[-1] / tol), 0.0) / rate * per:.0f} s"
    print(f"\rCG iteration {it}  residual {res[-1]:.2e} (tol {tol:.0e})  {per:.2f} s/iteration  ETA {eta}   ",
          end="", file=sys.stderr, flush=True)


def _check_number(name: str, value, minimum: float, strict: bool = False) -> None:
    """A finite real number >= ``minimum`` (> with ``strict``), or a ValueError naming it."""
    if isinstance(value, Tensor) and value.ndim == 0:
        value = float(value.detach())
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


def _check_cg_options(preconditioner, preconditioner_rank, diag_reg, tol, max_iter) -> None:
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
    check_int(preconditioner_rank, "preconditioner_rank", 0)
    _check_number("diag_reg", diag_reg, minimum=0.0)
    _check_number("tol", tol, minimum=0.0, strict=True)
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")


def _woodbury_preconditioner(kind: str, rank: int, matmul, column, diag: Tensor, n: int, p_shift: float, b: Tensor):
    """(P^-1 as a function, L): P = L L^T + p_shift I with L of ``rank`` columns (``kind``: 'nystrom',
    'pivoted-cholesky' or 'none'), inverted by Woodbury, P^-1 v = (v - L (p_shift I + L^T L)^-1 L^T v) / p_shift."""
    if kind == "pivoted-cholesky":
        low = pivoted_cholesky(diag, lambda j: column(j).to(b), rank)
    elif kind == "nystrom":
        low = nystrom_factor(matmul, n, rank, dtype=b.dtype, device=b.device)
    else:
        low = b.new_zeros(n, 0)
    inner = torch.linalg.cholesky(p_shift * torch.eye(low.shape[1], dtype=b.dtype, device=b.device) + low.T @ low)

    def precondition(v):
        if low.shape[1] == 0:  # rank 0: plain CG
            return v.clone()
        return (v - low @ torch.cholesky_solve(low.T @ v, inner)) / p_shift

    return precondition, low


def _pcg_iterations(apply, precondition, b: Tensor, tol: float, max_iter: int, report: CGReport, progress: bool,
                    start: float) -> Tensor:
    """Preconditioned conjugate gradients on every column of ``b`` from x = 0, recording into ``report``."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    b_norm = b.norm(dim=0).clamp(min=1e-300)
    # columns already solved (zero right-hand sides, or converged) take no further steps: their
    # step sizes would be 0/0
    active = b.norm(dim=0) > 0
    for it in range(1, max_iter + 1):
        if not bool(active.any()):
            report.iterations, report.residuals, report.converged = it - 1, report.residuals + [0.0], True
            break
        q = apply(p)
        pq = (p * q).sum(0)
        if bool((pq[active] <= 0).any()) or not bool(torch.isfinite(pq).all()):
            raise KernelMatrixError("conjugate gradients met a direction of non-positive curvature (p^T (K + s I) p "
                                    "<= 0): the kernel is not positive definite")
        alpha = torch.where(active, rz / torch.where(active, pq, 1.0), 0.0)
        x += alpha * p
        r -= alpha * q
        col_rel = r.norm(dim=0) / b_norm
        rel = float(col_rel.max())
        report.iterations, report.residuals = it, report.residuals + [rel]
        if progress:
            _cg_progress(report, tol, start)
        if not math.isfinite(rel):
            raise KernelMatrixError("conjugate gradients diverged (NaN residual): the kernel is not positive definite")
        if rel <= tol:
            report.converged = True
            break
        active = active & (col_rel > tol)
        z = precondition(r)
        rz_new = (r * z).sum(0)
        p = z + torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0) * p
        rz = rz_new
    return x


def conjugate_gradient(
    k,
    b: Tensor,
    diag_reg: float = 0.0,
    *,
    tol: float = 1e-10,
    max_iter: int | None = None,
    preconditioner_rank: int = 100,
    preconditioner: str = "nystrom",
    progress: bool = False,
) -> tuple[Tensor, CGReport]:
    """Solve (K + s I) X = B, s = diag_reg x mean(diag K), by preconditioned conjugate gradients on
    all columns of B at once, to relative residual ``tol`` (every column); K is a tensor or a
    :class:`TiledKernel`. Preconditioner: P = L L^T + s I, inverted by Woodbury,
    P^-1 v = (v - L (s I + L^T L)^-1 L^T v) / s (s > 0; without regularization a tiny s = 1e-10 mean
    diag is used in P only), with L of rank ``preconditioner_rank`` from :func:`nystrom_factor`
    (``"nystrom"``: one extra product with ``rank`` columns; fewest iterations per rank in our tests),
    :func:`pivoted_cholesky` (``"pivoted-cholesky"``: ``rank`` columns of K read one by one) or none.
    ``progress`` prints iteration, residual, rate and ETA to stderr. Raises :class:`KernelMatrixError`
    on NaN or divergence."""
    _check_cg_options(preconditioner, preconditioner_rank, diag_reg, tol, max_iter)
    matmul, diagonal, column, n = _operator(k)
    if not all_finite(b):
        raise ValueError("the right-hand side contains NaN or inf")
    vector = b.ndim == 1
    b = (b[:, None] if vector else b).to(torch.float64)
    if len(b) != n:
        raise ValueError(f"right-hand side has {len(b)} rows for a {n} x {n} kernel")
    diag = diagonal().to(b)
    mean_diag = float(diag.mean())
    if not mean_diag > 0 or not bool(torch.isfinite(diag).all()):
        raise KernelMatrixError(f"the kernel's diagonal must be finite with a positive mean, got mean {mean_diag:.3g}")
    shift = diag_reg * mean_diag
    p_shift = shift if shift > 0 else 1e-10 * mean_diag
    setup = time.perf_counter()
    rank = 0 if preconditioner == "none" else preconditioner_rank
    if progress and rank:
        print(f"building the {preconditioner} preconditioner of rank {rank} ...", end="", file=sys.stderr, flush=True)
    precondition, low = _woodbury_preconditioner(preconditioner, rank, matmul, column, diag, n, p_shift, b)

    def apply(v):
        return matmul(v) + shift * v

    max_iter = max_iter or 10 * n
    report = CGReport(0, preconditioner_rank=low.shape[1], preconditioner=preconditioner,
                      setup_seconds=time.perf_counter() - setup)
    if progress and rank:
        print(f" {report.setup_seconds:.1f} s", file=sys.stderr, flush=True)
    start = time.perf_counter()
    x = _pcg_iterations(apply, precondition, b, tol, max_iter, report, progress, start)
    report.seconds = time.perf_counter() - start
    if progress:
        print(file=sys.stderr)
    if not report.converged:
        warnings.warn(f"conjugate gradients stopped after {report.iterations} iterations at relative residual "
                      f"{report.residuals[-1]:.2e} > tol {tol:.1e}", RuntimeWarning, stacklevel=2)
    return (x[:, 0] if vector else x), report


__all__ = ["CGReport", "JitterWarning", "KernelMatrixError", "PRECONDITIONERS", "TiledKernel", "check_kernel_matrix",
           "cholesky", "conjugate_gradient", "eigh_psd", "nystrom_factor", "pivoted_cholesky", "regularized"]
