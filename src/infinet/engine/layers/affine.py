"""The per-channel affine parameters of normalization layers: y = gamma (scale x) + beta, gamma and beta
trainable vectors with one entry per channel (``nn.BatchNorm*``'s and ``nn.LayerNorm``'s ``weight`` and
``bias``, initialized to 1 and 0).

At initialization the map is the scaling by ``weight x scale`` (beta = 0), so the NNGP is
K' = (weight scale)^2 K. The NTK gains one term per parameter vector (Jacot et al. 2018, eq. 2: a sum over
parameters of products of gradients): dy_c / dgamma_c = scale x_c and dy_c / dbeta_c = 1 act on the
channel's own coordinate, so

    Theta' = (weight scale)^2 Theta + scale^2 K + 1.

Unlike the weight-matrix gradients of a Dense layer (a sum over the fan-in), the gamma term is the
coordinate's own value: an activation after it sees tangents correlated with its input, and its NTK
E[phi'(u) phi'(u') (Theta + u u' / weight^2 + 1)] is not E[phi' phi'] Theta'. So the output is marked
non-Gaussian with a known law (:mod:`infinet.engine.laws`): the next nonlinearity draws it, the parameter
tangents drawn with the value itself (``AffineLaw``). A max pooling after it takes it inside
(``MaxPool(affine=...)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import laws
from ..kernel import Kernel
from .base import Context, Layer, Spec, with_shape


class ElementwiseAffine(Layer):
    """y = weight (scale x) + beta per channel with trainable ``weight`` (its value at initialization, 1 for
    torch) and, with ``bias``, a trainable shift beta (0 at initialization); ``scale`` a fixed factor before it
    (an eval-mode BatchNorm's 1 / sqrt(running_var + eps)). ``trainable=False`` freezes both (the NNGP's
    scaling alone). Kernel: see the module docstring."""

    masking = "positionwise"
    keeps_law = True

    def __init__(self, weight: float = 1.0, scale: float = 1.0, bias: bool = True, trainable: bool = True):
        for name, value in (("weight", weight), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"ElementwiseAffine {name} must be a finite number, got {value!r}")
        if not isinstance(bias, bool) or not isinstance(trainable, bool):
            raise TypeError("ElementwiseAffine bias and trainable must be True or False")
        self.weight, self.scale, self.bias, self.trainable = float(weight), float(scale), bias, trainable

    def __repr__(self) -> str:
        return (f"ElementwiseAffine(weight={self.weight!r}, scale={self.scale!r}, bias={self.bias!r}, "
                f"trainable={self.trainable!r})")

    @property
    def gain(self) -> float:
        return self.weight * self.scale

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not self.trainable:
            return spec if self.gain != 0 else with_shape(spec, spec.shape, gaussian=False, fresh=None, own=None)
        if not spec.law_known:
            raise ValueError(f"{self!r} needs a Gaussian input at infinite width, or a known function of Gaussian "
                             "values (put it right after the normalization of a Dense or Conv output)")
        # its tangents are correlated with its value (the gamma term): not Gaussian for what follows
        return with_shape(spec, spec.shape, gaussian=False, drawable=True, centred=spec.gaussian or spec.centred)

    def parameter_terms(self, nngp: Tensor) -> Tensor:
        """The NTK's own terms: scale^2 K (gamma) + 1 (beta)."""
        out = self.scale**2 * nngp
        return out + 1.0 if self.bias else out

    def kernel_fn(self, k: Kernel) -> Kernel:
        g2 = self.gain**2
        var1, var2 = k.map_variances(lambda v: g2 * v)
        ntk = None
        if k.ntk is not None:
            ntk = g2 * k.ntk + (self.parameter_terms(k.nngp) if self.trainable else 0.0)
        out = k.replace(nngp=g2 * k.nngp, ntk=ntk, var1=var1, var2=var2)
        if k.sampling is not None and k.sampling.laws:
            out = out.replace(law=AffineLaw(laws.law_of(k), self) if self.trainable else laws.MapLaw(laws.law_of(k), self))
        return out

    linear = True  # frozen, a Gaussian value stays Gaussian (MapLaw)

    def pointwise(self, u: Tensor, need_derivative: bool):
        return self.gain * u, self.gain

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        if spec.shape is None:
            raise ValueError(f"{self!r} needs the input shape (its parameters have one entry per channel)")
        return ElementwiseAffineModule(self, spec.shape[0])


class AffineLaw(laws.Law):
    """The law of a trainable affine map's output: value weight scale u, tangent weight scale t + eta_g scale u
    + eta_b, with eta_g, eta_b ~ N(0, 1) drawn once per draw and shared by both members (one parameter)."""

    def __init__(self, parent: laws.Law, layer: ElementwiseAffine):
        super().__init__(parent.full)
        self.parent, self.layer = parent, layer

    @property
    def roots(self):
        return self.parent.roots

    def _draw(self, k) -> laws.Draws:
        d = self.parent.draws(laws.widest(k, self))
        layer, gen = self.layer, laws.generator(k)
        c = d.cross
        value = laws.Pair(layer.gain * c.u1, layer.gain * c.u2)
        if c.t1 is not None:
            eta_g = laws.normal(c.u1.shape[1:], c.u1, gen)
            eta_b = laws.normal(c.u1.shape[1:], c.u1, gen) if layer.bias else 0.0
            value.t1 = layer.gain * c.t1 + layer.scale * eta_g * c.u1 + eta_b
            value.t2 = layer.gain * c.t2 + layer.scale * eta_g * c.u2 + eta_b
        frozen = d.map(lambda u, t: (layer.gain * u, None))
        return laws.Draws(value, frozen.self1, frozen.self2, d.full)


class ElementwiseAffineModule(nn.Module):
    """The finite map: per-channel weight (initialized to ``weight``) and bias (zeros), after ``scale``."""

    def __init__(self, layer: ElementwiseAffine, channels: int):
        super().__init__()
        self.scale = layer.scale
        self.weight = nn.Parameter(torch.full((channels,), layer.weight), requires_grad=layer.trainable)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=layer.trainable) if layer.bias else None

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x * (self.scale * self.weight).reshape(shape)
        return y if self.bias is None else y + self.bias.reshape(shape)
