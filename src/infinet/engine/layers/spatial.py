"""Pure spatial operations shared by the finite modules and the kernel transforms of conv and pooling.

Both meanings of a layer use the same padding arithmetic (:func:`padding_amounts`), so the finite
network and its kernel can never disagree on shapes. Kernel tensors carry the spatial axes of the
first and second member of each pair: a convolution sums over filter offsets applied to *both*
members at once (a diagonal filter on each pair of axes, :func:`window_sum` with two axes), while
pooling sums over its window independently on each member (one axis at a time).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PADDINGS = ("SAME", "VALID", "CIRCULAR")


def as_tuple(value, n: int, name: str) -> tuple[int, ...]:
    """An int or a length-n sequence of positive ints."""
    items = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(items) != n or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"{name} must be a positive integer or {n} of them, got {value!r}")
    return items


def check_padding(padding):
    """'SAME', 'VALID', 'CIRCULAR', or PyTorch's explicit zero padding: an int p (p zeros before and after
    every spatial axis) or one int per axis (returned as a tuple)."""
    if isinstance(padding, str):
        if padding.upper() not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose from {PADDINGS} or a number of zeros per side")
        return padding.upper()
    items = (padding,) if isinstance(padding, int) else tuple(padding) if isinstance(padding, (list, tuple)) else None
    if not items or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in items):
        raise ValueError(f"padding must be one of {PADDINGS}, or a number of zeros per side (an int >= 0 or one per "
                         f"spatial axis), got {padding!r}")
    return padding if isinstance(padding, int) else items


def axis_paddings(padding, n: int, what: str) -> tuple:
    """The padding of each of ``n`` spatial axes: the mode string, or PyTorch's zeros per side."""
    if isinstance(padding, str):
        return (padding,) * n
    items = (padding,) * n if isinstance(padding, int) else tuple(padding)
    if len(items) != n:
        raise ValueError(f"{what}: padding {padding!r} gives {len(items)} axes, but inputs have {n} spatial axes")
    return items


