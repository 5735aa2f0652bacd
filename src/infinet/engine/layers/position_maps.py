"""Fixed linear maps over positions: Index, ImageResize and DotGeneral with a constant operand.

Each layer is out[n, c, o] = sum_s M[o, s] x[n, c, s], the same M (no parameters) for every channel,
so at infinite width (channels to infinity) both kernel members transform by M (neural-tangents
0.6.5 ``stax.Index``, ``stax.ImageResize``, ``stax.DotGeneral``):

    K'(x, x')[o, o'] = sum_{s, s'} M[o, s] K(x, x')[s, s'] M[o', s'],   Theta' likewise.

A layer gives M as a list of factors: one matrix per spatial axis (separable maps: indexing and
resizing act on each axis alone), or one matrix over all positions jointly (DotGeneral). Where every
row of every factor has at most one non-zero entry (indexing, nearest-neighbour resizing), an output
position reads one input position and the same-position (diagonal) layout suffices:
K'[o, o] = M[o, s(o)]^2 K[s(o), s(o)]. Otherwise the layer needs every pixel pair (full layout).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..kernel import Kernel
from .base import Context, Layer, Spec, with_shape

Factor = tuple[int | None, np.ndarray]  # (spatial axis, or None for all positions jointly; matrix (out, in))


def _apply_factor(t: Tensor, axis: int, matrix: Tensor) -> Tensor:
    """``matrix`` (out, in) applied along ``axis`` of ``t``."""
    moved = t.movedim(axis, -1)
    return (moved @ matrix.T).movedim(-1, axis)


def _apply_joint(t: Tensor, first: int, spatial: tuple[int, ...], matrix: Tensor, out: tuple[int, ...]) -> Tensor:
    """``matrix`` (P_out, P_in) applied to the spatial axes ``first .. first + len(spatial)`` jointly."""
    lead, rest = t.shape[:first], t.shape[first + len(spatial):]
    flat = t.reshape(*lead, math.prod(spatial), *rest).movedim(first, -1)
    return (flat @ matrix.T).movedim(-1, first).reshape(*lead, *out, *rest)


class PositionMap(Layer):
    """Base class: a parameter-free linear map over the positions of N x C x ... inputs.

    Subclasses define :meth:`factors` (the map) and :meth:`out_spatial` (the output positions)."""

    plans_layout = True

    def factors(self, spatial: tuple[int, ...]) -> list[Factor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def selection(factors: list[Factor]) -> bool:
        """Whether every output position reads at most one input position."""
        return all(axis is not None and bool(((m != 0).sum(1) <= 1).all()) for axis, m in factors)

    def _spatial(self, shape) -> tuple[int, ...]:
        if shape is None or len(shape) < 2:
            raise ValueError(f"{self!r} acts on the positions of N x C x ... inputs; got per-example shape {shape}")
        return tuple(shape[1:])

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is None:
            raise ValueError(f"{self!r} needs the input shape: build it with input_shape")
        spatial = self._spatial(spec.shape)
        return with_shape(spec, (spec.shape[0], *self.out_spatial(spatial)))

    def needs_full(self, full_out):
        return full_out or self._needs_pairs

    # -- kernel ----------------------------------------------------------------------------------------
    def _map(self, t: Tensor | None, lead: int, spatial, full: bool, factors: list[Factor]) -> Tensor | None:
        if t is None:
            return None
        d = len(spatial)
        kept = list(spatial)
        for axis, m in factors:
            mat = torch.as_tensor(m, dtype=t.dtype, device=t.device)
            if axis is None:
                out = self.out_spatial(spatial)
                t = _apply_joint(t, lead, tuple(kept), mat, out)
                if full:
                    t = _apply_joint(t, lead + len(out), tuple(kept), mat, out)
                return t
            if full:
                t = _apply_factor(_apply_factor(t, lead + axis, mat), lead + d + axis, mat)
            else:
                t = _apply_factor(t, lead + axis, mat * mat)
            kept[axis] = m.shape[0]
        out = self.out_spatial(spatial)
        if full:
            return t.reshape(*t.shape[:lead], *out, *out)
        return t.reshape(*t.shape[:lead], *out)

    def kernel_fn(self, k: Kernel, full_out: bool = False) -> Kernel:
        spatial = k.spatial
        if not spatial:
            raise ValueError(f"{self!r} acts on positions, but its input is a vector")
        factors = self.factors(spatial)
        if not k.full and not self.selection(factors):
            raise RuntimeError(f"{self!r} needs the full layout (internal layout planning error)")

        def mapped(t, lead):
            return self._map(t, lead, spatial, k.full, factors)

        var1 = mapped(k.var1, 1)
        var2 = var1 if k.var2 is k.var1 else mapped(k.var2, 1)
        out = k.replace(nngp=mapped(k.nngp, 2), ntk=mapped(k.ntk, 2), var1=var1, var2=var2,
                        shape=(k.shape[0], *self.out_spatial(spatial)))
        if not self.out_spatial(spatial):
            out = out.replace(full=False)
        return out

    # -- finite module -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The finite map on a batch N x C x ... (float tensors)."""
        spatial = self._spatial(tuple(x.shape[1:]))
        for axis, m in self.factors(spatial):
            mat = torch.as_tensor(m, dtype=x.dtype, device=x.device)
            if axis is None:
                return _apply_joint(x, 2, spatial, mat, self.out_spatial(spatial))
            x = _apply_factor(x, 2 + axis, mat)
        return x.reshape(*x.shape[:2], *self.out_spatial(spatial))

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        if spec.shape is not None:
            self.infer(spec, Context())
        return PositionMapModule(self)


