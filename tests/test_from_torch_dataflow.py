"""from_torch reads the dataflow torch computes (issue: trust, round three, cases 1-4 and 14): in-place
operations, values used again after a join, nn.Linear on tensors with more than one feature axis,
constructor arguments, reshape idioms and refusals that name the torch node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infinet as inf
from tests._statistics import assert_sampled_within_standard_errors, assert_within_standard_errors, max_combined_z
from infinet.engine.apply import has_ntk
from tests._torch_models import torch_monte_carlo

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def std(fan_in):
    return (3 * fan_in) ** -0.5


def dense(n, fan_in, bias=True):
    return inf.Dense(n, w_std=3 ** -0.5, b_std=std(fan_in) if bias else None, parameterization="standard")


def assert_same_kernel(arch, hand, x):
    got, want = arch.kernel(x), hand.kernel(x)
    for what in ("nngp", "ntk"):
        assert torch.allclose(getattr(got, what), getattr(want, what), rtol=1e-12, atol=1e-15), what


# ------------------------------------------------------------------ 1. in-place aliasing
class InplaceSkip(nn.Module):
    """The skip connection reads h after nn.ReLU(inplace=True) changed it: in torch the skip carries relu(h)."""

    def __init__(self, width=256, form="module"):
        super().__init__()
        self.l0, self.l1, self.fc = nn.Linear(3, width), nn.Linear(width, width), nn.Linear(width, 1)
        self.relu, self.form = nn.ReLU(inplace=True), form

    def forward(self, x):
        h = self.l0(x)
        if self.form == "module":
            y = self.relu(h)
        elif self.form == "method":
            y = h.relu_()
        elif self.form == "function":
            y = F.relu(h, inplace=True)
        else:  # an in-place function whose result is not even kept: h itself changes
            torch.relu_(h)
            y = h
        return self.fc(self.l1(y) + h)


def test_inplace_relu_on_a_skip_value_is_the_limit_of_the_torch_model():
    x = randn(4, 3)
    arch = inf.from_torch(InplaceSkip(), x)
    assert_within_standard_errors(arch.kernel(x), torch_monte_carlo(InplaceSkip, x, n_samples=48))


@pytest.mark.parametrize("form", ["module", "method", "function", "statement"])
def test_every_inplace_form_carries_the_changed_value(form):
    x = randn(4, 3)
    s = 256
    hand = inf.serial(dense(s, 3), inf.Relu(), inf.FanOut(2), inf.parallel(dense(s, s), inf.Identity()), inf.FanInSum(),
                      dense(1, s))
    for example in (x, None):  # with and without an example input (the static reading alone)
        assert_same_kernel(inf.from_torch(InplaceSkip(form=form), example), hand, x)


class AugmentedSkip(nn.Module):
    """torchvision's BasicBlock idiom turned around: identity = h; h += g changes identity too."""

    def __init__(self, width=16):
        super().__init__()
        self.l0, self.l1, self.l2, self.fc = (nn.Linear(3, width), nn.Linear(width, width), nn.Linear(3, width),
                                              nn.Linear(width, 1))

    def forward(self, x):
        h = self.l0(x)
        identity = h
        h += self.l2(x)
        h.mul_(2.0)
        return self.fc(self.l1(torch.tanh(h)) + identity)


def test_augmented_assignment_and_inplace_multiply_change_every_alias():
    x = randn(4, 3)
    w = 16
    total = inf.serial(inf.FanOut(2), inf.parallel(dense(w, 3), dense(w, 3)), inf.FanInSum(), inf.Scale(2.0))
    hand = inf.serial(total, inf.FanOut(2), inf.parallel(inf.serial(inf.Tanh(), dense(w, w)), inf.Identity()),
                      inf.FanInSum(), dense(1, w))
    assert_same_kernel(inf.from_torch(AugmentedSkip(), x), hand, x)


class Inner(nn.Module):
    def forward(self, x):
        x.relu_()  # changes the caller's value
        return x


