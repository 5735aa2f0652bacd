"""Monte Carlo kernels: the empirical NNGP and NTK averaged over random finite networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from ..core.stats import mean_and_stderr
from .empirical import empirical_ntk
from ..engine.kernel import as_input, check_pair, parse_get
from ..engine.layers.combinators import Serial
from ..engine.layers.dense import Dense
from ..engine import sampling
from ..engine.patterns import GraphModel, graph_patterns


@dataclass(frozen=True)
class MonteCarloKernel:
    """Sample means over ``n_samples`` random networks and their standard errors (std / sqrt(n))."""

    nngp: Tensor | None
    ntk: Tensor | None
    nngp_stderr: Tensor | None
    ntk_stderr: Tensor | None
    n_samples: int


def _readout(net) -> Dense | None:
    """The readout Dense layer when the description ends in one, else None."""
    if isinstance(net, Dense):
        return net
    if isinstance(net, Serial) and net.layers and isinstance(net.layers[-1], Dense):
        return net.layers[-1]
    return None


def _graph_ntk_sample(model, x1, x2, p1, p2) -> Tensor:
    """Empirical NTK averaged over output units, one example (and its graph) at a time by autograd:
    Theta(x, x') = (1/O) sum_o grad_p f_o(x) . grad_p f_o(x')."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jacobian(x, pattern):
        rows = []
        for i in range(len(x)):
            out = model(x[i: i + 1], pattern=pattern[i: i + 1]).reshape(-1)
            grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)])
                     for o in out]
            rows.append(torch.stack(grads))
        return torch.stack(rows)  # (N, O, P)

    j1 = jacobian(x1, p1)
    j2 = j1 if x2 is x1 and p2 is p1 else jacobian(x2, p2)
    return torch.einsum("iop,jop->ij", j1, j2) / j1.shape[1]


def _nngp_sample(net, model, x1: Tensor, x2: Tensor, patterns=None) -> Tensor:
    """One network's NNGP estimate.

    If the network ends in Dense(w_std, b_std), its readout weights are integrated exactly:
    K = w_std^2 h(x1) . h(x2) / n + b_std^2 from the last hidden features h (same in both
    parameterizations); otherwise the output covariance f(x1) . f(x2) / n_out. ``patterns``: the graphs of
    x1 and x2 for a :class:`~infinet.layers.graph.GraphModel`.
    """
    dense = _readout(net)
    if patterns is None:
        body = (model[:-1] if isinstance(net, Serial) else (lambda x: x)) if dense is not None else model
        h1, h2 = body(x1), body(x2)
    else:
        body = GraphModel(model.network[:-1]) if dense is not None else model
        h1, h2 = body(x1, pattern=patterns[0]), body(x2, pattern=patterns[1])
    h1, h2 = h1.reshape(len(x1), -1), h2.reshape(len(x2), -1)
    if dense is None:
        return h1 @ h2.T / h1.shape[1]
    b2 = 0.0 if dense.b_std is None else dense.b_std**2
    return dense.w_std**2 * (h1 @ h2.T) / h1.shape[1] + b2


def _ntk_sample(model, x1: Tensor, x2: Tensor) -> Tensor:
    """One network's empirical NTK averaged over output units (:func:`infinet.empirical.empirical_ntk`
    with ``trace=True``; its automatic choice of implementation)."""
    return empirical_ntk(model, x1, None if x2 is x1 else x2, trace=True)


def _batch_ntk_sample(model, x: Tensor) -> Tensor:
    """One network's empirical NTK of a whole batch, from the Jacobian of the batch's outputs (for networks
    whose outputs depend on the whole batch, :class:`~infinet.BatchNorm`): (1/O) sum_o J_o J_o^T."""
    from torch.func import functional_call, jacrev

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}  # frozen layers: none
    jac = jacrev(lambda p: functional_call(model, p, (x,)).reshape(len(x), -1))(params)
    flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], -1)  # (N, O, P)
    return (torch.einsum("iop,jop->ij", flat, flat) / flat.shape[1]).detach()


def monte_carlo_kernel(
    net,
    x1,
    x2=None,
    n_samples: int = 64,
    seed: int = 0,
    get: str | Iterable[str] = ("nngp", "ntk"),
    *,
    dtype: torch.dtype = torch.float64,
    pattern=None,
    pattern2=None,
) -> MonteCarloKernel:
    """Empirical NNGP and NTK of ``n_samples`` finite networks ``net.build(seed=...)``, averaged.

    NNGP: output covariance per network (readout weights integrated when the network ends in
    Dense, see :func:`_nngp_sample`). NTK: Theta(x1, x2) = (1/O) sum_o sum_p d f_o(x1)/dp d f_o(x2)/dp
    from parameter gradients (Jacot et al. 2018, eq. 2), computed with torch.func. Both converge to
    :meth:`~infinet.layers.base.Layer.kernel` as widths grow (Lee et al. 2018; Jacot et al. 2018); the standard errors make
    that comparison a statistical test. Seeds are derived from ``seed``: same seed, same numbers.
    Networks with :class:`~infinet.Aggregate` take the graphs ``pattern`` (of x1) and ``pattern2`` (of
    x2; default ``pattern`` when x2 is None); their NTK is computed one example at a time. Networks with
    :class:`~infinet.BatchNorm` normalize over x1 as one batch (x2 must be None), and their NTK comes
    from the Jacobian of the whole batch's outputs.
    """
    names = parse_get(get)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (for a standard error), got {n_samples!r}")
    same = x2 is None
    x1 = as_input(x1, "x1", dtype)
    x2 = x1 if x2 is None else as_input(x2, "x2", dtype)
    check_pair(x1, x2)
    patterns = graph_patterns(x1, None if same else x2, pattern, pattern2)
    if patterns is not None:
        p1 = patterns[0]
        p2 = p1 if same else patterns[1]
    out_spec = net.check(x1.shape[1:])
    if isinstance(out_spec, tuple):
        raise ValueError(f"the network ends in {len(out_spec)} branches; join them with a FanIn layer")
    batch = sampling.whole_batch(net)
    if batch:
        sampling.check_whole_batch(net, same, None, len(x1), False, patterns is not None)
    gen = torch.Generator().manual_seed(int(seed))
    nngps, ntks = [], []
    for _ in range(n_samples):
        sample_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        model = net.build(x1.shape[1:], seed=sample_seed, dtype=dtype, device=x1.device)
        if patterns is not None:
            if "nngp" in names:
                with torch.no_grad():
                    nngps.append(_nngp_sample(net, model, x1, x2, (p1, p2)))
            if "ntk" in names:
                ntks.append(_graph_ntk_sample(model, x1, x2, p1, p2))
            continue
        with torch.no_grad():
            if "nngp" in names:
                nngps.append(_nngp_sample(net, model, x1, x2))
        if "ntk" in names:
            ntks.append(_batch_ntk_sample(model, x1) if batch else _ntk_sample(model, x1, x2))

    def summary(samples):
        if not samples:
            return None, None
        return mean_and_stderr(samples, dim=0)

    nngp, nngp_se = summary(nngps)
    ntk, ntk_se = summary(ntks)
    return MonteCarloKernel(nngp, ntk, nngp_se, ntk_se, n_samples)
