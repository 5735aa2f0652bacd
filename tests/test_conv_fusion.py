"""The fused Conv + ReLU-family step (infinet.engine.conv_fusion) against the layers applied one by one."""

import math

import pytest
import torch

import infinet as inf
from infinet.engine import conv_blocks, conv_fusion, conv_steps, fused, native
from infinet.engine.kernel import input_kernel


def _net(act=inf.Relu, b_std=None, size=3, tail=True, padding="SAME", head=inf.GlobalAvgPool):
    layers = [inf.Conv(4, size, w_std=1.3, b_std=b_std, padding=padding), act(),
              inf.Conv(4, size, w_std=1.4, b_std=b_std, padding=padding), act()]
    if tail:
        layers += [inf.AvgPool(2), inf.Conv(3, size, w_std=1.2, b_std=b_std, padding=padding), act()]
    return inf.serial(*layers, head(), inf.Dense(1, w_std=1.1))


def _both(net, *args, **kwargs):
    """(fused, layer by layer) kernels, counting the fused calls that took effect."""
    calls = []
    original, chain, alone = conv_fusion.conv_activation, conv_fusion.diagonal_chain, conv_fusion.conv_alone

    def counted(*a):
        out = original(*a)
        calls.append(out is not None)
        return out

    def counted_chain(*a):
        out = chain(*a)
        calls.append(out is not None)
        return out

    def counted_alone(*a):
        calls.append("alone")
        return alone(*a)

    try:
        conv_fusion.conv_activation, conv_fusion.diagonal_chain = counted, counted_chain
        conv_fusion.conv_alone = counted_alone
        got = net.kernel(*args, **kwargs)
        conv_fusion.ENABLED = False
        want = net.kernel(*args, **kwargs)
    finally:
        conv_fusion.ENABLED = True
        conv_fusion.conv_activation, conv_fusion.diagonal_chain, conv_fusion.conv_alone = original, chain, alone
    return got, want, calls


