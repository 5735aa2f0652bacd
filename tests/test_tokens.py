"""Token inputs and learned constants: Embedding, Constant, ConcatPositions (infinet.layers.tokens), and from_torch
on token models (nn.Embedding, class tokens, positional embeddings, permute / transpose, x[:, 0])."""

import pytest
import torch
from torch import nn

import infinet as inf
from tests._statistics import assert_within_standard_errors
from tests._torch_models import torch_monte_carlo


def tokens(n=5, length=5, vocab=7, seed=0):
    """Index sequences with a repeated row, shared tokens and the padding token 0."""
    x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    x[1] = x[0]
    x[2, :2] = 0
    return x


def std_dense(width, w=1.3, b=0.1):
    return inf.Dense(width, w, b, parameterization="standard")


def test_the_embedding_kernel_is_the_scaled_indicator_of_equal_tokens():
    x = tokens()
    w = 1.7
    net = inf.serial(inf.Embedding(7, 8, w_std=w, padding_idx=0), inf.Flatten())
    k = net.kernel(x)
    equal = ((x[:, None, :] == x[None, :, :]) & (x[:, None, :] != 0)).double().mean(-1)  # per position, averaged
    torch.testing.assert_close(k.nngp, w**2 * equal, rtol=1e-15, atol=0)
    torch.testing.assert_close(k.ntk, equal, rtol=1e-15, atol=0)
    full = inf.serial(inf.Embedding(7, 8, w_std=w), inf.GlobalAvgPool()).kernel(x)
    pairs = (x[:, None, :, None] == x[None, :, None, :]).double().mean((-1, -2))  # every position pair
    torch.testing.assert_close(full.nngp, w**2 * pairs, rtol=1e-15, atol=0)


def _token_graph(width=256, pooled=False):
    """Embedding + positional Constant, a Constant class token before it, then an MLP per token, read at the
    class token (or averaged over positions)."""
    read = inf.GlobalAvgPool() if pooled else inf.Index(":, :, 0")
    return inf.ValueGraph([
        [inf.Embedding(7, width, padding_idx=0), [0]], [inf.Constant((width, 5), std=0.7), [0]],
        [inf.FanInSum(), [1, 2]], [inf.Constant((width, 1), std=0.5), [0]], [inf.ConcatPositions(2), [4, 3]],
        [inf.Relu(), [5]], [std_dense(width), [6]], [inf.Relu(), [7]], [read, [8]], [std_dense(1), [9]]])


@pytest.mark.parametrize("net", [
    inf.serial(inf.Embedding(7, 512, w_std=1.3, padding_idx=0), inf.Relu(), std_dense(512), inf.Relu(),
               inf.GlobalAvgPool(), std_dense(1)),
    _token_graph(), _token_graph(pooled=True)], ids=["mlp-pooled", "class-token", "positional-pooled"])
def test_token_layers_are_the_limit_of_their_finite_networks(net):
    x = tokens()
    k = net.kernel(x)
    assert not k.sampled
    assert_within_standard_errors(k, inf.monte_carlo_kernel(net, x, n_samples=64, seed=3))


def test_token_inputs_are_checked():
    net = inf.serial(inf.Embedding(7, 8), inf.Flatten(), inf.Dense(1))
    with pytest.raises(ValueError, match="integers from 0 to 6"):
        net.kernel(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="integers from 0 to 6"):
        net.kernel(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="padding masks"):
        net.kernel(torch.tensor([[0, 1]]), lengths=[1])
    with pytest.raises(ValueError, match="first layer"):
        inf.serial(inf.Dense(4), inf.Embedding(7, 8)).kernel(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="token indices"):  # read both as tokens and as features
        inf.ValueGraph([[inf.Embedding(7, 8), [0]], [inf.Dense(8), [0]], [inf.FanInSum(), [1, 2]],
                        [inf.Flatten(), [3]]]).kernel(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="padding_idx"):
        inf.Embedding(7, 8, padding_idx=7)
    with pytest.raises(ValueError, match="std"):
        inf.Constant((4, 2), std=-1.0)


def test_a_concatenation_over_positions_of_correlated_values_is_refused():
    net = inf.ValueGraph([[inf.Conv(8, (1,)), [0]], [inf.Relu(), [1]], [inf.ConcatPositions(2), [1, 2]],
                          [inf.Flatten(), [3]]])
    with pytest.raises(ValueError, match="cross-covariances"):
        net.kernel(torch.randn(2, 3, 4))


