"""PyTorch's resampling of positions as fixed linear maps: adaptive average pooling and interpolation.

``nn.AdaptiveAvgPool1d/2d/3d`` averages, for output index i of an axis of n inputs and m outputs, the
inputs floor(i n / m) .. ceil((i + 1) n / m) - 1 (bins overlap, or repeat one input, when m does not
divide n); ``F.interpolate`` / ``nn.Upsample`` resample each axis alone (nearest, nearest-exact, linear
with or without align_corners; bicubic along each axis of a 2-d map). Both are separable linear maps of
positions with no parameters, so at infinite width both kernel members transform by them
(:mod:`infinet.layers.position_maps`). Interpolation matrices are PyTorch's own: the interpolation
of the unit vectors of each axis, so the two can never disagree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .position_maps import PositionMap

_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", "area")


def _sizes(value, n: int, what: str) -> tuple:
    items = (value,) * n if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != n:
        raise ValueError(f"{what} gives {len(items)} sizes, but inputs have {n} spatial axes")
    return items


class AdaptiveAvgPool(PositionMap):
    """PyTorch's adaptive average pooling to ``output_size`` (an int or one per spatial axis; None keeps an
    axis): see the module docstring."""

    def __init__(self, output_size: int | Sequence[int | None]):
        items = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if not items or any(s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1) for s in items):
            raise ValueError(f"AdaptiveAvgPool output_size must be positive integers (or None to keep an axis), "
                             f"got {output_size!r}")
        self.output_size = output_size if not isinstance(output_size, list) else tuple(output_size)

    def __repr__(self) -> str:
        return f"AdaptiveAvgPool({self.output_size!r})"

    def out_spatial(self, spatial):
        sizes = _sizes(self.output_size, len(spatial), repr(self))
        return tuple(n if m is None else m for n, m in zip(spatial, sizes))

    def factors(self, spatial):
        out = []
        for axis, (n, m) in enumerate(zip(spatial, self.out_spatial(spatial))):
            if n == m:
                continue
            matrix = np.zeros((m, n))
            for i in range(m):
                start, end = (i * n) // m, -(-((i + 1) * n) // m)
                matrix[i, start:end] = 1.0 / (end - start)
            out.append((axis, matrix))
        return out

    @property
    def _needs_pairs(self) -> bool:
        return True


class Interpolate(PositionMap):
    """``F.interpolate(x, size=..., scale_factor=..., mode=..., align_corners=...)`` with PyTorch's semantics
    (see the module docstring); ``size`` or ``scale_factor``, each an int/float or one per spatial axis."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                 recompute_scale_factor: bool | None = None):
        if (size is None) == (scale_factor is None):
            raise ValueError("Interpolate needs exactly one of size and scale_factor")
        if mode not in _MODES:
            raise ValueError(f"unknown interpolation mode {mode!r}; choose from {_MODES}")
        if align_corners is not None and mode not in ("linear", "bilinear", "trilinear", "bicubic"):
            raise ValueError(f"align_corners applies to the linear and cubic modes, not {mode!r}")
        self.size = tuple(size) if isinstance(size, list) else size
        self.scale_factor = tuple(scale_factor) if isinstance(scale_factor, list) else scale_factor
        self.mode, self.align_corners, self.recompute_scale_factor = mode, align_corners, recompute_scale_factor

    def __repr__(self) -> str:
        extra = "" if self.recompute_scale_factor is None else f", recompute_scale_factor={self.recompute_scale_factor!r}"
        return (f"Interpolate(size={self.size!r}, scale_factor={self.scale_factor!r}, mode={self.mode!r}, "
                f"align_corners={self.align_corners!r}{extra})")

    def out_spatial(self, spatial):
        if self.size is not None:
            return tuple(int(s) for s in _sizes(self.size, len(spatial), repr(self)))
        return tuple(int(np.floor(n * float(f))) for n, f in zip(spatial, _sizes(self.scale_factor, len(spatial),
                                                                                   repr(self))))

    def factors(self, spatial):
        if self.mode == "bicubic" and len(spatial) != 2:
            raise ValueError(f"{self!r}: bicubic interpolation takes 2-d feature maps, got {len(spatial)} axes")
        out = []
        scales = None if self.scale_factor is None else _sizes(self.scale_factor, len(spatial), repr(self))
        for axis, (n, m) in enumerate(zip(spatial, self.out_spatial(spatial))):
            eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)  # unit vectors, as a batch of 1-d signals
            kwargs = {"size": m} if scales is None else {"scale_factor": float(scales[axis]),
                                                         "recompute_scale_factor": self.recompute_scale_factor}
            mode = {"bilinear": "linear", "trilinear": "linear"}.get(self.mode, self.mode)
            if mode == "bicubic":  # along one axis of a 2-d map, the other of size 1 left alone
                signal = eye.reshape(n, 1, n, 1)
                kw = {"size": (m, 1)} if scales is None else {"scale_factor": (float(scales[axis]), 1.0),
                                                              "recompute_scale_factor": self.recompute_scale_factor}
                rows = F.interpolate(signal, mode="bicubic", align_corners=self.align_corners, **kw).reshape(n, m)
            else:
                extra = {} if self.align_corners is None else {"align_corners": self.align_corners}
                rows = F.interpolate(eye, mode=mode, **kwargs, **extra).reshape(n, m)
            matrix = rows.T.numpy()  # (m, n): output i reads input j with weight matrix[i, j]
            if m != n or not np.allclose(matrix, np.eye(n)):
                out.append((axis, matrix))
        return out

    @property
    def _needs_pairs(self) -> bool:
        return self.mode not in ("nearest", "nearest-exact")