class PositionMapModule(nn.Module):
    """Finite module of a :class:`PositionMap` (no parameters)."""

    def __init__(self, layer: PositionMap):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.forward(x)

    def extra_repr(self) -> str:
        return repr(self.layer)


class _SliceMaker:
    def __getitem__(self, idx):
        return idx


#: ``Slice[:, :, -1]`` is the index tuple ``(slice(None), slice(None), -1)`` (neural-tangents' ``stax.Slice``)
Slice = _SliceMaker()


def parse_index(text: str) -> tuple:
    """numpy index text (``':, :, ::2, -1'``, ``'..., 0'``) as a tuple of slices, integers and Ellipsis."""
    items = []
    for part in text.strip().strip("[]").split(","):
        part = part.strip()
        try:
            if part == "...":
                items.append(Ellipsis)
            elif ":" in part:
                bounds = part.split(":")
                if len(bounds) > 3:
                    raise ValueError
                items.append(slice(*[int(b) if b.strip() else None for b in bounds]))
            else:
                items.append(int(part))
        except ValueError:
            raise ValueError(f"Index: cannot read {part!r} in {text!r}; write integers, slices such as 1:5:2, and ...") \
                from None
    return tuple(items)


def format_index(items: tuple) -> str:
    """The text form of an index tuple (inverse of :func:`parse_index`)."""
    def one(item):
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            parts = ["" if v is None else str(int(v)) for v in (item.start, item.stop, item.step)]
            return ":".join(parts[:2]) if item.step is None else ":".join(parts)
        return str(int(item))
    return ", ".join(one(item) for item in items)


