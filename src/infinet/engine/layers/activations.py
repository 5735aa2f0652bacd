"""Elementwise activations: the finite function and its kernel transform.

The kernel transform of every activation is (Lee et al. 2018, eq. 4; Jacot et al. 2018, Thm. 1)
  K'(x, x') = E[phi(u) phi(v)],  Theta'(x, x') = E[phi'(u) phi'(v)] Theta(x, x'),
with (u, v) ~ N(0, [[K(x, x), K(x, x')], [K(x, x'), K(x', x')]]). The expectations come from
:mod:`infinet.gaussian` (closed forms, or quadrature for activations without one).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import fused, gaussian, laws, native_pairs
from ..kernel import Kernel, diagonal_pairs
from .base import Context, Function, Layer, Spec, with_shape
from ...core.checks import check_int


class Activation(Layer):
    """Base class: subclasses define ``fn`` (finite) and ``expectations`` (infinite width)."""

    masking = "positionwise"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    def fn(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expectations(self, cov: Tensor, var1: Tensor, var2: Tensor, need_kdot: bool = True) -> gaussian.Pair:
        """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]); default: :func:`infinet.gaussian.quadrature`."""
        return gaussian.quadrature(self.fn, cov, var1, var2, need_kdot, dfn=self.derivative(),
                                   identity=self.expectation_identity(), joint=self.value_and_derivative)

    def expectation_identity(self):
        """What fixes ``fn`` and its derivative: the class and arguments (quadrature's interpolants are shared by
        every layer with the same); None where they are user functions
        (:class:`~infinet.engine.layers.quadrature_activations.Elementwise`)."""
        return type(self), self._args()

    def derivative(self) -> Callable[[Tensor], Tensor] | None:
        """phi' if known in closed form; None lets quadrature use autograd."""
        return None

    def value_and_derivative(self, x: Tensor, need_derivative: bool = True) -> tuple[Tensor, Tensor | None]:
        """(phi(x), phi'(x)) elementwise, phi' in closed form or by autograd (None when not needed): what the
        sampled layers apply to their Gaussian samples (:mod:`infinet.sampling`)."""
        if not need_derivative:
            return self.fn(x), None
        return self.fn(x), (self.derivative() or gaussian.autograd_derivative(self.fn))(x)

    def diagonal(self, var: Tensor) -> Tensor:
        """E[phi(u)^2] for u ~ N(0, var)."""
        return self.expectations(var, var, var, need_kdot=False)[0]

    def __repr__(self) -> str:
        args = ", ".join(f"{v!r}" for v in self._args())
        return f"{type(self).__name__}({args})"

    def _args(self) -> tuple:
        return ()

    keeps_law = True  # see infinet.engine.laws

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if not spec.gaussian:
            if not spec.drawable:
                raise ValueError(
                    f"{self!r} needs a Gaussian input at infinite width, or a known function of Gaussian values: "
                    "put a Dense (or other random affine) layer before it, not a pooling, a FanInConcat, "
                    "a normalization or the raw input")
            ctx.need_draws()  # a nonlinearity of a non-Gaussian value: its law is drawn (infinet.engine.laws)
        return with_shape(spec, spec.shape, gaussian=False, fresh=None, drawable=True)

    def pointwise(self, u: Tensor, need_derivative: bool) -> tuple[Tensor, Tensor | None]:
        """(phi(u), phi'(u)): the activation on draws of its input (:mod:`infinet.engine.laws`)."""
        return self.value_and_derivative(u, need_derivative)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if k.law is not None and not k.law.gaussian:  # a non-Gaussian input: apply phi to its draws
            return laws.drawn_kernel(k, laws.map_draws(k.law.draws(k), self), k.law.roots)
        var1, var2 = k.pair_variances()
        nngp, ntk = self.step(k.nngp, k.ntk, var1, var2)
        if k.full and k.symmetric and k.var2 is k.var1 and not k.replaying:
            # every example's (S, S) self-covariance is its nngp[i, i] (pinned after the layer before): the new
            # one is the new nngp[i, i], not the same expectations computed a second time
            new_var1 = new_var2 = diagonal_pairs(nngp)
        else:
            new_var1, new_var2 = k.map_self(lambda c, a, b: self.step(c, None, a, b)[0], self.diagonal)
        out = k.replace(nngp=nngp, ntk=ntk, var1=new_var1, var2=new_var2)
        if k.sampling is not None and k.sampling.laws:  # a later layer may need this value's law
            out = out.replace(law=laws.MapLaw(laws.law_of(k), self))
        return out

    def step(self, cov: Tensor, ntk: Tensor | None, var1: Tensor, var2: Tensor) -> tuple[Tensor, Tensor | None]:
        """(E[phi(u) phi(v)], E[phi'(u) phi'(v)] x ntk): the layer's elementwise work on a tile (ntk None:
        the NNGP alone), fused into one compiled loop where :meth:`elementwise_step` gives a pure step
        (see :mod:`infinet.fused`), else :meth:`expectations` and a product."""
        compiled = self.native_pairs()
        if compiled is not None:
            out = native_pairs.step(*compiled, cov, ntk, var1, var2)
            if out is not None:
                return out
        fused_step = self.elementwise_step(var1, var2)
        if fused_step is not None:
            fn, constants = fused_step
            return fused.call(fn, cov, ntk, var1, var2, *constants)
        nngp, kdot = self.expectations(cov, var1, var2, need_kdot=ntk is not None)
        return nngp, None if ntk is None else kdot * ntk

    def native_pairs(self) -> tuple[int, tuple[float, float, float]] | None:
        """(activation code, (a, b, c)) of the compiled closed-form step (:mod:`infinet.engine.native_pairs`) that
        computes :meth:`Activation.step`, or None (the default: :meth:`Activation.expectations`)."""
        return None

    def elementwise_step(self, var1: Tensor, var2: Tensor) -> tuple[Callable, tuple] | None:
        """A pure, branch-free ``fn(cov, ntk, var1, var2, *constants)`` computing :meth:`~Activation.step` and its
        constants, for the compiler (:mod:`infinet.fused`); None (the default) keeps the eager path."""
        return None

    def module(self, spec, ctx) -> Function:
        self.infer(spec, Context())
        return Function(self.fn, repr(self))