class InplaceInSubmodule(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.l0, self.inner, self.l1, self.fc = nn.Linear(3, width), Inner(), nn.Linear(width, width), nn.Linear(width, 1)

    def forward(self, x):
        h = self.l0(x)
        self.inner(h)
        return self.fc(self.l1(h))


def test_inplace_inside_a_submodule_changes_the_callers_value():
    x = randn(4, 3)
    hand = inf.serial(dense(16, 3), inf.Relu(), dense(16, 16), dense(1, 16))
    assert_same_kernel(inf.from_torch(InplaceInSubmodule(), x), hand, x)


class InplaceThroughView(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.l0, self.fc = nn.Linear(3, width), nn.Linear(2 * width, 1)

    def forward(self, x):
        h = self.l0(x)
        v = h.view(h.size(0), -1)
        v.relu_()  # changes h as well, which the concatenation reads
        return self.fc(torch.cat([h, v], dim=1))


def test_inplace_through_a_view_read_later_is_refused():
    with pytest.raises(inf.UnsupportedModuleError, match="relu_ changes view in place.*shares memory with l0"):
        inf.from_torch(InplaceThroughView())


# ------------------------------------------------------------------ 2. a value used again after a join
class ReuseAfterJoin(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.l1, self.l2, self.fc = nn.Linear(3, width), nn.Linear(3, width), nn.Linear(width, 1)

    def forward(self, x):
        a = self.l1(x)
        s = a + self.l2(x)
        return self.fc(s * a)


def test_a_value_used_again_after_a_join_is_the_limit_of_the_torch_model():
    """(a + b) * a reads a again after the join: one value of the graph, read twice; the product of the two
    correlated Gaussians is drawn from their joint law, within standard errors of the wide torch model."""
    x = randn(4, 3)
    arch = inf.from_torch(ReuseAfterJoin(512), x)
    assert isinstance(arch, inf.ValueGraph) and repr(arch).count("Dense(") == 3  # l1 once, not a copy per path
    drawn = arch.kernel(x)
    mc = torch_monte_carlo(lambda: ReuseAfterJoin(512), x, n_samples=64, seed=40)
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(drawn, name), getattr(drawn, name + "_se"), getattr(mc, name),
                              getattr(mc, name + "_stderr")) < 4.0


class Recompute(nn.Module):
    """relu(h) feeds both factors of the product, but it has no weights of its own: recomputing it in each
    branch from the shared h is exact, and l3's fresh weights make the factors independent."""

    def __init__(self, width=256):
        super().__init__()
        self.l0, self.l1, self.l2, self.l3 = (nn.Linear(3, width), nn.Linear(width, width), nn.Linear(width, width),
                                              nn.Linear(width, width))
        self.fc = nn.Linear(width, 1)

    def forward(self, x):
        h = self.l0(x)
        a = torch.relu(h)
        c = self.l1(a) + self.l2(h)
        return self.fc(c * self.l3(a))


def test_deterministic_values_recomputed_in_two_branches_are_the_limit():
    x = randn(4, 3)
    arch = inf.from_torch(Recompute(), x)
    assert_within_standard_errors(arch.kernel(x), torch_monte_carlo(Recompute, x, n_samples=48))


# ------------------------------------------------------------------ 3. nn.Linear on (N, L, C)
class TokenMLP(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.l, self.fc = nn.Linear(3, width), nn.Linear(5 * width, 1)

    def forward(self, x):
        return self.fc(torch.relu(self.l(x)).flatten(1))


class TokenMean(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.l, self.fc = nn.Linear(3, width), nn.Linear(5, 1)

    def forward(self, x):
        return self.fc(self.l(x).mean(-1))


@pytest.mark.parametrize("with_example", [True, False])
def test_a_mean_over_the_channels_of_tokens_is_refused(with_example):
    x = randn(2, 5, 3)
    # with an example the Linear reads (N, L, C) tokens and the mean over their channels has no counterpart;
    # without, the mean is refused for want of the axes' meaning
    with pytest.raises(inf.UnsupportedModuleError, match=r"mean.*(no infinite-width counterpart|example_input)"):
        inf.from_torch(TokenMean(), x if with_example else None).kernel(x)


def test_a_linear_on_tokens_is_a_per_token_layer_and_without_an_example_is_refused():
    x = randn(3, 5, 3)
    make = lambda: TokenMLP(width=256)  # noqa: E731
    arch = inf.from_torch(make().double(), x)  # the example shows the Linear reads (N, L, C): channels last
    assert_within_standard_errors(arch.kernel(x), torch_monte_carlo(make, x, n_samples=48))
    with pytest.raises(inf.UnsupportedModuleError, match=r"l \(Linear\).*last axis"):
        inf.from_torch(make()).kernel(x)  # without one, a Linear on several axes is refused


# ------------------------------------------------------------------ 4. constructor arguments
def test_avgpool_divisor_override_is_a_sum_pool():
    x = randn(3, 1, 6, 6)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AvgPool2d(2, divisor_override=1), nn.Flatten(), nn.Linear(8 * 4, 1))
    conv = inf.Conv(8, (3, 3), padding="VALID", w_std=3 ** -0.5, b_std=std(9), parameterization="standard")
    hand = inf.serial(conv, inf.SumPool(2, stride=2), inf.Flatten(), dense(1, 32))
    assert_same_kernel(inf.from_torch(model, x), hand, x)
    model[1] = nn.AvgPool2d(2, divisor_override=3)  # the window's sum / 3 = average x 4/3
    hand = inf.serial(conv, inf.AvgPool(2, stride=2), inf.Scale(4 / 3), inf.Flatten(), dense(1, 32))
    assert_same_kernel(inf.from_torch(model, x), hand, x)


# ------------------------------------------------------------------ 14. reshape idioms, scalars, named refusals
class Views(nn.Module):
    def __init__(self, how, width=4):
        super().__init__()
        self.c, self.fc, self.how = nn.Conv2d(1, width, 3), nn.Linear(width * 16, 1), how

    def forward(self, x):
        h = self.c(x)
        if self.how == "shape":
            h = h.view(x.shape[0], -1)
        elif self.how == "size":
            h = h.reshape(h.size(0), -1)
        elif self.how == "minus-one":
            h = h.view(-1, 64)
        elif self.how == "size-list":
            h = h.view(h.size()[0], -1)
        else:  # size(1) is not the batch size
            h = h.view(h.size(1), -1)
        return self.fc(h)


@pytest.mark.parametrize("how", ["shape", "size", "minus-one", "size-list"])
def test_the_common_flatten_idioms_are_flatten(how):
    x = randn(2, 1, 6, 6)
    conv = inf.Conv(4, (3, 3), padding="VALID", w_std=3 ** -0.5, b_std=std(9), parameterization="standard")
    assert_same_kernel(inf.from_torch(Views(how), x), inf.serial(conv, inf.Flatten(), dense(1, 64)), x)


def test_a_view_that_changes_the_batch_is_refused():
    with pytest.raises(inf.UnsupportedModuleError, match="view: reshape to .* keeps the batch"):
        inf.from_torch(Views("wrong"), randn(4, 1, 6, 6))


class Scalars(nn.Module):
    def __init__(self, width=256):
        super().__init__()
        self.l, self.m, self.fc = nn.Linear(3, width), nn.Linear(3, width), nn.Linear(width, 1)

    def forward(self, x):
        return self.fc(torch.erf(self.l(x) * 2 - self.m(x) / 4))


def test_scalar_multiples_and_differences_of_vectors_are_the_limit():
    x = randn(4, 3)
    arch = inf.from_torch(Scalars(), x)
    assert_within_standard_errors(arch.kernel(x), torch_monte_carlo(Scalars, x, n_samples=48))


def test_correlated_branch_refusals_name_the_torch_node():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.l, self.fc = nn.Linear(3, 8), nn.Linear(8, 1)

        def forward(self, x):
            h = torch.relu(self.l(x))
            return self.fc(h + h)

    # h + h of one value: its joint law with itself is drawn (infinet.engine.laws): 2 h, within its errors
    x = randn(4, 3)
    twice = inf.from_torch(Twice(), x).kernel(x)
    exact = inf.serial(inf.Dense(8, 1 / 3**0.5, 1 / 3, parameterization="standard"), inf.Relu(), inf.Scale(2.0),
                       inf.Dense(1, 1 / 3**0.5, 1 / (3 * 8) ** 0.5, parameterization="standard")).kernel(x)
    assert twice.sampled
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(twice, name), getattr(twice, name + "_se"), getattr(exact, name)) < 4.0

    class FromInput(nn.Module):  # the raw input is no Gaussian value: its sum with itself has no counterpart
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(x + x)

    with pytest.raises(inf.UnsupportedModuleError, match=r"torch node add.*FanInSum\(\) \(torch node add\).*correlated"):
        inf.from_torch(FromInput(), randn(2, 3))
    arch = inf.from_torch(FromInput())  # without an example, the kernel's own check names the node
    with pytest.raises(ValueError, match=r"FanInSum\(\) \(torch node add\)"):
        arch.kernel(randn(2, 3))


def test_refusals_name_the_node_and_module():
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.ReLU())
            self.fc = nn.Linear(8, 1)

        def forward(self, x):
            return self.fc(self.body(x))

    with pytest.raises(inf.UnsupportedModuleError, match=r"torch node body_3 \(body.3\): Relu\(\) needs a Gaussian"):
        inf.from_torch(Deep(), randn(2, 3))


def test_a_module_with_weights_called_twice_is_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.l, self.fc = nn.Linear(8, 8), nn.Linear(8, 1)
            self.first = nn.Linear(3, 8)

        def forward(self, x):
            return self.fc(self.l(torch.relu(self.l(self.first(x)))))

    with pytest.raises(inf.UnsupportedModuleError, match=r"l \(Linear\) is called 2 times \(l, l_1\)"):
        inf.from_torch(Tied())


def test_from_torch_does_not_change_the_model_or_its_input():
    model = InplaceSkip(width=8)
    x = randn(4, 3)
    before = x.clone()
    inf.from_torch(model, x)
    assert torch.equal(x, before) and model.relu.inplace


# ------------------------------------------------------------------ 4. every constructor argument, enumerated
class _Wrapped(nn.Module):
    """``body`` then the readout ``fc`` (what tests._torch_models.torch_monte_carlo integrates)."""

    def __init__(self, body: nn.Module, features: int):
        super().__init__()
        self.body, self.fc = body, nn.Linear(features, 1)

    def forward(self, x):
        return self.fc(self.body(x))


W = 96
IMAGE, VECTOR, SEQUENCE = (3, 2, 5, 5), (3, 3), (3, 4, 3)


def TOKENS(seed):
    """Three sequences of 4 token indices below 6, two sharing tokens, with the padding token 0 (and 5, the last)."""
    x = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(seed))
    x[1, :2], x[2, 0], x[2, 3] = x[0, :2], 0, 5
    return x


