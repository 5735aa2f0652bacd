"""Standard softmax attention with 1/sqrt(d_head) logits (ScaledDotProductAttention, Hron et al. 2020): its sampled
NNGP and NTK against Monte Carlo of wide finite networks, with and without a causal mask, on sequences and on
image patches; the logits' own NTK term against the finite networks' query and key gradients."""

import pytest
import torch

import infinet as inf
import infinet.engine.layers.softmax_attention as sa
from tests._statistics import max_combined_z

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def inputs(shape, seed=0):
    """Three examples, the second close to the first (strongly correlated logits)."""
    x = randn(3, *shape, seed=seed)
    x[1] = 0.6 * x[0] + 0.5 * randn(*shape, seed=seed + 1)
    return x


def attention_net(causal=False, parameterization="ntk", relu=False, embed_dim=512, heads=8, spatial=1):
    conv = inf.Conv(64, (1,) * spatial, w_std=1.0, b_std=0.1, parameterization="standard")
    att = inf.ScaledDotProductAttention(embed_dim, heads, w_std=1.0, b_std=0.1, w_out_std=1.2, b_out_std=0.1,
                                        causal=causal, parameterization=parameterization, samples=512)
    return inf.serial(conv, *([inf.Relu()] if relu else []), att, inf.Relu(), inf.GlobalAvgPool(),
                      inf.Dense(1, 1.0, 0.1, parameterization="standard"))


def assert_matches_finite(net, x, n_networks=48, seed=3):
    k = net.kernel(x)
    assert k.sampled and torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
    mc = inf.monte_carlo_kernel(net, x, n_samples=n_networks, seed=seed)
    for name in ("nngp", "ntk"):
        z = max_combined_z(getattr(k, name), getattr(k, name + "_se"), getattr(mc, name), getattr(mc, name + "_stderr"))
        assert z < 4, (name, z, getattr(k, name), getattr(mc, name))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_attention_on_sequences_is_the_limit_of_wide_networks(causal, parameterization):
    assert_matches_finite(attention_net(causal, parameterization), inputs((4, 5)))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_without_output_map_is_the_limit_of_wide_networks(causal):
    """output_map=False (F.scaled_dot_product_attention's merged heads, from_torch's hand-split attention) with a
    bias of its own per map: no output weights, no NTK term of theirs."""
    conv = inf.Conv(64, (1,), w_std=1.0, b_std=0.1, parameterization="standard")
    att = inf.ScaledDotProductAttention(512, 8, w_q_std=0.8, w_k_std=1.1, w_v_std=1.0, b_q_std=0.3, b_k_std=None,
                                        b_v_std=0.2, output_map=False, causal=causal, parameterization="standard",
                                        samples=512)
    net = inf.serial(conv, att, inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1, 1.0, 0.1, parameterization="standard"))
    assert repr(inf.parse_spec(repr(net))) == repr(net)
    assert_matches_finite(net, inputs((4, 5)))


def test_attention_over_image_patches_is_the_limit_of_wide_networks():
    assert_matches_finite(attention_net(spatial=2, relu=True), inputs((3, 3, 2)))


def _logits_only(monkeypatch):
    """Keep only the logits' path in the NTK: no value-path tangents, no output-map gradients."""
    tangent = sa.ScaledDotProductAttention._tangent
    monkeypatch.setattr(sa.ScaledDotProductAttention, "_tangent",
                        lambda self, name, f, k, t: 0 * k if name == "v" else tangent(self, name, f, k, t))
    monkeypatch.setattr(sa.ScaledDotProductAttention, "_out_gradient", lambda self, heads: 0 * heads)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_the_logits_ntk_term_is_that_of_the_query_and_key_weights(monkeypatch, causal):
    """The term of the NTK through the logits, alone, against the finite networks' gradients with respect to
    W_Q and W_K alone: the part that distinguishes softmax attention's NTK (1 to 20 per cent of it here)."""
    x = inputs((4, 5))
    att = inf.ScaledDotProductAttention(512, 8, b_std=None, b_out_std=None, causal=causal, samples=1024,
                                        parameterization="ntk")
    net = inf.serial(att, inf.GlobalAvgPool(), inf.Dense(1, 1.0, None, trainable=False))
    full = net.kernel(x, get="ntk")
    _logits_only(monkeypatch)
    k = net.kernel(x, get="ntk")
    assert float((k.ntk / full.ntk).diagonal().min()) > 0.01  # a real part of the NTK (1-20% here), not a rounding
    grams = []
    for s in range(48):
        model = net.build((4, 5), seed=100 + s).double()
        module = next(m for m in model.modules() if isinstance(m, sa.ScaledDotProductAttentionModule))
        rows = []
        for i in range(len(x)):
            grads = torch.autograd.grad(model(x[i: i + 1]).sum(), [module.w_q, module.w_k])
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        jac = torch.stack(rows)
        grams.append(jac @ jac.T)
    grams = torch.stack(grams)
    z = max_combined_z(k.ntk, k.ntk_se, grams.mean(0), grams.std(0) / len(grams) ** 0.5)
    assert z < 4, (z, k.ntk, grams.mean(0))


def test_attention_options_are_checked():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        inf.ScaledDotProductAttention(10, 3)
    with pytest.raises(TypeError, match="causal"):
        inf.ScaledDotProductAttention(8, 2, causal="yes")
    with pytest.raises(ValueError, match="positions"):
        inf.serial(inf.ScaledDotProductAttention(8, 2), inf.Dense(1)).kernel(randn(2, 3))
    with pytest.raises(TypeError, match="output_map"):
        inf.ScaledDotProductAttention(8, 2, output_map=0)
    with pytest.raises(ValueError, match="without an output map"):
        inf.ScaledDotProductAttention(8, 2, output_map=False, b_out_std=0.1)
    net = inf.serial(inf.ScaledDotProductAttention(16, 2), inf.Flatten(), inf.Dense(1))
    assert repr(inf.parse_spec(repr(net))) == repr(net)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_padded_sequences_are_the_limit_of_networks_run_on_each_sequence_alone(causal):
    """Padding masks (mask_constant, infinet.masks): padded keys get no weight, so the padded batch's kernel is the
    limit of finite networks run on each unpadded sequence alone (within 4 combined standard errors), with right
    and left padding (global pooling then averages the valid positions alone)."""
    from tests.test_masks import PAD, _finite_samples, padded, ragged

    xs = ragged([4, 2, 3], c=3, seed=5)
    net = inf.serial(inf.Dense(64, b_std=0.1, parameterization="standard"),
                     inf.ScaledDotProductAttention(512, 8, w_std=1.0, b_std=0.1, w_out_std=1.2, causal=causal,
                                                   samples=512, parameterization="ntk"),
                     inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1, 1.0, 0.1))
    k = net.kernel(padded(xs, 5), mask_constant=PAD)
    (nngp, nngp_se), (ntk, ntk_se) = _finite_samples(net, xs, 64, seed=2, input_shape=(3, 5))
    assert max_combined_z(k.nngp, k.nngp_se, nngp, nngp_se) < 4
    assert max_combined_z(k.ntk, k.ntk_se, ntk, ntk_se) < 4
    left = net.kernel(padded(xs, 5, left=True), mask_constant=PAD)
    assert max_combined_z(left.nngp, left.nngp_se, nngp, nngp_se) < 4

