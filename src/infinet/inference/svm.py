"""Support vector machines on precomputed infinite-width kernels (Arora, Du, Li, Salakhutdinov, Wang and Yu
2020, "Harnessing the power of infinitely wide deep nets on small-data tasks", Sec. 5).

The soft-margin SVM (Cortes and Vapnik 1995) on a kernel K solves, for each pair of classes (one-vs-one,
as libsvm, Chang and Lin 2011), the dual

    min_alpha 1/2 alpha^T Q alpha - 1^T alpha,  Q_ij = y_i y_j K_ij,  0 <= alpha_i <= C,  y^T alpha = 0,

with decision function f(x) = sum_i alpha_i y_i K(x, x_i) + b. :func:`fit_svc` uses scikit-learn's ``SVC``
(libsvm's SMO) except where libsvm is slow for a reason the structure of K removes: a kernel of low rank r
(the linear kernel x.x' of d features has r <= d) at large C, where SMO needs up to 10^8 iterations (an
hour for one fit on UCI ``bank``) while an interior-point method with the low-rank factor K = V V^T costs
O(n r^2) an iteration (Fine and Scheinberg 2001, "Efficient SVM training using low-rank kernel
representations", JMLR 2) and stops when every optimality residual is below 1e-8 max(1, C), well inside
libsvm's own tolerance of 1e-3 on the gradient: :class:`LowRankSVC`.
"""

from __future__ import annotations

import numpy as np

from ..core.extras import require

#: libsvm's kernel cache in MB; with a precomputed kernel it caches rows of K
CACHE_MB = 2000
#: a training kernel is solved by LowRankSVC when its numerical rank is at most this fraction of its size,
LOW_RANK_FRACTION = 0.25
#: it has at least this many examples (smaller problems are fast in libsvm at any C),
LOW_RANK_MIN = 200
#: and its rank is at most this (the interior point's steps cost O(n r^2))
LOW_RANK_MAX = 200


def low_rank_factor(kernel: np.ndarray, fraction: float = LOW_RANK_FRACTION) -> np.ndarray | None:
    """V (n, r) with K = V V^T up to round-off (eigenvalues above 10 n eps lambda_max kept), when n is at least
    :data:`LOW_RANK_MIN` and the numerical rank r at most ``fraction`` n and :data:`LOW_RANK_MAX`; else None.
    A full-rank kernel is recognized from a random subset of 2 r_max + 1 examples, without the whole
    eigendecomposition."""
    n = len(kernel)
    limit = min(fraction * n, LOW_RANK_MAX)
    if n < LOW_RANK_MIN:
        return None
    # cheap test first: the kernel of a subset has at most the whole kernel's rank
    subset = np.random.default_rng(0).choice(n, size=min(n, int(2 * limit) + 1), replace=False)
    if _rank(kernel[np.ix_(subset, subset)], n) > limit:
        return None
    values, vectors = np.linalg.eigh(0.5 * (kernel + kernel.T))
    keep = values > _threshold(values, n)
    if keep.sum() > limit:
        return None
    return vectors[:, keep] * np.sqrt(values[keep])


def _threshold(values: np.ndarray, n: int) -> float:
    """Eigenvalues at or below this are round-off: 10 n eps lambda_max."""
    return max(float(values[-1]), 0.0) * n * np.finfo(np.float64).eps * 10


def _rank(kernel: np.ndarray, n: int) -> int:
    values = np.linalg.eigvalsh(0.5 * (kernel + kernel.T))
    return int(np.sum(values > _threshold(values, n)))


def _binary_ipm(V: np.ndarray, y: np.ndarray, C: float, tol: float = 1e-8, max_iter: int = 200):
    """(alpha, b) of the binary soft-margin dual with Q = (y V)(y V)^T by a primal-dual path-following
    interior-point method (Newton steps by the Woodbury identity, O(n r^2) each), from a start that satisfies the
    dual equation. Converged when the complementarity gap per multiplier and every residual are below
    ``tol`` max(1, C); the best iterate is kept should round-off end the progress first (accepted within
    100 tol max(1, C)), else RuntimeError."""
    n, r = V.shape
    W = V * y[:, None]
    alpha = np.full(n, 0.5 * C)
    t = np.full(n, 0.5 * C)  # the slack C - alpha, kept as its own variable (no cancellation at large C)
    nu = 0.0
    grad = W @ (W.T @ alpha) - 1.0
    s = np.maximum(grad, 0.0) + 1.0  # s - u = grad: the start satisfies the dual equation exactly
    u = np.maximum(-grad, 0.0) + 1.0
    scale = max(1.0, C)
    best = None
    for _ in range(max_iter):
        grad = W @ (W.T @ alpha) - 1.0
        r_dual = grad + nu * y - s + u
        r_prim = y @ alpha
        r_box = alpha + t - C
        gap = alpha @ s + t @ u
        error = max(gap / n, np.abs(r_dual).max(), abs(r_prim) / n, np.abs(r_box).max()) / scale
        if best is None or error < best[0]:
            best = (error, alpha.copy(), nu)
        if error < tol or error > 1e6 * best[0]:  # converged, or round-off has taken over
            break
        mu = 0.1 * gap / (2 * n)
        D = s / alpha + u / t
        g = -r_dual + (mu / alpha - s) - (mu / t - u) - (u / t) * r_box
        inner = np.linalg.cholesky(np.eye(r) + (W / D[:, None]).T @ W)

        def solve(z):
            zd = z / D
            return zd - (W @ np.linalg.solve(inner.T, np.linalg.solve(inner, W.T @ zd))) / D

        mg, my = solve(g), solve(y)
        d_nu = (y @ mg + r_prim) / (y @ my)
        d_alpha = mg - my * d_nu
        d_t = -d_alpha - r_box
        d_s = (mu / alpha - s) - (s / alpha) * d_alpha
        d_u = (mu / t - u) - (u / t) * d_t
        step = 1.0
        for value, delta in ((alpha, d_alpha), (t, d_t), (s, d_s), (u, d_u)):
            neg = delta < 0
            if neg.any():
                step = min(step, 0.995 * float(np.min(-value[neg] / delta[neg])))
        alpha = alpha + step * d_alpha
        t = t + step * d_t
        nu += step * d_nu
        s = s + step * d_s
        u = u + step * d_u
    if best[0] > 100 * tol:
        raise RuntimeError(f"the low-rank SVM solver did not converge in {max_iter} iterations (C={C:g}, "
                           f"relative error {best[0]:.1e})")
    return best[1], best[2]


