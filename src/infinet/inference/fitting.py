"""Hyperparameter fitting by maximizing the marginal likelihood of NNGP (or NTK-GP) regression.

The kernel of any architecture is differentiable with respect to the weight and bias standard
deviations of its random affine layers (``Dense``, ``Conv``, ``ConvTranspose``) given as 0-dim
tensors: the kernel transforms are written with autograd-safe operations, the arc-cosine hot path has
finite derivatives at correlation +-1, and quadrature activations recompute each chunk in the
backward pass (bounded memory). :func:`fit_hyperparameters` optimizes log w_std, log b_std and log
diag_reg by L-BFGS or Adam with restarts (Rasmussen & Williams 2006, sec. 5.4.1).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..engine.layers.base import Layer, as_layer
from ..engine.layers.dense import check_std
from .predict import target_matrix, gp_inference, log_marginal_likelihood
from ..core.checks import check_int
from .solve import JitterWarning, KernelMatrixError
from ..engine.tiling import NonFiniteKernelError, compute_kernel
from ..engine.spec import parse_spec

OPTIMIZERS = ("lbfgs", "adam")
#: box on the log scale keeping every trial kernel finite: std in [1e-3, 1e3], diag_reg in [1e-10, 1e2]
LOG_STD_RANGE = (math.log(1e-3), math.log(1e3))
LOG_REG_RANGE = (math.log(1e-10), math.log(1e2))
#: a b_std of 0 cannot be represented on the log scale; fitting starts it here
ZERO_BIAS_START = 0.01


def affine_layers(net: Layer) -> list[Layer]:
    """The distinct layers with ``w_std`` / ``b_std`` (Dense, Conv, ConvTranspose) in ``net``, in
    depth-first order. A layer object used several times (``repeat``) appears once: its copies share
    their hyperparameters (each copy still has its own random weights)."""
    found: list[Layer] = []
    seen: set[int] = set()

    def visit(obj) -> None:
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
            return
        if not isinstance(obj, Layer) or id(obj) in seen:
            return
        seen.add(id(obj))
        if hasattr(obj, "w_std") and hasattr(obj, "b_std"):
            found.append(obj)
        for value in vars(obj).values():
            visit(value)

    visit(net)
    return found


@dataclass
class FitResult:
    """Outcome of :func:`fit_hyperparameters`.

    net: the architecture with the fitted w_std and b_std (plain numbers; ``repr`` is its spec).
    w_std, b_std: fitted values per affine layer (:func:`~infinet.inference.fitting.affine_layers` order; b_std None: no bias).
    diag_reg: fitted noise relative to the mean kernel diagonal (pass it to ``gp_inference``).
    log_marginal_likelihood: at the optimum, in nats (summed over points and outputs).
    restarts: one dict per restart: start and end values, log marginal likelihood, steps, status.
    history: -log marginal likelihood per point and output along the best restart (Adam: each step;
        L-BFGS: the best value after each function evaluation, line searches included).
    """

    net: Layer
    w_std: list[float]
    b_std: list[float | None]
    diag_reg: float
    log_marginal_likelihood: float
    restarts: list[dict] = field(default_factory=list)
    history: list[float] = field(default_factory=list)


class _Problem:
    """Maps a vector of log hyperparameters onto a private copy of the network and evaluates the loss."""

    def __init__(self, net, x, y, kernel, share, diag_reg, fit_diag_reg, tile_size):
        self.net = copy.deepcopy(net)
        self.layers = affine_layers(self.net)
        if not self.layers:
            raise ValueError(f"{net!r} has no layer with w_std / b_std to fit (Dense, Conv, ConvTranspose)")
        self.x, self.y, self.kernel, self.tile_size = x, y, kernel, tile_size
        self.share, self.fit_diag_reg = share, fit_diag_reg
        self.fixed_reg = float(diag_reg)
        self.biased = [i for i, layer in enumerate(self.layers) if layer.b_std is not None]
        log_w = [math.log(max(float(layer.w_std), 1e-3)) for layer in self.layers]
        log_b = [math.log(max(float(self.layers[i].b_std), ZERO_BIAS_START)) for i in self.biased]
        if share:
            log_w = [sum(log_w) / len(log_w)]
            log_b = [sum(log_b) / len(log_b)] if log_b else []
        self.n_w, self.n_b = len(log_w), len(log_b)
        start = log_w + log_b + ([math.log(max(diag_reg, 1e-10))] if fit_diag_reg else [])
        self.start = torch.tensor(start, dtype=torch.float64)
        self.count = y.numel()

    def values(self, theta: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor | float]:
        lo, hi = LOG_STD_RANGE
        w = torch.exp(theta[: self.n_w].clamp(lo, hi))
        b = torch.exp(theta[self.n_w: self.n_w + self.n_b].clamp(lo, hi))
        ws = [w[0]] * len(self.layers) if self.share else list(w)
        bs = ([b[0]] * len(self.biased) if self.share else list(b)) if self.n_b else []
        reg = torch.exp(theta[-1].clamp(*LOG_REG_RANGE)) if self.fit_diag_reg else self.fixed_reg
        return ws, bs, reg

    def loss(self, theta: Tensor) -> Tensor:
        """-log p(Y | X) / (N C) at ``theta``."""
        ws, bs, reg = self.values(theta)
        for layer, w in zip(self.layers, ws):
            layer.w_std = w
        for i, b in zip(self.biased, bs):
            self.layers[i].b_std = b
        k = compute_kernel(self.net, self.x, None, get=self.kernel, tile_size=self.tile_size, progress=False)
        return -log_marginal_likelihood(getattr(k, self.kernel), self.y, reg) / self.count

    def numbers(self, theta: Tensor) -> dict:
        ws, bs, reg = self.values(theta.detach())
        b_std: list[float | None] = [None] * len(self.layers)
        for i, b in zip(self.biased, bs):
            b_std[i] = float(b)
        return {"w_std": [float(w) for w in ws], "b_std": b_std, "diag_reg": float(reg)}


def fit_hyperparameters(
    net: Layer | str,
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "nngp",
    share: bool = True,
    diag_reg: float = 1e-2,
    fit_diag_reg: bool = True,
    optimizer: str = "lbfgs",
    steps: int = 50,
    learning_rate: float = 0.05,
    restarts: int = 3,
    seed: int = 0,
    tile_size: int | None = None,
) -> FitResult:
    """Maximize the log marginal likelihood of GP regression with the network's ``kernel`` ('nngp', or
    'ntk' used as a GP prior) over w_std, b_std and the relative noise ``diag_reg``.

    The objective is :func:`infinet.predict.log_marginal_likelihood` (Rasmussen & Williams 2006,
    eq. 2.30) with its gradient by autograd through the kernel computation. Parameters are optimized
    as logarithms, boxed to std in [1e-3, 1e3] and diag_reg in [1e-10, 1e2]: ``share=True`` fits one
    w_std and one b_std for all affine layers, ``share=False`` one per layer (:func:`~infinet.inference.fitting.affine_layers`;
    copies made by ``repeat`` share theirs). Layers with ``b_std=None`` keep no bias; a b_std of 0
    starts at 0.01. ``fit_diag_reg=False`` holds the noise at ``diag_reg``.

    ``optimizer``: 'lbfgs' (strong-Wolfe line search, up to ``steps`` iterations) or 'adam'
    (``steps`` steps of size ``learning_rate`` in log space). Restart 0 starts from the network's own
    values; restart r > 0 from them times exp(U(-1.5, 1.5)) per parameter (seeded by ``seed``). A
    restart whose kernel overflows or cannot be factored is recorded as failed with the reason; the
    best finished restart is returned. Cost per step: one kernel of ``x`` with its backward pass
    (memory about 30 N^2 floats for closed-form activations; fit on a subset for large N).
    """
    net = parse_spec(net) if isinstance(net, str) else as_layer(net)
    if kernel not in ("nngp", "ntk"):
        raise ValueError(f"kernel must be 'nngp' or 'ntk', got {kernel!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    for name, value in (("steps", steps), ("restarts", restarts)):
        check_int(value, name)
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not (isinstance(diag_reg, (int, float)) and math.isfinite(diag_reg) and diag_reg >= 0):
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    y, _ = target_matrix(y, len(x))
    problem = _Problem(net, x, y, kernel, share, diag_reg, fit_diag_reg, tile_size)
    gen = torch.Generator().manual_seed(int(seed))
    runs, best = [], None
    for r in range(restarts):
        theta0 = problem.start.clone()
        if r > 0:
            theta0 += (torch.rand(theta0.shape, generator=gen, dtype=torch.float64) * 3.0 - 1.5)
        record = {"restart": r, "start": problem.numbers(theta0)}
        try:
            theta, history = _optimize(problem, theta0, optimizer, steps, learning_rate)
            with torch.no_grad():
                final = float(problem.loss(theta))
            record.update(problem.numbers(theta), status="ok", steps=len(history),
                          log_marginal_likelihood=-final * problem.count)
            if best is None or final < best[0]:
                best = (final, theta, history)
        except (NonFiniteKernelError, KernelMatrixError) as err:
            record.update(status="failed", message=str(err).splitlines()[0])
        runs.append(record)
    if best is None:
        reasons = "; ".join(f"restart {run['restart']}: {run['message']}" for run in runs)
        raise KernelMatrixError(f"every restart failed ({reasons}); start from smaller w_std or larger diag_reg")
    final, theta, history = best
    fitted = problem.numbers(theta)
    return FitResult(
        net=_with_values(net, fitted["w_std"], fitted["b_std"]),
        w_std=fitted["w_std"], b_std=fitted["b_std"], diag_reg=fitted["diag_reg"],
        log_marginal_likelihood=-final * problem.count, restarts=runs, history=history,
    )


def _optimize(problem: _Problem, theta0: Tensor, optimizer: str, steps: int, learning_rate: float):
    theta = theta0.clone().requires_grad_(True)
    history: list[float] = []

    def closure():
        opt.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JitterWarning)  # trial points near singular K are expected
            loss = problem.loss(theta)
        loss.backward()
        if not bool(torch.isfinite(theta.grad).all()):
            raise KernelMatrixError(f"non-finite gradient of the marginal likelihood at {problem.numbers(theta)}")
        return loss

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, max_eval=4 * steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-12)
        evaluations: list[float] = []

        def recorded():
            loss = closure()
            evaluations.append(float(loss.detach()))
            return loss

        opt.step(recorded)
        history = _running_best(evaluations)
    else:
        opt = torch.optim.Adam([theta], lr=learning_rate)
        for _ in range(steps):
            history.append(float(closure().detach()))
            opt.step()
    return theta.detach(), history


def _running_best(values: list[float]) -> list[float]:
    out, best = [], math.inf
    for v in values:
        best = min(best, v)
        out.append(best)
    return out


def with_stds(net: Layer, w_std, b_std) -> Layer:
    """A copy of ``net`` whose affine layers (:func:`~infinet.inference.fitting.affine_layers`) take ``w_std`` and whose biased ones take
    ``b_std``: each a sequence (0-dim tensors keep the kernel differentiable in them) of one value shared by
    all layers or one value per layer. The home of the hyperparameter mapping of the GPyTorch and
    scikit-learn kernels."""
    out = copy.deepcopy(net)
    layers = affine_layers(out)
    biased = [layer for layer in layers if layer.b_std is not None]
    for name, values, targets in (("w_std", w_std, layers), ("b_std", b_std, biased)):
        if len(values) not in (1, len(targets)) and targets:
            raise ValueError(f"{name} must be one number or one per layer ({len(targets)}), got {len(values)} values")
        for i, layer in enumerate(targets):
            setattr(layer, name, values[0] if len(values) == 1 else values[i])
    return out


def _with_values(net: Layer, w_std: list[float], b_std: list[float | None]) -> Layer:
    """A copy of ``net`` with plain-number hyperparameters set on its affine layers."""
    out = copy.deepcopy(net)
    for layer, w, b in zip(affine_layers(out), w_std, b_std):
        layer.w_std = check_std("w_std", w, allow_none=False)
        layer.b_std = check_std("b_std", b, allow_none=True)
    return out


def ridge_by_leave_one_out(k_train_train: Tensor, y_train: Tensor, ridges=(1e-10, 1e-8, 1e-6, 1e-4, 1e-2)) -> tuple[float, list[float]]:
    """The ridge (relative to the mean diagonal, as ``diag_reg`` of :func:`infinet.predict.gp_inference`)
    with the smallest leave-one-out squared error of kernel ridge regression, and those errors per ridge.
    Closed form (Rasmussen and Williams 2006, eq. 5.12): with A = K + s I, the prediction for example i
    from the others misses y_i by [A^-1 y]_i / [A^-1]_ii. Ridges whose matrix is not positive definite
    in floating point count as infinitely bad; if none is, :class:`~infinet.solve.KernelMatrixError`."""
    k = torch.as_tensor(k_train_train)
    y, _ = target_matrix(torch.as_tensor(y_train, dtype=k.dtype), len(k))
    scale = float(k.diagonal().mean())
    scores = []
    for ridge in ridges:
        if not ridge >= 0:
            raise ValueError(f"ridges must be >= 0, got {ridge!r}")
        chol, info = torch.linalg.cholesky_ex(k + ridge * scale * torch.eye(len(k), dtype=k.dtype, device=k.device))
        if int(info):
            scores.append(math.inf)
            continue
        inverse = torch.cholesky_inverse(chol)
        residual = (inverse @ y) / inverse.diagonal()[:, None]
        value = float(residual.pow(2).mean())
        scores.append(value if math.isfinite(value) else math.inf)
    if all(math.isinf(s) for s in scores):
        raise KernelMatrixError(f"k_train_train is not positive definite in floating point at any ridge of {list(ridges)}")
    return float(ridges[scores.index(min(scores))]), scores


def kernel_regression_by_leave_one_out(k_train_train: Tensor, k_test_train: Tensor, y_train: Tensor,
                                       ridges=(1e-10, 1e-8, 1e-6, 1e-4, 1e-2)) -> tuple[Tensor, float]:
    """Kernel ridge regression's test mean K(x*, X) (K + s I)^-1 Y (:func:`infinet.predict.gp_inference`)
    with the ridge chosen by :func:`ridge_by_leave_one_out` on the training set alone; returns (mean, ridge)."""
    ridge, _ = ridge_by_leave_one_out(k_train_train, y_train, ridges)
    return gp_inference(k_train_train, k_test_train, y_train, diag_reg=ridge).mean, ridge
