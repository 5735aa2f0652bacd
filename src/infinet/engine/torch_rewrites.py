"""Rewrites of the graph of values read off a torch model, where the torch order of operations has no kernel
but an equal one does: an activation before a max pooling or after a train-mode BatchNorm taken inside it, and
an activation of a concatenation as the concatenation of activations."""

from __future__ import annotations

from . import layers as L
from .layers.activations import Activation


#: activations with phi(max u) = max phi(u) (non-decreasing), which a max pooling after them may take inside
MONOTONE = (L.Relu, L.Tanh, L.Sigmoid, L.Erf, L.Softplus, L.Elu)


def fold_activations(nodes: list) -> list:
    """Torch's Conv > ReLU > MaxPool as infinet's Conv > MaxPool(activation=ReLU): for a non-decreasing
    activation the two orders agree, and a maximum needs Gaussian inputs; likewise a train-mode BatchNorm
    followed by an activation takes it inside (its output is not Gaussian). Only where the activation's output
    is read by the pooling (normalization) alone. Folded nodes stay in the list, unread."""
    nodes = [list(n) for n in nodes]
    readers: dict = {}
    for _, inputs, _ in nodes:
        for j in inputs:
            readers[j] = readers.get(j, 0) + 1
    for i, (layer, inputs, key) in enumerate(nodes):
        if len(inputs) != 1 or inputs[0] == 0 or readers.get(inputs[0]) != 1:
            continue
        before, before_inputs, _ = nodes[inputs[0] - 1]
        if isinstance(layer, L.MaxPool) and layer.activation is None and _monotone(before):
            affine = None
            if len(before_inputs) == 1 and before_inputs[0] > 0 and readers.get(before_inputs[0]) == 1:
                first, first_inputs, _ = nodes[before_inputs[0] - 1]
                if isinstance(first, L.ElementwiseAffine) and first.gain > 0:  # Conv > BatchNorm > ReLU > MaxPool
                    affine, before_inputs = first, first_inputs
            nodes[i] = [layer.with_activation(before, affine), before_inputs, key]
        elif isinstance(layer, L.MaxPool) and layer.activation is None and isinstance(before, L.BatchNorm) \
                and before.pool is None:  # train-mode BatchNorm (> ReLU) > MaxPool: the maximum of its draws
            nodes[i] = [before.with_pool(layer), before_inputs, key]
        elif isinstance(before, L.BatchNorm) and before.activation is None and before.pool is None \
                and isinstance(layer, Activation):
            nodes[i] = [before.with_activation(layer), nodes[inputs[0] - 1][1], key]
    return _through_concatenations(nodes)


#: layers acting on each channel alone, which a concatenation over channels commutes with
def _channelwise(layer) -> bool:
    return isinstance(layer, (Activation, L.Scale, L.ElementwiseAffine))


def _through_concatenations(nodes: list) -> list:
    """An activation (or per-channel scaling) of a concatenation over channels as the concatenation of the
    activation of each part (DenseNet's BatchNorm > ReLU > Conv on concatenated features): the two are equal,
    and only the second has a kernel (a concatenation is not one Gaussian value). New nodes are appended; the
    rewritten node reads them."""
    readers: dict = {}
    for _, inputs, _ in nodes:
        for j in inputs:
            readers[j] = readers.get(j, 0) + 1
    for i in range(len(nodes)):
        layer, inputs, key = nodes[i]
        if not (_channelwise(layer) and len(inputs) == 1 and inputs[0] > 0 and readers.get(inputs[0]) == 1):
            continue
        concat, parts, concat_key = nodes[inputs[0] - 1]
        if not isinstance(concat, L.FanInConcat):
            continue
        new = []
        for j in parts:
            nodes.append([layer, (j,), f"{key}.{len(new)}"])
            new.append(len(nodes))
        joined = L.FanInConcat()
        joined.origin = getattr(concat, "origin", None)
        nodes[i] = [joined, tuple(new), key]
    return nodes


def _monotone(layer) -> bool:
    if isinstance(layer, L.LeakyRelu):
        return layer.a >= 0
    return type(layer) in MONOTONE
