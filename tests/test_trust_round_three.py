"""Regression tests of the third trust round (memory and time blow-ups, crashes, dead ends, every path):
each case failed before its fix. from_torch's cases are in test_from_torch_dataflow.py and
test_from_torch_random_models.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import infinet as inf
from infinet.engine.layers.maxpool import MaxPool

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def peak_growth_mib(body: str) -> float:
    """Run ``body`` in a fresh interpreter; the growth of its peak resident memory (MiB) over the peak after
    importing infinet and torch (ru_maxrss). A subprocess, so that no earlier test's memory counts."""
    script = "\n".join([
        "import resource, torch, infinet as inf, numpy as np",
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        textwrap.dedent(body).strip(),
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ 5. scikit-learn kernel gradients
def test_sklearn_kernel_gradient_is_exact_and_bounded_in_memory():
    from infinet.inference.sklearn_kernels import NNGPKernel

    kernel = NNGPKernel(inf.serial(inf.Dense(64, b_std=0.1), inf.Tanh(), inf.Dense(1, b_std=0.1)), w_std=1.3,
                        b_std=0.2)
    x = np.random.RandomState(0).randn(8, 3) * np.linspace(0.5, 2.0, 8)[:, None]  # unequal variances
    _, grad = kernel(x, eval_gradient=True)
    for j in range(len(kernel.theta)):  # against central differences in log-parameters
        step = 1e-5 * np.eye(len(kernel.theta))[j]
        diff = (kernel.clone_with_theta(kernel.theta + step)(x) - kernel.clone_with_theta(kernel.theta - step)(x)) / 2e-5
        assert np.abs(diff - grad[:, :, j]).max() < 1e-7 * np.abs(grad[:, :, j]).max()
    growth = peak_growth_mib("""
        from infinet.inference.sklearn_kernels import NNGPKernel
        k = NNGPKernel(inf.serial(inf.Dense(64, b_std=0.1), inf.Tanh(), inf.Dense(1, b_std=0.1)), w_std=1.3, b_std=0.2)
        x = np.random.RandomState(0).randn(30, 3) * np.linspace(0.5, 2.0, 30)[:, None]
        k(x, eval_gradient=True)
    """)
    assert growth < 1000, growth  # it was over 3 GB: every quadrature chunk's graph kept for the second pass


def test_gaussian_process_regressor_restarts_with_a_quadrature_kernel():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel

    from infinet.inference.sklearn_kernels import NNGPKernel

    rng = np.random.RandomState(1)
    x = rng.randn(12, 2)
    y = np.sin(x[:, 0]) + 0.1 * rng.randn(12)
    kernel = NNGPKernel(inf.serial(inf.Dense(32, b_std=0.1), inf.Softplus(), inf.Dense(1, b_std=0.1))) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=2, random_state=0).fit(x, y)
    assert np.isfinite(gp.log_marginal_likelihood_value_)


# ------------------------------------------------------------------ 6. empirical NTK by NTK-vector products
def test_ntvp_keeps_to_max_memory():
    body = """
        from torch import nn
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 32 * 32, 1)).double()
        x = torch.randn(60, 3, 32, 32, dtype=torch.float64)
        inf.empirical_ntk(m, x, implementation="ntvp", trace=True, max_memory=200 * 2**20)
    """
    assert peak_growth_mib(body) < 800  # 300 MiB now; 5.5 GB before: all of x1's forward values in every lane


def test_ntvp_agrees_with_the_jacobian_in_chunks():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 16, 2)).double()
    x = randn(7, 2, 6, 6)
    ref = inf.empirical_ntk(model, x, implementation="jacobian")
    small = inf.empirical_ntk(model, x, implementation="ntvp", max_memory=40_000)  # forces chunks of x1
    assert torch.allclose(small, ref, rtol=1e-10, atol=1e-12)


def test_out_of_memory_is_reported_as_such(monkeypatch):
    from torch import nn

    import infinet.finite.empirical as empirical

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 9999999999 bytes")

    monkeypatch.setattr(empirical, "jvp", no_memory)
    with pytest.raises(empirical.EmpiricalKernelError, match="ran out of memory.*smaller max_memory"):
        inf.empirical_ntk(nn.Linear(3, 1).double(), randn(4, 3), implementation="ntvp")


