"""Combinators: serial and parallel composition, fan-out and fan-in, identity, repeat.

Each composes both meanings at once: the finite modules and the kernel transforms.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..apply import apply_kernel, fit_layout
from .. import conv_fusion, dense_fusion, laws
from .base import Context, Layer, Spec, as_layer
from .pooling import Flatten
from ...core.checks import check_int


def _pin(k, before=None):
    """Pin the diagonal of symmetric kernels, in place on tensors the layer just made."""
    if isinstance(k, tuple):
        olds = before if isinstance(before, tuple) else (before,) * len(k)
        return tuple(_pin(x, o) for x, o in zip(k, olds))
    fresh = before is not None and not isinstance(before, tuple) and k.nngp is not before.nngp and k.spatial != ()
    return k.pin_diagonal(inplace=fresh)


#: the most layers an architecture may hold in all, counting every copy made by ``repeat`` and every
#: reuse of a sub-network (a short spec such as repeat(repeat(repeat(X, 10000), 10000), 10000) would
#: otherwise describe 10^12 layers and never finish)
MAX_LAYERS = 100_000


def _total(counts, what: str) -> int:
    total = 0
    for c in counts:
        total += c
        if total > MAX_LAYERS:
            break
    if total > MAX_LAYERS:
        raise ValueError(f"{what} would hold more than {MAX_LAYERS:,} layers in all (counting every repeated "
                         "copy); that is beyond what infinet computes")
    return total


class Serial(Layer):
    """Sequential composition: f = f_n o ... o f_1 in both meanings.

    Its kernel transform plans spatial layouts backwards from the output: each layer receives the
    full pixel-pair kernel only if it or a later layer needs it (pooling), else the diagonal.
    """

    masking = "own"  # each part applies its own policy

    keeps_law = True  # its parts decide (infinet.engine.laws)

    replays_variances = True  # see infinet.engine.apply.replays_variances

    plans_layout = True

    in_sequence = True  # its layers apply one after another (infinet.engine.conv_fusion.has_pairs)

    takes_deferred_input = True  # a deferred input kernel goes to its first layer unread (engine.apply.takes_deferred)

    def __init__(self, layers: Sequence[Layer]):
        self.layers = tuple(as_layer(layer) for layer in layers)
        self.n_layers = _total((layer.n_layers for layer in self.layers), "this serial composition")

    def input_layers(self) -> list:
        return self.layers[0].input_layers() if self.layers else [self]

    def needs_full(self, full_out):
        for layer in reversed(self.layers):
            full_out = layer.needs_full(full_out)
        return full_out

    def __repr__(self) -> str:
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"

    def infer(self, spec, ctx: Context):
        for layer in self.layers:
            spec = layer.infer(spec, ctx)
        return spec

    def kernel_fn(self, k, full_out=True):
        outs = []
        for layer in reversed(self.layers):
            outs.append(full_out)
            full_out = layer.needs_full(full_out)
        outs.reverse()
        i, fresh = 0, None
        while i < len(self.layers):
            layer, out = self.layers[i], outs[i]
            k = fit_layout(k, layer.needs_full(out))
            fused_out = self._fused_run(i, k, outs, owned=k is fresh)
            if fused_out is not None:  # a kernel made here and held by nothing else: the next step may overwrite it
                k, i = fused_out[0], i + fused_out[1]
                fresh = k
                continue
            k = _pin(apply_kernel(layer, k, out), k)
            i += 1
        return k

    def _fused_run(self, i: int, k, outs: list, owned: bool = False):
        """(the kernel after layers i, i + 1, ..., how many layers) computed in one pass (a Conv and its activation,
        :mod:`infinet.engine.conv_fusion`; Dense layers and their activations, :mod:`infinet.engine.dense_fusion`),
        or None: layer i alone. ``owned``: ``k`` is the previous such pass's output (its tensors may be
        overwritten)."""
        if i + 1 >= len(self.layers):
            return None
        layer, nxt = self.layers[i], self.layers[i + 1]
        if conv_fusion.applies(layer, nxt, k, outs[i + 1]):
            if not k.full:  # same-position pairs: every Conv + activation step after it in one pass
                return self._diagonal_chain(i, k, outs)
            out = conv_fusion.conv_activation(layer, nxt, k, owned)
            return None if out is None else (out, 2)
        run = dense_fusion.stages(self.layers, i, k)
        out = dense_fusion.dense_chain(run, k) if run else None
        return None if out is None else (out, 2 * len(run) - (run[-1][1] is None))

    def _diagonal_chain(self, i: int, k, outs: list):
        """:func:`conv_fusion.diagonal_chain` from layer i, and a Flatten right after its steps with them (its
        means over the positions from the compiled loop; the laws and the variance trace by :func:`apply_kernel`)."""
        run = conv_fusion.diagonal_run(self.layers, i, k, outs)
        after = i + 2 * len(run)
        flatten = self.layers[after] if after < len(self.layers) and type(self.layers[after]) is Flatten \
            and k.mask1 is None else None
        out = conv_fusion.diagonal_chain(run, k, flatten)
        if out is None or len(out) == 2:
            return out
        k, used, flat = out
        return apply_kernel(flatten, k, outs[after], computed=flat), used + 1

    def module(self, spec, ctx: Context) -> nn.Module:
        modules = []
        for layer in self.layers:
            modules.append(layer.module(spec, ctx))
            spec = layer.infer(spec, ctx)
        return SerialModule(*modules)


class SerialModule(nn.Sequential):
    """nn.Sequential that also passes tuples (branches) between its children."""


def serial(*layers: Layer) -> Serial:
    """Compose layers in sequence (neural-tangents ``stax.serial``)."""
    return Serial(layers)


class Repeat(Serial):
    """``layer`` applied ``n`` times in sequence; its repr keeps the ``repeat`` (short specs for deep nets)."""

    def __init__(self, layer: Layer, n: int):
        check_int(n, "repeat count", 0)
        layer = as_layer(layer)
        if n * layer.n_layers > MAX_LAYERS:  # checked before the copies are listed
            _total((n * layer.n_layers,), f"repeat(..., {n})")
        self.layer, self.n = layer, n
        super().__init__([layer] * n)

    def __repr__(self) -> str:
        return f"repeat({self.layer!r}, {self.n})"


def repeat(layer: Layer, n: int) -> Serial:
    """``layer`` applied ``n`` times in sequence, each copy with its own independent weights."""
    return Repeat(layer, n)


class Identity(Layer):
    """The identity, f(x) = x; as a branch of a residual block it carries the skip connection."""

    masking = "own"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    keeps_law = True

    def __repr__(self) -> str:
        return "Identity()"

    def infer(self, spec, ctx):
        return spec

    def kernel_fn(self, k):
        return k

    def module(self, spec, ctx) -> nn.Module:
        return nn.Identity()


class Parallel(Layer):
    """Apply the i-th layer to the i-th branch (input: a tuple of as many branches as layers)."""

    masking = "own"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    keeps_law = True

    def __init__(self, layers: Sequence[Layer]):
        if not layers:
            raise ValueError("parallel needs at least one layer")
        self.layers = tuple(as_layer(layer) for layer in layers)
        self.n_layers = _total((layer.n_layers for layer in self.layers), "this parallel composition")

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(map(repr, self.layers)) + ")"

    def _branches(self, stream):
        if not isinstance(stream, tuple) or len(stream) != len(self.layers):
            got = len(stream) if isinstance(stream, tuple) else 1
            raise ValueError(f"parallel of {len(self.layers)} layers needs {len(self.layers)} branches, got {got}; use FanOut({len(self.layers)}) first")
        return stream

    def infer(self, spec, ctx):
        return tuple(layer.infer(s, ctx) for layer, s in zip(self.layers, self._branches(spec)))

    plans_layout = True

    def _outs(self, full_out):
        return full_out if isinstance(full_out, tuple) else (full_out,) * len(self.layers)

    def needs_full(self, full_out):
        return tuple(layer.needs_full(o) for layer, o in zip(self.layers, self._outs(full_out)))

    def kernel_fn(self, k, full_out=True):
        outs = self._outs(full_out)
        return tuple(apply_kernel(layer, fit_layout(x, layer.needs_full(o)), o)
                     for layer, x, o in zip(self.layers, k, outs))

    def module(self, spec, ctx) -> nn.Module:
        branches = self._branches(spec)
        return ParallelModule([layer.module(s, ctx) for layer, s in zip(self.layers, branches)])


class ParallelModule(nn.ModuleList):
    def forward(self, xs: tuple) -> tuple:
        return tuple(m(x) for m, x in zip(self, xs))


def parallel(*layers: Layer) -> Parallel:
    """Apply layers to branches in parallel (neural-tangents ``stax.parallel``)."""
    return Parallel(layers)


class FanOut(Layer):
    """Copy one input into ``n`` branches."""

    masking = "own"

    replays_variances = True  # see infinet.engine.apply.replays_variances

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"FanOut needs a positive integer number of branches, got {n!r}")
        self.n = n

    def __repr__(self) -> str:
        return f"FanOut({self.n})"

    def infer(self, spec, ctx):
        self._single(spec)
        return (spec,) * self.n

    def needs_full(self, full_out):
        return any(full_out) if isinstance(full_out, tuple) else full_out

    keeps_law = True

    def kernel_fn(self, k):
        return (shared(k),) * self.n

    def module(self, spec, ctx) -> nn.Module:
        return FanOutModule(self.n)


def shared(k):
    """``k`` for a value read by several layers: where joint laws are drawn (:mod:`infinet.engine.laws`), a
    Gaussian value gets a law of its own, so that all its readers draw it the same."""
    if k.law is None and k.sampling is not None and k.sampling.laws:
        return k.replace(law=laws.GaussianLaw(k))
    return k


class FanOutModule(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> tuple:
        return (x,) * self.n


class _FanIn(Layer):
    """Join branches. Branches must be independent at infinite width (see :meth:`_check_independent`)."""

    masking = "own"  # branches of one input share its padding

    op = ""

    keeps_law = True  # FanInSum and FanInProd track joint laws; FanInConcat drops them (its kernel_fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def _check(self, stream, ctx: Context | None = None) -> tuple:
        if not isinstance(stream, tuple):
            raise ValueError(f"{self!r} joins branches but got a single input; use FanOut and parallel first")
        for i in range(len(stream)):
            for j in range(i + 1, len(stream)):
                try:
                    self._check_independent(stream, i, j)
                except ValueError:
                    if not all(b.law_known for b in stream):
                        raise
                    # correlated known functions of Gaussian values: their joint law is drawn (infinet.engine.laws)
                    (ctx or Context()).need_draws()
        return stream

    #: the Spec field naming the random layers that make a branch independent of another: "fresh" (a sum
    #: needs one branch to be zero-mean random output: E[z_i z_j'] = 0, and the NTK's cross terms vanish) or
    #: "own" (a product needs independence only: E[a b a' b'] = E[a a'] E[b b'])
    independence = "fresh"
    #: what is missing when the check fails, for the error message
    missing = "neither ends in a random layer of its own, e.g. two Identity branches"

    def _check_independent(self, stream, i: int, j: int) -> None:
        """Branches i and j are independent at infinite width when one of them has random layers (the
        ``independence`` field of its Spec) that the other does not depend on."""
        a, b = stream[i], stream[j]
        own_a, own_b = getattr(a, self.independence), getattr(b, self.independence)
        if (own_a is not None and not (own_a & b.ancestry)) or (own_b is not None and not (own_b & a.ancestry)):
            return
        origin = getattr(self, "origin", None)  # where a converted model's join sits (from_torch sets it)
        raise ValueError(
            f"{self!r}{'' if origin is None else f' ({origin})'}: branches {i} and {j} are correlated "
            f"({self.missing}), and one of them is not a known function of Gaussian values (it passed through "
            "pooling, a concatenation, a normalization, or is the raw input), so their joint law is unknown. "
            "Put a Dense layer into one of them"
        )

    def _joined(self, branches, shape) -> Spec:
        fresh = own = None
        if all(b.fresh is not None for b in branches):
            fresh = frozenset().union(*(b.fresh for b in branches))
        if all(b.own is not None for b in branches):
            own = frozenset().union(*(b.own for b in branches))
        ancestry = frozenset().union(*(b.ancestry for b in branches))
        return Spec(shape, gaussian=self._gaussian(branches), fresh=fresh, ancestry=ancestry, own=own,
                    drawable=all(b.law_known for b in branches),
                    centred=isinstance(self, FanInSum) and all(b.gaussian or b.centred for b in branches))

    def _gaussian(self, branches) -> bool:
        return all(b.gaussian for b in branches)


def _same_shapes(layer, branches) -> tuple[int, ...] | None:
    shapes = {b.shape for b in branches if b.shape is not None}
    if len(shapes) > 1:
        raise ValueError(f"{layer!r}: branches have different feature shapes {sorted(shapes)}")
    return shapes.pop() if shapes and all(b.shape is not None for b in branches) else None


class FanInSum(_FanIn):
    """Sum of branches: K = sum_i K_i, Theta = sum_i Theta_i (independent branches)."""

    replays_variances = True  # sums same-position variances as well as full ones

    def infer(self, spec, ctx):
        branches = self._check(spec, ctx)
        return self._joined(branches, _same_shapes(self, branches))

    def kernel_fn(self, ks):
        return _joint(ks, "sum", self._moments)

    def _moments(self, ks):
        first = ks[0]
        var1 = sum(k.var1 for k in ks)
        return first.replace(
            nngp=sum(k.nngp for k in ks),
            ntk=None if first.ntk is None else sum(k.ntk for k in ks),
            var1=var1,
            var2=var1 if first.var2 is first.var1 else sum(k.var2 for k in ks),
        )

    def module(self, spec, ctx) -> nn.Module:
        self._check(spec)
        return _Join("sum")


class FanInProd(_FanIn):
    """Elementwise product of branches: K = prod_i K_i, Theta = sum_i Theta_i prod_{j != i} K_j.

    The product of independent Gaussians is not Gaussian, so a nonlinearity may not follow directly.
    """

    def infer(self, spec, ctx):
        branches = self._check(spec, ctx)
        joined = self._joined(branches, _same_shapes(self, branches))
        return Spec(joined.shape, gaussian=False, fresh=joined.fresh, ancestry=joined.ancestry, own=joined.own,
                    drawable=joined.drawable)

    # a product needs independent branches, not zero-mean ones (e.g. Dense > Relu in one branch, Dense > Erf
    # in the other, whatever else each has passed through since)
    independence = "own"
    missing = ("neither passes through a random layer of its own: e.g. two Identity branches, or branches "
               "sharing their only random layer")

    def kernel_fn(self, ks):
        return _joint(ks, "product", self._moments)

    def _moments(self, ks):
        first = ks[0]
        ntk = None
        if first.ntk is not None:
            ntk = sum(
                ks[i].ntk * math.prod(ks[j].nngp for j in range(len(ks)) if j != i) for i in range(len(ks))
            ) if len(ks) > 1 else first.ntk
        var1 = math.prod(k.var1 for k in ks)
        return first.replace(
            nngp=math.prod(k.nngp for k in ks),
            ntk=ntk,
            var1=var1,
            var2=var1 if first.var2 is first.var1 else math.prod(k.var2 for k in ks),
        )

    def module(self, spec, ctx) -> nn.Module:
        self._check(spec)
        return _Join("prod")


class FanInConcat(_FanIn):
    """Concatenate branches along the feature (channel) axis, dim 1.

    The next random affine layer averages over all n = sum_i n_i features, so K = sum_i (n_i / n) K_i
    and Theta = sum_i (n_i / n) Theta_i, with n_i the finite widths of the branches. The features of
    different branches have different kernels, so the concatenation is not one Gaussian process: a
    nonlinearity may not follow directly (a Dense must come first).

    Unlike a sum, a concatenation needs no independence between its branches (a bidirectional network
    concatenates two recurrent branches of one input): the next layer's independent weights multiply
    features of different branches, so their cross-covariances cancel in K' and in Theta'.
    """

    def _check_independent(self, stream, i: int, j: int) -> None:
        return None

    def infer(self, spec, ctx):
        branches = self._check(spec, ctx)
        shapes = [b.shape for b in branches]
        shape = None
        if not any(s is None for s in shapes):
            if len({s[1:] for s in shapes}) > 1:
                raise ValueError(f"{self!r}: branches differ beyond the feature axis: {shapes}")
            shape = (sum(s[0] for s in shapes),) + shapes[0][1:]
        joined = self._joined(branches, shape)
        return Spec(shape, gaussian=False, fresh=joined.fresh, ancestry=joined.ancestry, own=joined.own)

    def kernel_fn(self, ks):
        widths = [k.shape[0] for k in ks]
        total = sum(widths)

        def mix(get):
            return sum(get(k) * (w / total) for k, w in zip(ks, widths))

        first = ks[0]
        var1 = mix(lambda k: k.var1)
        return first.replace(
            law=None,  # not one value: the features of each branch have their own law
            nngp=mix(lambda k: k.nngp),
            ntk=None if first.ntk is None else mix(lambda k: k.ntk),
            var1=var1,
            var2=var1 if first.var2 is first.var1 else mix(lambda k: k.var2),
            shape=(total,) + first.shape[1:],
        )

    def module(self, spec, ctx) -> nn.Module:
        self._check(spec)
        return _Join("concat")


def _joint(ks, how: str, moments):
    """A sum or product of branches: ``moments(ks)``, the closed form, where the branches' laws allow it (for a
    sum, each pair independent with one zero-mean Gaussian member; for a product, independent branches), else
    the moments of their joint draws (:mod:`infinet.engine.laws`)."""
    first = ks[0]
    if first.sampling is None or not first.sampling.laws:
        return moments(ks)
    parts = [laws.law_of(k) for k in ks]
    pairs = [(a, b) for i, a in enumerate(parts) for b in parts[i + 1:]]
    closed = all(laws.independent([a, b]) and (how == "product" or a.gaussian or b.gaussian) for a, b in pairs)
    if closed:
        return moments(ks).replace(law=(laws.SumLaw if how == "sum" else laws.ProductLaw)(parts))
    draws = laws.combine([p.draws(k) for p, k in zip(parts, ks)], how)
    return laws.drawn_kernel(first, draws, frozenset().union(*(p.roots for p in parts)))


class _Join(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, xs: tuple) -> Tensor:
        if self.how == "concat":
            return torch.cat(xs, dim=1)
        out = xs[0]
        for x in xs[1:]:
            out = out + x if self.how == "sum" else out * x
        return out

    def extra_repr(self) -> str:
        return self.how
