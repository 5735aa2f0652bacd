"""from_torch's reading of attention written out by hand: ``F.scaled_dot_product_attention`` on heads split from
query, key and value Linears, as transformer code writes it (Vaswani et al. 2017; timm's ``Attention``):

    q = q_lin(x).view(n, l, H, d).transpose(1, 2)        # likewise k, v; or one Linear of 3E outputs split by
    ...                                                 # .chunk(3, -1) or .reshape(n, l, 3, H, d).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=...)
    o = o.transpose(1, 2).reshape(n, l, E)               # the heads merged; the output Linear, if any, follows

:func:`fuse_attention` rewrites each such pattern of the fx graph into one call of :class:`HandSplitAttention`, a
module computing the same values (from_torch then runs the rewritten graph on the example input and refuses when
its output differs from the model's, :func:`~infinet.engine.torch_dataflow.check_dataflow`), which the kernel reads
as :class:`~infinet.ScaledDotProductAttention` without an output map (Hron et al. 2020). A
``scaled_dot_product_attention`` call in any other form is refused, naming it.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import layers as L
from .torch_modules import UnsupportedModuleError, _affine_stds

#: the accepted form, for refusals
FORM = ("query, key and value from nn.Linear maps of one (N, L, E) input (three Linears, or one of 3E outputs split "
        "by .chunk(3, -1) or .reshape(n, l, 3, H, d).permute(2, 0, 3, 1, 4)), heads split by .view / .reshape(n, l, "
        "H, d).transpose(1, 2), no attn_mask (is_causal=True is the causal mask), dropout_p=0, the default scale, and "
        "the output merged by .transpose(1, 2).reshape(n, l, E)")


class HandSplitAttention(nn.Module):
    """Self-attention of (N, L, C) tokens by query, key and value Linears (``maps``: (Linear, part), part the third
    of a 3E-output Linear or None), ``heads`` heads, 1/sqrt(d) logits, optionally causal; heads merged, no output
    map. Computes what the fx pattern it replaces computes."""

    def __init__(self, maps: list, heads: int, causal: bool, where: str):
        super().__init__()
        self.linears = nn.ModuleList(dict.fromkeys(lin for lin, _ in maps))  # one Linear may give all three
        self.maps = [(self._index(lin), part) for lin, part in maps]
        self.heads, self.causal, self.where = heads, causal, where

    def _index(self, lin: nn.Module) -> int:
        return next(i for i, m in enumerate(self.linears) if m is lin)

    def projection(self, i: int) -> tuple:
        """(weight, bias) of the query (0), key (1) or value (2) map."""
        index, part = self.maps[i]
        lin = self.linears[index]
        weight, bias = lin.weight, lin.bias
        if part is not None:
            weight = weight.chunk(3)[part]
            bias = None if bias is None else bias.chunk(3)[part]
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[:2]

        def split(i):
            weight, bias = self.projection(i)
            return F.linear(x, weight, bias).reshape(n, length, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(0), split(1), split(2), is_causal=self.causal)
        return out.transpose(1, 2).reshape(n, length, -1)

    def layer(self, init: str) -> L.ScaledDotProductAttention:
        """The infinite-width layer: standard parameterization, each map's weight and bias standard deviations
        from torch's initialization (U(-1/sqrt(C), 1/sqrt(C)): w_std^2 = 1/3, b_std^2 = 1/(3C)) or, with
        init='parameters', the rms of this module's."""
        stds = []
        for i in range(3):
            weight, bias = self.projection(i)
            stds.append(_affine_stds(weight, bias, weight.shape[1], init, weight.shape[1]))
        e = self.projection(2)[0].shape[0]
        (wq, bq), (wk, bk), (wv, bv) = stds
        shared = bq if bq == bk == bv else None
        biases = {} if bq == bk == bv else {"b_q_std": bq, "b_k_std": bk, "b_v_std": bv}
        return L.ScaledDotProductAttention(e, self.heads, b_std=shared, w_q_std=wq, w_k_std=wk, w_v_std=wv, **biases,
                                           causal=self.causal, parameterization="standard", output_map=False)


class _Match:
    """The nodes of one pattern, read backwards from a ``scaled_dot_product_attention`` node."""

    def __init__(self, graph_modules: dict):
        self.modules, self.nodes = graph_modules, []

    def fail(self, why: str):
        raise _NoMatch(why)

    def only_user(self, node: fx.Node) -> fx.Node:
        if len(node.users) != 1:
            self.fail(f"{node.name} is read by {len(node.users)} operations")
        return next(iter(node.users))

    def skip(self, node: fx.Node) -> fx.Node:
        """Back through nn.Identity modules and .contiguous()."""
        while (node.op == "call_module" and isinstance(self.modules[node.target], nn.Identity)) or (
                node.op == "call_method" and node.target == "contiguous"):
            self.take(node)
            node = node.args[0]
        return node

    def take(self, node: fx.Node) -> None:
        if node not in self.nodes:
            self.nodes.append(node)


