"""GRU and LSTM: finite modules against torch.nn.GRU / LSTM, sampled NNGP kernels against Monte Carlo of
width-1024 networks (also composed with Recurrent and pooling over time), and the NTK they refuse."""

from __future__ import annotations

import math

import pytest
import torch

import infinet as inf
from tests._statistics import assert_case_matches_wide_networks

F64 = torch.float64
W = 1024


def sequences(n, c, length, seed=0):
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed), dtype=F64)



CASES = {
    "gru-last": (lambda: inf.serial(inf.GRU(W, w_std=1.2, u_std=1.5, b_std=0.3), inf.Dense(1)), (4, 2, 6)),
    "lstm-last": (lambda: inf.serial(inf.LSTM(W, w_std=1.5, u_std=1.2, b_std=0.2), inf.Dense(1)), (4, 2, 6)),
    "gru-sequence-pooled": (lambda: inf.serial(inf.GRU(W, u_std=2.0, return_sequence=True), inf.GlobalAvgPool(),
                                               inf.Dense(1, b_std=0.1)), (3, 1, 5)),
    "lstm-then-elman": (lambda: inf.serial(inf.LSTM(W, w_std=1.3, u_std=1.6, b_std=0.2, return_sequence=True),
                                           inf.Recurrent(inf.Erf(), W, w_std=1.1, u_std=1.4, return_sequence=False),
                                           inf.Dense(1)), (3, 2, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_nngp_matches_wide_finite_networks(name):
    make, shape = CASES[name]
    net, x = make(), sequences(*shape, seed=1)
    sampled = net.kernel(x, get="nngp")
    assert float(sampled.nngp_se.max() / sampled.nngp.abs().max()) < 0.05  # the comparison below has teeth
    assert_case_matches_wide_networks(net, x, mc_seed=2, fields=("nngp",))


def test_identical_sequences_and_symmetry():
    x = sequences(3, 2, 5, seed=3)
    x = torch.cat([x, x[:1]])  # a repeated sequence: exact zero pivots in the joint factor
    k = inf.serial(inf.GRU(8, b_std=0.2), inf.Dense(1)).kernel(x, get="nngp", tile_size=2)
    assert torch.isfinite(k.nngp).all() and torch.equal(k.nngp, k.nngp.T)
    assert torch.allclose(k.nngp[0], k.nngp[3], rtol=0, atol=1e-12)
    assert float(torch.linalg.eigvalsh(k.nngp).min()) > -4 * float(k.nngp_se.norm())


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_pairs_sampled_in_one_canonical_order(kind):
    """Each pair is sampled once, its members ordered by their own input kernels: the kernel of (x1, x2) is the
    transpose of that of (x2, x1) and a block of the symmetric kernel of both, whichever call or tile holds it;
    pairs whose order keys tie (x and -x have the same own kernel) are sampled both ways."""
    net = inf.serial(getattr(inf, kind)(8, w_std=1.2, u_std=1.4, b_std=0.2, samples=64), inf.Dense(1))
    x1, x2 = sequences(3, 2, 4, seed=5), sequences(2, 2, 4, seed=6)
    x2 = torch.cat([x2, -x1[:1], x1[1:2]])  # a tie, and an example of x1 again
    ab, ba = net.kernel(x1, x2, get="nngp").nngp, net.kernel(x2, x1, get="nngp").nngp
    assert torch.allclose(ab, ba.T, rtol=0, atol=1e-12)
    both = net.kernel(torch.cat([x1, x2]), get="nngp", tile_size=2).nngp
    assert torch.allclose(both[:3, 3:], ab, rtol=0, atol=1e-12)
    assert torch.allclose(ab[1, 3], both[1, 1], rtol=0, atol=1e-12)  # the repeated example: its own estimate


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_finite_modules_are_torch_gru_and_lstm(kind):
    """With the 'ntk' scaling folded into torch's weights (and torch's second bias set to what infinet's
    gates use), the finite layer is torch.nn.GRU / torch.nn.LSTM."""
    layer = getattr(inf, kind)(6, w_std=1.3, u_std=0.7, b_std=0.4, return_sequence=True)
    x = sequences(2, 3, 5, seed=4)
    model = inf.serial(layer).build((3, 5), seed=0, dtype=F64)[0]
    ours = model(x)
    torch_layer = getattr(torch.nn, kind)(3, 6, batch_first=True, dtype=F64)
    w_ih = model.weight_ih.detach() * (0.7 / math.sqrt(3))
    w_hh = model.weight_hh.detach() * (1.3 / math.sqrt(6))
    bias = model.bias.detach() * 0.4
    with torch.no_grad():
        if kind == "GRU":  # infinet kinds (r, z, p, c): r and z read both, p the input, c the hidden state
            torch_layer.weight_ih_l0.copy_(torch.cat([w_ih[0], w_ih[1], w_ih[2]]))
            torch_layer.weight_hh_l0.copy_(torch.cat([w_hh[0], w_hh[1], w_hh[3]]))
            torch_layer.bias_ih_l0.copy_(torch.cat([bias[0], bias[1], bias[2]]))
            torch_layer.bias_hh_l0.copy_(torch.cat([torch.zeros(12, dtype=F64), bias[3]]))
        else:
            torch_layer.weight_ih_l0.copy_(w_ih.reshape(24, 3))
            torch_layer.weight_hh_l0.copy_(w_hh.reshape(24, 6))
            torch_layer.bias_ih_l0.copy_(bias.reshape(24))
            torch_layer.bias_hh_l0.zero_()
        expected, _ = torch_layer(x.transpose(1, 2))
    assert torch.allclose(ours, expected.transpose(1, 2), rtol=0, atol=1e-12)


def test_refusals():
    x = sequences(3, 2, 4)
    net = inf.serial(inf.LSTM(8, estimator="pairs"), inf.Dense(1))
    with pytest.raises(ValueError, match="NNGP only.*estimator='batch'"):
        net.kernel(x)
    with pytest.raises(ValueError, match="estimator must be"):
        inf.GRU(8, estimator="joint")
    with pytest.raises(ValueError, match="sequences N x C x L"):
        inf.serial(inf.GRU(8), inf.Dense(1)).kernel(torch.randn(3, 4, dtype=F64), get="nngp")
    with pytest.raises(ValueError, match="width"):
        inf.GRU(0)
    with pytest.raises(ValueError, match="samples"):
        inf.LSTM(4, samples=1)


@pytest.mark.parametrize("cls, stds", [(inf.GRU, (1.2, 1.5, 0.3)), (inf.LSTM, (1.5, 1.2, 0.2))])
def test_batch_estimator_nngp_and_ntk_match_finite_networks(cls, stds):
    """The batch-shared estimator (one finite layer on Gaussian inputs of the exact input kernel, NTK by random
    tangents) against the mean empirical NNGP and NTK of finite networks of width 256: within 4 combined
    standard errors, every entry; and x1 against x2 is exactly the block of the joint computation."""
    w_std, u_std, b_std = stds
    x = sequences(5, 2, 6)
    net = inf.serial(cls(256, w_std=w_std, u_std=u_std, b_std=b_std, samples=1024, replicates=6),
                     inf.Dense(1, b_std=0.1))
    k = net.kernel(x)
    mc = inf.monte_carlo_kernel(net, x, n_samples=48, seed=3)
    for field in ("nngp", "ntk"):
        z = (getattr(k, field) - getattr(mc, field)) / torch.sqrt(getattr(k, field + "_se") ** 2
                                                                  + getattr(mc, field + "_stderr") ** 2)
        assert float(z.abs().max()) < 4.0, (field, z)
    cross = net.kernel(x[:2], x[2:])
    assert torch.equal(cross.nngp, k.nngp[:2, 2:]) and torch.equal(cross.ntk, k.ntk[:2, 2:])


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_standard_parameterization_module_draws_the_scaled_weights(kind):
    """'standard' draws what 'ntk' scales at use: with the same seed, its parameters are the 'ntk' ones times
    u_std / sqrt(C), w_std / sqrt(n) and b_std, and the two modules compute the same function; torch's second gate
    bias (gate_bias_terms=2) is a parameter of its own."""
    x = sequences(3, 3, 4, seed=7)
    make = lambda p: getattr(inf, kind)(6, w_std=1.3, u_std=0.7, b_std=0.4, return_sequence=True,  # noqa: E731
                                        gate_bias_terms=2, parameterization=p)
    ntk = inf.serial(make("ntk")).build((3, 4), seed=0, dtype=F64)[0]
    std = inf.serial(make("standard")).build((3, 4), seed=0, dtype=F64)[0]
    # drawn in float64 and stored in the default dtype (float32) before build casts: equal to float32 rounding
    assert torch.allclose(std.weight_ih, ntk.weight_ih * (0.7 / math.sqrt(3)), rtol=1e-6, atol=0)
    assert torch.allclose(std.weight_hh, ntk.weight_hh * (1.3 / math.sqrt(6)), rtol=1e-6, atol=0)
    assert torch.allclose(std.bias_hh, ntk.bias_hh * 0.4, rtol=1e-6, atol=0)
    assert torch.allclose(std(x), ntk(x), rtol=0, atol=1e-6)
    n_gates = 2 if kind == "GRU" else 4
    assert std.bias_hh.shape == (n_gates, 6)


def test_batch_estimator_standard_ntk_counts_the_real_widths():
    """In the 'standard' parameterization each weight's NTK term is its fan-in times the kernel it multiplies
    (Sohl-Dickstein et al. 2020): with every other input fixed, the NTK grows with the layer's width (the recurrent
    weights' term n H) and the NNGP does not depend on it."""
    x = sequences(4, 2, 5, seed=8)
    k = {w: inf.serial(inf.GRU(w, b_std=0.2, parameterization="standard", samples=256, replicates=2)).kernel(x)
         for w in (8, 64)}
    assert torch.equal(k[8].nngp, k[64].nngp)
    assert bool((k[64].ntk > k[8].ntk).all())