class LowRankSVC:
    """One-vs-one soft-margin SVM on a precomputed kernel of low rank (see the module docstring), with
    libsvm's conventions: for classes i < j, f_ij > 0 votes for i; the most votes win, ties to the lower
    class. ``fit(V, labels)`` with the factor V of the training kernel; ``predict`` and
    ``decision_function`` take the (m, n) kernel between test and training examples, like ``SVC``."""

    def __init__(self, C: float):
        self.C = float(C)

    def fit(self, V: np.ndarray, labels: np.ndarray) -> "LowRankSVC":
        self.classes_ = np.unique(labels)
        self.pairs_ = []
        for a in range(len(self.classes_)):
            for b in range(a + 1, len(self.classes_)):
                idx = np.flatnonzero((labels == self.classes_[a]) | (labels == self.classes_[b]))
                y = np.where(labels[idx] == self.classes_[a], 1.0, -1.0)
                alpha, bias = _binary_ipm(V[idx], y, self.C)
                self.pairs_.append((a, b, idx, alpha * y, bias))
        return self

    def _pair_values(self, kernel: np.ndarray) -> np.ndarray:
        return np.stack([kernel[:, idx] @ coef + bias for _, _, idx, coef, bias in self.pairs_], axis=1)

    def decision_function(self, kernel: np.ndarray) -> np.ndarray:
        """Binary: f (m,), positive for the second class as in ``SVC``; else scikit-learn's one-vs-rest
        shape (m, classes) made from the one-vs-one values."""
        values = self._pair_values(kernel)
        if len(self.classes_) == 2:
            return -values[:, 0]
        from sklearn.utils.multiclass import _ovr_decision_function

        return _ovr_decision_function(values < 0, -values, len(self.classes_))

    def predict(self, kernel: np.ndarray) -> np.ndarray:
        values = self._pair_values(kernel)
        votes = np.zeros((len(kernel), len(self.classes_)), dtype=np.int64)
        for column, (a, b, *_rest) in enumerate(self.pairs_):
            positive = values[:, column] > 0
            votes[positive, a] += 1
            votes[~positive, b] += 1
        return self.classes_[np.argmax(votes, axis=1)]


def at_bound(model, C: float) -> bool:
    """Whether any multiplier of a fitted SVM (``SVC`` or :class:`LowRankSVC`) sits at its upper bound C. When
    none does, the solution solves the problem for every larger C too (the box constraint is inactive at the
    optimum, Hastie, Rosset, Tibshirani and Zhu 2004, "The entire regularization path for the support vector
    machine", Sec. 3): a sweep over increasing C may reuse it."""
    if isinstance(model, LowRankSVC):
        coef = np.concatenate([np.abs(pair[3]) for pair in model.pairs_])
        return bool(coef.size and coef.max() >= C * (1 - 1e-6))
    return bool(model.dual_coef_.size and np.abs(model.dual_coef_).max() >= C * (1 - 1e-12))


def fit_svc(kernel: np.ndarray, labels: np.ndarray, C: float, factor: np.ndarray | None = None):
    """A fitted one-vs-one SVM on the (N, N) training kernel: :class:`LowRankSVC` when the kernel has low
    numerical rank (``factor``, from :func:`low_rank_factor`, may be passed when already computed; should the
    interior-point method not converge, libsvm takes over), else scikit-learn's ``SVC(kernel="precomputed", C=C)``. Both predict from the test-vs-training kernel."""
    if factor is None:
        factor = low_rank_factor(kernel)
    if factor is not None:
        try:
            return LowRankSVC(C).fit(factor, np.asarray(labels))
        except (RuntimeError, np.linalg.LinAlgError):
            pass  # a degenerate problem the interior-point method does not finish: libsvm solves it, slower
    SVC = require("sklearn.svm", "kernel SVMs").SVC
    return SVC(kernel="precomputed", C=float(C), cache_size=CACHE_MB).fit(kernel, labels)


__all__ = ["CACHE_MB", "LOW_RANK_FRACTION", "LOW_RANK_MAX", "LOW_RANK_MIN", "at_bound", "LowRankSVC", "fit_svc", "low_rank_factor"]
