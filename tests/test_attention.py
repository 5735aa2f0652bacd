"""GlobalSelfAttention: conformance with neural-tangents 0.6.5 (stored reference values), finite networks,
bad configurations."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import infinet as inf
from _statistics import assert_within_standard_errors

F64 = torch.float64
DATA = Path(__file__).parent / "data" / "attention"
CONFIGS = json.loads((DATA / "configs.json").read_text())["configs"]
REFERENCE = np.load(DATA / "reference.npz")


def exp4(d):
    return torch.exp(-d / 4)


def attention(args: dict) -> inf.GlobalSelfAttention:
    args = dict(args)
    if args.pop("pos_emb_decay", None) == "exp4":
        args["pos_emb_decay_fn"] = exp4
    return inf.GlobalSelfAttention(8, 8, 8, **args)


def network(args: dict, readout: str) -> inf.Layer:
    """The network of tests/data/attention/make_reference.py."""
    pool = inf.GlobalAvgPool() if readout == "gap" else inf.Flatten()
    return inf.serial(inf.Dense(16, w_std=1.4, b_std=0.1), inf.Relu(), attention(args), inf.Relu(), pool,
                      inf.Dense(1, w_std=1.0, b_std=0.05))


@pytest.mark.parametrize("inputs", ["sequences", "images"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_equals_neural_tangents(config, inputs):
    args, readout = CONFIGS[config]
    x = torch.from_numpy(REFERENCE[f"x_{inputs}"])
    k = network(args, readout).kernel(x)
    for what in ("nngp", "ntk"):
        ref = torch.from_numpy(REFERENCE[f"{inputs}/{config}/{what}"])
        assert torch.allclose(getattr(k, what), ref, rtol=1e-8, atol=1e-10 * float(ref.abs().max())), (what, config)


@pytest.mark.parametrize("config", ["softmax-bias-stds", "concat-decay-val", "sqrt-identity"])
def test_matches_finite_networks(config):
    """Monte Carlo over finite networks (64 keys/values per head, 64 heads, 256 hidden units)."""
    args, readout = CONFIGS[config]
    args = {**args, "n_heads": 64}
    x = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)

    def net(width):
        a = attention(args)
        a.n_chan_out = a.n_chan_key = a.n_chan_val = width
        pool = inf.GlobalAvgPool() if readout == "gap" else inf.Flatten()
        return inf.serial(inf.Dense(4 * width, w_std=1.4, b_std=0.1), inf.Relu(), a, inf.Relu(), pool, inf.Dense(1, b_std=0.05))

    exact = net(64).kernel(x)
    mc = inf.monte_carlo_kernel(net(64), x, n_samples=32, seed=4)
    assert_within_standard_errors(exact, mc)


def test_transformer_block_on_sequences_is_psd_and_tiling_invariant():
    """Residual attention and MLP blocks with LayerNorm, as in a transformer encoder."""
    block = inf.serial(
        inf.FanOut(2), inf.parallel(inf.Identity(), attention({"n_heads": 2, "pos_emb_type": "SUM"})), inf.FanInSum(),
        inf.LayerNorm("channels"),
        inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Dense(32), inf.Relu(), inf.Dense(8))), inf.FanInSum(),
        inf.LayerNorm("channels"))
    net = inf.serial(inf.Dense(8), block, block, inf.GlobalAvgPool(), inf.Dense(1))
    x = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    k, tiled = net.kernel(x), net.kernel(x, tile_size=2)
    for a, b in ((k.nngp, tiled.nngp), (k.ntk, tiled.ntk)):
        assert torch.equal(a, a.T)
        assert float(torch.linalg.eigvalsh(a).min()) >= -1e-12 * float(a.trace())
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_module_seeds_and_shapes():
    layer = attention({"n_heads": 2, "pos_emb_type": "CONCAT", "pos_emb_decay": "exp4", "val_pos_emb": True})
    a, b = layer.build((3, 2, 4), seed=1), layer.build((3, 2, 4), seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.randn(5, 3, 2, 4)).shape == (5, 8, 2, 4)
    with pytest.raises(ValueError, match="built for inputs"):
        a(torch.randn(5, 3, 4))


@pytest.mark.parametrize("make, message", [
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, linear_scaling=False), "no infinite-width closed form"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, attention_mechanism="SIGMOID"), "unknown attention_mechanism"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, pos_emb_type="ROTARY"), "unknown pos_emb_type"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 0), "n_heads must be a positive integer"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, W_key_std=-1.0), "W_key_std must be a finite number >= 0"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, pos_emb_p_norm=0), "pos_emb_p_norm"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1).check((5,)), "expects sequences N x C x L or images"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1, pos_emb_type="SUM", n_chan_pos_emb=2).check((3, 5)), "SUM positional"),
    (lambda: inf.GlobalSelfAttention(8, 8, 8, 1).check((3, 0)), "empty"),
])
def test_bad_configurations_are_named(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_bad_decay_function_is_named():
    layer = inf.GlobalSelfAttention(8, 8, 8, 1, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: d[0])
    with pytest.raises(ValueError, match="pos_emb_decay_fn must map"):
        inf.serial(layer, inf.GlobalAvgPool(), inf.Dense(1)).kernel(torch.randn(2, 3, 4, dtype=F64))


def test_decay_function_that_is_no_covariance_is_named():
    layer = inf.GlobalSelfAttention(8, 8, 8, 1, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: 1.0 - d)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        inf.serial(layer, inf.GlobalAvgPool(), inf.Dense(1)).kernel(torch.randn(2, 3, 4, dtype=F64))


def test_spec_round_trip():
    net = inf.parse_spec("GlobalSelfAttention(8, 8, 8, 2, b_std=0.1, pos_emb_type='SUM') > GlobalAvgPool() > Dense(1)")
    x = torch.randn(3, 2, 4, dtype=F64)
    assert torch.equal(inf.parse_spec(repr(net)).kernel(x).ntk, net.kernel(x).ntk)
    assert math.isfinite(float(net.kernel(x).ntk.sum()))
