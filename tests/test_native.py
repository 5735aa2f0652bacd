"""The compiled CPU loops (infinet.engine.native: native_kernels.c, native_conv.c): the interpolant's Clenshaw
evaluation against the TorchScript loop and the plain triple sum, bit-for-bit independence of an entry's place in
the tiles, and how the library is compiled, kept, rebuilt and declined."""

import os

import pytest
import torch

import infinet as inf
from infinet.engine import gaussian, native, variance_interpolation

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")


def _tanh_call(rows_shape, cols_shape, seed):
    g = torch.Generator().manual_seed(seed)
    var1 = torch.exp(torch.rand(rows_shape, generator=g, dtype=torch.float64) * 3 - 1.5)
    var2 = torch.exp(torch.rand(cols_shape, generator=g, dtype=torch.float64) * 3 - 1.5)
    corr = torch.rand(torch.broadcast_shapes(rows_shape, cols_shape), generator=g, dtype=torch.float64) * 2 - 1
    return corr * torch.sqrt(var1 * var2), var1, var2


SHAPES = {"one-matrix": ((37, 1), (1, 45)), "remainders": ((3, 7, 1), (3, 1, 19)), "swapped": ((1, 1, 7), (5, 6, 1)),
          "positions": ((5, 1, 4, 1), (1, 7, 1, 4)), "few-entries": ((40,), (40,)), "wide": ((2, 1), (1, 300))}


@needs_compiler
@pytest.mark.parametrize("shape", list(SHAPES))
def test_compiled_interpolant_matches_the_torchscript_loop(monkeypatch, shape):
    """Row and column counts that fill no tile (7 rows of 4, 19 columns of 16), rows taken from var2, batches,
    positions: the compiled evaluation agrees with the TorchScript loop to rounding (1e-14 of the largest value;
    the two sum in different orders) and with direct quadrature to 1e-10."""
    monkeypatch.setattr(gaussian, "UNIFORM_MIN_ENTRIES", 1)
    cov, var1, var2 = _tanh_call(*SHAPES[shape], seed=len(shape))
    assert native.library() is not None, native.status()
    compiled = gaussian.quadrature(torch.tanh, cov, var1, var2)
    monkeypatch.setenv("INFINET_NATIVE", "off")
    scripted = gaussian.quadrature(torch.tanh, cov, var1, var2)
    direct = gaussian._direct_quadrature(torch.tanh, *torch.broadcast_tensors(cov, var1, var2), True, None, 8, 0,
                                         2**22, False)
    for a, b, c in zip(compiled, scripted, direct):
        assert not torch.equal(a, b) or a.numel() < 64  # the compiled loop did run (its sums are ordered otherwise)
        assert float((a - b).abs().max()) <= 1e-14 * float(b.abs().max())
        assert float((a - c).abs().max()) < 1e-10


@needs_compiler
def test_an_entry_has_the_same_bits_wherever_it_sits_in_the_tiles():
    """Rows and columns at every place in a tile (and in the padded last tiles) holding the same entry give the
    same bits: each entry is the same sequence of operations."""
    cov, var1, var2 = _tanh_call((23, 1), (1, 37), seed=7)
    cov[:, 5] = cov[:, 30]
    var2[0, 5] = var2[0, 30]
    cov[2], var1[2] = cov[21], var1[21]
    nngp, kdot = gaussian.quadrature(torch.tanh, cov, var1, var2)
    for t in (nngp, kdot):
        assert torch.equal(t[:, 5], t[:, 30]) and torch.equal(t[2], t[21])
    sub = gaussian.quadrature(torch.tanh, cov[3:, 1:], var1[3:], var2[:, 1:])  # every entry in another place
    assert torch.equal(sub[0], nngp[3:, 1:]) and torch.equal(sub[1], kdot[3:, 1:])
    cov, var1, var2 = _tanh_call((263, 1), (1, 20), seed=8)  # rows in two groups of row tiles (256 rows each)
    cov[261], var1[261] = cov[2], var1[2]
    nngp, kdot = gaussian.quadrature(torch.tanh, cov, var1, var2)
    assert torch.equal(nngp[2], nngp[261]) and torch.equal(kdot[2], kdot[261])


