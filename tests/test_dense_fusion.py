"""Dense layers and the closed-form activations between them in one compiled pass (infinet.engine.dense_fusion):
the same kernels as the layers one by one, taken where it applies and declined elsewhere."""

import pytest
import torch

import infinet as inf
from infinet.engine import dense_fusion, native_pairs
from infinet.engine.kernel import input_kernel

needs_compiler = pytest.mark.skipif(not native_pairs.available("cpu", torch.float64),
                                    reason="no C compiler: the compiled loop is not built")

ACTIVATIONS = {"relu": inf.Relu, "leaky": lambda: inf.LeakyRelu(0.2), "abs": inf.Abs,
               "erf": lambda: inf.Erf(1.3, 0.7, 0.2), "gelu": inf.Gelu}
DENSES = {
    "ntk": lambda: inf.Dense(64, w_std=1.3, b_std=0.2),
    "no bias": lambda: inf.Dense(64, w_std=1.1),
    "standard": lambda: inf.Dense(64, w_std=1.2, b_std=0.3, parameterization="standard"),
    "frozen": lambda: inf.Dense(64, w_std=1.4, b_std=0.1, trainable=False),
}


def _net(dense, act):
    return inf.serial(inf.Dense(32, w_std=1.5, b_std=0.1), inf.Relu(), dense(), act(), dense(), act(),
                      inf.Dense(1, w_std=1.0, b_std=0.05))


def _unfused(fn):
    dense_fusion.ENABLED = False
    try:
        return fn()
    finally:
        dense_fusion.ENABLED = True


def _spy(monkeypatch) -> list:
    """Record each fused run's (number of stages, outcome: a kernel, or None where the loop declined)."""
    calls = []
    original = dense_fusion.dense_chain

    def spy(run, k):
        out = original(run, k)
        calls.append((len(run), out))
        return out

    monkeypatch.setattr(dense_fusion, "dense_chain", spy)
    return calls


@needs_compiler
@pytest.mark.parametrize("dense", list(DENSES))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_fused_runs_give_the_layers_kernels(monkeypatch, dense, act):
    """Symmetric and x1 against x2 (a row of x1 repeated in x2), with and without the NTK, tiles of 7 rows: within
    1e-13 of the largest value of the layers one by one, and the diagonal exactly the self-covariances."""
    g = torch.Generator().manual_seed(len(dense) * 7 + len(act))
    x1 = torch.randn(19, 12, generator=g, dtype=torch.float64) * 1.7
    x2 = torch.randn(11, 12, generator=g, dtype=torch.float64)
    x2[5] = x1[3]
    net = _net(DENSES[dense], ACTIVATIONS[act])
    calls = _spy(monkeypatch)
    for args, get in (((x1,), ("nngp", "ntk")), ((x1, x2), ("nngp", "ntk")), ((x1,), "nngp")):
        got = net.kernel(*args, get=get, tile_size=7)
        want = _unfused(lambda: net.kernel(*args, get=get, tile_size=7))
        for name in ("nngp", "ntk") if get != "nngp" else ("nngp",):
            a, b = getattr(got, name), getattr(want, name)
            assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max()), (name, args[1:] != ())
        if len(args) == 1:
            assert torch.equal(got.nngp.diagonal(), got.var1)
    # the first Dense and ReLU, then two stages of the activation under test and the readout: one run of four
    assert calls and all(n == 4 and out is not None for n, out in calls)


@needs_compiler
def test_pairs_the_loop_cannot_take_are_left_to_the_layers(monkeypatch):
    """A Dense subclass, a tensor hyperparameter under autograd and a zero variance (a zero input without bias)
    take the layers' own transforms, with the same kernels."""
    class MyDense(inf.Dense):
        pass

    x = torch.randn(6, 5, dtype=torch.float64)
    calls = _spy(monkeypatch)
    plain = inf.serial(inf.Dense(8, w_std=1.2, b_std=0.1), inf.Relu(), inf.Dense(1))
    want = _unfused(lambda: plain.kernel(x))
    sub = inf.serial(MyDense(8, w_std=1.2, b_std=0.1), inf.Relu(), inf.Dense(1))
    assert torch.equal(sub.kernel(x).ntk, want.ntk)
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    k = inf.serial(inf.Dense(8, w_std=w, b_std=0.1), inf.Relu(), inf.Dense(1)).kernel(x)
    k.ntk.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad)
    assert not calls  # none of these was offered to the loop
    x[2] = 0.0
    zero = inf.serial(inf.Dense(8, w_std=1.2), inf.Relu(), inf.Dense(1))
    got = zero.kernel(x)
    assert [out for _, out in calls] == [None]  # offered, declined: a zero variance
    want = _unfused(lambda: zero.kernel(x))
    assert torch.equal(got.nngp, want.nngp) and torch.equal(got.ntk, want.ntk)


