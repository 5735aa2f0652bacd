"""MaxPool and MinPool: finite modules, sampled kernels (infinet.sampling) against closed forms and against
Monte Carlo of wide finite networks, standard errors, and the errors they refuse."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import infinet as inf
from tests._statistics import assert_case_matches_wide_networks, max_combined_z

F64 = torch.float64
W = 1024


def inputs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)



@pytest.mark.parametrize("activation", [inf.Relu(), inf.Erf(), inf.Gelu()])
def test_window_of_one_equals_the_closed_form(activation):
    """A window of one is the activation itself: the sampler against closed forms (and quadrature)."""
    x = inputs(4, 2, 5, 5, seed=1)
    sampled = inf.serial(inf.Conv(3, 3, w_std=1.4, b_std=0.2), inf.MaxPool(1, activation=activation, seed=3),
                         inf.Conv(3, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)
    exact = inf.serial(inf.Conv(3, 3, w_std=1.4, b_std=0.2), activation, inf.Conv(3, 3), inf.Relu(),
                       inf.GlobalAvgPool(), inf.Dense(1)).kernel(x)
    assert sampled.sampled and not exact.sampled
    for name in ("nngp", "ntk"):
        est, se = getattr(sampled, name), getattr(sampled, name + "_se")
        assert float((se / est.abs()).max()) < 0.02  # the check below has teeth
        assert max_combined_z(est, se, getattr(exact, name)) < 4.0, name


CASES = {
    "max-2d-relu": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.4, b_std=0.1), inf.MaxPool(2, activation=inf.Relu()),
                                       inf.Conv(W, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 4, 4)),
    "max-1d-same-stride1": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.3), inf.MaxPool(3, stride=1, padding="SAME"),
                                               inf.Flatten(), inf.Dense(1)), (3, 2, 5)),
    "min-2d-circular-erf": (lambda: inf.serial(inf.Conv(W, 3, w_std=1.2, b_std=0.2),
                                               inf.MinPool(2, padding="CIRCULAR", activation=inf.Erf()),
                                               inf.GlobalAvgPool(), inf.Dense(1)), (3, 2, 3, 4)),
    "max-3d": (lambda: inf.serial(inf.Conv(W, 2, w_std=1.3), inf.MaxPool((2, 1, 2)), inf.Flatten(), inf.Dense(1)),
               (3, 1, 2, 2, 3)),
}


@pytest.mark.parametrize("estimator", ["joint", "windows"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_kernel_matches_wide_finite_networks(monkeypatch, name, estimator):
    """Both estimators (joint draws of every input position, or of each pair of windows; the layer picks the
    cheaper) against Monte Carlo of wide networks."""
    from infinet.engine.layers import maxpool_joint

    monkeypatch.setattr(maxpool_joint, "pays", lambda *args: estimator == "joint")
    make, shape = CASES[name]
    assert_case_matches_wide_networks(make(), inputs(*shape, seed=2), mc_seed=4)


@pytest.mark.parametrize("window", [2, 16])
def test_joint_draws_pick_the_first_maximum_of_each_window(window):
    """The joint estimator's window maxima: the value and the first slot attaining it (ties: exact zeros of blank
    inputs), in both of its ways to find the slot (bytes for windows under 256 positions, max with indices
    above), against a loop; the winners' weights spread over the slots and their input positions agree."""
    from infinet.engine.layers import maxpool_joint

    layer = inf.MaxPool(window)
    side = 2 * window
    index, valid, _ = layer.windows((side, side))
    p, (o, w) = side * side, index.shape
    gen = torch.Generator().manual_seed(5)
    factor = torch.randn(3, p, 4, generator=gen, dtype=F64)
    factor[:, ::3] = 0.0  # every third position blank: ties at zero
    zt = torch.randn(4, 7, generator=gen, dtype=F64).clamp(max=0.0)  # many draws <= 0, so blanks win
    pooled = maxpool_joint.Pooled(layer, factor, zt, index, None, True)
    u = factor @ zt  # (3, P, points)
    for b in range(3):
        for j in range(o):
            for s in range(7):
                values = [float(u[b, index[j, k], s]) for k in range(w)]
                assert pooled.top[b, j, s] == max(values)
                assert int(pooled.slot[b, j, s]) == values.index(max(values))
    rows = torch.tensor([2, 0])
    assert torch.equal(pooled.argmax(rows), index[torch.arange(o)[:, None], pooled.slot[rows]])
    spread = pooled.spread(pooled.derivative[rows], rows).unflatten(-2, (o, w))
    assert torch.equal(spread.sum(-2), pooled.derivative[rows])
    assert torch.equal((spread != 0).sum(-2), (pooled.derivative[rows] != 0).long())


