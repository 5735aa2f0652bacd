"""The infinite-width architecture of an ordinary ``torch.nn.Module``: :func:`from_torch`.

A model is read in one of two ways:

* modules built by infinet (``net.build()``) carry their description, so they are read structurally and
  give back exactly ``net``'s kernels;
* any other model is traced with ``torch.fx`` (``nn.Sequential`` and fx-traceable ``forward`` methods);
  standard layers are leaves, and the graph of calls becomes infinet combinators: a value used twice is a
  ``FanOut``, an addition of two values a ``FanInSum`` (a residual connection), ``torch.cat`` over
  channels a ``FanInConcat``, a product of two values a ``FanInProd``. Each join shares the longest common
  path of its branches, so nested residual blocks come out as nested ``serial`` / ``parallel`` blocks.

**Initialization.** A PyTorch model is in the standard parameterization (z = W y + b), and the kernel
is the limit of models initialized as this one, with every width growing. ``init='pytorch'`` (default)
takes torch's default initialization of its layers: for Linear and Conv, W and b uniform with
Var W = 1 / (3 fan_in) and Var b = 1 / (3 fan_in) (kaiming_uniform with a = sqrt(5)), so w_std = 1/sqrt(3)
and b_std = 1/sqrt(3 fan_in) at this model's fan-in; for ConvTranspose torch's fan-in is
out_channels x filter size. ``init='parameters'`` reads the variances off this model's own weights
(w_std = rms(W) sqrt(fan_in), b_std = rms(b)): for custom initializations. Either way the weights are
taken i.i.d. zero-mean Gaussian with those variances. PyTorch draws them uniform: the limits agree wherever
a layer's fan-in grows with the widths, but a first layer on a few input features has non-Gaussian
pre-activations under uniform weights (tests/test_from_torch.py shows a 5-feature MLP off by 4 standard
errors), so redraw weights Gaussian (``nn.init.normal_``) for the models whose limit you want exactly. An
nn.RNN's two biases b_ih and b_hh are kept apart (``Recurrent(bias_terms=2)``): in the standard
parameterization each adds its own NTK term. The limit of a trained model is not its kernel.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from . import layers as L
from .layers.activations import Activation
from .layers.base import Context, Layer, Spec
from .torch_dataflow import InplaceProxy, InplaceRefused, check_dataflow, functionalize, seeded_run
from .torch_modules import (UnsupportedModuleError, _convert_module, _infinet_module, _KeepDims,  # noqa: F401
                            _LayerNormShape, _RNNLayers, TorchLinear)

INITS = ("pytorch", "parameters")


# ------------------------------------------------------------------ torch.fx graphs
class _Tracer(fx.Tracer):
    """Standard torch.nn layers and infinet-built modules are leaves; everything else is traced through.
    Augmented assignments are recorded as the in-place operators they are (:class:`InplaceProxy`)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _infinet_module(m) is not None or super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return InplaceProxy(node, self)


_FUNCTIONS: dict[Callable, Callable[..., Layer]] = {
    F.relu: L.Relu, torch.relu: L.Relu, torch.tanh: L.Tanh, F.tanh: L.Tanh, torch.sigmoid: L.Sigmoid,
    F.sigmoid: L.Sigmoid, F.silu: L.Silu, torch.erf: L.Erf, torch.sin: L.Sin, torch.cos: L.Cos, torch.abs: L.Abs,
    torch.exp: L.Exp, torch.sign: L.Sign,
}
_METHODS = {"relu": L.Relu, "tanh": L.Tanh, "sigmoid": L.Sigmoid, "erf": L.Erf, "sin": L.Sin, "cos": L.Cos,
            "abs": L.Abs, "exp": L.Exp, "sign": L.Sign}
