"""The joint law of correlated values, by draws: what lets a network use one value in several places.

At infinite width every pre-activation is a Gaussian process and every other value a coordinatewise
function of pre-activations (Yang 2019, "Tensor Programs I", Thm. 5.4): the coordinates of all values
are i.i.d. copies of one random vector whose Gaussian part has the covariances the kernels hold, and an
output of a random affine layer with fresh weights is independent of everything computed before it.
Closed forms cover a value that is a function of one Gaussian (activations), sums with a zero-mean
independent part and products of independent parts. Where values that share an origin meet again
(``relu(conv(h) + h)`` in a post-activation residual network, ``h * sigmoid(h)``, a value used again
after a join) the kernel needs their joint law, which this module represents by draws.

A :class:`Law` describes how a value arises: a Gaussian kernel (:class:`GaussianLaw`), a pointwise
layer applied to a value (:class:`MapLaw`), a sum or product of values (:class:`SumLaw`,
:class:`ProductLaw`), or draws already made (:class:`Drawn`). ``law.draws(k)`` gives, for every
kernel entry of the layout of ``k`` (examples x and x', positions p and q), ``DRAWS`` joint draws of
the pair (v(x, p), v(x', q)) and of their tangents. Draws are made once per law and replicate and
reused by every reader, so two readers of one value see the same draws and their combination has the
right joint law. Gaussian draws use the 2 x 2 covariance of the entry; a tangent pair is drawn as
(s eta, sign(Theta) s eta) with s = sqrt(|Theta|) and eta ~ N(0, 1) independent of the values, so
that E[t t'] = Theta: at infinite width the tangent of a fresh affine output is Gaussian, uncorrelated
with every value (Jacot et al. 2018; forward-mode: its cross-moments with the values vanish), and
only cross-moments of tangents ever enter an NTK. Pointwise layers apply phi to the values and phi'
times the tangents (the chain rule); sums add, products follow the product rule. Moments of the draws
give the kernel: NNGP E[v v'], NTK E[t t'], self-covariances from draws of each example with itself.

Standard errors come from the tile engine's independent replicates (:mod:`infinet.sampling`); every
replicate draws afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: draws per kernel entry and replicate
DRAWS = 256


@dataclass
class Pair:
    """Joint draws (DRAWS, *entries) of a value at both members of each entry (u1, u2) and of its tangents
    (t1, t2; None without an NTK). For same-position self-covariances u2 may be u1 itself."""

    u1: Tensor
    u2: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None

    def map(self, fn) -> "Pair":
        """``fn(u, t) -> (u', t')`` applied to both members."""
        a, ta = fn(self.u1, self.t1)
        if self.u2 is self.u1 and self.t2 is self.t1:
            return Pair(a, a, ta, ta)
        b, tb = fn(self.u2, self.t2)
        return Pair(a, b, ta, tb)


@dataclass
class Draws:
    """Draws for one kernel layout: ``cross`` for the nngp/ntk entries, ``self1`` / ``self2`` for the
    self-covariances var1 / var2 (self2 is self1 when the two batches are one), ``full`` the layout."""

    cross: Pair
    self1: Pair
    self2: Pair
    full: bool

    def map(self, fn) -> "Draws":
        s1 = self.self1.map(fn)
        return Draws(self.cross.map(fn), s1, s1 if self.self2 is self.self1 else self.self2.map(fn), self.full)

    def to_diagonal(self, k) -> "Draws":
        """The same draws at same-position entries only (full -> diagonal layout of ``k``)."""
        if not self.full:
            return self
        s, p = k.spatial, math.prod(k.spatial)

        def diag(t, lead):
            if t is None:
                return None
            d = t.reshape(*t.shape[:lead], p, p).diagonal(dim1=-2, dim2=-1)
            return d.reshape(*t.shape[:lead], *s)

        def pair(x, lead):
            u1 = diag(x.u1, lead)
            return Pair(u1, u1 if x.u2 is x.u1 else diag(x.u2, lead), diag(x.t1, lead), diag(x.t2, lead))

        s1 = pair(self.self1, 2)
        return Draws(pair(self.cross, 3), s1, s1 if self.self2 is self.self1 else pair(self.self2, 2), False)

    def moments(self, k):
        """``k`` with nngp, ntk, var1 and var2 the means of the draws, carrying them as its law."""
        c = self.cross
        ntk = None if (k.ntk is None or c.t1 is None) else (c.t1 * c.t2).mean(0)
        var1 = (self.self1.u1 * self.self1.u2).mean(0)
        var2 = var1 if self.self2 is self.self1 else (self.self2.u1 * self.self2.u2).mean(0)
        return k.replace(nngp=(c.u1 * c.u2).mean(0), ntk=ntk, var1=var1, var2=var2)


class Law:
    """How a value arises from jointly Gaussian values; ``draws(k)`` makes (once) and returns its draws."""

    gaussian = False

    def __init__(self, full: bool):
        self.full = full  # the widest layout this law can be drawn in
        self._draws: Draws | None = None

    @property
    def roots(self) -> frozenset:  # the laws whose draws this one reuses: shared roots mean correlation
        return frozenset({self})

    def draws(self, k) -> Draws:
        """Draws in the layout of ``k`` (its sampling state seeds them); drawn in this law's own layout once
        and reused, so that every reader sees the same draws."""
        if k.full and not self.full:
            raise ValueError("internal error: a value's law is asked for more position pairs than it holds")
        if self._draws is None:
            self._draws = self._draw(k)
        return self._draws if k.full else self._draws.to_diagonal(k)

    def _draw(self, k) -> Draws:  # pragma: no cover - abstract
        raise NotImplementedError


class GaussianLaw(Law):
    """A zero-mean Gaussian value with the kernel ``kernel`` (the output of a random affine layer)."""

    gaussian = True

    def __init__(self, kernel):
        super().__init__(kernel.full)
        self.kernel = kernel

    def _draw(self, k) -> Draws:
        g = self.kernel
        gen = generator(k)
        v1, v2 = g.pair_variances()
        cross = _gaussian_pair(g.nngp, v1, v2, g.ntk, gen)
        self1 = _self_pair(g, g.var1, gen)
        self2 = self1 if g.var2 is g.var1 else _self_pair(g, g.var2, gen)
        return Draws(cross, self1, self2, g.full)


class MapLaw(Law):
    """``layer`` (pointwise: ``layer.pointwise(u, need_derivative)`` gives phi(u) and phi'(u)) of a value."""

    def __init__(self, parent: Law, layer):
        super().__init__(parent.full)
        self.parent, self.layer = parent, layer
        self.gaussian = parent.gaussian and getattr(layer, "linear", False)

    @property
    def roots(self):
        return self.parent.roots

    def _draw(self, k) -> Draws:
        return map_draws(self.parent.draws(widest(k, self)), self.layer)


class SumLaw(Law):
    """The sum of values."""

    def __init__(self, parts: list[Law]):
        super().__init__(all(p.full for p in parts))
        self.parts = parts
        self.gaussian = all(p.gaussian for p in parts)  # jointly Gaussian values sum to a Gaussian

    @property
    def roots(self):
        return frozenset().union(*(p.roots for p in self.parts))

    def _draw(self, k) -> Draws:
        return combine([p.draws(widest(k, self)) for p in self.parts], "sum")


class ProductLaw(SumLaw):
    """The elementwise product of values."""

    gaussian = False

    def __init__(self, parts: list[Law]):
        super().__init__(parts)
        self.gaussian = False

    def _draw(self, k) -> Draws:
        return combine([p.draws(widest(k, self)) for p in self.parts], "product")


class Drawn(Law):
    """Draws already made (by a layer that needed them to compute its kernel)."""

    def __init__(self, draws: Draws, roots: frozenset):
        super().__init__(draws.full)
        self._draws, self._roots = draws, roots

    @property
    def roots(self):
        return self._roots


class Opaque(Law):
    """A value computed from values with laws by a layer that does not track them (normalization, pooling, a
    recurrent layer, ...): its correlation with them is known to exist, its joint law is not."""

    def __init__(self, full: bool, roots: frozenset, layer):
        super().__init__(full)
        self._roots, self.layer = roots, layer

    @property
    def roots(self):
        return self._roots

    def _draw(self, k) -> Draws:
        raise ValueError(f"the output of {self.layer!r} is combined with a value it is correlated with, but its "
                         "joint law with that value is not tracked through this layer (only activations, scalings, "
                         "sums and products, and the random affine layers after them, are); restructure the "
                         "model so that a random affine layer separates the two")


def untracked(layer, k_in, k_out):
    """The output of ``layer``, which does not track laws, given its input: a fresh random affine output is
    independent of everything before it (no law), any other output of inputs with laws is :class:`Opaque`."""
    inputs = k_in if isinstance(k_in, tuple) else (k_in,)
    roots = frozenset().union(*(x.law.roots for x in inputs if x.law is not None))

    def strip(k):
        if isinstance(k, tuple):
            return tuple(strip(x) for x in k)
        if not roots or getattr(layer, "fresh_output", False):
            return k if k.law is None else k.replace(law=None)
        return k.replace(law=Opaque(k.full, roots, layer))

    return strip(k_out)


def law_of(k) -> Law:
    """The law of the value whose kernel is ``k``: its own, or (none recorded) Gaussian with kernel ``k``."""
    return k.law if k.law is not None else GaussianLaw(k)


def independent(laws: list[Law]) -> bool:
    """Whether no two of ``laws`` reuse the same draws (values from disjoint origins)."""
    seen: set = set()
    for law in laws:
        roots = law.roots
        if seen & roots:
            return False
        seen |= roots
    return True


def map_draws(d: Draws, layer) -> Draws:
    """A pointwise layer applied to draws: phi(u), and phi'(u) t for the tangents."""

    def fn(u, t):
        value, slope = layer.pointwise(u, t is not None)
        return value, (None if t is None else slope * t)

    return d.map(fn)


def combine(draws: list[Draws], how: str) -> Draws:
    """The sum or (product rule) product of the values of several draws, member by member."""

    def join(pairs: list[Pair]) -> Pair:
        def one(us, ts):
            if how == "sum":
                return sum(us), (None if any(t is None for t in ts) else sum(ts))
            value = math.prod(us)
            if any(t is None for t in ts):
                return value, None
            tangent = sum(t * math.prod(u for j, u in enumerate(us) if j != i) for i, t in enumerate(ts))
            return value, tangent

        u1, t1 = one([p.u1 for p in pairs], [p.t1 for p in pairs])
        if all(p.u2 is p.u1 for p in pairs):
            return Pair(u1, u1, t1, t1)
        u2, t2 = one([p.u2 for p in pairs], [p.t2 for p in pairs])
        return Pair(u1, u2, t1, t2)

    s1 = join([d.self1 for d in draws])
    same = all(d.self2 is d.self1 for d in draws)
    return Draws(join([d.cross for d in draws]), s1, s1 if same else join([d.self2 for d in draws]), draws[0].full)


def drawn_kernel(k, draws: Draws, roots: frozenset):
    """``k`` with the moments of ``draws`` (in ``k``'s layout) and those draws as its law."""
    return draws.moments(k).replace(law=Drawn(draws, roots))


def widest(k, law: Law):
    """The kernel whose layout a law's parts are drawn in: its own widest layout (``k`` only seeds)."""
    return k if k.full == law.full else k.replace(full=law.full)


def generator(k) -> torch.Generator:
    state = k.sampling
    if state is None:
        raise ValueError("internal error: a value's joint law is needed outside a sampled computation")
    device = k.var1.device
    return torch.Generator(device=device).manual_seed(state.next_seed())


def normal(shape, like: Tensor, gen: torch.Generator) -> Tensor:
    """DRAWS standard normal numbers, one per draw, shaped to broadcast over entries of ``shape``: every entry
    uses the same numbers (common random numbers; each entry's own law, all a kernel's moments need, is exact,
    and drawing one number per draw instead of one per entry and draw is what keeps draws cheap)."""
    return torch.randn((DRAWS,) + (1,) * len(shape), generator=gen, dtype=like.dtype, device=like.device)


def _gaussian_pair(cov: Tensor, v1: Tensor, v2: Tensor, theta: Tensor | None, gen) -> Pair:
    """Draws of (u, u') ~ N(0, [[v1, cov], [cov, v2]]) per entry, and tangents with E[t t'] = theta."""
    cov, v1, v2 = torch.broadcast_tensors(cov, v1, v2)
    s1, s2 = v1.clamp(min=0).sqrt(), v2.clamp(min=0).sqrt()
    denom = s1 * s2
    rho = torch.where(denom > 0, cov / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(cov))
    rho = rho.clamp(-1.0, 1.0)
    xi1, xi2 = normal(cov.shape, cov, gen), normal(cov.shape, cov, gen)  # broadcast over the entries
    u1 = s1 * xi1
    u2 = s2 * (rho * xi1 + (1 - rho * rho).clamp(min=0).sqrt() * xi2)
    if theta is None:
        return Pair(u1, u2)
    eta = normal(theta.shape, theta, gen)
    scale = theta.abs().sqrt()
    return Pair(u1, u2, scale * eta, torch.sign(theta) * scale * eta)


def _self_pair(k, var: Tensor, gen) -> Pair:
    """Draws of each example with itself: its value at both positions of every full-layout entry, or one
    value per position in the diagonal layout."""
    if not k.full:
        u = var.clamp(min=0).sqrt() * normal(var.shape, var, gen)
        return Pair(u, u)
    n, s = len(var), k.spatial
    d = k._position_variances(var)
    ones = (1,) * len(s)
    return _gaussian_pair(var, d.reshape(n, *s, *ones), d.reshape(n, *ones, *s), None, gen)
