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

import math
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from . import layers as L
from .layers.base import Layer

INITS = ("pytorch", "parameters")


class UnsupportedModuleError(ValueError):
    """A module or operation with no infinite-width counterpart; the message names it and where it sits."""


# ------------------------------------------------------------------ modules built by infinet
def _infinet_module(m: nn.Module) -> Layer | None:
    """The layer an infinet-built module stands for, or None if ``m`` is not one."""
    from .layers.activations import Activation
    from .layers.base import Function
    from .layers.combinators import FanOutModule, ParallelModule, SerialModule, _Join
    from .layers.conv import ConvModule
    from .layers.dense import DenseModule
    from .patterns import AggregateModule, GraphModel
    from .layers.norm import LayerNormModule
    from .layers.pooling import GlobalPoolModule, PoolModule
    from .layers.position_maps import PositionMapModule
    from .layers.recurrent import RecurrentModule
    from .layers.attention import AttentionModule
    from .layers.sequence import ReverseModule

    if isinstance(m, GraphModel):
        return _infinet_module(m.network)
    if isinstance(m, SerialModule):
        return L.serial(*[_convert_module(child, name, "pytorch") for name, child in m.named_children()])
    if isinstance(m, ParallelModule):
        return L.parallel(*[_convert_module(child, name, "pytorch") for name, child in m.named_children()])
    if isinstance(m, FanOutModule):
        return L.FanOut(m.n)
    if isinstance(m, _Join):
        return {"sum": L.FanInSum, "prod": L.FanInProd, "concat": L.FanInConcat}[m.how]()
    if isinstance(m, DenseModule):
        return L.Dense(m.out_features, w_std=m.w_std, b_std=m.b_std, parameterization=m.parameterization)
    if isinstance(m, (ConvModule, PoolModule, PositionMapModule, AggregateModule, RecurrentModule, AttentionModule)):
        return m.layer
    if isinstance(m, GlobalPoolModule):
        return L.GlobalSumPool() if m.sum_pool else L.GlobalAvgPool()
    if isinstance(m, LayerNormModule):
        return L.LayerNorm(m.axes, m.eps)
    if isinstance(m, ReverseModule):
        return L.Reverse()
    if isinstance(m, Function) and isinstance(getattr(m.fn, "__self__", None), Activation):
        return m.fn.__self__
    return None


# ------------------------------------------------------------------ standard torch modules
def _affine_stds(weight: Tensor, bias: Tensor | None, fan_in: int, init: str, torch_fan_in: int) -> tuple:
    """(w_std, b_std) in the standard parameterization with the convention fan-in ``fan_in``."""
    if init == "pytorch":
        w_std = math.sqrt(fan_in / (3.0 * torch_fan_in))
        b_std = None if bias is None else 1.0 / math.sqrt(3.0 * torch_fan_in)
    else:
        w_std = float(weight.detach().double().pow(2).mean().sqrt()) * math.sqrt(fan_in)
        b_std = None if bias is None else float(bias.detach().double().pow(2).mean().sqrt())
    return w_std, b_std