#: arithmetic on values, by function or method: what it is
_ARITHMETIC = {operator.add: "add", torch.add: "add", "add": "add", operator.sub: "sub", torch.sub: "sub", "sub": "sub",
               operator.mul: "mul", torch.mul: "mul", "mul": "mul", operator.truediv: "div", torch.div: "div",
               "div": "div", "truediv": "div"}


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

    def __init__(self, builder: _Builder, index: int, kind: str = "tensor", rnn=None):
        self.builder, self.index, self.kind, self.rnn = builder, index, kind, rnn

    def then(self, key: str, layer: Layer, kind: str | None = None) -> "_Term":
        index = self.builder.add(layer, (self.index,), key)
        return _Term(self.builder, index, self.kind if kind is None else kind, self.rnn)

    @property
    def time_axis(self) -> int:
        return 1 if self.rnn.batch_first else 0


def _join(terms: list, key: str, fan_in: Layer) -> _Term:
    """The values ``terms`` joined by ``fan_in``: one node reading them all. Values shared by the branches are
    the same values of the graph (one value read twice, never two copies with independent weights); the kernel
    engine gives correlated branches their joint law (:mod:`infinet.engine.laws`)."""
    fan_in.origin = f"torch node {key}"
    builder = terms[0].builder
    return _Term(builder, builder.add(fan_in, tuple(t.index for t in terms), key))


