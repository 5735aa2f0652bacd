"""The graph of values that from_torch builds while it reads a traced torch model: nodes (layer, the values it
reads, torch node name), and the value each fx node stands for (:class:`_Term`)."""

from __future__ import annotations

from . import torch_layouts as layouts
from .layers.base import Layer
from .torch_modules import UnsupportedModuleError


class _Builder:
    """The graph of values being read off a torch model: nodes (layer, the values it reads, torch node name);
    value 0 is the model's input, value i + 1 the output of node i."""

    def __init__(self):
        self.nodes: list = []

    def add(self, layer: Layer, inputs: tuple, key: str) -> int:
        self.nodes.append([layer, tuple(inputs), key])
        return len(self.nodes)


class _Term:
    """The value of an fx node: its index in the graph of values being built. ``kind``: 'tensor' (infinet's
    layout), 'sequence' (an nn.RNN output, time on axis ``time_axis``), 'rnn' (the (output, h_n) tuple) or
    'state' (h_n)."""

    def __init__(self, builder: _Builder, index: int, kind: str = "tensor", rnn=None, order: tuple | None = None):
        self.builder, self.index, self.kind, self.rnn, self.order = builder, index, kind, rnn, order

    def then(self, key: str, layer: Layer, kind: str | None = None, order="same") -> "_Term":
        index = self.builder.add(layer, (self.index,), key)
        return _Term(self.builder, index, self.kind if kind is None else kind, self.rnn,
                     self.order if order == "same" else order)

    def reordered(self, order: tuple | None) -> "_Term":
        return _Term(self.builder, self.index, self.kind, self.rnn, order)

    def as_tensor(self) -> "_Term":
        return _Term(self.builder, self.index, "tensor", None, self.order)

    @property
    def time_axis(self) -> int:
        return 1 if self.rnn.batch_first else 0


def _join(terms: list, key: str, fan_in: Layer, rank: int | None = None) -> _Term:
    """The values ``terms`` joined by ``fan_in``: one node reading them all. Values shared by the branches are
    the same values of the graph (one value read twice, never two copies with independent weights); the kernel
    engine gives correlated branches their joint law (:mod:`infinet.engine.laws`). Parameters among ``terms``
    become Constants in the layout of the values they meet (:mod:`infinet.engine.torch_layouts`); values in
    different axis orders are refused."""
    fan_in.origin = f"torch node {key}"
    values = [t for t in terms if isinstance(t, _Term)]
    if not values:
        raise UnsupportedModuleError(f"{key}: a join of parameters alone has no counterpart")
    like = values[0]
    if any(t.order != like.order for t in values):
        raise UnsupportedModuleError(f"{key}: the values joined here have their axes in different orders; permute "
                                     "them to one layout first")
    builder = like.builder
    indices = []
    for i, t in enumerate(terms):
        if isinstance(t, layouts.ParameterTerm):
            constant = layouts.constant_layer(t, like.order, rank, key)
            indices.append(builder.add(constant, (0,), f"{key}.{t.where}"))
        else:
            indices.append(t.index)
    return _Term(builder, builder.add(fan_in, tuple(indices), key), order=like.order)