# ------------------------------------------------------------------ 7. quadrature activations at unequal variances
def test_quadrature_kernels_on_the_tile_pool_do_not_grow_memory():
    body = """
        net = inf.serial(inf.Dense(1, w_std=1.5, b_std=0.5), inf.Tanh(), inf.Dense(1, w_std=1.5, b_std=0.5))
        x = torch.linspace(-1, 1, 101, dtype=torch.float64)[:, None]
        torch.set_num_threads(2)  # the tile pool: two tiles at a time
        net.kernel(x, tile_size=50)
    """
    assert peak_growth_mib(body) < 1000  # 450 MiB now; 3.2 GB before, growing with every quadrature chunk


# ------------------------------------------------------------------ 8. sampled max pooling before Flatten
def test_maxpool_before_flatten_samples_only_same_position_pairs(monkeypatch):
    net = inf.serial(inf.Conv(4, 3, padding="SAME"), inf.MaxPool(2, activation=inf.Relu(), replicates=2),
                     inf.Flatten(), inf.Dense(1))
    x = randn(3, 1, 6, 6)
    seen = []
    original = MaxPool._expect
    from infinet.engine.layers import maxpool_joint

    monkeypatch.setattr(maxpool_joint, "pays", lambda *args: False)  # the window-pair estimator

    def counting(self, c11, c12, *args):
        seen.append(len(c12))
        return original(self, c11, c12, *args)

    monkeypatch.setattr(MaxPool, "_expect", counting)
    k = net.kernel(x)
    pairs = sum(seen)
    # 2 replicates x (the tile's 3 x 3 example pairs + 3 self-covariances) x 9 output positions; the full
    # layout would sample 9^2 position pairs for each: 1,944 window pairs
    assert pairs == 2 * (9 + 3) * 9, pairs
    monkeypatch.setattr(MaxPool, "_expect", original)
    full = inf.serial(inf.Conv(4, 3, padding="SAME"), inf.MaxPool(2, activation=inf.Relu(), replicates=2),
                      inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)  # the full layout: a different statistic
    assert torch.isfinite(full.nngp).all() and torch.isfinite(k.nngp).all()


def test_maxpool_diagonal_equals_the_diagonal_of_the_full_transform():
    from infinet.engine.kernel import input_kernel

    pool = inf.MaxPool(2, activation=inf.Relu())
    k = inf.Conv(3, 3, padding="SAME").kernel_fn(input_kernel(randn(3, 2, 4, 4), None, True, full=True))
    full, diag = pool.kernel_fn(k, full_out=True), pool.kernel_fn(k, full_out=False)
    ref = full.to_diagonal()
    for name in ("nngp", "ntk", "var1"):
        assert torch.allclose(getattr(diag, name), getattr(ref, name), rtol=1e-13, atol=1e-15), name


# ------------------------------------------------------------------ 9-11. crashes and dead ends
def test_gpytorch_kernels_of_networks_without_biases():
    from infinet.inference.gpytorch_kernels import NNGPKernel, NTKKernel

    net = inf.serial(inf.Dense(16, b_std=None), inf.Relu(), inf.Dense(1, b_std=None))
    x = randn(5, 3)
    for cls, name in ((NNGPKernel, "nngp"), (NTKKernel, "ntk")):
        got = cls(net)(x, x).to_dense()
        assert torch.allclose(got, getattr(net.kernel(x), name), rtol=1e-12)


def test_nngp_estimators_take_gated_networks(tmp_path):
    from infinet.estimators import NNGPClassifier, NNGPRegressor

    net = inf.serial(inf.GRU(8, samples=256), inf.Dense(1))
    x = randn(8, 2, 4).numpy()
    y = np.arange(8) % 2
    assert NNGPRegressor(net).fit(x, y.astype(float)).predict(x).shape == (8,)
    assert set(NNGPClassifier(net).fit(x, y).predict(x)) <= {0, 1}