class _NoMatch(Exception):
    """The call is not in the accepted form; the message says where it departs."""


def _ints(node: fx.Node) -> list:
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    return args


def _is(node: fx.Node, *methods) -> bool:
    return node.op == "call_method" and node.target in methods


def _swaps_heads(node: fx.Node) -> bool:
    """x.transpose(1, 2) (or (2, 1), (-3, -2)) or x.permute(0, 2, 1, 3) of a rank-4 tensor."""
    if _is(node, "transpose") or (node.op == "call_function" and node.target is torch.transpose):
        dims = sorted(d % 4 if isinstance(d, int) else -1 for d in _ints(node))
        return dims == [1, 2]
    if _is(node, "permute") or (node.op == "call_function" and node.target is torch.permute):
        return tuple(_ints(node)) == (0, 2, 1, 3)
    return False


def _heads_of(node: fx.Node, width: int, match: _Match) -> int:
    """H from a head split .view / .reshape(n, l, H, d) (or .unflatten(-1, (H, d))) of a ``width``-wide value."""
    if _is(node, "view", "reshape") or (node.op == "call_function" and node.target is torch.reshape):
        dims = _ints(node)
        if len(dims) != 4:
            match.fail(f"{node.name} reshapes to {len(dims)} axes, not (n, l, H, d)")
        h, d = dims[2:]
    elif _is(node, "unflatten") and _ints(node)[0] in (-1, 2):
        h, d = _ints(node)[1]
    else:
        match.fail(f"{node.name} ({node.target}) is not a head split")
    if isinstance(h, int) and h > 0 and (d == -1 or (isinstance(d, int) and h * d == width)) and width % h == 0:
        return h
    if isinstance(d, int) and d > 0 and h == -1 and width % d == 0:
        return width // d
    match.fail(f"{node.name} splits {width} features into ({h}, {d}) heads")


def _source(node: fx.Node, match: _Match, modules: dict) -> tuple:
    """(input node, Linear, part, heads) of a query / key / value argument of the attention call."""
    node = match.skip(node)
    match.take(node)
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        return _fused_source(node, match, modules)
    if not _swaps_heads(node):
        match.fail(f"{node.name} is not x.transpose(1, 2) of heads")
    split = match.skip(node.args[0])
    match.take(split)
    part, projected = None, split.args[0]
    if projected.op == "call_function" and projected.target is operator.getitem:  # .chunk(3, -1)[i]
        chunk = projected.args[0]
        given = dict(zip(("chunks", "dim"), chunk.args[1:]), **chunk.kwargs)
        if not (_is(chunk, "chunk") and given.get("chunks") == 3 and given.get("dim", 0) in (-1, 2)):
            match.fail(f"{chunk.name} is not .chunk(3, -1)")
        if not isinstance(projected.args[1], int) or not -3 <= projected.args[1] < 3:
            match.fail(f"{projected.name} is not one of the three chunks")
        match.take(projected)
        match.take(chunk)
        part, projected = projected.args[1] % 3, chunk.args[0]  # parts[-1] is parts[2]: the same map
    lin = _linear(projected, modules, match)
    width = lin.out_features // (3 if part is not None else 1)
    return projected.args[0], lin, part, _heads_of(split, width, match)


