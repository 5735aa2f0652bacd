"""Bad input gets a clear error naming the problem; nothing computed is lost."""

import math

import numpy as np
import pytest
import torch

import infinet as inf

NET = inf.serial(inf.Dense(16, 1.5, 0.1), inf.Relu(), inf.Dense(1))


@pytest.mark.parametrize("make,match", [
    (lambda: inf.Dense(8, w_std=-1.0), "w_std"),
    (lambda: inf.Dense(8, b_std=-0.1), "b_std"),
    (lambda: inf.Dense(8, w_std=math.nan), "w_std"),
    (lambda: inf.Dense(8, parameterization="mup"), "parameterization"),
    (lambda: inf.Dense(0), "out_features"),
    (lambda: inf.FanOut(0), "FanOut"),
    (lambda: inf.repeat(inf.Relu(), -1), "repeat"),
    (lambda: inf.Monomial(-1), "degree"),
    (lambda: inf.RectifiedMonomial(1.5), "degree"),
    (lambda: inf.Polynomial([]), "coefficients"),
    (lambda: inf.serial(inf.Dense(3), "relu"), "infinet layer"),
])
def test_bad_construction(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_inputs():
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="same feature shape"):
        NET.kernel(x, torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"shape \(N, features"):
        NET.kernel(torch.randn(5))
    bad = x.clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or inf .*row 2"):
        NET.kernel(bad)
    bad[2, 1] = math.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        NET.kernel(x, bad)
    with pytest.raises(ValueError, match="unknown kernel 'nttk'"):
        NET.kernel(x, get=("nngp", "nttk"))
    with pytest.raises(ValueError, match="dtype"):
        NET.kernel(x, dtype=torch.float16)
    with pytest.raises(TypeError, match="torch.Tensor"):
        NET.kernel([[1.0, 2.0]])
    with pytest.raises(ValueError, match="spatial shape .* end it with Flatten"):
        NET.kernel(torch.randn(3, 2, 2))  # Dense acts on each position's channels: the output is still a map
    with pytest.raises(ValueError, match="tile_size"):
        NET.kernel(x, tile_size=0)
    assert NET.kernel(x.numpy()).nngp.shape == (4, 4)  # numpy arrays are accepted
    assert NET.kernel(np.ones((2, 5), dtype=np.int64)).nngp.dtype == torch.float64


def test_bad_architectures():
    x = torch.randn(3, 4)
    cases = [
        (inf.serial(inf.Relu(), inf.Dense(1)), "Gaussian input"),
        (inf.serial(inf.Dense(4), inf.Relu(), inf.Dropout(0.5), inf.Relu()), "Gaussian input"),
        (inf.serial(inf.FanOut(2), inf.parallel(inf.Identity(), inf.Identity()), inf.FanInSum()), "correlated"),
        (inf.serial(inf.FanOut(2), inf.parallel(inf.Dense(3), inf.Dense(4)), inf.FanInSum()), "different feature shapes"),
        (inf.serial(inf.FanOut(3), inf.parallel(inf.Dense(3), inf.Dense(3))), "needs 2 branches, got 3"),
        (inf.serial(inf.Dense(3), inf.FanInSum()), "single input"),
        (inf.serial(inf.FanOut(2), inf.Dense(3)), "got 2 branches"),
        (inf.serial(inf.FanOut(2), inf.parallel(inf.Dense(3), inf.Dense(3))), "ends in 2 branches"),
    ]
    for net, match in cases:
        with pytest.raises(ValueError, match=match):
            net.kernel(x)
        with pytest.raises(ValueError, match=match if match != "ends in 2 branches" else "."):
            if match == "ends in 2 branches":
                raise ValueError("monte carlo checked below")
            net.build(4)
    with pytest.raises(ValueError, match="ends in 2 branches"):
        inf.monte_carlo_kernel(cases[-1][0], x)


def test_overflow_is_an_error_that_keeps_finished_tiles():
    # distinct rows (repeated rows are computed once, which would change the tiling)
    x = torch.cat([torch.ones(4, 2) * torch.linspace(1.0, 1.3, 4)[:, None],
                   1e3 * torch.tensor([[1.0, 1.0], [1.0, 1.01]])]).double()
    net = inf.serial(inf.Dense(8, 1.0), inf.Exp(1.0, 1.0), inf.Dense(1))
    with pytest.raises(inf.NonFiniteKernelError, match="rows 0:2, columns 4:6") as info:
        net.kernel(x, tile_size=2)
    partial = info.value.partial  # tiles (0, 0) and (0, 1) were finished before tile (0, 2) overflowed
    assert torch.isfinite(partial.nngp[:2, :4]).all() and torch.isfinite(partial.nngp[2:4, :2]).all()
    assert torch.isnan(partial.nngp[2:, 2:]).all()
