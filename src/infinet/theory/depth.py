"""Infinite depth at finite width: residual networks as diffusions (Hayou 2023, "On the infinite-depth
limit of finite-width neural networks", TMLR; Hayou and Yang 2023, "Width and depth limits commute in
residual networks", ICML).

The residual network of width n and depth L,

    Y_0 = W_in x,  Y_l = Y_{l-1} + L^(-1/2) W_l phi(Y_{l-1}),  (W_l)_ij ~ N(0, w_std^2 / n), (W_in)_ij ~ N(0, 1/d),

is, given Y_{l-1}, one Euler-Maruyama step of size 1/L of the diffusion (Hayou 2023, Thm. 1)

    dX_t = w_std n^(-1/2) |phi(X_t)| dB_t,   B an n-dimensional Brownian motion,

because W_l phi(Y) ~ N(0, w_std^2 |phi(Y)|^2 / n I). As L -> inf the network converges in law to X.
Closed forms used here: for phi = identity, Ito's formula for log|X| gives
log(|X_t| / |X_0|) ~ N((1/2 - 1/n) w_std^2 t, w_std^2 t / n) and E|X_t|^2 = |X_0|^2 exp(w_std^2 t);
for ReLU at width 1 and w_std = 1, X_t = X_0 exp(B_t - t/2) when X_0 > 0. Width-then-depth: the
covariance ODE dq_t(x, x')/dt = w_std^2 E[phi(U) phi(V)], (U, V) ~ N(0, Q_t) (Hayou and Yang 2023),
with the expectations from :mod:`infinet.gaussian` through the activations' kernel maps.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.stats import binom

from ..core.deprecation import renamed_keywords
from ..engine.layers.combinators import FanInSum, FanOut, Identity, parallel, serial
from ..engine.layers.dense import Dense
from ..finite.ensembles import built_layers, ensemble_forward, sample_ensemble
from ..core.stats import loglog_slope, mean_and_stderr
from .meanfield import activation as _activation


def resnet_layers(act, width: int, depth: int, *, w_std: float = 1.0, branch_scale: float | None = None):
    """The descriptions of the residual network of the module docstring: the embedding Dense(width, w_std=1,
    no bias), Y_0 = W_in x with (W_in)_ij ~ N(0, 1/d), and one residual block Y + branch_scale w_std n^(-1/2)
    W phi(Y) (branch_scale L^(-1/2) by default), as ``FanOut(2) > parallel(Identity(), act > Dense) >
    FanInSum()``. ``serial(embed, repeat(block, depth))`` is the whole network; its kernel is the
    width-then-depth limit."""
    scale = 1.0 / math.sqrt(depth) if branch_scale is None else branch_scale
    embed = Dense(width, w_std=1.0, b_std=None)
    block = serial(FanOut(2), parallel(Identity(), serial(_activation(act), Dense(width, w_std=w_std * scale, b_std=None))),
                   FanInSum())
    return embed, block


@renamed_keywords(sigma_w="w_std")
def simulate_resnet(act, width: int, depth: int, n_networks: int, *, w_std: float = 1.0, x: torch.Tensor | None = None,
                    seed: int = 0, dtype: torch.dtype = torch.float64, device=None, record_every: int = 1,
                    branch_scale: float | None = None) -> dict:
    """Simulate ``n_networks`` independent residual networks (the model in the module docstring) on the
    inputs ``x``: one input (d,) or several (m, d) sharing each network's weights (default: the single
    input of ones in R^width, so that Y_0 ~ N(0, |x|^2/d I) with |x|^2/d = 1).

    ``branch_scale`` multiplies each residual branch: L^(-1/2) by default (the scaling under which the
    depth limit exists); pass 1.0 to see what happens without it. The layers are the modules that
    :func:`resnet_layers` build, run on all networks at once (:mod:`infinet.finite.ensembles`). Returns ``t`` (l / L at the recorded layers), ``y`` (pre-activations,
    (T, R, n) for one input, (T, R, n, m) for several) and ``post_norm`` (|phi(Y_l)| per input, (T, R) or
    (T, R, m)).
    """
    act = _activation(act)
    if width < 1 or depth < 1 or n_networks < 1:
        raise ValueError(f"width, depth and n_networks must be >= 1, got {width}, {depth}, {n_networks}")
    gen = torch.Generator().manual_seed(int(seed))
    if x is None:
        x = torch.ones(width, dtype=dtype)  # |x|^2 / d = 1
    x = x.to(dtype)
    single = x.ndim == 1
    xs = (x[None] if single else x).to(device)  # (m, d)
    embed, block = built_layers(resnet_layers(act, width, depth, w_std=w_std, branch_scale=branch_scale), xs.shape[1],
                                dtype=dtype, device=device)
    y = ensemble_forward(embed, sample_ensemble(embed, n_networks, gen, dtype=dtype, device=device), xs,
                         shared_input=True)  # (R, m, n)
    ts, ys, norms = [0.0], [y.transpose(1, 2)], [act.fn(y).norm(dim=2)]
    for l in range(1, depth + 1):
        y = ensemble_forward(block, sample_ensemble(block, n_networks, gen, dtype=dtype, device=device), y)
        if l % record_every == 0 or l == depth:
            ts.append(l / depth)
            ys.append(y.transpose(1, 2))
            norms.append(act.fn(y).norm(dim=2))
    y_out, n_out = torch.stack(ys), torch.stack(norms)
    if single:
        y_out, n_out = y_out[..., 0], n_out[..., 0]
    return {"t": np.array(ts), "y": y_out, "post_norm": n_out}


@renamed_keywords(sigma_w="w_std")
def euler_maruyama(act, x0: torch.Tensor, *, w_std: float = 1.0, t_end: float = 1.0, steps: int = 100,
                   seed: int = 0) -> torch.Tensor:
    """Euler-Maruyama for dX = w_std n^(-1/2) |phi(X)| dB from x0 (R, n) to t_end in ``steps`` steps:
    X_(k+1) = X_k + w_std n^(-1/2) |phi(X_k)| sqrt(h) xi_k, xi_k ~ N(0, I). Returns X at t_end (R, n)."""
    act = _activation(act)
    gen = torch.Generator().manual_seed(int(seed))
    x = x0.clone()
    n = x.shape[-1]
    h = t_end / steps
    for _ in range(steps):
        xi = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        x = x + w_std / math.sqrt(n) * act.fn(x).norm(dim=-1, keepdim=True) * math.sqrt(h) * xi
    return x


@renamed_keywords(sigma_w="w_std")
def weak_error_identity(width: int, steps: Sequence[int], n_paths: int, *, w_std: float = 1.0, t_end: float = 1.0,
                        seed: int = 0) -> dict:
    """Weak convergence of Euler-Maruyama (equivalently, of depth-L networks with L = steps / t_end) for
    phi = identity, measured on E|X_T|^2 / |X_0|^2, whose exact value is exp(w_std^2 T): Monte Carlo
    estimates for each number of steps on common Brownian paths (coarse increments are sums of the
    finest), their errors against the exact value, and the order fitted from the differences between
    successive levels (which the common paths make nearly free of Monte Carlo noise; differences of
    an O(h^p) error scale as h^p). Euler-Maruyama has weak order 1 (Kloeden and Platen 1992,
    Thm. 14.5.2); here E|X_T^h|^2 = (1 + w_std^2 h)^(T/h) exactly, for comparison."""
    steps = sorted(steps)
    finest = steps[-1]
    if len(steps) < 3 or any(finest % s for s in steps):
        raise ValueError(f"give at least 3 numbers of steps, each dividing the largest ({finest}); got {steps}")
    gen = torch.Generator().manual_seed(int(seed))
    dw = torch.randn(finest, n_paths, width, generator=gen, dtype=torch.float64) * math.sqrt(t_end / finest)
    means, stderrs = [], []
    for s in steps:
        inc = dw.reshape(s, finest // s, n_paths, width).sum(1)  # the same paths at step t_end / s
        x = torch.zeros(n_paths, width, dtype=torch.float64)
        x[:, 0] = 1.0
        log_sq = torch.zeros(n_paths, dtype=torch.float64)
        for k in range(s):  # X <- X + (sigma/sqrt(n)) |X| dB, renormalized each step (the map is scale-free)
            x = x + w_std / math.sqrt(width) * x.norm(dim=1, keepdim=True) * inc[k]
            norm = x.norm(dim=1, keepdim=True)
            log_sq += 2 * norm[:, 0].log()
            x = x / norm
        g = log_sq.exp()
        mean, se = mean_and_stderr(g, dim=0)
        means.append(float(mean))
        stderrs.append(float(se))
    exact = math.exp(w_std**2 * t_end)
    h = np.array([t_end / s for s in steps])
    diffs = np.abs(np.diff(means))
    finer = slice(max(0, len(diffs) - 3), len(diffs))  # the asymptotic regime: the three finest differences
    order = loglog_slope(h[:-1][finer], diffs[finer])[0]
    return {"steps": steps, "h": h.tolist(), "means": means, "stderrs": stderrs, "exact": exact,
            "errors": [m - exact for m in means], "em_exact": [(1 + w_std**2 * t) ** (t_end / t) for t in h],
            "order": order}


@renamed_keywords(sigma_w="w_std")
def identity_log_norm_moments(width: int, w_std: float, t: float) -> tuple[float, float]:
    """Mean and variance of log(|X_t| / |X_0|) for phi = identity: ((1/2 - 1/n) w_std^2 t, w_std^2 t / n)
    (Ito's formula: d log|X| = (w_std/sqrt(n)) X.dB/|X| + w_std^2 (n - 2)/(2n) dt)."""
    return (0.5 - 1.0 / width) * w_std**2 * t, w_std**2 * t / width


@renamed_keywords(sigma_w="w_std")
def relu_post_activation_drift(width: int, w_std: float = 1.0) -> float:
    """Drift at t = 0 of log |phi(X_t)|^2 for ReLU, averaged over the initial sign pattern given that some
    unit is active: with k of the n coordinates positive, Ito's formula gives w_std^2 (k - 2) / n, and
    k ~ Binomial(n, 1/2) conditioned on k >= 1 (all-inactive networks are frozen). Negative for n <= 3,
    positive for n >= 4 (the change of regime of Hayou 2023, sec. 4)."""
    k = np.arange(1, width + 1)
    p = binom.pmf(k, width, 0.5)
    return float(w_std**2 * np.sum(p * (k - 2) / width) / p.sum())


@renamed_keywords(sigma_w="w_std")
def post_activation_drift_estimate(act, width: int, n_networks: int = 200000, depth: int = 1000, *, w_std: float = 1.0,
                                   seed: int = 0) -> tuple[float, float]:
    """Monte Carlo estimate (mean, standard error) of the drift of log |phi(Y)|^2 at t = 0 from the first
    residual step of ``n_networks`` random networks of depth ``depth`` (Y_0 = W_in x with Gaussian
    coordinates, networks with phi(Y_0) = 0 left out): (1/h) E[Delta log|phi|^2 - 2 phi(Y_0) . Delta Y / |phi(Y_0)|^2],
    h = 1/depth. The subtracted term has mean zero given Y_0 (a control variate for the martingale part),
    which leaves an O(1)-variance estimator instead of O(1/h). Valid for activations with phi' = 1 where
    phi > 0 and phi = 0 elsewhere (ReLU): then 2 phi . dY / |phi|^2 is the martingale part exactly."""
    act = _activation(act)
    gen = torch.Generator().manual_seed(int(seed))
    y0 = torch.randn(n_networks, width, generator=gen, dtype=torch.float64)
    phi0 = act.fn(y0)
    norm2 = (phi0 * phi0).sum(1)
    keep = norm2 > 0
    y0, phi0, norm2 = y0[keep], phi0[keep], norm2[keep]
    w = torch.randn(len(y0), width, width, generator=gen, dtype=torch.float64) * (w_std / math.sqrt(width))
    dy = (w @ phi0[..., None])[..., 0] / math.sqrt(depth)
    phi1 = act.fn(y0 + dy)
    change = torch.log((phi1 * phi1).sum(1) / norm2) - 2 * (phi0 * dy).sum(1) / norm2
    values = change * depth
    mean, se = mean_and_stderr(values, dim=0)
    return float(mean), float(se)


@renamed_keywords(sigma_w="w_std")
def covariance_ode(act, q0: np.ndarray, t_end: float = 1.0, *, w_std: float = 1.0, times: Sequence[float] | None = None,
                   rtol: float = 1e-12, atol: float = 1e-14) -> dict:
    """Width-then-depth limit: solve dq/dt = w_std^2 E[phi(U) phi(V)] for the 2 x 2 covariance of a pair
    of inputs, q = (q11, q12, q22), (U, V) ~ N(0, [[q11, q12], [q12, q22]]), by an adaptive Runge-Kutta
    method (DOP853) to ``rtol``. Returns times and q at them."""
    act = _activation(act)

    def rhs(_t, q):
        q11, q12, q22 = (torch.tensor([v], dtype=torch.float64) for v in q)
        cross, _ = act.expectations(q12, q11, q22, need_kdot=False)
        return [w_std**2 * float(act.diagonal(q11)[0]), w_std**2 * float(cross[0]), w_std**2 * float(act.diagonal(q22)[0])]

    t_eval = None if times is None else list(times)
    sol = solve_ivp(rhs, (0.0, t_end), list(map(float, q0)), method="DOP853", rtol=rtol, atol=atol, t_eval=t_eval)
    if not sol.success:
        raise RuntimeError(f"covariance ODE failed: {sol.message}")
    return {"t": sol.t, "q": sol.y.T}


@renamed_keywords(sigma_w="w_std")
def relu_correlation_rhs(c: float, w_std: float = 1.0) -> float:
    """For ReLU, the correlation c_t = q12 / sqrt(q11 q22) of the covariance ODE solves the closed-form ODE
    dc/dt = w_std^2 [(sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi) - c / 2] (and q_t(x, x) = q_0 e^(w_std^2 t / 2))."""
    c = min(1.0, max(-1.0, c))
    return w_std**2 * ((math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / (2 * math.pi) - 0.5 * c)


__all__ = ["resnet_layers", "covariance_ode", "euler_maruyama", "post_activation_drift_estimate", "weak_error_identity", "identity_log_norm_moments", "relu_correlation_rhs",
           "relu_post_activation_drift", "simulate_resnet"]
