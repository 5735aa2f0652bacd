"""Variable-length sequences in one batch (mask_constant): the kernel of the unpadded sequences."""

import math

import pytest
import torch

import infinet as inf

F64 = torch.float64
PAD = -100.0
LENGTHS = [5, 3, 4, 2, 5, 3]


def ragged(lengths=LENGTHS, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, n, generator=g, dtype=F64) for n in lengths]


def padded(xs, length, left=False):
    out = torch.full((len(xs), xs[0].shape[0], length), PAD, dtype=F64)
    for i, x in enumerate(xs):
        n = x.shape[1]
        if left:
            out[i, :, length - n:] = x
        else:
            out[i, :, :n] = x
    return out


def nets():
    tanh_last = inf.serial(inf.Recurrent(inf.Tanh(), w_std=1.3, b_std=0.2, return_sequence=False), inf.Dense(1))
    stacked = inf.serial(inf.Conv(6, 3, w_std=1.2), inf.Relu(), inf.Recurrent(inf.Erf(), b_std=0.1),
                         inf.Recurrent(inf.Relu(), return_sequence=False), inf.Dense(1, b_std=0.1))
    mean = inf.serial(inf.Recurrent(inf.Gelu(), w_std=0.9), inf.Dense(8), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    bi_seq = inf.serial(inf.bidirectional(inf.Recurrent(inf.Tanh(), b_std=0.1)), inf.Dense(8), inf.Erf(),
                        inf.GlobalSumPool(), inf.Dense(1))
    bi_last = inf.serial(inf.bidirectional(inf.Recurrent(inf.Relu(), return_sequence=False)), inf.Dense(1))
    att = inf.serial(inf.Dense(8, b_std=0.1), inf.Relu(),
                     inf.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: torch.exp(-d)),
                     inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    sqrt_att = inf.serial(inf.Dense(8), inf.Erf(), inf.GlobalSelfAttention(8, 8, 8, 1, linear_scaling=False,
                                                                            attention_mechanism="IDENTITY"),
                          inf.GlobalAvgPool(), inf.Dense(1))
    block = inf.serial(inf.FanOut(2), inf.parallel(inf.Identity(), inf.GlobalSelfAttention(8, 8, 8, 2)), inf.FanInSum(),
                       inf.LayerNorm("channels"), inf.FanOut(2),
                       inf.parallel(inf.Identity(), inf.serial(inf.Dense(16), inf.Relu(), inf.Dense(8))), inf.FanInSum())
    transformer = inf.serial(inf.Dense(8), block, block, inf.GlobalAvgPool(), inf.Dense(1))
    return {"tanh-last": tanh_last, "conv-rnn-rnn-last": stacked, "rnn-mean": mean, "bidirectional-sum": bi_seq,
            "bidirectional-last": bi_last, "attention": att, "sqrt-identity-attention": sqrt_att,
            "transformer": transformer}


NETS = nets()


@pytest.mark.parametrize("name", sorted(NETS))
def test_padded_equals_unpadded(name):
    """Each group of equal-length sequences computed without padding equals its block of the padded
    batch; right padding, more padding and left padding all give the same kernel (to 1e-12)."""
    net, xs = NETS[name], ragged()
    k = net.kernel(padded(xs, 6), mask_constant=PAD)
    scale = float(k.ntk.abs().max())
    for n in sorted(set(LENGTHS)):
        rows = [i for i, x in enumerate(xs) if x.shape[1] == n]
        plain = net.kernel(torch.stack([xs[i] for i in rows]))
        block = torch.tensor(rows)
        for what in ("nngp", "ntk"):
            got = getattr(k, what)[block[:, None], block[None, :]]
            assert torch.allclose(got, getattr(plain, what), rtol=1e-12, atol=1e-12 * scale), (name, n, what)
    for other in (net.kernel(padded(xs, 9), mask_constant=PAD), net.kernel(padded(xs, 7, left=True), mask_constant=PAD)):
        for what in ("nngp", "ntk"):
            assert torch.allclose(getattr(other, what), getattr(k, what), rtol=1e-12, atol=1e-12 * scale), (name, what)
    rect = net.kernel(padded(xs[:2], 6), padded(xs[2:], 6), mask_constant=PAD)
    assert torch.allclose(rect.ntk, k.ntk[:2, 2:], rtol=1e-12, atol=1e-12 * scale)


def _relu_pair(c, v1, v2, same):
    norm = math.sqrt(v1 * v2)
    rho = 1.0 if same else max(-1.0, min(1.0, c / norm))
    theta = math.acos(rho)
    return norm * (math.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi), (math.pi - theta) / (2 * math.pi)


def _direct(x1, x2, w2, u2, b2, same):
    """Alemohammad et al. 2021, eqs. 5-7, for sequences of lengths T1 and T2, in plain floats: the
    last-step kernels Q(T1, T2) and Qdot Theta(T1, T2)."""
    d = x1.shape[0]

    def k_in(a, b, t, s):
        return sum(float(a[c, t]) * float(b[c, s]) for c in range(d)) / d

    def variances(a):
        out, q = [], 0.0
        for t in range(a.shape[1]):
            v = w2 * q + u2 * k_in(a, a, t, t) + b2
            out.append(v)
            q = v / 2
        return out

    va, vb = variances(x1), variances(x2)
    q, p = {}, {}
    for t in range(x1.shape[1]):
        for s in range(x2.shape[1]):
            sigma = w2 * q.get((t - 1, s - 1), 0.0) + u2 * k_in(x1, x2, t, s) + b2
            theta = sigma + w2 * p.get((t - 1, s - 1), 0.0)
            q[t, s], qdot = _relu_pair(sigma, va[t], vb[s], same and t == s)
            p[t, s] = qdot * theta
    last = (x1.shape[1] - 1, x2.shape[1] - 1)
    return q[last], p[last]


def test_different_lengths_equal_a_direct_recursion():
    xs = ragged()
    w, u, b = 1.2, 0.8, 0.3
    net = inf.Recurrent(inf.Relu(), w_std=w, u_std=u, b_std=b, return_sequence=False)
    k = net.kernel(padded(xs, 6), mask_constant=PAD)
    for i in range(len(xs)):
        for j in range(len(xs)):
            q, p = _direct(xs[i], xs[j], w * w, u * u, b * b, i == j)
            assert abs(float(k.nngp[i, j]) - q) <= 1e-12 * abs(q) + 1e-15
            assert abs(float(k.ntk[i, j]) - p) <= 1e-12 * abs(p) + 1e-15


def _finite_samples(net, xs, n_samples, seed, input_shape=None):
    """Output covariance and tangent kernel of finite networks run on each unpadded sequence alone; ``input_shape``
    (C, L) for networks whose build needs it (lazy parameters otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    nngps, ntks = [], []
    for _ in range(n_samples):
        model = net.build(input_shape, seed=int(torch.randint(0, 2**62, (1,), generator=gen)), dtype=F64)
        model(xs[0][None])  # materialize lazy parameters
        params = [p for p in model.parameters()]
        outs, grads = [], []
        for x in xs:
            f = model(x[None]).reshape(())
            outs.append(f.detach())
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]))
        f, jac = torch.stack(outs), torch.stack(grads)
        nngps.append(f[:, None] * f[None, :])
        ntks.append(jac @ jac.T)
    stats = []
    for samples in (nngps, ntks):
        s = torch.stack(samples)
        stats.append((s.mean(0), s.std(0) / n_samples**0.5))
    return stats


@pytest.mark.parametrize("name", ["rnn-mean", "bidirectional-last"])
def test_different_lengths_match_finite_networks(name):
    """Finite networks (width 512, 256 samples) read each unpadded sequence alone; the padded batch's
    kernel is their limit, entry by entry within 4 standard errors."""
    xs = ragged([4, 2, 3], seed=3)
    wide = {"rnn-mean": inf.serial(inf.Recurrent(inf.Gelu(), 512, w_std=0.9), inf.Dense(512), inf.Relu(),
                                   inf.GlobalAvgPool(), inf.Dense(1)),
            "bidirectional-last": inf.serial(inf.bidirectional(inf.Recurrent(inf.Relu(), 512, return_sequence=False)),
                                             inf.Dense(1))}[name]
    exact = wide.kernel(padded(xs, 4), mask_constant=PAD)
    (nngp, nngp_se), (ntk, ntk_se) = _finite_samples(wide, xs, 256, seed=1)
    rows, cols = torch.triu_indices(3, 3)
    for value, mean, se in ((exact.nngp, nngp, nngp_se), (exact.ntk, ntk, ntk_se)):
        z = ((mean - value) / se)[rows, cols]
        assert float(z.abs().max()) < 4, z


@pytest.mark.parametrize("net, message", [
    (inf.serial(inf.Conv(4, 3, stride=2), inf.Flatten(), inf.Dense(1)), "does not take masked"),
    (inf.serial(inf.Conv(4, 3, padding="VALID"), inf.Flatten(), inf.Dense(1)), "does not take masked"),
    (inf.serial(inf.Dense(4), inf.AvgPool(2), inf.Flatten(), inf.Dense(1)), "does not take masked"),
    (inf.serial(inf.Dense(4), inf.LayerNorm("channels_space"), inf.Flatten(), inf.Dense(1)), "does not take masked"),
])
def test_layers_that_depend_on_where_padding_sits_refuse_it(net, message):
    with pytest.raises(ValueError, match=message):
        net.kernel(padded(ragged(), 6), mask_constant=PAD)


def test_bad_masks_are_named():
    net = NETS["tanh-last"]
    x = padded(ragged(), 6)
    x[2] = PAD
    with pytest.raises(ValueError, match="x1 row 2 is empty"):
        net.kernel(x, mask_constant=PAD)
    with pytest.raises(ValueError, match="mask_constant must be a finite number"):
        net.kernel(padded(ragged(), 6), mask_constant=float("nan"))
    with pytest.raises(ValueError, match="vectors have no positions"):
        inf.serial(inf.Dense(3), inf.Relu(), inf.Dense(1)).kernel(torch.randn(3, 4, dtype=F64), mask_constant=0.0)
    with pytest.raises(ValueError, match="expects sequences N x C x L"):
        net.kernel(torch.randn(3, 2, 4, 4, dtype=F64), mask_constant=PAD)


def test_unpadded_batch_with_a_mask_constant_keeps_the_fast_layout():
    """No position equals the constant: the same numbers as without it (and the diagonal layout)."""
    x = torch.randn(4, 3, 6, dtype=F64)
    net = NETS["tanh-last"]
    assert torch.equal(net.kernel(x, mask_constant=PAD).ntk, net.kernel(x).ntk)


def test_lengths_equal_mask_constant_and_pad_sequences():
    from infinet.masks import pad_sequences

    xs = ragged()
    x, lengths = pad_sequences(xs, length=6)
    assert lengths.tolist() == LENGTHS and x.shape == (len(xs), 3, 6)
    net = NETS["bidirectional-last"]
    by_lengths = net.kernel(x, lengths=lengths)
    by_constant = net.kernel(padded(xs, 6), mask_constant=PAD)
    assert torch.allclose(by_lengths.ntk, by_constant.ntk, rtol=1e-13) and torch.allclose(by_lengths.nngp, by_constant.nngp, rtol=1e-13)
    rect = net.kernel(x[:2], x[2:], lengths=lengths[:2], lengths2=lengths[2:])
    assert torch.allclose(rect.ntk, by_lengths.ntk[:2, 2:], rtol=1e-12)
    # identical padded data with different lengths are different inputs (not merged as repeated rows)
    twin = torch.stack([x[0], x[0]])
    k = net.kernel(twin, lengths=[5, 3])
    assert not torch.allclose(k.nngp[0, 0], k.nngp[1, 1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lengths=[5, 3, 4]), "one length per sequence: x1 has 6 sequences"),
    (dict(lengths=[5, 3, 4, 2, 5, 7]), "sequence 5 has length 7, outside 1 to 6"),
    (dict(lengths=[5, 3, 4, 0, 5, 3]), "sequence 3 has length 0"),
    (dict(lengths=[5, 3, 4, 2.5, 5, 3]), "whole numbers"),
    (dict(lengths=LENGTHS, mask_constant=PAD), "either mask_constant or lengths"),
    (dict(lengths2=LENGTHS), "lengths2 .* needs lengths"),
])
def test_lengths_that_do_not_match_are_named(kwargs, message):
    x = padded(ragged(), 6)
    with pytest.raises(ValueError, match=message):
        NETS["tanh-last"].kernel(x, **kwargs)


def test_lengths_need_sequences_and_both_batches():
    x = padded(ragged(), 6)
    with pytest.raises(ValueError, match="pass its lengths as lengths2"):
        NETS["tanh-last"].kernel(x, x.clone(), lengths=LENGTHS)
    with pytest.raises(ValueError, match="lengths are for sequences"):
        inf.serial(inf.Conv(4, 3), inf.GlobalAvgPool(), inf.Dense(1)).kernel(torch.randn(2, 1, 4, 4, dtype=F64), lengths=[4, 4])
