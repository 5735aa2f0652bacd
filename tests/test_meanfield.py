"""Mean-field theory: known cases, identities, two independent computations, and random networks."""

import math

import numpy as np
import pytest
import torch

import infinet as inf
from infinet import meanfield as mf


# The mean-field literature states its maps in variances (sigma_w^2, sigma_b^2); these helpers keep the tests in
# its terms and call the public functions, which take standard deviations (w_std=, b_std=).
def _std(w_var, b_var=None):
    out = {"w_std": math.sqrt(w_var)}
    if b_var is not None:
        out["b_std"] = math.sqrt(b_var)
    return out


def analyze(act, w_var, b_var):
    return mf.analyze(act, **_std(w_var, b_var))


def edge_of_chaos(act, b_var):
    return mf.critical_w_std(act, b_std=math.sqrt(b_var)) ** 2


def correlation_map(act, c, q, w_var, b_var):
    return mf.correlation_map(act, c, q, **_std(w_var, b_var))


def length_map(act, q, w_var, b_var):
    return mf.length_map(act, q, **_std(w_var, b_var))


def length_slope(act, q, w_var):
    return mf.length_slope(act, q, **_std(w_var))


def length_fixed_points(act, w_var, b_var):
    return mf.length_fixed_points(act, **_std(w_var, b_var))


def simulate(act, q0, c0, w_var, b_var, **kwargs):
    return mf.simulate(act, q0, c0, **_std(w_var, b_var), **kwargs)


def propagate(act, q0, c0, w_var, b_var, depth):
    return mf.propagate(act, q0, c0, **_std(w_var, b_var), depth=depth)


@pytest.mark.parametrize("w_var,b_var", [(1.0, 0.0), (1.5, 0.1), (1.9, 0.5), (0.5, 0.2)])
def test_relu_chi1_is_half_w_var(w_var, b_var):
    r = analyze("relu", w_var, b_var)
    assert r.chi_1 == pytest.approx(w_var / 2, rel=1e-12)
    if b_var > 0:
        assert r.q_star == pytest.approx(b_var / (1 - w_var / 2), rel=1e-10)  # q = w q / 2 + b


def test_relu_only_critical_point_is_2_0():
    assert edge_of_chaos("relu", 0.0) == pytest.approx(2.0, abs=1e-9)
    for b_var in (1e-3, 0.05, 0.5):
        assert math.isnan(edge_of_chaos("relu", b_var))  # lengths diverge where chi_1 reaches 1
    assert analyze("relu", 2.0, 0.0).phase == "critical"
    assert analyze("relu", 2.5, 0.1).status == "diverges"


