"""Standard ``torch.nn`` modules as infinet layers: the conversion table of :func:`infinet.from_torch`.

Each mapped module's constructor arguments are either honoured or refused (``ARGUMENTS`` lists, for
every mapped class, the arguments it honours; any other argument must keep its default, or the module is
refused naming it). See :mod:`infinet.engine.from_torch` for the initialization assumed.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from . import layers as L
from .layers.base import Layer

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
    from .layers.values import ValueGraphModule

    if isinstance(m, GraphModel):
        return _infinet_module(m.network)
    if isinstance(m, SerialModule):
        return L.serial(*[_convert_module(child, name, "pytorch") for name, child in m.named_children()])
    if isinstance(m, ValueGraphModule):
        return L.ValueGraph([[_convert_module(step, f"steps.{i}", "pytorch"), list(inputs)]
                             for i, (step, inputs) in enumerate(zip(m.steps, m.inputs))])
    if isinstance(m, ParallelModule):
        return L.parallel(*[_convert_module(child, name, "pytorch") for name, child in m.named_children()])
    if isinstance(m, FanOutModule):
        return L.FanOut(m.n)
    if isinstance(m, _Join):
        return {"sum": L.FanInSum, "prod": L.FanInProd, "concat": L.FanInConcat}[m.how]()
    if isinstance(m, DenseModule):
        return L.Dense(m.out_features, w_std=m.w_std, b_std=m.b_std, parameterization=m.parameterization,
                       trainable=m.weight.requires_grad)
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
    if not circular and not isinstance(pad, str):
        return pad  # PyTorch's zeros on each side, any stride (ResNet's stem: 7x7, stride 2, padding 3)
    raise UnsupportedModuleError(f"{where} ({type(m).__name__}): circular padding {m.padding} with stride {m.stride} "
                                 "has no counterpart; use circular padding (kernel_size - 1) // 2 with stride 1")


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
    if isinstance(m, ELEMENTWISE_MODULES):
        return L.Elementwise(m, name=repr(m))
    return None


#: per mapped class, the constructor arguments whose values the conversion honours (``device`` and ``dtype``
#: never change a limit); every other argument must keep its default (:func:`check_arguments`)
_ALWAYS = frozenset({"device", "dtype", "inplace"})  # inplace: read by infinet.engine.torch_dataflow
# groups, and ConvTranspose's padding and output_padding, are checked where the module is converted
_CONV = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias", "padding_mode", "groups"}
ARGUMENTS: dict[type, frozenset] = {
    nn.Linear: frozenset({"in_features", "out_features", "bias"}),
    **{c: frozenset(_CONV) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{c: frozenset(_CONV | {"output_padding"}) for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    # count_include_pad only matters with padding, which is refused
    **{c: frozenset({"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"})
       for c in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)},
    **{c: frozenset({"output_size"}) for c in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)},
    **{c: frozenset({"kernel_size", "stride", "padding", "ceil_mode"}) for c in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)},
    **{c: frozenset({"num_features", "eps", "momentum", "affine", "track_running_stats", "bias"})
       for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    nn.Upsample: frozenset({"size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"}),
    **{c: frozenset({"input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                     "args", "kwargs"}) for c in (nn.GRU, nn.LSTM)},
    nn.Flatten: frozenset({"start_dim", "end_dim"}),
    # dropout (of the attention weights) only in eval mode; batch_first, kdim, vdim and the extra keys checked in
    # attention()
    nn.MultiheadAttention: frozenset({"embed_dim", "num_heads", "bias", "dropout", "batch_first", "kdim", "vdim",
                                      "add_bias_kv", "add_zero_attn"}),
    nn.TransformerEncoderLayer: frozenset({"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                                           "layer_norm_eps", "batch_first", "norm_first", "bias"}),
    nn.TransformerEncoder: frozenset({"encoder_layer", "num_layers", "norm", "enable_nested_tensor", "mask_check"}),
    # sparse changes how gradients are stored, not what they are
    nn.Embedding: frozenset({"num_embeddings", "embedding_dim", "padding_idx", "sparse", "_weight", "_freeze"}),
    nn.Dropout: frozenset({"p"}),
    nn.Identity: frozenset({"args", "kwargs"}),
    nn.LayerNorm: frozenset({"normalized_shape", "eps", "elementwise_affine", "bias"}),
    nn.RNN: frozenset({"input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                       "bidirectional", "proj_size", "args", "kwargs"}),
    nn.LeakyReLU: frozenset({"negative_slope"}), nn.ELU: frozenset({"alpha"}), nn.GELU: frozenset({"approximate"}),
    nn.Softplus: frozenset({"beta", "threshold"}),
}
#: modules applied as they are (``Elementwise(module)``): every argument is honoured by the module itself
ELEMENTWISE_MODULES = (nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign,
                       nn.Tanhshrink, nn.LogSigmoid, nn.Softshrink, nn.Hardshrink)


def constructor_arguments(cls: type) -> list[str]:
    """The names of ``cls.__init__``'s arguments (after self)."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def check_arguments(m: nn.Module, where: str) -> None:
    """Raise :class:`UnsupportedModuleError` when ``m``'s class is mapped but one of its constructor
    arguments is neither honoured (``ARGUMENTS``) nor at its default value."""
    cls = type(m)
    if cls in _ELEMENTWISE or cls in ELEMENTWISE_MODULES or cls is nn.Sequential:
        return
    honoured = ARGUMENTS.get(cls)
    if honoured is None:
        return
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name in honoured or param.name in _ALWAYS or param.name == "self":
            continue
        if param.default is inspect.Parameter.empty or not hasattr(m, param.name):
            continue
        value = getattr(m, param.name)
        if isinstance(value, tuple) and not isinstance(param.default, tuple):  # torch stores (p, p) for p
            value = value[0] if len(set(value)) == 1 else value
        if value != param.default:
            raise UnsupportedModuleError(f"{where} ({cls.__name__}): {param.name}={getattr(m, param.name)!r} has no "
                                         f"counterpart in infinet; use the default {param.default!r}")


