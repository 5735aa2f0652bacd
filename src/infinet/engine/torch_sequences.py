"""from_torch's reading of sequence models: the outputs of nn.RNN / nn.GRU / nn.LSTM, nn.MultiheadAttention (as
:class:`~infinet.ScaledDotProductAttention`) and nn.TransformerEncoderLayer / nn.TransformerEncoder (the graph of
values their forward computes)."""

from __future__ import annotations

import copy
import operator

import torch

from torch import fx

import torch.nn.functional as F
from torch import nn

from . import layers as L
from .torch_graph import _join, _Term
from .torch_modules import (AttentionCall, EncoderCall, UnsupportedModuleError, _activation_module, _affine,
                            attention)

TOKENS = (1, 0)  # the axis order of (N, L, E): positions, then channels (infinet.engine.torch_layouts)


def recurrent_output(node: fx.Node, term: _Term, where: str, args: list) -> _Term:
    """Reading an nn.RNN's outputs: its sequence, the last step of it, the final state, a mean over time,
    and position-wise layers on the sequence (Linear, activations)."""
    if term.kind == "attention":
        if node.op == "call_function" and node.target is operator.getitem and args[1] == 0:
            return term.reordered(term.order).as_tensor()
        raise UnsupportedModuleError(f"{where}: an nn.MultiheadAttention's attention weights have no counterpart; "
                                     "read its output, attn(x, x, x)[0]")
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


def check_tokens(term: _Term, where: str, what: str) -> None:
    if term.order != TOKENS:
        raise UnsupportedModuleError(f"{where} ({what}): it reads (N, L, E) tokens (batch_first); this value's axes "
                                     f"are in another order ({term.order}): permute it to (N, L, E) first")


def _causal(mask, length: int | None) -> bool:
    """Whether an attention mask (a buffer of the model) is the causal one: True (or -inf) above the diagonal."""
    from .torch_layouts import ParameterTerm

    if not isinstance(mask, ParameterTerm) or not mask.buffer or mask.value.ndim != 2:
        return False
    m = mask.value
    n = m.shape[0]
    if m.shape != (n, n) or (length is not None and n != length):
        return False
    above = torch.ones(n, n, dtype=torch.bool, device=m.device).triu(1)
    blocked = m if m.dtype == torch.bool else torch.isinf(m) & (m < 0)
    allowed_zero = m.dtype == torch.bool or bool((m[~above] == 0).all())
    return bool((blocked == above).all()) and allowed_zero


def attention_term(node: fx.Node, first: _Term, call: AttentionCall, terms: dict, length: int | None) -> _Term:
    """attn(x, x, x): self-attention over (N, L, E) tokens, without masks or with the causal one (a buffer holding
    it, with or without is_causal=True); its (output, weights) pair."""
    where = call.where
    query, key, value = (list(node.args) + [node.kwargs.get(n) for n in ("query", "key", "value")])[:3]
    if not (query is key is value):
        raise UnsupportedModuleError(f"{where} (MultiheadAttention): only self-attention attn(x, x, x) has a "
                                     "counterpart (cross-attention reads a second input)")
    options = dict(zip(("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal"),
                       node.args[3:]), **node.kwargs)
    mask = options.get("attn_mask")
    causal = mask is not None and _causal(terms.get(mask) if isinstance(mask, fx.Node) else None, length)
    if options.get("key_padding_mask") is not None or (mask is not None and not causal) or (
            options.get("is_causal") and not causal):
        raise UnsupportedModuleError(f"{where} (MultiheadAttention): masks other than the causal one (a buffer "
                                     "holding it, as nn.Transformer.generate_square_subsequent_mask gives) have no "
                                     "counterpart here")
    check_tokens(first, where, "MultiheadAttention")
    layer = call.layer
    if causal:
        layer = copy.copy(layer)
        layer.causal = True
    return first.then(node.name, layer, "attention")


def _norm(m: nn.LayerNorm, init: str, where: str) -> L.Layer:
    norm = L.LayerNorm("channels", m.eps)
    if len(m.normalized_shape) != 1:
        raise UnsupportedModuleError(f"{where}: a LayerNorm over more than the channels has no counterpart here")
    return norm if not m.elementwise_affine else L.serial(norm, _affine(m.weight, m.bias, 1.0, init, where))


def _dropout(m: nn.Dropout) -> list:
    return [L.Dropout(m.p, train=True)] if m.training and m.p > 0 else []


def _activation(fn, where: str) -> L.Layer:
    if fn is F.relu:
        return L.Relu()
    if fn is F.gelu:
        return L.Gelu()
    layer = _activation_module(fn) if isinstance(fn, nn.Module) else None
    if layer is None:
        raise UnsupportedModuleError(f"{where}: the activation {fn!r} has no counterpart (relu, gelu or an "
                                     "activation module)")
    return layer


def _encoder_layer(term: _Term, m: nn.TransformerEncoderLayer, where: str, init: str) -> _Term:
    """One nn.TransformerEncoderLayer: x + SA(x) and x + FF(x), each normalized after (or, norm_first, before)."""
    try:
        return _encoder_nodes(term, m, where, init)
    except UnsupportedModuleError as e:
        if "TransformerEncoderLayer" in str(e):
            raise
        raise UnsupportedModuleError(f"{where} (TransformerEncoderLayer): {e}") from None


def _encoder_nodes(term: _Term, m: nn.TransformerEncoderLayer, where: str, init: str) -> _Term:
    from .torch_modules import _torch_module

    if not m.self_attn.batch_first:
        raise UnsupportedModuleError(f"{where} (TransformerEncoderLayer): construct it with batch_first=True")

    def chain(t, key, layers):
        for i, layer in enumerate(layers):
            t = t.then(f"{key}.{i}", layer)
        return t

    def block(x, key, layers, norm):
        inner = chain(x, f"{key}.in", [norm]) if m.norm_first else x
        summed = _join([x, chain(inner, key, layers)], f"{key}.sum", L.FanInSum())
        return summed if m.norm_first else chain(summed, f"{key}.out", [norm])

    sa = [attention(m.self_attn, f"{where}.self_attn", init)] + _dropout(m.dropout1)
    linear = [_torch_module(lin, f"{where}.{n}", init).as_dense() for n, lin in (("linear1", m.linear1),
                                                                                 ("linear2", m.linear2))]
    ff = [linear[0], _activation(m.activation, f"{where}.activation"), *_dropout(m.dropout), linear[1],
          *_dropout(m.dropout2)]
    x = block(term, f"{where}.attention", sa, _norm(m.norm1, init, f"{where}.norm1"))
    return block(x, f"{where}.feedforward", ff, _norm(m.norm2, init, f"{where}.norm2"))


def encoder_term(node: fx.Node, first: _Term, call: EncoderCall) -> _Term:
    """An nn.TransformerEncoderLayer or nn.TransformerEncoder over (N, L, E) tokens, without masks."""
    where, m = call.where, call.module
    if any(v is not None and v is not False for v in list(node.args[1:]) + list(node.kwargs.values())):
        raise UnsupportedModuleError(f"{where} ({type(m).__name__}): masks have no counterpart here")
    check_tokens(first, where, type(m).__name__)
    if isinstance(m, nn.TransformerEncoderLayer):
        return _encoder_layer(first, m, where, call.init)
    term = first
    for i, layer in enumerate(m.layers):
        term = _encoder_layer(term, layer, f"{where}.layers.{i}", call.init)
    return term if m.norm is None else term.then(f"{where}.norm", _norm(m.norm, call.init, f"{where}.norm"))
