"""Max and min pooling: finite modules and sampled kernel transforms (:mod:`infinet.sampling`).

The maximum of a window of jointly Gaussian pre-activations has no closed-form covariance (except for
a window of one), so the kernel is estimated per layer: for each pair of examples and pair of output
positions (o, o'), the 2w Gaussian inputs of the two windows are drawn with the covariance the
kernel holds and the layer's own operation is applied to them,

    K'(x, o; x', o') = E[g(u) g(u')],  g(u) = act(max_{a in W(o)} u_a),
    Theta'(x, o; x', o') = E[act'(g) act'(g') Theta(x, a*; x', b*)],  a*, b* the argmax of each window

(the derivative of a maximum is the indicator of its argmax; Jacot et al. 2018 for the NTK's chain
rule). ``activation`` is applied after the maximum, inside the same expectation, because an
activation needs Gaussian inputs and a maximum is not Gaussian; for a non-decreasing activation
(ReLU, erf, tanh, ...) act(max u) = max act(u), so ``MaxPool(2, activation=Relu())`` after a
convolution is the usual Conv > Relu > MaxPool. Padding positions ('SAME') never win the maximum.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import laws, sampling
from ..kernel import Kernel
from . import spatial as sp
from .activations import Activation
from .affine import ElementwiseAffine, ElementwiseAffineModule
from .base import Context, Spec, with_shape
from . import maxpool_joint
from .pooling import _Pool

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class MaxPool(_Pool):
    """Max pooling over ``window`` moved by ``stride`` (default: the window), padding 'VALID' (default),
    'SAME' (padding never wins) or 'CIRCULAR'; then ``activation`` (an infinet activation, or None).

    Kernel: sampled (see the module docstring), with ``samples`` quasi-random points per replicate and
    ``replicates`` independent replicates of the whole network for standard errors (the network uses the
    largest ``replicates`` of its sampled layers), seeded by ``seed``. Cost per pair of examples:
    O^2 x samples x replicates x (2w)^2 for O output positions and windows of w inputs.
    """

    sign = 1.0  # MinPool: -1 (min u = -max(-u))

    sampled = True  # the tile engine runs replicates for standard errors (infinet.sampling.plan)

    allows_ceil = True

    def __init__(self, window, stride=None, padding="VALID", activation: Activation | None = None,
                 samples: int = sampling.DEFAULT_SAMPLES, replicates: int = sampling.DEFAULT_REPLICATES,
                 seed: int = 0, ceil_mode: bool = False, affine: ElementwiseAffine | None = None):
        super().__init__(window, stride, padding, ceil_mode)
        if affine is not None and not isinstance(affine, ElementwiseAffine):
            raise TypeError(f"{type(self).__name__} affine must be an infinet ElementwiseAffine, got {affine!r}")
        if affine is not None and affine.gain <= 0:
            raise ValueError(f"{type(self).__name__}: an affine map before the maximum must have a positive gain")
        self.affine = affine
        if activation is not None and not isinstance(activation, Activation):
            raise TypeError(f"{type(self).__name__} activation must be an infinet activation such as Relu(), "
                            f"got {activation!r}")
        sampling.check_options(type(self).__name__, samples, replicates, seed)
        self.activation, self.samples, self.replicates, self.seed = activation, samples, replicates, seed

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.window!r}, stride={self.stride!r}, padding={self.padding!r}, "
                f"activation={self.activation!r}, samples={self.samples}, replicates={self.replicates}, "
                f"seed={self.seed}{self._extra()}{'' if self.affine is None else f', affine={self.affine!r}'})")

    def with_activation(self, activation: Activation | None, affine: ElementwiseAffine | None = None) -> "MaxPool":
        """The same pooling after ``affine`` (the affine parameters of a normalization) and followed by
        ``activation``, both inside its expectation."""
        return type(self)(self.window, self.stride, self.padding, activation, self.samples, self.replicates, self.seed,
                          self.ceil_mode, affine)

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        if not spec.gaussian:
            raise ValueError(
                f"{self!r} needs Gaussian inputs at infinite width (a Conv or Dense right before it): for a "
                f"non-decreasing activation, Conv > Relu > {type(self).__name__} is Conv > "
                f"{type(self).__name__}(..., activation=Relu())")
        out = super().infer(spec, ctx)
        return with_shape(out, out.shape, gaussian=False, fresh=None, drawable=True)  # its law: MaxPoolLaw

    # -- windows ---------------------------------------------------------------------------------------
    def windows(self, spatial: tuple[int, ...]) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """(index (O, w) of flat input positions, valid (O, w), output spatial shape) for inputs of spatial
        shape ``spatial``; padded taps have valid False (index 0)."""
        geo = self.geometry((1,) + tuple(spatial))
        per_dim = []
        for size, (w, s, before, after, n_out) in zip(spatial, geo):
            rows = []
            for o in range(n_out):
                taps = []
                for a in range(w):
                    i = s * o + a - before
                    if self.padding == "CIRCULAR":
                        taps.append((i % size, True))
                    else:
                        taps.append((i, 0 <= i < size))
                rows.append(taps)
            per_dim.append(rows)
        strides = [math.prod(spatial[d + 1:]) for d in range(len(spatial))]
        index, valid = [], []
        for outs in itertools.product(*per_dim):
            idx_row, ok_row = [], []
            for taps in itertools.product(*outs):
                ok = all(t[1] for t in taps)
                idx_row.append(sum(t[0] * st for t, st in zip(taps, strides)) if ok else 0)
                ok_row.append(ok)
            index.append(idx_row)
            valid.append(ok_row)
        return torch.tensor(index), torch.tensor(valid), tuple(g[4] for g in geo)

    # -- kernel ----------------------------------------------------------------------------------------
    plans_layout = True  # told whether its output must keep every position pair (infinet.engine.apply)

    keeps_law = True  # its output's law is drawn from its input's kernel (MaxPoolLaw)

    def kernel_fn(self, k: Kernel, full_out: bool = True) -> Kernel:
        """The sampled transform. Where the next layer needs only same-position pairs (Flatten, Dense,
        elementwise layers before them), only the output pairs (o, o) are sampled: O instead of O^2 window
        pairs per pair of examples."""
        if not k.full:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (internal layout error)")
        if self.affine is not None:  # the value the maximum reads: gain u (its parameter terms in _expect)
            g2 = self.affine.gain ** 2
            k = k.replace(nngp=g2 * k.nngp, ntk=None if k.ntk is None else g2 * k.ntk, var1=g2 * k.var1,
                          var2=g2 * k.var2)
        state = k.sampling if k.sampling is not None else sampling.SamplingState(self.seed, 0)
        if k.sampling is not None and k.sampling.laws:  # a later layer may need the law: its draws give the moments
            draws = self._run(k, full_out, self._points(k, laws.DRAWS // 2, state), laws.generator(k))
            out = k.replace(shape=(k.shape[0],) + self.windows(k.spatial)[2], full=full_out)
            return laws.drawn_kernel(out, draws, laws.law_of(k).roots)
        index, valid, out_spatial = self.windows(k.spatial)
        p = math.prod(k.spatial)
        if maxpool_joint.pays(p, index.shape[0], index.shape[1], self.samples):
            return self._run_joint(k, full_out, state, index, valid, out_spatial)
        return self._run(k, full_out, self._points(k, self.samples, state), None)

    def _run_joint(self, k: Kernel, full_out: bool, state, index: Tensor, valid: Tensor, out_spatial) -> Kernel:
        """The kernel from joint draws of every input position (:mod:`infinet.engine.layers.maxpool_joint`)."""
        p = math.prod(k.spatial)
        dev, dtype = k.var1.device, k.var1.dtype
        z = sampling.normal_points(self.samples, 2 * p, state.next_seed(), dtype, dev)
        v1 = k.var1.reshape(-1, p, p)
        v2 = v1 if k.var2 is k.var1 else k.var2.reshape(-1, p, p)
        n1, n2 = k.nngp_shape()[:2]
        nngp, ntk, self1, self2 = maxpool_joint.expectations(
            self, v1, v2, k.nngp.reshape(n1, n2, p, p), None if k.ntk is None else k.ntk.reshape(n1, n2, p, p), z,
            index.to(dev), valid.to(dev), full_out)

        def shaped(t, lead):
            return None if t is None else t.reshape(*t.shape[:lead], *(out_spatial * 2 if full_out else out_spatial))

        return k.replace(nngp=shaped(nngp, 2), ntk=shaped(ntk, 2), var1=shaped(self1, 1),
                         var2=shaped(self1 if self2 is self1 else self2, 1), shape=(k.shape[0],) + out_spatial,
                         full=full_out, law=None)

    def _points(self, k: Kernel, n: int, state) -> Tensor:
        w = self.windows(k.spatial)[0].shape[1]
        z = sampling.normal_points(n, 2 * w, state.next_seed(), k.var1.dtype, k.var1.device)
        return sampling.swap_symmetric(z, w)

    def _run(self, k: Kernel, full_out: bool, z: Tensor, gen: torch.Generator | None):
        """The pooled kernel over the points ``z`` (``gen`` None), or (``gen`` given) the draws of the pooled
        value at every entry, tangents drawn with ``gen`` (:mod:`infinet.engine.laws`)."""
        spatial = k.spatial
        index, valid, out_spatial = self.windows(spatial)
        dev = k.var1.device
        index, valid = index.to(dev), valid.to(dev)
        p, (o, w) = math.prod(spatial), index.shape

        def flat(t, lead):
            return t.reshape(*t.shape[:lead], p, p)

        def blocks(t):  # (..., P, P) -> (..., O, O, w, w): the window of o against the window of o'
            return t[..., index[:, None, :, None], index[None, :, None, :]]

        def own_blocks(t):  # (..., P, P) -> (..., O, w, w): the window of o against itself
            return t[..., index[:, :, None], index[:, None, :]]

        def expect(c11, c12, c22, ok_a, ok_b, theta, shape):
            """E[g g'] (and the NTK term) for flat (B, w, w) covariance blocks, in chunks; or their draws."""
            outs = []
            for part in sampling.chunks(len(c12), len(z) * 4 * w * w):
                outs.append(self._expect(c11[part], c12[part], c22[part], ok_a[part], ok_b[part],
                                         None if theta is None else theta[part], z, gen))
            parts = [None if outs[0][i] is None else torch.cat([x[i] for x in outs]) for i in range(len(outs[0]))]
            if gen is None:
                return [None if t is None else t.reshape(shape) for t in parts]
            return [None if t is None else t.T.reshape(len(z), *shape) for t in parts]  # draws first

        v1 = flat(k.var1, 1)
        v2 = v1 if k.var2 is k.var1 else flat(k.var2, 1)
        own1 = own_blocks(v1)  # (n1, O, w, w)
        own2 = own1 if v2 is v1 else own_blocks(v2)
        a, b = k.nngp_shape()[:2]
        theta = None if k.ntk is None else flat(k.ntk, 2)
        if full_out:  # every pair (o, o') of output positions
            c11 = own1[:, None, :, None].expand(a, b, o, o, w, w).reshape(-1, w, w)
            c22 = own2[None, :, None, :].expand(a, b, o, o, w, w).reshape(-1, w, w)
            ok_a = valid[None, None, :, None].expand(a, b, o, o, w).reshape(-1, w)
            ok_b = valid[None, None, None, :].expand(a, b, o, o, w).reshape(-1, w)
            cross = expect(c11, blocks(flat(k.nngp, 2)).reshape(-1, w, w), c22, ok_a, ok_b,
                           None if theta is None else blocks(theta).reshape(-1, w, w), (a, b) + out_spatial * 2)
        else:  # the same position o in both members only
            c11 = own1[:, None].expand(a, b, o, w, w).reshape(-1, w, w)
            c22 = own2[None].expand(a, b, o, w, w).reshape(-1, w, w)
            ok = valid[None, None].expand(a, b, o, w).reshape(-1, w)
            cross = expect(c11, own_blocks(flat(k.nngp, 2)).reshape(-1, w, w), c22, ok, ok,
                           None if theta is None else own_blocks(theta).reshape(-1, w, w), (a, b) + out_spatial)

        def self_cov(v, own):  # each example with itself: (n, *So, *So), or (n, *So) on the diagonal
            n = len(v)
            if not full_out:
                c = own.reshape(-1, w, w)
                ok = valid[None].expand(n, o, w).reshape(-1, w)
                return expect(c, c, c, ok, ok, None, (n, *out_spatial))
            c_own = own[:, :, None].expand(n, o, o, w, w).reshape(-1, w, w)
            c_other = own[:, None, :].expand(n, o, o, w, w).reshape(-1, w, w)
            ok_a = valid[None, :, None].expand(n, o, o, w).reshape(-1, w)
            ok_b = valid[None, None, :].expand(n, o, o, w).reshape(-1, w)
            return expect(c_own, blocks(v).reshape(-1, w, w), c_other, ok_a, ok_b, None, (n, *out_spatial, *out_spatial))

        self1 = self_cov(v1, own1)
        self2 = self1 if v2 is v1 else self_cov(v2, own2)
        if gen is not None:
            pair = lambda d: laws.Pair(*d)  # noqa: E731
            s1 = pair(self1[:2])
            return laws.Draws(pair(cross), s1, s1 if self2 is self1 else pair(self2[:2]), full_out)
        return k.replace(nngp=cross[0], ntk=cross[1], var1=self1[0], var2=self2[0],
                         shape=(k.shape[0],) + out_spatial, full=full_out, law=None)

    def _expect(self, c11, c12, c22, ok_a, ok_b, theta, z, gen=None):
        """Sample means of g(u) g(u') and of act'(g) act'(g') Theta[a*, b*] over the points ``z``; with ``gen``,
        the draws themselves: (g, g', t, t') per point, tangents with E[t t'] = act' act' Theta[a*, b*]."""
        ua, ub = sampling.joint_samples(c11, c12, c22, z)  # (B, n, w)
        ua = (self.sign * ua).masked_fill(~ok_a[:, None, :], -math.inf)
        ub = (self.sign * ub).masked_fill(~ok_b[:, None, :], -math.inf)
        ma, ia = ua.max(-1)
        mb, ib = ub.max(-1)
        ga, gb = self._act(self.sign * ma, theta is not None), self._act(self.sign * mb, theta is not None)
        if gen is not None and theta is None:
            return ga[0], gb[0], None, None
        nngp = None if gen is not None else (ga[0] * gb[0]).mean(-1)
        if theta is None:
            return nngp, None
        picked = torch.gather(theta.reshape(len(theta), -1), 1, ia * theta.shape[-1] + ib)  # Theta[a*, b*]
        if self.affine is not None and self.affine.trainable:  # the gamma and beta terms at the two maxima
            picked = picked + (self.sign * ma) * (self.sign * mb) / self.affine.weight**2 + float(self.affine.bias)
        if gen is not None:
            eta = torch.randn(picked.shape[-1], generator=gen, dtype=picked.dtype, device=picked.device)
            eta = eta * picked.abs().sqrt()  # one number per point, shared by the entries (infinet.engine.laws)
            return ga[0], gb[0], ga[1] * eta, gb[1] * torch.sign(picked) * eta
        return nngp, (ga[1] * gb[1] * picked).mean(-1)

    def _act(self, m: Tensor, need_derivative: bool):
        """(act(m), act'(m)) elementwise; the identity without an activation."""
        if self.activation is None:
            return m, torch.ones_like(m) if need_derivative else None
        return self.activation.value_and_derivative(m, need_derivative)

    # -- finite module ---------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return MaxPoolModule(self, None if spec.shape is None else spec.shape[0])


class MinPool(MaxPool):
    """Min pooling (min over the window = -max(-u)), then ``activation``; kernel sampled as for MaxPool."""

    sign = -1.0


class MaxPoolModule(nn.Module):
    """Finite max (min) pooling of :class:`MaxPool` (:class:`MinPool`), then its activation."""

    def __init__(self, layer: MaxPool, channels: int | None = None):
        super().__init__()
        self.layer = layer
        self.affine = None if layer.affine is None else ElementwiseAffineModule(layer.affine, channels)

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        geo = layer.geometry(tuple(x.shape[1:]))
        if layer.affine is not None:
            x = self.affine(x)
        y = layer.sign * x
        for i, (w, s, before, after, _) in enumerate(geo):
            if layer.padding == "CIRCULAR":
                y = sp.pad_axis(y, 2 + i, before, after, circular=True)
            elif before or after:
                y = F.pad(y, _pad_spec(y.ndim, 2 + i, before, after), value=-math.inf)
        y = _MAX_POOL[len(geo)](y, [g[0] for g in geo], [g[1] for g in geo])
        y = layer.sign * y
        return y if layer.activation is None else layer.activation.fn(y)

    def extra_repr(self) -> str:
        return repr(self.layer)


def _pad_spec(ndim: int, axis: int, before: int, after: int) -> list[int]:
    """F.pad's list (pairs from the last axis backwards) padding only ``axis``."""
    spec = [0, 0] * (ndim - axis)
    spec[2 * (ndim - 1 - axis)] = before
    spec[2 * (ndim - 1 - axis) + 1] = after
    return spec