# ---------------------------------------------------------------- ReLU family (arc-cosine kernels)
class ABRelu(Activation):
    """phi(x) = a min(x, 0) + b max(x, 0); closed form :func:`infinet.gaussian.abrelu`."""

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def _args(self):
        return (self.a, self.b)

    def fn(self, x: Tensor) -> Tensor:
        return self.a * x + (self.b - self.a) * torch.relu(x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.abrelu(self.a, self.b, cov, var1, var2, need_kdot)

    def elementwise_step(self, var1, var2):
        if torch.is_grad_enabled() and (var1.requires_grad or var2.requires_grad):
            return None  # the autograd-safe path of gaussian.abrelu
        return gaussian.abrelu_step, (self.a, self.b, False) + gaussian.elementwise_flags(var1, var2)

    def diagonal(self, var):
        return 0.5 * (self.a**2 + self.b**2) * var

    def native_pairs(self):
        slopes = self.conv_fusion_slopes()
        return None if slopes is None else (native_pairs.ABRELU, (*slopes, 0.0))

    def conv_fusion_slopes(self) -> tuple[float, float] | None:
        """(a, b) for the fused Conv + activation step (:mod:`infinet.engine.conv_fusion`), None where a subclass
        changes the kernel transform."""
        if type(self).kernel_fn is Activation.kernel_fn and type(self).elementwise_step is ABRelu.elementwise_step:
            return self.a, self.b
        return None

    def derivative(self):
        """phi'(x) = b for x > 0, a otherwise (autograd's convention at 0 for ReLU: 0)."""
        a, b = self.a, self.b
        return lambda x: torch.full_like(x, a).masked_fill_(x > 0, b)  # a and b in x's precision


class Relu(ABRelu):
    """phi(x) = max(x, 0): arc-cosine kernel of order 1 (Cho and Saul 2009)."""

    def __init__(self):
        super().__init__(0.0, 1.0)

    def _args(self):
        return ()

    def fn(self, x: Tensor) -> Tensor:
        return torch.relu(x)


class LeakyRelu(ABRelu):
    """phi(x) = max(x, 0) + alpha min(x, 0) = ABRelu(alpha, 1)."""

    def __init__(self, alpha: float):
        super().__init__(alpha, 1.0)

    def _args(self):
        return (self.a,)


class Abs(ABRelu):
    """phi(x) = |x| = ABRelu(-1, 1)."""

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def _args(self):
        return ()


class Sign(Activation):
    """phi(x) = sign(x): nngp = (2/pi) arcsin(rho); kdot = 0 (see :func:`infinet.gaussian.sign`)."""

    def fn(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.sign(cov, var1, var2, need_kdot)

    def diagonal(self, var):
        return (var > 0).to(var.dtype)


class RectifiedMonomial(Activation):
    """phi(x) = x^k 1(x > 0), any integer k >= 0: the arc-cosine kernel of order k (Cho and Saul 2009)."""

    def __init__(self, degree: int):
        check_int(degree, "RectifiedMonomial degree", 0)
        self.degree = degree

    def _args(self):
        return (self.degree,)

    def fn(self, x: Tensor) -> Tensor:
        if self.degree == 0:
            return (x > 0).to(x.dtype)
        return torch.relu(x) ** self.degree

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.rectified_monomial(self.degree, cov, var1, var2, need_kdot)


# ---------------------------------------------------------------- other closed forms
class Erf(Activation):
    """phi(x) = a erf(b x) + c (Williams 1997); closed form :func:`infinet.gaussian.erf`."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = float(a), float(b), float(c)

    def _args(self):
        return (self.a, self.b, self.c)

    def fn(self, x):
        return self.a * torch.erf(self.b * x) + self.c

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.erf(self.a, self.b, self.c, cov, var1, var2, need_kdot)

    def native_pairs(self):
        own = type(self).expectations is Erf.expectations and type(self).kernel_fn is Activation.kernel_fn
        return (native_pairs.ERF, (self.a, self.b, self.c)) if own else None


class Gelu(Activation):
    """phi(x) = x Phi(x), exact GELU; closed form :func:`infinet.gaussian.gelu`."""

    def fn(self, x):
        return F.gelu(x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.gelu(cov, var1, var2, need_kdot)

    def native_pairs(self):
        own = type(self).expectations is Gelu.expectations and type(self).kernel_fn is Activation.kernel_fn
        return (native_pairs.GELU, (0.0, 0.0, 0.0)) if own else None


class Sin(Activation):
    """phi(x) = a sin(b x + c); closed form :func:`infinet.gaussian.sin`."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = float(a), float(b), float(c)

    def _args(self):
        return (self.a, self.b, self.c)

    def fn(self, x):
        return self.a * torch.sin(self.b * x + self.c)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.sin(self.a, self.b, self.c, cov, var1, var2, need_kdot)


class Cos(Sin):
    """phi(x) = a cos(b x + c) = a sin(b x + c + pi/2)."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        super().__init__(a, b, c)
        self.phase = float(c)

    def _args(self):
        return (self.a, self.b, self.phase)

    def fn(self, x):
        return self.a * torch.cos(self.b * x + self.phase)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.sin(self.a, self.b, self.phase + math.pi / 2, cov, var1, var2, need_kdot)


class Exp(Activation):
    """phi(x) = a exp(b x); closed form :func:`infinet.gaussian.exp`."""

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a, self.b = float(a), float(b)

    def _args(self):
        return (self.a, self.b)

    def fn(self, x):
        return self.a * torch.exp(self.b * x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.exp(self.a, self.b, cov, var1, var2, need_kdot)


class Gaussian(Activation):
    """phi(x) = a exp(b x^2); closed form :func:`infinet.gaussian.gaussian`."""

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a, self.b = float(a), float(b)

    def _args(self):
        return (self.a, self.b)

    def fn(self, x):
        return self.a * torch.exp(self.b * x * x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.gaussian(self.a, self.b, cov, var1, var2, need_kdot)


class Polynomial(Activation):
    """phi(x) = sum_p coefficients[p] x^p, any degree; exact Hermite expansion :func:`infinet.gaussian.polynomial`."""

    def __init__(self, coefficients: Sequence[float]):
        coefficients = [float(c) for c in coefficients]
        if not coefficients or not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f"Polynomial needs a non-empty list of finite coefficients, got {coefficients!r}")
        self.coefficients = coefficients

    def _args(self):
        return (self.coefficients,)

    def fn(self, x):
        out = torch.zeros_like(x)
        for c in reversed(self.coefficients):
            out = out * x + c
        return out

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.polynomial(self.coefficients, cov, var1, var2, need_kdot)


class Monomial(Polynomial):
    """phi(x) = x^k for any integer k >= 0 (exact)."""

    def __init__(self, degree: int):
        check_int(degree, "Monomial degree", 0)
        self.degree = degree
        super().__init__([0.0] * degree + [1.0])

    def _args(self):
        return (self.degree,)

    def fn(self, x):
        return x**self.degree


class Hermite(Polynomial):
    """phi = He_n / sqrt(n!), the probabilists' Hermite polynomial of ``degree`` n normalized to unit
    norm under N(0, 1) (neural-tangents' ``Hermite``).

    For unit-variance inputs E[phi(u) phi(v)] = rho^n and E[phi'(u) phi'(v)] = n rho^(n-1) (Mehler 1866),
    which is what neural-tangents returns whatever the variances (it warns that it assumes them to
    be 1). infinet computes the exact expectation for any variances (:func:`infinet.gaussian.polynomial`);
    the two agree when the input variances are 1 (e.g. after LayerNorm).
    """

    def __init__(self, degree: int):
        check_int(degree, "Hermite degree", 0)
        self.degree = degree
        previous, current = [0.0], [1.0]  # He_{-1} = 0, He_0 = 1; He_{k+1} = x He_k - k He_{k-1}
        for k in range(degree):
            shifted = [0.0] + current
            lower = previous + [0.0] * (len(shifted) - len(previous))
            previous, current = current, [a - k * b for a, b in zip(shifted, lower)]
        norm = math.sqrt(math.factorial(degree))
        super().__init__([c / norm for c in current])

    def _args(self):
        return (self.degree,)


class Rbf(Activation):
    """phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4): its NNGP is the RBF kernel exp(-gamma |x - x'|^2 / d)
    of the inputs (neural-tangents' ``Rbf``; closed form :func:`infinet.gaussian.rbf`)."""

    def __init__(self, gamma: float = 1.0):
        self.gamma = float(gamma)
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"Rbf gamma must be a finite number >= 0, got {gamma!r}")

    def _args(self):
        return (self.gamma,)

    def fn(self, x):
        return math.sqrt(2.0) * torch.sin(math.sqrt(2.0 * self.gamma) * x + math.pi / 4)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.rbf(self.gamma, cov, var1, var2, need_kdot)


class Gabor(Activation):
    """phi(x) = exp(-x^2) sin(x) (neural-tangents' ``Gabor``; closed form :func:`infinet.gaussian.gabor`)."""

    def fn(self, x):
        return torch.exp(-x * x) * torch.sin(x)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.gabor(cov, var1, var2, need_kdot)


class ExpNormalized(Activation):
    """The normalized Gaussian kernel (Shankar et al. 2020, "Neural kernels without tangents", Sec. 3;
    neural-tangents' ``ExpNormalized``): K' = sqrt(q1 q2) exp(gamma (rho + shift)), Theta' =
    gamma exp(gamma (rho + shift)) Theta (:func:`infinet.gaussian.exp_normalized`).

    Finite module (neural-tangents has none): at each position, with r the root-mean-square of the
    input over channels, out = r g(y / r), g = sum_n c_n He_n / sqrt(n!), c_n^2 = exp(gamma shift)
    gamma^n / n!, so that E[g(u) g(v)] = exp(gamma (rho + shift)) for unit-variance u, v of
    correlation rho; the series is cut where the remaining c_n^2 sum below 1e-16 of the total. At
    infinite width r is the deterministic sqrt(q), so its gradient adds nothing to the NTK.
    ``do_clip`` is accepted for compatibility; rho is always clipped to [-1, 1].
    """

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = False):
        self.gamma, self.shift, self.do_clip = float(gamma), float(shift), bool(do_clip)
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"ExpNormalized gamma must be a finite number >= 0 (exp(gamma rho) with gamma < 0 is "
                             f"not a covariance), got {gamma!r}")
        if not math.isfinite(self.shift):
            raise ValueError(f"ExpNormalized shift must be a finite number, got {shift!r}")

    def _args(self):
        return (self.gamma, self.shift)

    def expectations(self, cov, var1, var2, need_kdot=True):
        return gaussian.exp_normalized(self.gamma, self.shift, cov, var1, var2, need_kdot)

    def coefficients(self) -> list[float]:
        """c_n of g = sum_n c_n He_n / sqrt(n!), cut where the tail of c_n^2 is below 1e-16 of the total."""
        if self.gamma > 700:  # exp(gamma) overflows float64
            raise ValueError(f"{self!r}: the finite module's Hermite series cannot be formed at gamma={self.gamma} "
                             "(above 700); use a smaller gamma for finite networks")
        total = math.exp(self.gamma)  # sum_n gamma^n / n!
        out, term, n = [], 1.0, 0
        while True:
            out.append(math.sqrt(math.exp(self.gamma * self.shift) * term))
            n += 1
            term *= self.gamma / n
            # once n > gamma the tail sum_{m >= n} gamma^m / m! is at most term / (1 - gamma / (n + 1))
            if n > self.gamma and term / (1.0 - self.gamma / (n + 1)) <= 1e-16 * total:
                return out
            if n >= 1000:
                raise ValueError(f"{self!r}: the finite module's Hermite series needs more than 1000 terms at "
                                 f"gamma={self.gamma}; use a smaller gamma for finite networks")

    def fn(self, x):
        """g applied to unit-variance inputs (the module normalizes by r first)."""
        coefficients = self.coefficients()
        previous, current = torch.zeros_like(x), torch.ones_like(x)  # normalized He_{n-1}, He_n / sqrt(n!)
        out = coefficients[0] * current
        for n in range(1, len(coefficients)):
            previous, current = current, (x * current - math.sqrt(n - 1) * previous) / math.sqrt(n)
            out = out + coefficients[n] * current
        return out

    def module(self, spec, ctx):
        self.infer(spec, Context())
        return NormalizedFunction(self.fn, repr(self))


class NormalizedFunction(Function):
    """out = r fn(y / r) at each position, r the root-mean-square of y over channels (axis 1)."""

    def forward(self, x: Tensor) -> Tensor:
        r = torch.sqrt((x * x).mean(dim=1, keepdim=True))
        safe = torch.where(r > 0, r, torch.ones_like(r))
        return torch.where(r > 0, r * self.fn(x / safe), torch.zeros_like(x))