def test_pattern2_with_x2_the_same_tensor_is_the_symmetric_kernel():
    a = (torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    x = randn(5, 3, 4)
    net = inf.serial(inf.Dense(8), inf.Relu(), inf.Aggregate(), inf.GlobalAvgPool(), inf.Dense(1))
    same = net.kernel(x, x, pattern=a, pattern2=a)
    assert torch.equal(same.nngp, net.kernel(x, pattern=a).nngp)
    other = net.kernel(x, x, pattern=a, pattern2=1.0 - a)  # x2 = x1 with other graphs: a kernel of its own
    assert not torch.allclose(other.nngp, same.nngp)


# ------------------------------------------------------------------ 12. the independent check's architecture
def _case12(width, trunk_activation, parameterization="standard"):
    return inf.serial(
        inf.Conv(width, (1, 1), w_std=1.714, b_std=0.034), trunk_activation,
        inf.FanOut(2),
        inf.parallel(inf.serial(inf.Dense(width, w_std=1.144, b_std=None), inf.Abs()),
                     inf.serial(inf.Conv(width, (3, 3), padding="SAME", w_std=0.554, b_std=0.0),
                                inf.ExpNormalized(gamma=1.514, shift=-1.143))),
        inf.FanInProd(), inf.Dense(width, w_std=1.282, b_std=None, parameterization=parameterization),
        inf.LayerNorm("channels_space"), inf.Gelu(), inf.GlobalAvgPool(), inf.Dense(1, w_std=1.42, b_std=0.026))


def test_case_12_architecture_agrees_with_wide_networks():
    """The check's architecture with ReLU in place of RectifiedMonomial(3), and its standard-parameterization
    Dense in the NTK parameterization, agrees at width 256, NNGP and NTK: every layer of it (the product of
    branches of one trunk, ExpNormalized, LayerNorm over C, H, W, Gelu, pooling) is right. The check's two
    disagreements are finite-width effects (benchmarks/case12_convergence.py): relu(x)^3 features converge
    slowly (their kurtosis is 92), and a standard-parameterization Dense makes the NTK n K + w^2 Theta, whose
    n K term carries n times the O(1/n) finite-width bias of K: an O(1) offset that no width removes, beside
    standard errors that shrink with the number of networks sampled."""
    from tests._statistics import assert_within_standard_errors

    x = randn(3, 2, 4, 5)
    net = _case12(256, inf.Relu(), parameterization="ntk")
    assert_within_standard_errors(net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=96, seed=1))


# ------------------------------------------------------------------ 13. every path: stores and the CLI
def test_stores_take_masks_graphs_and_sampled_layers(tmp_path):
    zarr = pytest.importorskip("zarr")
    from infinet.scale import kernel_to_store

    x = randn(7, 3, 6)
    lengths = torch.tensor([6, 4, 5, 3, 6, 2, 6])
    rnn = inf.serial(inf.Recurrent(inf.Relu(), 8, return_sequence=False), inf.Dense(1))
    kernel_to_store(rnn, x, tmp_path / "masked", lengths=lengths, tile_size=3, workers=0)
    ref = rnn.kernel(x, lengths=lengths)
    store = zarr.open_group(str(tmp_path / "masked"))
    for name in ("nngp", "ntk"):
        assert np.allclose(store[name][...], getattr(ref, name).numpy(), rtol=1e-12, atol=1e-15)
    graphs = (torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    xg = randn(5, 3, 4, seed=2)
    gnn = inf.serial(inf.Dense(8), inf.Relu(), inf.Aggregate(), inf.GlobalAvgPool(), inf.Dense(1))
    kernel_to_store(gnn, xg, tmp_path / "graphs", x2=xg[:3], pattern=graphs, pattern2=graphs[:3], tile_size=2,
                    workers=0)
    assert np.allclose(zarr.open_group(str(tmp_path / "graphs"))["nngp"][...],
                       gnn.kernel(xg, xg[:3], pattern=graphs, pattern2=graphs[:3]).nngp.numpy(), rtol=1e-12)
    gru = inf.serial(inf.GRU(8, samples=256, estimator="pairs"), inf.Dense(1))
    xs = randn(5, 2, 4, seed=3)
    kernel_to_store(gru, xs, tmp_path / "sampled", get="nngp", tile_size=2, workers=0)
    ref = gru.kernel(xs, get="nngp")
    store = zarr.open_group(str(tmp_path / "sampled"))
    assert np.allclose(store["nngp"][...], ref.nngp.numpy(), rtol=1e-12, atol=1e-15)
    assert np.allclose(store["nngp_se"][...], ref.nngp_se.numpy(), rtol=1e-12, atol=1e-15)
    from infinet.scale.store import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="data"):
        kernel_to_store(rnn, x, tmp_path / "masked", lengths=torch.tensor([6, 6, 6, 6, 6, 6, 1]), tile_size=3,
                        workers=0)  # other lengths: another job, never mixed into the store