def _conv_padding(m, where: str) -> str:
    n = len(m.kernel_size)
    pad = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    if m.padding_mode not in ("zeros", "circular"):
        raise UnsupportedModuleError(f"{where} ({type(m).__name__}): padding_mode {m.padding_mode!r} has no "
                                     "counterpart; use 'zeros' or 'circular'")
    circular = m.padding_mode == "circular"
    if pad == "valid" or pad == (0,) * n:  # no padding: the wrap-around mode never applies
        return "VALID"
    same = tuple(d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
    odd = all((d * (k - 1)) % 2 == 0 for k, d in zip(m.kernel_size, m.dilation))
    if (pad == "same" or (pad == same and odd)) and all(s == 1 for s in m.stride):
        return "CIRCULAR" if circular else "SAME"
    raise UnsupportedModuleError(f"{where} ({type(m).__name__}): padding {m.padding} with stride {m.stride} has no "
                                 "counterpart; use padding=0 (VALID), or 'same' / (kernel_size - 1) // 2 with stride 1")


_ELEMENTWISE = {nn.ReLU: L.Relu, nn.Tanh: L.Tanh, nn.Sigmoid: L.Sigmoid, nn.SiLU: L.Silu}


def _activation_module(m: nn.Module) -> Layer | None:
    if type(m) in _ELEMENTWISE:
        return _ELEMENTWISE[type(m)]()
    if isinstance(m, nn.LeakyReLU):
        return L.LeakyRelu(m.negative_slope)
    if isinstance(m, nn.ELU):
        return L.Elu(m.alpha)
    if isinstance(m, nn.GELU):
        return L.Gelu() if m.approximate == "none" else L.Elementwise(m, name="GELU(tanh)")
    if isinstance(m, nn.Softplus):
        return L.Softplus() if m.beta == 1 and m.threshold >= 20 else L.Elementwise(m, name=repr(m))
    if isinstance(m, (nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign,
                      nn.Tanhshrink, nn.LogSigmoid, nn.Softshrink, nn.Hardshrink)):
        return L.Elementwise(m, name=repr(m))
    return None


def _torch_module(m: nn.Module, where: str, init: str) -> Layer:
    """The layer of one standard torch module, or :class:`UnsupportedModuleError` naming it."""
    act = _activation_module(m)
    if act is not None:
        return act
    name = type(m).__name__
    if isinstance(m, nn.Linear):
        w, b = _affine_stds(m.weight, m.bias, m.in_features, init, m.in_features)
        return L.Dense(m.out_features, w_std=w, b_std=b, parameterization="standard")
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.groups != 1:
            raise UnsupportedModuleError(f"{where} ({name}): grouped convolutions (groups={m.groups}) have no "
                                         "counterpart")
        fan_in = m.in_channels * math.prod(m.kernel_size)
        w, b = _affine_stds(m.weight, m.bias, fan_in, init, fan_in)
        return L.Conv(m.out_channels, tuple(m.kernel_size), stride=tuple(m.stride), padding=_conv_padding(m, where),
                      dilation=tuple(m.dilation), w_std=w, b_std=b, parameterization="standard")
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if m.groups != 1 or any(p != 0 for p in m.padding) or any(p != 0 for p in m.output_padding):
            raise UnsupportedModuleError(f"{where} ({name}): only padding=0, output_padding=0, groups=1 have a "
                                         "counterpart (ConvTranspose with VALID padding)")
        size = math.prod(m.kernel_size)
        w, b = _affine_stds(m.weight, m.bias, m.in_channels * size, init, m.out_channels * size)
        return L.ConvTranspose(m.out_channels, tuple(m.kernel_size), stride=tuple(m.stride), padding="VALID",
                               dilation=tuple(m.dilation), w_std=w, b_std=b, parameterization="standard")
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        if any(p != 0 for p in pad) or m.ceil_mode:
            raise UnsupportedModuleError(f"{where} ({name}): only padding=0 without ceil_mode has a counterpart")
        return L.AvgPool(m.kernel_size, stride=m.stride, padding="VALID")
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            raise UnsupportedModuleError(f"{where} ({name}): only output size 1 (global average pooling) has a "
                                         "counterpart")
        return _KeepDims(L.GlobalAvgPool())
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedModuleError(f"{where} (Flatten): only start_dim=1, end_dim=-1 has a counterpart")
        return L.Flatten()
    if isinstance(m, nn.Dropout):
        return L.Dropout(m.p, train=m.training)
    if isinstance(m, nn.Identity):
        return L.Identity()
    if isinstance(m, nn.LayerNorm):
        if m.elementwise_affine:
            raise UnsupportedModuleError(f"{where} (LayerNorm): its elementwise affine parameters add terms to the NTK "
                                         "that infinet's LayerNorm does not model; use elementwise_affine=False")
        return _LayerNormShape(tuple(m.normalized_shape), m.eps, where)
    if isinstance(m, nn.RNN):
        return _rnn(m, where, init)
    if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        raise UnsupportedModuleError(
            f"{where} ({name}): torch's attention scales logits by 1/sqrt(d), and with softmax that limit has no closed "
            "form (Hron et al. 2020: only the IDENTITY mechanism does); write the model with "
            "infinet.GlobalSelfAttention (1/d scaling, neural-tangents' semantics)")
    if isinstance(m, (nn.GRU, nn.LSTM)):
        raise UnsupportedModuleError(f"{where} ({name}): gated recurrent layers have no closed-form limit; their "
                                     "kernels by Gaussian sampling per layer are planned (Yang 2019, Tensor Programs I)")
    if isinstance(m, nn.Sequential):
        return L.serial(*[_convert_module(child, f"{where}.{n}", init) for n, child in m.named_children()])
    raise UnsupportedModuleError(f"{where} ({name}) has no infinite-width counterpart in infinet")


def _convert_module(m: nn.Module, where: str, init: str) -> Layer:
    layer = _infinet_module(m)
    return layer if layer is not None else _torch_module(m, where, init)


class _KeepDims:
    """Marker: global pooling that keeps singleton spatial axes in torch (AdaptiveAvgPool to 1); infinet's
    global pooling drops them, which a following flatten makes equivalent."""

    def __init__(self, layer: Layer):
        self.layer = layer


class _LayerNormShape:
    """Marker: nn.LayerNorm over its trailing ``normalized_shape``, resolved once the input rank is known."""

    def __init__(self, shape: tuple[int, ...], eps: float, where: str):
        self.shape, self.eps, self.where = shape, eps, where


def _rnn(m: nn.RNN, where: str, init: str) -> Layer:
    """nn.RNN (Elman, tanh or relu) as Recurrent layers returning sequences. torch draws every weight and both
    biases from U(-1/sqrt(H), 1/sqrt(H)), H the hidden size: Var = 1 / (3H), so in the standard
    parameterization w_std = 1/sqrt(3), u_std = sqrt(d / (3H)) and b_std = sqrt(2 / (3H)) (b_ih + b_hh)."""
    if m.proj_size:
        raise UnsupportedModuleError(f"{where} (RNN): proj_size has no counterpart")
    act = L.Tanh() if m.nonlinearity == "tanh" else L.Relu()
    out, d = [], m.input_size
    for layer in range(m.num_layers):
        cells = []
        for suffix in ("", "_reverse")[: 2 if m.bidirectional else 1]:
            w_hh, w_ih = getattr(m, f"weight_hh_l{layer}{suffix}"), getattr(m, f"weight_ih_l{layer}{suffix}")
            biases = [getattr(m, f"{b}_l{layer}{suffix}") for b in ("bias_ih", "bias_hh")] if m.bias else None
            h = m.hidden_size
            if init == "pytorch":
                w_std, u_std = 1.0 / math.sqrt(3.0), math.sqrt(d / (3.0 * h))
                b_std = None if biases is None else math.sqrt(2.0 / (3.0 * h))
            else:
                rms = lambda t: float(t.detach().double().pow(2).mean().sqrt())  # noqa: E731
                w_std, u_std = rms(w_hh) * math.sqrt(h), rms(w_ih) * math.sqrt(d)
                b_std = None if biases is None else math.sqrt(rms(biases[0]) ** 2 + rms(biases[1]) ** 2)
            cells.append(L.Recurrent(act, h, w_std=w_std, u_std=u_std, b_std=b_std, parameterization="standard",
                                     bias_terms=1 if biases is None else 2))
        out.append(L.bidirectional(*cells) if m.bidirectional else cells[0])
        if m.dropout and m.training and layer < m.num_layers - 1:
            out.append(L.Dropout(m.dropout))
        d = h * (2 if m.bidirectional else 1)
    return _RNNLayers(L.serial(*out), m.batch_first, m.num_layers, m.bidirectional)


class _RNNLayers:
    """Marker: the layers of an nn.RNN and the facts needed to read its (output, h_n) tuple."""

    def __init__(self, layer: Layer, batch_first: bool, num_layers: int, bidirectional: bool):
        self.layer, self.batch_first, self.num_layers, self.bidirectional = layer, batch_first, num_layers, bidirectional


# ------------------------------------------------------------------ torch.fx graphs
class _Tracer(fx.Tracer):
    """Standard torch.nn layers and infinet-built modules are leaves; everything else is traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _infinet_module(m) is not None or super().is_leaf_module(m, qualname)


_FUNCTIONS: dict[Callable, Callable[..., Layer]] = {
    F.relu: L.Relu, torch.relu: L.Relu, torch.tanh: L.Tanh, F.tanh: L.Tanh, torch.sigmoid: L.Sigmoid,
    F.sigmoid: L.Sigmoid, F.silu: L.Silu, torch.erf: L.Erf, torch.sin: L.Sin, torch.cos: L.Cos, torch.abs: L.Abs,
    torch.exp: L.Exp, torch.sign: L.Sign,
}
_METHODS = {"relu": L.Relu, "tanh": L.Tanh, "sigmoid": L.Sigmoid, "erf": L.Erf, "sin": L.Sin, "cos": L.Cos,
            "abs": L.Abs, "exp": L.Exp, "sign": L.Sign}


class _Term:
    """The value of an fx node: the steps (key, layer) that compute it from the model's input. ``kind``:
    'tensor' (infinet's layout), 'sequence' (an nn.RNN output, time on axis ``time_axis``), 'rnn' (the
    (output, h_n) tuple) or 'state' (h_n)."""

    def __init__(self, steps: tuple, kind: str = "tensor", rnn=None):
        self.steps, self.kind, self.rnn = steps, kind, rnn

    def then(self, key: str, layer: Layer, kind: str | None = None) -> "_Term":
        return _Term(self.steps + ((key, layer),), self.kind if kind is None else kind, self.rnn)

    @property
    def time_axis(self) -> int:
        return 1 if self.rnn.batch_first else 0


def _join(terms: list, key: str, fan_in: Layer) -> _Term:
    """The branches ``terms`` joined by ``fan_in`` after their longest common path."""
    common = 0
    while all(len(t.steps) > common for t in terms) and len({t.steps[common][0] for t in terms}) == 1:
        common += 1
    branches = [L.serial(*[layer for _, layer in t.steps[common:]]) if len(t.steps) > common + 1 else
                (t.steps[common][1] if len(t.steps) > common else L.Identity()) for t in terms]
    block = L.serial(L.FanOut(len(terms)), L.parallel(*branches), fan_in)
    return _Term(terms[0].steps[:common] + ((key, block),))


def _scalar(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _module_term(node: fx.Node, first: _Term, module, where: str, init: str, rank: dict) -> _Term:
    """The term of a call of a submodule (its layer after ``first``; an RNN starts a recurrent term)."""
    layer = _convert_module(module, where, init)
    if isinstance(layer, _RNNLayers):
        if first.steps:
            raise UnsupportedModuleError(f"{where} (RNN): an nn.RNN must read the model's input directly (its "
                                         "layout is moved to infinet's N x C x L there)")
        rank["input_permutation"] = (0, 2, 1) if layer.batch_first else (1, 2, 0)
        return _Term(((node.name, layer.layer),), "rnn", layer)
    if isinstance(layer, _KeepDims):
        layer = layer.layer
    elif isinstance(layer, _LayerNormShape):
        layer = _layer_norm(layer, rank.get(node.args[0].name))
    return first.then(node.name, layer)


def _node_layer(node: fx.Node, terms: dict, modules: dict, init: str, rank: dict) -> _Term:
    """The term of one fx node (raises for anything without a counterpart)."""
    where = node.name if node.op != "call_module" else str(node.target)
    args = [terms.get(a) if isinstance(a, fx.Node) else a for a in node.args]
    tensor_args = [a for a in args if isinstance(a, _Term)]
    first = tensor_args[0] if tensor_args else None

    def unary(layer):
        return first.then(node.name, layer)

    if first is not None and first.kind != "tensor":
        return _recurrent_output(node, first, where, args)
    if node.op == "call_module":
        return _module_term(node, first, modules[node.target], where, init, rank)
    target = node.target
    if node.op == "call_function" and target in _FUNCTIONS:
        return unary(_FUNCTIONS[target]())
    if node.op == "call_method" and target in _METHODS:
        return unary(_METHODS[target]())
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
        if start != 1:
            raise UnsupportedModuleError(f"{where}: flatten from dim {start} has no counterpart (use start_dim=1)")
        return unary(L.Flatten())
    if node.op == "call_method" and target in ("view", "reshape") or (node.op == "call_function"
                                                                        and target is torch.reshape):
        shape = node.args[1:] if node.op == "call_method" else node.args[1]
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
        flat = len(shape) == 2 and shape[1] == -1 and (isinstance(shape[0], fx.Node) or shape[0] == -1)
        if flat:
            return unary(L.Flatten())
        raise UnsupportedModuleError(f"{where}: reshape to {shape} has no counterpart (only x.view(x.size(0), -1))")
    if node.op == "call_function" and target in (operator.add, torch.add, operator.iadd):
        if len(tensor_args) == 2:
            return _join(tensor_args, node.name, L.FanInSum())
        raise UnsupportedModuleError(f"{where}: adding a constant shifts the mean; it has no counterpart")
    if node.op == "call_function" and target in (operator.mul, torch.mul, operator.imul):
        if len(tensor_args) == 2:
            return _join(tensor_args, node.name, L.FanInProd())
        c = _scalar(args[1] if isinstance(args[0], _Term) else args[0])
        if c is not None:
            return unary(L.DotGeneral(rhs=c))
    if node.op == "call_function" and target in (operator.truediv,) and isinstance(args[0], _Term):
        c = _scalar(args[1])
        if c is not None and c != 0:
            return unary(L.DotGeneral(rhs=1.0 / c))
    if node.op == "call_function" and target is torch.cat:
        items = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim == 1 and all(isinstance(a, fx.Node) for a in items):
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
    if node.op == "call_method" and target == "mean" and node.args[0].name in rank:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        n = rank[node.args[0].name] + 1
        if sorted(d % n for d in dims) == list(range(2, n)) and not node.kwargs.get("keepdim", False):
            return unary(L.GlobalAvgPool())
    if node.op == "call_method" and target == "size":
        return None
    what = node.target if node.op != "call_method" else f".{node.target}()"
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
            return _Term(term.steps, "sequence" if index == 0 else "state", rnn)
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
    if input_rank is None:
        raise UnsupportedModuleError(f"{marker.where} (LayerNorm): pass example_input to from_torch, so that the axes "
                                     "it normalizes over can be told apart")
    if len(marker.shape) == 1 and input_rank == 1:
        return L.LayerNorm("channels", marker.eps)
    if input_rank is not None and len(marker.shape) == input_rank:
        return L.LayerNorm("channels_space", marker.eps)
    raise UnsupportedModuleError(f"{marker.where} (LayerNorm{marker.shape}): only normalization over all features "
                                 "(vectors, or C x H x W) has a counterpart")


def from_torch(model: nn.Module, example_input: Tensor | None = None, *, init: str = "pytorch") -> Layer:
    """The infinite-width architecture of ``model`` (see :mod:`infinet.from_torch` for what is read and what
    is assumed about initialization): ``from_torch(model).kernel(x)`` is the NNGP / NTK that ``model``'s
    outputs approach as its widths grow, with every Linear / Conv initialized i.i.d. as ``init`` says.

    ``example_input`` (a batch in the model's layout) lets LayerNorm shapes be resolved and is checked to
    run. A module or operation without an infinite-width counterpart raises
    :class:`UnsupportedModuleError` naming it and its place in the model (e.g. ``features.3 (MaxPool2d)``).
    ``from_torch(net.build())`` gives back ``net``'s layers, with the same kernels.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(model).__name__}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    direct = _infinet_module(model)
    if direct is not None:
        return direct
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
        raise UnsupportedModuleError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e}); "
                                     "write its forward without data-dependent control flow") from None
    modules = dict(model.named_modules())
    ranks = _ranks(model, graph, example_input)
    terms: dict = {}
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if terms:
                raise UnsupportedModuleError(f"{node.name}: models with more than one input have no counterpart")
            terms[node] = _Term(())
        elif node.op == "output":
            output = node.args[0]
        elif node.op == "get_attr":
            raise UnsupportedModuleError(f"{node.target}: a parameter or buffer used directly in forward has no "
                                         "counterpart (use it inside a module)")
        else:
            terms[node] = _node_layer(node, terms, modules, init, ranks)
    if not isinstance(output, fx.Node) or terms.get(output) is None:
        raise UnsupportedModuleError("the model must return one tensor")
    term = terms[output]
    if term.kind != "tensor":
        raise UnsupportedModuleError(f"the model returns an nn.RNN's {term.kind}; return a tensor read from it")
    layers = [layer for _, layer in term.steps] or [L.Identity()]
    permutation = ranks.get("input_permutation")
    return L.serial(*layers) if permutation is None else TorchInputOrder(layers, permutation)


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


def _ranks(model: nn.Module, graph: fx.Graph, example_input: Tensor | None) -> dict:
    """Per fx node, the number of non-batch axes of its value, from a run on ``example_input`` (or {})."""
    if example_input is None:
        return {}
    ranks: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, Tensor):
                ranks[n.name] = out.ndim - 1
            return out

    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    x = torch.as_tensor(example_input)
    x = x.to(dtypes[0]) if dtypes and x.is_floating_point() else x
    with torch.no_grad():
        Recorder(fx.GraphModule(model, graph)).run(x)
    return ranks
