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


def max_combined_z(estimate, se, reference, reference_se=None) -> float:
    """Largest |estimate - reference| / combined standard error over the entries on or above the diagonal
    (``reference_se`` None: the reference is exact)."""
    rows, cols = torch.triu_indices(len(estimate), len(estimate))
    var = se**2 + (0.0 if reference_se is None else reference_se**2)
    diff = estimate - reference
    equal = diff.abs() <= 1e-12 * torch.maximum(estimate.abs(), reference.abs())
    z = torch.where(var > 0, diff / var.sqrt().clamp(min=1e-300), torch.where(equal, 0.0, torch.inf))
    return float(z[rows, cols].abs().max())  # entries known exactly on both sides agree only when equal


def assert_sampled_within_standard_errors(sampled, mc, fields=("nngp", "ntk"), limit: float = 4.0) -> None:
    """A sampled kernel (an :class:`infinet.Kernel` with standard errors) and Monte Carlo estimates agree within
    ``limit`` combined standard errors on every entry on or above the diagonal."""
    for name in fields:
        z = max_combined_z(getattr(sampled, name), getattr(sampled, name + "_se"), getattr(mc, name),
                           getattr(mc, name + "_stderr"))
        assert z < limit, (name, z)


def assert_case_matches_wide_networks(net, x, mc_seed: int, fields=("nngp", "ntk"), n_networks: int = 48) -> None:
    """The sampled kernel of ``net`` on ``x`` against Monte Carlo of ``n_networks`` finite networks of the same
    description (:func:`assert_sampled_within_standard_errors`)."""
    import infinet as inf

    get = fields if len(fields) > 1 else fields[0]
    sampled = net.kernel(x, get=get)
    assert sampled.sampled
    assert_sampled_within_standard_errors(sampled, inf.monte_carlo_kernel(net, x, n_samples=n_networks, seed=mc_seed,
                                                                          get=get), fields)
