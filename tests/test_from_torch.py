"""from_torch on models written without infinet: kernels against Monte Carlo of the widened models
(PyTorch's own initialization, the assumption from_torch states), against hand-written architectures,
round trips of infinet-built modules, and named errors for modules without a limit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infinet as inf
from tests._statistics import assert_within_standard_errors
from tests._torch_models import gaussian_init, per_example_ntk, torch_monte_carlo  # noqa: F401

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class MLP(nn.Module):
    def __init__(self, width=1024):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh())
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        return self.fc(self.body(x))


class CNN(nn.Module):
    def __init__(self, width=256):
        super().__init__()
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding="same")
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.gelu(self.conv2(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class Block(nn.Module):
    """A ResNet basic block with a 1x1 projection shortcut."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.b = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.proj = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return F.relu(self.proj(x) + self.b(F.relu(self.a(x))))


class ResNet(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, padding=1)
        self.blocks = nn.Sequential(Block(width, 2 * width), Block(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, 1)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class RNNModel(nn.Module):
    def __init__(self, width=1024):
        super().__init__()
        self.rnn = nn.RNN(3, width, batch_first=True)
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out.mean(1))  # every position: the causal mask changes all but the last


CASES = {
    "mlp": (MLP, randn(4, 5)),
    "cnn-pooling": (CNN, randn(3, 2, 6, 6)),
    "resnet-projection-shortcuts": (ResNet, randn(3, 2, 5, 5)),
    "rnn-last-step": (RNNModel, randn(4, 6, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_is_the_limit_of_the_widened_model(name):
    make, x = CASES[name]
    arch = inf.from_torch(make(width=8), x)  # a narrow instance: the kernel does not depend on widths but the NTK's
    wide = inf.from_torch(make(), x)         # standard-parameterization factors, taken from the wide one
    assert "Dense" in repr(arch)
    assert_within_standard_errors(wide.kernel(x), torch_monte_carlo(make, x))


class Functional(nn.Module):
    """Functional calls, a reshape by size(0), concatenation over channels, a product and a scalar."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 8, 3, padding=1)
        self.c2 = nn.Conv1d(2, 8, 3, padding=1)
        self.c3 = nn.Conv1d(16, 8, 1)
        self.c4 = nn.Conv1d(2, 8, 1)
        self.fc = nn.Linear(8 * 7, 1)

    def forward(self, x):
        a, b = torch.tanh(self.c1(x)), F.leaky_relu(self.c2(x), 0.2)
        h = self.c3(torch.cat([a, b], dim=1)) * 0.5
        h = h * self.c4(x)
        return self.fc(h.view(h.size(0), -1))


class SharedWeights(nn.Module):
    """The earlier version of :class:`Functional`: c3's weights serve two calls, and a, b feed both factors of
    the product. from_torch used to treat both factors as independent (a wrong kernel); now it refuses."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv1d(2, 8, 3, padding=1), nn.Conv1d(2, 8, 3, padding=1), nn.Conv1d(16, 8, 1)
        self.fc = nn.Linear(8 * 7, 1)

    def forward(self, x):
        a, b = torch.tanh(self.c1(x)), F.leaky_relu(self.c2(x), 0.2)
        h = self.c3(torch.cat([a, b], dim=1)) * 0.5
        h = h * self.c3(torch.cat([b, a], dim=1))
        return self.fc(h.view(h.size(0), -1))


def test_shared_weights_and_values_reused_across_a_product_are_refused():
    with pytest.raises(inf.UnsupportedModuleError, match="c3 .Conv1d. is called 2 times"):
        inf.from_torch(SharedWeights(), randn(4, 2, 7))


def test_functional_model_equals_the_hand_written_architecture():
    x = randn(4, 2, 7)
    s3 = 3 ** -0.5

    def conv(c_out, k, fan_in):
        return inf.Conv(c_out, (k,), stride=(1,), padding="SAME" if k == 3 else "VALID", dilation=(1,), w_std=s3,
                        b_std=(3 * fan_in) ** -0.5, parameterization="standard")

    a, b = inf.serial(conv(8, 3, 6), inf.Tanh()), inf.serial(conv(8, 3, 6), inf.LeakyRelu(0.2))
    both = inf.serial(inf.FanOut(2), inf.parallel(a, b), inf.FanInConcat())
    left = inf.serial(both, conv(8, 1, 16), inf.DotGeneral(rhs=0.5))
    right = conv(8, 1, 2)
    hand = inf.serial(inf.FanOut(2), inf.parallel(left, right), inf.FanInProd(), inf.Flatten(),
                      inf.Dense(1, w_std=s3, b_std=(3 * 56) ** -0.5, parameterization="standard"))
    got = inf.from_torch(Functional(), x).kernel(x)
    want = hand.kernel(x)
    for what in ("nngp", "ntk"):
        assert torch.allclose(getattr(got, what), getattr(want, what), rtol=1e-12, atol=0)


NETS = [
    inf.serial(inf.Dense(16, w_std=1.4, b_std=0.1), inf.Erf(), inf.Dense(8, parameterization="standard"), inf.Gelu(),
               inf.Dense(1)),
    inf.serial(inf.Conv(8, 3, b_std=0.1), inf.Relu(), inf.FanOut(2),
               inf.parallel(inf.Identity(), inf.serial(inf.Conv(8, 3), inf.Erf(), inf.Conv(8, 3))), inf.FanInSum(),
               inf.Conv(8, 3), inf.LayerNorm(), inf.AvgPool(2), inf.Flatten(), inf.Dense(1)),
    inf.myrtle(5, channels=8),
    inf.serial(inf.Recurrent(inf.Relu(), 8, b_std=0.1), inf.GlobalSelfAttention(8, 8, 8, 2), inf.Index(":, :, 0"),
               inf.Dense(1)),
]


@pytest.mark.parametrize("net", NETS, ids=range(len(NETS)))
def test_infinet_built_modules_round_trip(net):
    shape = (3, 8, 8) if "Conv" in repr(net) else ((3, 5) if "Recurrent" in repr(net) else (5,))
    back = inf.from_torch(net.build(shape, seed=0))
    x = randn(3, *shape)
    assert repr(back) == repr(net)
    a, b = net.kernel(x), back.kernel(x)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)


class WithMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2, dilation=2)), r"1 \(MaxPool2d\): dilation"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "grouped convolutions"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="circular")), "circular padding"),
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.AvgPool2d(2, ceil_mode=True)), "ceil_mode"),
    (nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)), r"0 \(Embedding\): max_norm"),
    (nn.Sequential(nn.LSTM(3, 4, proj_size=2)), "proj_size"),
    (nn.Sequential(nn.TransformerEncoderLayer(8, 2)), r"0 \(TransformerEncoderLayer\).*batch_first=True"),
    (nn.Sequential(nn.TransformerDecoderLayer(8, 2)), r"0 \(TransformerDecoderLayer\).*second input"),
])
def test_modules_without_a_limit_are_named(model, message):
    with pytest.raises(inf.UnsupportedModuleError, match=message):
        inf.from_torch(model)


