"""Mean-field signal propagation in deep random networks (Poole et al. 2016; Schoenholz et al. 2017;
Hayou, Doucet and Rousseau 2019).

A fully-connected network with weights N(0, w_std^2 / n) and biases N(0, b_std^2) propagates, at infinite
width (with w_var = w_std^2, b_var = b_std^2; the public functions take ``w_std=`` and ``b_std=``), the length q and correlation c of pre-activations by

    length map       q' = w_var E[phi(u)^2] + b_var,                     u ~ N(0, q)      (Poole eq. 3)
    correlation map  c' = (w_var E[phi(u) phi(v)] + b_var) / q*,         (u, v) ~ N(0, q* [[1, c], [c, 1]])
    chi_1 = w_var E[phi'(u)^2] at q*   (slope of the correlation map at c = 1; Poole eq. 7)
    slope at c*: chi_c = w_var E[phi'(u) phi'(v)] at (q*, c*)
    chi_q = d q' / dq at q*,  xi_q = -1 / ln chi_q,  xi_c = -1 / ln chi_c   (Schoenholz eqs. 6, 9)

Every expectation comes from the activations' kernel maps (:mod:`infinet.gaussian`): closed forms or
quadrature, and derivatives by autograd through them. Backward: gradient norms change by chi_1 per
layer (Schoenholz et al. 2017, sec. 4), vanishing in the ordered phase (chi_1 < 1) and exploding in
the chaotic one (chi_1 > 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import brentq
from torch.func import vjp

from ..core.deprecation import variances_as_stds
from ..core.stats import mean_and_stderr
from ..engine.layers.combinators import serial
from ..engine.layers.dense import Dense
from ..finite.ensembles import built_layers, ensemble_forward, sample_ensemble
from ..engine import layers as _acts
from ..engine.layers.activations import Activation

#: the grid of q on which fixed points of the length map are bracketed
Q_GRID = np.logspace(-10, 10, 201)
CRITICAL_TOLERANCE = 1e-6
ACTIVATIONS = {"relu": _acts.Relu, "tanh": _acts.Tanh, "erf": _acts.Erf, "gelu": _acts.Gelu, "sigmoid": _acts.Sigmoid,
               "softplus": _acts.Softplus, "silu": _acts.Silu, "elu": _acts.Elu, "sin": _acts.Sin,
               "identity": lambda: _acts.Monomial(1)}


def activation(act: Activation | str) -> Activation:
    """An activation layer from an instance or a name (relu, tanh, erf, gelu, sigmoid, ...)."""
    if isinstance(act, Activation):
        return act
    if isinstance(act, str) and act.lower() in ACTIVATIONS:
        return ACTIVATIONS[act.lower()]()
    raise ValueError(f"unknown activation {act!r}; pass an infinet activation or one of {tuple(ACTIVATIONS)}")


def _check(w_var: float, b_var: float) -> None:
    for name, v in (("w_var", w_var), ("b_var", b_var)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def second_moment(act, q) -> torch.Tensor:
    """E[phi(u)^2], u ~ N(0, q) (elementwise over a tensor of q)."""
    return activation(act).diagonal(_t(q))


def _length_map(act, q, w_var: float, b_var: float) -> torch.Tensor:
    """q' = w_var E[phi(u)^2] + b_var."""
    return w_var * second_moment(act, q) + b_var


def _length_slope(act, q, w_var: float) -> float:
    """chi_q = d q' / dq = w_var d E[phi(u)^2] / dq, by autograd through the kernel map."""
    qt = _t(q).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(second_moment(act, qt), qt)
    return float(w_var * grad)


def _correlation_map(act, c, q: float, w_var: float, b_var: float) -> torch.Tensor:
    """c' = (w_var E[phi(u) phi(v)] + b_var) / q for (u, v) with variances q and correlation c (q = q*)."""
    c = _t(c)
    qt = torch.full_like(c, float(q))
    nngp, _ = activation(act).expectations(c * qt, qt, qt, need_kdot=False)
    return (w_var * nngp + b_var) / q


