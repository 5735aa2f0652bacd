"""The layer protocol: one description, two meanings (finite module and kernel transform).

A *stream* is what flows between layers: one value, or a tuple of values after ``FanOut``. Every
layer implements three small pure methods over streams:

* ``infer(spec, ctx)``: static facts (feature shape, Gaussianity, which random layers a value
  depends on), used to reject invalid architectures before any kernel tile is computed;
* ``kernel_fn(kernel)``: the infinite-width kernel transform;
* ``module(spec, ctx)``: the finite ``torch.nn.Module`` with the initialization the theory assumes.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field, replace
from typing import Iterable, Union

import torch
from torch import Tensor, nn

from ..kernel import Kernel
from ..apply import apply_kernel, fit_layout, replays_variances  # noqa: F401 (also importable from here, as before)
from ..patterns import AggregateModule, GraphModel
from ..tiling import compute_kernel


@dataclass(frozen=True)
class Spec:
    """Static facts about a value flowing through an architecture.

    shape: per-example feature shape, or None when not known (a lazily built module).
    gaussian: the value is a Gaussian process at infinite width (output of a random affine layer).
    fresh: tokens of the random layers whose fresh, zero-mean weights produced this value (it is
        uncorrelated with anything not depending on them); None when it is not such a value.
    ancestry: tokens of every random layer the value depends on.
    own: tokens of random layers whose fresh outputs this value is a function of, and of nothing else
        reaching it from before them (an activation, normalization or pooling of a random layer's
        output keeps its ``own``): at infinite width it is independent of any value that does not
        depend on those layers (zero-mean only when ``fresh``). None when it has no such layers.
    drawable: the value's joint law with the other values is known (a coordinatewise function of jointly
        Gaussian values, built by activations, scalings, sums and products: :mod:`infinet.engine.laws`),
        so that a nonlinearity or a join with a correlated value may follow. Layers that do not keep it
        true drop it (:func:`with_shape` resets it unless told).
    centred: the value is zero-mean and Gaussian in its values, though not marked ``gaussian`` because its
        tangents are correlated with it (the affine parameters of a normalization at initialization, and
        sums with such values): a LayerNorm may normalize it (:func:`with_shape` resets it unless told).
    """

    shape: tuple[int, ...] | None
    gaussian: bool = False
    fresh: frozenset[int] | None = None
    ancestry: frozenset[int] = field(default_factory=frozenset)
    own: frozenset[int] | None = None
    drawable: bool = False
    centred: bool = False

    @property
    def law_known(self) -> bool:
        """Gaussian, or a known function of Gaussian values (its kernel with others may be drawn)."""
        return self.gaussian or self.drawable


Stream = Union[Spec, tuple]
KernelStream = Union[Kernel, tuple]


class Context:
    """Per-pass state: a token counter for random layers and, when building, a seed stream."""

    def __init__(self, generator: torch.Generator | None = None):
        self._tokens = itertools.count()
        self.generator = generator
        self.draws = False  # set when the kernel needs joint laws by draws (infinet.engine.laws)

    def need_draws(self) -> None:
        """Record that the network's kernel draws joint laws of values (so the tile engine runs replicates)."""
        self.draws = True

    def token(self) -> int:
        return next(self._tokens)

    def seed(self) -> int:
        """A fresh seed for one parametric module, drawn from the build's generator."""
        if self.generator is None:
            return int(torch.randint(0, 2**62, (1,)))
        return int(torch.randint(0, 2**62, (1,), generator=self.generator))


def describe(layer_name: str, stream) -> str:
    if isinstance(stream, tuple):
        return f"{layer_name} expects one input but got {len(stream)} branches; join them with FanInSum, FanInConcat or FanInProd"
    return ""


_DRAWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Layer:
    """Base class of all layers and combinators; any layer is a whole network description."""

    #: layers this description holds in all, every repeated copy counted (combinators sum their parts)
    n_layers: int = 1
    #: how the kernel transform treats padded positions (:mod:`infinet.masks`): "positionwise" (acts on
    #: each position alone; entries at padding are zeroed after it), "own" (handles masks itself) or
    #: "refuse" (raises on masked input: its result would depend on where the padding sits)
    masking: str = "refuse"

    def infer(self, spec: Stream, ctx: Context) -> Stream:  # pragma: no cover - abstract
        raise NotImplementedError

    def kernel_fn(self, k: KernelStream) -> KernelStream:  # pragma: no cover - abstract
        raise NotImplementedError

    def module(self, spec: Stream, ctx: Context) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_layers(self) -> list:
        """The layers that read this layer's input directly (for a combinator, those of its first step): the
        tile engine asks them what the input is (token indices for an :class:`~infinet.Embedding`)."""
        return [self]

    def needs_full(self, full_out):
        """Whether this layer's input kernel must keep every pixel pair (full layout), given whether
        its output must (``full_out``: a bool, or a tuple per branch). Layers that act on each pair of
        positions separately (activations, convolutions, normalization) need what they give; pooling
        needs full; Flatten, Dense and global pooling give vectors. Decides the spatial layout."""
        return full_out

    # -- single-stream helpers -----------------------------------------------------------------
    def _single(self, stream) -> None:
        if isinstance(stream, tuple):
            raise ValueError(describe(repr(self), stream))

    def draws_laws(self, input_shape: tuple[int, ...]) -> bool:
        """Whether, on inputs of per-example ``input_shape``, the kernel draws joint laws of values
        (:mod:`infinet.engine.laws`): the network combines correlated values or applies a nonlinearity to a
        non-Gaussian one. Its inference says so; remembered per shape."""
        known = _DRAWS.setdefault(self, {})
        if input_shape not in known:
            ctx = Context()
            self.infer(Spec(input_shape), ctx)
            known[input_shape] = ctx.draws
        return known[input_shape]

    # -- user-facing API -------------------------------------------------------------------------
    def check(self, input_shape: Iterable[int] | None) -> Stream:
        """Validate the architecture for inputs of per-example ``input_shape``; return the output spec."""
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        return self.infer(Spec(shape), Context())

    def kernel(
        self,
        x1,
        x2=None,
        get: str | Iterable[str] = ("nngp", "ntk"),
        *,
        dtype: torch.dtype = torch.float64,
        tile_size: int | None = None,
        max_memory: int | None = None,
        progress: bool | None = None,
        mask_constant: float | None = None,
        lengths=None,
        lengths2=None,
        pattern=None,
        pattern2=None,
    ) -> Kernel:
        """Exact infinite-width NNGP and NTK between ``x1`` (N1, ...) and ``x2`` (N2, ...).

        ``x2=None`` means x2 = x1 (each off-diagonal tile is then computed once). Computation is
        tiled (see :func:`infinet.engine.tiling.compute_kernel` for ``tile_size``, ``max_memory`` and
        ``progress``); results are float64 unless ``dtype=torch.float32``, on the inputs' device.
        Variable-length sequences in one batch (:mod:`infinet.masks`): ``mask_constant``, positions
        whose channels all equal it are padding; or ``lengths`` (``lengths2`` for x2), each sequence's
        number of valid leading steps. Graphs for :class:`~infinet.Aggregate`: ``pattern`` (one per example
        of x1) and ``pattern2`` (of x2).
        Returns a :class:`~infinet.Kernel` with (N1, N2) ``nngp`` and ``ntk`` (None if not in ``get``).
        """
        return compute_kernel(self, x1, x2, get, dtype=dtype, tile_size=tile_size, max_memory=max_memory,
                              progress=progress, mask_constant=mask_constant, lengths=lengths, lengths2=lengths2,
                              pattern=pattern, pattern2=pattern2)

    def build(
        self,
        input_shape: int | Iterable[int] | None = None,
        *,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The finite ``torch.nn.Module`` this description stands for, freshly initialized.

        Weights are drawn so that, as every width grows, its outputs converge to the NNGP of
        :meth:`kernel` and its tangent kernel to the NTK. ``input_shape`` is the per-example shape
        (e.g. 784 or (784,)); without it, layers are materialized on the first forward pass (lazy),
        still from ``seed``. The same ``seed`` gives the same weights; ``seed=None`` draws from torch's
        global generator, so ``torch.manual_seed`` is honored. A network with :class:`~infinet.Aggregate`
        layers comes wrapped in :class:`~infinet.layers.graph.GraphModel`: call it as ``model(x, pattern=A)``.
        """
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        ctx = Context(torch.Generator().manual_seed(int(seed)))
        model = self.module(Spec(shape), ctx)
        if any(isinstance(m, AggregateModule) for m in model.modules()):
            model = GraphModel(model)
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        return model


def as_layer(obj) -> Layer:
    if not isinstance(obj, Layer):
        raise TypeError(f"expected an infinet layer, got {type(obj).__name__}: {obj!r}")
    return obj


def with_shape(spec: Spec, shape: tuple[int, ...] | None, **changes) -> Spec:
    """``spec`` with a new shape and ``changes``; ``drawable`` and ``centred`` are dropped unless given (a layer
    keeps a known joint law only by saying so)."""
    changes.setdefault("drawable", False)
    changes.setdefault("centred", False)
    return replace(spec, shape=shape, **changes)


def random_output(spec: Spec, ctx: Context, shape: tuple[int, ...] | None) -> Spec:
    """The spec of a fresh random affine layer's output (Dense, Conv, attention's output map): Gaussian, zero-mean,
    independent of everything not reading it; the layer's token joins the value's ancestry."""
    token = ctx.token()
    return with_shape(spec, shape, gaussian=True, fresh=frozenset({token}), ancestry=spec.ancestry | {token},
                      own=frozenset({token}))


class Function(nn.Module):
    """A parameter-free module applying an elementwise function (the finite form of an activation)."""

    def __init__(self, fn, name: str):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
