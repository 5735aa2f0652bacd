"""Masked positions: variable-length sequences (and partly padded feature maps) in one batch.

Convention (neural-tangents' ``mask_constant``): a position of an input N x C x ... is padding when
every channel there equals ``mask_constant``. Kernels then treat padding as absent, so that a padded
batch gives the kernel of the unpadded inputs computed one by one:

* the input kernel is computed with padded positions set to zero, and every kernel entry that
  involves a padded position stays exactly zero after each layer (layers acting on each position
  separately: Dense, activations, LayerNorm over channels, Dropout, stride-1 SAME convolutions);
* global pooling averages over the valid positions only (GlobalSumPool sums them);
* attention gives padded keys no weight (Hron et al. 2020, as neural-tangents);
* a recurrent layer skips padded steps (its state is carried over them), so its last state is the
  state after the last valid step, wherever the padding is;
* layers whose result depends on where the padding sits (strided or VALID convolutions, window
  pooling) refuse masked inputs with an error naming the layer, rather than return a number that
  matches no unpadded computation.

A batch with padding is computed in the full layout (every pair of positions): per pair of inputs the
cost is L^2 rather than L for a last-step readout. Masks travel in :class:`~infinet.Kernel` as
``mask1``, ``mask2``: (N, *S) booleans, True at padding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernel import Kernel


def input_mask(x: Tensor, mask_constant: float | None, name: str) -> Tensor | None:
    """(N, *S) booleans, True where every channel of ``x`` (N, C, *S) equals ``mask_constant``; None
    without a constant. Raises ValueError for vectors (nothing to mask) and for inputs with no valid
    position (an empty sequence)."""
    if mask_constant is None:
        return None
    if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float)) or not math.isfinite(mask_constant):
        raise ValueError(f"mask_constant must be a finite number or None, got {mask_constant!r}")
    if x.ndim < 3:
        raise ValueError(f"mask_constant masks positions of sequences or feature maps (N, C, ...); {name} has shape "
                         f"{tuple(x.shape)} (vectors have no positions)")
    mask = (x == mask_constant).all(dim=1)
    empty = mask.reshape(len(mask), -1).all(1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"{name} row {row} is empty: every position equals mask_constant={mask_constant!r}")
    return mask


def pair_keep(k: Kernel) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean factors (keep12, keep1, keep2) broadcastable against nngp, var1 and var2: True where
    both positions of an entry are valid."""
    v1, v2 = ~k.mask1, ~k.mask2
    n1, n2, s = len(v1), len(v2), k.spatial
    ones = (1,) * len(s)
    if k.full:
        keep12 = v1.reshape(n1, 1, *s, *ones) & v2.reshape(1, n2, *ones, *s)

        def own(v):
            return v.reshape(len(v), *s, *ones) & v.reshape(len(v), *ones, *s)

        return keep12, own(v1), own(v2)
    return v1.unsqueeze(1) & v2.unsqueeze(0), v1, v2


def remask(k: Kernel) -> Kernel:
    """``k`` with every entry that involves a padded position set to zero (no-op without masks)."""
    if k.mask1 is None:
        return k
    keep12, keep1, keep2 = pair_keep(k)

    def zero(t, keep):
        return None if t is None else t.masked_fill(~keep, 0.0)

    var1 = zero(k.var1, keep1)
    var2 = var1 if k.var2 is k.var1 else zero(k.var2, keep2)
    return k.replace(nngp=zero(k.nngp, keep12), ntk=zero(k.ntk, keep12), var1=var1, var2=var2)


def valid_counts(mask: Tensor) -> Tensor:
    """Number of valid positions per example, (N,), from an (N, *S) mask."""
    return (~mask).reshape(len(mask), -1).sum(1)


def refuse(layer, why: str) -> ValueError:
    return ValueError(f"{layer!r} does not take masked (padded) inputs: {why}. Pad inputs to one length "
                      "without mask_constant, or compute the differently sized inputs separately")