def _correlation_slope(act, c, q: float, w_var: float) -> torch.Tensor:
    """dc'/dc = w_var E[phi'(u) phi'(v)] (Price's theorem); at c = 1 this is chi_1."""
    c = _t(c)
    qt = torch.full_like(c, float(q))
    return w_var * activation(act).expectations(c * qt, qt, qt)[1]


def _chi_1(act, q: float, w_var: float) -> float:
    """chi_1 = w_var E[phi'(u)^2], u ~ N(0, q) (Poole et al. 2016, eq. 7)."""
    return float(_correlation_slope(act, 1.0, q, w_var))


@dataclass(frozen=True)
class LengthFixedPoints:
    """Stable fixed points of the length map, or why there is none.

    status: 'ok' (``stable`` non-empty), 'diverges' (q' > q for all large q: lengths grow without
    bound), 'marginal' (q' = q on a whole range: every length is preserved, e.g. ReLU at w_var = 2,
    b_var = 0), or 'none'.
    """

    stable: list[float]
    unstable: list[float]
    status: str


def _length_fixed_points(act, w_var: float, b_var: float) -> LengthFixedPoints:
    """All fixed points of the length map on (0, 1e10] (plus q = 0 when it is one), bracketed on a
    log grid and refined by Brent's method; stable when |d q'/dq| < 1."""
    _check(w_var, b_var)
    act = activation(act)
    gap = (_length_map(act, Q_GRID, w_var, b_var) - _t(Q_GRID)).numpy() / Q_GRID
    if np.all(np.abs(gap) < 1e-12):
        return LengthFixedPoints([], [], "marginal")
    stable, unstable = [], []
    at_zero = float(_length_map(act, 0.0, w_var, b_var))
    if at_zero == 0.0:  # q = 0 is a fixed point (phi(0) = 0 and no bias)
        (stable if abs(_length_slope(act, 1e-12, w_var)) < 1 else unstable).append(0.0)
    for i in range(len(Q_GRID) - 1):
        if gap[i] == 0.0 or gap[i] * gap[i + 1] < 0:
            root = Q_GRID[i] if gap[i] == 0.0 else brentq(
                lambda q: float(_length_map(act, q, w_var, b_var)) - q, Q_GRID[i], Q_GRID[i + 1], xtol=1e-15, rtol=1e-14)
            (stable if abs(_length_slope(act, root, w_var)) < 1 else unstable).append(float(root))
    if stable:
        return LengthFixedPoints(stable, unstable, "ok")
    return LengthFixedPoints([], unstable, "diverges" if gap[-1] > 0 else "none")


def _correlation_fixed_point(act, q: float, w_var: float, b_var: float) -> float:
    """The stable fixed point c* of the correlation map at length q: 1 when chi_1 <= 1, else the
    fixed point in [-1, 1) where the map crosses the diagonal from above (Poole et al. 2016, fig. 2)."""
    if _chi_1(act, q, w_var) <= 1.0 + CRITICAL_TOLERANCE:
        return 1.0
    grid = np.linspace(-1.0, 1.0 - 1e-6, 401)
    gap = (_correlation_map(act, grid, q, w_var, b_var) - _t(grid)).numpy()
    for i in range(len(grid) - 2, -1, -1):  # the largest crossing below 1 with gap going + -> -
        if gap[i] > 0 >= gap[i + 1]:
            return float(brentq(lambda c: float(_correlation_map(act, c, q, w_var, b_var)) - c, grid[i], grid[i + 1],
                                xtol=1e-15, rtol=1e-14))
    return float(grid[int(np.argmin(np.abs(gap)))])


@dataclass(frozen=True)
class MeanField:
    """Mean-field analysis of one (activation, w_var, b_var); see the module docstring. Quantities are
    NaN (and ``status`` says why) when no stable length exists."""

    w_var: float
    b_var: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    chi_q: float
    xi_q: float
    xi_c: float
    phase: str
    status: str
    fixed_points: LengthFixedPoints = field(repr=False, default=None)

    @property
    def w_std(self) -> float:
        """The weight standard deviation, sqrt(w_var)."""
        return math.sqrt(self.w_var)

    @property
    def b_std(self) -> float:
        """The bias standard deviation, sqrt(b_var)."""
        return math.sqrt(self.b_var)


