"""Fully-connected layers and the closed-form activations between them, in one compiled pass over a tile.

On vectors a tile of a fully-connected network is an (N1, N2) matrix per kernel, and each Dense layer is three
passes over it (K' = w_std^2 K + b_std^2, Theta' = K' + w_std^2 Theta; Lee et al. 2018, eq. 4; Jacot et al.
2018, Thm. 1) and a diagonal copy, and each activation one more (:mod:`infinet.engine.native_pairs`). Here a run
of stages, each a Dense layer and the activation after it, with the readout Dense layer when one follows, runs
row by row (``closed_form_chain`` of native_kernels.c): each row of K and Theta goes through every stage in the
core's L1 cache, and only the last stage's row is written. The tile is read once and written once, whatever
the depth.

The self-covariances are the layers' own: :meth:`~infinet.Dense.variance` and the activation's
:meth:`~infinet.engine.layers.activations.Activation.diagonal`, computed here for every stage; on a tile on the
diagonal each stage pins entry (i, i) to them, as the layers one by one do. The affine map is computed without
fused multiply-adds, so that it rounds as the variances do.

It applies to: :class:`~infinet.Dense` itself (not a subclass) with float hyperparameters, each followed by an
activation whose step the compiled loop computes (ReLU family, Erf, GELU: ``native_pairs()``) and whose kernel
transform is :class:`~infinet.engine.layers.activations.Activation`'s, on float64 CPU kernels of vectors without
masks, laws, sampling or a variance trace, outside autograd, with every activation's input variances positive
(:func:`infinet.engine.native_pairs.takes`). Everything else takes the layers' own kernel transforms, with the
same formulas.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import native, native_pairs
from .kernel import Kernel

#: False: every Dense and activation applies its own kernel transform (for comparisons)
ENABLED = True


def _dense(layer) -> bool:
    return bool(type(layer).__dict__.get("fused_affine", False)) and not (
        isinstance(layer.w_std, Tensor) or isinstance(layer.b_std, Tensor))


def _activation(layer) -> bool:
    from .layers.activations import Activation  # the layers import this module's callers

    return (isinstance(layer, Activation) and type(layer).kernel_fn is Activation.kernel_fn
            and layer.native_pairs() is not None)


def stages(layers, start: int, k) -> list[tuple[object, object | None]]:
    """The run of (Dense, activation) pairs of ``layers`` from ``start``, with a last (Dense, None) when a Dense
    layer follows them, that :func:`dense_chain` may compute on ``k``; empty where it does not apply (see the
    module docstring)."""
    if not (ENABLED and isinstance(k, Kernel)) or k.full or k.spatial or k.nngp is None:
        return []
    if k.law is not None or k.trace is not None or k.sampling is not None or k.mask1 is not None:
        return []
    if k.nngp_se is not None or k.ntk_se is not None or k.pattern1 is not None:
        return []
    run, i = [], start
    while i + 1 < len(layers) and _dense(layers[i]) and _activation(layers[i + 1]):
        run.append((layers[i], layers[i + 1]))
        i += 2
    if run and i < len(layers) and _dense(layers[i]):
        run.append((layers[i], None))
    return run


def dense_chain(run: list[tuple[object, object | None]], k: Kernel) -> Kernel | None:
    """The kernel after the layers of ``run`` (from :func:`stages`): what their ``kernel_fn`` give one by one,
    with the diagonal pinned; or None where the compiled loop does not take the tile (the caller then applies the
    layers one by one)."""
    if not native_pairs.eligible(k.nngp, k.ntk, k.var1, k.var2):
        return None
    same = k.var2 is k.var1
    v1, v2 = k.var1, k.var2
    fan_in = k.shape[0]
    kinds, params, affines, pre1, pre2, post1 = [], [], [], [], [], []
    for dense, act in run:
        p1 = dense.variance(v1)
        p2 = p1 if same else dense.variance(v2)
        affines.extend(dense.affine_constants(fan_in))
        fan_in = dense.out_features
        if act is None:
            kinds.append(-1)
            params.extend((0.0, 0.0, 0.0))
            v1, v2 = p1, p2
        else:
            kind, constants = act.native_pairs()
            if not native_pairs.takes(kind, constants, p1.unsqueeze(1), p2.unsqueeze(0)):
                return None
            kinds.append(kind)
            params.extend(constants)
            v1 = act.diagonal(p1)
            v2 = v1 if same else act.diagonal(p2)
        pre1.append(p1)
        pre2.append(p2)
        post1.append(v1)
    n1, n2 = k.nngp.shape
    cov = k.nngp.contiguous()
    ntk = None if k.ntk is None else k.ntk.contiguous()
    nngp = torch.empty(n1, n2, dtype=torch.float64)
    second = None if ntk is None else torch.empty(n1, n2, dtype=torch.float64)
    tables = [torch.stack(t).contiguous() for t in (pre1, pre2, post1)]
    a = native.address
    failed = native.library().closed_form_chain(
        len(run), n1, n2, int(k.symmetric), a(cov), a(ntk), native.int64s(kinds), _doubles(params),
        _doubles(affines), *map(a, tables), a(nngp), a(second), torch.finfo(torch.float64).eps)
    if failed:
        raise MemoryError("the compiled fully-connected chain could not allocate its buffers")
    out = k.replace(nngp=nngp, ntk=second, var1=v1, var2=v1 if same else v2, shape=(run[-1][0].out_features,))
    return out.pin_diagonal(inplace=True)


def _doubles(values: list[float]) -> ctypes.Array:
    return (ctypes.c_double * max(1, len(values)))(*map(float, values))