def padding_amounts(n: int, k: int, stride: int, dilation: int, padding, what: str,
                    ceil_mode: bool = False) -> tuple[int, int, int]:
    """(pad_before, pad_after, output_size) along one axis of length ``n`` for a window of ``k``
    taps spaced ``dilation`` apart, moved by ``stride``. SAME and CIRCULAR give ceil(n / stride)
    outputs with the total padding split as TensorFlow does (the smaller half before); VALID pads
    nothing and needs the dilated window to fit. An int p is PyTorch's: p zeros on each side and
    floor((n + 2p - span) / stride) + 1 outputs, or with ``ceil_mode`` (pooling) ceil instead of floor,
    keeping only windows that start inside the input or its left padding (the extra right padding is
    returned in pad_after)."""
    span = dilation * (k - 1) + 1
    if not isinstance(padding, str):
        if n + 2 * padding < span:
            raise ValueError(f"{what}: window of {k} taps (span {span}) does not fit an input of size {n} with "
                             f"padding {padding}")
        if ceil_mode:
            out = -(-(n + 2 * padding - span) // stride) + 1
            if (out - 1) * stride >= n + padding:
                out -= 1
        else:
            out = (n + 2 * padding - span) // stride + 1
        return padding, max(padding, (out - 1) * stride + span - n - padding), out
    if padding == "VALID":
        if span > n:
            raise ValueError(f"{what}: window of {k} taps (span {span} with dilation {dilation}) does not fit "
                             f"an input of size {n} with VALID padding")
        return 0, 0, (n - span) // stride + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    if padding == "CIRCULAR" and total > n:
        raise ValueError(f"{what}: CIRCULAR padding of {total} exceeds the input size {n}")
    return total // 2, total - total // 2, out


def pad_axis(t: Tensor, axis: int, before: int, after: int, circular: bool) -> Tensor:
    """Pad one axis with zeros, or by wrapping around when ``circular``."""
    if before == 0 and after == 0:
        return t
    n = t.shape[axis]
    if circular:
        parts = [t.narrow(axis, n - before, before)] if before else []
        parts.append(t)
        if after:
            parts.append(t.narrow(axis, 0, after))
        return torch.cat(parts, dim=axis)
    shape = list(t.shape)
    pieces = []
    if before:
        shape[axis] = before
        pieces.append(t.new_zeros(shape))
    pieces.append(t)
    if after:
        shape[axis] = after
        pieces.append(t.new_zeros(shape))
    return torch.cat(pieces, dim=axis)


def window_sum(t: Tensor, axes: Sequence[int], k: int, stride: int, dilation: int, before: int, after: int,
               circular: bool, scale: float = 1.0) -> Tensor:
    """out[o] = scale sum_a t[stride o + dilation a - before] over taps a = 0..k-1, with the same tap on
    every axis in ``axes``; positions outside the input are zeros, or wrap around when ``circular``.
    One axis: a window sum; two axes: a diagonal filter. Zero padding is never materialized: each
    tap adds the slice of the input it reaches into the slice of the output it covers."""
    n = t.shape[axes[0]]
    if circular:
        for ax in axes:
            t = pad_axis(t, ax, before, after, True)
        before, n = 0, t.shape[axes[0]]
        n_out = (n - dilation * (k - 1) - 1) // stride + 1
    else:
        n_out = (n + before + after - dilation * (k - 1) - 1) // stride + 1
    shape = list(t.shape)
    for ax in axes:
        shape[ax] = n_out
    taps = []
    for a in range(k):
        offset = a * dilation - before  # input index = stride * o + offset
        lo = max(0, -(-(-offset) // stride))  # first o with a valid input index
        hi = min(n_out - 1, (n - 1 - offset) // stride)
        if hi >= lo:
            taps.append((hi - lo < n_out - 1, lo, hi, offset))
    taps.sort()  # a tap covering every output first: it initializes the sum without zero-filling
    out = None
    for partial, lo, hi, offset in taps:
        src, dst = [slice(None)] * t.ndim, [slice(None)] * t.ndim
        for ax in axes:
            start = stride * lo + offset
            src[ax] = slice(start, start + stride * (hi - lo) + 1, stride)
            dst[ax] = slice(lo, hi + 1)
        part = t[tuple(src)]
        if out is None and not partial:
            out = part.clone(memory_format=torch.contiguous_format) if scale == 1.0 else torch.mul(part, scale)
        else:
            if out is None:
                out = t.new_zeros(shape)
            out[tuple(dst)].add_(part, alpha=scale)
    return out if out is not None else t.new_zeros(shape)


def window_scatter(t: Tensor, axes: Sequence[int], k: int, stride: int, dilation: int, before: int,
                   n_out: int) -> Tensor:
    """The adjoint of :func:`window_sum` (a transposed convolution): every entry t[p] is added at
    stride p + dilation a for each tap a (the same tap on every axis in ``axes``); the result of
    length stride (n - 1) + dilation (k - 1) + 1 is cropped from ``before`` to ``n_out`` entries
    (zeros past its end)."""
    n = t.shape[axes[0]]
    full = stride * (n - 1) + dilation * (k - 1) + 1
    shape = list(t.shape)
    for ax in axes:
        shape[ax] = full
    out = t.new_zeros(shape)
    for a in range(k):
        index = [slice(None)] * t.ndim
        for ax in axes:
            index[ax] = slice(a * dilation, a * dilation + stride * (n - 1) + 1, stride)
        out[tuple(index)].add_(t)
    for ax in axes:
        keep = min(n_out, full - before)
        out = out.narrow(ax, before, keep)
        if keep < n_out:
            out = pad_axis(out, ax, 0, n_out - keep, circular=False)
    return out


def transpose_amounts(n: int, k: int, stride: int, dilation: int, padding: str, what: str) -> tuple[int, int]:
    """(crop_before, output_size) of a transposed convolution: VALID keeps all stride (n - 1) +
    dilation (k - 1) + 1 outputs, SAME keeps n x stride of them (cropping the smaller half before)."""
    if padding == "CIRCULAR":
        raise ValueError(f"{what}: CIRCULAR padding is not supported for transposed convolutions; use SAME or VALID")
    full = stride * (n - 1) + dilation * (k - 1) + 1
    if padding == "VALID":
        return 0, full
    out = n * stride
    return max(full - out, 0) // 2, out


def pair_axes(lead: int, n_spatial: int, full: bool) -> list[tuple[int, ...]]:
    """For each spatial dimension, the tensor axes holding it: (p_i,) in the diagonal layout,
    (p_i, q_i) in the full layout, after ``lead`` batch axes."""
    if full:
        return [(lead + i, lead + n_spatial + i) for i in range(n_spatial)]
    return [(lead + i,) for i in range(n_spatial)]


def global_mean(t: Tensor, lead: int, n_spatial: int, full: bool) -> Tensor:
    """Mean over every spatial axis after ``lead`` batch axes."""
    axes = tuple(range(lead, lead + (2 if full else 1) * n_spatial))
    return t.mean(dim=axes) if axes else t
