"""Distributed, resumable kernel stores (real LocalCluster, small N) and CG over streamed tiles."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import infinet as inf
from infinet import scale

F64 = torch.float64
NET = inf.serial(inf.Dense(64, w_std=1.4, b_std=0.1), inf.Relu(), inf.Dense(1, w_std=1.4, b_std=0.1))
#: slow tiles: Tanh by direct quadrature (INFINET_QUADRATURE=direct, set where SLOW_SPEC runs), not its interpolant
SLOW_SPEC = "Dense(32, w_std=1.5, b_std=0.1) > Tanh() > Dense(1, w_std=1.5, b_std=0.1)"


def data(n=150, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64)


def stored(path, name):
    return torch.from_numpy(scale.open_store(path)[name][...])


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    before = os.environ.get("INFINET_QUADRATURE")
    os.environ["INFINET_QUADRATURE"] = "direct"  # the worker processes inherit it (SLOW_SPEC's slow tiles)
    try:
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    finally:
        if before is None:
            os.environ.pop("INFINET_QUADRATURE")
        else:
            os.environ["INFINET_QUADRATURE"] = before
    client = Client(c)
    yield client
    client.close()
    c.close()


def test_distributed_equals_in_process(tmp_path, cluster):
    x = data()
    local = scale.kernel_to_store(NET, x, tmp_path / "a", tile_size=40, workers=0)
    dist = scale.kernel_to_store(NET, x, tmp_path / "b", tile_size=40, client=cluster)
    assert local.tiles_total == dist.tiles_total == 10  # 4 x 4 tiles, symmetric: 10 computed once
    ref = NET.kernel(x)
    for name in ("nngp", "ntk"):
        a, b = stored(tmp_path / "a", name), stored(tmp_path / "b", name)
        assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())
        assert float((a - getattr(ref, name)).abs().max()) <= 1e-12 * float(a.abs().max())
    cross = scale.kernel_to_store(NET, x[:50], tmp_path / "c", x2=x, tile_size=40, client=cluster)
    assert cross.tiles_total == 2 * 4
    assert torch.allclose(stored(tmp_path / "c", "nngp"), NET.kernel(x[:50], x).nngp, rtol=1e-12, atol=0)


def test_mismatched_store_is_refused_and_nothing_is_mixed(tmp_path):
    x = data(60)
    scale.kernel_to_store(NET, x, tmp_path / "s", tile_size=30, workers=0)
    before = stored(tmp_path / "s", "nngp")
    other = inf.serial(inf.Dense(64, w_std=1.0), inf.Relu(), inf.Dense(1))
    for kwargs, what in ((dict(net=other, x1=x), "architecture"), (dict(net=NET, x1=x + 1), "data"),
                         (dict(net=NET, x1=x, dtype="float32"), "dtype"), (dict(net=NET, x1=x, tile_size=20), "tile_size")):
        kwargs.setdefault("tile_size", 30)
        with pytest.raises(scale.StoreMismatchError, match=what):
            scale.kernel_to_store(path=tmp_path / "s", workers=0, **kwargs)
    assert torch.equal(stored(tmp_path / "s", "nngp"), before)


def _done(path):
    import zarr

    try:
        return int(np.asarray(zarr.open_group(str(path), mode="r")["done"][...]).sum())
    except Exception:
        return 0


def test_killed_client_resumes_computing_only_missing_tiles(tmp_path, monkeypatch):
    monkeypatch.setenv("INFINET_QUADRATURE", "direct")  # this process and the child: SLOW_SPEC's slow tiles
    x = data(100)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (f"import numpy as np, torch; from infinet import scale; x = torch.from_numpy(np.load(r'{tmp_path / 'x.npy'}'));"
            f"scale.kernel_to_store({SLOW_SPEC!r}, x, r'{tmp_path / 'k'}', tile_size=20, workers=0)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while _done(tmp_path / "k") < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marked = _done(tmp_path / "k")  # each off-diagonal tile marks two chunks
    import zarr

    done = np.asarray(zarr.open_group(str(tmp_path / "k"), mode="r")["done"][...])
    finished = int(np.triu(done).sum())
    assert 0 < marked and finished < 15  # killed part-way (5 x 5 tiles: 15 to compute)
    resumed = scale.kernel_to_store(SLOW_SPEC, x, tmp_path / "k", tile_size=20, workers=0)
    assert resumed.tiles_skipped == finished and resumed.tiles_computed == 15 - finished
    clean = scale.kernel_to_store(SLOW_SPEC, x, tmp_path / "clean", tile_size=20, workers=0)
    assert clean.tiles_computed == 15
    for name in ("nngp", "ntk"):
        assert torch.equal(stored(tmp_path / "k", name), stored(tmp_path / "clean", name))


def test_killed_worker_is_retried(tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("INFINET_QUADRATURE", "direct")  # as in the cluster's workers
    x = data(100, seed=1)
    result = {}

    def job():
        result["report"] = scale.kernel_to_store(SLOW_SPEC, x, tmp_path / "w", tile_size=20, client=cluster)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 120
    while _done(tmp_path / "w") < 4 and time.time() < deadline:
        time.sleep(0.05)
    pids = cluster.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert "report" in result and result["report"].tiles_computed == 15
    scale.kernel_to_store(SLOW_SPEC, x, tmp_path / "clean", tile_size=20, workers=0)
    for name in ("nngp", "ntk"):
        assert torch.equal(stored(tmp_path / "w", name), stored(tmp_path / "clean", name))


def test_cg_over_the_store_matches_a_dense_solve(tmp_path):
    x, xt = data(200), data(30, seed=5)
    scale.kernel_to_store(NET, x, tmp_path / "train", tile_size=64, workers=0)
    scale.kernel_to_store(NET, xt, tmp_path / "test", x2=x, tile_size=64, workers=0)
    y = torch.randn(200, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    alpha, report = scale.solve_store(tmp_path / "train", y, diag_reg=1e-3, tol=1e-12)
    k = NET.kernel(x).nngp
    dense = torch.linalg.solve(k + 1e-3 * k.diagonal().mean() * torch.eye(200, dtype=F64), y)
    assert report.converged
    assert float((alpha - dense).norm() / dense.norm()) < 1e-8
    pred = scale.predict_from_store(tmp_path / "test", alpha)
    assert torch.allclose(pred, NET.kernel(xt, x).nngp @ dense, rtol=1e-8, atol=1e-10)


def test_incomplete_store_is_not_solved(tmp_path):
    x = data(60)
    scale.kernel_to_store(NET, x, tmp_path / "s", tile_size=30, workers=0)
    import zarr

    zarr.open_group(str(tmp_path / "s"), mode="r+")["done"][0, 1] = 0
    with pytest.raises(scale.StoreMismatchError, match="incomplete"):
        scale.solve_store(tmp_path / "s", torch.zeros(60, dtype=F64))


def test_cg_with_products_on_the_workers(tmp_path, cluster):
    x = data(180, seed=7)
    scale.kernel_to_store(NET, x, tmp_path / "train", tile_size=50, workers=0)
    y = torch.randn(180, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    local, _ = scale.solve_store(tmp_path / "train", y, diag_reg=1e-3, tol=1e-12)
    dist, report = scale.solve_store(tmp_path / "train", y, diag_reg=1e-3, tol=1e-12, client=cluster)
    k = NET.kernel(x).nngp
    dense = torch.linalg.solve(k + 1e-3 * k.diagonal().mean() * torch.eye(180, dtype=F64), y)
    assert report.converged
    assert float((dist - dense).norm() / dense.norm()) < 1e-8
    assert float((dist - local).norm() / local.norm()) < 1e-10


@pytest.mark.parametrize("on_workers", [False, True])
def test_products_read_only_the_upper_triangle(tmp_path, cluster, on_workers):
    """K v from the upper triangle equals the dense product even when every chunk below the diagonal is
    overwritten with NaN (so nothing there is read); uneven last tile."""
    import zarr

    x = data(170, seed=3)
    scale.kernel_to_store(NET, x, tmp_path / "s", tile_size=40, workers=0)
    k = NET.kernel(x).nngp
    array = zarr.open_group(str(tmp_path / "s"), mode="r+")["nngp"]
    for i in range(5):
        for j in range(i):
            array[i * 40:(i + 1) * 40, j * 40:(j + 1) * 40] = np.nan
    v = torch.randn(170, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    op = scale.stored_kernel(tmp_path / "s", "nngp", client=cluster if on_workers else None)
    assert torch.allclose(op.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.matmul(v[:, 0]), k @ v[:, 0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.column(57), k[:, 57], rtol=1e-12, atol=0)


def test_pivoted_cholesky_preconditioner_over_the_store(tmp_path):
    x = data(150, seed=9)
    scale.kernel_to_store(NET, x, tmp_path / "s", get="nngp", tile_size=64, workers=0)
    y = torch.randn(150, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    k = NET.kernel(x).nngp
    dense = torch.linalg.solve(k + 1e-3 * k.diagonal().mean() * torch.eye(150, dtype=F64), y)
    for kind in ("pivoted-cholesky", "none"):
        alpha, report = scale.solve_store(tmp_path / "s", y, diag_reg=1e-3, tol=1e-12, preconditioner=kind,
                                          preconditioner_rank=30)
        assert report.converged and report.preconditioner == kind
        assert float((alpha - dense).norm() / dense.norm()) < 1e-8


def test_tile_device_choice(tmp_path):
    with pytest.raises(ValueError, match="device must be one of"):
        scale.kernel_to_store(NET, data(20), tmp_path / "s", device="tpu", workers=0)
    assert scale.tile_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert scale.tile_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            scale.tile_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tiles_equal_cpu_tiles(tmp_path):
    x = data(130)
    scale.kernel_to_store(NET, x, tmp_path / "cpu", tile_size=50, workers=0, device="cpu")
    scale.kernel_to_store(NET, x, tmp_path / "gpu", tile_size=50, workers=0, device="cuda")
    for name in ("nngp", "ntk"):
        a, b = stored(tmp_path / "cpu", name), stored(tmp_path / "gpu", name)
        assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())