def test_joint_draws_are_exactly_symmetric_and_serve_small_images(monkeypatch):
    """The joint estimator (chosen for 4 x 4 inputs) gives K(x1, x2) = K(x2, x1)^T (its same-position layout is
    the diagonal of its full one: tests/test_trust_round_three.py)."""
    from infinet.engine.layers import maxpool_joint

    calls = []
    original = maxpool_joint.expectations
    monkeypatch.setattr(maxpool_joint, "expectations", lambda *a: calls.append(1) or original(*a))
    net = inf.serial(inf.Conv(3, 3, w_std=1.5, b_std=0.1), inf.MaxPool(2, activation=inf.Relu()), inf.Conv(3, 3),
                     inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    x1, x2 = inputs(3, 2, 4, 4, seed=8), inputs(4, 2, 4, 4, seed=9)
    a, b = net.kernel(x1, x2), net.kernel(x2, x1)
    assert calls
    for name in ("nngp", "ntk", "nngp_se", "ntk_se"):
        assert torch.allclose(getattr(a, name), getattr(b, name).T, rtol=1e-12, atol=1e-14), name


def test_standard_errors_are_honest_and_shrink():
    """Over independent seeds the spread of the estimates matches the reported standard error, and more
    samples give smaller errors."""
    x = inputs(3, 1, 4, 4, seed=5)

    def net(seed, samples=64):
        return inf.serial(inf.Conv(2, 3, w_std=1.5), inf.MaxPool(2, activation=inf.Relu(), samples=samples,
                                                                   replicates=4, seed=seed),
                          inf.GlobalAvgPool(), inf.Dense(1))

    runs = [net(seed).kernel(x) for seed in range(12)]
    spread = torch.stack([r.nngp for r in runs]).std(0, correction=1)
    reported = torch.stack([r.nngp_se for r in runs]).mean(0)
    ratio = float((spread / reported).mean())
    assert 0.5 < ratio < 2.0, ratio  # 12 seeds of 4 replicates: the ratio is known to about +-30%
    more = net(0, samples=1024).kernel(x)
    assert float(more.nngp_se.mean()) < 0.5 * float(reported.mean())


def test_kernel_is_symmetric_finite_and_psd_within_its_error():
    x = inputs(6, 2, 4, 4, seed=6)
    net = inf.serial(inf.Conv(3, 3, w_std=1.5, b_std=0.1), inf.MaxPool(2, activation=inf.Relu()), inf.Conv(3, 3),
                     inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    k = net.kernel(x, tile_size=2)
    one = net.kernel(x, tile_size=6)
    for name in ("nngp", "ntk"):
        t, se = getattr(k, name), getattr(k, name + "_se")
        assert torch.isfinite(t).all() and torch.isfinite(se).all()
        assert torch.equal(t, t.T)
        # the sampling error perturbs the matrix by at most ~ the Frobenius norm of its standard errors
        assert float(torch.linalg.eigvalsh(t).min()) > -4 * float(se.norm())
        # tiles use the same points for the same layer: tiling changes only the last bits
        assert torch.allclose(t, getattr(one, name), rtol=1e-12, atol=1e-12)


def test_finite_modules():
    x = inputs(2, 3, 5, 6, seed=7)
    valid = inf.serial(inf.Conv(3, 1), inf.MaxPool(2)).build(seed=0)
    conv = valid[0]
    assert torch.equal(valid(x), F.max_pool2d(conv(x), 2))
    same = inf.serial(inf.Conv(3, 1), inf.MaxPool(2, stride=1, padding="SAME", activation=inf.Relu())).build(seed=0)
    y = same[0](x)
    expected = torch.relu(F.max_pool2d(F.pad(y, (0, 1, 0, 1), value=-math.inf), 2, stride=1))
    assert torch.equal(same(x), expected)  # padding never wins, even where every real value is negative
    low = inf.serial(inf.Conv(3, 1), inf.MinPool(2)).build(seed=0)
    assert torch.equal(low(x), -F.max_pool2d(-low[0](x), 2))


def test_refusals():
    with pytest.raises(ValueError, match="Gaussian inputs.*activation=Relu"):
        inf.serial(inf.Conv(2, 3), inf.Relu(), inf.MaxPool(2)).kernel(inputs(2, 1, 4, 4))
    with pytest.raises(ValueError, match="Gaussian"):
        inf.serial(inf.Conv(2, 3), inf.Relu(), inf.AvgPool(2), inf.Relu(), inf.Flatten(), inf.Dense(1)).kernel(
            inputs(2, 1, 4, 4))
    with pytest.raises(ValueError, match="samples"):
        inf.MaxPool(2, samples=1)
    with pytest.raises(ValueError, match="replicates"):
        inf.MaxPool(2, replicates=1)
    with pytest.raises(TypeError, match="activation"):
        inf.MaxPool(2, activation=torch.relu)
    with pytest.raises(ValueError, match="does not fit"):
        inf.serial(inf.Conv(2, 3), inf.MaxPool(5), inf.Flatten(), inf.Dense(1)).kernel(inputs(2, 1, 4, 4))


def test_joint_draws_with_blank_borders_agree_with_window_pairs(monkeypatch):
    """Images with a blank border under a convolution without bias: positions of zero variance (exact zeros of the
    conditional root) and identical examples (a zero conditional covariance). The joint estimator against the
    window-pair one, within 4 combined standard errors."""
    from infinet.engine.layers import maxpool_joint

    x = torch.zeros(4, 1, 6, 6, dtype=F64)
    x[:, :, 1:-1, 1:-1] = inputs(4, 1, 4, 4, seed=10)
    x[3] = x[0]
    net = inf.serial(inf.Conv(2, 3, padding="VALID", w_std=1.4), inf.MaxPool(2, activation=inf.Relu(), samples=512),
                     inf.Conv(2, 3), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    joint = net.kernel(x)
    monkeypatch.setattr(maxpool_joint, "pays", lambda *args: False)
    windows = net.kernel(x)
    for name in ("nngp", "ntk"):
        assert torch.isfinite(getattr(joint, name)).all()
        assert max_combined_z(getattr(joint, name), getattr(joint, name + "_se"), getattr(windows, name),
                              getattr(windows, name + "_se")) < 4, name
    assert torch.allclose(joint.nngp[3], joint.nngp[0], rtol=1e-10)  # identical inputs, identical rows
