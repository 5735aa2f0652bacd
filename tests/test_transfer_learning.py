"""The `transfer-learning` experiment in a small configuration, and the readout helpers it added."""

from __future__ import annotations

import pytest
import torch

import infinet as inf
from infinet.empirical import empirical_ntk
from infinet.experiments import run_experiment
from infinet.training import readout_parameters, replace_readout


def test_transfer_learning_experiment(tmp_path):
    params = dict(pool=800, target_pool=200, n_test=100, channels=8, pretrain_steps=120, sizes=(10, 40), seeds=2,
                  steps=40, ntk_points=8)
    result, out = run_experiment("transfer-learning", tmp_path / "t", params=params, quick=True, progress=False)
    n = result.numbers
    assert n["source_accuracy"]["test"] > 0.6  # pretraining learned the source classes (chance 0.2)
    for size in (10, 40):
        acc = n["accuracy"][size]
        assert set(acc) == {"fine-tuning", "linearized", "eNTK", "readout", "NNGP", "NTK", "scratch"}
        for method, (mean, se) in acc.items():
            assert 0.0 <= mean <= 1.0 and se >= 0.0, method
        regime = n["regime"][size]
        assert regime["distance"] >= 0 and 0.0 <= regime["agreement"] <= 1.0 and regime["ntk_change"] >= 0
    assert n["accuracy"][40]["fine-tuning"][0] > 0.4 and n["accuracy"][40]["eNTK"][0] > 0.4  # well above chance
    assert set(n["verdicts"]) == {"fine_tuning_matches_entk", "fine_tuning_matches_linearization", "kernel_regime",
                                  "pretraining_helps"}
    assert f"{n['accuracy'][40]['fine-tuning'][0]:.3f}" in result.summary
    assert out.exists() and (out.parent / "accuracy_and_kernel_regime.png").exists()


def test_replace_readout_and_its_parameters():
    net = inf.serial(inf.Dense(8), inf.Relu(), inf.Dense(3))
    pretrained, fresh = net.build(4, seed=0, dtype=torch.float64), net.build(4, seed=1, dtype=torch.float64)
    model = replace_readout(pretrained, fresh)
    names = readout_parameters(model)
    assert names == ["2.weight"]
    params, fresh_params, old = dict(model.named_parameters()), dict(fresh.named_parameters()), dict(pretrained.named_parameters())
    assert torch.equal(params["2.weight"], fresh_params["2.weight"]) and torch.equal(params["0.weight"], old["0.weight"])
    assert not torch.equal(params["2.weight"], old["2.weight"])  # the pretrained model is left as it was
    x = torch.randn(5, 4, dtype=torch.float64)
    # the readout's tangent kernel is the Gram matrix of its input features (NTK parameterization: / width)
    with torch.no_grad():
        features = model[1](model[0](x))
    head = empirical_ntk(model, x, trace=True, params=names)
    assert torch.allclose(head, features @ features.T / 8, atol=1e-12)
    with pytest.raises(ValueError, match="readout"):
        replace_readout(pretrained, inf.serial(inf.Dense(8), inf.Relu(), inf.Conv(3, 1)).build((4, 1), seed=0))
