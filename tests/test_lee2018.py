"""The lee2018 experiment: the acceptance figure (ReLU NNGP >= 0.92 on MNIST with 1,000 training images,
hyperparameters chosen on validation), the report layout, and minibatch SGD."""

import json

import pytest
import torch

import infinet as inf
from infinet.experiments import get, run_experiment
from infinet.experiments.lee2018 import select_kernel_models, validation_split
from infinet.training import mse_loss, train_sgd


def test_relu_nngp_on_mnist_1000_reaches_0_92():
    p = get("lee2018").resolve()
    data = inf.datasets.load("mnist5k", n_train=1000, n_test=4000, seed=0)
    fit, val = validation_split(1000, p["val_fraction"], seed=1)
    chosen = select_kernel_models(data, "ReLU", p, fit, val)
    assert len(data.x_test) == 4000  # the rest of the 5,000-image sample
    assert chosen["NNGP"]["test_accuracy"] >= 0.92
    assert chosen["NTK"]["test_accuracy"] >= 0.90


def test_validation_split_is_disjoint_and_seeded():
    fit, val = validation_split(100, 0.2, seed=3)
    assert len(val) == 20 and len(fit) == 80
    assert set(fit.tolist()).isdisjoint(val.tolist())
    assert torch.equal(validation_split(100, 0.2, seed=3)[1], val)


def test_report_layout_and_unavailable_dataset(tmp_path):
    params = {"datasets": ("digits", "cifar10:/nonexistent"), "n_train": 300, "n_test": 200, "depths": (1,),
              "w2_grid": (2.0,), "b2_grid": (0.0,), "nn_depths": (1,), "nn_w2_grid": (2.0,),
              "nn_readout_scales": (0.3,), "nn_steps": 60, "nn_monitor_every": 20, "width": 64}
    result, out = run_experiment("lee2018", tmp_path / "r", params=params, progress=False)
    table = result.tables["table1"]
    assert [row[3] for row in table.rows] == ["NN (SGD)", "NNGP", "NTK"] * 2
    assert {row[4] for row in table.rows} == {"ReLU", "tanh"}
    folder = out.parent
    saved = json.loads((folder / "results.json").read_text())
    assert "cifar10:/nonexistent" in saved["numbers"]["skipped_datasets"]
    for row in table.rows:
        assert 0.5 < row[5] <= 1.0  # digits is easy: every model is far above chance (0.1)
    assert (folder / "test_accuracy.png").exists()


def test_train_sgd_lowers_the_loss_and_monitors():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = torch.randn(64, 2)
    model = inf.serial(inf.Dense(32), inf.Relu(), inf.Dense(2)).build(5, seed=0)
    with torch.no_grad():
        before = float(mse_loss(model(x), y))
    rec = train_sgd(model, x, y, lr=0.5, steps=200, batch_size=16, momentum=0.5,
                    monitor=lambda m: float(mse_loss(m(x), y)), monitor_every=50)
    assert rec.steps == [0, 50, 100, 150, 200]
    assert rec.test_loss[0] == pytest.approx(before)
    assert rec.test_loss[-1] < 0.5 * before
    with pytest.raises(FloatingPointError, match="diverged"):
        train_sgd(inf.Dense(2, w_std=1e3).build(5, seed=0), x * 1e3, y, lr=1e3, steps=50)
    with pytest.raises(ValueError, match="momentum"):
        train_sgd(model, x, y, lr=0.1, steps=1, momentum=1.5)
