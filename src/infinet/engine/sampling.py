"""Kernels of layers without closed forms, by sampling the small Gaussian vectors each layer reads.

At infinite width the pre-activations a layer reads are jointly Gaussian with the covariance the
kernel already holds (Lee et al. 2018; Novak et al. 2019; Yang 2019, "Tensor Programs I"). A layer
whose output at a position depends on a window of w inputs (max pooling) therefore has the output
kernel

    K'(x, o; x', o') = E[g(u) g(u')],  (u, u') ~ N(0, [[K(x, x)[W(o), W(o)], K(x, x')[W(o), W(o')]],
                                                    [K(x', x)[W(o'), W(o)], K(x', x')[W(o'), W(o')]]]),

an expectation over 2w dimensions per pair of examples and pair of positions, and with the chain
rule the NTK Theta' = E[sum_{a, b} dg/du_a dg'/du'_b Theta(a, b)]. This module draws those vectors
and averages the layer's own finite operation over them.

Rule: randomized quasi-Monte Carlo. Points of a scrambled Sobol sequence in 2w dimensions (Owen
scrambling, ``torch.quasirandom.SobolEngine``) are mapped to N(0, I) by the inverse normal CDF and to
the joint law by a symmetric square root of the 2w x 2w covariance (eigendecomposition, so singular
covariances, identical inputs or o = o', are exact). For the smooth-but-kinked integrands here
(a maximum, then an activation) this converges faster than plain Monte Carlo (error about n^-0.75
against n^-0.5 in our tests) and keeps the estimate unbiased. The same points serve every pair of
examples and of positions of one layer (common random numbers), so the sampled kernel is a smooth
function of its inputs.

Standard errors: the tile engine computes R independent replicates of the whole network (each with
its own scrambles of every sampled layer), returns their mean and the standard error of the mean,
sd / sqrt(R), for the NNGP and the NTK (``nngp_se`` and ``ntk_se`` of :class:`infinet.kernel.Kernel`).
Errors of several sampled layers therefore propagate through everything after them exactly, not by a
linearization.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.checks import check_int
from ..core.stats import mean_and_stderr

#: points per replicate and replicates, unless a layer says otherwise
DEFAULT_SAMPLES = 256
DEFAULT_REPLICATES = 8
#: replicates of a network whose values' joint laws are drawn (:mod:`infinet.engine.laws`): draws of products
#: of values are heavy-tailed, and with 16 replicates the standard error's own error is small (t with 15 dof)
LAW_REPLICATES = 16
#: evaluation points (pairs x samples x dimension) per chunk, to bound memory
CHUNK = 1 << 22


@dataclass
class SamplingState:
    """Which replicate a tile computes and a counter of sampled layer applications (so that each layer of
    a network draws its own points); carried by :class:`~infinet.Kernel` through the network."""

    seed: int
    replicate: int
    calls: int = 0
    #: values carry their joint laws (:mod:`infinet.engine.laws`): the network combines correlated values
    laws: bool = False

    def next_seed(self) -> int:
        """A 63-bit seed for the next sampled layer application of this replicate."""
        self.calls += 1
        digest = hashlib.blake2b(f"{self.seed}:{self.replicate}:{self.calls}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


def check_options(name: str, samples: int, replicates: int, seed: int) -> None:
    """Refuse a sampled layer's options unless samples >= 2, replicates >= 2 (for a standard error) and
    seed >= 0 are integers."""
    for label, value, low in (("samples", samples, 2), ("replicates", replicates, 2), ("seed", seed, 0)):
        check_int(value, f"{name} {label}", low)


def _parts(layer):
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from _parts(child)


def whole_batch(layer) -> bool:
    """Whether the network normalizes over the batch (:class:`~infinet.BatchNorm`): its kernel exists only
    among the examples of one batch, computed together."""
    return any(getattr(part, "batch_statistics", False) for part in _parts(layer))


def shared_batch(layer) -> bool:
    """Whether a layer of the network estimates its kernel with errors shared across the batch (a gated layer's
    batch estimator, :mod:`infinet.engine.layers.gated_batch`): the batch is then one symmetric computation."""
    return any(getattr(part, "shared_batch", False) for part in _parts(layer))


def check_whole_batch(layer, symmetric: bool, tile_size: int | None, n: int, masked: bool, graphs: bool) -> None:
    """Refuse what has no well-defined limit for a network with batch statistics (see
    :mod:`infinet.layers.batchnorm`)."""
    if not symmetric:
        raise ValueError("the network has BatchNorm: train-mode batch statistics define a kernel only among the "
                         "examples of one batch; compute net.kernel(x) of the whole batch, not x1 against x2")
    if tile_size is not None and tile_size < n:
        raise ValueError(f"the network has BatchNorm: its statistics need the whole batch of {n} examples in one "
                         f"tile, not tile_size={tile_size}")
    if masked or graphs:
        raise ValueError("the network has BatchNorm: padding masks and graphs are not supported with batch "
                         "statistics")


def plan(layer, input_shape=None) -> tuple[int, int, bool] | None:
    """(replicates, seed, laws) for a network with sampled layers (``sampled = True``) or, for inputs of
    per-example ``input_shape``, values whose joint law is drawn (:mod:`infinet.engine.laws`): the largest
    ``replicates`` among the sampled layers (else ``DEFAULT_REPLICATES``; at least ``LAW_REPLICATES`` with
    laws), a seed combining theirs, and
    whether laws are drawn; None when nothing is sampled."""
    found = [part for part in _parts(layer) if getattr(part, "sampled", False)]
    laws = input_shape is not None and layer.draws_laws(tuple(int(s) for s in input_shape))
    if not found and not laws:
        return None
    seed = int.from_bytes(hashlib.blake2b(repr([p.seed for p in found]).encode(), digest_size=8).digest(), "little")
    replicates = max([p.replicates for p in found] or [DEFAULT_REPLICATES])
    return (max(replicates, LAW_REPLICATES) if laws else replicates), seed >> 1, laws




def normal_points(n: int, dim: int, seed: int, dtype: torch.dtype, device) -> Tensor:
    """n points of a scrambled Sobol sequence in ``dim`` dimensions mapped to N(0, I) (n x dim)."""
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed % (2**62))
    u = engine.draw(n, dtype=torch.float64)
    tiny = 2.0 ** -53
    return torch.special.ndtri(u.clamp(tiny, 1.0 - tiny)).to(dtype=dtype, device=device)


def swap_symmetric(z: Tensor, w: int) -> Tensor:
    """The points ``z`` (n, 2w) and the same points with their two halves swapped (2n, 2w). With a symmetric
    square root of the joint covariance, the estimate for (x, x') then equals the one for (x', x)
    exactly, so a sampled kernel is symmetric in its arguments, and tiles that hold a pair in either
    order agree (an antithetic-style symmetrization: still unbiased)."""
    return torch.cat([z, torch.cat([z[:, w:], z[:, :w]], 1)])


def psd_sqrt(cov: Tensor) -> Tensor:
    """The symmetric square root S = V diag(sqrt(lambda)) V^T (S S^T = cov) of a batch of symmetric PSD
    matrices (negative round-off eigenvalues clipped to 0): exact for singular covariances, unlike a
    Cholesky factor, and permutation-equivariant (the root of P C P^T is P S P^T), which
    :func:`swap_symmetric` relies on."""
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    values, vectors = torch.linalg.eigh(cov)
    return (vectors * values.clamp(min=0.0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def root(cov: Tensor) -> Tensor:
    """A matrix R with R R^T = cov for one symmetric PSD matrix: the Cholesky factor where it exists (an order of
    magnitude faster than an eigendecomposition at the sizes of a batch's positions), else :func:`psd_sqrt`
    (singular covariances). For sampling N(0, cov) as z R^T, where no symmetry of the root is needed."""
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info.max()) == 0 and bool(torch.isfinite(factor).all()):
        return factor
    return psd_sqrt(cov)


def low_rank_root(cov: Tensor) -> Tensor:
    """A matrix R (D, r) with R R^T = cov for one symmetric PSD matrix (D, D) of rank r, for sampling N(0, cov) as
    R z over a whole batch. On the CPU, LAPACK's Cholesky factorization with complete pivoting (dpstrf; Higham
    2002, "Accuracy and Stability of Numerical Algorithms", Sec. 10.3), stopped where the remaining pivots fall
    below D eps max(diag): O(D r^2), and exact for the low-rank kernels of raw inputs. Elsewhere (CUDA), the
    symmetric root :func:`psd_sqrt`. Refuses a matrix that is not finite or has a negative diagonal."""
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("the covariance to sample from has NaN or infinite entries")
    cov = 0.5 * (cov + cov.T)
    if bool((cov.diagonal() < 0).any()):
        raise ValueError("the covariance to sample from has a negative variance on its diagonal")
    if float(cov.diagonal().max()) == 0.0:
        return cov.new_zeros(len(cov), 1)
    if cov.device.type != "cpu":
        return psd_sqrt(cov)
    from scipy.linalg import lapack

    factor, piv, rank, info = lapack.dpstrf(cov.detach().to(torch.float64).numpy(), lower=1)
    if info < 0:
        raise RuntimeError(f"LAPACK dpstrf failed (info={info})")
    lower = torch.from_numpy(factor).tril()[:, :rank]
    root = torch.empty_like(lower)
    root[torch.from_numpy(piv.astype("int64") - 1)] = lower
    return root.to(cov.dtype)


def joint_samples(c11: Tensor, c12: Tensor, c22: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Samples (u, u') of the joint Gaussian with covariance [[c11, c12], [c12^T, c22]] (batches of
    (w1, w1), (w1, w2), (w2, w2) blocks) from standard normal points ``z`` (n, w1 + w2): returns
    (batch, n, w1) and (batch, n, w2)."""
    w1 = c11.shape[-1]
    top = torch.cat([c11, c12], -1)
    bottom = torch.cat([c12.transpose(-1, -2), c22], -1)
    root = psd_sqrt(torch.cat([top, bottom], -2))  # (batch, 2w, 2w)
    u = torch.einsum("nd,...kd->...nk", z, root)
    return u[..., :w1], u[..., w1:]


def chunks(batch: int, per_item: int) -> list[slice]:
    """Slices of range(batch) whose items times ``per_item`` evaluation points stay under :data:`CHUNK`."""
    size = max(1, CHUNK // max(per_item, 1))
    return [slice(i, min(i + size, batch)) for i in range(0, batch, size)]


def replicate_statistics(values: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(mean, standard error of the mean) over independent replicates (sd with R - 1 / sqrt(R))."""
    return mean_and_stderr(values, dim=0)
