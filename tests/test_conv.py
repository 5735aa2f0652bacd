"""Convolution, pooling, normalization and dropout: exact identities, Monte Carlo limits, layouts, errors."""

import pytest
import torch

import infinet as inf
from infinet.kernel import input_kernel
from infinet.layers.base import apply_kernel
from infinet.tiling import choose_tile_size, spatial_cost

W = 256  # channels of the finite networks in the Monte Carlo tests


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def body_kernel(net, x, full):
    """The kernel of a network with a spatial output, in the layout asked for (test helper)."""
    return apply_kernel(net, input_kernel(x, None, True, full=full), full)


# ---- exact identities ----------------------------------------------------------------------------------
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_conv_over_1x1_image_equals_dense(parameterization):
    x = rand(5, 3, 1, 1)
    kw = dict(w_std=1.3, b_std=0.2, parameterization=parameterization)
    conv = inf.serial(inf.Conv(16, 1, **kw), inf.Relu(), inf.Conv(8, (1, 1), **kw), inf.Erf(), inf.Flatten(),
                      inf.Dense(1, **kw))
    dense = inf.serial(inf.Dense(16, **kw), inf.Relu(), inf.Dense(8, **kw), inf.Erf(), inf.Dense(1, **kw))
    a, b = conv.kernel(x), dense.kernel(x.flatten(1))
    assert torch.allclose(a.nngp, b.nngp, rtol=1e-14, atol=0) and torch.allclose(a.ntk, b.ntk, rtol=1e-14, atol=0)
    # a 3x3 SAME convolution of a 1x1 image sees only its centre tap: 1/9 of the weights' variance
    conv3 = inf.serial(inf.Conv(16, 3, w_std=3.0), inf.Flatten(), inf.Dense(1))
    dense3 = inf.serial(inf.Dense(16, w_std=1.0), inf.Dense(1))
    assert torch.allclose(conv3.kernel(x).nngp, dense3.kernel(x.flatten(1)).nngp, rtol=1e-14)


