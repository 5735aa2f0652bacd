"""Applying a layer's kernel transform inside a network: the layout a consumer needs, the padding policy,
and which layers may replay recorded self-covariances. Used by the combinators and by the tile engine,
below both (it knows layers only through their attributes). May import: the kernel, laws and masks modules."""

from __future__ import annotations

from typing import Callable

from . import laws
from .kernel import realized
from .masks import refuse, remask


def fit_layout(k, need_full):
    """Drop the off-diagonal pixel pairs of a kernel (or of each branch) whose consumer needs only
    same-position pairs; never adds pairs (layouts only shrink along a network). Masked (padded)
    kernels keep every pair: where the padding sits differs between the two members of a pair."""
    if isinstance(k, tuple):
        needs = need_full if isinstance(need_full, tuple) else (need_full,) * len(k)
        return tuple(fit_layout(x, n) for x, n in zip(k, needs))
    need = any(need_full) if isinstance(need_full, tuple) else need_full
    return realized(k).to_diagonal() if k.full and not need and k.mask1 is None else k


def _masked(k) -> bool:
    return any(_masked(x) for x in k) if isinstance(k, tuple) else k.mask1 is not None


def apply_kernel(layer, k, full_out, computed=None):
    """``layer.kernel_fn`` told the layout its output must have, for combinators that plan layouts;
    with padded inputs, applies the layer's ``masking`` policy (:mod:`infinet.masks`). ``computed``: that output
    already computed by a fused step (the rest, laws and the variance trace, is done here all the same)."""
    masked = _masked(k)
    if masked and layer.masking == "refuse":
        raise refuse(layer, "its output at a position depends on the positions around it")
    if computed is None and not takes_deferred(layer):  # a deferred input kernel is written before it is read
        k = realized(k)
    if computed is not None:
        out = computed
    elif getattr(layer, "plans_layout", False):
        out = layer.kernel_fn(k, full_out=full_out)
    else:
        out = layer.kernel_fn(k)
    if masked and layer.masking == "positionwise":
        out = remask(out)
    if not getattr(layer, "keeps_law", False):
        out = laws.untracked(layer, k, out)
    trace = (k[0] if isinstance(k, tuple) else k).trace
    return out if trace is None else trace.step(out)


def takes_deferred(layer) -> bool:
    """Whether ``layer`` hands a deferred input kernel (:class:`~infinet.engine.kernel.ChannelProducts`) on to its
    first layer unread: declared by the class that defines ``kernel_fn`` (``takes_deferred_input = True``: the
    serial composition), so a subclass with a kernel transform of its own never inherits the claim."""
    for cls in type(layer).__mro__:
        if "kernel_fn" in cls.__dict__:
            return bool(cls.__dict__.get("takes_deferred_input", False))
    return False


def replays_variances(layer) -> bool:
    """True when every layer of ``layer`` updates self-covariances only through
    :meth:`infinet.kernel.Kernel.map_variances` and reads them only as same-position
    variances, so that tiles can replay them (:class:`infinet.kernel.VarianceTrace`). Declared by the
    class that defines ``kernel_fn`` (``replays_variances = True``), so a subclass with a kernel
    transform of its own never inherits the claim."""
    for cls in type(layer).__mro__:
        if "kernel_fn" in cls.__dict__:
            if not cls.__dict__.get("replays_variances", False):
                return False
            break
    return all(replays_variances(child) for child in getattr(layer, "layers", ()))


def any_layer(layer, test: Callable[[object], bool]) -> bool:
    """Whether ``test`` holds for ``layer`` or any layer inside it (through combinators' ``layers``)."""
    return bool(test(layer)) or any(any_layer(part, test) for part in getattr(layer, "layers", ()))


def has_ntk(layer) -> bool:
    """Whether ``layer`` has an NTK: false when any layer inside it declares ``has_ntk = False`` (the gated
    recurrent layers, whose NTK is not implemented), so callers ask only for the kernels that exist."""
    return not any_layer(layer, lambda part: getattr(part, "has_ntk", True) is False)