def _naive(c, x, t1, t2):
    k, m, n = (torch.arange(d, dtype=torch.float64) for d in c.shape)
    tk, tm, tn = (torch.cos(i * torch.arccos(t)[..., None]) for i, t in ((k, x), (m, t1), (n, t2)))
    return torch.einsum("kmn,...k,...m,...n->...", c, tk, tm, tn)


@needs_compiler
@pytest.mark.parametrize("zeros", [(), (0,), (1, 2), (0, 3, 5), (2, 4, 6, 7), tuple(range(0, 9, 2)),
                                   tuple(range(1, 9, 2))])
def test_compiled_clenshaw_sums_every_term_pattern(zeros):
    """Series with zero terms anywhere (rank 0 in the recurrence), one parity only (even-only, odd-only) or one
    term: the compiled recurrences give the plain triple sum of the coefficients."""
    g = torch.Generator().manual_seed(len(zeros))
    c = torch.randn(9, 5, 5, generator=g, dtype=torch.float64) * 0.7 ** torch.arange(9.0)[:, None, None]
    c[list(zeros)] = 0.0
    for k in (1, 2, 9):
        table = variance_interpolation.Table(torch.stack([c[:k], 0.5 * c[:k]]), -1.0, 1.0,
                                             torch.zeros(2, dtype=torch.float64))
        t1 = torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1
        t2 = torch.rand(11, generator=g, dtype=torch.float64) * 2 - 1
        rho = torch.rand(6, 11, generator=g, dtype=torch.float64) * 2 - 1
        var1, var2 = torch.exp(t1)[:, None], torch.exp(t2)[None]  # log v = t on [-1, 1]
        got = variance_interpolation.evaluate(table, rho * torch.sqrt(var1 * var2), var1, var2)
        x = torch.arcsin(rho) * 2 / torch.pi
        want = _naive(c[:k], x, t1[:, None].expand(6, 11), t2[None].expand(6, 11))
        assert float((got[0] - want).abs().max()) < 1e-12, k
        assert float((got[1] - 0.5 * want).abs().max()) < 1e-12, k


@needs_compiler
def test_a_tanh_network_gives_the_same_kernel_compiled_or_scripted(monkeypatch):
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x * torch.linspace(0.3, 3.0, 30, dtype=torch.float64)[:, None]
    net = inf.serial(inf.Conv(4, 3, padding="SAME", b_std=0.1), inf.Tanh(), inf.Flatten(), inf.Dense(1))
    images = x.reshape(30, 1, 2, 3)
    compiled = net.kernel(images)
    monkeypatch.setenv("INFINET_NATIVE", "off")
    scripted = net.kernel(images)
    for a, b in ((compiled.nngp, scripted.nngp), (compiled.ntk, scripted.ntk)):
        assert torch.allclose(a, b, rtol=1e-13, atol=0)


def test_switched_off_no_compiler_and_failing_compiler_give_the_torchscript_loops(monkeypatch, tmp_path):
    monkeypatch.setenv("INFINET_NATIVE", "off")
    assert native.library() is None and "INFINET_NATIVE=off" in native.status()
    monkeypatch.delenv("INFINET_NATIVE")
    monkeypatch.setenv("INFINET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INFINET_CACHE", "on")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    lib, why = native._obtain()
    assert lib is None and "no C compiler" in why
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: not today' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    lib, why = native._obtain()
    assert lib is None and "failed" in why and "not today" in why
    assert not list(tmp_path.glob("native/*.so"))


@needs_compiler
def test_the_library_is_kept_read_back_and_rebuilt_when_damaged(monkeypatch, tmp_path):
    monkeypatch.setenv("INFINET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INFINET_CACHE", "on")
    lib, why = native._obtain()
    assert lib is not None and "compiled" in why
    kept = list(tmp_path.glob("native/*.so"))
    assert len(kept) == 1 and str(kept[0]) in why
    lib, why = native._obtain()
    assert lib is not None and why == f"read from {kept[0]}"
    data = kept[0].read_bytes()
    kept[0].unlink()  # (a new file: the loaded library's pages stay mapped)
    kept[0].write_bytes(data[:100])  # truncated: not loadable
    lib, why = native._obtain()
    assert lib is not None and "compiled" in why and os.path.getsize(kept[0]) > 100
    monkeypatch.setenv("INFINET_CACHE", "off")
    lib, why = native._obtain()
    assert lib is not None and "not kept" in why


