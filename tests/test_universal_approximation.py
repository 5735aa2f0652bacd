"""The `universal-approximation` experiment in a small configuration, and the library pieces it added:
Mercer spectra on the sphere, the Fibonacci lattice, leave-one-out ridges, full-batch Adam."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import infinet as inf
from infinet.datasets import fibonacci_sphere
from infinet.experiments import run_experiment
from infinet.fitting import kernel_regression_by_leave_one_out, ridge_by_leave_one_out
from infinet.predict import gp_inference
from infinet.spectrum import sphere_spectrum
from infinet.training import train_gradient_descent


def test_universal_approximation_experiment(tmp_path):
    params = dict(grid_interval=201, grid_sphere=200, sizes=(8, 32, 96), activations=("relu", "monomial"), depths=(1,),
                  widths=(8, 64), steps=300, degrees=6)
    result, out = run_experiment("universal-approximation", tmp_path / "u", params=params, quick=True, progress=False)
    n = result.numbers
    for domain in ("interval", "sphere"):
        for target in ("smooth", "kink"):
            for kernel in ("nngp", "ntk"):
                relu = n["kernel_regression"][f"{domain}|{target}|relu|1|{kernel}"]
                assert relu["l2"] < 0 and relu["last_l2"] < 0.5, (domain, target, kernel)  # errors fall with n
        # Monomial(2) kernels are quadratics in x . x': on the circle they span trigonometric polynomials of
        # degree <= 2 (dimension 5), on S^2 the spherical harmonics of degree <= 2 (1 + 3 + 5 = 9)
        assert n["ranks"][f"{domain}|monomial|1|nngp"] == (5 if domain == "interval" else 9)
        assert n["ranks"][f"{domain}|relu|1|nngp"] > 100
        kink_floor = n["polynomial_floor"][f"{domain}|kink|monomial|1|nngp"]
        assert kink_floor > n["kernel_regression"][f"{domain}|kink|relu|1|nngp"]["last_l2"]
    assert n["vanishing"]["relu|1|False|nngp"] == [3, 5] and n["vanishing"]["relu|1|True|ntk"] == []
    assert n["vanishing"]["monomial|1|True|nngp"] == [3, 4, 5, 6]
    finite = n["finite"]
    assert finite["interval|smooth|relu"]["l2"] < 0  # a wider trained network fits the smooth target better
    assert finite["interval|smooth|relu"]["last_l2"] < 0.2
    assert set(n["verdicts"]) == {"kernels_converge", "polynomial_fails", "finite_converge"}
    floors = {k: v for k, v in n["polynomial_floor"].items() if "smooth" not in k}
    assert f"{min(floors.values()):.3g}" in result.summary
    for key, floor in n["polynomial_floor"].items():  # the floor is one: no Monomial(2) fit gets below it
        assert n["kernel_regression"][key]["last_l2"] >= floor * (1 - 1e-6), key
    assert out.exists() and (out.parent / "fits_on_the_interval.png").exists()


def test_sphere_spectrum_of_known_kernels():
    linear = inf.serial(inf.Dense(1, w_std=1.0))  # K(x, x') = x . x' / 3 on S^2: only degree 1, mu_1 = 1/9
    spec = sphere_spectrum(linear, degrees=5, nodes=200)
    assert spec.mu["nngp"][1] == pytest.approx(1 / 9, rel=1e-12) and spec.vanishing["nngp"] == [0, 2, 3, 4, 5]
    # two-layer ReLU without biases: the odd degrees >= 3 vanish (Bietti and Mairal 2019), the rest do not
    relu = inf.serial(inf.Dense(1, w_std=1.4), inf.Relu(), inf.Dense(1))
    spec = sphere_spectrum(relu, degrees=8)
    assert spec.vanishing["nngp"] == [3, 5, 7] and not spec.universal("nngp")
    # in dimension 5 the same holds (Gegenbauer polynomials), and mu_0 = E[kappa] over the sphere
    spec5 = sphere_spectrum(relu, dim=5, degrees=5)
    assert spec5.vanishing["ntk"] == [3, 5]
    for bad in (dict(dim=2), dict(degrees=-1), dict(nodes=3)):
        with pytest.raises(ValueError):
            sphere_spectrum(relu, **bad)


def test_fibonacci_sphere():
    x = fibonacci_sphere(500)
    assert x.shape == (500, 3) and np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert np.abs(x.mean(0)).max() < 0.01  # nearly uniform: the mean of the points is near the centre
    with pytest.raises(ValueError):
        fibonacci_sphere(0)


def test_ridge_by_leave_one_out_matches_refitting():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    k = torch.exp(-torch.cdist(x, x))
    y = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    ridges = (1e-6, 1e-2, 1.0)
    best, scores = ridge_by_leave_one_out(k, y, ridges)
    for ridge, score in zip(ridges, scores):  # the closed form equals refitting without each example
        s = ridge * float(k.diagonal().mean())
        errs = []
        for i in range(12):
            keep = [j for j in range(12) if j != i]
            a = k[keep][:, keep] + s * torch.eye(11, dtype=torch.float64)
            errs.append((k[i, keep] @ torch.linalg.solve(a, y[keep]) - y[i]).pow(2))
        assert score == pytest.approx(float(torch.stack(errs).mean()), rel=1e-8)
    assert best == ridges[int(np.argmin(scores))]
    mean, ridge = kernel_regression_by_leave_one_out(k[:8, :8], k[8:, :8], y[:8], ridges)
    assert ridge == ridge_by_leave_one_out(k[:8, :8], y[:8], ridges)[0]
    assert torch.allclose(mean, gp_inference(k[:8, :8], k[8:, :8], y[:8], diag_reg=ridge).mean, atol=1e-12)
    with pytest.raises(ValueError, match="ridges"):
        ridge_by_leave_one_out(k, y, (-1.0,))


def test_full_batch_adam_with_cosine_schedule():
    x = torch.linspace(-1, 1, 64, dtype=torch.float64)[:, None]
    y = torch.sin(3 * x)
    model = inf.serial(inf.Dense(64, b_std=0.5), inf.Tanh(), inf.Dense(1)).build(1, seed=0, dtype=torch.float64)
    rec = train_gradient_descent(model, x, y, 0.01, 500, optimizer="adam", schedule="cosine", record_every=100)
    assert rec.loss[-1] < 2e-2 * rec.loss[0] and math.isfinite(rec.loss[-1])
    with pytest.raises(ValueError, match="optimizer"):
        train_gradient_descent(model, x, y, 0.01, 5, optimizer="lbfgs")
    with pytest.raises(ValueError, match="schedule"):
        train_gradient_descent(model, x, y, 0.01, 5, schedule="step")
