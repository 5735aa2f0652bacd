"""mask_constant beyond sequences: padded images and padded graphs of different sizes in one batch give
the kernels of the unpadded inputs; layers whose result would depend on where padding sits refuse it."""

import pytest
import torch

import infinet as inf

F64 = torch.float64
PAD = -7.0


def images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, w, generator=g, dtype=F64) for h, w in sizes]


def canvas(xs, h, w):
    out = torch.full((len(xs), xs[0].shape[0], h, w), PAD, dtype=F64)
    for i, x in enumerate(xs):
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out


def assert_blocks_equal(k, xs, key, plain_kernel):
    """Each group of inputs with the same ``key`` computed unpadded equals its block of ``k``."""
    scale = float(k.ntk.abs().max())
    for value in sorted({key(x) for x in xs}):
        rows = torch.tensor([i for i, x in enumerate(xs) if key(x) == value])
        plain = plain_kernel(rows)
        for what in ("nngp", "ntk"):
            got = getattr(k, what)[rows[:, None], rows[None, :]]
            assert torch.allclose(got, getattr(plain, what), rtol=1e-12, atol=1e-12 * scale), (value, what)


IMAGE_NETS = {
    "conv-gap": inf.serial(inf.Conv(8, 3, w_std=1.3, b_std=0.1), inf.Relu(), inf.Conv(8, 3), inf.Erf(),
                           inf.GlobalAvgPool(), inf.Dense(1)),
    "convlocal-layernorm-gap": inf.serial(inf.ConvLocal(8, 3, padding="SAME", w_std=1.2, b_std=0.2), inf.Gelu(),
                                          inf.Dense(8), inf.LayerNorm(), inf.Rbf(0.5), inf.GlobalSumPool(),
                                          inf.Dense(1)),
    "index-first-row-gap": inf.serial(inf.Dense(8, b_std=0.1), inf.Relu(), inf.Index(inf.Slice[:, :, 0]), inf.Dense(8),
                                      inf.Gabor(), inf.GlobalAvgPool(), inf.Dense(1)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_NETS))
def test_padded_images_equal_unpadded(name):
    net = IMAGE_NETS[name]
    xs = images([(3, 4), (4, 4), (3, 4), (2, 5), (4, 4)])
    k = net.kernel(canvas(xs, 5, 6), mask_constant=PAD)
    assert_blocks_equal(k, xs, lambda x: tuple(x.shape), lambda rows: net.kernel(torch.stack([xs[i] for i in rows])))
    tiled = net.kernel(canvas(xs, 5, 6), mask_constant=PAD, tile_size=2)  # several tiles of a symmetric kernel
    assert torch.allclose(tiled.ntk, k.ntk, rtol=1e-12, atol=1e-12 * float(k.ntk.abs().max()))


def graph_batch(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(3, v, generator=g, dtype=F64) for v in sizes]
    adjs = [(torch.rand(v, v, generator=g) < 0.5).to(F64) for v in sizes]
    return xs, adjs


@pytest.mark.parametrize("sparse", [False, True])
def test_padded_graphs_equal_unpadded(sparse):
    """Graphs of 4, 6 and 5 nodes padded to 7; arcs touching padded nodes change nothing."""
    xs, adjs = graph_batch([4, 6, 4, 5, 6])
    v = 7
    x = torch.full((len(xs), 3, v), PAD, dtype=F64)
    a = torch.zeros(len(xs), v, v, dtype=F64)
    for i, (xi, ai) in enumerate(zip(xs, adjs)):
        n = xi.shape[1]
        x[i, :, :n], a[i, :n, :n] = xi, ai
        a[i, n:, :] = 1.0  # arcs from and to padded nodes must not matter
        a[i, :, n:] = 1.0
    impl = "SPARSE" if sparse else "DENSE"

    def to_arcs(adj):
        arcs = torch.full((len(adj), adj.shape[1] ** 2, 2), -1, dtype=torch.long)
        for i, m in enumerate(adj):
            tails, heads = m.nonzero(as_tuple=True)
            arcs[i, : len(tails), 0], arcs[i, : len(tails), 1] = tails, heads
        return arcs

    def graphs(adj):
        return to_arcs(adj) if sparse else adj

    net = inf.serial(inf.Dense(8, b_std=0.2), inf.Aggregate(implementation=impl), inf.Relu(), inf.Dense(8, w_std=1.3),
                     inf.Aggregate(implementation=impl), inf.LayerNorm(), inf.Erf(), inf.GlobalAvgPool(), inf.Dense(1))
    k = net.kernel(x, mask_constant=PAD, pattern=graphs(a))

    def plain(rows):
        return net.kernel(torch.stack([xs[i] for i in rows]), pattern=graphs(torch.stack([adjs[i] for i in rows])))

    assert_blocks_equal(k, xs, lambda xi: xi.shape[1], plain)


def test_layers_that_mix_padding_refuse_it():
    x = canvas(images([(3, 4), (4, 4)]), 5, 6)
    for layer in (inf.ImageResize((-1, -1, 3, 3), "linear"), inf.DotGeneral(rhs=2.0)):
        net = inf.serial(inf.Dense(4), inf.Relu(), layer, inf.Flatten(), inf.Dense(1))
        with pytest.raises(ValueError, match="does not take masked"):
            net.kernel(x, mask_constant=PAD)
    net = inf.serial(inf.Dense(4), inf.Relu(), inf.Index(inf.Slice[:, :, -1, -1]), inf.Dense(1))
    with pytest.raises(ValueError, match="padded position of x1 row 0"):
        net.kernel(x, mask_constant=PAD)