@needs_compiler
def test_the_compiled_arc_cosine_is_within_an_ulp_of_pi_and_keeps_its_ends():
    """Against torch's arccos on 2^20 points and the boundaries of its branches (|x| = 1/2) and ends: within
    4.5e-16 (two ulps of pi), exactly 0 at 1 and pi at -1, and never increasing across the branches."""
    lib = native.library()
    x = torch.cat([torch.linspace(-1.0, 1.0, 1 << 20, dtype=torch.float64),
                   torch.tensor([-1.0, 1.0, 0.0, 0.5, -0.5], dtype=torch.float64),
                   0.5 + torch.arange(-50, 51, dtype=torch.float64) * 2.0**-53,
                   -0.5 + torch.arange(-50, 51, dtype=torch.float64) * 2.0**-53])
    out = torch.empty_like(x)
    lib.acos_values(x.numel(), x.data_ptr(), out.data_ptr())
    assert float((out - torch.arccos(x)).abs().max()) <= 4.5e-16
    ends, at = torch.empty(2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    lib.acos_values(2, at.data_ptr(), ends.data_ptr())
    assert ends[0] == 0.0 and ends[1] == torch.pi
    for centre in (0.5, -0.5):
        near = centre + torch.arange(-50, 51, dtype=torch.float64) * 2.0**-53
        got = torch.empty_like(near)
        lib.acos_values(near.numel(), near.data_ptr(), got.data_ptr())
        assert bool((got[1:] <= got[:-1]).all())


@needs_compiler
def test_the_compiled_arc_cosine_and_sine_share_one_root_and_keep_their_ends():
    """acos(x) and sqrt(1 - x^2) of the fused ReLU step, with one square root (a polynomial in x^2 for |x| <= 1/2,
    2 s sqrt(1 - s^2) with s = sqrt((1 - |x|) / 2) above): against mpmath to 3 ulps relative on a grid dense at
    the ends and at the branch, exactly 0 at +-1, and acos within 4.5e-16 of torch's."""
    mpmath = pytest.importorskip("mpmath")
    lib = native.library()
    ends = 1.0 - torch.logspace(-16, 0, 400, dtype=torch.float64)
    x = torch.cat([torch.linspace(-1.0, 1.0, 4001, dtype=torch.float64), ends, -ends,
                   torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64),
                   0.5 + torch.arange(-20, 21, dtype=torch.float64) * 2.0**-53])
    angle, sine = torch.empty_like(x), torch.empty_like(x)
    lib.acos_sine_values(x.numel(), x.data_ptr(), angle.data_ptr(), sine.data_ptr())
    mpmath.mp.dps = 40
    want = torch.tensor([float(mpmath.sqrt(1 - mpmath.mpf(v) ** 2)) for v in x.tolist()], dtype=torch.float64)
    nonzero = want > 0
    assert float(((sine - want).abs()[nonzero] / want[nonzero]).max()) <= 3 * 2.0**-53
    assert bool((sine[~nonzero] == 0).all()) and bool((sine[x.abs() == 1.0] == 0).all())
    assert float((angle - torch.arccos(x)).abs().max()) <= 4.5e-16