def _scalar(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _module_term(node: fx.Node, first: _Term, module, where: str, init: str, shapes: dict) -> _Term:
    """The term of a call of a submodule (its layer after ``first``; an RNN starts a recurrent term)."""
    layer = _convert_module(module, where, init)
    if isinstance(layer, _RNNLayers):
        if first.index != 0:
            raise UnsupportedModuleError(f"{where} (RNN): an nn.RNN must read the model's input directly (its "
                                         "layout is moved to infinet's N x C x L there)")
        shapes["input_permutation"] = (0, 2, 1) if layer.batch_first else (1, 2, 0)
        return _Term(first.builder, first.builder.add(layer.layer, (0,), node.name), "rnn", layer)
    if isinstance(layer, TorchLinear) and shapes:
        layer.infer(Spec(shapes[node.args[0].name][1:]), Context())  # refuses a Linear on (N, L, C) here
    if isinstance(layer, _KeepDims):
        layer = layer.layer
    elif isinstance(layer, _LayerNormShape):
        layer = _layer_norm(layer, _rank(shapes, node.args[0]))
    return first.then(node.name, layer)


def _rank(shapes: dict, node) -> int | None:
    """The number of non-batch axes of ``node``'s value on the example input (None when not known)."""
    shape = shapes.get(getattr(node, "name", None))
    return None if shape is None else len(shape) - 1


def _is_batch_size(node) -> bool:
    """Whether an fx node is the batch size of a value: ``x.size(0)``, ``x.shape[0]`` or ``x.size()[0]``."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None) == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        source = node.args[0]
        return isinstance(source, fx.Node) and (
            (source.op == "call_function" and source.target is getattr and source.args[1] == "shape")
            or (source.op == "call_method" and source.target == "size" and len(source.args) == 1))
    return False


def _reshape(node: fx.Node, where: str, shapes: dict) -> Layer:
    """``view`` / ``reshape`` to (batch, -1) or (-1, features): Flatten; anything else is refused."""
    shape = node.args[1:] if node.op == "call_method" else node.args[1]
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
    if len(shape) == 2 and shape[1] == -1 and (_is_batch_size(shape[0]) or shape[0] == -1):
        return L.Flatten()
    source = shapes.get(node.args[0].name)
    if len(shape) == 2 and shape[0] == -1 and source is not None and shape[1] == math.prod(source[1:]):
        return L.Flatten()
    hint = "" if source is not None else "; pass example_input to from_torch to check other shapes"
    raise UnsupportedModuleError(f"{where}: reshape to {shape} has no counterpart: only a flatten of each example, "
                                 f"x.view(x.size(0), -1), keeps the batch{hint}")


def _arithmetic(node, op, args, tensor_args, where, unary) -> _Term:
    """Sums, differences and products of two values (joins); scalar multiples and quotients (Scale)."""
    if op in ("add", "sub") and node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedModuleError(f"{where}: torch.{op} with alpha has no counterpart; write a + c * b")
    if len(tensor_args) == 2 and op in ("add", "sub", "mul"):
        a, b = tensor_args
        if op == "sub":
            b = b.then(f"{node.name}.negated", L.Scale(-1.0))
        return _join([a, b], node.name, L.FanInProd() if op == "mul" else L.FanInSum())
    if len(tensor_args) == 1:
        c = _scalar(args[1] if isinstance(args[0], _Term) else args[0])
        if op == "mul" and c is not None:
            return unary(L.Scale(c))
        if op == "div" and isinstance(args[0], _Term) and c is not None and c != 0:
            return unary(L.Scale(1.0 / c))
        if op in ("add", "sub"):
            raise UnsupportedModuleError(f"{where}: adding a constant shifts the mean; it has no counterpart")
    raise UnsupportedModuleError(f"{where}: this {op} has no counterpart (sums, differences and products of two "
                                 "values, and multiples of one by a number, have)")


def _node_layer(node: fx.Node, terms: dict, modules: dict, init: str, shapes: dict) -> _Term | None:
    """The term of one fx node (raises for anything without a counterpart); None for sizes and shapes."""
    where = node.name if node.op != "call_module" else str(node.target)
    args = [terms.get(a) if isinstance(a, fx.Node) else a for a in node.args]
    tensor_args = [a for a in args if isinstance(a, _Term)]
    first = tensor_args[0] if tensor_args else None

    def unary(layer):
        return first.then(node.name, layer)

    target = node.target
    if node.op in ("call_method", "call_function") and (target in ("size", "dim") or target is getattr
                                                           or (target is operator.getitem and first is None)):
        return None  # sizes and shapes: read by reshapes, never values of the network
    if first is not None and first.kind != "tensor":
        return _recurrent_output(node, first, where, args)
    if node.op == "call_module":
        return _module_term(node, first, modules[node.target], where, init, shapes)
    if node.op == "call_function" and target in _FUNCTIONS:
        return unary(_FUNCTIONS[target]())
    if node.op == "call_method" and target in _METHODS:
        return unary(_METHODS[target]())
    if node.op in ("call_function", "call_method") and target in _ARITHMETIC:
        return _arithmetic(node, _ARITHMETIC[target], args, tensor_args, where, unary)
    if node.op == "call_function" and target in (F.leaky_relu,):
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return unary(L.LeakyRelu(slope))
    if node.op == "call_function" and target in (F.gelu,):
        return unary(L.Gelu() if node.kwargs.get("approximate", "none") == "none"
                     else L.Elementwise(lambda x: F.gelu(x, approximate="tanh"), name="gelu_tanh"))
    if node.op == "call_function" and target in (F.elu,):
        return unary(L.Elu(node.kwargs.get("alpha", node.args[1] if len(node.args) > 1 else 1.0)))
    if (node.op == "call_function" and target in (torch.flatten,)) or (node.op == "call_method" and target == "flatten"):
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
        if start != 1 or end != -1:
            raise UnsupportedModuleError(f"{where}: flatten from dim {start} to {end} has no counterpart (use "
                                         "start_dim=1, the default end_dim=-1)")
        return unary(L.Flatten())
    if node.op == "call_method" and target in ("view", "reshape") or (node.op == "call_function"
                                                                        and target is torch.reshape):
        return unary(_reshape(node, where, shapes))
    if node.op == "call_function" and target is torch.cat:
        items = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        rank = _rank(shapes, items[0]) if items else None
        if (dim == 1 or (rank is not None and dim % (rank + 1) == 1)) and all(isinstance(a, fx.Node) for a in items):
            return _join([terms[a] for a in items], node.name, L.FanInConcat())
        raise UnsupportedModuleError(f"{where}: torch.cat over dim {dim} has no counterpart (channels, dim=1, only)")
    if node.op == "call_function" and target is F.dropout:
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        return unary(L.Dropout(p, train=bool(training)))
    if node.op == "call_function" and target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        if all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
            return unary(L.GlobalAvgPool())
    if node.op == "call_method" and target == "mean" and _rank(shapes, node.args[0]) is not None:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        n = _rank(shapes, node.args[0]) + 1
        if n > 2 and sorted(d % n for d in dims) == list(range(2, n)) and not node.kwargs.get("keepdim", False):
            return unary(L.GlobalAvgPool())
    if node.op == "call_method" and target == "mean" and not shapes:
        raise UnsupportedModuleError(f"{where} (.mean()): pass example_input to from_torch, so that the axes it "
                                     "averages can be told apart (over all positions it is global average pooling)")
    what = node.meta.get("infinet_inplace", node.target)
    what = what if node.op != "call_method" else f".{what}()"
    raise UnsupportedModuleError(f"{where} ({getattr(what, '__name__', what)}) has no infinite-width counterpart in "
                                 "infinet")


def _recurrent_output(node: fx.Node, term: _Term, where: str, args: list) -> _Term:
    """Reading an nn.RNN's outputs: its sequence, the last step of it, the final state, a mean over time,
    and position-wise layers on the sequence (Linear, activations)."""
    rnn = term.rnn
    last = L.Index(":, :, -1")
    if node.op == "call_function" and node.target is operator.getitem:
        index = args[1]
        if term.kind == "rnn" and index in (0, 1):
            return _Term(term.builder, term.index, "sequence" if index == 0 else "state", rnn)
        if term.kind == "state" and rnn.num_layers == 1 and not rnn.bidirectional and index in (0, -1):
            return term.then(node.name, last, "tensor")
        if term.kind == "sequence":
            items = index if isinstance(index, tuple) else (index,)
            t = term.time_axis
            picked = items[t] if len(items) > t else None
            rest_whole = all(i == slice(None) for j, i in enumerate(items) if j != t)
            if isinstance(picked, int) and rest_whole and (t == 0 or items[0] == slice(None)):
                return term.then(node.name, L.Index(f":, :, {picked}"), "tensor")
    if node.op == "call_method" and node.target == "squeeze" and term.kind == "state":
        if rnn.num_layers == 1 and not rnn.bidirectional and args[1:] in ([0], []):
            return term.then(node.name, last, "tensor")
    if term.kind == "sequence" and node.op == "call_method" and node.target == "mean":
        dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dims in (term.time_axis, (term.time_axis,)) and not node.kwargs.get("keepdim", False):
            return term.then(node.name, L.GlobalAvgPool(), "tensor")
    raise UnsupportedModuleError(f"{where}: this use of an nn.RNN's {term.kind} has no counterpart; read the output "
                                 "sequence, its last step (out[:, -1]), a mean over time, or h_n of a one-layer RNN")


def _layer_norm(marker: _LayerNormShape, input_rank: int | None) -> Layer:
    layer = _layer_norm_axes(marker, input_rank)
    return layer if marker.affine is None else L.serial(layer, marker.affine)


def _layer_norm_axes(marker: _LayerNormShape, input_rank: int | None) -> Layer:
    if input_rank is None:
        raise UnsupportedModuleError(f"{marker.where} (LayerNorm): pass example_input to from_torch, so that the axes "
                                     "it normalizes over can be told apart")
    if len(marker.shape) == 1 and input_rank == 1:
        return L.LayerNorm("channels", marker.eps)
    if input_rank is not None and len(marker.shape) == input_rank:
        return L.LayerNorm("channels_space", marker.eps)
    raise UnsupportedModuleError(f"{marker.where} (LayerNorm{marker.shape}): only normalization over all features "
                                 "(vectors, or C x H x W) has a counterpart")


def from_torch(model: nn.Module, example_input: Tensor | None = None, *, init: str = "pytorch",
               samples: int | None = None, replicates: int | None = None) -> Layer:
    """The infinite-width architecture of ``model`` (see :mod:`infinet.from_torch` for what is read and what
    is assumed about initialization): ``from_torch(model).kernel(x)`` is the NNGP / NTK that ``model``'s
    outputs approach as its widths grow, with every Linear / Conv initialized i.i.d. as ``init`` says
    (Lee et al. 2018; Jacot et al. 2018; in the standard parameterization, Sohl-Dickstein et al. 2020).

    The graph is read as torch computes it: in-place operations change the value they act on for every
    later reader (:mod:`infinet.engine.torch_dataflow`). With ``example_input`` (a batch in the model's
    layout) LayerNorm shapes are resolved, the rewritten graph is run and compared with ``model``'s own
    output, and the architecture is checked layer by layer, so that a refusal names the torch node.
    Anything without an exact counterpart raises
    :class:`~infinet.engine.torch_modules.UnsupportedModuleError` naming the node and
    module in the model (e.g. ``features.3 (MaxPool2d)``) and what to do: a module with weights called twice,
    nn.Linear on a tensor with more than one feature axis, a constructor argument that is not honoured. A value
    read by several later operations is one value of a :class:`~infinet.layers.values.ValueGraph` (never two
    copies), and correlated values that meet again get their joint law (:mod:`infinet.engine.laws`).
    ``samples`` and ``replicates`` set those of the sampled layers it creates (MaxPool, BatchNorm in training
    mode, GRU, LSTM; their defaults otherwise). ``from_torch(net.build())`` gives back ``net``'s layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(model).__name__}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    direct = _infinet_module(model)
    if direct is not None:
        return direct
    work = copy.deepcopy(model)  # functionalize turns the copy's in-place modules out of place
    try:
        graph = _Tracer().trace(work)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
        raise UnsupportedModuleError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e}); "
                                     "write its forward without data-dependent control flow") from None
    modules = dict(work.named_modules())
    try:
        functionalize(graph, modules)
        shapes = _shapes(model, work, graph, example_input)
    except InplaceRefused as e:
        raise UnsupportedModuleError(str(e)) from None
    _refuse_shared_weights(graph, modules)
    terms: dict = {}
    builder = _Builder()
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if terms:
                raise UnsupportedModuleError(f"{node.name}: models with more than one input have no counterpart")
            terms[node] = _Term(builder, 0)
        elif node.op == "output":
            output = node.args[0]
        elif node.op == "get_attr":
            raise UnsupportedModuleError(f"{node.target}: a parameter or buffer used directly in forward has no "
                                         "counterpart (use it inside a module)")
        else:
            terms[node] = _node_layer(node, terms, modules, init, shapes)
    if not isinstance(output, fx.Node) or terms.get(output) is None:
        raise UnsupportedModuleError("the model must return one tensor")
    term = terms[output]
    if term.kind != "tensor":
        raise UnsupportedModuleError(f"the model returns an nn.RNN's {term.kind}; return a tensor read from it")
    permutation = shapes.get("input_permutation")
    targets = {n.name: n.target for n in graph.nodes}
    nodes, names = _reachable(fold_activations(builder.nodes), term.index, targets)
    for layer, _ in nodes:
        _sampling_options(layer, samples, replicates)
    if example_input is not None:
        _validate(nodes, names, shapes, permutation)
    layers = _architecture(nodes, names)
    return layers if permutation is None else TorchInputOrder([layers], permutation)