def _torch_module(m: nn.Module, where: str, init: str) -> Layer:
    """The layer of one standard torch module, or :class:`UnsupportedModuleError` naming it."""
    check_arguments(m, where)
    act = _activation_module(m)
    if act is not None:
        return act
    name = type(m).__name__
    if isinstance(m, nn.Linear):
        w, b = _affine_stds(m.weight, m.bias, m.in_features, init, m.in_features)
        if m.bias is not None and m.bias.requires_grad != m.weight.requires_grad:
            raise UnsupportedModuleError(f"{where} (Linear): its weight and bias differ in requires_grad; infinet "
                                         "freezes a layer's weight and bias together (Dense(trainable=False))")
        return TorchLinear(m.out_features, w_std=w, b_std=b, parameterization="standard", where=where,
                           trainable=m.weight.requires_grad)
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
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        dilation = m.dilation if isinstance(m.dilation, tuple) else (m.dilation,)
        if any(d != 1 for d in dilation) or m.return_indices:
            raise UnsupportedModuleError(f"{where} ({name}): dilation and return_indices have no counterpart")
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        padding = "VALID" if all(p == 0 for p in pad) and not m.ceil_mode else (
            m.padding if isinstance(m.padding, int) else tuple(m.padding))
        return L.MaxPool(m.kernel_size, stride=m.stride if m.stride is not None else m.kernel_size, padding=padding,
                         ceil_mode=bool(m.ceil_mode))
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        if m.ceil_mode or (any(p != 0 for p in pad) and not m.count_include_pad):
            raise UnsupportedModuleError(f"{where} ({name}): ceil_mode, and padding with count_include_pad=False, have "
                                         "no counterpart (the divisor would change with the position)")
        padding = "VALID" if all(p == 0 for p in pad) else (m.padding if isinstance(m.padding, int) else tuple(pad))
        pool = L.AvgPool(m.kernel_size, stride=m.stride, padding=padding)
        divisor = getattr(m, "divisor_override", None)
        if divisor is None:
            return pool
        # the window's sum divided by ``divisor`` instead of its size: average pooling times size / divisor
        n = 1 if isinstance(m, nn.AvgPool1d) else (2 if isinstance(m, nn.AvgPool2d) else 3)
        size = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * n
        return L.serial(pool, L.Scale(math.prod(size) / divisor))
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
        if any(s != 1 for s in size):
            return L.AdaptiveAvgPool(m.output_size)
        return _KeepDims(L.GlobalAvgPool())
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return _batch_norm(m, where, init)
    if isinstance(m, nn.Upsample):
        return L.Interpolate(m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)
    if isinstance(m, nn.Embedding):
        return _embedding(m, where, init)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedModuleError(f"{where} (Flatten): only start_dim=1, end_dim=-1 has a counterpart")
        return L.Flatten()
    if isinstance(m, nn.Dropout):
        return L.Dropout(m.p, train=m.training)
    if isinstance(m, nn.Identity):
        return L.Identity()
    if isinstance(m, nn.LayerNorm):
        affine = None
        if m.elementwise_affine:
            affine = _affine(m.weight, m.bias, 1.0, init, where)
        return _LayerNormShape(tuple(m.normalized_shape), m.eps, where, affine)
    if isinstance(m, nn.RNN):
        return _rnn(m, where, init)
    if isinstance(m, nn.MultiheadAttention):
        return AttentionCall(attention(m, where, init), where)
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        return EncoderCall(m, where, init)
    if isinstance(m, (nn.TransformerDecoderLayer, nn.TransformerDecoder, nn.Transformer)):
        raise UnsupportedModuleError(f"{where} ({name}): a decoder attends to a second input (the memory); models "
                                     "with more than one input have no counterpart. Encoders map to "
                                     "ScaledDotProductAttention")
    if isinstance(m, (nn.GRU, nn.LSTM)):
        return _gated(m, where, init)
    if isinstance(m, nn.Sequential):
        return L.serial(*[_convert_module(child, f"{where}.{n}", init) for n, child in m.named_children()])
    raise UnsupportedModuleError(f"{where} ({name}) has no infinite-width counterpart in infinet")


