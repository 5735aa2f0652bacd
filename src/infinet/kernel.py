"""The :class:`Kernel` dataclass and the input kernel of a network."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

GET_CHOICES = ("nngp", "ntk")


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels between two batches of inputs at one point of a network.

    Attributes:
        nngp: (N1, N2) covariance E[z(x1) z(x2)] of a pre-activation (the NNGP, Lee et al. 2018);
            None only in a result computed with ``get=("ntk",)``.
        ntk: (N1, N2) neural tangent kernel (Jacot et al. 2018), or None when not requested.
        var1: (N1,) per-example variances E[z(x1)^2] (the diagonal of the x1-x1 NNGP).
        var2: (N2,) per-example variances of the second batch.
        shape: per-example feature shape of the finite network at this point (channels first);
            widths enter the 'standard' parameterization and FanInConcat.
        symmetric: True when the second batch is the first, so that nngp's diagonal equals var1.
    Transforms never mutate a Kernel; they return a new one (:meth:`replace`).
    """

    nngp: Tensor | None
    ntk: Tensor | None
    var1: Tensor
    var2: Tensor
    shape: tuple[int, ...]
    symmetric: bool = False

    def replace(self, **changes) -> "Kernel":
        return dataclasses.replace(self, **changes)

    def pin_diagonal(self) -> "Kernel":
        """For a symmetric kernel, make nngp's diagonal exactly var1 (guards arccos(rho ~ 1) against round-off)."""
        if not self.symmetric:
            return self
        return self.replace(nngp=torch.diagonal_scatter(self.nngp, self.var1))

    def map_variances(self, fn) -> tuple[Tensor, Tensor]:
        """Apply ``fn`` to var1 and var2, computing it once when the two batches are the same."""
        var1 = fn(self.var1)
        return var1, (var1 if self.var2 is self.var1 else fn(self.var2))


def parse_get(get: str | Iterable[str]) -> tuple[str, ...]:
    """Normalize ``get`` ("nngp", "ntk" or a tuple of them) and reject unknown names."""
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError(f"get must name at least one of {GET_CHOICES}")
    for name in names:
        if name not in GET_CHOICES:
            raise ValueError(f"unknown kernel {name!r} in get; choose from {GET_CHOICES}")
    return names


def as_input(x, name: str, dtype: torch.dtype | None) -> Tensor:
    """Validate one batch of inputs: a tensor (or array) of shape (N, features...) with finite values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, features...), batch first; got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if dtype is not None:
        x = x.to(dtype)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first in row {bad})")
    return x


def check_pair(x1: Tensor, x2: Tensor) -> None:
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same feature shape; got {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}"
        )
    if x1.device != x2.device:
        raise ValueError(f"x1 is on {x1.device} but x2 is on {x2.device}; put both on one device")


def input_kernel(x1: Tensor, x2: Tensor | None, need_ntk: bool) -> Kernel:
    """Kernel of the inputs themselves: nngp = x1 . x2 / d with d the number of features (design notes).

    The NTK of the inputs is 0 (inputs carry no parameters). ``x2=None`` means x2 is x1.
    """
    n_features = x1[0].numel()
    f1 = x1.reshape(len(x1), -1)
    var1 = (f1 * f1).sum(1) / n_features
    f2 = f1 if x2 is None else x2.reshape(len(x2), -1)
    gram = torch.addmm(f1.new_zeros(()), f1, f2.T, beta=0.0, alpha=1.0 / n_features)
    if x2 is None:
        nngp = torch.diagonal_scatter(gram, var1)
        var2 = var1
    else:
        nngp = gram
        var2 = (f2 * f2).sum(1) / n_features
    ntk = torch.zeros_like(nngp) if need_ntk else None
    return Kernel(nngp, ntk, var1, var2, tuple(x1.shape[1:]), symmetric=x2 is None)