class Index(PositionMap):
    """out = x[idx] over positions, numpy-style (neural-tangents' ``stax.Index``): e.g. a classification
    token ``Index(Slice[:, :, 0])`` or the last time step ``Index(Slice[:, :, -1])`` of N x C x L inputs.

    ``idx`` (use :data:`Slice`, or the same in a string, ``Index(':, :, -1')``) indexes the whole N x C x ... tensor in infinet's layout (batch, then
    channels, then positions); the batch and channel entries must be ``:`` (channels are infinitely many
    at the limit). Integers drop their axis (dropping every spatial axis gives vectors), slices may
    have steps, including negative ones. Padded inputs keep their masks indexed the same way; an output
    vector taken at a padded position is refused.
    """

    masking = "own"

    def __init__(self, idx):
        items = parse_index(idx) if isinstance(idx, str) else (idx if isinstance(idx, tuple) else (idx,))
        for item in items:
            if not (item is Ellipsis or isinstance(item, slice)
                    or (isinstance(item, (int, np.integer)) and not isinstance(item, bool))):
                raise ValueError(f"Index takes integers, slices and ... (use infinet.Slice[...]); got {item!r}")
        if sum(item is Ellipsis for item in items) > 1:
            raise ValueError(f"Index may hold at most one ...; got {idx!r}")
        self.idx = items

    def __repr__(self) -> str:
        return f"Index({format_index(self.idx)!r})"

    def _per_axis(self, spatial) -> tuple:
        """One entry per axis of the N x C x ... tensor."""
        items, ndim = list(self.idx), len(spatial) + 2
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at:at + 1] = [slice(None)] * (ndim - len(items) + 1)
        if len(items) > ndim:
            raise ValueError(f"{self!r} indexes {len(items)} axes, but inputs N x C x {spatial} have {ndim}")
        items += [slice(None)] * (ndim - len(items))
        for axis, name, size in ((0, "batch", None), (1, "channel", None)):
            if items[axis] != slice(None):
                raise ValueError(f"{self!r} must keep the {name} axis whole (':'): the kernel takes every example, "
                                 "and channels are infinitely many at the limit")
        return tuple(items[2:])

    def factors(self, spatial):
        out = []
        for axis, (item, n) in enumerate(zip(self._per_axis(spatial), spatial)):
            if item == slice(None):
                continue
            if isinstance(item, slice):
                picks = list(range(n))[item]
            else:
                if not -n <= int(item) < n:
                    raise ValueError(f"{self!r}: index {int(item)} is out of range for axis {axis + 2} of size {n}")
                picks = [int(item) % n]
            if not picks:
                raise ValueError(f"{self!r} selects no position of axis {axis + 2} (size {n})")
            m = np.zeros((len(picks), n))
            m[np.arange(len(picks)), picks] = 1.0
            out.append((axis, m))
        return out

    def out_spatial(self, spatial):
        sizes = []
        for item, n in zip(self._per_axis(spatial), spatial):
            if isinstance(item, slice):
                sizes.append(len(range(n)[item]))
        return tuple(sizes)

    @property
    def _needs_pairs(self) -> bool:
        return False

    def kernel_fn(self, k: Kernel, full_out: bool = False) -> Kernel:
        if k.mask1 is None:
            return super().kernel_fn(k, full_out)
        out = super().kernel_fn(k.replace(mask1=None, mask2=None), full_out)
        spatial = k.spatial
        index = (slice(None), *self._per_axis(spatial))
        m1, m2 = k.mask1[index], k.mask2[index]
        if not out.spatial:
            for name, m in (("x1", m1), ("x2", m2)):
                if bool(m.any()):
                    raise ValueError(f"{self!r} takes a padded position of {name} row {int(m.nonzero()[0, 0])} as "
                                     "the output vector; index a position every input has")
            return out
        return out.replace(mask1=m1, mask2=m2)


_RESIZE_METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear",
                   "triangle": "linear", "cubic": "cubic", "bicubic": "cubic", "tricubic": "cubic",
                   "lanczos3": "lanczos3", "lanczos5": "lanczos5"}


def _resize_filter(method: str, x: np.ndarray) -> np.ndarray:
    """The interpolation filter at distances ``x >= 0`` (in input pixels, scaled when antialiasing)."""
    if method == "linear":
        return np.maximum(0.0, 1.0 - x)
    if method == "cubic":  # Keys 1981, a = -0.5
        near = ((1.5 * x - 2.5) * x) * x + 1.0
        far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
        return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, far, near))
    radius = 3.0 if method == "lanczos3" else 5.0
    with np.errstate(invalid="ignore", divide="ignore"):
        y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius) / (np.pi**2 * x * x)
    return np.where(x > radius, 0.0, np.where(x > 1e-3, y, 1.0))