@needs_compiler
def test_the_compiled_conv_relu_loops_write_their_zero_borders_into_uninitialized_buffers():
    """The fused Conv + ReLU loops (full and diagonal layout) are given buffers holding NaN, as new memory may:
    every border entry the next step reads as padding comes out exactly zero, every interior entry finite."""
    from infinet.engine import conv_steps

    g = torch.Generator().manual_seed(3)
    run = conv_steps.Run(3, 2.0 / 9.0, 0.1, 0.2, 1.0, (7, 5), torch.float64)
    pair = torch.rand(2, 3, 7, 5, 7, 5, generator=g, dtype=torch.float64) + 1.0
    n1 = torch.rand(2, 7, 5, generator=g, dtype=torch.float64) + 1.0
    n2 = torch.rand(3, 7, 5, generator=g, dtype=torch.float64) + 1.0
    eps = torch.finfo(torch.float64).eps
    norm1, _ = run.gains(n1)
    norm2, valid = run.gains(n2)
    norm2 = norm2 * (-1.0 / (run.alpha * (1.0 + 4.0 * eps)))
    full = [run.bordered((2, 3)).fill_(float("nan")) for _ in range(2)]
    assert run._compiled("conv_relu_full", run.padded(pair), run.padded(0.5 * pair), *full, n1.contiguous(), norm2,
                         valid, eps)
    positions = pair.diagonal(dim1=2, dim2=4).diagonal(dim1=2, dim2=3)  # (2, 3, 7, 5): each position with itself
    diagonal = []
    new_buffer = run._bordered_positions
    run._bordered_positions = lambda lead: diagonal.append(new_buffer(lead).fill_(float("nan"))) or diagonal[-1]
    params = [(run.alpha, run.bias, run.a, run.b, -1.0 / (run.alpha * (1.0 + 4.0 * eps)))] * 2  # two steps
    run.diagonal_steps(run._positions(run._padded_positions(positions.contiguous())), 0.5 * positions, True,
                       torch.stack([n1] * 2), torch.stack([n2] * 2), None, params)
    assert len(diagonal) == 2
    for outs, interior in ((full, run._interior), (diagonal, run._positions)):
        for t in outs:
            border = t.clone()
            assert bool(torch.isfinite(interior(border)).all())
            interior(border).zero_()
            assert float(border.abs().max()) == 0.0


@needs_compiler
def test_the_compiled_interpolation_variable_matches_torch():
    """x = (2 / pi) arcsin(clamp(cov / (sd_row sd_col))) in one compiled pass (by reciprocals): within a few ulps
    of rho (times arcsin's slope) of torch's five passes, rows and columns of several matrices in place, correlations beyond +-1 clamped to x = +-1 exactly,
    and odd: x(-cov) = -x(cov) bit for bit."""
    lib = native.library()
    g = torch.Generator().manual_seed(11)
    sd_rows = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.1
    sd_cols = torch.rand(3, 37, generator=g, dtype=torch.float64) + 0.1
    cov = (torch.rand(3, 5, 37, generator=g, dtype=torch.float64) * 2.2 - 1.1) * sd_rows[..., None] * sd_cols[:, None]
    cov[0, 0, :3] = torch.tensor([1.0, -1.0, 0.0]) * sd_rows[0, 0] * sd_cols[0, :3] * 1.5

    def x_of(c):
        out = torch.empty_like(c)
        assert lib.interpolation_x(3, 5, 37, c.data_ptr(), sd_rows.data_ptr(), sd_cols.data_ptr(), out.data_ptr()) == 0
        return out

    got = x_of(cov)
    rho = (cov / (sd_rows[..., None] * sd_cols[:, None])).clamp(-1.0, 1.0)
    want = rho.arcsin() * (2.0 / torch.pi)
    # a few ulps of rho, times the slope of arcsin: 1 / sqrt(1 - rho^2)
    assert bool(((got - want).abs() <= 5e-16 * (1.0 + (1.0 - rho**2).clamp(min=1e-30).rsqrt())).all())
    assert got[0, 0, 0] == 1.0 and got[0, 0, 1] == -1.0 and got[0, 0, 2] == 0.0
    assert torch.equal(x_of(-cov), -got)