class _First(nn.Module):
    """The first of a module's outputs (MaxPool with return_indices)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


class _LastStep(nn.Module):
    """A batch-first recurrent module's output at the last step."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, _ = self.rnn(x)
        return out[:, -1]


class _SelfAttention(nn.Module):
    """attn(x, x, x)[0]: an nn.MultiheadAttention used for self-attention."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x)[0]


class _MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(1)


def _token_body(module):
    """Tokens (N, L, 3) projected to W channels by a Linear (torch's acts on the last axis), ``module``, then the
    mean over tokens."""
    return nn.Sequential(nn.Linear(3, W), module, _MeanTokens())


def _encoder_layer(**kw):
    return nn.TransformerEncoderLayer(**{"d_model": W, "nhead": 4, "dim_feedforward": W, "dropout": 0.0,
                                         "batch_first": True, **kw})


def _table(kw):
    return {**kw, "_weight": torch.randn(6, W)} if kw.get("_weight") == "random" else kw


def _conv_body(module):
    return nn.Sequential(nn.Conv2d(2, W, 3, padding=1), nn.ReLU(), module, nn.Flatten())


def _vector_body(module):
    return nn.Sequential(nn.Linear(3, W), module)


#: class -> [(non-default constructor arguments, body builder, input shape)]; every argument of every class
#: that from_torch maps appears here with a value other than its default, or among STRUCTURAL
ARGUMENT_CASES = {
    nn.Linear: [({"bias": False}, lambda kw: nn.Sequential(nn.Linear(3, W, **kw), nn.ReLU()), VECTOR)],
    nn.Conv2d: [(kw, lambda kw: nn.Sequential(nn.Conv2d(2, W, **{"kernel_size": 3, **kw}), nn.ReLU(), nn.Flatten()),
                 IMAGE) for kw in ({"stride": 2}, {"padding": 1}, {"padding": "same"}, {"padding": "valid"},
                                   {"dilation": 2}, {"groups": 2}, {"bias": False},
                                   {"padding": 1, "padding_mode": "circular"}, {"padding": 1, "padding_mode": "reflect"},
                                   {"kernel_size": (1, 3)}, {"stride": 2, "padding": 1})],
    nn.ConvTranspose2d: [(kw, lambda kw: nn.Sequential(nn.ConvTranspose2d(2, W, **{"kernel_size": 2, **kw}),
                                                       nn.ReLU(), nn.Flatten()), IMAGE)
                         for kw in ({"stride": 2}, {"bias": False}, {"dilation": 2}, {"padding": 1},
                                    {"stride": 2, "output_padding": 1}, {"groups": 2}, {"padding_mode": "zeros"})],
    nn.AvgPool2d: [(kw, lambda kw: _conv_body(nn.AvgPool2d(**{"kernel_size": 2, **kw})), IMAGE)
                   for kw in ({"stride": 1}, {"padding": 1}, {"ceil_mode": True}, {"count_include_pad": False},
                              {"divisor_override": 1}, {"divisor_override": 3})],
    nn.AdaptiveAvgPool2d: [({"output_size": 1}, lambda kw: _conv_body(nn.AdaptiveAvgPool2d(**kw)), IMAGE),
                           ({"output_size": 2}, lambda kw: _conv_body(nn.AdaptiveAvgPool2d(**kw)), IMAGE)],
    nn.Flatten: [({"start_dim": 2}, lambda kw: nn.Sequential(nn.Conv2d(2, W, 3), nn.ReLU(), nn.Flatten(**kw)), IMAGE),
                 ({"end_dim": 2}, lambda kw: nn.Sequential(nn.Conv2d(2, W, 3), nn.ReLU(), nn.Flatten(**kw)), IMAGE)],
    nn.Dropout: [({"p": 0.3}, lambda kw: _vector_body(nn.Sequential(nn.ReLU(), nn.Dropout(**kw).eval())), VECTOR),
                 ({"inplace": True}, lambda kw: _vector_body(nn.Sequential(nn.ReLU(), nn.Dropout(**kw).eval())),
                  VECTOR)],
    nn.LayerNorm: [(kw, lambda kw: nn.Sequential(nn.Linear(3, W), nn.LayerNorm(W, **kw), nn.Linear(W, W), nn.Tanh()),
                    VECTOR) for kw in ({"eps": 0.1, "elementwise_affine": False}, {"elementwise_affine": True},
                                       {"bias": False, "elementwise_affine": False})],
    nn.LeakyReLU: [({"negative_slope": 0.2}, lambda kw: _vector_body(nn.LeakyReLU(**kw)), VECTOR),
                   ({"inplace": True}, lambda kw: _vector_body(nn.LeakyReLU(**kw)), VECTOR)],
    nn.ELU: [({"alpha": 0.5}, lambda kw: _vector_body(nn.ELU(**kw)), VECTOR),
             ({"inplace": True}, lambda kw: _vector_body(nn.ELU(**kw)), VECTOR)],
    nn.GELU: [({"approximate": "tanh"}, lambda kw: _vector_body(nn.GELU(**kw)), VECTOR)],
    nn.Softplus: [({"beta": 2.0}, lambda kw: _vector_body(nn.Softplus(**kw)), VECTOR),
                  ({"threshold": 0.5}, lambda kw: _vector_body(nn.Softplus(**kw)), VECTOR)],
    nn.MaxPool2d: [(kw, lambda kw: _conv_body(nn.MaxPool2d(**{"kernel_size": 2, **kw})), IMAGE)
                   for kw in ({"stride": 1}, {"padding": 1}, {"kernel_size": 3, "stride": 2, "ceil_mode": True},
                              {"dilation": 2})]
    + [({"return_indices": True}, lambda kw: _conv_body(_First(nn.MaxPool2d(2, **kw))), IMAGE)],
    nn.BatchNorm2d: [(kw, lambda kw: nn.Sequential(nn.Conv2d(2, W, 3, padding=1), nn.BatchNorm2d(W, **kw),
                                                   nn.ReLU(), nn.Flatten()), IMAGE)
                     for kw in ({"eps": 0.1}, {"momentum": 0.5}, {"affine": False}, {"track_running_stats": False},
                                {"bias": False}, {"eps": 0.1, "eval": True}, {"affine": False, "eval": True})],
    nn.Upsample: [(kw, lambda kw: _conv_body(nn.Upsample(**kw)), IMAGE)
                  for kw in ({"scale_factor": 2}, {"size": 7}, {"size": 4, "mode": "bilinear"},
                             {"scale_factor": 1.5, "mode": "bilinear", "align_corners": True},
                             {"scale_factor": 1.5, "mode": "bilinear", "recompute_scale_factor": True})],
    nn.GRU: [(kw, lambda kw: _LastStep(nn.GRU(3, W, batch_first=True, **kw)), SEQUENCE)
             for kw in ({}, {"num_layers": 2}, {"bias": False}, {"bidirectional": True},
                        {"num_layers": 2, "dropout": 0.3})],
    nn.LSTM: [(kw, lambda kw: _LastStep(nn.LSTM(3, W, batch_first=True, **kw)), SEQUENCE)
              for kw in ({}, {"num_layers": 2}, {"bias": False}, {"bidirectional": True},
                         {"num_layers": 2, "dropout": 0.3}, {"proj_size": 2})],
    # "_weight": "random", a table of one's own drawn N(0, 1) for each network (what init='pytorch' assumes)
    nn.Embedding: [(kw, lambda kw: nn.Sequential(nn.Embedding(6, W, **_table(kw)), nn.ReLU(), nn.Flatten()), TOKENS)
                   for kw in ({"padding_idx": 0}, {"padding_idx": -1}, {"sparse": True}, {"_freeze": True},
                              {"_weight": "random"}, {"max_norm": 1.0}, {"norm_type": 1.0},
                              {"scale_grad_by_freq": True})],
    nn.MultiheadAttention: [(kw, lambda kw: _token_body(_SelfAttention(nn.MultiheadAttention(
        **{"embed_dim": W, "num_heads": 4, "batch_first": True, **kw}))), SEQUENCE)
        for kw in ({"bias": False}, {"dropout": 0.2}, {"dropout": 0.2, "eval": True}, {"add_bias_kv": True},
                   {"add_zero_attn": True}, {"kdim": W}, {"vdim": W}, {"batch_first": False})],
    nn.TransformerEncoderLayer: [(kw, lambda kw: _token_body(_encoder_layer(**kw)), SEQUENCE)
                                 for kw in ({"dim_feedforward": 48}, {"dropout": 0.2}, {"activation": "gelu"},
                                            {"layer_norm_eps": 0.1}, {"norm_first": True}, {"bias": False},
                                            {"batch_first": False})],
    nn.TransformerEncoder: [(kw, lambda kw: _token_body(nn.TransformerEncoder(**{"encoder_layer": _encoder_layer(),
                                                                                 "num_layers": 1, **kw})), SEQUENCE)
                            for kw in ({"num_layers": 2}, {"norm": nn.LayerNorm(W)}, {"enable_nested_tensor": False},
                                       {"mask_check": False})],
    nn.AvgPool1d: [(kw, lambda kw: nn.Sequential(nn.Conv1d(2, W, 3, padding=1), nn.ReLU(),
                                                 nn.AvgPool1d(**{"kernel_size": 2, **kw}), nn.Flatten()), (3, 2, 6))
                   for kw in ({"stride": 1}, {"padding": 1}, {"ceil_mode": True}, {"count_include_pad": False})],
}
#: arguments that every case sets (sizes): honoured by construction
STRUCTURAL = {"in_features", "out_features", "in_channels", "out_channels", "kernel_size", "normalized_shape",
              "device", "dtype", "num_features", "args", "kwargs", "eval", "batch_first", "input_size", "hidden_size",
              "num_embeddings", "embedding_dim", "embed_dim", "num_heads", "d_model", "nhead", "encoder_layer"}


def test_the_argument_cases_enumerate_every_constructor_argument():
    from infinet.engine.torch_modules import ARGUMENTS, constructor_arguments

    for cls in ARGUMENTS:
        if cls not in ARGUMENT_CASES:  # same argument lists as a tested sibling (Conv1d / Conv3d, ...)
            sibling = {nn.Conv1d: nn.Conv2d, nn.Conv3d: nn.Conv2d, nn.ConvTranspose1d: nn.ConvTranspose2d,
                       nn.ConvTranspose3d: nn.ConvTranspose2d, nn.AvgPool3d: nn.AvgPool2d,
                       nn.AdaptiveAvgPool1d: nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d: nn.AdaptiveAvgPool2d,
                       nn.MaxPool1d: nn.MaxPool2d, nn.MaxPool3d: nn.MaxPool2d, nn.BatchNorm1d: nn.BatchNorm2d,
                       nn.BatchNorm3d: nn.BatchNorm2d,
                       nn.Identity: None, nn.RNN: None}.get(cls, cls)
            assert sibling is None or sibling in ARGUMENT_CASES, cls
            if sibling is not None:
                assert set(constructor_arguments(cls)) <= set(constructor_arguments(sibling)), cls
            continue
        covered = {name for kw, _, _ in ARGUMENT_CASES[cls] for name in kw} | STRUCTURAL
        missing = set(constructor_arguments(cls)) - covered
        assert not missing, (cls.__name__, missing)


CASE_IDS = [(cls, i) for cls in ARGUMENT_CASES for i in range(len(ARGUMENT_CASES[cls]))]


@pytest.mark.parametrize("cls,i", CASE_IDS, ids=[f"{c.__name__}-{i}" for c, i in CASE_IDS])
def test_every_constructor_argument_is_honoured_or_refused(cls, i):
    kw, build, shape = ARGUMENT_CASES[cls][i]
    x = shape(i) if callable(shape) else randn(*shape, seed=i)
    evaluation = kw.get("eval", False)  # a case of the module in eval mode ("eval" is no constructor argument)
    kw = {key: value for key, value in kw.items() if key != "eval"}
    build_mode = (lambda k: build(k).eval()) if evaluation else build
    body = build_mode(kw).double()
    with torch.no_grad():
        out = body(x)
    if out.ndim != 2:  # features on several axes: the readout (a Linear) acts on the last; from_torch must refuse
        with pytest.raises(inf.UnsupportedModuleError, match="Linear|Flatten"):
            inf.from_torch(_Wrapped(body, out.shape[-1]).double(), x)
        return
    features = out.shape[1]

    def make():
        model = _Wrapped(build(kw), features)
        return model.eval() if evaluation else model

    try:
        arch = inf.from_torch(make().double(), x)
    except inf.UnsupportedModuleError as e:
        assert cls.__name__ in str(e) or "Linear" in str(e), e  # refused, naming the module
        return
    ntk = has_ntk(arch)
    kernel = arch.kernel(x, get=("nngp", "ntk") if ntk else "nngp")
    mc = torch_monte_carlo(make, x, n_samples=24, ntk=ntk)
    if kernel.sampled:
        assert_sampled_within_standard_errors(kernel, mc, ("nngp", "ntk") if ntk else ("nngp",))
    else:
        assert_within_standard_errors(kernel, mc)
