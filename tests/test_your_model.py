"""The user's own model: from_torch on models with shared values and on copies of torchvision's resnet18,
vgg11_bn and alexnet (tests/_vision_models.py), against Monte Carlo of the torch models themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infinet as inf
from tests._statistics import max_combined_z
from tests._torch_models import torch_monte_carlo
from tests._vision_models import alexnet, resnet18, vgg11_bn

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def assert_limit(arch, x, make, n_samples=48, seed=100, limit=4.0):
    """The kernel of ``arch`` and Monte Carlo of the torch models ``make()`` agree within ``limit`` combined
    standard errors on every entry, NNGP and NTK."""
    kernel = arch.kernel(x)
    mc = torch_monte_carlo(make, x, n_samples=n_samples, seed=seed)
    for name in ("nngp", "ntk"):
        se = getattr(kernel, name + "_se")
        z = max_combined_z(getattr(kernel, name), torch.zeros_like(getattr(kernel, name)) if se is None else se,
                           getattr(mc, name), getattr(mc, name + "_stderr"))
        assert z < limit, (name, z, getattr(kernel, name), getattr(mc, name))
    return kernel


# ------------------------------------------------------------------ models whose values meet again
class GatedUnit(nn.Module):
    """a * sigmoid(b), a and b from one input (a gated linear unit)."""

    def __init__(self, width=384):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, width), nn.Linear(4, width), nn.Linear(width, 1)

    def forward(self, x):
        return self.fc(self.a(x) * torch.sigmoid(self.b(x)))


class SiluByHand(nn.Module):
    """h * sigmoid(h): one value read twice, which is SiLU of h."""

    def __init__(self, width=384):
        super().__init__()
        self.l1, self.fc = nn.Linear(4, width), nn.Linear(width, 1)

    def forward(self, x):
        h = self.l1(x)
        return self.fc(h * torch.sigmoid(h))


class PostActivationResidual(nn.Module):
    """relu(f(h) + h), h itself the output of a ReLU: torchvision's BasicBlock without normalization."""

    def __init__(self, width=384):
        super().__init__()
        self.l1, self.l2, self.l3, self.fc = (nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, width),
                                              nn.Linear(width, 1))

    def forward(self, x):
        h = torch.relu(self.l1(x))
        y = torch.relu(self.l3(torch.relu(self.l2(h))) + h)
        return self.fc(y + h)  # h read again after the join that made y


class DenseBlock(nn.Module):
    """DenseNet-style: each convolution reads the concatenation of every earlier output (ReLU before each)."""

    def __init__(self, width=128):
        super().__init__()
        self.c0 = nn.Conv2d(2, width, 3, padding=1)
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(2 * width, width, 3, padding=1)
        self.fc = nn.Linear(3 * width * 16, 1)

    def forward(self, x):
        x0 = self.c0(x)
        y1 = self.c1(F.relu(x0))
        y2 = self.c2(F.relu(torch.cat([x0, y1], 1)))
        return self.fc(torch.flatten(F.relu(torch.cat([x0, y1, y2], 1)), 1))


@pytest.mark.parametrize("cls, shape", [(GatedUnit, (4, 4)), (SiluByHand, (4, 4)), (PostActivationResidual, (4, 4)),
                                        (DenseBlock, (3, 2, 4, 4))], ids=lambda v: getattr(v, "__name__", ""))
def test_models_with_shared_values_are_the_limit_of_the_torch_model(cls, shape):
    x = randn(*shape, seed=1)
    arch = inf.from_torch(cls().double(), x)
    assert_limit(arch, x, cls)


def test_h_times_sigmoid_h_is_silu():
    """The joint law of h with itself (drawn) gives SiLU's kernel (exact, by quadrature) within its errors."""
    x = randn(5, 4, seed=2)
    drawn = inf.from_torch(SiluByHand(8).double(), x).kernel(x)
    exact = inf.from_torch(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1)).double(), x).kernel(x)
    assert drawn.sampled and exact.nngp_se is None
    for name in ("nngp", "ntk"):
        assert max_combined_z(getattr(drawn, name), getattr(drawn, name + "_se"), getattr(exact, name)) < 4.0


def test_concatenated_values_take_the_activation_each():
    """ReLU of a concatenation is the concatenation of ReLUs: from_torch writes it so (each part is Gaussian)."""
    arch = inf.from_torch(DenseBlock(8).double(), randn(2, 2, 4, 4))
    assert isinstance(arch, inf.ValueGraph)
    assert all(not (isinstance(layer, inf.Relu) and isinstance(arch.nodes[inputs[0] - 1][0], inf.FanInConcat))
               for layer, inputs in arch.nodes if inputs[0] > 0)


