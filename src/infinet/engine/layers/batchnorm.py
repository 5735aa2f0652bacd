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

from .. import gaussian, laws, sampling
from ..kernel import Kernel
from .activations import Activation
from .base import Context, Layer, Spec, with_shape


class BatchNorm(Layer):
    """Train-mode batch normalization over the batch (and the spatial positions of feature maps), with
    ``affine`` PyTorch's per-channel weight and bias (1 and 0 at initialization; their NTK terms
    E[g' g'^T (y y^T + 1)], g' = act'(y)), then ``activation`` (an infinet activation, or None): see the module docstring for
    which batch and what is refused. ``samples`` quasi-random points per replicate, ``replicates`` for
    standard errors, ``seed``. Cost: samples x replicates x D^2 for D = batch size x positions."""

    masking = "refuse"

    sampled = True  # replicates for standard errors (infinet.sampling.plan)

    batch_statistics = True  # the tile engine computes the whole batch as one symmetric tile

    keeps_law = True  # its output's law: the draws of the whole batch it normalizes (infinet.engine.laws)

    def __init__(self, activation: Activation | None = None, eps: float = 1e-5,
                 samples: int = sampling.DEFAULT_SAMPLES, replicates: int = sampling.DEFAULT_REPLICATES,
                 seed: int = 0, affine: bool = False, pool=None):
        if activation is not None and not isinstance(activation, Activation):
            raise TypeError(f"BatchNorm activation must be an infinet activation such as Relu(), got {activation!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0 or not math.isfinite(eps):
            raise ValueError(f"BatchNorm eps must be a finite number >= 0, got {eps!r}")
        sampling.check_options("BatchNorm", samples, replicates, seed)
        if not isinstance(affine, bool):
            raise TypeError(f"BatchNorm affine must be True or False, got {affine!r}")
        from .maxpool import MaxPool

        if pool is not None and (not isinstance(pool, MaxPool) or pool.activation is not None or pool.affine is not None):
            raise TypeError(f"BatchNorm pool must be a plain infinet MaxPool (no activation of its own), got {pool!r}")
        self.activation, self.eps, self.affine, self.pool = activation, float(eps), affine, pool
        self.samples, self.replicates, self.seed = samples, replicates, seed

    def __repr__(self) -> str:
        return (f"BatchNorm(activation={self.activation!r}, eps={self.eps!r}, samples={self.samples}, "
                f"replicates={self.replicates}, seed={self.seed}{', affine=True' if self.affine else ''}"
                f"{'' if self.pool is None else f', pool={self.pool!r}'})")

    def with_activation(self, activation: Activation) -> "BatchNorm":
        """The same normalization followed by ``activation`` (inside its expectation)."""
        return BatchNorm(activation, self.eps, self.samples, self.replicates, self.seed, self.affine, self.pool)

    def with_pool(self, pool) -> "BatchNorm":
        """The same normalization (and activation) followed by the max pooling ``pool``, inside its expectation:
        a maximum of normalized values, which are not Gaussian, has to be taken on the same draws."""
        return BatchNorm(self.activation, self.eps, self.samples, self.replicates, self.seed, self.affine, pool)

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not spec.gaussian:
            raise ValueError(f"{self!r} needs Gaussian inputs at infinite width (a Dense or Conv right before it); "
                             "put the activation inside it: BatchNorm(activation=Relu())")
        shape = spec.shape if self.pool is None or spec.shape is None else self.pool.infer(spec, ctx).shape
        return with_shape(spec, shape, gaussian=False, fresh=None, drawable=True)

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
        with_law = k.sampling is not None and k.sampling.laws  # a later layer may read the law: keep the draws
        z = sampling.normal_points(laws.DRAWS if with_law else self.samples, d, state.next_seed(), sigma.dtype,
                                   sigma.device)
        u = z @ sampling.root(sigma).T  # (n_samples, D), rows ~ N(0, Sigma)
        centred = u - u.mean(1, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(1, keepdim=True) + self.eps)  # 1 / sigma per sample
        y = centred * scale
        g, dg = _apply(self.activation, y, k.ntk is not None)
        tangents = self._tangents(k, as_matrix(k.ntk), y, dg, scale) if with_law and k.ntk is not None else None
        if self.pool is not None:
            out, values, tangents = self._pooled(k, y, g, dg, scale, as_matrix(k.ntk) if k.ntk is not None else None,
                                                 tangents)
        else:
            out, values = self._plain(k, y, g, dg, scale, as_kernel, as_matrix), g
        if not with_law:
            return out.replace(law=None)
        return out.replace(law=laws.Drawn(_joint_draws(values.reshape(len(values), n, -1), tangents, out),
                                          laws.law_of(k).roots))

    def _tangents(self, k: Kernel, theta: Tensor, y: Tensor, dg: Tensor, scale: Tensor) -> Tensor:
        """Draws of the output's tangent with each value draw (infinet.engine.laws): the input's tangent drawn from
        its NTK, N(0, Theta), through the normalization's Jacobian, plus the affine parameters' own."""
        gen = laws.generator(k)
        eta = torch.randn(y.shape, generator=gen, dtype=y.dtype, device=y.device)
        dz = eta @ sampling.root(theta).T
        dy = scale * (dz - dz.mean(1, keepdim=True) - y * (y * dz).mean(1, keepdim=True))
        if self.affine:
            shared = torch.randn((len(y), 2), generator=gen, dtype=y.dtype, device=y.device)
            dy = dy + shared[:, :1] * y + shared[:, 1:]
        return dg * dy

    def _plain(self, k: Kernel, y, g, dg, scale, as_kernel, as_matrix) -> Kernel:
        nngp = g.T @ g / len(g)
        ntk = None
        if k.ntk is not None:
            theta = _ntk_term(as_matrix(k.ntk), y, dg * scale)
            if self.affine:  # gamma and beta per channel (1 and 0 at initialization): E[g' g'^T (y y^T + 1)]
                theta = theta + (dg * y).T @ (dg * y) / len(y) + dg.T @ dg / len(y)
            ntk = as_kernel(theta)
        nngp = as_kernel(nngp)
        var = nngp.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # (N, *S, *S): each example with itself
        return k.replace(nngp=nngp, ntk=ntk, var1=var, var2=var)

    def _pooled(self, k: Kernel, y: Tensor, g: Tensor, dg: Tensor | None, scale: Tensor, theta: Tensor | None,
                tangents: Tensor | None = None):
        """The max pooling of each draw's normalized (and activated) values: the kernel of the maxima, and the NTK
        of E[J Theta J^T] with J's rows those of each window's argmax (per draw)."""
        n, spatial = k.nngp.shape[0], k.spatial
        s = math.prod(spatial)
        index, valid, out_spatial = self.pool.windows(spatial)
        index, valid = index.to(y.device), valid.to(y.device)
        o = len(index)
        windows = g.reshape(len(g), n, s)[:, :, index].masked_fill(~valid, -math.inf)  # (m, n, O, w)
        pooled, arg = windows.max(-1)
        flat = torch.arange(n, device=y.device)[None, :, None] * s + index[torch.arange(o, device=y.device), arg]
        flat = flat.reshape(len(g), n * o)  # the D index of each draw's maximum of each output
        gp = pooled.reshape(len(g), n * o)
        nngp = gp.T @ gp / len(gp)

        def as_kernel(m):
            return m.reshape(n, o, n, o).permute(0, 2, 1, 3).reshape((n, n) + out_spatial * 2)

        ntk = None
        if theta is not None:
            ntk = as_kernel(_pooled_ntk_term(theta, y, dg * scale, flat, dg, self.affine))
        nngp = as_kernel(nngp)
        var = nngp.diagonal(dim1=0, dim2=1).movedim(-1, 0)
        out = k.replace(nngp=nngp, ntk=ntk, var1=var, var2=var, shape=(k.shape[0],) + out_spatial)
        return out, gp, (None if tangents is None else torch.gather(tangents, 1, flat))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return BatchNormModule(self, None if spec.shape is None else spec.shape[0])


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


def _joint_draws(values: Tensor, tangents: Tensor | None, k: Kernel) -> laws.Draws:
    """The pair draws of every entry of a full-layout kernel from joint draws (m, N, P) of the whole batch (and
    their tangents): each entry's two members read the same draw (broadcast views, no copies)."""
    m, n = values.shape[:2]
    s = k.spatial
    v = values.reshape(m, n, *s)
    ones = (1,) * len(s)

    def first(t):
        return t.reshape(m, n, 1, *s, *ones)

    def second(t):
        return t.reshape(m, 1, n, *ones, *s)

    t = None if tangents is None else tangents.reshape(m, n, *s)
    cross = laws.Pair(first(v), second(v), None if t is None else first(t), None if t is None else second(t))
    own = laws.Pair(v.reshape(m, n, *s, *ones), v.reshape(m, n, *ones, *s))
    return laws.Draws(cross, own, own, True)


def _pooled_ntk_term(theta: Tensor, y: Tensor, f: Tensor, at: Tensor, slope: Tensor, affine: bool) -> Tensor:
    """E[J Theta J^T] of :func:`_ntk_term` for the rows ``at`` (m, K) of each draw (the argmax of each pooling window):
    E[F_o F_o' (Theta[A_o, A_o'] - c[A_o'] - Y_o R_o' - Q1_o - Q2_o Y_o')], plus the affine parameters' terms
    E[F'_o F'_o' (Y_o Y_o' + 1)] (F' = act'(y) at the argmax), chunked over draws."""
    m, d = y.shape
    ones = torch.ones(d, dtype=y.dtype, device=y.device)
    c = theta @ ones / d
    r = y @ theta.T / d
    q1 = ((theta @ ones)[None, :] - c.sum() - y * r.sum(1, keepdim=True)) / d
    q2 = ((r * d) - (y @ c)[:, None] - y * (r * y).sum(1, keepdim=True)) / d

    def pick(t):
        return torch.gather(t, 1, at)

    big_f, big_y, big_r, big_q1, big_q2, big_c = pick(f), pick(y), pick(r), pick(q1), pick(q2), c[at]
    slope_at = pick(slope)
    kk = at.shape[1]
    out = theta.new_zeros(kk, kk)
    step = max(1, (1 << 24) // max(kk * kk, 1))
    for a in range(0, m, step):
        sl = slice(a, min(a + step, m))
        t = theta[at[sl][:, :, None], at[sl][:, None, :]]
        t = (t - big_c[sl][:, None, :] - big_y[sl][:, :, None] * big_r[sl][:, None, :] - big_q1[sl][:, :, None]
             - big_q2[sl][:, :, None] * big_y[sl][:, None, :])
        out += torch.einsum("so,sp,sop->op", big_f[sl], big_f[sl], t)
        if affine:
            w = slope_at[sl] * big_y[sl]
            out += w.T @ w + slope_at[sl].T @ slope_at[sl]
    out = out / m
    return 0.5 * (out + out.T)


class BatchNormModule(nn.Module):
    """Finite train-mode batch normalization of :class:`BatchNorm` (statistics of the batch given to forward,
    no running statistics, no affine parameters), then its activation."""

    def __init__(self, layer: BatchNorm, channels: int | None = None):
        super().__init__()
        self.layer = layer
        self.weight = self.bias = None
        if layer.affine:
            if channels is None:
                raise ValueError(f"{layer!r} needs the input shape (its affine parameters have one entry per channel)")
            self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        from .maxpool import MaxPoolModule

        self.pool = None if layer.pool is None else MaxPoolModule(layer.pool)

    def forward(self, x: Tensor) -> Tensor:
        if len(x) < 2:
            raise ValueError("BatchNorm in training mode needs a batch of at least 2 examples")
        y = F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.layer.eps)
        y = y if self.layer.activation is None else self.layer.activation.fn(y)
        return y if self.pool is None else self.pool(y)

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
