"""Batch normalization in training mode: finite module and sampled kernel transform (:mod:`infinet.sampling`).

Which batch: the statistics of a kernel are taken over the examples of the kernel computation itself,
``net.kernel(x)`` with every example of x in one batch, exactly as the finite network
``net.build()(x)`` normalizes over the batch x (PyTorch's ``BatchNorm1d/2d/3d`` in training mode,
without the affine parameters: ``affine=False``, as at initialization). Kernels between two different
batches (x1, x2), tiles smaller than the batch, padding masks and graphs have no well-defined limit
here and are refused.

Kernel (Yang, Pennington, Rao, Sohl-Dickstein and Schoenholz 2019, "A mean field theory of batch
normalization", Sec. 3): per channel the D pre-activations z (the B examples, times S positions for
feature maps) are jointly Gaussian N(0, Sigma) with Sigma the kernel of the whole batch, and the
layer's output is g = act(y), y = G z / sqrt(|G z|^2 / D + eps), G = I - 11^T / D the centring. So

    K' = E[act(y) act(y)^T],
    Theta' = E[J Theta J^T],  J = diag(act'(y)) (I - 11^T / D - y y^T / D) / sigma,

a D-dimensional expectation, estimated with scrambled Sobol points (D up to a few hundred) and
replicates of the whole network for standard errors. For ReLU the paper's Laplace-method integral,
K'_ij = int_0^inf exp(-s eps) det(I + 2 s Sigma_G / D)^(-1/2) E_{N(0, Sigma_s)}[relu(u_i) relu(u_j)] ds
with Sigma_G = G Sigma G and Sigma_s = Sigma_G (I + 2 s Sigma_G / D)^(-1), is a one-dimensional
integral of arc-cosine kernels (:func:`relu_batchnorm_integral`); the tests check the sampler against it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import gaussian, sampling
from ..kernel import Kernel
from .activations import Activation
from .base import Context, Layer, Spec, with_shape


class BatchNorm(Layer):
    """Train-mode batch normalization over the batch (and the spatial positions of feature maps), without
    affine parameters, then ``activation`` (an infinet activation, or None): see the module docstring for
    which batch and what is refused. ``samples`` quasi-random points per replicate, ``replicates`` for
    standard errors, ``seed``. Cost: samples x replicates x D^2 for D = batch size x positions."""

    masking = "refuse"

    sampled = True  # replicates for standard errors (infinet.sampling.plan)

    batch_statistics = True  # the tile engine computes the whole batch as one symmetric tile

    def __init__(self, activation: Activation | None = None, eps: float = 1e-5,
                 samples: int = sampling.DEFAULT_SAMPLES, replicates: int = sampling.DEFAULT_REPLICATES,
                 seed: int = 0):
        if activation is not None and not isinstance(activation, Activation):
            raise TypeError(f"BatchNorm activation must be an infinet activation such as Relu(), got {activation!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0 or not math.isfinite(eps):
            raise ValueError(f"BatchNorm eps must be a finite number >= 0, got {eps!r}")
        sampling.check_options("BatchNorm", samples, replicates, seed)
        self.activation, self.eps = activation, float(eps)
        self.samples, self.replicates, self.seed = samples, replicates, seed

    def __repr__(self) -> str:
        return (f"BatchNorm(activation={self.activation!r}, eps={self.eps!r}, samples={self.samples}, "
                f"replicates={self.replicates}, seed={self.seed})")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not spec.gaussian:
            raise ValueError(f"{self!r} needs Gaussian inputs at infinite width (a Dense or Conv right before it); "
                             "put the activation inside it: BatchNorm(activation=Relu())")
        return with_shape(spec, spec.shape, gaussian=False, fresh=None)

    def needs_full(self, full_out):
        return True  # the statistics couple every position with every other

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.symmetric:
            raise ValueError(f"{self!r}: train-mode batch statistics define a kernel only among the examples of one "
                             "batch: call net.kernel(x) with the whole batch (not x1 against x2)")
        n, spatial = k.nngp.shape[0], k.spatial
        s = math.prod(spatial)
        d = n * s

        def as_matrix(t):  # (N, N, *S, *S) -> (D, D), example-major
            return t.reshape(n, n, s, s).permute(0, 2, 1, 3).reshape(d, d)

        def as_kernel(m):
            return m.reshape(n, s, n, s).permute(0, 2, 1, 3).reshape((n, n) + spatial * 2)

        sigma = as_matrix(k.nngp)
        state = k.sampling if k.sampling is not None else sampling.SamplingState(self.seed, 0)
        z = sampling.normal_points(self.samples, d, state.next_seed(), sigma.dtype, sigma.device)
        u = z @ sampling.psd_sqrt(sigma).T  # (n_samples, D), rows ~ N(0, Sigma)
        centred = u - u.mean(1, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(1, keepdim=True) + self.eps)  # 1 / sigma per sample
        y = centred * scale
        g, dg = _apply(self.activation, y, k.ntk is not None)
        nngp = g.T @ g / len(g)
        ntk = None
        if k.ntk is not None:
            ntk = as_kernel(_ntk_term(as_matrix(k.ntk), y, dg * scale))
        nngp = as_kernel(nngp)
        var = nngp.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # (N, *S, *S): each example with itself
        return k.replace(nngp=nngp, ntk=ntk, var1=var, var2=var)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return BatchNormModule(self)


def _apply(activation, y: Tensor, need_derivative: bool):
    """(act(y), act'(y)); the identity without an activation."""
    if activation is None:
        return y, torch.ones_like(y) if need_derivative else None
    return activation.value_and_derivative(y, need_derivative)


def _ntk_term(theta: Tensor, y: Tensor, f: Tensor) -> Tensor:
    """E[J Theta J^T] over the samples, J = diag(f) P, P = I - 11^T / D - y y^T / D (f = act'(y) / sigma),
    in O(samples x D^2): P Theta P^T = Theta - 1 c^T - y r^T - q1 1^T - q2 y^T with c = Theta 1 / D,
    r = Theta y / D, q1 = (Theta 1 - 1 (c.1) - y (r.1)) / D, q2 = (Theta y - 1 (c.y) - y (r.y)) / D."""
    m, d = y.shape
    ones = torch.ones(d, dtype=y.dtype, device=y.device)
    c = theta @ ones / d  # (D,)
    r = y @ theta.T / d  # (m, D): Theta y per sample
    q1 = (theta @ ones)[None, :] - c.sum() - y * r.sum(1, keepdim=True)
    q1 = q1 / d
    q2 = (r * d) - (y @ c)[:, None] - y * (r * y).sum(1, keepdim=True)
    q2 = q2 / d
    out = (f.T @ f / m) * theta
    for a, b in ((ones.expand(m, d), c.expand(m, d)), (y, r), (q1, ones.expand(m, d)), (q2, y)):
        out = out - (f * a).T @ (f * b) / m
    return 0.5 * (out + out.T)


class BatchNormModule(nn.Module):
    """Finite train-mode batch normalization of :class:`BatchNorm` (statistics of the batch given to forward,
    no running statistics, no affine parameters), then its activation."""

    def __init__(self, layer: BatchNorm):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        if len(x) < 2:
            raise ValueError("BatchNorm in training mode needs a batch of at least 2 examples")
        y = F.batch_norm(x, None, None, training=True, eps=self.layer.eps)
        return y if self.layer.activation is None else self.layer.activation.fn(y)

    def extra_repr(self) -> str:
        return repr(self.layer)


def relu_batchnorm_integral(sigma: Tensor, eps: float = 0.0, nodes: int = 200) -> Tensor:
    """E[relu(y) relu(y)^T] for y = G z / sqrt(|G z|^2 / D + eps), z ~ N(0, sigma) (D x D), by the Laplace
    method of Yang et al. 2019 (Sec. 3; 1 / q = int_0^inf exp(-s q) ds for the normalization): the
    one-dimensional integral in the module docstring, evaluated with Gauss-Legendre nodes in t after
    s = t / (1 - t), with the arc-cosine kernel (:func:`infinet.gaussian.arccos_order1`) inside."""
    d = sigma.shape[-1]
    if d < 3:  # the integrand decays as s^-(D+1)/2: too slowly for the rule below with D = 2
        raise ValueError(f"relu_batchnorm_integral needs D >= 3 normalized entries, got {d}")
    g = torch.eye(d, dtype=sigma.dtype) - 1.0 / d
    sg = g @ sigma @ g
    values, vectors = torch.linalg.eigh(0.5 * (sg + sg.T))
    values = values.clamp(min=0.0)
    t, w = np.polynomial.legendre.leggauss(nodes)
    total = torch.zeros(d, d, dtype=sigma.dtype)
    for ti, wi in zip((t + 1) / 2, w / 2):  # t in (0, 1)
        s = ti / (1 - ti)
        jac = 1 / (1 - ti) ** 2
        factor = math.exp(-s * eps) * float(torch.prod(1 + 2 * s * values / d) ** -0.5)
        cov = (vectors * (values / (1 + 2 * s * values / d))) @ vectors.T
        diag = cov.diagonal()
        relu, _ = gaussian.arccos_order1(cov, diag[:, None], diag[None, :], need_kdot=False)
        total += wi * jac * factor * relu
    return total
