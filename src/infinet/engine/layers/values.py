"""One graph of values: an architecture in which each value is computed once and read by any later layer.

``ValueGraph(nodes)`` lists layers with the values they read: value 0 is the network's input, node i
computes value i + 1 from the values it names (a tuple of them for joins such as FanInSum), and the
last node's value is the output. ``serial``, ``parallel``, ``FanOut`` and the fan-ins describe the same
graphs when every value is read along one path; a graph says directly what a model such as

    h = relu(W1 x); y = relu(W2 h + h); out = W3 (y * h)

computes, where ``h`` is read again after the join that produced ``y`` (neural-tangents has no way to
write it). The kernel engine gives every value read by several layers one joint law shared by all its
readers (:mod:`infinet.engine.laws`): closed forms where the readers' combination has one, draws with
standard errors where it does not (Yang 2019, "Tensor Programs I": all values are coordinatewise
functions of jointly Gaussian pre-activations).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..apply import apply_kernel, fit_layout
from .base import Context, Layer, as_layer
from .combinators import _pin, _total, shared


class ValueGraph(Layer):
    """Layers reading earlier values: ``nodes`` is a list of ``[layer, [inputs...]]`` where inputs index the
    values (0 the network input, i + 1 the output of node i) and the last node gives the output; ``names``
    (optional) name the nodes in error messages (from_torch gives the torch node of each)."""

    masking = "own"
    keeps_law = True
    replays_variances = True
    plans_layout = True

    def __init__(self, nodes: Sequence, names: Sequence[str] | None = None):
        parsed = []
        for i, node in enumerate(nodes):
            if not isinstance(node, (list, tuple)) or len(node) != 2:
                raise ValueError(f"ValueGraph node {i} must be [layer, [input indices]], got {node!r}")
            layer, inputs = as_layer(node[0]), tuple(node[1]) if isinstance(node[1], (list, tuple)) else (node[1],)
            if not inputs or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j <= i for j in inputs):
                raise ValueError(f"ValueGraph node {i} reads values {list(inputs)}: each must be an index from 0 (the "
                                 f"input) to {i} (the output of node {i - 1})")
            parsed.append((layer, inputs))
        if not parsed:
            raise ValueError("ValueGraph needs at least one node")
        if names is not None and len(names) != len(parsed):
            raise ValueError(f"ValueGraph got {len(names)} names for {len(parsed)} nodes")
        self.nodes = tuple(parsed)
        self.names = None if names is None else tuple(str(n) for n in names)
        self.layers = tuple(layer for layer, _ in parsed)
        self.n_layers = _total((layer.n_layers for layer in self.layers), "this graph")

    def __repr__(self) -> str:
        nodes = ", ".join(f"[{layer!r}, {list(inputs)!r}]" for layer, inputs in self.nodes)
        names = "" if self.names is None else f", names={list(self.names)!r}"
        return f"ValueGraph([{nodes}]{names})"

    def _read(self, values: list, inputs: tuple):
        return values[inputs[0]] if len(inputs) == 1 else tuple(values[j] for j in inputs)

    def _named(self, i: int, error: ValueError) -> ValueError:
        if self.names is None:
            return error
        return type(error)(f"torch node {self.names[i]}: {error}")

    def infer(self, spec, ctx: Context):
        values = [spec]
        for i, (layer, inputs) in enumerate(self.nodes):
            try:
                values.append(layer.infer(self._read(values, inputs), ctx))
            except ValueError as e:
                raise self._named(i, e) from None
        return values[-1]

    def _needs(self, full_out) -> list:
        """Whether each value must keep every pixel pair: the union of what its readers need."""
        need = [False] * (len(self.nodes) + 1)
        need[-1] = full_out
        for i in range(len(self.nodes) - 1, -1, -1):
            layer, inputs = self.nodes[i]
            wants = layer.needs_full(need[i + 1])
            for j, input_index in enumerate(inputs):
                w = wants[j] if isinstance(wants, tuple) else wants
                need[input_index] = bool(need[input_index] or w)
        return need

    def input_layers(self) -> list:
        return [part for layer, inputs in self.nodes if 0 in inputs for part in layer.input_layers()]

    def needs_full(self, full_out):
        return self._needs(full_out)[0]

    def kernel_fn(self, k, full_out=True):
        need = self._needs(full_out)
        readers = [0] * (len(self.nodes) + 1)
        for _, inputs in self.nodes:
            for j in inputs:
                readers[j] += 1
        values: list = [shared(k) if readers[0] > 1 else k]
        left = list(readers)
        for i, (layer, inputs) in enumerate(self.nodes):
            out_need = need[i + 1]
            wants = layer.needs_full(out_need)
            read = [fit_layout(values[j], wants[n] if isinstance(wants, tuple) else wants)
                    for n, j in enumerate(inputs)]
            x = read[0] if len(read) == 1 else tuple(read)
            out = _pin(apply_kernel(layer, x, out_need), x)
            values.append(shared(out) if readers[i + 1] > 1 else out)
            for j in inputs:  # free what no later node reads
                left[j] -= 1
                if left[j] == 0 and j < len(values) - 1:
                    values[j] = None
        return values[-1]

    def module(self, spec, ctx: Context) -> nn.Module:
        values, modules = [spec], []
        for layer, inputs in self.nodes:
            read = self._read(values, inputs)
            modules.append(layer.module(read, ctx))
            values.append(layer.infer(read, ctx))
        return ValueGraphModule(modules, [inputs for _, inputs in self.nodes])


class ValueGraphModule(nn.Module):
    """The finite network of a :class:`ValueGraph`: each module reads the values its node names."""

    def __init__(self, modules: list, inputs: list):
        super().__init__()
        self.steps = nn.ModuleList(modules)
        self.inputs = [tuple(i) for i in inputs]

    def forward(self, x):
        values = [x]
        for module, inputs in zip(self.steps, self.inputs):
            values.append(module(values[inputs[0]] if len(inputs) == 1 else tuple(values[j] for j in inputs)))
        return values[-1]