@pytest.mark.parametrize("shape,shift", [((2, 7), (3,)), ((2, 5, 6), (2, 4)), ((1, 3, 4, 3), (1, 2, 2))])
def test_circular_padding_with_global_pooling_is_shift_invariant(shape, shift):
    x = rand(4, *shape)
    net = inf.serial(inf.Conv(8, 3, padding="CIRCULAR", b_std=0.1), inf.Relu(),
                     inf.Conv(8, 2, padding="CIRCULAR", dilation=2), inf.Erf(), inf.GlobalAvgPool(), inf.Dense(1))
    dims = tuple(range(2, 2 + len(shift)))
    shifted = torch.roll(x, shift, dims=dims)
    a, b = net.kernel(x), net.kernel(x, shifted)
    assert torch.allclose(a.nngp, b.nngp, rtol=1e-12, atol=1e-14)
    assert torch.allclose(a.ntk, b.ntk, rtol=1e-12, atol=1e-14)
    zero = inf.serial(inf.Conv(8, 3, padding="SAME"), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    assert not torch.allclose(zero.kernel(x).nngp, zero.kernel(x, shifted).nngp, rtol=1e-6)


def test_flatten_readout_is_mean_of_diagonal_and_layouts_agree():
    x = rand(4, 2, 5, 5)
    body = inf.serial(inf.Conv(8, 3, w_std=1.4, b_std=0.1), inf.Relu(), inf.Conv(8, 3, stride=2), inf.Gelu())
    diag, full = body_kernel(body, x, False), body_kernel(body, x, True)
    assert not diag.full and full.full and diag.nngp.shape == (4, 4, 3, 3) and full.nngp.shape == (4, 4, 3, 3, 3, 3)
    as_diag = full.to_diagonal()  # the full layout's same-position pairs are the diagonal layout
    assert torch.allclose(as_diag.nngp, diag.nngp, rtol=1e-13) and torch.allclose(as_diag.ntk, diag.ntk, rtol=1e-13)
    net = inf.serial(body, inf.Flatten(), inf.Dense(1, w_std=1.2, b_std=0.3))
    k = net.kernel(x)
    assert torch.allclose(k.nngp, 1.44 * diag.nngp.mean((2, 3)) + 0.09, rtol=1e-13)
    assert torch.allclose(k.ntk, k.nngp + 1.44 * diag.ntk.mean((2, 3)), rtol=1e-13)
    gap = inf.serial(body, inf.GlobalAvgPool(), inf.Dense(1, w_std=1.2, b_std=0.3)).kernel(x)
    assert torch.allclose(gap.nngp, 1.44 * full.nngp.mean((2, 3, 4, 5)) + 0.09, rtol=1e-13)


def test_pooling_identities():
    x = rand(3, 2, 6, 6)
    pre = [inf.Conv(4, 3), inf.Relu()]
    avg = inf.serial(*pre, inf.AvgPool(2), inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)
    summed = inf.serial(*pre, inf.SumPool(2), inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)
    gsum = inf.serial(*pre, inf.GlobalSumPool(), inf.Dense(1)).kernel(x)
    gap = inf.serial(*pre, inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)
    assert torch.allclose(summed.nngp, 16 * avg.nngp, rtol=1e-13)  # window 2x2: |W|^2 = 16
    assert torch.allclose(avg.nngp, gap.nngp, rtol=1e-13)  # average of averages over a tiling of windows
    assert torch.allclose(gsum.nngp, 36**2 * gap.nngp, rtol=1e-13)


def test_transposed_convolution_shapes_and_finite_module():
    for padding, length in (("SAME", 14), ("VALID", 15)):
        layer = inf.ConvTranspose(3, 3, stride=2, padding=padding)
        assert layer.check((2, 7)).shape == (3, length)
        model = inf.serial(layer).build((2, 7), seed=0)
        assert model(torch.randn(5, 2, 7)).shape == (5, 3, length)
    assert inf.ConvTranspose(2, (2, 3), stride=(3, 1), padding="VALID").check((1, 4, 4)).shape == (2, 11, 6)


def test_dropout_kernel():
    x = rand(5, 6)
    base = [inf.Dense(32, w_std=1.5, b_std=0.1), inf.Relu()]
    plain = inf.serial(*base, inf.Dense(1, w_std=1.2, b_std=0.2)).kernel(x)
    drop = inf.serial(*base, inf.Dropout(0.25), inf.Dense(1, w_std=1.2, b_std=0.2)).kernel(x)
    evaluation = inf.serial(*base, inf.Dropout(0.25, train=False), inf.Dense(1, w_std=1.2, b_std=0.2)).kernel(x)
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(drop.nngp[off], plain.nngp[off]) and torch.equal(evaluation.nngp, plain.nngp)
    relu_sq = (plain.nngp.diagonal() - 0.04) / 1.44
    assert torch.allclose(drop.nngp.diagonal(), 1.44 * relu_sq / 0.75 + 0.04, rtol=1e-13)
    # to rounding: the plain network's readout runs inside the compiled fully-connected chain
    # (infinet.engine.dense_fusion), the one after Dropout as its own transform (another rounding of nngp + w2 ntk)
    assert torch.allclose(drop.ntk[off], plain.ntk[off], rtol=1e-15, atol=0)
    assert (drop.ntk.diagonal() > plain.ntk.diagonal()).all()
    model = inf.serial(*base, inf.Dropout(0.5), inf.Dense(1)).build(6, seed=0)
    model.eval()
    assert torch.equal(model(x.float()), model(x.float()))  # identity at evaluation


def test_layer_norm_normalizes():
    x = rand(4, 3, 5)
    net = inf.serial(inf.Conv(8, 3, w_std=2.0, b_std=0.5), inf.LayerNorm("channels"))
    k = body_kernel(net, x, False)
    assert torch.allclose(k.var1, torch.ones_like(k.var1), rtol=1e-14)
    k = body_kernel(inf.serial(inf.Conv(8, 3, w_std=2.0), inf.LayerNorm("channels_space")), x, True)
    assert torch.allclose(k.var1.diagonal(dim1=1, dim2=2).mean(1), torch.ones(4, dtype=torch.float64), rtol=1e-14)
    flat = inf.serial(inf.Dense(8, w_std=3.0, b_std=1.0), inf.LayerNorm()).kernel(rand(4, 6), get="nngp")
    assert torch.allclose(flat.nngp.diagonal(), torch.ones(4, dtype=torch.float64), rtol=1e-14)


# ---- Monte Carlo: finite networks of 256 channels converge to the kernels --------------------------
MC_CASES = {
    "conv-strided-valid-flatten": (inf.serial(inf.Conv(W, 3, w_std=1.5, b_std=0.1), inf.Relu(),
                                              inf.Conv(W, (2, 3), stride=2, padding="VALID"), inf.Erf(), inf.Flatten(),
                                              inf.Dense(1)), (3, 2, 5, 5)),
    "circular-dilated-gap": (inf.serial(inf.Conv(W, 3, padding="CIRCULAR", dilation=2), inf.Relu(),
                                        inf.GlobalAvgPool(), inf.Dense(1, b_std=0.1)), (3, 2, 5, 5)),
    "avgpool-same-standard": (inf.serial(inf.Conv(W, 3), inf.Relu(), inf.AvgPool(2, padding="SAME"),
                                         inf.Conv(W, 2, parameterization="standard", w_std=1.2, b_std=0.3), inf.Relu(),
                                         inf.Flatten(), inf.Dense(1)), (3, 2, 5, 5)),
    "sumpool-globalsum": (inf.serial(inf.Conv(W, 2), inf.Tanh(), inf.SumPool(2, stride=1), inf.Conv(W, 1), inf.Relu(),
                                     inf.GlobalSumPool(), inf.Dense(1)), (2, 1, 4, 4)),
    "conv1d-transpose": (inf.serial(inf.Conv(W, 3), inf.Relu(), inf.ConvTranspose(W, 3, stride=2), inf.Relu(),
                                    inf.Flatten(), inf.Dense(1)), (3, 2, 7)),
    "conv3d-layernorm": (inf.serial(inf.Conv(W, 2, b_std=0.5), inf.LayerNorm("channels"), inf.Relu(), inf.Conv(W, 2),
                                    inf.LayerNorm("channels_space"), inf.Gelu(), inf.GlobalAvgPool(), inf.Dense(1)),
                         (2, 2, 3, 4, 3)),
    "residual": (inf.serial(inf.Conv(W, 3), inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Relu(), inf.Conv(W, 3))),
                            inf.FanInSum(), inf.Relu(), inf.AvgPool(2), inf.Flatten(), inf.Dense(1)), (3, 2, 5, 5)),
    "concat-channels": (inf.serial(inf.Conv(W, 3), inf.Relu(), inf.FanOut(2), inf.parallel(inf.Conv(W, 3), inf.Conv(W // 2, 1)),
                                   inf.FanInConcat(), inf.Conv(W, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)),
                        (3, 2, 5, 5)),
}


@pytest.mark.parametrize("name", list(MC_CASES))
def test_monte_carlo_converges(name):
    net, shape = MC_CASES[name]
    x = rand(*shape, seed=3)
    exact = net.kernel(x)
    mc = inf.monte_carlo_kernel(net, x, n_samples=24, seed=1)
    for got, se, want in ((mc.nngp, mc.nngp_stderr, exact.nngp), (mc.ntk, mc.ntk_stderr, exact.ntk)):
        z = (got - want).abs() / se
        assert float(z.max()) < 4.0, f"{name}: {float(z.max()):.2f} standard errors"


def test_monte_carlo_dropout_nngp():
    """Dropout in training mode: the empirical NNGP (masks drawn per forward pass) matches the kernel.
    The empirical NTK is not sampled: torch.func cannot differentiate through random masks in vmap;
    the NTK's dropout rule is checked exactly in test_dropout_kernel."""
    net = inf.serial(inf.Conv(W, 3), inf.Relu(), inf.Dropout(0.3), inf.Conv(W, 3), inf.Relu(), inf.GlobalAvgPool(),
                     inf.Dense(1))
    x = rand(3, 2, 5, 5, seed=4)
    exact = net.kernel(x, get="nngp")
    mc = inf.monte_carlo_kernel(net, x, n_samples=24, seed=2, get="nngp")
    assert float(((mc.nngp - exact.nngp).abs() / mc.nngp_stderr).max()) < 4.0


# ---- layouts, tiles, memory ----------------------------------------------------------------------------
def test_layout_is_decided_by_the_architecture():
    conv = [inf.Conv(4, 3), inf.Relu()]
    flatten = inf.serial(*conv, *conv, inf.Flatten(), inf.Dense(1))
    gap = inf.serial(*conv, inf.GlobalAvgPool(), inf.Dense(1))
    pool_then_flatten = inf.serial(*conv, inf.AvgPool(2), *conv, inf.Flatten(), inf.Dense(1))
    assert spatial_cost(flatten, (1, 8, 8)) == (64, False)
    assert spatial_cost(gap, (1, 8, 8)) == (64**2, True)
    assert spatial_cost(pool_then_flatten, (1, 8, 8)) == (64**2, True)
    # after the pooling layer only the diagonal is kept: its consumers need no more
    assert pool_then_flatten.layers[3].needs_full(False) is False
    assert pool_then_flatten.layers[2].needs_full(False) is True
    assert spatial_cost(inf.serial(inf.Dense(3), inf.Relu()), (10,)) == (1, False)


def test_tiles_agree_and_memory_bound():
    net = inf.serial(inf.Conv(4, 3), inf.Relu(), inf.AvgPool(2), inf.Conv(4, 3), inf.Relu(), inf.GlobalAvgPool(),
                     inf.Dense(1))
    x = rand(11, 1, 6, 6)
    one, many = net.kernel(x, tile_size=11), net.kernel(x, tile_size=3)
    assert torch.allclose(one.nngp, many.nngp, rtol=1e-13, atol=0) and torch.allclose(one.ntk, many.ntk, rtol=1e-13)
    cross = net.kernel(x[:4], x[4:], tile_size=2)
    assert torch.allclose(cross.ntk, one.ntk[:4, 4:], rtol=1e-13)
    # working set BYTES_PER_ENTRY x tile^2 x S^2 within the budget
    assert choose_tile_size(None, 128 * 4096 * 10**2, 4096, True) == 10
    assert choose_tile_size(None, None, 4096, True) == 11  # cache-sized: 2^19 entries
    assert choose_tile_size(None, None, 64, False) == 45  # 2^17 entries


# ---- ready-made architectures ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: inf.myrtle(5), lambda: inf.myrtle(7), lambda: inf.myrtle(10),
                                  lambda: inf.cntk(3), lambda: inf.cntk(2, pooling="flatten"),
                                  lambda: inf.wide_resnet(1, 1)])