def _close(got, want, tol):
    for name in ("nngp", "ntk"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None
            continue
        assert float((a - b).abs().max()) <= tol * float(b.abs().max()), name


CASES = {
    "relu": {},
    "bias": {"b_std": 0.3},
    "leaky": {"act": lambda: inf.LeakyRelu(0.2)},
    "abs_bias": {"act": inf.Abs, "b_std": 0.1},
    "filter5": {"size": 5},
    "zeros_given": {"size": 5, "padding": 2},
    "filter1": {"size": 1, "b_std": 0.2},
    "erf_alone": {"act": inf.Erf, "b_std": 0.2},  # no fused step: the blocked convolution alone
    "gelu_alone": {"act": inf.Gelu},
    "flatten": {"head": inf.Flatten},  # the diagonal layout: same-position pairs only
    "flatten_leaky_bias": {"head": inf.Flatten, "act": lambda: inf.LeakyRelu(0.2), "b_std": 0.3, "size": 5},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tile_size", [None, 2])
@pytest.mark.parametrize("second", [False, True])
def test_fused_conv_activation_matches_the_layers_one_by_one(case, tile_size, second):
    """Every ABRelu, with and without bias, 3x3 and 5x5 filters, non-square 8 x 6 images, one tile or tiles of 2
    (symmetric tiles recording variances, off-diagonal ones replaying them), x2 = x1 or another batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 8, 6, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 2, 8, 6, generator=g, dtype=torch.float64) if second else None
    got, want, calls = _both(_net(**CASES[case]), x, x2, get=("nngp", "ntk"), tile_size=tile_size)
    assert calls and all(c is True for c in calls) or case.endswith("_alone") and set(calls) == {"alone"}
    _close(got, want, 1e-13)


def test_nngp_alone_float32_and_a_zero_variance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    got, want, calls = _both(_net(tail=False), x, get="nngp")
    assert all(c is True for c in calls) and got.ntk is None
    _close(got, want, 1e-13)
    got, want, calls = _both(_net(tail=False), x.float(), get=("nngp", "ntk"), dtype=torch.float32)
    assert all(c is True for c in calls) and got.nngp.dtype == torch.float32
    _close(got, want, 1e-5)
    x[2] = 0.0  # an all-zero image: its variances are 0, where the closed form needs its own limit
    got, want, calls = _both(_net(tail=False), x, get=("nngp", "ntk"))
    assert False in calls and True not in calls  # the layers one by one (each Conv in blocks)
    _close(got, want, 0.0)


def test_identical_inputs_in_different_tiles_keep_identical_rows():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 8, 8, generator=g, dtype=torch.float64)
    x[4] = x[0]
    k = _net().kernel(x, get=("nngp", "ntk"), tile_size=2)
    for t in (k.nngp, k.ntk):
        assert torch.equal(t[0], t[4]) and torch.equal(t[:, 0], t[:, 4])


@pytest.mark.parametrize("conv", [inf.Conv(2, 3, stride=2), inf.Conv(2, 3, dilation=2), inf.Conv(2, 3, padding="VALID"),
                                  inf.Conv(2, 3, padding="CIRCULAR"), inf.Conv(2, 3, padding=2), inf.Conv(2, 2),
                                  inf.Conv(2, (3, 5)),
                                  inf.Conv(2, 3, parameterization="standard"), inf.ConvLocal(2, 3, padding="SAME")])
def test_other_convolutions_take_the_layers_own_transforms(conv):
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    k = input_kernel(x, None, True, full=True)
    assert not conv_fusion.applies(conv, inf.Relu(), k, True)
    assert conv_fusion.applies(inf.Conv(2, 3), inf.Relu(), k, True)
    assert not conv_fusion.applies(inf.Conv(2, 3), inf.Relu(), k, False)  # a diagonal output
    assert not conv_fusion.applies(inf.Conv(2, 3), inf.Erf(), k, True)
    assert not conv_fusion.applies(inf.Conv(2, 3), inf.Relu(), k.to_diagonal(), True)
    w = torch.tensor(1.2, requires_grad=True)
    assert not conv_fusion.applies(inf.Conv(2, 3), inf.Relu(), k.replace(nngp=k.nngp * w), True)


def test_scripted_block_loop_gives_the_same_bits_as_the_plain_one_and_keeps_borders_zero():
    g = torch.Generator().manual_seed(3)
    run = conv_steps.Run(3, 2.0 / 9.0, 0.1, 0.2, 1.0, (7, 5), torch.float64)
    run.rows = 2  # blocks that end short of the last row
    pair = torch.rand(2, 3, 7, 5, 7, 5, generator=g, dtype=torch.float64) + 1.0
    n1 = torch.rand(2, 7, 5, generator=g, dtype=torch.float64) + 1.0
    n2 = torch.rand(3, 7, 5, generator=g, dtype=torch.float64) + 1.0
    kin, tin = run.padded(pair), run.padded(pair * 0.5)
    for t in (kin, tin):  # fresh copies: zero border, the pair inside
        border = t.clone()
        run._interior(border).zero_()
        assert float(border.abs().max()) == 0.0 and torch.equal(run._interior(t), pair * (0.5 if t is tin else 1.0))
    outs = []
    scripted = fused.scripted(conv_blocks.full_blocks)
    assert isinstance(scripted, torch.jit.ScriptFunction)  # TorchScript takes the loop (else: slower, same bits)
    for loop in (scripted, conv_blocks.full_blocks):
        kout, tout = run.bordered((2, 3)), run.bordered((2, 3))
        for t in (kout, tout):  # the compiled loop writes its border; the TorchScript one needs it zeroed
            run._zero_border(t)
        norm2, valid = run.gains(n2)
        norm2 = norm2 * (-1.0 / (run.alpha * (1.0 + 4.0 * torch.finfo(torch.float64).eps)))
        loop(kin, tin, kout, tout, n1, norm2, valid, 3, run.rows, run.inner, run.alpha, run.bias, run.a, run.b,
             torch.finfo(torch.float64).eps)
        for t in (kout, tout):
            border = t.clone()
            run._interior(border).zero_()
            assert float(border.abs().max()) == 0.0
        outs.append((kout, tout))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert run.padded(run._interior(outs[0][0])) is outs[0][0]  # the next layer reads it without a copy


def test_auto_compile_mode_leaves_conv_relu_networks_to_the_blocked_step(monkeypatch):
    """Mode "auto" would compile a large computation's ReLU steps; networks with Conv + ReLU pairs keep the
    blocked TorchScript step (faster, and on the tile pool) instead."""
    assert conv_fusion.has_pairs(inf.myrtle(5))
    assert conv_fusion.has_pairs(inf.repeat(inf.serial(inf.Conv(1), inf.Relu()), 2))
    assert not conv_fusion.has_pairs(inf.serial(inf.Conv(1), inf.Tanh()))
    assert not conv_fusion.has_pairs(inf.parallel(inf.Conv(1), inf.Relu()))  # branches, not a sequence
    monkeypatch.setattr(fused, "_mode", "auto")
    monkeypatch.setattr(fused, "AUTO_WORK", 0.0)  # every computation counts as large
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    got, want, calls = _both(_net(tail=False), x, get=("nngp", "ntk"))
    assert calls and all(c is True for c in calls)
    _close(got, want, 1e-13)


def _diagonal_tables(run, n_1, n_2, steps, g, symmetric=False):
    """Random tables of ``steps`` fused steps in the diagonal layout, for :meth:`_Run.diagonal_steps`."""
    eps = torch.finfo(torch.float64).eps
    params = [(2.0 / 9.0 * (1 + 0.1 * s), 0.1 * s, -0.3 + 0.1 * s, 1.0) for s in range(steps)]
    params = [p + (-1.0 / (p[0] * (1.0 + 4.0 * eps)),) for p in params]
    sd1 = torch.rand(steps, n_1, run.h, run.w, generator=g, dtype=torch.float64) + 1.0
    sd2 = sd1 if symmetric else torch.rand(steps, n_2, run.h, run.w, generator=g, dtype=torch.float64) + 1.0
    return sd1, sd2, sd1 * sd1 if symmetric else None, params


def test_diagonal_layout_loop_scripted_and_plain_agree_bit_for_bit_with_zero_borders(monkeypatch):
    """Two fused steps in the diagonal layout: the TorchScript loop and the same function run by Python give the
    same bits, the compiled loop agrees with them to rounding, and every output's border is exactly zero."""
    g = torch.Generator().manual_seed(4)
    run = conv_steps.Run(3, 1.0, 0.0, 0.0, 1.0, (7, 5), torch.float64)
    pair = torch.rand(5, 3, 7, 5, generator=g, dtype=torch.float64) + 1.0
    tables = _diagonal_tables(run, 5, 3, 2, g)
    monkeypatch.setattr(conv_steps, "BLOCK_ENTRIES", 2 * 3 * run.inner)  # blocks of 2 rows: the last one short
    outs = []
    for how in ("compiled", "scripted", "plain"):
        if how != "compiled":
            monkeypatch.setattr(native, "library", lambda: None)
        if how == "plain":
            monkeypatch.setitem(fused._scripts, conv_blocks.diagonal_blocks, conv_blocks.diagonal_blocks)
        nngp, ntk = run.diagonal_steps(pair, pair * 0.5, True, *tables)
        for t in (nngp, ntk):
            base = run._padded_positions(t)
            assert base is t._base  # the next step reads the buffer itself
            border = base.clone()
            run._positions(border).zero_()
            assert float(border.abs().max()) == 0.0
        outs.append((nngp, ntk))
    assert torch.equal(outs[1][0], outs[2][0]) and torch.equal(outs[1][1], outs[2][1])
    for a, b in zip(outs[0], outs[1]):
        assert float((a - b).abs().max()) <= 1e-14 * float(b.abs().max())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ntk", [True, False])
def test_diagonal_steps_before_a_flatten_keep_only_the_means_over_positions(monkeypatch, symmetric, ntk):
    """mean=True: the compiled loop stores each pair's mean over its positions (N1, N2), the mean of the planes it
    gives otherwise to rounding (pinned diagonal and mirrored pairs of a symmetric tile included), and so does
    the TorchScript loop (its planes' torch mean)."""
    g = torch.Generator().manual_seed(9)
    run = conv_steps.Run(3, 1.0, 0.0, 0.0, 1.0, (7, 5), torch.float64)
    n_2 = 4 if symmetric else 3
    pair = torch.rand(4, n_2, 7, 5, generator=g, dtype=torch.float64) + 1.0
    if symmetric:
        pair = 0.5 * (pair + pair.transpose(0, 1))
    tables = _diagonal_tables(run, 4, n_2, 3, g, symmetric=symmetric)
    theta = pair * 0.5 if ntk else None
    planes = run.diagonal_steps(pair, theta, ntk, *tables)
    want = [None if t is None else t.mean(dim=(-2, -1)) for t in planes]
    means = run.diagonal_steps(pair, theta, ntk, *tables, mean=True)
    monkeypatch.setattr(native, "library", lambda: None)
    scripted = run.diagonal_steps(pair, theta, ntk, *tables, mean=True)
    for got in (means, scripted):
        assert (got[1] is None) == (not ntk)
        for a, b in zip(got, want):
            if b is not None:
                assert a.shape == (4, n_2) and float((a - b).abs().max()) <= 1e-14 * float(b.abs().max())
    if symmetric:
        assert torch.equal(means[0], means[0].T)


def test_a_flatten_after_fused_steps_takes_their_means(monkeypatch):
    """serial(Conv, ReLU, ..., Flatten, Dense): the Flatten is done by the fused call (its laws and variance trace
    as for the layer itself: tiles of 2 record and replay), and the kernel is that of the layers one by one."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(5, 2, 6, 5, generator=g, dtype=torch.float64)
    net = inf.serial(*_diagonal_network(3), inf.Flatten(), inf.Dense(1, b_std=0.1))
    flattened = []
    of_means = inf.Flatten.of_means
    monkeypatch.setattr(inf.Flatten, "of_means", lambda *a: flattened.append(1) or of_means(*a))
    monkeypatch.setattr(inf.Flatten, "kernel_fn", lambda *a: pytest.fail("Flatten.kernel_fn was called"))
    got = net.kernel(x, get=("nngp", "ntk"), tile_size=2)
    assert len(flattened) == 6  # one per tile
    monkeypatch.undo()
    monkeypatch.setattr(conv_fusion, "ENABLED", False)
    want = net.kernel(x, get=("nngp", "ntk"), tile_size=2)
    _close(got, want, 1e-13)


def _diagonal_network(steps, b_std=0.2):
    layers = []
    for s in range(steps):
        layers += [inf.Conv(3, 3, w_std=1.2 + 0.1 * s, b_std=b_std), inf.LeakyRelu(0.1 * s)]
    return layers


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ntk", ["zero", "given", None])
@pytest.mark.parametrize("bordered", [False, True])
def test_diagonal_chain_gives_the_bits_of_its_steps_one_at_a_time(symmetric, ntk, bordered):
    """Four Conv + LeakyReLU steps in one compiled call against one call per step (the planes that stay in cache
    between steps, the pinned diagonal of a symmetric tile after every step, inputs with and without a zero
    border, an NTK of zeros, a given one, none) and against the layers one by one."""
    g = torch.Generator().manual_seed(6)
    x1 = torch.randn(6, 2, 7, 5, generator=g, dtype=torch.float64)
    x2 = None if symmetric else torch.randn(5, 2, 7, 5, generator=g, dtype=torch.float64)
    k = input_kernel(x1, x2, ntk is not None, full=False)
    if ntk == "given":
        k = k.replace(ntk=k.nngp * 0.7)
    if bordered:  # the output of a fused step before: the chain reads its zero-bordered buffer in place
        run = conv_steps.Run(3, 1.0, 0.0, 0.0, 1.0, (7, 5), torch.float64)
        k = k.replace(nngp=run._positions(run._padded_positions(k.nngp)),
                      ntk=None if ntk != "given" else run._positions(run._padded_positions(k.ntk)))
    layers = _diagonal_network(4)
    outs = [False] * len(layers)
    run = conv_fusion.diagonal_run(layers, 0, k, outs)
    assert len(run) == 4
    chained, used = conv_fusion.diagonal_chain(run, k)
    assert used == 8
    one = k
    for step in run:
        one, used = conv_fusion.diagonal_chain([step], one)
        assert used == 2
    for name in ("nngp", "ntk", "var1", "var2"):
        a, b = getattr(chained, name), getattr(one, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name
    conv_fusion.ENABLED = False
    try:
        want = inf.serial(*layers).kernel_fn(k, False)
    finally:
        conv_fusion.ENABLED = True
    _close(chained, want, 1e-13)


def test_a_long_run_of_steps_takes_several_calls_of_at_most_max_chain(monkeypatch):
    """Seven steps with calls of at most three: three calls (3, 3, 1 steps), the second reading the first's
    zero-bordered output in place, and the kernel of the layers one by one."""
    monkeypatch.setattr(conv_fusion, "MAX_CHAIN", 3)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 2, 6, 5, generator=g, dtype=torch.float64)
    net = inf.serial(*_diagonal_network(7), inf.Flatten(), inf.Dense(1))
    steps = []
    chain = conv_fusion.diagonal_chain
    monkeypatch.setattr(conv_fusion, "diagonal_chain", lambda run, *a: steps.append(len(run)) or chain(run, *a))
    got = net.kernel(x, get=("nngp", "ntk"))
    monkeypatch.setattr(conv_fusion, "ENABLED", False)
    want = net.kernel(x, get=("nngp", "ntk"))
    assert steps == [3, 3, 1]
    _close(got, want, 1e-13)


def test_diagonal_chain_stops_at_the_first_step_it_cannot_take():
    """Variances beyond sqrt(max) / 4 after the second convolution: the chain takes the first step only, the
    layers after it take their own transforms, and the kernel is that of the layers one by one."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64) * 1e74
    net = inf.serial(inf.Conv(2, 3, w_std=1e2), inf.Relu(), inf.Conv(2, 3, w_std=1e2), inf.Relu(), inf.Flatten(),
                     inf.Dense(1))
    k = input_kernel(x, None, True, full=False)
    run = conv_fusion.diagonal_run(net.layers, 0, k, [False] * 6)
    assert len(run) == 2 and conv_fusion.diagonal_chain(run, k)[1] == 2
    got, want, calls = _both(net, x, get=("nngp", "ntk"))
    assert calls == [True, False]
    _close(got, want, 1e-13)


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_fused_kernels_are_the_limit_of_their_finite_networks(head):
    """Against something infinet's kernels did not compute: Monte Carlo over finite networks of 256 channels
    (the full layout before global pooling, the diagonal one before Flatten; bias and LeakyReLU included)."""
    net = inf.serial(inf.Conv(256, 3, w_std=1.4, b_std=0.2), inf.LeakyRelu(0.1), inf.Conv(256, 3, w_std=1.3),
                     inf.Relu(), inf.GlobalAvgPool() if head == "gap" else inf.Flatten(), inf.Dense(1, b_std=0.1))
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    calls = []
    original, chain = conv_fusion.conv_activation, conv_fusion.diagonal_chain
    try:
        conv_fusion.conv_activation = lambda *a: calls.append(1) or original(*a)
        conv_fusion.diagonal_chain = lambda *a: calls.extend([1, 1]) or chain(*a)  # two steps in one call
        exact = net.kernel(x)
    finally:
        conv_fusion.conv_activation, conv_fusion.diagonal_chain = original, chain
    assert len(calls) == 2
    mc = inf.monte_carlo_kernel(net, x, n_samples=24, seed=1)
    for got, se, want in ((mc.nngp, mc.nngp_stderr, exact.nngp), (mc.ntk, mc.ntk_stderr, exact.ntk)):
        assert float(((got - want).abs() / se).max()) < 4.0


@pytest.mark.parametrize("pool, shape", [(inf.AvgPool(2), (5, 2, 8, 6)), (inf.SumPool(2), (3, 1, 7, 5)),
                                         (inf.AvgPool((2, 3)), (4, 2, 6, 9)), (inf.AvgPool(3), (3, 1, 7, 7))])
def test_compiled_pooling_gives_the_bits_of_the_window_sums(pool, shape, monkeypatch):
    """Non-overlapping AvgPool and SumPool in one compiled pass (square and not, sizes that leave rows and
    columns out) on fused outputs (interior views of bordered buffers), the self-covariances and x1 against x2:
    the bits of the axis-by-axis window sums; overlapping windows and windows reaching padding keep the torch
    passes."""
    from infinet.engine.layers import pooling

    g = torch.Generator().manual_seed(9)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, *shape[1:], generator=g, dtype=torch.float64)
    net = inf.serial(inf.Conv(2, 3), inf.Relu(), pool, inf.Conv(2, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    taken = []
    compiled = pooling._compiled_pool
    monkeypatch.setattr(pooling, "_compiled_pool", lambda *a: taken.append(compiled(*a)) or taken[-1])
    got = [net.kernel(x, get=("nngp", "ntk")), net.kernel(x, x2, get=("nngp", "ntk"))]
    assert taken and all(t is not None for t in taken)
    monkeypatch.setattr(pooling, "_compiled_pool", lambda *a: None)
    want = [net.kernel(x, get=("nngp", "ntk")), net.kernel(x, x2, get=("nngp", "ntk"))]
    for a, b in zip(got, want):
        assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    k = input_kernel(torch.randn(2, 1, 7, 7, dtype=torch.float64), None, True, full=True)
    for other in (inf.AvgPool(3, stride=2), inf.AvgPool(2, padding="SAME")):  # overlapping; reaching padding
        assert pooling._compiled_pool(k.nngp, 2, other.geometry(k.shape), 1.0) is None


@pytest.mark.parametrize("h, w, border", [(28, 28, 1), (5, 6, 2), (1, 3, 1), (4, 4, 3)])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_bordered_input_kernel_writes_every_entry_its_border_zero(h, w, border, channels, monkeypatch):
    """bordered_input writes nothing; input_kernel(out=, border=) writes the whole buffer (products of the
    zero-padded images): buffers from torch.empty full of NaN show any entry it misses. The border is zero, the
    interior the plain input kernel's bits, x2 = x1 or another batch."""
    g = torch.Generator().manual_seed(11)
    x1 = torch.randn(2, channels, h, w, generator=g, dtype=torch.float64)
    for x2 in (None, torch.randn(3, channels, h, w, generator=g, dtype=torch.float64)):
        n2 = 2 if x2 is None else 3
        empty = torch.empty
        monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(math.nan))
        inner = conv_steps.bordered_input(2, n2, (h, w), border, torch.float64)
        monkeypatch.undo()
        base = inner._base
        assert inner.shape == (2, n2, h, w, h, w)
        assert base.shape == (2, n2, h + 2 * border, w + 2 * border, h + 2 * border, w + 2 * border)
        assert bool(base.isnan().all())  # nothing written yet
        k = input_kernel(x1, x2, True, full=True, out=inner, border=border)
        inside = torch.zeros(base.shape, dtype=torch.bool)
        inside[:, :, border:border + h, border:border + w, border:border + h, border:border + w] = True
        assert bool((base[~inside] == 0).all())
        assert k.nngp is inner and torch.equal(inner, input_kernel(x1, x2, True, full=True).nngp)
        with pytest.raises(ValueError, match="interior"):
            input_kernel(x1, x2, True, full=True, out=inner.clone(), border=border)


@pytest.mark.parametrize("channels", [1, 3])
def test_input_kernel_written_into_the_first_convolutions_padded_buffer(channels, monkeypatch):
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(3, channels, 7, 7, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, channels, 7, 7, generator=g, dtype=torch.float64)
    net = _net(b_std=0.2)
    assert conv_fusion.input_border(net, tuple(x1.shape[1:])) == 1
    assert conv_fusion.input_border(inf.serial(inf.Conv(4, 3, padding="VALID"), inf.Relu()), (1, 7, 7)) == 0
    assert conv_fusion.input_border(inf.serial(inf.Dense(3), inf.Relu()), (1, 7, 7)) == 0
    # the input NNGP is the same in the interior of the padded buffer, and the convolution reads it in place
    out = conv_steps.bordered_input(3, 2, (7, 7), 1, torch.float64)
    k = input_kernel(x1, x2, True, full=True, out=out, border=1)
    plain = input_kernel(x1, x2, True, full=True)
    assert k.nngp is out and torch.equal(k.nngp, plain.nngp) and torch.equal(k.var1, plain.var1)
    run = conv_steps.Run(3, 1.0, 0.0, 0.0, 1.0, (7, 7), torch.float64)
    assert run.padded(k.nngp) is out._base
    with pytest.raises(ValueError, match="out must be"):
        input_kernel(x1, x2, True, full=True, out=conv_steps.bordered_input(2, 2, (7, 7), 1, torch.float64))
    # whole kernels: the same bits as with the input kernel padded by a copy, symmetric or not
    for args in ((x1,), (x1, x2)):
        fast = net.kernel(*args)
        monkeypatch.setattr(conv_fusion, "input_border", lambda layer, shape: 0)
        slow = net.kernel(*args)
        monkeypatch.undo()
        assert torch.equal(fast.nngp, slow.nngp) and torch.equal(fast.ntk, slow.ntk)


def test_input_ntk_of_a_bordered_input_kernel_is_an_unwritten_zero(monkeypatch):
    """With the input kernel in a convolution's bordered buffer, the input NTK is one zero expanded (no memory
    written): known to be zero, never written into, and right where the convolution's own transform reads it."""
    from infinet.engine.kernel import known_zero

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    k = input_kernel(x, None, True, full=True, out=conv_steps.bordered_input(3, 3, (6, 6), 1, torch.float64),
                     ntk_unread=True, border=1)
    assert known_zero(k.ntk) and k.ntk.shape == k.nngp.shape and set(k.ntk.stride()) == {0}
    assert float(k.ntk.abs().max()) == 0.0
    with pytest.raises(RuntimeError):
        k.ntk.add_(1.0)
    assert known_zero(input_kernel(x, None, True, full=True).ntk)  # stored zeros elsewhere
    net = _net(b_std=0.3)
    conv_fusion.ENABLED = False
    try:
        want = net.kernel(x)
    finally:
        conv_fusion.ENABLED = True
    # every Conv by its own torch transform, the first one reading the bordered input kernel and the expanded zero
    monkeypatch.setattr(conv_fusion, "applies", lambda *a: False)
    monkeypatch.setattr(conv_fusion, "conv_applies", lambda *a: False)
    got = net.kernel(x)
    assert conv_fusion.input_border(net, (2, 6, 6)) == 1
    _close(got, want, 1e-13)


def test_diagonal_layout_input_ntk_unread_is_an_unwritten_zero():
    """Networks that flatten: the input NTK before a fused first convolution is one zero expanded, and the kernel
    is right where the chain stops at once (an all-zero image) and the layers take their own transforms."""
    from infinet.engine.kernel import known_zero

    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64)
    k = input_kernel(x, None, True, full=False, ntk_unread=True)
    assert known_zero(k.ntk) and set(k.ntk.stride()) == {0} and float(k.ntk.abs().max()) == 0.0
    assert k.ntk.shape == k.nngp.shape and k.ntk.is_contiguous() is False
    x[1] = 0.0
    net = inf.serial(inf.Conv(4, 3, w_std=1.3, b_std=None, padding="SAME"), inf.Relu(),
                     inf.Conv(4, 3, w_std=1.2, b_std=0.1, padding="SAME"), inf.Erf(), inf.Flatten(), inf.Dense(1))
    assert conv_fusion.input_border(net, (2, 6, 6)) == 1
    got, want, calls = _both(net, x)
    assert False in calls  # the zero image's variances stop the chain: the layers one by one
    _close(got, want, 1e-13)


def test_pin_skips_a_diagonal_taken_from_the_kernel_itself(monkeypatch):
    """var1 taken from nngp's own diagonal (kernel.diagonal_pairs) is not written back by pin_diagonal; any other
    var1 is, and a var1 taken from another nngp is too."""
    from infinet.engine.kernel import Kernel, diagonal_pairs

    g = torch.Generator().manual_seed(7)
    nngp = torch.randn(3, 3, 4, 4, 4, 4, generator=g, dtype=torch.float64)
    own = diagonal_pairs(nngp)
    k = Kernel(nngp, None, own, own, (1, 4, 4), symmetric=True, full=True)
    writes = []
    original = torch.Tensor.__setitem__
    monkeypatch.setattr(torch.Tensor, "__setitem__", lambda t, i, v: (writes.append(1), original(t, i, v))[1])
    assert k.pin_diagonal(inplace=True) is k and not writes
    other = own + 1.0
    pinned = k.replace(var1=other, var2=other).pin_diagonal(inplace=True)
    assert writes and torch.equal(pinned.nngp[1, 1], other[1])
    copy = nngp.clone()
    stale = Kernel(copy, None, own, own, (1, 4, 4), symmetric=True, full=True)  # own is nngp's, not copy's
    copy[2, 2] = 0.0
    assert torch.equal(stale.pin_diagonal(inplace=True).nngp[2, 2], own[2])


@pytest.mark.parametrize("which", ["x1", "x2"])
def test_inputs_that_require_grad_keep_the_plain_input_kernel(which):
    """With inputs that require gradients (either batch) the input kernel is not written into a padded buffer (an
    out= product has no gradient), and the gradient matches finite differences."""
    g = torch.Generator().manual_seed(8)
    x1 = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    net = inf.cntk(2, pooling="gap")
    assert conv_fusion.input_border(net, (1, 6, 6)) == 1
    leaf = (x1 if which == "x1" else x2).requires_grad_(True)
    k = net.kernel(x1, x2)
    assert k.ntk.requires_grad
    (grad,) = torch.autograd.grad(k.ntk.sum(), leaf)
    step = torch.zeros_like(leaf).index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([2]),
                                              torch.tensor([3])), torch.tensor(1e-6, dtype=torch.float64))
    with torch.no_grad():
        shifted = (x1 + step, x2) if which == "x1" else (x1, x2 + step)
        back = (x1 - step, x2) if which == "x1" else (x1, x2 - step)
        fd = (net.kernel(*shifted).ntk.sum() - net.kernel(*back).ntk.sum()) / 2e-6
    assert abs(float(grad[1, 0, 2, 3]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


def _deferred_and_written(net, monkeypatch, *args, **kwargs):
    """(kernel with the first step reading the images, kernel with the input kernel written first, the number of
    tiles whose first step read the images, how many input kernels were written)."""
    from infinet.engine.kernel import ChannelProducts

    reads, writes = [], []
    image_pairs, write = conv_steps.Run.image_pairs, ChannelProducts.write
    monkeypatch.setattr(conv_steps.Run, "image_pairs", lambda self, *a: reads.append(1) or image_pairs(self, *a))
    monkeypatch.setattr(ChannelProducts, "write", lambda self: writes.append(1) or write(self))
    got = net.kernel(*args, **kwargs)
    counts = (len(reads), len(writes))
    monkeypatch.setattr(conv_fusion, "reads_images", lambda layer, dtype: False)
    want = net.kernel(*args, **kwargs)
    monkeypatch.undo()
    return got, want, *counts


@pytest.mark.skipif(native.library() is None, reason="needs the compiled library (a C compiler)")
@pytest.mark.parametrize("channels, size, b_std", [(1, 3, None), (3, 3, 0.2), (2, 5, None), (16, 3, 0.1)])
@pytest.mark.parametrize("second", [False, True])
def test_first_step_from_the_images_never_writes_the_input_kernel(channels, size, b_std, second, monkeypatch):
    """The first Conv + ReLU takes its tap sums from the two images of each pair (conv_relu_images): the input
    kernel is never written, and the whole kernel agrees with the one whose first step reads the written input
    kernel (the same products and tap order: 1e-14 relative; on the development machine the same bits), symmetric
    tiles (pairs (i, i) pinned at (p, p)) and others, tiles of 2 and one tile, nested serial compositions."""
    g = torch.Generator().manual_seed(channels + size)
    x1 = torch.randn(5, channels, 8, 7, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, channels, 8, 7, generator=g, dtype=torch.float64) if second else None
    net = _net(b_std=b_std, size=size)
    assert conv_fusion.reads_images(net, torch.float64) and not conv_fusion.reads_images(net, torch.float32)
    nested = inf.serial(inf.serial(net.layers[0], net.layers[1]), *net.layers[2:])
    for model in (net, nested):
        for tile_size in (None, 2):
            args = (x1,) if x2 is None else (x1, x2)
            got, want, reads, writes = _deferred_and_written(model, monkeypatch, *args, tile_size=tile_size)
            assert reads >= 1 and writes == 0
            _close(got, want, 1e-14)
            if x2 is None:
                assert torch.equal(got.nngp, got.nngp.T) and torch.equal(got.ntk, got.ntk.T)


@pytest.mark.skipif(native.library() is None, reason="needs the compiled library (a C compiler)")
@pytest.mark.parametrize("channels, size, b_std", [(1, 3, None), (3, 3, 0.2), (2, 5, 0.1)])
def test_diagonal_chain_from_the_images_gives_the_written_paths_bits(channels, size, b_std, monkeypatch):
    """Networks that flatten: the diagonal chain makes each pair's input plane from its two images in L1
    (conv_relu_diagonal_images; pairs (i, i) of a symmetric tile take the input's self-covariances, as the written
    input kernel pins them): the input kernel is never written, and the kernel has the written path's bits (on the
    development machine; 1e-14 relative asserted), symmetric and not, one tile and tiles of 3."""
    g = torch.Generator().manual_seed(channels * size)
    x1 = torch.randn(7, channels, 8, 9, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, channels, 8, 9, generator=g, dtype=torch.float64)
    net = _net(b_std=b_std, size=size, tail=False, head=inf.Flatten)
    steps = conv_steps.Run.diagonal_steps
    for args in ((x1,), (x1, x2)):
        for tile_size in (None, 3):
            images = []
            monkeypatch.setattr(conv_steps.Run, "diagonal_steps", lambda self, *a, **kw: images.append(
                kw.get("images") is not None) or steps(self, *a, **kw))
            got, want, reads, writes = _deferred_and_written(net, monkeypatch, *args, tile_size=tile_size)
            assert True in images and writes == 0  # no tile wrote its input kernel
            _close(got, want, 1e-14)


@pytest.mark.skipif(native.library() is None, reason="needs the compiled library (a C compiler)")
def test_a_deferred_input_kernel_is_written_wherever_anything_else_reads_it(monkeypatch):
    """Where the first step does not take the images (an all-zero image: a zero position variance, so the layers
    apply one by one; a first layer that is not a serial composition's; identical inputs), the input kernel is
    written (pinned as input_kernel gives it) before anything reads it, and the kernel is the written path's."""
    from infinet.engine.kernel import channel_products, realized

    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64)
    # the deferred kernel itself, then written: input_kernel's bits, its diagonal pinned
    out = conv_steps.bordered_input(4, 4, (6, 6), 1, torch.float64)
    k = input_kernel(x, None, True, full=True, out=out, ntk_unread=True, border=1, deferred=True)
    assert channel_products(k.nngp) is not None and set(k.nngp.stride()) == {0}
    plain = input_kernel(x, None, True, full=True)
    written = realized(k)
    assert channel_products(written.nngp) is None and written.nngp is out
    assert torch.equal(written.nngp, plain.nngp) and torch.equal(written.var1, plain.var1)
    assert realized(written) is written
    # a zero image: no fused first step; the convolution's own transform reads the written kernel
    zero = x.clone()
    zero[1] = 0.0
    got, want, reads, writes = _deferred_and_written(_net(), monkeypatch, zero, tile_size=2)
    assert writes >= 1
    _close(got, want, 1e-14)
    # identical inputs in a tile: never deferred (they take the pinning of identical pairs; compute_kernel computes
    # repeated rows once, so only a tile computed on its own meets them)
    twins = torch.cat([x, x[:1]])
    out = conv_steps.bordered_input(5, 5, (6, 6), 1, torch.float64)
    k = input_kernel(twins, None, True, full=True, out=out, ntk_unread=True, border=1, deferred=True)
    assert channel_products(k.nngp) is None and k.nngp is out
    assert torch.equal(k.nngp, input_kernel(twins, None, True, full=True).nngp)
    # a first layer outside a serial composition, or a subclass of one with its own transform: not deferred
    assert not conv_fusion.reads_images(inf.Conv(3, 3, padding="SAME"), torch.float64)
    assert not conv_fusion.reads_images(inf.serial(inf.Conv(3, 3, padding="SAME"), inf.Erf()), torch.float64)


@pytest.mark.skipif(native.library() is None, reason="needs the compiled library (a C compiler)")
@pytest.mark.parametrize("size, b_std", [(3, None), (5, 0.2), (1, 0.1)])
@pytest.mark.parametrize("get", [("nngp", "ntk"), ("nngp",)])
def test_steps_written_over_their_own_input_give_the_same_bits(size, b_std, get, monkeypatch):
    """A step after another in the same serial composition writes over that step's output (its input, which nothing
    else holds; the rows it still needs kept in a ring): the same bits as with new buffers, symmetric or not, and
    the in-place calls happen."""
    g = torch.Generator().manual_seed(size)
    x1 = torch.randn(4, 2, 9, 8, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 2, 9, 8, generator=g, dtype=torch.float64)
    net = _net(b_std=b_std, size=size)
    run = conv_steps.Run.run
    for args in ((x1,), (x1, x2)):
        calls = []

        def counted(self, kin, tin, ntk, n1, n2, inplace=False):
            calls.append(inplace)
            return run(self, kin, tin, ntk, n1, n2, inplace)

        monkeypatch.setattr(conv_steps.Run, "run", counted)
        got = net.kernel(*args, get=get, tile_size=2)
        monkeypatch.setattr(conv_steps.Run, "run", lambda self, kin, tin, ntk, n1, n2, inplace=False: run(
            self, kin, tin, ntk, n1, n2, False))
        want = net.kernel(*args, get=get, tile_size=2)
        monkeypatch.undo()
        assert any(calls)
        for name in get:
            assert torch.equal(getattr(got, name), getattr(want, name)), name


@pytest.mark.skipif(native.library() is None, reason="needs the compiled library (a C compiler)")
def test_a_step_never_writes_over_a_kernel_it_was_given():
    """A kernel handed to a serial composition (or shared by branches) is never written over: the first step of a
    composition writes new buffers; branches after a FanOut give the layers' own kernels."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1, 7, 7, generator=g, dtype=torch.float64)
    conv, act = inf.Conv(2, 3, w_std=1.3, padding="SAME"), inf.Relu()
    k0 = input_kernel(x, None, True, full=True)
    k1 = conv_fusion.conv_activation(conv, act, k0)
    before = (k1.nngp.clone(), k1.ntk.clone())
    inf.serial(inf.Conv(2, 3, w_std=1.2, padding="SAME"), inf.Relu()).kernel_fn(k1)
    assert torch.equal(k1.nngp, before[0]) and torch.equal(k1.ntk, before[1])
    branch = lambda: inf.serial(inf.Conv(2, 3, w_std=1.1, padding="SAME"), inf.Relu(),  # noqa: E731
                                inf.Conv(2, 3, w_std=1.4, padding="SAME"), inf.Relu())
    net = inf.serial(inf.Conv(2, 3, w_std=1.3, padding="SAME"), inf.Relu(), inf.FanOut(2),
                     inf.parallel(branch(), branch()), inf.FanInConcat(), inf.GlobalAvgPool(), inf.Dense(1))
    got, want, calls = _both(net, x)
    assert any(calls)
    _close(got, want, 1e-13)
