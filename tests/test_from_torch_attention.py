"""from_torch of attention written out by hand: F.scaled_dot_product_attention on heads split from query, key and
value Linears (infinet.engine.torch_attention), against Monte Carlo of the torch models themselves."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infinet as inf
from tests._statistics import max_combined_z
from tests._torch_models import torch_monte_carlo


class HandSplit(nn.Module):
    """A transformer's attention as people write it: ``how`` picks the form of the query, key and value maps
    ('three' Linears, 'chunk' of one 3E Linear, 'timm': reshape(n, l, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0))."""

    def __init__(self, how="three", width=256, heads=8, causal=False, channels=16, bias=True, **options):
        super().__init__()
        self.how, self.heads, self.causal, self.options = how, heads, causal, options
        if how == "three":
            self.q, self.k, self.v = (nn.Linear(channels, width, bias=bias) for _ in range(3))
        else:
            self.qkv = nn.Linear(channels, 3 * width, bias=bias)
        self.q_norm = nn.Identity()
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        n, length, _ = x.shape
        h = self.heads
        if self.how == "three":
            q, k, v = (m(x).view(n, length, h, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        elif self.how == "chunk":
            parts = self.qkv(x).chunk(3, dim=-1)  # fx cannot unpack it: indexed
            q, k, v = (parts[i].reshape(n, length, h, -1).transpose(1, 2) for i in range(3))
        else:
            qkv = self.qkv(x).reshape(n, length, 3, h, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        q = self.q_norm(q)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, **self.options)
        out = self.proj(out.transpose(1, 2).reshape(n, length, -1))
        return self.fc(out.mean(1))


@pytest.mark.parametrize("how, causal, bias", [("three", False, True), ("three", True, True), ("timm", False, False),
                                              ("chunk", True, True)])
def test_hand_split_attention_is_the_limit_of_the_torch_model(how, causal, bias):
    """The sampled kernel of the fused layer against the mean empirical NNGP / NTK of 24 torch models with 8
    heads of width 32 (4 combined standard errors)."""
    x = torch.randn(3, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    arch = inf.from_torch(HandSplit(how, causal=causal, bias=bias).double(), x)
    assert "output_map=False" in repr(arch) and f"causal={causal}" in repr(arch)
    assert ("b_std=None" in repr(arch)) == (not bias)
    k = arch.kernel(x)
    mc = torch_monte_carlo(lambda: HandSplit(how, causal=causal, bias=bias), x, n_samples=24)
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(k, name), getattr(k, name + "_se"), getattr(mc, name),
                              getattr(mc, name + "_stderr")) < 4, name


def test_without_the_fusion_the_output_map_would_be_counted_twice():
    """The test above can fail: the same layer with an output map of its own (what the hand-split call lacks)
    is far from the torch models."""
    x = torch.randn(3, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    arch = inf.from_torch(HandSplit().double(), x)
    wrong = inf.serial(*[_with_output_map(layer) for layer in _flat(arch)])
    k = wrong.kernel(x)
    mc = torch_monte_carlo(lambda: HandSplit(), x, n_samples=24)
    assert max_combined_z(k.ntk, k.ntk_se, mc.ntk, mc.ntk_stderr) > 4


def _flat(layer):
    parts = getattr(layer, "layers", None)
    return [layer] if parts is None else [p for part in parts for p in _flat(part)]


def _with_output_map(layer):
    import copy

    if isinstance(layer, inf.ScaledDotProductAttention):
        layer = copy.copy(layer)
        layer.output_map, layer.w_out_std = True, 1.0
    return layer


@pytest.mark.parametrize("options, match", [
    ({"dropout_p": 0.1}, "dropout_p"), ({"scale": 0.3}, "scale"),
    ({"attn_mask": "mask"}, "attn_mask")])
def test_other_attention_options_are_refused(options, match):
    x = torch.randn(2, 4, 8)
    if options.get("attn_mask") == "mask":
        options = {"attn_mask": torch.zeros(4, 4)}
    with pytest.raises(inf.UnsupportedModuleError, match=rf"scaled_dot_product_attention\).*{match}"):
        inf.from_torch(HandSplit(width=8, heads=2, channels=8, **options), x)


class ReadsQueryTwice(HandSplit):
    def forward(self, x):
        n, length, _ = x.shape
        q, k, v = (m(x).view(n, length, 2, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, -1)
        return self.fc((out + q.transpose(1, 2).reshape(n, length, -1)).mean(1))


class CrossAttention(HandSplit):
    def forward(self, x):
        n, length, _ = x.shape
        y = torch.tanh(x)
        q = self.q(x).view(n, length, 2, -1).transpose(1, 2)
        k, v = (m(y).view(n, length, 2, -1).transpose(1, 2) for m in (self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.fc(out.transpose(1, 2).reshape(n, length, -1).mean(1))


@pytest.mark.parametrize("model, match", [(ReadsQueryTwice, "also read outside"), (CrossAttention, "self-attention")])
def test_other_forms_are_refused_naming_the_call(model, match):
    with pytest.raises(inf.UnsupportedModuleError, match=rf"scaled_dot_product_attention\).*{match}"):
        inf.from_torch(model(width=8, heads=2, channels=8), torch.randn(2, 4, 8))


class SameMapTwice(HandSplit):
    """The value map is the query map, reached by a negative index: one weight matrix, not two."""

    def forward(self, x):
        n, length, _ = x.shape
        parts = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (parts[i].reshape(n, length, 2, -1).transpose(1, 2) for i in (2, 1, -1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.fc(out.transpose(1, 2).reshape(n, length, -1).mean(1))


def test_one_map_read_twice_is_refused():
    with pytest.raises(inf.UnsupportedModuleError, match=r"scaled_dot_product_attention\).*share a map"):
        inf.from_torch(SameMapTwice("chunk", width=8, heads=2, channels=8), torch.randn(2, 4, 8))