@needs_compiler
@pytest.mark.parametrize("head", [inf.GlobalAvgPool, inf.Flatten])
@pytest.mark.parametrize("act", [inf.Relu, lambda: inf.LeakyRelu(0.2), inf.Abs])
def test_compiled_conv_relu_steps_match_the_torchscript_loops(monkeypatch, head, act):
    """The fused Conv + ReLU-family step compiled (full layout below pooling, diagonal before Flatten) against its
    TorchScript loops: the same formulas, so to rounding (the arc-cosines differ by an ulp), with biases and a
    5x5 filter; identical inputs keep identical rows in both."""
    x = torch.randn(5, 2, 7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.cat([x, x[:1]])
    net = inf.serial(inf.Conv(3, 3, w_std=1.3, b_std=0.2, padding="SAME"), act(),
                     inf.Conv(3, 5, w_std=1.2, b_std=0.1, padding="SAME"), act(), head(), inf.Dense(1))
    calls = []
    original = native.library
    monkeypatch.setattr(native, "library", lambda: calls.append(1) or original())
    compiled = net.kernel(x, tile_size=3)
    assert calls
    monkeypatch.setenv("INFINET_NATIVE", "off")
    scripted = net.kernel(x, tile_size=3)
    for a, b in ((compiled.nngp, scripted.nngp), (compiled.ntk, scripted.ntk)):
        assert float((a - b).abs().max()) <= 1e-14 * float(b.abs().max())
        assert torch.equal(a[0], a[5]) and torch.equal(a[:, 0], a[:, 5])


@needs_compiler
def test_the_compiled_unit_atan2_matches_torch():
    """atan2(y, x) on the right half of the unit circle (the arguments the closed forms give it), through both of
    its branches: within 2 ulps of pi/2."""
    lib = native.library()
    theta = torch.linspace(-torch.pi / 2, torch.pi / 2, 100001, dtype=torch.float64)
    y, x = torch.sin(theta), torch.cos(theta).clamp(min=0.0)
    out = torch.empty_like(y)
    lib.atan2_unit_values(y.numel(), y.data_ptr(), x.data_ptr(), out.data_ptr())
    assert float((out - torch.atan2(y, x)).abs().max()) <= 4.5e-16


CLOSED_FORMS = {"relu": inf.Relu, "leaky": lambda: inf.LeakyRelu(0.1), "abs": inf.Abs,
                "erf": lambda: inf.Erf(1.3, 0.7, 0.2), "gelu": inf.Gelu}
LAYOUTS = {"vectors": ((9, 1), (1, 11)), "full": ((3, 1, 4, 5, 1, 1), (1, 2, 1, 1, 4, 5)),
           "diagonal": ((3, 1, 4, 5), (1, 2, 4, 5)), "tile": ((6, 1), (1, 6))}


@needs_compiler
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_compiled_closed_form_steps_match_the_eager_formulas(monkeypatch, name, layout):
    """Every layout the layers give (vectors, both convolutional layouts), with and without an NTK, correlations up
    to +-1: the compiled step agrees with closed_forms to 1e-13 of the largest value, and an entry whose inputs are
    identical (cov = var1 = var2) has the value of the diagonal in both."""
    act = CLOSED_FORMS[name]()
    g = torch.Generator().manual_seed(len(name) + len(layout))
    s1, s2 = LAYOUTS[layout]
    var1 = torch.exp(torch.rand(s1, generator=g, dtype=torch.float64) * 4 - 2)
    var2 = torch.exp(torch.rand(s2, generator=g, dtype=torch.float64) * 4 - 2)
    rho = torch.rand(torch.broadcast_shapes(s1, s2), generator=g, dtype=torch.float64) * 2 - 1
    rho.view(-1)[:3] = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    cov = rho * torch.sqrt(var1 * var2)
    if layout == "tile":  # a symmetric tile: cov[i, i] = var[i]
        var2 = var1.T.clone()
        cov = (rho + rho.T) / 2 * torch.sqrt(var1 * var2)
        cov.diagonal().copy_(var1[:, 0])
    ntk = torch.rand(cov.shape, generator=g, dtype=torch.float64) + 0.5
    for theta in (ntk, None):
        assert act.native_pairs() is not None
        got = act.step(cov, theta, var1, var2)
        with monkeypatch.context() as m:
            m.setenv("INFINET_NATIVE", "off")
            want = act.step(cov, theta, var1, var2)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
                continue
            assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max()), name
    if layout == "tile":
        nngp, _ = act.step(cov, ntk, var1, var2)
        assert torch.equal(nngp.diagonal(), act.step(var1[:, 0], None, var1[:, 0], var1[:, 0])[0])