def _depth_scale(chi: float) -> float:
    if not math.isfinite(chi) or chi <= 0:
        return math.nan
    if abs(chi - 1.0) < 1e-14:
        return math.inf
    return -1.0 / math.log(chi)


def _analyze(act, w_var: float, b_var: float) -> MeanField:
    """q*, c*, chi_1, the slope chi_c at c*, chi_q, xi_q, xi_c and the phase ('ordered': chi_1 < 1,
    'chaotic': chi_1 > 1, 'critical': |chi_1 - 1| < 1e-6) at the largest stable length."""
    act = activation(act)
    fps = _length_fixed_points(act, w_var, b_var)
    if fps.status == "marginal":  # every length is preserved; slopes at q = 1 (homogeneous activations)
        fps = LengthFixedPoints([1.0], [], "marginal")
    elif fps.status != "ok":
        nan = math.nan
        return MeanField(w_var, b_var, nan, nan, nan, nan, nan, nan, nan, "undefined", fps.status, fps)
    q = max(fps.stable)
    if q == 0.0:  # the zero fixed point: evaluate the slopes in the limit q -> 0
        q_eval = 1e-12
    else:
        q_eval = q
    c1 = _chi_1(act, q_eval, w_var)
    cs = 1.0 if q == 0.0 else _correlation_fixed_point(act, q_eval, w_var, b_var)
    chi_c = c1 if cs == 1.0 else float(_correlation_slope(act, cs, q_eval, w_var))
    chi_q = _length_slope(act, q_eval, w_var)
    phase = "critical" if abs(c1 - 1.0) < CRITICAL_TOLERANCE else ("ordered" if c1 < 1.0 else "chaotic")
    return MeanField(w_var, b_var, q, cs, c1, chi_c, chi_q, _depth_scale(chi_q), _depth_scale(chi_c), phase,
                     fps.status, fps)


def _edge_of_chaos(act, b_var: float, w_range: tuple[float, float] = (0.05, 20.0)) -> float:
    """w_var with _chi_1(q*(w_var, b_var), w_var) = 1 (the order-chaos boundary), by bracketing on a grid
    and Brent's method; NaN when there is none with a stable finite q* in ``w_range`` (ReLU with
    b_var > 0: its critical w_var = 2 makes lengths diverge; Hayou et al. 2019, prop. 1)."""
    act = activation(act)

    def excess(w):
        mf = _analyze(act, w, b_var)
        if mf.status not in ("ok", "marginal") or mf.q_star > 1e8:  # no stable finite length
            return math.nan
        return mf.chi_1 - 1.0

    grid = np.linspace(*w_range, 40)
    values = [excess(w) for w in grid]
    for i in range(len(grid) - 1):
        a, b = values[i], values[i + 1]
        if math.isfinite(a) and abs(a) < CRITICAL_TOLERANCE:
            return float(grid[i])
        if math.isfinite(a) and math.isfinite(b) and a * b < 0:
            return float(brentq(excess, grid[i], grid[i + 1], xtol=1e-13, rtol=1e-12))
        if math.isfinite(a) and not math.isfinite(b):  # the stable length ends here: critical only if bounded
            lo, hi = grid[i], grid[i + 1]
            for _ in range(45):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if math.isfinite(excess(mid)) else (lo, mid)
            q_start, q_end = _analyze(act, grid[i], b_var).q_star, _analyze(act, lo, b_var).q_star
            if abs(excess(lo)) < CRITICAL_TOLERANCE and q_end <= 100.0 * max(q_start, 1.0):
                return float(lo)
            return math.nan  # chi_1 reaches 1 only as the length diverges
    return math.nan


