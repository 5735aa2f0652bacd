"""Empirical NTK of arbitrary PyTorch models against J J^T built from per-example gradients."""

import math

import pytest
import torch
from torch import nn

import infinet as inf
from infinet.empirical import EmpiricalKernelError, choose_implementation, empirical_nngp, empirical_ntk

F64 = torch.float64


def explicit_ntk(model, x1, x2):
    """Theta[a, b, o, p] from per-example, per-output gradients by plain autograd (no torch.func)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(x):
        rows = []
        for a in range(len(x)):
            out = model(x[a: a + 1]).reshape(-1)
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[o], params, retain_graph=True,
                                                                                         allow_unused=False)])
                                     for o in range(len(out))]))
        return torch.stack(rows)  # (N, O, P)

    j1, j2 = grads(x1), grads(x2)
    return torch.einsum("aoq,bpq->abop", j1, j2)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.block(h)
        return self.out(h + self.block(h))  # the block used twice: shared weights


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: (N, T, 4)
        h = self.norm(self.embed(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 3)).double()
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                        nn.Linear(16, 3)).double()
    built = inf.serial(inf.Dense(12, w_std=1.5, b_std=0.1), inf.Relu(), inf.Dense(3, w_std=1.5, b_std=0.1)).build(5, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    return {
        "mlp": (mlp, torch.randn(4, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)),
        "cnn": (cnn, torch.randn(3, 2, 4, 4, generator=g, dtype=F64), torch.randn(2, 2, 4, 4, generator=g, dtype=F64)),
        "residual-shared": (Residual().double(), torch.randn(4, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)),
        "layernorm-attention": (AttentionNet().double().eval(), torch.randn(3, 5, 4, generator=g, dtype=F64),
                                torch.randn(2, 5, 4, generator=g, dtype=F64)),
        "infinet-dense": (built, torch.randn(4, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)),
    }


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("implementation", ["jacobian", "ntvp", "structured", "auto"])
def test_empirical_ntk_equals_explicit_jacobian_product(name, implementation):
    model, x1, x2 = models()[name]
    want = explicit_ntk(model, x1, x2)
    if name == "layernorm-attention" and implementation == "ntvp":  # fused attention has no forward-mode AD
        with pytest.raises(EmpiricalKernelError, match="forward-mode"):
            empirical_ntk(model, x1, x2, implementation=implementation)
        return
    got = empirical_ntk(model, x1, x2, implementation=implementation)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max())
    traced = empirical_ntk(model, x1, x2, implementation=implementation, trace=True)
    assert torch.allclose(traced, want.diagonal(dim1=2, dim2=3).mean(-1), rtol=0, atol=1e-10 * float(want.abs().max()))
    sym = empirical_ntk(model, x1, implementation=implementation)
    assert torch.allclose(sym, explicit_ntk(model, x1, x1), rtol=0, atol=1e-10 * float(want.abs().max()))


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp", "structured"])
def test_chunking_to_a_memory_budget_gives_the_same_kernel(implementation):
    model, x1, x2 = models()["mlp"]
    full = empirical_ntk(model, x1, x2, implementation=implementation)
    small = empirical_ntk(model, x1, x2, implementation=implementation, max_memory=2000)
    assert torch.allclose(full, small, rtol=1e-12, atol=0)


def test_empirical_nngp():
    model, x1, x2 = models()["mlp"]
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
    assert torch.allclose(empirical_nngp(model, x1, x2, trace=True), f1 @ f2.T / 3)
    assert empirical_nngp(model, x1, x2).shape == (4, 3, 3, 3)


def test_clear_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    x = torch.randn(5, 3)
    with pytest.raises(EmpiricalKernelError, match=r"training mode.*model.eval\(\)"):
        empirical_ntk(model, x)
    model.eval()
    assert empirical_ntk(model, x).shape == (5, 5, 1, 1)

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls.add_(1)
            return self.lin(x)

    with pytest.raises(EmpiricalKernelError, match="in place"):
        empirical_ntk(Counter(), x, implementation="jacobian")
    with pytest.raises(ValueError, match="unknown implementation"):
        empirical_ntk(model, x, implementation="fast")
    with pytest.raises(ValueError, match="same per-example shape"):
        empirical_ntk(model, x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        empirical_ntk(model, torch.full((2, 3), math.nan))
    with pytest.raises(ValueError, match="unknown parameter"):
        empirical_ntk(model, x, params=["nope"])


def test_auto_prefers_structured_for_mlps_and_not_for_convolutions():
    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    x = torch.randn(64, 784)
    assert choose_implementation(mlp, x, x) == "structured"


def _best_time(fn, repeats=3):
    import time

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_auto_picks_the_fastest_implementation_on_the_benchmark_models(model_name):
    """The models of benchmarks/empirical_ntk.py (fewer inputs): the automatic choice must be the
    fastest implementation measured here, up to timing noise (a factor 1.5)."""
    torch.manual_seed(0)
    if model_name == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        x = torch.randn(16, 784)
    else:
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
        x = torch.randn(16, 1, 16, 16)
    chosen = choose_implementation(model, x, x)
    times = {impl: _best_time(lambda impl=impl: empirical_ntk(model, x, implementation=impl))
             for impl in ("jacobian", "ntvp", "structured")}
    assert times[chosen] <= 1.5 * min(times.values()), (chosen, times)