@needs_compiler
def test_closed_form_steps_outside_the_compiled_loop_take_the_eager_formulas(monkeypatch):
    """A zero variance, variances whose product would overflow, Erf's 2 b^2 var beyond the float range, float32,
    gradients and INFINET_COMPILE=on: the eager formulas (the compiled loop is never called)."""
    from infinet.engine import fused, native_pairs

    def refuse(*args):
        raise AssertionError("the compiled loop was called")

    lib = native.library()
    monkeypatch.setattr(native, "library", lambda: type("L", (), {"closed_form_pairs": refuse})())
    var = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    cov = torch.full((3, 3), 0.1, dtype=torch.float64)
    assert native_pairs.step(native_pairs.ABRELU, (0.0, 1.0, 0.0), cov, None, var, var.T) is None
    huge = torch.tensor([[1e200], [1.0]], dtype=torch.float64)
    assert native_pairs.step(native_pairs.GELU, (0.0, 0.0, 0.0), torch.zeros(2, 2, dtype=torch.float64), None, huge,
                             huge.T) is None
    big = torch.tensor([[1e150], [1.0]], dtype=torch.float64)
    assert native_pairs.step(native_pairs.ERF, (1.0, 1e80, 0.0), torch.zeros(2, 2, dtype=torch.float64), None, big,
                             big.T) is None
    v = var[1:]
    assert native_pairs.step(native_pairs.ABRELU, (0.0, 1.0, 0.0), cov[1:, 1:].float(), None, v.float(),
                             v.T.float()) is None
    w = v.clone().requires_grad_()
    assert native_pairs.step(native_pairs.ABRELU, (0.0, 1.0, 0.0), cov[1:, 1:], None, w, v.T) is None
    monkeypatch.setattr(fused, "get_compile", lambda: "on")
    assert native_pairs.step(native_pairs.ABRELU, (0.0, 1.0, 0.0), cov[1:, 1:], None, v, v.T) is None
    assert lib is not None


@needs_compiler
def test_networks_of_closed_form_layers_give_the_same_kernels_compiled_or_eager(monkeypatch):
    x = torch.randn(12, 2, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for act in (inf.Erf, inf.Gelu, inf.Relu):
        net = inf.serial(inf.Conv(3, 3, b_std=0.2, padding="SAME"), act(), inf.Conv(3, 3, padding="SAME"), act(),
                         inf.GlobalAvgPool(), inf.Dense(4, b_std=0.1), act(), inf.Dense(1))
        compiled = net.kernel(x, tile_size=5)
        with monkeypatch.context() as m:
            m.setenv("INFINET_NATIVE", "off")
            eager = net.kernel(x, tile_size=5)
        for a, b in ((compiled.nngp, eager.nngp), (compiled.ntk, eager.ntk)):
            assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max()), act.__name__


@needs_compiler
def test_compiled_convolution_alone_reads_bordered_and_plain_inputs(monkeypatch):
    """A convolution after a fused Conv + ReLU step, or first in the network (the tile engine writes the input
    kernel into a zero-bordered buffer), reads that buffer as it is; given an unbordered kernel it borders each pair
    itself: both match the TorchScript loops (and the second's bordered copies) to rounding, with biases, an input
    NTK of zeros at the first layer and a 5x5 filter."""
    from infinet.engine import conv_fusion, conv_steps

    seen = []
    original = conv_steps.Run.compiled_sums

    def watched(self, nngp, ntk, need_ntk):
        seen.append(self._own_border(nngp) is not None)
        return original(self, nngp, ntk, need_ntk)

    monkeypatch.setattr(conv_steps.Run, "compiled_sums", watched)
    x = torch.randn(4, 2, 6, 7, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    net = inf.serial(inf.Conv(3, 5, b_std=0.2, padding="SAME"), inf.Erf(), inf.Conv(3, 3, padding="SAME"), inf.Relu(),
                     inf.Conv(3, 3, b_std=0.1, padding="SAME"), inf.Gelu(), inf.GlobalAvgPool(), inf.Dense(1))
    compiled = net.kernel(x, tile_size=2)  # the first convolution reads the input kernel's bordered buffer too
    assert seen and all(seen)
    seen.clear()
    monkeypatch.setattr(conv_fusion, "input_border", lambda layer, shape: 0)  # an unbordered input kernel
    plain = net.kernel(x, tile_size=2)
    assert True in seen and False in seen
    monkeypatch.setenv("INFINET_NATIVE", "off")
    scripted = net.kernel(x, tile_size=2)
    for ours in (compiled, plain):
        for a, b in ((ours.nngp, scripted.nngp), (ours.ntk, scripted.ntk)):
            assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max())
