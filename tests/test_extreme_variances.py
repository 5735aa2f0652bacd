"""Activations at extreme pre-activation variances (issue 16, defect 2): accurate values or a clear
error naming the accurate range, never a quietly wrong number."""

import math

import pytest
import torch

import infinet as inf


def _inputs():
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return x * torch.linspace(0.5, 2.0, 6, dtype=torch.float64)[:, None]  # different norms


def _tanh_asymptotic(x, w_std):
    """Dense(w_std) > Tanh > Dense(1) as w_std -> inf: tanh -> sign, so nngp -> (2/pi) arcsin(rho), and
    tanh'(u) -> 2 delta(u): E[tanh'(u) tanh'(v)] -> 2 / (pi sqrt(v1 v2 (1 - rho^2))) off the diagonal and
    E[tanh'(u)^2] -> (4/3) / sqrt(2 pi v) on it (int tanh'^2 = 4/3)."""
    k0 = x @ x.T / x.shape[1]
    v = w_std**2 * k0.diagonal()
    rho = (k0 / torch.sqrt(k0.diagonal()[:, None] * k0.diagonal()[None, :])).clamp(-1, 1)
    off = 2.0 / (math.pi * torch.sqrt(v[:, None] * v[None, :] * (1 - rho**2)).fill_diagonal_(1.0))
    kdot = off.clone()
    kdot.diagonal().copy_((4.0 / 3.0) / torch.sqrt(2 * math.pi * v))
    nngp = (2 / math.pi) * torch.arcsin(rho)
    return nngp, nngp + kdot * w_std**2 * k0


@pytest.mark.parametrize("w_std", [1e12, 1e19])
def test_tanh_large_variance_matches_asymptotics(w_std):
    x = _inputs()
    k = inf.serial(inf.Dense(512, w_std=w_std), inf.Tanh(), inf.Dense(1)).kernel(x)
    nngp, ntk = _tanh_asymptotic(x, w_std)
    # corrections to the asymptotics are O(1 / variance) relative: below 1e-9 here
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-9, atol=0)


def test_quadrature_outside_its_range_is_a_clear_error():
    net = inf.serial(inf.Dense(512, w_std=1e21), inf.Tanh(), inf.Dense(1))
    with pytest.raises(ValueError, match=r"Tanh\(\).*accurate range"):
        net.kernel(_inputs())


@pytest.mark.parametrize("act", [inf.Relu, inf.Gelu])
def test_relu_and_gelu_near_overflow(act):
    """Variances of 1e200 (products of two of them overflow) give the representable true result:
    ReLU is homogeneous, so its kernel is 1e200 times that at w_std = 1; GELU equals ReLU to 1e-100."""
    x = _inputs()
    big = inf.serial(inf.Dense(512, w_std=1e100), act(), inf.Dense(1)).kernel(x)
    unit = inf.serial(inf.Dense(512, w_std=1.0), inf.Relu(), inf.Dense(1)).kernel(x)
    for name in ("nngp", "ntk"):
        got = getattr(big, name)
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got / 1e200, getattr(unit, name), rtol=1e-12, atol=0)


def test_erf_never_overflows():
    """Erf is bounded: at variance 1e300 its NNGP is (2/pi) arcsin(rho) (to 1e-300) and nothing overflows."""
    x = _inputs()
    k = inf.serial(inf.Dense(512, w_std=1e150), inf.Erf(), inf.Dense(1)).kernel(x)
    k0 = x @ x.T / x.shape[1]
    rho = (k0 / torch.sqrt(k0.diagonal()[:, None] * k0.diagonal()[None, :])).clamp(-1, 1)
    assert bool(torch.isfinite(k.nngp).all()) and bool(torch.isfinite(k.ntk).all())
    torch.testing.assert_close(k.nngp, (2 / math.pi) * torch.arcsin(rho), rtol=1e-12, atol=1e-14)
    # NTK: nngp + w^2 kdot K0 with kdot -> (2/pi) / sqrt(v1 v2 (1 - rho^2)) off the diagonal
    # with v = 1e300 k0: w^2 kdot K0 = (2/pi) K0 / sqrt(k0_ii k0_jj (1 - rho^2))
    d = k0.diagonal()
    off = (2 / math.pi) / torch.sqrt(d[:, None] * d[None, :] * (1 - rho**2)).fill_diagonal_(1.0)
    expected = k.nngp + off * k0
    mask = ~torch.eye(len(x), dtype=torch.bool)
    torch.testing.assert_close(k.ntk[mask], expected[mask], rtol=1e-9, atol=0)


def test_gaussian_activation_domain():
    """a exp(b x^2), b > 0: E[phi(u)^2] is finite only for var < 1/(4b); beyond, a clear error."""
    x = _inputs() / _inputs().norm(dim=1, keepdim=True) * math.sqrt(10)  # unit input variance
    ok = inf.serial(inf.Dense(8, w_std=0.45), inf.Gaussian(1.0, 1.0), inf.Dense(1)).kernel(x)  # var 0.2025
    assert bool(torch.isfinite(ok.nngp).all())
    # var 0.36 < 1/(2b) = 0.5 was accepted before although E[exp(2 u^2)] = 1/sqrt(1 - 4 var) diverges
    with pytest.raises(ValueError, match="1/\\(4b\\)"):
        inf.serial(inf.Dense(8, w_std=0.6), inf.Gaussian(1.0, 1.0), inf.Dense(1)).kernel(x)


def test_gelu_derivative_kernel_at_large_variances():
    """E[phi'(u)^2] for GELU at variances 1e10 ... 1e300 is 1/2 + O(var^-1/2), in the eager formula and the
    compiled loop alike: its (1 - P)/P1 + 1 = e1 + e2 term, written as e1 e2 - var1 e1 var2 e2 + 1, lost everything
    to cancellation wherever var e rounded below 1 (kdot 2e83 at var = 7e199)."""
    from infinet.engine import closed_forms, native_pairs

    var = torch.logspace(10, 300, 400, dtype=torch.float64)
    _, kdot = closed_forms.gelu(var, var, var)
    assert float((kdot - 0.5).abs().max()) < 1e-4
    v = var[var < 1e150]  # the compiled loop takes variances whose products are safe to form
    out = native_pairs.step(native_pairs.GELU, (0.0, 0.0, 0.0), v[:, None], torch.ones(len(v), 1, dtype=torch.float64),
                            v[:, None], v[:, None])
    if out is not None:
        assert float((out[1] - 0.5).abs().max()) < 1e-4
