"""Mercer spectra of network kernels on the unit sphere, and what they say about universality.

A fully-connected network's NNGP and NTK on unit-norm inputs are dot-product kernels,
K(x, x') = kappa(x . x'). On the sphere S^(d-1) every such kernel is diagonal in the spherical
harmonics (Funk-Hecke formula; Schoenberg 1942; Smola, Ovari and Williamson 2001):

    K(x, x') = sum_k mu_k sum_j Y_kj(x) Y_kj(x'),
    mu_k = (|S^(d-2)| / |S^(d-1)|) x integral over t in [-1, 1] of kappa(t) P_k(t) (1 - t^2)^((d-3)/2) dt,

P_k the Legendre (Gegenbauer) polynomial of degree k in dimension d with P_k(1) = 1, and mu_k the
eigenvalue of the integral operator on L2 of the uniform probability measure. The RKHS is dense in
C(S^(d-1)) (the kernel is universal) exactly when every mu_k > 0: a degree with mu_k = 0 is orthogonal
to every function the kernel can fit (Micchelli, Xu and Zhang 2006). A polynomial activation makes
kappa a polynomial, so all but finitely many mu_k vanish; two-layer ReLU networks without biases
lose the odd degrees k >= 3 (Bietti and Mairal 2019, Prop. 5), and odd activations without biases
(erf, tanh) all even degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from ..core.checks import check_int


@dataclass
class SphereSpectrum:
    """Mercer coefficients ``mu[name][k]`` (k = 0..degrees) of a network's kernels on S^(dim-1), with
    ``error[name][k]``, an upper estimate of each coefficient's quadrature error (the change from half
    the nodes), and ``vanishing[name]``, the degrees whose coefficient is zero within that error."""

    dim: int
    mu: dict
    error: dict
    vanishing: dict

    def universal(self, name: str) -> bool:
        """Whether no coefficient up to the computed degree vanishes (necessary for universality; with
        all higher degrees unexamined, not a proof of it)."""
        return not self.vanishing[name]


def _coefficients(kappa: np.ndarray, t: np.ndarray, w: np.ndarray, dim: int, degrees: int) -> np.ndarray:
    alpha = (dim - 2) / 2
    scale = math.gamma(dim / 2) / (math.sqrt(math.pi) * math.gamma((dim - 1) / 2))
    out = []
    for k in range(degrees + 1):
        # Gegenbauer C_k^alpha normalized to 1 at t = 1 (Legendre for dim 3)
        pk = special.eval_legendre(k, t) if dim == 3 else special.eval_gegenbauer(k, alpha, t) / special.eval_gegenbauer(k, alpha, 1.0)
        out.append(scale * float(np.sum(w * kappa * pk)))
    return np.asarray(out)


def sphere_spectrum(net, dim: int = 3, degrees: int = 12, nodes: int = 2000,
                    get: tuple[str, ...] = ("nngp", "ntk")) -> SphereSpectrum:
    """Mercer coefficients mu_0..mu_degrees of ``net``'s kernels on the unit sphere S^(dim-1) by the
    Funk-Hecke formula (module docstring), with Gauss-Jacobi quadrature of ``nodes`` points in t = x . x'
    (weight (1 - t^2)^((dim-3)/2)); kappa(t) is the kernel between e_1 and t e_1 + sqrt(1 - t^2) e_2.
    Valid for networks whose kernel depends on the inputs only through x . x' on the sphere (fully
    connected ones); a coefficient counts as vanishing when it is within 10x its quadrature error (the
    change from nodes / 2) plus 1e-12 max_k |mu_k| (rounding)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 3:
        raise ValueError(f"dim must be an integer >= 3 (the sphere S^(dim-1) of dimension >= 2), got {dim!r}")
    check_int(degrees, "degrees", 0)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2 * degrees + 2:
        raise ValueError(f"nodes must be an integer >= 2 degrees + 2 = {2 * degrees + 2}, got {nodes!r}")
    a = (dim - 3) / 2
    results = {}
    for n in (nodes, nodes // 2):
        t, w = special.roots_jacobi(n, a, a)
        x = np.zeros((n, dim))
        x[:, 0], x[:, 1] = t, np.sqrt(np.clip(1.0 - t * t, 0.0, None))
        e1 = np.zeros((1, dim))
        e1[0, 0] = 1.0
        k = net.kernel(torch.tensor(e1), torch.tensor(x), get=get)
        results[n] = {name: _coefficients(getattr(k, name)[0].numpy(), t, w, dim, degrees) for name in get}
    mu = results[nodes]
    error = {name: np.abs(mu[name] - results[nodes // 2][name]) for name in get}
    vanishing = {name: [k for k in range(degrees + 1)
                        if abs(mu[name][k]) <= 10 * error[name][k] + 1e-12 * float(np.abs(mu[name]).max())] for name in get}
    return SphereSpectrum(dim, {n: v.tolist() for n, v in mu.items()}, {n: v.tolist() for n, v in error.items()},
                          vanishing)