# ------------------------------------------------------------------ copies of torchvision's models
def _readout(model):
    """torch_monte_carlo reads the readout as ``model.fc`` (vgg and alexnet end in classifier[6])."""
    if not hasattr(model, "fc"):
        model.fc = model.classifier[-1]
    return model


def _psd_within_errors(kernel, name="nngp"):
    k, se = getattr(kernel, name), getattr(kernel, name + "_se")
    assert torch.isfinite(k).all() and torch.equal(k, k.T)
    lowest = float(torch.linalg.eigvalsh(k).min())
    assert lowest > -4 * (0.0 if se is None else float(torch.linalg.matrix_norm(se, ord=2))), lowest


def test_the_vision_copies_map_module_for_module():
    resnet = inf.from_torch(resnet18(num_classes=1).eval(), randn(2, 3, 32, 32).float())
    text = repr(resnet)
    assert isinstance(resnet, inf.ValueGraph)
    assert text.count("Conv(") == 20 and text.count("MaxPool(3, stride=2, padding=1, activation=Relu()") == 1
    assert text.count("FanInSum()") == 8 and "padding=(3, 3)" in text and "stride=(2, 2)" in text
    assert text.count("ElementwiseAffine(") == 20  # every BatchNorm (bn1 inside the MaxPool) with its parameters
    vgg = repr(inf.from_torch(vgg11_bn(num_classes=1).eval(), randn(2, 3, 32, 32).float()))
    assert vgg.count("MaxPool(2, stride=2, padding='VALID', activation=Relu()") == 5 and "AdaptiveAvgPool((7, 7))" in vgg
    alex = repr(inf.from_torch(alexnet(num_classes=1), randn(2, 3, 64, 64).float()))
    assert alex.count("activation=Relu()") == 3 and "AdaptiveAvgPool((6, 6))" in alex and "Dropout(0.5" in alex


@pytest.mark.parametrize("make, size, options", [
    (lambda: alexnet(num_classes=1), 64, {}),
    (lambda: resnet18(num_classes=1).eval(), 16, {}),
    pytest.param(lambda: vgg11_bn(num_classes=1).eval(), 32, {"samples": 32, "replicates": 4}, marks=pytest.mark.slow),
    (lambda: vgg11_bn(num_classes=1), 32, {"samples": 64, "replicates": 4}),
], ids=["alexnet", "resnet18", "vgg11_bn", "vgg11_bn-train"])
def test_kernels_of_the_vision_copies_are_finite_symmetric_and_psd(make, size, options):
    x = randn(3, 3, size, size, seed=3)
    kernel = inf.from_torch(make().double(), x, **options).kernel(x)
    _psd_within_errors(kernel, "nngp")
    _psd_within_errors(kernel, "ntk")


@pytest.mark.slow
@pytest.mark.parametrize("make, size", [(lambda: resnet18(num_classes=1).eval(), 32),
                                        (lambda: vgg11_bn(num_classes=1).eval(), 32)], ids=["resnet18", "vgg11_bn"])
def test_kernels_of_the_vision_copies_on_cifar_sized_images(make, size):
    x = randn(3, 3, size, size, seed=3)
    kernel = inf.from_torch(make().double(), x).kernel(x)
    _psd_within_errors(kernel, "nngp")
    _psd_within_errors(kernel, "ntk")


@pytest.mark.parametrize("make, size", [
    pytest.param(lambda: _readout(alexnet(num_classes=1)), 64, marks=pytest.mark.slow),  # 57M parameters: 80 s
    (lambda: resnet18(num_classes=1).eval(), 16),
], ids=["alexnet", "resnet18"])
def test_the_vision_copies_are_the_limit_of_their_torch_models(make, size):
    x = randn(2, 3, size, size, seed=4)
    assert_limit(inf.from_torch(make().double(), x), x, make, n_samples=24)


def test_train_mode_copies_normalize_over_the_batch():
    """In training mode (as built) BatchNorm normalizes over the batch the kernel is computed for: its ReLU and the
    max pooling after it are taken inside its sampler, and the residual sums read its draws. Train-mode BatchNorm
    over a few values (ResNet's last stage: batch x 1 position) has heavy-tailed gradients, so the NTK's errors are
    large on both sides; the comparison still holds within them."""
    x = randn(3, 3, 16, 16, seed=4)
    arch = inf.from_torch(resnet18(num_classes=1).double(), x)
    assert "pool=MaxPool(3, stride=2, padding=1" in repr(arch) and "BatchNorm(activation=Relu()" in repr(arch)
    assert_limit(arch, x, lambda: resnet18(num_classes=1), n_samples=16)
    vgg = repr(inf.from_torch(vgg11_bn(num_classes=1), randn(2, 3, 32, 32).float()))
    assert vgg.count("pool=MaxPool(2, stride=2") == 5