def test_tanh_without_bias_is_critical_at_w_var_1():
    assert edge_of_chaos("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert analyze("tanh", 0.9, 0.0).phase == "ordered"
    assert analyze("tanh", 1.2, 0.0).phase == "chaotic"


def test_depth_scale_identities():
    ordered = analyze("tanh", 1.2, 0.3)
    assert ordered.c_star == 1.0
    assert ordered.xi_c == pytest.approx(-1 / math.log(ordered.chi_1), rel=1e-12)
    # the correlation map's approach to c* = 1 decays as exp(-l / xi_c): fit it from iterating the map
    c, q = 0.5, ordered.q_star
    gaps = []
    for _ in range(26):
        c = float(correlation_map("tanh", c, q, 1.2, 0.3))
        gaps.append(1 - c)
    slope = np.polyfit(np.arange(14, 26), np.log(gaps[14:26]), 1)[0]  # gaps 1e-3..1e-5: linear regime, above round-off
    assert -1 / slope == pytest.approx(ordered.xi_c, rel=1e-3)
    chaotic = analyze("tanh", 2.5, 0.05)
    assert chaotic.phase == "chaotic" and chaotic.c_star < 1.0
    assert float(correlation_map("tanh", chaotic.c_star, chaotic.q_star, 2.5, 0.05)) == pytest.approx(chaotic.c_star, abs=1e-12)
    assert chaotic.chi_c < 1.0  # the fixed point below 1 is the stable one


def test_closed_form_and_quadrature_agree():
    closed = inf.Erf()  # closed form (Williams 1997)
    quadrature = inf.Elementwise(torch.erf)  # the same function through bivariate quadrature
    for w_var, b_var in ((1.5, 0.05), (3.0, 0.2)):
        a, b = analyze(closed, w_var, b_var), analyze(quadrature, w_var, b_var)
        for name in ("q_star", "c_star", "chi_1", "chi_c", "chi_q", "xi_q", "xi_c"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-8, abs=1e-10), name


def test_chi_q_by_autograd_matches_finite_differences():
    q, w = 0.7, 1.6
    h = 1e-6
    fd = (float(length_map("tanh", q + h, w, 0.1)) - float(length_map("tanh", q - h, w, 0.1))) / (2 * h)
    assert length_slope("tanh", q, w) == pytest.approx(fd, rel=1e-7)


def test_no_fixed_point_and_bad_input():
    assert length_fixed_points("relu", 3.0, 0.1).status == "diverges"
    r = analyze("relu", 3.0, 0.1)
    assert r.status == "diverges" and math.isnan(r.chi_1)
    with pytest.raises(ValueError, match="w_std must be a finite number >= 0"):
        mf.analyze("tanh", w_std=-1.0, b_std=0.1)
    with pytest.raises(ValueError, match="unknown activation"):
        analyze("swish-ish", 1.0, 0.1)


@pytest.mark.parametrize("act,w_var,b_var", [("tanh", 1.5, 0.05), ("relu", 1.8, 0.1), ("erf", 2.5, 0.05)])
def test_random_networks_follow_theory_for_20_layers(act, w_var, b_var):
    sim = simulate(act, 1.0, 0.3, w_var, b_var, depth=20, width=1000, n_networks=12, seed=1)
    q, c = propagate(act, 1.0, 0.3, w_var, b_var, 20)
    # within standard errors: |z| < 4 for every layer (41 comparisons per case)
    for name, theory in (("q", q), ("c", c)):
        se = np.maximum(sim[f"{name}_se"][1:], 1e-12)
        z = (sim[name][1:] - theory[1:]) / se
        assert np.all(np.abs(z) < 4), (name, z)


def test_gradients_grow_or_vanish_by_chi1_per_layer():
    depth = 30
    for w_var, b_var in ((1.2, 0.05), (3.0, 0.05)):
        r = analyze("tanh", w_var, b_var)
        q0 = r.q_star
        sim = simulate("tanh", q0, 0.5, w_var, b_var, depth=depth, width=800, n_networks=6, seed=2)
        slope = np.polyfit(np.arange(5, depth), np.log(sim["grad_norm2"][5:depth]), 1)[0]
        assert slope == pytest.approx(-math.log(r.chi_1), abs=0.05)


def _run(name, tmp_path, **params):
    from infinet.experiments import run_experiment

    result, _ = run_experiment(name, tmp_path / name, params=params, quick=True, progress=False)
    return result


def test_phase_diagram_experiment(tmp_path):
    r = _run("phase-diagram", tmp_path, grid=5, grid_b=3, depth=12, width=300, networks=3)
    edge = r.numbers["edge_of_chaos"]
    assert edge["tanh"][0] == pytest.approx(1.0, abs=1e-6)  # b = 0
    assert edge["relu"][0] == pytest.approx(2.0, abs=1e-9) and all(math.isnan(w) for w in edge["relu"][1:])
    runs = r.numbers["depth_propagation"]
    assert runs["ordered"]["c_star"] == 1.0 and runs["chaotic"]["c_star"] < 1.0
    assert runs["critical"]["xi_c"] > max(runs["ordered"]["xi_c"], runs["chaotic"]["xi_c"])
    assert "longer than both" in r.summary


def test_gradients_experiment(tmp_path):
    r = _run("gradients", tmp_path, depth=30, width=400, networks=3)
    for phase, v in r.numbers["phases"].items():
        assert v["measured_slope"] == pytest.approx(v["theory_slope"], abs=0.05), phase


def test_trainability_experiment_fits_a_multiple(tmp_path):
    r = _run("trainability", tmp_path, n_train=300, depths=(2, 8, 24), w_vars=(0.5, 1.76, 4.0), width=32, steps=150)
    acc = np.array(r.numbers["train_accuracy"])
    assert acc[0].min() > 0.5  # shallow networks train everywhere
    assert 0.5 <= r.numbers["fitted_multiple"] <= 50 and r.numbers["agreement"] >= 0.6


def test_one_convention_and_the_old_variances():
    """Standard deviations as keywords everywhere; the old variance calls give the same numbers and warn."""
    new = mf.analyze("tanh", w_std=math.sqrt(1.5), b_std=math.sqrt(0.05))
    with pytest.warns(DeprecationWarning, match="pass the standard deviation w_std="):
        old = mf.analyze("tanh", 1.5, 0.05)
    assert old.chi_1 == pytest.approx(new.chi_1, rel=1e-14) and new.w_std == pytest.approx(math.sqrt(1.5))
    with pytest.warns(DeprecationWarning, match="critical_w_std"):
        assert mf.edge_of_chaos("tanh", 0.0) == pytest.approx(mf.critical_w_std("tanh", b_std=0.0) ** 2, abs=1e-6)
    with pytest.raises(TypeError, match="got both"):
        mf.chi_1("tanh", 1.0, 1.0, w_std=1.0)
    with pytest.raises(TypeError, match="missing required keyword argument 'w_std'"):
        mf.chi_1("tanh", 1.0)
    with pytest.raises(ValueError, match="w_std must be a finite number"):
        mf.chi_1("tanh", 1.0, w_std=-1.0)