class TorchLinear(L.Dense):
    """``nn.Linear``: a Dense layer that refuses inputs with more than one feature axis. torch's Linear acts on
    the last axis of (N, ..., C) (a per-token MLP), infinet's Dense on the channel axis 1 (N x C x ...); on
    such inputs the two differ, and no kernel is better than the wrong one."""

    def __init__(self, *args, where: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.where = where

    def as_dense(self) -> L.Dense:
        """The same layer on the channels of N x C x ... (for tokens (N, L, C) moved to infinet's layout)."""
        return L.Dense(self.out_features, w_std=self.w_std, b_std=self.b_std, parameterization="standard",
                       trainable=self.trainable)

    def infer(self, spec, ctx):
        if spec.shape is not None and len(spec.shape) > 1:
            raise UnsupportedModuleError(
                f"{self.where} (Linear): input with per-example shape {spec.shape}; torch's Linear acts on the last "
                "axis, infinet's Dense on the channels (axis 1) of N x C x ..., so this has no counterpart yet. "
                "Flatten first, or use a 1x1 Conv over channels")
        return super().infer(spec, ctx)


def _convert_module(m: nn.Module, where: str, init: str) -> Layer:
    layer = _infinet_module(m)
    return layer if layer is not None else _torch_module(m, where, init)


class _KeepDims:
    """Marker: global pooling that keeps singleton spatial axes in torch (AdaptiveAvgPool to 1); infinet's
    global pooling drops them, which a following flatten makes equivalent."""

    def __init__(self, layer: Layer):
        self.layer = layer


class _LayerNormShape:
    """Marker: nn.LayerNorm over its trailing ``normalized_shape``, resolved once the input rank is known, and
    its elementwise affine parameters (an :class:`~infinet.layers.affine.ElementwiseAffine`, or None)."""

    def __init__(self, shape: tuple[int, ...], eps: float, where: str, affine=None):
        self.shape, self.eps, self.where, self.affine = shape, eps, where, affine


def _affine(weight, bias, scale: float, init: str, where: str):
    """The affine parameters of a normalization (gamma, beta): at torch's initialization gamma = 1 and beta = 0;
    with init='parameters' this module's own, which must then be equal over channels with beta = 0."""
    trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
    value = 1.0
    if init == "parameters":
        w = weight.detach().double()
        if not bool((w == w.flatten()[0]).all()) or (bias is not None and bool(bias.detach().ne(0).any())):
            raise UnsupportedModuleError(f"{where}: affine parameters that differ between channels (or a nonzero "
                                         "bias) have no counterpart; the limit is taken at their initialization "
                                         "(weight 1, bias 0)")
        value = float(w.flatten()[0])
    return L.ElementwiseAffine(value, scale, bias=bias is not None, trainable=bool(trainable))


def _batch_norm(m, where: str, init: str) -> Layer:
    """BatchNorm in training mode (or without running statistics): the sampled layer over the batch the kernel is
    computed for; in eval mode an affine map from its running statistics, equal over channels (at
    initialization, mean 0 and variance 1). Its affine parameters, if any, follow with their NTK terms."""
    batch = m.training or not m.track_running_stats
    if batch:
        if m.affine:
            _affine(m.weight, m.bias, 1.0, init, where)  # refuses parameters away from their initialization
        return L.BatchNorm(eps=m.eps, affine=bool(m.affine))
    mean, var = m.running_mean.detach().double(), m.running_var.detach().double()
    if bool(mean.ne(0).any()) or not bool((var == var[0]).all()):
        raise UnsupportedModuleError(f"{where} ({type(m).__name__}): eval mode with running statistics that differ "
                                     "between channels (or a nonzero mean) has no counterpart; the limit is taken at "
                                     "initialization (running mean 0, variance 1)")
    scale = 1.0 / math.sqrt(float(var[0]) + m.eps)
    if not m.affine:
        return L.Scale(scale)
    return _affine(m.weight, m.bias, scale, init, where)


def _gated(m, where: str, init: str) -> "_RNNLayers":
    """nn.GRU / nn.LSTM as infinet's sampled gated layers returning sequences, NNGP and NTK by the batch estimator
    (:mod:`infinet.engine.layers.gated_batch`) in torch's standard parameterization. torch draws every weight and
    both biases from U(-1/sqrt(H), 1/sqrt(H)): w_std = 1/sqrt(3), u_std = sqrt(d / (3H)) and b_std = 1/sqrt(3H),
    each gate adding b_ih + b_hh (gate_bias_terms=2)."""
    if getattr(m, "proj_size", 0):
        raise UnsupportedModuleError(f"{where} (LSTM): proj_size has no counterpart")
    if init != "pytorch":
        raise UnsupportedModuleError(f"{where} ({type(m).__name__}): init='parameters' is not supported for gated "
                                     "layers; their limit is taken at PyTorch's initialization")
    cls = L.GRU if isinstance(m, nn.GRU) else L.LSTM
    out, d, h = [], m.input_size, m.hidden_size
    for layer in range(m.num_layers):
        cells = [cls(h, w_std=1.0 / math.sqrt(3.0), u_std=math.sqrt(d / (3.0 * h)),
                     b_std=(1.0 / math.sqrt(3.0 * h)) if m.bias else None, return_sequence=True, gate_bias_terms=2,
                     parameterization="standard")
                 for _ in range(2 if m.bidirectional else 1)]
        out.append(L.bidirectional(*cells) if m.bidirectional else cells[0])
        if m.dropout and m.training and layer < m.num_layers - 1:
            out.append(L.Dropout(m.dropout))
        d = h * (2 if m.bidirectional else 1)
    return _RNNLayers(L.serial(*out), m.batch_first, m.num_layers, m.bidirectional)


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




def _embedding(m: nn.Embedding, where: str, init: str) -> Layer:
    """nn.Embedding: table entries N(0, 1) at torch's initialization; with init='parameters' the rms of this
    table's rows (the padding row, zero, left out)."""
    w_std = 1.0
    if init == "parameters":
        rows = m.weight.detach()
        if m.padding_idx is not None:
            rows = torch.cat([rows[:m.padding_idx], rows[m.padding_idx + 1:]])
        w_std = float(rows.double().pow(2).mean().sqrt())
    return L.Embedding(m.num_embeddings, m.embedding_dim, w_std=w_std, padding_idx=m.padding_idx,
                       trainable=m.weight.requires_grad)


def attention(m: nn.MultiheadAttention, where: str, init: str) -> Layer:
    """nn.MultiheadAttention (self-attention, batch first) as ScaledDotProductAttention in the standard
    parameterization: at torch's initialization the query, key and value weights are one xavier-uniform
    (3E, E) matrix, Var = 2 / (E + 3E), so w_std^2 = 1/2, the output map a Linear's (w_std^2 = 1/3), and
    every bias zero (b_std = 0, trainable: its NTK term 1); with init='parameters' the rms of this module's."""
    name = type(m).__name__
    if not m.batch_first:
        raise UnsupportedModuleError(f"{where} ({name}): batch_first=False reads (L, N, E); construct it with "
                                     "batch_first=True, so that the batch comes first")
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedModuleError(f"{where} ({name}): kdim / vdim other than embed_dim, add_bias_kv and "
                                     "add_zero_attn have no counterpart")
    if m.dropout > 0 and m.training:
        raise UnsupportedModuleError(f"{where} ({name}): dropout of the attention weights in training mode has no "
                                     "counterpart; use eval mode or dropout=0")
    if not all(p.requires_grad for p in m.parameters()):
        raise UnsupportedModuleError(f"{where} ({name}): frozen attention weights have no counterpart")
    e, bias = m.embed_dim, m.in_proj_bias is not None
    stds = [math.sqrt(0.5)] * 3
    b_std = 0.0 if bias else None
    w_out, b_out = _affine_stds(m.out_proj.weight, m.out_proj.bias, e, init, e)
    if init == "pytorch":
        b_out = 0.0 if bias else None
    else:
        stds = [float(block.detach().double().pow(2).mean().sqrt()) * math.sqrt(e)
                for block in m.in_proj_weight.chunk(3)]
        b_std = None if not bias else float(m.in_proj_bias.detach().double().pow(2).mean().sqrt())
    return L.ScaledDotProductAttention(e, m.num_heads, w_std=stds[0], b_std=b_std, w_out_std=w_out, b_out_std=b_out,
                                       parameterization="standard", w_q_std=stds[0], w_k_std=stds[1], w_v_std=stds[2])


class AttentionCall:
    """Marker: an nn.MultiheadAttention's layer, checked against how it is called (self-attention, no masks)."""

    def __init__(self, layer: Layer, where: str):
        self.layer, self.where = layer, where


class EncoderCall:
    """Marker: an nn.TransformerEncoderLayer or nn.TransformerEncoder, read as the graph of values it computes
    (``infinet.engine.torch_sequences``)."""

    def __init__(self, module: nn.Module, where: str, init: str):
        self.module, self.where, self.init = module, where, init
