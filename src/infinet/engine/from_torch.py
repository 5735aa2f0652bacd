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
from . import torch_layouts as layouts
from .torch_graph import _Builder, _join, _Term
from .torch_rewrites import fold_activations
from .torch_attention import HandSplitAttention, fuse_attention
from . import torch_sequences as sequences
from .torch_sequences import recurrent_output
from .torch_dataflow import InplaceProxy, InplaceRefused, check_dataflow, functionalize, seeded_run
from .torch_modules import (AttentionCall, EncoderCall, UnsupportedModuleError, _convert_module, _infinet_module, _KeepDims,  # noqa: F401
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


def _scalar(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _module_term(node: fx.Node, first: _Term, module, where: str, init: str, shapes: dict, terms: dict) -> _Term:
    """The term of a call of a submodule (its layer after ``first``; an RNN starts a recurrent term)."""
    if isinstance(module, HandSplitAttention):
        sequences.check_tokens(first, module.where, "scaled_dot_product_attention")
        return first.then(node.name, module.layer(init))
    layer = _convert_module(module, where, init)
    if isinstance(layer, _RNNLayers):
        if first.index != 0:
            raise UnsupportedModuleError(f"{where} (RNN): an nn.RNN must read the model's input directly (its "
                                         "layout is moved to infinet's N x C x L there)")
        permutation = (0, 2, 1) if layer.batch_first else (1, 2, 0)
        if shapes.get("input_permutation", permutation) != permutation:
            raise UnsupportedModuleError(f"{where} (RNN): the model's input is read in two layouts (by the RNN and as "
                                         "tokens by another layer)")
        shapes["input_permutation"] = permutation
        return _Term(first.builder, first.builder.add(layer.layer, (0,), node.name), "rnn", layer)
    if isinstance(layer, AttentionCall):
        source = shapes.get(node.args[0].name) if node.args and isinstance(node.args[0], fx.Node) else None
        return sequences.attention_term(node, first, layer, terms, None if source is None else source[1])
    if isinstance(layer, EncoderCall):
        return sequences.encoder_term(node, first, layer)
    if isinstance(layer, L.Embedding):
        if first.index != 0:
            raise UnsupportedModuleError(f"{where} (Embedding): an nn.Embedding must read the model's input (token "
                                         "indices) directly")
        if shapes.get("input") is not None and len(shapes["input"]) != 2:
            raise UnsupportedModuleError(f"{where} (Embedding): token indices must have shape (N, L), got "
                                         f"{shapes['input']}")
        return first.then(node.name, layer, order=(1, 0))  # torch's (N, L, C): positions, then channels
    if first.order is not None:
        return first.then(node.name, _positionwise(layer, first.order, where))
    if isinstance(layer, TorchLinear) and shapes.get(node.args[0].name) is not None:
        layer.infer(Spec(shapes[node.args[0].name][1:]), Context())  # refuses a Linear on (N, L, C) here
    if isinstance(layer, _KeepDims):
        layer = layer.layer
    elif isinstance(layer, _LayerNormShape):
        layer = _layer_norm(layer, _rank(shapes, node.args[0]))
    return first.then(node.name, layer)


def _positionwise(layer, order: tuple, where: str) -> Layer:
    """A module on a value in another axis order than infinet's ((N, L, C) tokens): torch's Linear and LayerNorm
    act on the last axis, which must hold the channels; activations and dropout act on each entry."""
    channels_last = order[-1] == 0
    if isinstance(layer, TorchLinear) and channels_last:
        return layer.as_dense()
    if isinstance(layer, _LayerNormShape) and channels_last and len(layer.shape) == 1:
        return _layer_norm(layer, 1)  # over the channels alone, as over a vector's features
    if isinstance(layer, (Activation, L.Dropout, L.Identity)):
        return layer
    raise UnsupportedModuleError(f"{where}: this module acts on a value whose axes are in torch order {order} "
                                 "(0 the channels, 1... positions), which has no counterpart here: Linear and "
                                 "LayerNorm need the channels last; other modules need (N, C, ...) (permute first)")


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


def _arithmetic(node, op, args, tensor_args, where, unary, rank=None) -> _Term:
    """Sums, differences and products of two values (joins); scalar multiples and quotients (Scale); sums with a
    parameter (a positional embedding: its Constant)."""
    if op in ("add", "sub") and node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedModuleError(f"{where}: torch.{op} with alpha has no counterpart; write a + c * b")
    if any(isinstance(a, layouts.ParameterTerm) for a in tensor_args) and op not in ("add", "sub"):
        raise UnsupportedModuleError(f"{where}: a {op} with a parameter used directly has no counterpart (sums and "
                                     "concatenations have)")
    if len(tensor_args) == 2 and op in ("add", "sub", "mul"):
        a, b = tensor_args
        if op == "sub" and isinstance(b, _Term):  # minus a parameter: the same law as plus it
            b = b.then(f"{node.name}.negated", L.Scale(-1.0))
        return _join([a, b], node.name, L.FanInProd() if op == "mul" else L.FanInSum(), rank)
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
    tensor_args = [a for a in args if isinstance(a, (_Term, layouts.ParameterTerm))]
    values = [a for a in tensor_args if isinstance(a, _Term)]
    first = values[0] if values else None
    rank = None if first is None else _value_rank(first, node.args[args.index(first)], shapes)

    def unary(layer, order="same"):
        return first.then(node.name, layer, order=order)

    target = node.target
    if node.op in ("call_method", "call_function") and (target in ("size", "dim") or target is getattr
                                                           or (target is operator.getitem and not tensor_args)):
        return None  # sizes and shapes: read by reshapes, never values of the network
    if first is None and tensor_args and not (node.op == "call_function" and target in _ARITHMETIC):
        return layouts.parameter_op(node, tensor_args[0], args, where, _is_batch_size)
    if first is not None and first.kind != "tensor":
        return recurrent_output(node, first, where, args)
    if node.op == "call_module":
        return _module_term(node, first, modules[node.target], where, init, shapes, terms)
    if target in ("permute", "transpose", torch.permute, torch.transpose):
        return first.reordered(layouts.permuted(first.order, layouts.permute_dims(node, args, rank, where), rank,
                                                where))
    if node.op == "call_function" and target is operator.getitem:
        if rank is None:
            raise UnsupportedModuleError(f"{where}: indexing a value whose axes are not known; pass example_input "
                                         "to from_torch")
        index, order = layouts.index_layer(first.order, args[1], rank, where)
        return unary(index, order)
    if node.op == "call_function" and target in _FUNCTIONS:
        return unary(_FUNCTIONS[target]())
    if node.op == "call_method" and target in _METHODS:
        return unary(_METHODS[target]())
    if node.op in ("call_function", "call_method") and target in _ARITHMETIC:
        return _arithmetic(node, _ARITHMETIC[target], args, tensor_args, where, unary, rank)
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
        if rank is not None and start == 2 and end in (-1, rank) and first.order is None:
            return unary(L.FlattenPositions())  # the positions as one axis: image patches as tokens
        if start != 1 or end != -1:
            raise UnsupportedModuleError(f"{where}: flatten from dim {start} to {end} has no counterpart (use "
                                         "start_dim=1, the default end_dim=-1, or x.flatten(2) of positions)")
        return unary(L.Flatten(), None)  # the next layer's i.i.d. weights make the order of features immaterial
    if node.op == "call_method" and target in ("view", "reshape") or (node.op == "call_function"
                                                                        and target is torch.reshape):
        return unary(_reshape(node, where, shapes), None)
    if node.op == "call_function" and target is torch.cat:
        return _concatenation(node, terms, where, shapes)
    if node.op == "call_function" and target is F.dropout:
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        return unary(L.Dropout(p, train=bool(training)))
    if node.op == "call_function" and target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        if all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
            return unary(L.GlobalAvgPool())
    if node.op == "call_method" and target == "mean" and rank is not None:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        if None not in dims and rank > 1 and not node.kwargs.get("keepdim", False) and sorted(
                layouts.infinet_axis(first.order, d, rank, where) for d in dims) == list(range(1, rank)):
            return unary(L.GlobalAvgPool(), None)
    if node.op == "call_method" and target == "mean" and rank is None:
        raise UnsupportedModuleError(f"{where} (.mean()): pass example_input to from_torch, so that the axes it "
                                     "averages can be told apart (over all positions it is global average pooling)")
    what = node.meta.get("infinet_inplace", node.target)
    what = what if node.op != "call_method" else f".{what}()"
    raise UnsupportedModuleError(f"{where} ({getattr(what, '__name__', what)}) has no infinite-width counterpart in "
                                 "infinet")


def _value_rank(term: _Term, node, shapes: dict) -> int | None:
    """The number of axes after the batch of a value (None when not known: no example input)."""
    rank = _rank(shapes, node)
    return len(term.order) if rank is None and term.order is not None else rank


def _concatenation(node: fx.Node, terms: dict, where: str, shapes: dict) -> _Term:
    """torch.cat over channels (FanInConcat) or positions (ConcatPositions: a class token before a sequence)."""
    items = node.args[0]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if not all(isinstance(a, fx.Node) for a in items):
        raise UnsupportedModuleError(f"{where}: torch.cat of values and constants has no counterpart")
    parts = [terms[a] for a in items]
    values = [(a, t) for a, t in zip(items, parts) if isinstance(t, _Term)]
    if not values:
        raise UnsupportedModuleError(f"{where}: torch.cat of parameters alone has no counterpart")
    rank = _value_rank(values[0][1], values[0][0], shapes)
    if rank is None and dim == 1:
        return _join(parts, node.name, L.FanInConcat())
    if rank is None:
        raise UnsupportedModuleError(f"{where}: torch.cat over dim {dim} of values whose axes are not known; pass "
                                     "example_input to from_torch")
    return _join(parts, node.name, layouts.concat_layer(values[0][1].order, dim, rank, where), rank)


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
        fuse_attention(graph, modules, work)
        shapes = _shapes(model, work, graph, example_input)
    except InplaceRefused as e:
        raise UnsupportedModuleError(str(e)) from None
    _refuse_shared_weights(graph, modules)
    terms: dict = {}
    builder = _Builder()
    output = None
    token_input = _token_input(graph, modules, shapes)
    for node in graph.nodes:
        if node.op == "placeholder":
            if terms:
                raise UnsupportedModuleError(f"{node.name}: models with more than one input have no counterpart")
            terms[node] = _Term(builder, 0, order=None if token_input is None else token_input[0])
            if token_input is not None:
                shapes["input_permutation"] = token_input[1]
        elif node.op == "output":
            output = node.args[0]
        elif node.op == "get_attr":
            terms[node] = layouts.parameter(node, work)
        else:
            terms[node] = _node_layer(node, terms, modules, init, shapes)
    if not isinstance(output, fx.Node) or terms.get(output) is None:
        raise UnsupportedModuleError("the model must return one tensor")
    term = terms[output]
    if not isinstance(term, _Term):
        raise UnsupportedModuleError("the model returns a parameter, not a value computed from its input")
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


def _token_input(graph: fx.Graph, modules: dict, shapes: dict) -> tuple | None:
    """(axis order, input permutation) when the model reads its input as tokens (N, ..., C), channels last: a
    Linear on an input with several axes (torch's acts on the last), nn.MultiheadAttention or a transformer
    encoder reading it directly. The kernel then takes inputs in that layout (:class:`TorchInputOrder`)."""
    rank = len(shapes["input"]) - 1 if shapes else None
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        for user in node.users:
            module = modules.get(user.target) if user.op == "call_module" else None
            attention = isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder,
                                            HandSplitAttention))
            if attention or (isinstance(module, nn.Linear) and rank is not None and rank >= 2):
                r = 2 if rank is None else rank
                return tuple(range(1, r)) + (0,), (0, r) + tuple(range(1, r))
    return None


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
