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


def length_mask(x: Tensor, lengths, name: str) -> Tensor:
    """(N, L) booleans, True at the steps of each sequence of ``x`` (N, C, L) past its length (right
    padding). ``lengths``: N integers from 1 to L (a tensor, array or list)."""
    if x.ndim != 3:
        raise ValueError(f"lengths are for sequences N x C x L; {name} has shape {tuple(x.shape)}")
    try:
        values = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"lengths for {name} must be integers, one per sequence ({e})") from None
    if values.is_floating_point():
        if not bool(torch.isfinite(values).all()) or not bool((values == values.round()).all()):
            raise ValueError(f"lengths for {name} must be whole numbers, got {values.tolist()}")
        values = values.long()
    if values.dtype == torch.bool or values.is_complex():
        raise ValueError(f"lengths for {name} must be integers, got dtype {values.dtype}")
    if values.shape != (len(x),):
        raise ValueError(f"lengths for {name} must hold one length per sequence: {name} has {len(x)} sequences, "
                         f"lengths has shape {tuple(values.shape)}")
    length = x.shape[2]
    bad = (values < 1) | (values > length)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"lengths for {name}: sequence {i} has length {int(values[i])}, outside 1 to {length} "
                         f"(the padded length)")
    steps = torch.arange(length, device=x.device)
    return steps[None, :] >= values.to(x.device)[:, None]


def padding_masks(x1: Tensor, x2: Tensor | None, mask_constant=None, lengths=None,
                  lengths2=None) -> tuple[Tensor, Tensor | None] | None:
    """The padding masks (x1's, x2's or None when x2 is None) from ``mask_constant`` or from lengths;
    None when neither is given. Bad constants, lengths that do not match their batch, or an input with
    no valid position raise ValueError naming the problem, before any kernel is computed."""
    if mask_constant is not None and (lengths is not None or lengths2 is not None):
        raise ValueError("give either mask_constant or lengths, not both")
    if lengths is None and lengths2 is not None:
        raise ValueError("lengths2 (for x2) needs lengths (for x1) too")
    if mask_constant is not None:
        m1 = input_mask(x1, mask_constant, "x1")
        return m1, None if x2 is None else input_mask(x2, mask_constant, "x2")
    if lengths is None:
        return None
    if x2 is not None and lengths2 is None:
        raise ValueError("x2 is given: pass its lengths as lengths2 too")
    if x2 is None and lengths2 is not None:
        raise ValueError("lengths2 is for x2, but x2 is None (x2 = x1 uses lengths)")
    return length_mask(x1, lengths, "x1"), None if x2 is None else length_mask(x2, lengths2, "x2")


def pad_sequences(sequences, length: int | None = None, value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Right-pad sequences (C, L_i) into one batch: (N x C x L tensor filled with ``value`` past each
    end, the N lengths). ``length``: L (default the longest). Pass the lengths on as ``lengths=``."""
    seqs = [torch.as_tensor(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    for i, s in enumerate(seqs):
        if s.ndim != 2 or s.shape[1] < 1:
            raise ValueError(f"sequence {i} must have shape (C, L) with L >= 1, got {tuple(s.shape)}")
        if s.shape[0] != seqs[0].shape[0]:
            raise ValueError(f"sequence {i} has {s.shape[0]} channels, sequence 0 has {seqs[0].shape[0]}")
    lengths = torch.tensor([s.shape[1] for s in seqs])
    total = int(lengths.max()) if length is None else int(length)
    if total < int(lengths.max()):
        raise ValueError(f"length {total} is shorter than the longest sequence ({int(lengths.max())})")
    dtype = torch.promote_types(seqs[0].dtype, torch.float32) if not seqs[0].is_floating_point() else seqs[0].dtype
    out = torch.full((len(seqs), seqs[0].shape[0], total), float(value), dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :, : s.shape[1]] = s
    return out, lengths