def test_token_architectures_round_trip_through_their_spec():
    net = _token_graph(16)
    assert repr(inf.parse_spec(repr(net))) == repr(net)


# ------------------------------------------------------------------ from_torch on token models
class _TokenModel(nn.Module):
    """Embedding, a class token, a positional embedding, LayerNorm and Linear per token, a Conv1d after a
    transpose, read at the class token or averaged over tokens."""

    def __init__(self, vocab=7, width=256, length=5, cls=True):
        super().__init__()
        self.emb = nn.Embedding(vocab, width, padding_idx=0)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.5) if cls else None
        self.pos = nn.Parameter(torch.randn(1, length + 1, width) * 0.3)
        self.norm = nn.LayerNorm(width)
        self.lin = nn.Linear(width, width)
        self.conv = nn.Conv1d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        h = self.emb(x)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        h = h + (self.pos if self.cls is not None else self.pos[:, 1:])  # a slice of a parameter, too
        h = torch.relu(self.lin(self.norm(h)))
        h = self.conv(h.transpose(1, 2)).relu().permute(0, 2, 1)
        return self.fc(h[:, 0] if self.cls is not None else h.mean(1))


@pytest.mark.parametrize("cls", [True, False], ids=["class-token", "mean-pooled"])
def test_token_models_are_the_limit_of_the_torch_model(cls):
    x = tokens()
    torch.manual_seed(1)
    model = _TokenModel(cls=cls).double()
    arch = inf.from_torch(model, x)
    assert any(isinstance(layer, inf.Constant) for layer in arch.layers)
    k = arch.kernel(x)
    assert_within_standard_errors(k, torch_monte_carlo(lambda: _TokenModel(cls=cls), x, n_samples=48, seed=5))
    out = arch.build((5,), seed=0)(x)  # the finite network of the description reads token indices too
    assert out.shape == (5, 1)


class _Permuted(nn.Module):
    """An image moved to channels-last and back, or read per pixel with a Linear on the channels."""

    def __init__(self, how, width=64):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(2, width, 3)
        self.lin = nn.Linear(width, width)
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        h = self.conv(x).relu().permute(0, 2, 3, 1)  # (N, H, W, C)
        if self.how == "linear":
            h = self.lin(h).relu()
        h = h.permute(0, 3, 1, 2) if self.how == "back" else h.transpose(1, 3).transpose(2, 3)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("how", ["back", "linear"])
def test_permute_and_transpose_move_the_axes_the_kernel_tracks(how):
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    arch = inf.from_torch(_Permuted(how).double(), x)
    lin = [inf.Dense(64, 3**-0.5, (3 * 64) ** -0.5, parameterization="standard"), inf.Relu()] if how == "linear" else []
    hand = inf.serial(inf.Conv(64, (3, 3), padding="VALID", w_std=3**-0.5, b_std=(3 * 18) ** -0.5, parameterization="standard"),
                      inf.Relu(), *lin, inf.GlobalAvgPool(), inf.Dense(1, 3**-0.5, (3 * 64) ** -0.5,
                                                                         parameterization="standard"))
    got, want = arch.kernel(x), hand.kernel(x)
    torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=0)


class _Refused(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.emb = nn.Embedding(7, 8)
        self.conv = nn.Conv1d(5, 8, 3)  # runs in torch, over the 5 positions as if they were channels
        self.scale = nn.Parameter(torch.ones(1, 5, 8))
        self.register_buffer("fixed", torch.randn(1, 5, 8))
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        h = self.emb(x)
        if self.how == "conv":  # Conv1d on (N, L, C): needs a transpose first
            return self.fc(self.conv(h).mean(2))
        elif self.how == "buffer":
            h = h + self.fixed
        elif self.how == "product":
            h = h * self.scale
        elif self.how == "batch":
            h = h.permute(1, 0, 2)
        return self.fc(h.mean(1))


@pytest.mark.parametrize("how,match", [("conv", "permute first"), ("buffer", "buffer"), ("product", "parameter"),
                                       ("batch", "batch axis")])
def test_what_token_models_cannot_do_is_refused_by_name(how, match):
    with pytest.raises(inf.UnsupportedModuleError, match=match):
        inf.from_torch(_Refused(how), tokens())
