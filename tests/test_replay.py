"""Self-covariances recorded once per block and replayed in the other tiles (kernel.VarianceTrace)."""

import math

import pytest
import torch

import infinet as inf
from infinet import architectures, tiling
from infinet.kernel import VarianceTrace
from infinet.layers.base import replays_variances


def images(n, seed, c=2, size=8):
    return torch.randn(n, c, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


NETWORKS = {
    "myrtle": architectures.myrtle(5),
    "flatten": architectures.cntk(3, pooling="flatten"),
    "residual": inf.serial(inf.Conv(4, 3), architectures.wide_resnet_block(4), inf.AvgPool(2), inf.Erf(),
                           inf.Conv(3, 3, stride=2), inf.Tanh(), inf.GlobalAvgPool(), inf.Dense(1)),
    "transpose_dropout": inf.serial(inf.Conv(4, 3, b_std=0.1), inf.Gelu(), inf.Dropout(0.2),
                                    inf.ConvTranspose(3, 3, stride=2), inf.Relu(), inf.SumPool(2), inf.Flatten(),
                                    inf.Dense(1, parameterization="standard")),
}


def count_replays(monkeypatch):
    counts = {"replay": 0, "record": 0}
    original_replay, original_init = VarianceTrace.replay.__func__, VarianceTrace.__init__

    def replay(cls, e1, e2):
        counts["replay"] += 1
        return original_replay(cls, e1, e2)

    def init(self, entries1=None, entries2=None):
        counts["record"] += entries1 is None
        original_init(self, entries1, entries2)

    monkeypatch.setattr(VarianceTrace, "replay", classmethod(replay))
    monkeypatch.setattr(VarianceTrace, "__init__", init)
    return counts


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_replayed_tiles_equal_one_tile(monkeypatch, name):
    # Tanh by direct quadrature: its interpolant is built for each tile's variance range, so tilings agree to its
    # certified accuracy (~1e-11, tests/test_variance_interpolation.py), not to the last bits asked here
    monkeypatch.setenv("INFINET_QUADRATURE", "direct")
    net = NETWORKS[name]
    assert replays_variances(net)
    x, y = images(5, 0), images(4, 1)
    for a, b in ((x, None), (x, y)):
        one = net.kernel(a, b, tile_size=9)
        counts = count_replays(monkeypatch)
        tiled = net.kernel(a, b, tile_size=1)
        monkeypatch.undo()
        monkeypatch.setenv("INFINET_QUADRATURE", "direct")
        # symmetric: the 5 diagonal tiles record, the 10 others replay; x against y: 5 + 4 recordings
        assert counts == ({"record": 5, "replay": 10} if b is None else {"record": 9, "replay": 20})
        for field in ("nngp", "ntk", "var1", "var2"):
            u, v = getattr(tiled, field), getattr(one, field)
            assert torch.allclose(u, v, rtol=1e-14, atol=1e-14 * float(v.abs().max())), field


def test_which_layers_replay():
    assert replays_variances(inf.serial(inf.Conv(2, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)))
    assert not replays_variances(inf.serial(inf.Conv(2, 3), inf.LayerNorm(), inf.Flatten(), inf.Dense(1)))
    assert not replays_variances(inf.ConvLocal(2, 3))  # its own kernel_fn, no claim

    class MyDense(inf.Dense):  # a subclass with its own transform never inherits the claim
        def kernel_fn(self, k):
            return super().kernel_fn(k)

    assert not replays_variances(inf.serial(MyDense(3), inf.Relu()))


def test_replay_only_where_it_pays(monkeypatch):
    net = NETWORKS["myrtle"]
    x = images(6, 2)
    counts = count_replays(monkeypatch)
    net.kernel(x, torch.cat([x[:1], images(5, 3)]), tile_size=1)  # a shared input: its rho must be exactly 1
    net.kernel(x, tile_size=6)  # one tile: nothing to replay
    inf.serial(inf.Dense(3), inf.Relu(), inf.Dense(1)).kernel(x.reshape(6, -1), tile_size=1)  # vectors
    inf.serial(inf.Conv(2, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)).kernel(
        x, tile_size=1, mask_constant=0.0)  # padded inputs keep the old way
    assert counts["replay"] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_recording_tile_raises_its_error_without_hanging(threads):
    """A diagonal tile that raises sets its block's mark anyway: the tiles waiting for it stop, and the
    diagonal tile's own error is the one reported (it comes first in task order)."""
    net = inf.serial(inf.Conv(2, 3, w_std=1e100), inf.Tanh(), inf.GlobalAvgPool(), inf.Dense(1))
    x = images(4, 4) * 1e100
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.raises(ValueError, match="Tanh"):
            net.kernel(x, tile_size=1)
    finally:
        torch.set_num_threads(old)


def test_gpu_tile_plan_uses_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 16 << 30))
    size = tiling.choose_tile_size(None, None, 784**2, True, device=torch.device("cuda"))
    assert size == math.isqrt(int((8 << 30) * tiling.GPU_MEMORY_SHARE) // (tiling.BYTES_PER_ENTRY * 784**2))
    assert size > tiling.choose_tile_size(None, None, 784**2, True)  # no cache cap on the GPU
    assert tiling.choose_tile_size(None, 1 << 30, 64, False, device=torch.device("cuda")) == \
        math.isqrt((1 << 30) // (tiling.BYTES_PER_ENTRY * 64))