def _propagate(act, q0: float, c0: float, w_var: float, b_var: float, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Theory for the first ``depth`` layers: q^l by the length map and c^l by the joint map of a pair
    with equal lengths q^l (the correlation map at the current q, not q*); index 0 is the input."""
    act = activation(act)
    qs, cs = [q0], [c0]
    q, c = q0, c0
    for _ in range(depth):
        qt = _t([q])
        nngp, _ = act.expectations(_t([c * q]), qt, qt, need_kdot=False)
        q_new = float(_length_map(act, q, w_var, b_var))
        c = float((w_var * nngp[0] + b_var) / q_new)
        q = q_new
        qs.append(q)
        cs.append(c)
    return np.array(qs), np.array(cs)


def _gradient_growth(act, w_var: float, b_var: float, depth: int) -> np.ndarray:
    """Mean-field prediction of E||dL/dh^l||^2 / E||dL/dh^depth||^2 for l = 0..depth: chi_1^(depth - l)
    at the stable length (Schoenholz et al. 2017, eq. 14)."""
    mf = _analyze(act, w_var, b_var)
    return np.array([mf.chi_1 ** (depth - l) for l in range(depth + 1)])


def _simulate(act, q0: float, c0: float, w_var: float, b_var: float, depth: int, width: int = 1000,
             n_networks: int = 8, seed: int = 0, device=None, dtype: torch.dtype = torch.float32) -> dict:
    """Propagate a pair of inputs with length q0 and correlation c0 through ``n_networks`` independent
    random networks and backpropagate a random readout f = v . phi(h^depth) / sqrt(width), v ~ N(0, 1), of
    the first input. Each layer is the module ``serial(act, Dense(width, w_std, b_std)).build()`` returns,
    h^l = (w_std / sqrt(width)) W phi(h^(l-1)) + b_std b (weights N(0, w_var / width), biases N(0, b_var)),
    after an embedding Dense layer that gives the two inputs h^0 ~ N(0, q0) per unit with correlation c0,
    run on all networks at once (:mod:`infinet.finite.ensembles`). Returns per layer (0 = input) the means
    over networks and standard errors of q^l (mean square pre-activation), c^l and the squared gradient
    norm ||df / dh^l||^2 (delta^(l-1) from the layer's vector-Jacobian product, autograd through the module).

    Memory is one layer's weights at a time: each layer's weights come from their own seeded generator and
    are drawn again for the backward pass. The networks run in ``dtype`` (float32 by default: 4x faster
    sampling; its round-off is far below the standard errors of any feasible number of networks);
    statistics are accumulated in float64.
    """
    act = activation(act)
    if n_networks < 2:
        raise ValueError(f"n_networks must be >= 2 for standard errors, got {n_networks}")
    r, n = n_networks, width
    # the network serial(embed, repeat(block, depth)): h^0 = W_0 x for two inputs x in R^2 of length sqrt(q0)
    # and correlation c0, so that h^0 ~ N(0, q0) per unit; then h^l = block(h^(l-1))
    embed, block = built_layers([Dense(width, w_std=math.sqrt(2.0), b_std=None),
                                 serial(act, Dense(width, w_std=math.sqrt(w_var), b_std=math.sqrt(b_var)))], 2,
                                dtype=dtype, device=device)
    base = torch.Generator().manual_seed(int(seed))
    layer_seeds = torch.randint(0, 2**62, (depth + 2,), generator=base).tolist()

    def layer(l: int):  # the weights of layer l of every network (drawn again for the backward pass)
        return sample_ensemble(block, r, torch.Generator().manual_seed(int(layer_seeds[l])), dtype=dtype, device=device)

    x = math.sqrt(q0) * torch.tensor([[1.0, 0.0], [c0, math.sqrt(max(0.0, 1.0 - c0 * c0))]], dtype=dtype, device=device)
    hs = [ensemble_forward(embed, sample_ensemble(embed, r, base, dtype=dtype, device=device), x, shared_input=True)]
    for l in range(1, depth + 1):  # hs[l]: (R, 2, n), the two inputs' pre-activations in every network
        hs.append(ensemble_forward(block, layer(l), hs[-1]))
    v = torch.randn(r, n, generator=torch.Generator().manual_seed(int(layer_seeds[-1])), dtype=dtype).to(device)
    _, pullback = vjp(act.fn, hs[-1][:, 0])
    (delta,) = pullback(v / math.sqrt(n))
    grads = [None] * (depth + 1)
    grads[depth] = (delta**2).sum(1)
    for l in range(depth, 0, -1):
        params = layer(l)
        _, pullback = vjp(lambda h: ensemble_forward(block, params, h), hs[l - 1][:, :1])
        (delta,) = pullback(delta[:, None])
        delta = delta[:, 0]
        grads[l - 1] = (delta**2).sum(1)
    grads = [g.double() for g in grads]
    q, c = [], []
    for h in (h.double() for h in hs):
        q_pair = (h * h).mean(2)  # (R, 2)
        q.append(q_pair[:, 0])
        c.append((h[:, 0] * h[:, 1]).mean(1) / q_pair.prod(1).sqrt())

    def stats(rows):  # over the R networks, per layer
        mean, se = mean_and_stderr(torch.stack(rows), dim=1)
        return mean.cpu().numpy(), se.cpu().numpy()

    (qm, qse), (cm, cse), (gm, gse) = stats(q), stats(c), stats(grads)
    return {"q": qm, "q_se": qse, "c": cm, "c_se": cse, "grad_norm2": gm, "grad_norm2_se": gse}


__all__ = ["LengthFixedPoints", "MeanField", "activation", "analyze", "chi_1", "correlation_fixed_point", "critical_w_std",
           "correlation_map", "correlation_slope", "edge_of_chaos", "gradient_growth", "length_fixed_points",
           "length_map", "length_slope", "propagate", "second_moment", "simulate"]


# ---------------------------------------------------------------------------------------------------------------
# The public functions take weight and bias standard deviations, w_std= and b_std= (keyword-only), as every
# other part of infinet; the implementations above work in the variances w_var = w_std^2, b_var = b_std^2 of
# the mean-field literature. The old calls with variances keep working for one release and warn.
length_map = variances_as_stds(_length_map)
length_slope = variances_as_stds(_length_slope)
correlation_map = variances_as_stds(_correlation_map)
correlation_slope = variances_as_stds(_correlation_slope)
chi_1 = variances_as_stds(_chi_1)
length_fixed_points = variances_as_stds(_length_fixed_points)
correlation_fixed_point = variances_as_stds(_correlation_fixed_point)
analyze = variances_as_stds(_analyze)
propagate = variances_as_stds(_propagate)
gradient_growth = variances_as_stds(_gradient_growth)
simulate = variances_as_stds(_simulate)


def critical_w_std(act, *, b_std: float, w_std_range: tuple[float, float] = (0.05**0.5, 20.0**0.5)) -> float:
    """The weight standard deviation at the order-chaos boundary for bias standard deviation ``b_std``:
    chi_1(q*, w_std^2) = 1 (Poole et al. 2016; Schoenholz et al. 2017), searched in ``w_std_range``; NaN
    when none has a stable finite length (ReLU with b_std > 0; Hayou et al. 2019, prop. 1)."""
    if isinstance(b_std, bool) or not isinstance(b_std, (int, float)) or not math.isfinite(b_std) or b_std < 0:
        raise ValueError(f"b_std must be a finite number >= 0, got {b_std!r}")
    lo, hi = w_std_range
    w_var = _edge_of_chaos(act, float(b_std) ** 2, (lo * lo, hi * hi))
    return math.sqrt(w_var) if math.isfinite(w_var) else math.nan


def edge_of_chaos(act, b_var: float, w_range: tuple[float, float] = (0.05, 20.0)) -> float:
    """Deprecated: the critical weight variance; use :func:`infinet.meanfield.critical_w_std` (its square)."""
    import warnings

    warnings.warn("edge_of_chaos (variances) is deprecated: use critical_w_std(act, b_std=...), a standard "
                  "deviation; edge_of_chaos will be removed in infinet 0.3", DeprecationWarning, stacklevel=2)
    return _edge_of_chaos(act, b_var, w_range)