def _sampling_options(layer, samples: int | None, replicates: int | None) -> None:
    """Set ``samples`` / ``replicates`` of the sampled layers from_torch created (each a fresh object)."""
    from . import sampling

    if getattr(layer, "sampled", False):
        sampling.check_options(type(layer).__name__, samples or layer.samples, replicates or layer.replicates,
                               layer.seed)
        layer.samples, layer.replicates = samples or layer.samples, replicates or layer.replicates
    for part in getattr(layer, "layers", ()):
        _sampling_options(part, samples, replicates)


def _reachable(nodes: list, output: int, targets: dict) -> tuple[list, list]:
    """The nodes the output depends on, renumbered in an order where each follows what it reads ([layer,
    inputs]), and their names ("key (module)")."""
    order, seen, stack = [], {0}, [(output, False)]
    while stack:  # depth first, each node after the nodes it reads (a topological order)
        v, expanded = stack.pop()
        if expanded:
            order.append(v)
            continue
        if v in seen:
            continue
        seen.add(v)
        stack.append((v, True))
        stack.extend((j, False) for j in reversed(nodes[v - 1][1]) if j not in seen)
    index = {0: 0, **{v: i + 1 for i, v in enumerate(order)}}
    kept = [[nodes[v - 1][0], [index[j] for j in nodes[v - 1][1]]] for v in order]
    names = []
    for v in order:
        key = nodes[v - 1][2]
        where = targets.get(key, key)
        names.append(key if where == key or not isinstance(where, str) else f"{key} ({where})")
    return kept, names


