"""Closed-form activations' steps as one compiled loop over a tile (``closed_form_pairs`` of native_kernels.c,
:mod:`infinet.engine.native`): ABRelu (ReLU, LeakyReLU, Abs; Cho and Saul 2009, eq. 6), Erf (Williams 1997,
eq. 11) and GELU (Tsuchida et al. 2021, sec. 3), each entry's expectations and its NTK update
Theta' = E[phi' phi'] Theta (Jacot et al. 2018) in registers, instead of the 12-25 whole-tile passes of
:mod:`infinet.engine.closed_forms`, whose overflow-free forms it follows.

It takes float64 CPU tiles outside autograd whose variances are all positive and whose products var1 var2 can be
formed (:func:`infinet.engine.closed_forms.product_safe`), with ``2 b^2 var`` finite for Erf, in any layout whose
broadcast axes fold into four (vectors, both convolutional layouts); everything else, and
``INFINET_COMPILE=on``, goes to the eager (or compiled) formulas.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import closed_forms, fused, native

#: the loop's activation codes
ABRELU, ERF, GELU = 0, 1, 2


def available(device, dtype) -> bool:
    """Whether steps on tiles of this device and dtype can take the compiled loop at all."""
    return torch.device(device).type == "cpu" and dtype == torch.float64 and native.library() is not None


def step(kind: int, params: tuple[float, float, float], cov: Tensor, ntk: Tensor | None, var1: Tensor,
         var2: Tensor) -> tuple[Tensor, Tensor | None] | None:
    """(nngp, kdot x ntk) (second None when ``ntk`` is None) of the activation ``kind`` with ``params`` (a, b, c),
    or None where the loop does not take the tile (see the module docstring)."""
    if not eligible(cov, ntk, var1, var2):
        return None
    lib = native.library()
    shape = torch.broadcast_shapes(cov.shape, var1.shape, var2.shape)
    if ntk is not None and tuple(ntk.shape) != tuple(shape):
        return None
    if not takes(kind, params, var1, var2):
        return None
    v1, v2 = var1.expand(shape), var2.expand(shape)
    folded = _folded(shape, [v1.stride(), v2.stride()])
    if folded is None:
        return None
    sizes, (s1, s2) = folded
    cov = cov.expand(shape).contiguous()
    ntk = None if ntk is None else ntk.contiguous()
    nngp = torch.empty(shape, dtype=torch.float64)
    second = None if ntk is None else torch.empty(shape, dtype=torch.float64)
    a = native.address
    failed = lib.closed_form_pairs(kind, native.int64s(sizes), a(cov), a(ntk), a(v1), native.int64s(s1), a(v2),
                                   native.int64s(s2), a(nngp), a(second), *params, torch.finfo(torch.float64).eps)
    if failed:
        raise MemoryError("the compiled closed-form step could not allocate its buffer")
    return nngp, second


def eligible(*tensors: Tensor | None) -> bool:
    """Whether tiles of these tensors (None: absent) may take the compiled loops: float64 on the CPU, outside
    autograd, with the library built and ``INFINET_COMPILE`` not "on"."""
    present = [t for t in tensors if t is not None]
    if fused.get_compile() == "on" or not all(t.dtype == torch.float64 and t.device.type == "cpu" for t in present):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return native.library() is not None


def takes(kind: int, params: tuple[float, float, float], var1: Tensor, var2: Tensor) -> bool:
    """Whether the loop's formulas hold for these variances: all positive, their products safe to form
    (:func:`infinet.engine.closed_forms.product_safe`), and for Erf 2 b^2 var finite."""
    if not closed_forms.positive_and_product_safe(var1, var2):
        return False
    return kind != ERF or math.isfinite(2.0 * params[1] ** 2 * float(torch.maximum(var1.max(), var2.max())))


def _folded(shape, strides: list) -> tuple[list, list] | None:
    """The broadcast shape with adjacent axes merged wherever every variance's strides allow (the tile itself is
    contiguous), padded in front to four axes: (sizes, per variance its strides); None beyond four axes."""
    dims = [(n, [s[d] for s in strides]) for d, n in enumerate(shape) if n != 1]
    merged: list = []
    for n, ss in dims:
        if merged and all(prev == s * n for prev, s in zip(merged[-1][1], ss)):
            merged[-1] = (merged[-1][0] * n, ss)
        else:
            merged.append((n, ss))
    if len(merged) > 4:
        return None
    merged = [(1, [0] * len(strides))] * (4 - len(merged)) + merged
    return [n for n, _ in merged], [[ss[k] for _, ss in merged] for k in range(len(strides))]