def _cli(*args):
    from typer.testing import CliRunner

    from infinet.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_kernel_takes_lengths_and_graphs_from_the_data_file(tmp_path):
    from infinet.app.datasets import load

    rng = np.random.RandomState(0)
    x = rng.randn(30, 3, 6)
    lengths = rng.randint(2, 7, 30)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 0.0
    y = rng.randint(0, 2, 30)
    data = tmp_path / "seq.npz"
    np.savez(data, x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:], lengths_train=lengths[:20],
             lengths_test=lengths[20:])
    spec = "Recurrent(Relu(), 8, return_sequence=False) > Dense(1)"
    result = _cli("kernel", "-a", spec, "-d", str(data), "-o", str(tmp_path / "k.npz"))
    assert result.exit_code == 0, result.output
    ds = load(str(data))
    net = inf.parse_spec(spec)
    saved = np.load(tmp_path / "k.npz")
    ref = net.kernel(ds.x_test, ds.x_train, lengths=ds.side_test["lengths"], lengths2=ds.side_train["lengths"])
    assert np.allclose(saved["nngp_test_train"], ref.nngp.numpy(), rtol=1e-12)
    assert not np.allclose(saved["nngp_test_train"], net.kernel(ds.x_test, ds.x_train).nngp.numpy())


def test_cli_kernel_of_gated_and_batchnorm_networks(tmp_path):
    out = tmp_path / "gru.npz"
    result = _cli("kernel", "-a", "GRU(8, samples=256) > Dense(1)", "-d", "mnist1d", "--n-train", "10", "--n-test", "10",
                  "-o", str(out))
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert {"nngp_train_train", "nngp_se_train_train", "ntk_train_train", "ntk_se_train_train"} <= set(saved)
    from types import SimpleNamespace

    from infinet.app.cli import _split_kernels

    gru = inf.parse_spec("GRU(8, samples=64) > Dense(1)")  # the blocks are cut from one draw over both sets
    ds = SimpleNamespace(x_train=randn(4, 3, 2, seed=4), x_test=randn(2, 3, 2, seed=5), side_train={}, side_test={})
    blocks = dict(_split_kernels(gru, ds, ("nngp", "ntk"), torch.float64, None, "cpu", None))
    joint = gru.kernel(torch.cat([ds.x_train, ds.x_test]))
    for name in ("nngp", "ntk", "ntk_se"):
        assert torch.equal(getattr(blocks["train_train"](), name), getattr(joint, name)[:4, :4])
        assert torch.equal(getattr(blocks["test_train"](), name), getattr(joint, name)[4:, :4])
    out = tmp_path / "bn.npz"
    result = _cli("kernel", "-a", "Dense(16) > BatchNorm(activation=Relu()) > Dense(1)", "-d", "breast_cancer",
                  "--n-train", "12", "--n-test", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["ntk_test_train"].shape == (4, 12) and np.isfinite(saved["ntk_test_train"]).all()


# ------------------------------------------------------------------ 15. papercuts
def test_documented_prediction_helpers_are_exported():
    from infinet.predict import noise_ridge, psd_within_error, sampling_spread  # noqa: F401

    import infinet.predict as predict

    assert {"noise_ridge", "psd_within_error", "sampling_spread"} <= set(predict.__all__)


def test_get_takes_the_cli_spelling():
    net = inf.serial(inf.Dense(4), inf.Relu(), inf.Dense(1))
    x = randn(3, 2)
    k = net.kernel(x, get="nngp,ntk")
    assert k.nngp is not None and k.ntk is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_refused(tmp_path):
    result = _cli("kernel", "-a", "Dense(4) > Relu() > Dense(1)", "-d", "diabetes", "--device", "cuda", "-o",
                  str(tmp_path / "k.npz"))
    assert result.exit_code != 0 and "no CUDA device" in result.output
