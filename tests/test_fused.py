"""Compiled elementwise steps (infinet.fused): same numbers as eager, a safe fallback, and the switches."""

import math
import warnings

import pytest
import torch

import infinet as inf
from infinet import fused, gaussian
from infinet.engine import native_pairs


@pytest.fixture
def mode():
    """Restore the compile mode and the fallback state after each test."""
    old_mode, old_broken = fused.get_compile(), fused._broken
    yield
    fused.set_compile(old_mode)
    fused._broken = old_broken


def big_tile(seed=0, n=1 << 17):
    """A tile of (2, 2, P, Q) covariances with their variances, P Q >= MIN_ENTRIES, |rho| <= 1, some rho = 1."""
    g = torch.Generator().manual_seed(seed)
    p = q = int(math.isqrt(n // 4)) + 1
    var1 = torch.rand(2, 1, p, 1, generator=g, dtype=torch.float64) + 0.5
    var2 = torch.rand(1, 2, 1, q, generator=g, dtype=torch.float64) + 0.5
    rho = torch.rand(2, 2, p, q, generator=g, dtype=torch.float64) * 2 - 1
    rho[..., 0, 0] = 1.0
    cov = rho * torch.sqrt(var1 * var2)
    ntk = torch.rand(2, 2, p, q, generator=g, dtype=torch.float64)
    assert cov.numel() >= fused.MIN_ENTRIES
    return cov, ntk, var1, var2


@pytest.mark.parametrize("layer", [inf.Relu(), inf.LeakyRelu(0.1), inf.Abs(), inf.ABRelu(-0.3, 2.0)])
def test_compiled_step_equals_eager_step(mode, layer):
    cov, ntk, var1, var2 = big_tile()
    fused.set_compile("off")
    eager = layer.step(cov, ntk, var1, var2)
    eager_nngp_only = layer.step(cov, None, var1, var2)
    fused.set_compile("on")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = layer.step(cov, ntk, var1, var2)
        compiled_nngp_only = layer.step(cov, None, var1, var2)
    if fused.status()["broken"] is not None:  # no compiler here: the fallback must say so and stay right
        assert any("compiling a kernel step failed" in str(w.message) for w in caught)
    # "eager" here is the default path, infinet.engine.native_pairs where a C compiler exists: it forms rho from
    # reciprocal square roots of the variances, the compiled torch step from sqrt(var1 var2); a few ulps of rho,
    # which arccos amplifies near |rho| = 1, up to 1e-14 of the largest value (4e-15 without the C loop)
    tol = 2e-14 if native_pairs.available(cov.device, cov.dtype) else 4e-15
    for a, b in ((eager[0], compiled[0]), (eager[1], compiled[1]), (eager_nngp_only[0], compiled_nngp_only[0])):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max()))
    assert compiled_nngp_only[1] is None
    # the same expectations as the closed form the rest of the library uses
    nngp, kdot = gaussian.abrelu(layer.a, layer.b, cov, var1, var2)
    assert torch.allclose(compiled[0], nngp, rtol=1e-14, atol=1e-14)
    assert torch.allclose(compiled[1], kdot * ntk, rtol=1e-14, atol=1e-14)


def test_compiled_step_handles_zero_variances(mode):
    cov, ntk, var1, var2 = big_tile(1)
    var1[0, 0, :3, 0] = 0.0  # a position that is always zero (relu(0) = 0, relu'(0) = 0)
    cov = torch.where(var1 == 0, torch.zeros_like(cov), cov)
    fused.set_compile("off")
    eager = inf.Relu().step(cov, ntk, var1, var2)
    fused.set_compile("on")
    compiled = inf.Relu().step(cov, ntk, var1, var2)
    assert torch.equal(compiled[0][0, :, :3], torch.zeros_like(compiled[0][0, :, :3]))
    assert torch.allclose(eager[1], compiled[1], rtol=4e-15, atol=4e-15)


def test_network_kernel_same_with_and_without_compiling(mode):
    x = torch.randn(3, 2, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = inf.serial(inf.Conv(4, 3), inf.Relu(), inf.AvgPool(2), inf.Conv(4, 3), inf.LeakyRelu(0.2),
                     inf.GlobalAvgPool(), inf.Dense(1))
    fused.set_compile("off")
    eager = net.kernel(x, tile_size=1)
    fused.set_compile("on")
    compiled = net.kernel(x, tile_size=1)
    for name in ("nngp", "ntk"):
        a, b = getattr(eager, name), getattr(compiled, name)
        assert torch.allclose(a, b, rtol=1e-14, atol=1e-14 * float(a.abs().max()))


def test_compiler_failure_falls_back_once_with_a_warning(mode, monkeypatch):
    monkeypatch.setenv("INFINET_NATIVE", "off")  # the eager formulas on both sides (not infinet.engine.native_pairs)
    cov, ntk, var1, var2 = big_tile(3)
    fused.set_compile("off")
    eager = inf.Relu().step(cov, ntk, var1, var2)

    def broken_compile(fn, **options):
        def run(*args):
            raise RuntimeError("no C++ compiler on this machine")
        return run

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    fused.set_compile("on")
    fused._broken = None
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = inf.Relu().step(cov, ntk, var1, var2)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])
    assert "no C++ compiler" in fused.status()["broken"]
    assert not fused.compiling()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning, straight to eager
        again = inf.Relu().step(cov, ntk, var1, var2)
    assert torch.equal(again[0], eager[0])


def test_modes_and_thresholds(mode):
    with pytest.raises(ValueError, match="compile mode"):
        fused.set_compile("fast")
    fused.set_compile("auto")
    assert not fused.worth_compiling(fused.AUTO_WORK / 2) and fused.worth_compiling(fused.AUTO_WORK)
    small = torch.zeros(fused.MIN_ENTRIES - 1, dtype=torch.float64)
    large = torch.zeros(fused.MIN_ENTRIES, dtype=torch.float64)
    fused._broken = None
    assert not fused.wanted(large)  # auto, outside a large computation
    with fused.active(True):
        assert fused.compiling() and fused.wanted(large) and not fused.wanted(small)
        with fused.active(False):
            assert fused.wanted(large)  # nested computations keep the outer decision
        assert not fused.wanted(large.clone().requires_grad_())  # autograd keeps the eager code
    assert not fused.compiling()
    fused.set_compile("off")
    with fused.active(True):
        assert not fused.wanted(large)
    fused.set_compile("on")
    assert fused.wanted(large) and fused.worth_compiling(0)


def test_hyperparameter_gradients_use_the_eager_path(mode):
    cov, ntk, var1, var2 = big_tile(5)
    grads = []
    for setting in ("off", "on"):
        fused.set_compile(setting)
        w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        nngp, new_ntk = inf.Relu().step(cov * w, ntk, var1 * w, var2 * w)
        (nngp.sum() + new_ntk.sum()).backward()
        grads.append(w.grad)
    assert torch.isfinite(grads[0]) and torch.equal(grads[0], grads[1])
