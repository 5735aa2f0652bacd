"""from_torch's reading of axis orders and of parameters used directly in ``forward``.

**Axis orders.** infinet's layout is N x C x positions; token models keep (N, L, C) (``nn.Embedding``'s
output, a transformer's tokens). Each value read off a torch model carries ``order``: for each of its torch axes
after the batch, the infinet axis it holds (0 the channels, 1... the positions), or None for infinet's own
layout. ``permute`` and ``transpose`` only change the order (no layer); position-wise layers (Linear and
LayerNorm over the channels, activations, dropout) keep it; a reduction, index or concatenation over a torch
dim acts on the infinet axis that dim holds; any other module needs infinet's layout and refuses another.

**Parameters used directly** (a class token, a positional embedding): an ``nn.Parameter`` read in ``forward``,
possibly expanded over the batch or sliced, becomes an :class:`~infinet.Constant` (i.i.d. entries with the
variance of its values, the same for every input) where it meets a value of the network: in a sum or a
concatenation. A buffer (a fixed tensor) would shift the mean of what it is added to, which no limit of
zero-mean Gaussian values has: it is refused.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, fx, nn

from . import layers as L
from .torch_modules import UnsupportedModuleError


class ParameterTerm:
    """An ``nn.Parameter`` (or, ``buffer``, a fixed tensor) as read in ``forward``: ``value`` (its torch shape,
    perhaps with a leading batch axis of 1), ``where`` (its name), ``trainable`` (requires_grad)."""

    def __init__(self, value: Tensor, where: str, trainable: bool, buffer: bool = False):
        self.value, self.where, self.trainable, self.buffer = value, where, trainable, buffer


def parameter(node: fx.Node, model: nn.Module) -> ParameterTerm:
    """The get_attr node ``node``: an nn.Parameter of ``model``, or a buffer (refused where it meets a value)."""
    obj = model
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return ParameterTerm(obj.detach(), str(node.target), bool(getattr(obj, "requires_grad", False)),
                         buffer=not isinstance(obj, nn.Parameter))


def parameter_op(node: fx.Node, term: ParameterTerm, args: list, where: str, is_batch_size) -> ParameterTerm:
    """``expand`` over the batch and static indexing of a parameter (``self.pos[:, :16]``)."""
    value = term.value
    if node.op == "call_method" and node.target == "expand":
        sizes = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else list(args[1])
        raw = node.args[1:] if len(sizes) == len(node.args) - 1 else list(node.args[1])
        if len(sizes) == value.ndim and value.shape[0] == 1 and (is_batch_size(raw[0]) or sizes[0] == -1) \
                and all(s in (-1, n) for s, n in zip(sizes[1:], value.shape[1:])):
            return term
    if node.op == "call_function" and node.target is operator.getitem:
        index = args[1]
        items = index if isinstance(index, tuple) else (index,)
        if all(isinstance(i, (int, slice)) and not isinstance(i, bool) and not any(
                isinstance(b, fx.Node) for b in ((i.start, i.stop, i.step) if isinstance(i, slice) else ()))
               for i in items):
            return ParameterTerm(value[index], term.where, term.trainable)
    raise UnsupportedModuleError(f"{where}: this use of the parameter {term.where} has no counterpart (a parameter "
                                 "used directly may be expanded over the batch, sliced, and added to or concatenated "
                                 "with a value of the network)")


def constant_layer(term: ParameterTerm, like_order: tuple | None, rank: int | None, where: str) -> L.Constant:
    """The Constant a parameter is where it meets a value with axis order ``like_order`` and ``rank`` axes after the
    batch: its per-example torch shape, moved to infinet's layout."""
    if term.buffer:
        raise UnsupportedModuleError(f"{where}: a buffer (a fixed tensor, {term.where}) used directly in forward shifts "
                                     "the mean of what it meets; zero-mean Gaussian limits have no counterpart for it")
    value = term.value
    if rank is None:
        rank = value.ndim - 1 if like_order is None else len(like_order)
    if value.ndim == rank + 1 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != rank:
        raise UnsupportedModuleError(f"{where}: the parameter {term.where} of shape {tuple(term.value.shape)} meets "
                                     f"values with {rank} axes after the batch; give it their shape (1, ...)")
    order = tuple(range(rank)) if like_order is None else like_order
    shape = [0] * rank
    for torch_axis, axis in enumerate(order):
        shape[axis] = int(value.shape[torch_axis])
    std = math.sqrt(float(value.double().pow(2).mean())) if value.numel() else 0.0
    layer = L.Constant(tuple(shape), std=std, trainable=term.trainable)
    layer.origin = f"parameter {term.where}"
    return layer