def _architecture(nodes: list, names: list) -> Layer:
    """A chain of layers each reading the one before (a Sequential model) as ``serial``; any other graph of
    values as a :class:`~infinet.layers.values.ValueGraph`."""
    if not nodes:
        return L.Identity()
    reads = [j for _, inputs in nodes for j in inputs]
    if all(inputs == [i] for i, (_, inputs) in enumerate(nodes)) and len(reads) == len(set(reads)):
        return L.serial(*[layer for layer, _ in nodes])
    return L.ValueGraph(nodes, names)


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


def _refuse_shared_weights(graph: fx.Graph, modules: dict) -> None:
    """A module with weights called more than once shares them between its calls; the architecture would give
    each call weights of its own (a different limit), so that is refused, naming the module."""
    calls: dict = {}
    for node in graph.nodes:
        if node.op == "call_module" and any(True for _ in modules[node.target].parameters()):
            calls.setdefault(node.target, []).append(node.name)
    for target, names in calls.items():
        if len(names) > 1:
            raise UnsupportedModuleError(
                f"{target} ({type(modules[target]).__name__}) is called {len(names)} times ({', '.join(names)}): its "
                "weights are shared between the calls, whose infinite-width kernel from_torch does not compute; "
                "use one module per call")


def _validate(nodes: list, names: list, shapes: dict, permutation) -> None:
    """Check the architecture node by node on the example's shape, naming the torch node where it fails."""
    shape = shapes["input"]
    if permutation is not None:
        shape = tuple(shape[i] for i in permutation)
    if not nodes:
        return
    try:
        L.ValueGraph(nodes, names).infer(Spec(tuple(shape[1:])), Context())
    except ValueError as e:
        raise UnsupportedModuleError(str(e)) from None