def _fused_source(node: fx.Node, match: _Match, modules: dict) -> tuple:
    """qkv.reshape(n, l, 3, H, d).permute(2, 0, 3, 1, 4), then [i] or .unbind(0)[i]."""
    part, parent = node.args[1], node.args[0]
    if not -3 <= part < 3:
        match.fail(f"{node.name} is not one of the three maps")
    part %= 3  # qkv[-1] is qkv[2]: the same map
    if _is(parent, "unbind") and (_ints(parent) or [0])[0] == 0:
        match.take(parent)
        parent = parent.args[0]
    if not (_is(parent, "permute") and tuple(_ints(parent)) == (2, 0, 3, 1, 4)):
        match.fail(f"{parent.name} is not .permute(2, 0, 3, 1, 4) of (n, l, 3, H, d)")
    match.take(parent)
    split = parent.args[0]
    dims = _ints(split)
    if not (_is(split, "view", "reshape") and len(dims) == 5 and dims[2] == 3):
        match.fail(f"{split.name} is not .reshape(n, l, 3, H, d)")
    match.take(split)
    lin = _linear(split.args[0], modules, match)
    h, d = dims[3:]
    e = lin.out_features // 3
    if not (isinstance(h, int) and h > 0 and e % h == 0 and d in (-1, e // h)) or lin.out_features % 3:
        match.fail(f"{split.name} splits {lin.out_features} features into (3, {h}, {d})")
    return split.args[0].args[0], lin, part, h


def _linear(node: fx.Node, modules: dict, match: _Match) -> nn.Linear:
    if not (node.op == "call_module" and type(modules[node.target]) is nn.Linear):
        match.fail(f"{node.name} is not an nn.Linear")
    match.take(node)
    return modules[node.target]


def _merged(node: fx.Node, match: _Match) -> fx.Node:
    """The node merging the heads of the attention output: .transpose(1, 2) then .reshape(n, l, E) / .flatten(2)."""
    swap = match.only_user(node)
    if not _swaps_heads(swap):
        match.fail(f"its output is read by {swap.name}, not .transpose(1, 2)")
    match.take(swap)
    merge = match.only_user(swap)
    while _is(merge, "contiguous"):
        match.take(merge)
        merge = match.only_user(merge)
    dims = _ints(merge)
    if (_is(merge, "view", "reshape") and len(dims) == 3) or (_is(merge, "flatten") and dims in ([2], [2, -1], [-2])):
        match.take(merge)
        return merge
    match.fail(f"{merge.name} is not .reshape(n, l, E) of the merged heads")


def _options(node: fx.Node, d: int, match: _Match) -> bool:
    """is_causal of the call; anything but the defaults refused."""
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    options = dict(zip(names, node.args[3:]), **node.kwargs)
    if options.get("attn_mask") is not None:
        match.fail("attn_mask has no counterpart (is_causal=True gives the causal mask)")
    if options.get("dropout_p", 0.0) not in (0, 0.0):
        match.fail("dropout of the attention weights (dropout_p > 0) has no counterpart")
    scale = options.get("scale")
    if scale is not None and not (isinstance(scale, float) and math.isclose(scale, d ** -0.5, rel_tol=1e-12)):
        match.fail(f"scale={scale!r} other than 1/sqrt(d_head) has no counterpart")
    if options.get("enable_gqa"):
        match.fail("enable_gqa has no counterpart")
    causal = options.get("is_causal", False)
    if not isinstance(causal, bool):
        match.fail(f"is_causal={causal!r} is not a constant")
    return causal


def _fuse_one(node: fx.Node, graph: fx.Graph, modules: dict, work: nn.Module, count: int) -> None:
    match = _Match(modules)
    match.take(node)
    arguments = [node.args[i] if i < len(node.args) else node.kwargs.get(n) for i, n in enumerate(("query", "key",
                                                                                                 "value"))]
    if not all(isinstance(a, fx.Node) for a in arguments):
        match.fail("query, key and value must be tensors computed from the input")
    sources = [_source(a, match, modules) for a in arguments]
    inputs = {s[0] for s in sources}
    if len(inputs) != 1:
        match.fail("query, key and value read different inputs (only self-attention has a counterpart)")
    heads = {s[3] for s in sources}
    widths = {lin.out_features // (1 if part is None else 3) for _, lin, part, _ in sources}
    parts = [(id(lin), part) for _, lin, part, _ in sources]
    if len(heads) != 1 or len(widths) != 1 or len(set(parts)) != 3:
        match.fail("query, key and value differ in heads or width, or share a map")
    h, e = heads.pop(), widths.pop()
    causal = _options(node, e // h, match)
    merge = _merged(node, match)
    inside = set(match.nodes)
    for n in match.nodes:
        if n is not merge and any(u not in inside for u in n.users):
            match.fail(f"{n.name} is also read outside the attention")
    where = f"{node.name} (scaled_dot_product_attention)"
    fused = HandSplitAttention([(lin, part) for _, lin, part, _ in sources], h, causal, where)
    name = f"_infinet_attention_{count}"
    work.add_module(name, fused)
    modules[name] = fused
    with graph.inserting_after(merge):
        new = graph.call_module(name, (inputs.pop(),))
    merge.replace_all_uses_with(new)
    _erase(graph, match.nodes)


def _erase(graph: fx.Graph, nodes: list) -> None:
    """Erase ``nodes`` (read by nothing outside them), then what only they read: the sizes their reshapes took."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    pending = sorted(nodes, key=position.__getitem__, reverse=True)
    while pending:
        node = pending.pop(0)
        if node.users:  # still read (a size another reshape takes): erased with its last reader
            continue
        inputs = [a for a in node.all_input_nodes if a.op in ("call_function", "call_method")]
        graph.erase_node(node)
        pending.extend(a for a in inputs if a not in pending)


def fuse_attention(graph: fx.Graph, modules: dict, work: nn.Module) -> None:
    """Rewrite every hand-written multi-head attention of ``graph`` (see the module docstring) into one call of a
    :class:`HandSplitAttention` registered on ``work`` (and ``modules``); a ``scaled_dot_product_attention`` call
    in another form raises :class:`~infinet.engine.torch_modules.UnsupportedModuleError` naming it and saying what
    is read."""
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target is F.scaled_dot_product_attention]
    for i, node in enumerate(calls):
        try:
            _fuse_one(node, graph, modules, work, i)
        except _NoMatch as e:
            raise UnsupportedModuleError(f"{node.name} (scaled_dot_product_attention): {e}; from_torch reads "
                                         f"{FORM}") from None