def identity(rank: int) -> tuple:
    return tuple(range(rank))


def infinet_axis(order: tuple | None, dim: int, rank: int, where: str) -> int:
    """The infinet axis (0 channels, 1... positions) that torch dim ``dim`` of a value with ``rank`` axes after the
    batch holds; the batch dim is refused."""
    d = dim % (rank + 1)
    if d == 0:
        raise UnsupportedModuleError(f"{where}: an operation over the batch axis has no counterpart (the kernel "
                                     "takes each example on its own)")
    return (identity(rank) if order is None else order)[d - 1]


def permuted(order: tuple | None, dims: list, rank: int, where: str) -> tuple | None:
    """The axis order after ``permute(dims)`` (dims including the batch's 0); None when it is infinet's layout."""
    dims = [d % (rank + 1) for d in dims]
    if len(dims) != rank + 1 or dims[0] != 0 or sorted(dims) != list(range(rank + 1)):
        raise UnsupportedModuleError(f"{where}: permute{tuple(dims)} must keep the batch axis first and name every axis")
    old = identity(rank) if order is None else order
    new = tuple(old[d - 1] for d in dims[1:])
    return None if new == identity(rank) else new


def permute_dims(node: fx.Node, args: list, rank: int | None, where: str) -> list:
    """The full permutation (batch first) that a permute or transpose node applies."""
    if node.target in ("permute", torch.permute):
        dims = args[1:] if node.op == "call_method" else args[1]
        dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)
        return dims
    a = node.kwargs.get("dim0", args[1] if len(args) > 1 else None)
    b = node.kwargs.get("dim1", args[2] if len(args) > 2 else None)
    if rank is None or not isinstance(a, int) or not isinstance(b, int):
        raise UnsupportedModuleError(f"{where}: transpose of a value whose axes are not known; pass example_input "
                                     "to from_torch")
    dims = list(range(rank + 1))
    a, b = a % (rank + 1), b % (rank + 1)
    dims[a], dims[b] = dims[b], dims[a]
    return dims


def index_layer(order: tuple | None, index, rank: int, where: str) -> tuple[L.Index, tuple | None]:
    """x[index] on a value with axis order ``order``: infinet's Index over its positions, and the order after it
    (integers drop their axes)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items) or any(i is None for i in items):
        raise UnsupportedModuleError(f"{where}: indexing with ... or None has no counterpart here; index every axis")
    if len(items) > rank + 1 or not items or items[0] != slice(None):
        raise UnsupportedModuleError(f"{where}: an index must keep the batch axis whole (x[:, ...])")
    items += [slice(None)] * (rank + 1 - len(items))
    old = identity(rank) if order is None else order
    per_axis = [slice(None)] * (rank + 1)  # infinet's N x C x ... order
    for torch_axis, item in enumerate(items[1:]):
        if not (isinstance(item, slice) or (isinstance(item, int) and not isinstance(item, bool))):
            raise UnsupportedModuleError(f"{where}: index {item!r} has no counterpart (integers and slices only)")
        if old[torch_axis] == 0 and item != slice(None):
            raise UnsupportedModuleError(f"{where}: indexing the channel axis has no counterpart (channels are "
                                         "infinitely many at the limit)")
        per_axis[old[torch_axis] + 1] = item
    kept = [axis for torch_axis, axis in enumerate(old) if not isinstance(items[torch_axis + 1], int)]
    dropped = sorted(axis for torch_axis, axis in enumerate(old) if isinstance(items[torch_axis + 1], int))
    renumber = {axis: axis - sum(d < axis for d in dropped) for axis in kept}
    new = tuple(renumber[a] for a in kept)
    return L.Index(tuple(per_axis)), (None if new == identity(len(new)) else new)


def concat_layer(order: tuple | None, dim: int, rank: int, where: str) -> L.Layer:
    """torch.cat over ``dim``: channels (FanInConcat) or a position axis (ConcatPositions)."""
    axis = infinet_axis(order, dim, rank, where)
    return L.FanInConcat() if axis == 0 else L.ConcatPositions(axis + 1)
