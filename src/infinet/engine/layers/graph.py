"""Graph aggregation (message passing): the layer of graph neural networks and its kernel.

Inputs are node features N x C x V (or N x C x *S, aggregating over some or all position axes), and
each example comes with its graph, the ``pattern`` (neural-tangents 0.6.5 ``stax.Aggregate``):

* dense: a weighted adjacency (N, *A, *A) over the aggregated axes A, ``pattern[n, i, j]`` the weight
  of the arc from node i (tail) to node j (head);
* sparse: integer arcs (N, E, K, 2) (or (N, E, 2) when K = 1 axis is aggregated), [..., 0] the tail's
  and [..., 1] the head's coordinates; an arc with any negative coordinate is padding; repeated arcs
  add up.

The layer replaces every node by the weighted sum over its predecessors, out[j] = sum_i A[i, j] x[i]
(no parameters), so at infinite width (Du, Hou, Salakhutdinov, Poczos, Wang and Xu 2019, "Graph
neural tangent kernel", Sec. 4, the aggregation step)

    K'(x, x')[a, b] = sum_{i, j} A[i, a] K(x, x')[i, j] A'[j, b],   Theta' likewise,

with A the graph of x and A' that of x'. It needs every pair of nodes (full layout) and costs
O(V^3) per pair of graphs. Sparse arcs are turned into the dense adjacency first (O(V^2) memory per
graph). Padded nodes (``mask_constant``) stay absent: their outputs are zero whatever arcs reach them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..apply import apply_kernel
from ..kernel import Kernel, as_input, check_pair, input_kernel, parse_get
from ..masks import remask
from ..patterns import AggregateModule, GraphModel, as_pattern, graph_patterns  # noqa: F401 (public here)
from .base import Context, Layer, Spec, with_shape

IMPLEMENTATIONS = ("DENSE", "SPARSE")


class Aggregate(Layer):
    """Aggregation over a graph given per example (neural-tangents' ``stax.Aggregate``; Du et al. 2019).

    ``aggregate_axis``: the position axes to aggregate over, counted in infinet's layout N x C x ...
    (so 2 for node features N x C x V); None (default) aggregates over every position axis.
    ``implementation``: 'DENSE' (``pattern`` is a weighted adjacency, see :mod:`infinet.layers.graph`)
    or 'SPARSE' (integer arcs); ``to_dense`` optionally decodes a dense pattern given in another form.
    Kernels take the graphs as ``net.kernel(x1, x2, pattern=A1, pattern2=A2)``, finite networks as
    ``model(x, pattern=A)``; without a pattern the layer raises (neural-tangents would silently act as
    the identity).
    """

    masking = "own"
    takes_pattern = True  # the tile engine checks that graphs given with the inputs have a user

    def __init__(self, aggregate_axis=None, implementation: str = "DENSE", to_dense=None):
        if aggregate_axis is not None:
            axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else tuple(aggregate_axis)
            if not axes or any(isinstance(a, bool) or not isinstance(a, int) or a < 2 for a in axes) \
                    or len(set(axes)) != len(axes):
                raise ValueError(f"Aggregate aggregate_axis must be position axes (2, 3, ...) of N x C x ... inputs, "
                                 f"got {aggregate_axis!r}")
            aggregate_axis = tuple(sorted(axes))
        self.aggregate_axis = aggregate_axis
        key = str(implementation).upper()
        if key not in IMPLEMENTATIONS:
            raise ValueError(f"unknown Aggregate implementation {implementation!r}; choose from {IMPLEMENTATIONS}")
        if to_dense is not None and not callable(to_dense):
            raise TypeError("Aggregate to_dense must be callable")
        self.implementation, self.to_dense = key, to_dense

    def __repr__(self) -> str:
        return f"Aggregate(aggregate_axis={self.aggregate_axis!r}, implementation={self.implementation!r})"

    def axes(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The aggregated axes as indices into the position axes."""
        if not spatial:
            raise ValueError(f"{self!r} aggregates over nodes: inputs must be N x C x V (or N x C x ...), not vectors")
        if self.aggregate_axis is None:
            return tuple(range(len(spatial)))
        bad = [a for a in self.aggregate_axis if a - 2 >= len(spatial)]
        if bad:
            raise ValueError(f"{self!r}: inputs N x C x {spatial} have no axis {bad[0]}")
        return tuple(a - 2 for a in self.aggregate_axis)

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None:
            self.axes(tuple(spec.shape[1:]))
        return with_shape(spec, spec.shape)

    def needs_full(self, full_out):
        return True

    # -- the graph ---------------------------------------------------------------------------------------
    def adjacency(self, pattern: Tensor | None, spatial: tuple[int, ...], dtype, which: str) -> Tensor:
        """(N, P, P) dense adjacency over the P aggregated positions (row: tail, column: head)."""
        if pattern is None:
            raise ValueError(f"{self!r} needs the graphs: pass pattern= (and pattern2= with x2) to kernel(), "
                             "or model(x, pattern=...) to the finite network")
        agg = tuple(spatial[a] for a in self.axes(spatial))
        p = math.prod(agg)
        if self.implementation == "DENSE":
            dense = pattern if self.to_dense is None else self.to_dense(pattern)
            dense = torch.as_tensor(dense)
            if tuple(dense.shape[1:]) != agg + agg:
                raise ValueError(f"{self!r}: {which} must have shape (N, *{agg}, *{agg}) for positions {spatial}, "
                                 f"got {tuple(dense.shape)}")
            return dense.to(dtype).reshape(len(dense), p, p)
        arcs = pattern
        if arcs.is_floating_point() or arcs.dtype == torch.bool:
            raise ValueError(f"{self!r}: sparse {which} must hold integer node coordinates, got dtype {arcs.dtype}")
        if len(agg) == 1 and arcs.ndim == 3:
            arcs = arcs.unsqueeze(2)
        if arcs.ndim != 4 or arcs.shape[2] != len(agg) or arcs.shape[3] != 2:
            raise ValueError(f"{self!r}: sparse {which} must have shape (N, E, {len(agg)}, 2) (tails and heads), "
                             f"got {tuple(pattern.shape)}")
        sizes = torch.tensor(agg, device=arcs.device)
        if bool((arcs >= sizes[None, None, :, None]).any()):
            raise ValueError(f"{self!r}: {which} has a node coordinate beyond the positions {agg}")
        valid = (arcs >= 0).all(dim=3).all(dim=2)  # (N, E)
        strides = torch.tensor([math.prod(agg[i + 1:]) for i in range(len(agg))], device=arcs.device)
        flat = (arcs.clamp(min=0) * strides[None, None, :, None]).sum(2)  # (N, E, 2)
        n = len(arcs)
        index = (torch.arange(n, device=arcs.device)[:, None] * p * p + flat[..., 0] * p + flat[..., 1])[valid]
        dense = torch.zeros(n * p * p, dtype=dtype, device=arcs.device)
        dense.index_add_(0, index, torch.ones(len(index), dtype=dtype, device=arcs.device))
        return dense.reshape(n, p, p)

    # -- kernel ------------------------------------------------------------------------------------------
    @staticmethod
    def _aggregate(t: Tensor, batch_axis: int, first: int, axes: tuple[int, ...], adjacency: Tensor) -> Tensor:
        """sum_i A[n, i, a] t[..., i, ...] over the position axes ``first + axes``, n the index on ``batch_axis``."""
        src = [first + a for a in axes]
        ends = list(range(t.ndim - len(axes), t.ndim))
        moved = t.movedim(src, ends)
        shape = moved.shape
        p = adjacency.shape[-1]
        flat = moved.reshape(*shape[: t.ndim - len(axes)], p).movedim(batch_axis, 0)
        lead = flat.shape
        out = torch.bmm(flat.reshape(lead[0], -1, p), adjacency).reshape(lead)
        return out.movedim(0, batch_axis).reshape(shape).movedim(ends, src)

    def kernel_fn(self, k: Kernel) -> Kernel:
        spatial = k.spatial
        axes = self.axes(spatial)
        if not k.full:
            raise RuntimeError(f"{self!r} needs the full layout (internal layout planning error)")
        dtype = (k.nngp if k.nngp is not None else k.ntk).dtype
        a1 = self.adjacency(k.pattern1, spatial, dtype, "pattern")
        a2 = a1 if k.pattern2 is k.pattern1 else self.adjacency(k.pattern2, spatial, dtype, "pattern2")
        d = len(spatial)

        def pair(t):
            if t is None:
                return None
            return self._aggregate(self._aggregate(t, 0, 2, axes, a1), 1, 2 + d, axes, a2)

        def own(t, a):
            return self._aggregate(self._aggregate(t, 0, 1, axes, a), 0, 1 + d, axes, a)

        var1 = own(k.var1, a1)
        var2 = var1 if k.var2 is k.var1 else own(k.var2, a2)
        out = k.replace(nngp=pair(k.nngp), ntk=pair(k.ntk), var1=var1, var2=var2)
        if k.mask1 is not None:
            out = remask(out)
        return out

    # -- finite module -----------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        return AggregateModule(self)


def normalized_adjacency(adjacency: Tensor, self_loops: bool = True) -> Tensor:
    """The propagation matrix of graph convolutional networks, D^(-1/2) (A + I) D^(-1/2) (Kipf and Welling
    2017, eq. 2; without ``self_loops``, D^(-1/2) A D^(-1/2)), for one adjacency (V, V) or a batch (N, V, V);
    D is the diagonal of row sums. Isolated nodes (zero degree) keep zero rows."""
    a = torch.as_tensor(adjacency)
    a = a.to(torch.float64) if not a.is_floating_point() else a
    if self_loops:
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    degree = a.sum(-1)
    scale = torch.where(degree > 0, degree.clamp(min=1e-300).rsqrt(), torch.zeros_like(degree))
    return scale.unsqueeze(-1) * a * scale.unsqueeze(-2)


def node_kernel(net: Layer, x, pattern, x2=None, pattern2=None, get=("nngp", "ntk"), *,
                dtype: torch.dtype = torch.float64) -> Kernel:
    """Kernels between the nodes of graphs (node-level tasks): ``net`` ends in a per-node output
    (e.g. ``... > Dense(n_out)`` on node features N x C x V), and the result holds (N1 V, N2 V) matrices
    whose row n V + v is node v of graph n (Du et al. 2019 define the graph-level GNTK; this is the same
    recursion read out at each node). ``x2=None`` means the graphs of x1. Computed in one piece: memory
    O(N1 N2 V^2).
    """
    names = parse_get(get)
    x1 = as_input(x, "x", dtype)
    other = None if x2 is None else as_input(x2, "x2", dtype)
    check_pair(x1, x1 if other is None else other)
    spec = net.check(x1.shape[1:])
    if isinstance(spec, tuple) or spec.shape is None or len(spec.shape) < 2:
        raise ValueError("node_kernel needs a network whose output keeps the nodes (N x C x V); end it with a Dense "
                         "readout on the channels, not with pooling or Flatten")
    patterns = graph_patterns(x1, other, pattern, pattern2)
    if patterns is None:
        raise ValueError("node_kernel needs the graphs: pass pattern (and pattern2 with x2)")
    k = input_kernel(x1, other, "ntk" in names, full=True, patterns=patterns)
    out = apply_kernel(net, k, True)
    p = math.prod(out.spatial)

    def nodes(t):
        if t is None:
            return None
        n1, n2 = t.shape[:2]
        flat = t.reshape(n1, n2, p, p).permute(0, 2, 1, 3).reshape(n1 * p, n2 * p)
        if other is None:
            flat = 0.5 * (flat + flat.T)
        if not bool(torch.isfinite(flat).all()):
            raise FloatingPointError("the node kernel overflowed to NaN/inf (an activation such as Exp, or w_std too "
                                     "large)")
        return flat

    def diagonal(v):
        return v.reshape(len(v), p, p).diagonal(dim1=1, dim2=2).reshape(-1)

    var1 = diagonal(out.var1)
    return Kernel(nodes(out.nngp) if "nngp" in names else None, nodes(out.ntk), var1,
                  var1 if other is None else diagonal(out.var2), (out.shape[0],), symmetric=other is None)


class NodeModel(nn.Module):
    """A finite graph network read out at chosen nodes of one graph: ``forward(nodes)`` runs ``model`` on the
    whole graph ``(x, pattern)`` (one example, N = 1) and returns the outputs at the integer node indices
    ``nodes`` (n,) as an (n, n_out) tensor, so node-level training uses the ordinary full-batch loops
    (:func:`infinet.training.train_gradient_descent`) with node indices as inputs."""

    def __init__(self, model: nn.Module, x: Tensor, pattern: Tensor):
        super().__init__()
        if len(x) != 1 or len(pattern) != 1:
            raise ValueError(f"NodeModel takes one graph (N = 1); got {len(x)} inputs and {len(pattern)} graphs")
        self.model = model
        self.register_buffer("x", x)
        self.register_buffer("pattern", pattern)

    def forward(self, nodes: Tensor) -> Tensor:
        out = self.model(self.x, pattern=self.pattern)  # (1, n_out, *S)
        flat = out.reshape(out.shape[1], -1).T  # (positions, n_out)
        return flat[nodes.reshape(-1).long()]
