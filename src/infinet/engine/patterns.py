"""Graphs that come with the inputs (for :class:`~infinet.engine.layers.graph.Aggregate`): their validation,
and the finite network that hands them to its aggregation modules. Below the layers, so that the tile
engine and :meth:`~infinet.engine.layers.base.Layer.build` use them without importing the graph layer.
May import: torch and numpy only."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def as_pattern(pattern, n: int, name: str, device) -> Tensor:
    """Validate a batch of graphs: a tensor or array with one graph per example (leading axis ``n``)."""
    if isinstance(pattern, np.ndarray):
        pattern = torch.from_numpy(pattern)
    if not isinstance(pattern, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of graphs, got {type(pattern).__name__}")
    if pattern.ndim < 2 or len(pattern) != n:
        raise ValueError(f"{name} must hold one graph per example: {n} examples, but {name} has shape "
                         f"{tuple(pattern.shape)}")
    if pattern.is_floating_point() and not bool(torch.isfinite(pattern).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return pattern.to(device)


class AggregateModule(nn.Module):
    """Finite module of an :class:`~infinet.engine.layers.graph.Aggregate` layer: out[n, :, j] =
    sum_i A[n, i, j] x[n, :, i]. The graphs come from
    the network's ``forward(x, pattern=...)`` (see :class:`GraphModel`)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.pattern: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        if self.pattern is not None and len(self.pattern) != len(x):
            raise ValueError(f"{self.layer!r}: {len(x)} inputs but {len(self.pattern)} graphs")
        a = self.layer.adjacency(self.pattern, spatial, x.dtype, "pattern").to(x.device)
        axes = self.layer.axes(spatial)
        return self.layer._aggregate(x, 0, 2, axes, a)

    def extra_repr(self) -> str:
        return repr(self.layer)


class GraphModel(nn.Module):
    """A finite network with :class:`~infinet.engine.layers.graph.Aggregate` layers: ``model(x, pattern=A)`` hands the graphs ``A`` (one
    per example of ``x``) to every aggregation for that call. Not thread-safe across concurrent calls."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, pattern=None) -> Tensor:
        if pattern is None:
            raise ValueError("this network aggregates over graphs: call it as model(x, pattern=A), one graph per example")
        pattern = as_pattern(pattern, len(x), "pattern", x.device)
        sites = [m for m in self.network.modules() if isinstance(m, AggregateModule)]
        for m in sites:
            m.pattern = pattern
        try:
            return self.network(x)
        finally:
            for m in sites:
                m.pattern = None


def graph_patterns(x1: Tensor, x2: Tensor | None, pattern, pattern2) -> tuple[Tensor, Tensor | None] | None:
    """Validated graphs of x1 and x2 (x2's None when x2 is None), or None when no pattern is given."""
    if pattern is None:
        if pattern2 is not None:
            raise ValueError("pattern2 (graphs of x2) needs pattern (graphs of x1) too")
        return None
    p1 = as_pattern(pattern, len(x1), "pattern", x1.device)
    if x2 is None:
        if pattern2 is not None:
            raise ValueError("pattern2 is for x2, but x2 is None (x2 = x1 uses pattern)")
        return p1, None
    if pattern2 is None:
        raise ValueError("x2 is given: pass its graphs as pattern2 too")
    return p1, as_pattern(pattern2, len(x2), "pattern2", x2.device)