def test_architectures(make):
    net = make()
    x = rand(3, 1, 8, 8)
    k = net.kernel(x)
    assert k.nngp.shape == (3, 3) and torch.isfinite(k.ntk).all()
    assert repr(inf.parse_spec(repr(net))) == repr(net)
    assert net.build((1, 8, 8), seed=0)(x.float()).shape == (3, 10)


def test_architecture_errors():
    with pytest.raises(ValueError, match="Myrtle depth"):
        inf.myrtle(6)
    with pytest.raises(ValueError, match="pooling"):
        inf.cntk(3, pooling="max")
    assert repr(inf.parse_spec("myrtle(5, channels=8)")) == repr(inf.myrtle(5, channels=8))


def test_cnn_kernel_beats_fully_connected_on_digits():
    data = inf.datasets.load("digits", n_train=150, n_test=150, seed=0)
    fc = inf.serial(inf.Dense(1, w_std=2**0.5), inf.Relu(), inf.Dense(1, w_std=2**0.5), inf.Relu(), inf.Dense(1))
    cnn = inf.cntk(2)
    acc = {}
    for name, net, x, xt in (("fc", fc, data.x_train.flatten(1), data.x_test.flatten(1)),
                             ("cnn", cnn, data.x_train, data.x_test)):
        pred = inf.predict.gradient_descent_mse(net.kernel(x).ntk, net.kernel(xt, x).ntk, data.y_train, diag_reg=1e-4)
        acc[name] = float((pred.argmax(1) == data.labels_test).double().mean())
    assert acc["cnn"] > acc["fc"] + 0.01, acc


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,shape,message", [
    (inf.Conv(4, 3), (10,), "flat features"),
    (inf.Conv(4, 3), (1, 2, 2, 2, 2), "N x C x L"),
    (inf.Conv(4, 5, padding="VALID"), (1, 4, 4), "does not fit"),
    (inf.Conv(4, (3, 3)), (1, 8), "kernel_size"),
    (inf.AvgPool(3), (1, 2, 2), "does not fit"),
    (inf.AvgPool((2, 2, 2)), (1, 4, 4), "window"),
    (inf.GlobalAvgPool(), (10,), "feature maps"),
    (inf.Dense(3), (), "N, features"),
])
def test_shape_errors(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.check(shape)


def test_constructor_errors():
    for make, message in ((lambda: inf.Conv(4, 3, stride=0), "stride"), (lambda: inf.Conv(0, 3), "out_channels"),
                          (lambda: inf.Conv(4, 3, padding="REFLECT"), "padding"),
                          (lambda: inf.Conv(4, 3, dilation=(1, 0)), "dilation"),
                          (lambda: inf.ConvTranspose(4, 3, padding="CIRCULAR"), "CIRCULAR"),
                          (lambda: inf.AvgPool(0), "window"), (lambda: inf.Dropout(1.0), "rate"),
                          (lambda: inf.LayerNorm("batch"), "axes")):
        with pytest.raises(ValueError, match=message):
            make()


def test_network_errors():
    with pytest.raises(ValueError, match="Gaussian input"):
        inf.serial(inf.Conv(4, 3), inf.Relu(), inf.LayerNorm()).check((1, 4, 4))
    with pytest.raises(ValueError, match="Gaussian input"):
        inf.serial(inf.Conv(4, 3), inf.Dropout(0.2), inf.Relu()).check((1, 4, 4))
    with pytest.raises(ValueError, match="spatial shape"):
        inf.serial(inf.Conv(4, 3), inf.Relu()).kernel(rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="different feature shapes"):
        inf.serial(inf.FanOut(2), inf.parallel(inf.Conv(4, 3, stride=2), inf.Conv(4, 3)), inf.FanInSum()).check((1, 6, 6))
    model = inf.serial(inf.Conv(4, 3), inf.Flatten()).build((1, 4, 4), seed=0)
    with pytest.raises(ValueError, match="built for inputs"):
        model(torch.randn(2, 3, 4, 4))  # channel mismatch
    with pytest.raises(ValueError, match="built for inputs"):
        model(torch.randn(2, 1, 4))


def test_lazy_conv_build_matches_eager():
    net = inf.serial(inf.Conv(6, 3, b_std=0.1), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(2))
    x = torch.randn(3, 2, 5, 5)
    eager, lazy = net.build((2, 5, 5), seed=7), net.build(seed=7)
    assert torch.equal(eager(x), lazy(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    net = inf.serial(inf.Conv(4, 3), inf.Relu(), inf.AvgPool(2), inf.Conv(4, 3), inf.Relu(), inf.GlobalAvgPool(),
                     inf.Dense(1))
    x = rand(6, 1, 6, 6)
    cpu, gpu = net.kernel(x), net.kernel(x.cuda())
    assert gpu.ntk.device.type == "cuda"
    assert torch.allclose(gpu.ntk.cpu(), cpu.ntk, rtol=1e-10) and torch.allclose(gpu.nngp.cpu(), cpu.nngp, rtol=1e-10)
    model = net.build((1, 6, 6), seed=0, device="cuda")
    assert model(x.float().cuda()).shape == (6, 1)


def test_math_of_fan_in_standard_conv():
    """'standard' NTK of one Conv: fan_in A(K) + w^2 A(Theta) + 1, fan_in = channels x filter size."""
    x = rand(3, 2, 4, 4)
    k = inf.serial(inf.Conv(5, 3, w_std=1.5, b_std=0.5, parameterization="standard"), inf.Flatten(),
                   inf.Dense(1, w_std=1.0)).kernel(x)
    k_ntk = inf.serial(inf.Conv(5, 3, w_std=1.5, b_std=0.5), inf.Flatten(), inf.Dense(1, w_std=1.0)).kernel(x)
    # the input's NTK is 0, so Theta_conv = fan_in A(K_in) + 1 (standard) vs K_conv = 2.25 A(K_in) + 0.25 (ntk)
    a_kin = (k_ntk.nngp - 0.25) / 2.25  # Dense(w=1) after Flatten: nngp = mean_p K_conv
    fan_in = 2 * 9
    assert torch.allclose(k.ntk - k.nngp, fan_in * a_kin + 1.0, rtol=1e-12)
