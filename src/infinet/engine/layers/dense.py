"""Fully-connected layer: finite module and kernel transform."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .. import laws
from ..kernel import Kernel
from .base import Context, Layer, Spec, random_output, with_shape
from ...core.checks import check_int

PARAMETERIZATIONS = ("ntk", "standard")


def check_std(name: str, value: float | Tensor | None, allow_none: bool) -> float | Tensor | None:
    """Validate a weight or bias standard deviation: a finite number >= 0 (None allowed for b_std).

    A 0-dim floating tensor is validated by value and kept as it is, so that kernels can be
    differentiated with respect to it (``requires_grad=True``; see :mod:`infinet.fitting`).
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a number, got None")
    if isinstance(value, Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise ValueError(f"{name} given as a tensor must be a 0-dim floating tensor, got shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        number = float(value.detach())
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
        number = value = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {number}")
    if number > 1e150:  # its square would overflow float64 in the kernel
        raise ValueError(f"{name} must be at most 1e150 (its square must be a finite float64), got {number:g}")
    return value


def std_repr(value: float | Tensor | None) -> str:
    """repr of a standard deviation as a plain number (a tensor hyperparameter prints its value)."""
    return repr(float(value.detach()) if isinstance(value, Tensor) else value)


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose from {PARAMETERIZATIONS}")
    return parameterization


class Dense(Layer):
    """Fully-connected layer z = (w_std / sqrt(n)) W y + b_std b ('ntk') or z = W y + b ('standard').

    'ntk' (default): W_ij, b_i ~ N(0, 1). 'standard': W_ij ~ N(0, w_std^2 / n), b_i ~ N(0, b_std^2).
    n is the fan-in (number of input features). ``b_std=None`` means no bias, as in neural-tangents.
    ``trainable=False`` freezes the layer's weight and bias: the finite module's parameters do not require
    gradients, and the NTK drops this layer's own term, Theta' = w_std^2 Theta (a network whose first
    layers are "fixed", Arora, Du, Li, Salakhutdinov, Wang and Yu 2020, Sec. 3; their NNGP is the NTK with
    every layer but the readout fixed).
    On sequences N x C x L (and feature maps N x C x ...) it acts on the channels at every position with
    the same weights (a 1x1 convolution; neural-tangents' Dense on its channel axis), n = C, and each
    pair of positions transforms as below.

    Kernel transform (Lee et al. 2018, eq. 4; Jacot et al. 2018, Thm. 1):
      NNGP  K' = w_std^2 K + b_std^2;
      NTK   'ntk':      Theta' = K' + w_std^2 Theta;
            'standard': Theta' = n K + w_std^2 Theta (+ 1 when there is a bias)
                        (Sohl-Dickstein et al. 2020, "On the infinite width limit of neural networks
                        with a standard parameterization", eq. 7 with width multiplier s = 1:
                        the gradient with respect to W_ij is y_j, summing to n K over j; with respect
                        to b_i it is 1). Here n is the finite fan-in, so this NTK depends on widths.
                        A finite network's n K_n term carries n times the O(1/n) finite-width deviation
                        of its K_n from K: an O(1) offset, as large as the other terms, that no width
                        removes (its relative size falls as 1/n). Monte Carlo with enough networks
                        resolves it (benchmarks/case12_convergence.py); the 'ntk' parameterization has
                        no such term.
    """

    masking = "positionwise"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    fresh_output = True  # independent of every value before it (infinet.engine.laws)

    def __init__(
        self,
        out_features: int,
        w_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
        trainable: bool = True,
    ):
        check_int(out_features, "Dense out_features")
        if not isinstance(trainable, bool):
            raise TypeError(f"Dense trainable must be True or False, got {trainable!r}")
        self.trainable = trainable
        self.out_features = out_features
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def __repr__(self) -> str:
        return (
            f"Dense({self.out_features}, w_std={std_repr(self.w_std)}, b_std={std_repr(self.b_std)}, "
            f"parameterization={self.parameterization!r}{'' if self.trainable else ', trainable=False'})"
        )

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None and len(spec.shape) < 1:
            raise ValueError(f"{self!r} expects inputs of shape (N, features) or (N, C, ...); got per-example "
                             f"shape {spec.shape}")
        return random_output(spec, ctx, None if spec.shape is None else (self.out_features, *spec.shape[1:]))

    fused_affine = True  # this class exactly (not its subclasses): infinet.engine.dense_fusion may compute it

    def variance(self, v: Tensor) -> Tensor:
        """Self-covariance after the layer: w_std^2 v + b_std^2."""
        return self.w_std**2 * v + (0.0 if self.b_std is None else self.b_std**2)

    def affine_constants(self, fan_in: int) -> tuple[float, float, float, float, float]:
        """(w2, b2, p, q, r) of the kernel transform below as Theta' = p K + q K' + w2 Theta + r (for
        :mod:`infinet.engine.dense_fusion`): 'ntk' p = 0, q = 1, r = 0; 'standard' p = n, q = 0, r = 1 with a
        bias; frozen p = q = r = 0. Float hyperparameters only."""
        w2, b2 = float(self.w_std) ** 2, 0.0 if self.b_std is None else float(self.b_std) ** 2
        if not self.trainable:
            return w2, b2, 0.0, 0.0, 0.0
        if self.parameterization == "ntk":
            return w2, b2, 0.0, 1.0, 0.0
        return w2, b2, float(fan_in), 0.0, 0.0 if self.b_std is None else 1.0

    def kernel_fn(self, k: Kernel) -> Kernel:
        w2 = self.w_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        nngp = k.nngp * w2
        if b2:
            nngp = nngp.add_(b2)  # in place on the fresh product only; k is never mutated
        var1, var2 = k.map_variances(self.variance)
        ntk = k.ntk
        if ntk is not None:
            if not self.trainable:  # frozen: no gradient with respect to this layer's own parameters
                ntk = ntk * w2
            elif self.parameterization == "ntk":
                ntk = nngp + ntk * w2 if isinstance(w2, Tensor) else torch.add(nngp, ntk, alpha=w2)
            else:
                fan_in = k.shape[0]
                ntk = fan_in * k.nngp + w2 * ntk + (0.0 if self.b_std is None else 1.0)
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=(self.out_features, *k.shape[1:]))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        in_features = None if spec.shape is None else spec.shape[0]
        module = DenseModule(
            self.out_features, self.w_std, self.b_std, self.parameterization, in_features, seed=ctx.seed()
        )
        return module if self.trainable else module.requires_grad_(False)


class AffineModule(LazyModuleMixin, nn.Module):
    """Base of the finite random affine modules (Dense, Conv, ConvTranspose).

    'ntk': z = (w_std / sqrt(fan_in)) linear(x; W) + b_std b, W, b ~ N(0, 1); 'standard':
    z = linear(x; W) + b with W ~ N(0, w_std^2 / fan_in), b ~ N(0, b_std^2). Parameters ``weight``
    and ``bias`` (absent when b_std is None); with ``in_features=None`` the weight is materialized at
    the first forward pass. Initialization draws from a private generator seeded with ``seed``, so
    it is reproducible whether eager or lazy. Subclasses give the weight shape, fan-in and linear map.
    """

    cls_to_become = None
    kind = "affine"

    def __init__(self, out_features, w_std, b_std, parameterization, in_features=None, seed=0):
        super().__init__()
        self.out_features = out_features
        self.in_features = in_features
        self.w_std = w_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.seed = seed
        if in_features is None:
            self.weight = UninitializedParameter()
        else:
            self.weight = nn.Parameter(torch.empty(self.weight_shape()))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_features))
        if in_features is not None:
            self.reset_parameters()

    # -- what subclasses define ----------------------------------------------------------------------
    def weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def fan_in(self) -> int:
        return self.in_features

    def input_features(self, x: Tensor) -> int:
        raise NotImplementedError

    def linear(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def bias_view(self, ndim: int) -> Tensor:
        """The bias shaped to broadcast over an output of ``ndim`` axes (channels on axis 1)."""
        return self.bias.reshape(-1, *([1] * (ndim - 2)))

    # -- shared ----------------------------------------------------------------------------------------
    def _init_stds(self) -> tuple[float, float]:
        """The standard deviations of the initial weight and bias entries: 1 and 1 in 'ntk' (the forward pass
        scales), w_std / sqrt(fan_in) and b_std in 'standard'."""
        if self.parameterization == "standard":
            return self.w_std / math.sqrt(self.fan_in()), self.b_std or 0.0
        return 1.0, 1.0

    def sample_parameters(self, count: int, generator: torch.Generator, *, dtype: torch.dtype = torch.float64,
                          device=None) -> dict[str, Tensor]:
        """``count`` independent draws of ``weight`` (and ``bias``) from this module's initialization law,
        each with a leading axis of ``count``: the parameters of ``count`` networks for
        :func:`infinet.finite.ensembles.ensemble_forward`."""
        def draw(shape, std):
            value = torch.randn((count, *shape), generator=generator, dtype=dtype).to(device)
            return value if std == 1.0 else value * std

        std_w, std_b = self._init_stds()
        out = {"weight": draw(self.weight_shape(), std_w)}
        if self.bias is not None:
            out["bias"] = draw((self.out_features,), std_b)
        return out

    def reset_parameters(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        std_w, std_b = self._init_stds()
        with torch.no_grad():
            w = torch.randn(self.weight.shape, generator=gen, dtype=torch.float64) * std_w
            self.weight.copy_(w.to(self.weight))
            if self.bias is not None:
                b = torch.randn(self.bias.shape, generator=gen, dtype=torch.float64) * std_b
                self.bias.copy_(b.to(self.bias))

    def initialize_parameters(self, x: Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            self.in_features = self.input_features(x)
            with torch.no_grad():
                self.weight.materialize(self.weight_shape(), dtype=x.dtype, device=x.device)
                if self.bias is not None and isinstance(self.bias, UninitializedParameter):
                    self.bias.materialize((self.out_features,), dtype=x.dtype, device=x.device)
            self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        if self.parameterization == "ntk":
            out = out * (self.w_std / math.sqrt(self.fan_in()))
            return out if self.bias is None else out + self.b_std * self.bias_view(out.ndim)
        return out if self.bias is None else out + self.bias_view(out.ndim)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, w_std={std_repr(self.w_std)}, "
            f"b_std={std_repr(self.b_std)}, parameterization={self.parameterization!r}"
        )


class DenseModule(AffineModule):
    """Finite fully-connected module of :class:`Dense`: weight (out, in), bias (out). Inputs (N, in), or
    (N, in, ...) with the same weights at every position (channels on axis 1)."""

    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def input_features(self, x: Tensor) -> int:
        return x.shape[1]

    def linear(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.in_features:
            raise ValueError(f"DenseModule expects input of shape (N, {self.in_features}) or (N, {self.in_features}, ...), "
                             f"got {tuple(x.shape)}")
        if x.ndim == 2:
            return x @ self.weight.T
        return (x.movedim(1, -1) @ self.weight.T).movedim(-1, 1)


class Scale(Layer):
    """A fixed scalar multiple z = c y (``lin(x) * 2`` in a torch model), on vectors or feature maps.

    No parameters. Kernel transform: K' = c^2 K, Theta' = c^2 Theta (the gradient of c y with respect to
    the earlier parameters is c times theirs). A Gaussian input stays Gaussian, and a zero-mean random
    output stays one (c != 0), so a scaled branch joins a sum as its unscaled self would.
    """

    masking = "positionwise"
    replays_variances = True
    keeps_law = True  # see infinet.engine.laws
    linear = True  # a Gaussian law stays Gaussian

    def __init__(self, c: float):
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
            raise ValueError(f"Scale takes a finite number, got {c!r}")
        self.c = float(c)

    def __repr__(self) -> str:
        return f"Scale({self.c!r})"

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if self.c == 0:
            return with_shape(spec, spec.shape, gaussian=False, fresh=None, own=None)
        return spec

    def pointwise(self, u: Tensor, need_derivative: bool) -> tuple[Tensor, float]:
        """(c u, c): the scaling on draws of its input (:mod:`infinet.engine.laws`)."""
        return self.c * u, self.c

    def kernel_fn(self, k: Kernel) -> Kernel:
        c2 = self.c**2
        var1, var2 = k.map_variances(lambda v: c2 * v)
        out = k.replace(nngp=k.nngp * c2, ntk=None if k.ntk is None else k.ntk * c2, var1=var1, var2=var2)
        return out if k.law is None else out.replace(law=laws.MapLaw(k.law, self))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return ScaleModule(self.c)


class ScaleModule(nn.Module):
    """The finite form of :class:`Scale`: multiplies its input by ``c``."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c

    def extra_repr(self) -> str:
        return repr(self.c)