@needs_compiler
def test_a_chain_stage_by_stage_is_the_layers_transforms():
    """dense_chain on a tile against the layers' own transforms applied one by one (the diagonal pinned after each,
    as serial does): runs of one stage, of stages ending in a readout, each parameterization and activation kind,
    symmetric and not, with and without the NTK."""
    from infinet.engine.layers.combinators import _pin

    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    for make_dense in DENSES.values():
        for make_act in ACTIVATIONS.values():
            run = [(make_dense(), make_act()), (make_dense(), make_act()), (inf.Dense(3, w_std=0.9, b_std=0.2), None)]
            for stages in (run[:1], run):
                for k in (input_kernel(x1, None, True), input_kernel(x1, x2, True), input_kernel(x1, x2, False)):
                    got = dense_fusion.dense_chain(stages, k)
                    want = k
                    for dense, act in stages:
                        want = _pin(dense.kernel_fn(want), want)
                        want = want if act is None else _pin(act.kernel_fn(want), want)
                    assert got is not None and got.shape == want.shape
                    assert torch.equal(got.var1, want.var1) and torch.equal(got.var2, want.var2)
                    for name in ("nngp", "ntk"):
                        a, b = getattr(got, name), getattr(want, name)
                        if b is None:
                            assert a is None
                            continue
                        assert float((a - b).abs().max()) <= 1e-14 * float(b.abs().max()), (stages, name)
                    if k.symmetric:
                        assert torch.equal(got.nngp.diagonal(), got.var1)


def test_tiles_skip_the_search_for_identical_inputs_only_where_there_are_none(monkeypatch):
    """The tile engine tells its tiles that no input repeats (distinct=True) for a symmetric kernel of distinct rows
    and for x1 against x2 sharing none; a row of x1 that is also in x2 keeps every tile's search (rho = 1 exactly
    for that pair), and the pair's entries are those of the row against a copy of itself."""
    from infinet.engine import tiling

    seen = []
    original = tiling.kernel_tile

    def spy(*args, **kwargs):
        seen.append(kwargs["distinct"])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiling, "kernel_tile", spy)
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    net = inf.serial(inf.Dense(16, w_std=1.4, b_std=0.1), inf.Relu(), inf.Dense(1))
    for args, want in (((x1,), True), ((x1, x2), True)):
        seen.clear()
        net.kernel(*args, tile_size=4)
        assert seen and all(d is want for d in seen)
    x2[6] = x1[1]
    seen.clear()
    k = net.kernel(x1, x2, tile_size=4)
    assert seen and not any(seen)
    alone = net.kernel(x1[1:2], x1[1:2].clone())
    assert torch.equal(k.nngp[1, 6], alone.nngp[0, 0]) and torch.equal(k.ntk[1, 6], alone.ntk[0, 0])
    # padded sequences: rows that differ only where they are padded are identical inputs once masked, which only
    # the tiles see; every tile keeps its search
    seqs = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    seqs[4] = seqs[1]
    seqs[4, :, 3:] = 7.0
    recurrent = inf.serial(inf.Recurrent(inf.Relu(), 16, return_sequence=False), inf.Dense(1))
    seen.clear()
    masked = recurrent.kernel(seqs, lengths=[5, 3, 4, 5, 3, 2], tile_size=2)
    assert seen and not any(seen)
    assert torch.allclose(masked.nngp[1, 4], masked.nngp[1, 1], rtol=1e-14)
