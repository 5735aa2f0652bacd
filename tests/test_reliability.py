"""Regression tests for issue 16's defects 3-5 and 9 (each failed before its fix)."""

import math
import time

import numpy as np
import pytest
import torch

import infinet as inf
MAX_LAYERS = 100_000  # infinet.layers.combinators.MAX_LAYERS
from infinet.solve import KernelMatrixError, conjugate_gradient


# ---------------------------------------------------------------- defect 3: bounded architecture size
@pytest.mark.timeout(20)
def test_nested_repeat_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="layers in all"):
        inf.parse_spec("repeat(repeat(repeat(Dense(1) > Relu(), 10000), 10000), 10000)")
    assert time.perf_counter() - start < 1.0


def test_size_bound_counts_reuse_built_in_python():
    block = inf.serial(inf.Dense(4), inf.Relu())
    with pytest.raises(ValueError, match="layers in all"):
        for _ in range(40):  # doubling by reuse: 2^40 layers from 40 lines
            block = inf.serial(block, block)
    assert inf.repeat(inf.Dense(4), MAX_LAYERS).n_layers == MAX_LAYERS


# ---------------------------------------------------------------- defect 4: repr keeps repeat; deep nets store
@pytest.mark.parametrize("spec", [
    "repeat(Dense(16, w_std=1.5, b_std=0.05) > Erf(), 5000) > Dense(1)",
    "repeat(repeat(Dense(8) > Relu(), 100), 30) > Dense(1)",
    "FanOut(2) > parallel(Identity(), repeat(Dense(8) > Tanh(), 3)) > FanInSum() > Dense(1)",
    "myrtle(5)",
])
def test_repr_round_trips_and_stays_short(spec):
    net = inf.parse_spec(spec)
    text = repr(net)
    assert len(text) < 2000
    assert repr(inf.parse_spec(text)) == text


def test_deep_network_can_be_stored(tmp_path):
    from infinet.scale import kernel_to_store, open_store

    net = inf.parse_spec("repeat(Dense(16, w_std=1.5, b_std=0.05) > Relu(), 3000) > Dense(1)")
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel_to_store(net, x, path=tmp_path / "s", workers=0, tile_size=4)
    stored = open_store(tmp_path / "s")
    torch.testing.assert_close(torch.as_tensor(stored["nngp"][...]), net.kernel(x).nngp, rtol=1e-12, atol=0)


def test_unstorable_architecture_leaves_no_store(tmp_path):
    from infinet.scale import kernel_to_store

    net = inf.serial(inf.Dense(4), inf.Elementwise(torch.tanh), inf.Dense(1))
    with pytest.raises(ValueError, match="cannot be written as a spec"):
        kernel_to_store(net, torch.randn(4, 3, dtype=torch.float64), path=tmp_path / "s", workers=0)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- defect 5: conjugate gradients
def _spd(n=40, seed=0):
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / n


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_cg_refuses_bad_diag_reg(bad):
    with pytest.raises(ValueError, match="diag_reg"):
        conjugate_gradient(_spd(), torch.ones(40, dtype=torch.float64), bad)


def test_cg_zero_target_column():
    k = _spd()
    b = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b[:, 1] = 0.0
    x, report = conjugate_gradient(k, b, 1e-2, tol=1e-10, preconditioner="none")
    assert report.converged and torch.equal(x[:, 1], torch.zeros(40, dtype=torch.float64))
    shift = 1e-2 * k.diagonal().mean()
    torch.testing.assert_close(k @ x + shift * x, b, rtol=0, atol=1e-8)


def test_cg_reports_indefinite_kernels():
    k = _spd() - 0.5 * torch.eye(40, dtype=torch.float64) * _spd().diagonal().mean()
    with pytest.raises(KernelMatrixError):
        conjugate_gradient(k, torch.randn(40, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
                           0.0, preconditioner="none")


@pytest.mark.parametrize("kwargs,match", [({"tol": 0.0}, "tol"), ({"tol": float("nan")}, "tol"),
                                          ({"max_iter": 0}, "max_iter"), ({"max_iter": -3}, "max_iter")])
def test_cg_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conjugate_gradient(_spd(), torch.ones(40, dtype=torch.float64), 0.1, **kwargs)


# ---------------------------------------------------------------- defect 6: damaged stores
def _store(tmp_path):
    from infinet.scale import kernel_to_store

    net = inf.parse_spec("Dense(8, w_std=1.5, b_std=0.1) > Relu() > Dense(1)")
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path = tmp_path / "store"
    kernel_to_store(net, x, path=path, workers=0, tile_size=4)
    return net, x, path


@pytest.mark.parametrize("damage", ["delete", "truncate", "change"])
def test_damaged_store_is_detected_named_and_recomputed(tmp_path, damage, capsys):
    from infinet.scale import StoreCorruptError, check_store, kernel_to_store, open_store, solve_store

    net, x, path = _store(tmp_path)
    chunk = path / "nngp" / "c" / "0" / "1"
    data = chunk.read_bytes()
    if damage == "delete":
        chunk.unlink()
    elif damage == "truncate":
        chunk.write_bytes(data[: len(data) // 2])
    else:  # same size, one value changed
        chunk.write_bytes(data[:8] + (b"\x00" * 8) + data[16:])
    assert (0, 1) in check_store(path)
    with pytest.raises(StoreCorruptError, match=str(chunk)):
        open_store(path)
    with pytest.raises(StoreCorruptError):
        solve_store(path, torch.ones(10, dtype=torch.float64), diag_reg=0.1)
    report = kernel_to_store(net, x, path=path, workers=0, tile_size=4)
    assert report.tiles_computed == 1  # only the damaged tile (and its mirror) is recomputed
    assert "recomputing 1 damaged tile" in capsys.readouterr().err
    torch.testing.assert_close(torch.as_tensor(open_store(path)["nngp"][...]), net.kernel(x).nngp, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- defect 9: smaller ones
def test_test_test_kernel_must_be_psd():
    from infinet.predict import gp_inference

    k = _spd(6)
    bad = -torch.eye(3, dtype=torch.float64) * 10
    with pytest.raises(ValueError, match="k_test_test"):
        gp_inference(k, k[:3], torch.ones(6, 1, dtype=torch.float64), bad, diag_reg=1e-3)


@pytest.mark.parametrize("t", [np.float64(2.0), torch.tensor(2.0), 2])
def test_training_time_types(t):
    from infinet.predict import gradient_descent_mse

    k = _spd(6)
    y = torch.randn(6, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = gradient_descent_mse(k, k[:2], y, t=2.0)
    torch.testing.assert_close(gradient_descent_mse(k, k[:2], y, t=t), ref)


def test_estimators_accept_integer_time_and_refuse_one_class():
    from infinet.estimators import NTKClassifier, NTKRegressor

    x = np.random.default_rng(0).normal(size=(20, 3))
    NTKRegressor("Dense(8) > Relu() > Dense(1)", t=100).fit(x, x[:, 0])
    with pytest.raises(ValueError, match="class"):
        NTKClassifier("Dense(8) > Relu() > Dense(1)").fit(x, np.zeros(20, dtype=int))


def test_builtin_data_set_refuses_a_path():
    from infinet.datasets import DatasetError, load

    with pytest.raises(DatasetError, match="built in"):
        load("digits:/some/folder")