def resize_matrix(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of resizing one axis as :func:`jax.image.resize` does (half-pixel centres).

    Nearest: output i reads input floor((i + 0.5) n_in / n_out) (computed in float32 like JAX). Others:
    output i samples at f = (i + 0.5) n_in / n_out - 0.5; weights filter(|f - j| / s), s = max(n_in / n_out, 1)
    when antialiasing a downsampling and 1 otherwise, normalized to sum 1 (0 where the sum is within
    1000 float32 epsilons of 0, and where f lies outside [-0.5, n_in - 0.5])."""
    if method == "nearest":
        picks = np.floor(((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in) / np.float32(n_out))
                         .astype(np.float32)).astype(np.int64)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), picks] = 1.0
        return m
    inv_scale = n_in / n_out
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
    weights = _resize_filter(method, np.abs(sample[:, None] - np.arange(n_in)[None, :]) / kernel_scale)
    total = weights.sum(1, keepdims=True)
    ok = np.abs(total) > 1000.0 * float(np.finfo(np.float32).eps)
    weights = np.where(ok, weights / np.where(total != 0, total, 1.0), 0.0)
    inside = (sample >= -0.5) & (sample <= n_in - 0.5)
    return np.where(inside[:, None], weights, 0.0)


class ImageResize(PositionMap):
    """Resize the positions of N x C x ... inputs as :func:`jax.image.resize` does (neural-tangents'
    ``stax.ImageResize``; half-pixel centres, optional antialiasing when downsampling).

    ``shape``: the output shape in infinet's layout (N, C, *S), -1 keeping an axis; the batch and
    channel entries must be -1. ``method``: 'nearest', 'linear' (also 'bilinear', 'trilinear',
    'triangle'), 'cubic' (Keys), 'lanczos3' or 'lanczos5'; unlike neural-tangents, every method has
    its kernel (resizing is linear, see :mod:`infinet.layers.position_maps`). Nearest keeps the
    same-position layout; the others need every pixel pair.
    """

    def __init__(self, shape: Sequence[int], method: str = "linear", antialias: bool = True):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or any(s < 1 and s != -1 for s in shape):
            raise ValueError(f"ImageResize shape must give N, C and every spatial size (positive, or -1 to keep); "
                             f"got {shape}")
        if shape[0] != -1 or shape[1] != -1:
            raise ValueError(f"ImageResize shape must keep the batch and channel axes (-1), got {shape}")
        key = str(method).lower()
        if key not in _RESIZE_METHODS:
            raise ValueError(f"unknown resize method {method!r}; choose from {sorted(_RESIZE_METHODS)}")
        self.shape, self.method, self.antialias = shape, _RESIZE_METHODS[key], bool(antialias)

    def __repr__(self) -> str:
        return f"ImageResize({self.shape!r}, method={self.method!r}, antialias={self.antialias!r})"

    def _check(self, spatial):
        if len(spatial) != len(self.shape) - 2:
            raise ValueError(f"{self!r} gives {len(self.shape) - 2} spatial sizes, but inputs have {len(spatial)} "
                             f"spatial axes {spatial}")

    def out_spatial(self, spatial):
        self._check(spatial)
        return tuple(n if s == -1 else s for n, s in zip(spatial, self.shape[2:]))

    def factors(self, spatial):
        out = []
        for axis, (n, s) in enumerate(zip(spatial, self.out_spatial(spatial))):
            if s != n or self.shape[2 + axis] != -1:
                out.append((axis, resize_matrix(n, s, self.method, self.antialias)))
        return out

    @property
    def _needs_pairs(self) -> bool:
        return self.method != "nearest"


class DotGeneral(PositionMap):
    """Contract the positions of N x C x ... inputs with a constant (neural-tangents' ``stax.DotGeneral``).

    ``rhs`` (or ``lhs``): a constant tensor; ``dimension_numbers = ((lhs_contracting, rhs_contracting),
    (lhs_batch, rhs_batch))`` as in :func:`jax.lax.dot_general`, with axes of the input counted in
    infinet's layout (batch 0, channels 1, positions 2...). The input's batch and channel axes may not
    be contracted or batched (at the limit channels are infinitely many); batch dimensions are not
    supported. With ``rhs`` the output is dot_general's (N, C, free positions, free axes of rhs); with
    ``lhs``, whose free axes dot_general puts first, infinet moves N and C to the front: (N, C, free
    axes of lhs, free positions). A scalar constant multiplies. The map is applied to every pixel pair.
    """

    def __init__(self, *, lhs=None, rhs=None, dimension_numbers=(((), ()), ((), ()))):
        if (lhs is None) == (rhs is None):
            raise ValueError("DotGeneral needs exactly one constant operand, lhs or rhs (the other is the input)")
        other = torch.as_tensor(lhs if rhs is None else rhs, dtype=torch.float64)
        if not bool(torch.isfinite(other).all()):
            raise ValueError("DotGeneral constant must be finite")
        try:
            (lc, rc), (lb, rb) = dimension_numbers
            lc, rc, lb, rb = (tuple(int(a) for a in axes) for axes in (lc, rc, lb, rb))
        except (TypeError, ValueError):
            raise ValueError(f"dimension_numbers must be ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), "
                             f"got {dimension_numbers!r}") from None
        if lb or rb:
            raise ValueError("DotGeneral with batch dimensions is not supported: contract positions with the constant")
        if len(lc) != len(rc):
            raise ValueError(f"DotGeneral contracts {len(lc)} lhs axes with {len(rc)} rhs axes")
        self.is_lhs = rhs is None
        self.other = other
        self.input_axes, self.other_axes = (rc, lc) if self.is_lhs else (lc, rc)
        if any(a < 0 or a >= other.ndim for a in self.other_axes) or len(set(self.other_axes)) != len(self.other_axes):
            raise ValueError(f"DotGeneral contracting axes {self.other_axes} do not fit a constant of shape "
                             f"{tuple(other.shape)}")
        self.dimension_numbers = ((lc, rc), (lb, rb))

    def __repr__(self) -> str:
        side = "lhs" if self.is_lhs else "rhs"
        return f"DotGeneral({side}={self.other.tolist()!r}, dimension_numbers={self.dimension_numbers!r})"

    def _contracted(self, spatial):
        ndim = len(spatial) + 2
        for a in self.input_axes:
            if a in (0, 1) or not 0 <= a < ndim:
                raise ValueError(f"{self!r} may contract only position axes 2..{ndim - 1} of the input, got {a}")
        for a, b in zip(self.input_axes, self.other_axes):
            if spatial[a - 2] != self.other.shape[b]:
                raise ValueError(f"{self!r}: input axis {a} has size {spatial[a - 2]}, constant axis {b} has size "
                                 f"{self.other.shape[b]}")
        return [a - 2 for a in self.input_axes]

    def _positions_op(self, y: Tensor) -> Tensor:
        """The map on a tensor whose leading axis stands for N x C: (B, *S) -> (B, *S_out)."""
        contracted = self._contracted(tuple(y.shape[1:]))
        other = self.other.to(dtype=y.dtype, device=y.device)
        out = torch.tensordot(y, other, dims=([1 + a for a in contracted], list(self.other_axes)))
        if self.is_lhs:  # dot_general(lhs, x): lhs free axes first, then x's free axes (after B)
            free_other = other.ndim - len(self.other_axes)
            free_y = y.ndim - 1 - len(contracted)
            out = out.permute(0, *range(1 + free_y, 1 + free_y + free_other), *range(1, 1 + free_y))
        return out

    def out_spatial(self, spatial):
        probe = torch.zeros((1, *spatial), dtype=torch.float64)
        return tuple(self._positions_op(probe).shape[1:])

    def factors(self, spatial):
        p = math.prod(spatial)
        basis = torch.eye(p, dtype=torch.float64).reshape(p, *spatial)
        m = self._positions_op(basis).reshape(p, -1).T
        return [(None, m.numpy())]

    @property
    def _needs_pairs(self) -> bool:
        return True

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        out = self._positions_op(x.reshape(n * c, *x.shape[2:]))
        return out.reshape(n, c, *out.shape[1:])