class TransformerClassifier(nn.Module):
    """A sequence classifier written with nn.TransformerEncoder (standard softmax attention, 1/sqrt(d) logits) after
    an input projection, averaged over tokens."""

    def __init__(self, d=256, heads=8, layers=2, norm_first=False, features=6):
        super().__init__()
        self.proj = nn.Linear(features, d)
        layer = nn.TransformerEncoderLayer(d, heads, d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d) if norm_first else None)
        self.fc = nn.Linear(d, 1)

    def forward(self, x):
        return self.fc(self.encoder(self.proj(x)).mean(1))


class VisionTransformer(nn.Module):
    """A ViT in miniature: 2x2 patches by a strided Conv2d, flattened to tokens, a class token and a positional
    embedding, a transformer encoder, read at the class token."""

    def __init__(self, d=256, heads=8, patches=4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.3)
        self.pos = nn.Parameter(torch.randn(1, patches + 1, d) * 0.3)
        layer = nn.TransformerEncoderLayer(d, heads, d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, norm=nn.LayerNorm(d))
        self.fc = nn.Linear(d, 1)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)  # (N, patches, d)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1) + self.pos
        return self.fc(self.encoder(h)[:, 0])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_a_transformer_classifier_is_the_limit_of_its_torch_model(norm_first):
    """nn.TransformerEncoder maps to ScaledDotProductAttention inside the graph of values its layers compute; the
    kernel takes the model's own (N, L, features) inputs."""
    x = randn(3, 5, 6, seed=7)
    x[1] = 0.7 * x[0] + 0.5 * x[1]

    def make():
        return TransformerClassifier(norm_first=norm_first).eval()

    arch = inf.from_torch(make().double(), x)
    assert repr(arch).count("ScaledDotProductAttention(") == 2
    assert_limit(arch, x, make, n_samples=32)


def test_a_vision_transformer_on_image_patches_is_the_limit_of_its_torch_model():
    x = randn(3, 3, 4, 4, seed=8)
    assert_limit(inf.from_torch(VisionTransformer().double(), x), x, lambda: VisionTransformer(), n_samples=32)


def test_a_transformer_on_raw_features_is_refused():
    """Without an input projection the residual stream is the raw input, of finitely many features: no limit."""
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.fc = nn.Linear(8, 1)

        def forward(self, x):
            return self.fc(self.encoder(x).mean(1))

    with pytest.raises(inf.UnsupportedModuleError, match="LayerNorm.*Gaussian input"):
        inf.from_torch(Raw(), randn(2, 5, 8).float())


@pytest.mark.slow
def test_vgg11_bn_in_training_mode_is_the_limit_of_its_torch_model():
    """vgg11_bn as built (train mode), its classifier 512 wide (the constructor's ``hidden``), on CIFAR-sized images."""
    x = randn(2, 3, 32, 32, seed=5)

    def make():
        return _readout(vgg11_bn(num_classes=1, hidden=512))

    assert_limit(inf.from_torch(make().double(), x), x, make, n_samples=16)


# ------------------------------------------------------------------ widened copies (channel counts multiplied)
@pytest.mark.parametrize("make, size, n_samples", [
    pytest.param(lambda: resnet18(num_classes=1, width=2).eval(), 16, 16, marks=pytest.mark.slow),  # 80 s
    pytest.param(lambda: _readout(alexnet(num_classes=1, width=2)), 64, 12, marks=pytest.mark.slow),
    pytest.param(lambda: _readout(vgg11_bn(num_classes=1, width=2, hidden=1024)).eval(), 32, 12,
                 marks=pytest.mark.slow),
    pytest.param(lambda: _readout(vgg11_bn(num_classes=1, width=2, hidden=1024)), 32, 12, marks=pytest.mark.slow),
], ids=["resnet18-eval", "alexnet", "vgg11_bn-eval", "vgg11_bn-train"])
def test_widened_copies_are_the_limit_of_their_torch_models(make, size, n_samples):
    """The copies with every channel count doubled (the structure unchanged): Monte Carlo of the widened torch
    models agrees with their kernel within 4 combined standard errors, NNGP and NTK."""
    x = randn(2, 3, size, size, seed=6)
    assert_limit(inf.from_torch(make().double(), x), x, make, n_samples=n_samples)
