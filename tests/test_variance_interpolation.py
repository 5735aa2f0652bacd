"""Quadrature activations at unequal variances by the certified interpolant in (rho, log var1, log var2)
(infinet.engine.variance_interpolation): against mpmath references (tests/data/quadrature_mpmath.py), against
direct quadrature on the kernel layouts the layers use, and its fallbacks."""

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

import infinet as inf
from infinet.engine import gaussian, variance_interpolation

REFERENCE = json.loads((pathlib.Path(__file__).parent / "data" / "quadrature_mpmath.json").read_text())
FUNCTIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus, "silu": F.silu}


def _no_direct_quadrature(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("direct quadrature was used")

    monkeypatch.setattr(gaussian, "_direct_quadrature", refuse)


def _call(rho, v1, v2, n=24, seed=0):
    """A (n, n) call whose entry (0, 0) is (rho, v1, v2) and whose other variances spread around v1 and v2."""
    g = torch.Generator().manual_seed(seed)
    var1 = v1 * torch.exp(0.5 * torch.rand(n, generator=g, dtype=torch.float64) - 0.25)
    var2 = v2 * torch.exp(0.5 * torch.rand(n, generator=g, dtype=torch.float64) - 0.25)
    var1[0], var2[0] = v1, v2
    corr = torch.rand(n, n, generator=g, dtype=torch.float64) * 1.8 - 0.9
    corr[0, 0] = rho
    return corr * torch.sqrt(var1[:, None] * var2[None]), var1[:, None], var2[None]


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: f"{r['activation']}-{r['rho']}-{r['var1']}-{r['var2']}")
def test_interpolant_agrees_with_mpmath_to_1e_10(monkeypatch, row):
    """Relative to sqrt(E[phi(u)^2] E[phi(v)^2]) (and likewise for phi'), the scale of the entry."""
    _no_direct_quadrature(monkeypatch)
    cov, var1, var2 = _call(row["rho"], row["var1"], row["var2"])
    nngp, kdot = gaussian.quadrature(FUNCTIONS[row["activation"]], cov, var1, var2)
    for name, value in (("nngp", nngp), ("kdot", kdot)):
        scale = (float(row[name + "_diag1"]) * float(row[name + "_diag2"])) ** 0.5
        assert abs(float(value[0, 0]) - float(row[name])) <= 1e-10 * scale, (name, float(value[0, 0]), row[name])


@pytest.mark.parametrize("layout", ["dense", "conv-diagonal", "conv-full"])
def test_interpolant_agrees_with_direct_quadrature_on_kernel_layouts(monkeypatch, layout):
    """The variances of an entry are those of its row and of its column (and positions): the matrix products
    over those axes give what direct quadrature gives entry by entry."""
    g = torch.Generator().manual_seed(1)
    shapes = {"dense": ((20, 1), (1, 25)), "conv-diagonal": ((8, 1, 6), (1, 9, 6)),
              "conv-full": ((5, 1, 4, 1), (1, 7, 1, 4))}[layout]
    var1 = torch.exp(torch.rand(shapes[0], generator=g, dtype=torch.float64) * 3 - 1.5)
    var2 = torch.exp(torch.rand(shapes[1], generator=g, dtype=torch.float64) * 3 - 1.5)
    corr = torch.rand(torch.broadcast_shapes(*shapes), generator=g, dtype=torch.float64) * 2 - 1
    cov = corr * torch.sqrt(var1 * var2)
    direct = gaussian._direct_quadrature(torch.tanh, *torch.broadcast_tensors(cov, var1, var2), True, None, 8, 0,
                                         2**22, False)
    _no_direct_quadrature(monkeypatch)
    got = gaussian.quadrature(torch.tanh, cov, var1, var2)
    for a, b in zip(got, direct):
        assert float((a - b).abs().max()) < 1e-10


def test_kinks_wide_ranges_and_zero_variances_fall_back_to_direct_quadrature():
    """A zero variance or a range wider than MAX_RATIO is not interpolated (no table is built); ELU's kink at 0
    is resolved by no degree of the interpolant: each gives direct quadrature's values."""
    def never(*args):
        raise AssertionError("a table was built")

    cases = [(F.elu, (0.5, 2.0)), (torch.tanh, (0.0, 2.0)), (torch.tanh, (1e-5, 1e4))]
    for i, (fn, (lo, hi)) in enumerate(cases):
        v = torch.linspace(lo, hi, 20, dtype=torch.float64)
        cov = 0.3 * torch.sqrt(v[:, None] * v[None])
        if fn is torch.tanh:
            assert variance_interpolation.expectations(never, cov, v[:, None], v[None], ("probe",)) is None
        got = gaussian.quadrature(fn, cov, v[:, None], v[None])
        direct = gaussian._direct_quadrature(fn, *torch.broadcast_tensors(cov, v[:, None], v[None]), True, None, 8,
                                             0, 2**22, False)
        for a, b in zip(got, direct):
            assert torch.allclose(a, b, rtol=0, atol=1e-10), i


def test_a_tanh_network_on_unnormalized_inputs_takes_the_interpolant(monkeypatch):
    """Dense > Tanh with biases on inputs of unequal norms: every layer is served by the interpolant (direct
    quadrature would be refused here), and its kernel matches direct quadrature's."""
    x = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * torch.linspace(
        0.3, 2.0, 40, dtype=torch.float64)[:, None]
    net = inf.serial(inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(1))
    with monkeypatch.context() as m:
        m.setattr(gaussian, "_interpolated", lambda *args: None)
        direct = net.kernel(x)
    _no_direct_quadrature(monkeypatch)
    variance_interpolation._TABLES.clear()
    fast = net.kernel(x)
    assert torch.allclose(fast.nngp, direct.nngp, rtol=1e-9, atol=1e-11)
    assert torch.allclose(fast.ntk, direct.ntk, rtol=1e-9, atol=1e-11)


def test_values_do_not_depend_on_what_was_computed_before():
    """A table's range is the call's range rounded outward to even units of log v, whatever tables exist: a
    kernel is bit for bit the same computed first or after kernels of other data (resumed stores rely on it)."""
    net = inf.serial(inf.Dense(32, 1.5, 0.1), inf.Tanh(), inf.Dense(32, 1.5, 0.1), inf.Tanh(), inf.Dense(1))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    other = 5.0 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    variance_interpolation._TABLES.clear()
    first = net.kernel(x, tile_size=10)
    variance_interpolation._TABLES.clear()
    net.kernel(other, tile_size=10)
    net.kernel(torch.cat([other, x]), tile_size=10)
    again = net.kernel(x, tile_size=10)
    assert torch.equal(first.nngp, again.nngp) and torch.equal(first.ntk, again.ntk)


def test_float32_kernels_take_the_interpolant_in_their_precision():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.3, 2.0, 40)[:, None]
    net = inf.serial(inf.Dense(64, 1.5, 0.2), inf.Tanh(), inf.Dense(1))
    single, double = net.kernel(x, dtype=torch.float32), net.kernel(x.double())
    assert single.nngp.dtype == torch.float32 and single.ntk.dtype == torch.float32
    assert torch.allclose(single.ntk.double(), double.ntk, rtol=1e-5, atol=1e-6)