class TorchInputOrder(L.Serial):
    """An architecture whose kernels take inputs in the torch model's own layout (nn.RNN's (N, L, C) or
    (L, N, C)): ``kernel`` permutes them to infinet's N x C x L first (``input_permutation``). Its ``build()``
    and every other method use infinet's layout."""

    def __init__(self, layers, input_permutation: tuple[int, ...]):
        super().__init__(layers)
        self.input_permutation = tuple(input_permutation)

    def kernel(self, x1, x2=None, *args, **kwargs):
        """:meth:`~infinet.layers.base.Layer.kernel` of inputs in the torch model's layout."""
        perm = self.input_permutation

        def order(x):
            return None if x is None else torch.as_tensor(x).permute(*perm)

        return super().kernel(order(x1), order(x2), *args, **kwargs)


def _shapes(model: nn.Module, work: nn.Module, graph: fx.Graph, example_input: Tensor | None) -> dict:
    """Per fx node, the shape of its value on ``example_input`` ("input": the input's), from a run of the
    rewritten graph over ``work`` that is checked against ``model``'s own output; {} without an example."""
    if example_input is None:
        return {}
    shapes: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, Tensor):
                shapes[n.name] = tuple(out.shape)
            return out

    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    x = torch.as_tensor(example_input)
    x = x.to(dtypes[0]) if dtypes and x.is_floating_point() else x
    shapes["input"] = tuple(x.shape)
    try:
        got = seeded_run(Recorder(fx.GraphModule(work, graph)).run, x)
    except (RuntimeError, TypeError, IndexError) as e:
        raise ValueError(f"example_input of shape {tuple(x.shape)} does not run through the model: {e}") from None
    check_dataflow(model, x, got)
    return shapes
