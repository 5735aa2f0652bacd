"""Tiled computation: any N, each off-diagonal tile once, memory knob, progress, devices."""

import pytest
import torch

import infinet as inf
from infinet import tiling

NET = inf.serial(inf.Dense(32, 1.4, 0.1), inf.Gelu(), inf.Dense(32, 1.4, 0.1), inf.Tanh(), inf.Dense(1))


def test_any_n_and_symmetric_tiles_computed_once(monkeypatch):
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []
    original = tiling.kernel_tile

    def spy(layer, a, b, need_ntk, *rest, **options):
        calls.append((len(a), None if b is None else len(b)))
        return original(layer, a, b, need_ntk, *rest, **options)

    monkeypatch.setattr(tiling, "kernel_tile", spy)
    tiled = NET.kernel(x, tile_size=3)  # blocks of 3, 3, 1
    assert len(calls) == 6  # 3 diagonal + 3 upper tiles, not 9
    assert sum(b is None for _, b in calls) == 3
    full = NET.kernel(x, tile_size=100)
    # Tanh uses quadrature whose panel count follows the largest variance in a tile, so tiles agree to
    # the quadrature's accuracy (1e-11 of the scale), not bit for bit
    assert torch.allclose(tiled.ntk, full.ntk, rtol=0, atol=1e-11 * float(full.ntk.abs().max()))
    calls.clear()
    NET.kernel(x, x[:5], tile_size=3)
    assert len(calls) == 3 * 2


def test_max_memory_sets_tile_size():
    assert tiling.choose_tile_size(None, 128 * 100**2) == 100
    assert tiling.choose_tile_size(None, None) == tiling.DEFAULT_TILE
    assert tiling.choose_tile_size(7, None) == 7
    with pytest.raises(ValueError, match="max_memory"):
        tiling.choose_tile_size(None, 10)
    x = torch.randn(9, 2, dtype=torch.float64)
    k = NET.kernel(x, max_memory=128 * 4**2)
    assert torch.allclose(k.nngp, NET.kernel(x).nngp, rtol=1e-13)


def test_progress_bar_when_asked(capsys):
    x = torch.randn(6, 2, dtype=torch.float64)
    NET.kernel(x, tile_size=2, progress=True)
    assert "kernel tiles" in capsys.readouterr().err
    NET.kernel(x, tile_size=2)  # not a terminal: quiet
    assert capsys.readouterr().err == ""


def test_kernel_tile_is_pure():
    x = torch.randn(5, 3, dtype=torch.float64)
    before = x.clone()
    a = tiling.kernel_tile(NET, x[:2], x[2:], True)
    b = tiling.kernel_tile(NET, x[:2], x[2:], True)
    assert torch.equal(a.ntk, b.ntk) and torch.equal(x, before)


def test_float64_default_and_float32_on_request():
    x = torch.randn(3, 2)  # float32 inputs
    assert NET.kernel(x).nngp.dtype == torch.float64
    assert NET.kernel(x, dtype=torch.float32).nngp.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_stay_on_cuda():
    x = torch.randn(50, 4, device="cuda", dtype=torch.float64)
    k = NET.kernel(x, tile_size=16)
    assert k.ntk.device.type == "cuda"
    assert torch.allclose(k.ntk.cpu(), NET.kernel(x.cpu(), tile_size=16).ntk, rtol=1e-10)
    mc = inf.monte_carlo_kernel(NET, x[:3], n_samples=2)
    assert mc.ntk.device.type == "cuda"


def test_kernel_tile_does_not_depend_on_memory_alignment():
    """A tile from rows that start 8 bytes off a 64-byte boundary (a slice of a deserialized array on a
    Dask worker) equals, bit for bit, the tile from an aligned copy: stores are reproducible anywhere."""
    net = inf.serial(inf.Dense(32, w_std=1.5, b_std=0.1), inf.Tanh(), inf.Dense(1, w_std=1.5, b_std=0.1))
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = tiling.kernel_tile(net, x[:20].clone(), x[20:].clone(), True)
    backing = torch.zeros(x.numel() + 16, dtype=torch.float64)
    start = next(s for s in range(8) if (backing.data_ptr() + 8 * s) % 64 == 8)  # deliberately misaligned
    moved = backing[start:start + x.numel()].view(40, 6)
    moved.copy_(x)
    assert moved.data_ptr() % 64 == 8
    tile = tiling.kernel_tile(net, moved[:20], moved[20:], True)
    assert torch.equal(tile.nngp, reference.nngp) and torch.equal(tile.ntk, reference.ntk)


def test_the_tile_pool_is_kept_between_calls_and_made_again_after_fork():
    """The tile pool's threads serve every call of the process (their malloc arenas stay warm), each call's tasks
    finish before it returns, even when one fails, and a forked child gets a pool of its own."""
    import os
    import threading

    from infinet.engine import tiles

    if torch.get_num_threads() < 2:
        pytest.skip("the tile pool needs two or more threads")
    names = []

    def work(task):
        names.append(threading.current_thread().name)
        return task * 2

    for _ in range(2):
        assert [r for _, r in tiles.local_results(work, list(range(6)), torch.device("cpu"))] == \
            [2 * t for t in range(6)]
    assert len(set(names)) <= torch.get_num_threads() and all(n.startswith("infinet-tile") for n in names)
    started, done = [], []

    def failing(task):
        started.append(task)
        if task == 1:
            raise ValueError("tile 1")
        threading.Event().wait(0.05)
        done.append(task)
        return task

    with pytest.raises(ValueError, match="tile 1"):
        list(tiles.local_results(failing, list(range(8)), torch.device("cpu")))
    assert sorted(done) == sorted(t for t in started if t != 1)  # nothing of that call runs on
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own pool, the same results
        try:
            ok = [r for _, r in tiles.local_results(work, list(range(4)), torch.device("cpu"))] == [0, 2, 4, 6]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