def test_operations_without_a_limit_are_named():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x) + 1.0

    with pytest.raises(inf.UnsupportedModuleError, match="adding a constant"):
        inf.from_torch(Shift())

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(inf.UnsupportedModuleError, match="cannot be traced"):
        inf.from_torch(Branchy())
    with pytest.raises(ValueError, match="unknown init"):
        inf.from_torch(MLP(4), init="xavier")


def test_parameters_init_reads_the_weights():
    model = nn.Sequential(nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 1))
    with torch.no_grad():
        model[0].weight.normal_(0, 2.0 / 200**0.5)
        model[0].bias.normal_(0, 0.5)
    arch = inf.from_torch(model, init="parameters")
    first = arch.layers[0]
    assert first.w_std == pytest.approx(2.0, rel=0.01) and first.b_std == pytest.approx(0.5, rel=0.15)


class _Attend(nn.Module):
    def __init__(self, how="self", width=256):
        super().__init__()
        self.how = how
        self.attn = nn.MultiheadAttention(width, 8, batch_first=True)
        self.fc, self.other = nn.Linear(width, 1), nn.Linear(width, width)
        self.register_buffer("mask", torch.ones(4, 4, dtype=torch.bool).triu(1) if how == "causal"
                             else torch.ones(4, 4, dtype=torch.bool).tril(-1))  # the causal mask, or another

    def forward(self, x):
        if self.how in ("mask", "causal"):
            out = self.attn(x, x, x, attn_mask=self.mask, is_causal=self.how == "causal")[0]
        elif self.how == "cross":
            y = self.other(x)
            out = self.attn(x, y, y)[0]
        else:
            out = self.attn(x, x, x)[0]
        return self.fc(out.mean(1))  # every position: the causal mask changes all but the last


@pytest.mark.parametrize("how", ["self", "causal"])
def test_torch_attention_is_scaled_dot_product_attention(how):
    """nn.MultiheadAttention reading (N, L, E) inputs, without a mask or with the causal one: its sampled kernel
    against Monte Carlo of the torch model (the input layout is the model's own)."""
    from tests._torch_models import torch_monte_carlo
    from tests._statistics import max_combined_z

    x = torch.randn(3, 4, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    arch = inf.from_torch(_Attend(how).double(), x)
    assert "ScaledDotProductAttention(256, 8" in repr(arch) and f"causal={how == 'causal'}" in repr(arch)
    k = arch.kernel(x)
    mc = torch_monte_carlo(lambda: _Attend(how), x, n_samples=24)
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(k, name), getattr(k, name + "_se"), getattr(mc, name),
                              getattr(mc, name + "_stderr")) < 4, name


@pytest.mark.parametrize("how, match", [("mask", "masks"), ("cross", "self-attention")])
def test_torch_attention_with_masks_or_two_inputs_is_refused(how, match):
    with pytest.raises(inf.UnsupportedModuleError, match=rf"attn \(MultiheadAttention\).*{match}"):
        inf.from_torch(_Attend(how, width=8), torch.randn(2, 4, 8))
