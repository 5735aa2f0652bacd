"""Layer normalization and dropout: finite modules and kernel transforms.

LayerNorm (Ba et al. 2016) of a Gaussian input at infinite width divides each feature by the
(deterministic) root mean square over the normalized axes: K'(x, x') = K(x, x') / sqrt((v(x) + eps)(v(x') + eps)),
with v the mean variance over the channels at a position ('channels') or over channels and positions
('channels_space'); the NTK is divided the same way (the normalizer's own gradient is O(1/width)).
The mean over channels of a zero-mean Gaussian vanishes, so centring changes nothing in the limit.

Dropout(rate) during training multiplies each unit by an independent Bernoulli(1 - rate) / (1 - rate)
mask, which leaves the covariance of different examples (or positions) unchanged and divides the
self-variance by 1 - rate (Lee et al. 2018's neural-tangents conventions; Srivastava et al. 2014).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..kernel import Kernel
from .base import Context, Layer, Spec, with_shape

LAYER_NORM_AXES = ("channels", "channels_space")


class LayerNorm(Layer):
    """Normalize each example over ``axes``: 'channels' (per position; for vectors, all features)
    or 'channels_space' (channels and all positions). Needs a Gaussian input (after Dense or Conv), or a
    zero-mean one Gaussian in its values (``Spec.centred``: a normalization's affine output, a residual sum with
    it), whose tangents' correlation with the value enters the NTK only at O(1/width)."""

    def __init__(self, axes: str = "channels", eps: float = 1e-12):
        if axes not in LAYER_NORM_AXES:
            raise ValueError(f"unknown LayerNorm axes {axes!r}; choose from {LAYER_NORM_AXES}")
        if not (isinstance(eps, (int, float)) and 0 <= eps < 1):
            raise ValueError(f"LayerNorm eps must be a number in [0, 1), got {eps!r}")
        self.axes = axes
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"LayerNorm(axes={self.axes!r}, eps={self.eps!r})"

    @property
    def masking(self) -> str:
        """Over channels it acts on each position alone; over space the padding would enter its mean."""
        return "positionwise" if self.axes == "channels" else "refuse"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not (spec.gaussian or spec.centred):
            raise ValueError(f"{self!r} needs a Gaussian input at infinite width (put it right after Dense or Conv)")
        return with_shape(spec, spec.shape, drawable=spec.drawable, centred=spec.centred)

    def _scale(self, var: Tensor, k: Kernel) -> Tensor:
        """Per-example normalizer v + eps: (N, *S) per position for 'channels', (N,) + singleton axes otherwise.
        At infinite width the mean square over the normalized axes is the deterministic v, so the finite module's
        x / sqrt(mean x^2 + eps) becomes x / sqrt(v + eps)."""
        d = k._position_variances(var)
        if self.axes == "channels_space" and k.spatial:
            d = d.reshape(len(d), -1).mean(1).reshape(len(d), *([1] * len(k.spatial)))
        return d + self.eps if self.eps else d

    def kernel_fn(self, k: Kernel) -> Kernel:
        v1 = self._scale(k.var1, k)
        v2 = v1 if k.var2 is k.var1 else self._scale(k.var2, k)
        n = len(k.spatial)
        ones = (1,) * n
        if k.full:
            s1, s2 = v1.reshape(len(v1), 1, *v1.shape[1:], *ones), v2.reshape(1, len(v2), *ones, *v2.shape[1:])
            self1 = (v1.reshape(len(v1), *v1.shape[1:], *ones) * v1.reshape(len(v1), *ones, *v1.shape[1:])).sqrt()
            self2 = self1 if v2 is v1 else (v2.reshape(len(v2), *v2.shape[1:], *ones)
                                            * v2.reshape(len(v2), *ones, *v2.shape[1:])).sqrt()
        else:
            s1, s2 = v1.unsqueeze(1), v2.unsqueeze(0)
            self1, self2 = v1, v2
        norm = (s1 * s2).sqrt()
        var1 = _divide(k.var1, self1)
        return k.replace(nngp=_divide(k.nngp, norm), ntk=None if k.ntk is None else _divide(k.ntk, norm), var1=var1,
                         var2=var1 if k.var2 is k.var1 else _divide(k.var2, self2))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return LayerNormModule(self.axes, self.eps)


def _divide(t: Tensor, norm: Tensor) -> Tensor:
    """t / norm, and 0 where the normalizer is 0: an input that is identically zero at a position (a graph
    node no arc reaches, a padded step) stays zero after normalization, as in the finite module."""
    if bool((norm > 0).all()):
        return t / norm
    return torch.where(norm > 0, t / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(t))


class LayerNormModule(nn.Module):
    def __init__(self, axes: str, eps: float):
        super().__init__()
        self.axes, self.eps = axes, eps

    def forward(self, x: Tensor) -> Tensor:
        dims = (1,) if self.axes == "channels" or x.ndim == 2 else tuple(range(1, x.ndim))
        centred = x - x.mean(dims, keepdim=True)
        return centred / (centred.pow(2).mean(dims, keepdim=True) + self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"axes={self.axes!r}, eps={self.eps}"


class Dropout(Layer):
    """Dropout with drop probability ``rate``. ``train=True`` (default): the kernel of the network
    during training (self-variances divided by 1 - rate) and a finite module that drops units while
    the module is in training mode; ``train=False``: the identity in both meanings (evaluation).
    Its output is not Gaussian, so a Dense or Conv must come before the next nonlinearity."""

    masking = "positionwise"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    def __init__(self, rate: float, train: bool = True):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.train = bool(train)

    def __repr__(self) -> str:
        return f"Dropout({self.rate!r}, train={self.train!r})"

    @property
    def keeps_law(self) -> bool:
        """Without dropping anything it is the identity, and keeps its input's law (infinet.engine.laws)."""
        return not self.train or self.rate == 0

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not self.train or self.rate == 0:
            return spec
        return with_shape(spec, spec.shape, gaussian=False)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not self.train or self.rate == 0:
            return k
        keep = 1.0 - self.rate

        def boost_self(var: Tensor) -> Tensor:  # only a unit with itself sees the same mask twice
            if not k.full:
                return var / keep
            n, p = len(var), math.prod(k.spatial)
            flat = var.reshape(n, p, p).clone()
            flat.diagonal(dim1=1, dim2=2).div_(keep)
            return flat.reshape(var.shape)

        var1, var2 = k.map_variances(boost_self)
        ntk = k.ntk
        if ntk is not None and k.symmetric:
            ntk = ntk.clone()
            idx = torch.arange(len(ntk), device=ntk.device)
            ntk[idx, idx] = boost_self(ntk[idx, idx])
        return k.replace(var1=var1, var2=var2, ntk=ntk).pin_diagonal()

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        return nn.Dropout(self.rate) if self.train and self.rate > 0 else nn.Identity()
