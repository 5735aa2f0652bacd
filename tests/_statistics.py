"""Shared statistical assertion of the tests: exact kernels against Monte Carlo estimates."""

import torch


def assert_within_standard_errors(exact, mc, limit: float = 4.0) -> None:
    """Every entry on or above the diagonal of ``exact``'s NNGP and NTK lies within ``limit`` standard errors
    of the Monte Carlo means in ``mc`` (an :class:`infinet.MonteCarloKernel`)."""
    n = exact.nngp.shape[0]
    rows, cols = torch.triu_indices(n, n)
    for name in ("nngp", "ntk"):
        z = ((getattr(mc, name) - getattr(exact, name)) / getattr(mc, name + "_stderr"))[rows, cols]
        assert float(z.abs().max()) < limit, (name, z)
