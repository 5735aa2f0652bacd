"""scikit-learn estimators: the estimator checks, pipelines, grid search, and agreement with predict."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import infinet as inf
from infinet.estimators import NNGPClassifier, NNGPRegressor, NTKClassifier, NTKRegressor
from infinet.predict import gp_inference


@pytest.mark.parametrize("estimator", [NNGPRegressor(), NTKRegressor(), NNGPClassifier(), NTKClassifier(),
                                       NTKClassifier(method="svm"), NNGPClassifier(method="svm", C=10.0)],
                         ids=lambda e: type(e).__name__ + ("-svm" if getattr(e, "method", "") == "svm" else ""))
def test_sklearn_estimator_checks(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert len(results) > 40


def test_regressor_equals_gp_posterior_and_ensemble():
    data = inf.datasets.load("diabetes", n_train=200, n_test=50)
    x, y, xt = data.x_train.numpy(), data.y_train[:, 0].numpy(), data.x_test.numpy()
    net = inf.serial(inf.Dense(64, w_std=1.5, b_std=0.1), inf.Erf(), inf.Dense(1, w_std=1.5, b_std=0.1))
    model = NNGPRegressor(net, diag_reg=1e-2).fit(x, y)
    mean, std = model.predict(xt, return_std=True)
    k, ks, kss = net.kernel(data.x_train), net.kernel(data.x_test, data.x_train), net.kernel(data.x_test)
    # NNGP readout-only ensemble at t = inf = GP posterior mean with the same regularization
    post = gp_inference(k.nngp, ks.nngp, data.y_train[:, 0], diag_reg=1e-2)
    assert np.allclose(mean, post.mean.numpy(), rtol=1e-8, atol=1e-10)
    assert std.shape == (50,) and np.all(std >= 0)
    assert model.score(xt, data.y_test[:, 0].numpy()) > 0.3  # R^2 on diabetes
    early = NTKRegressor(net, t=0.0).fit(x, y).predict(xt, return_std=True)
    assert np.all(early[0] == 0) and np.allclose(early[1], np.sqrt(kss.nngp.diagonal().numpy()))  # t = 0: prior


def test_classifier_pipeline_grid_search_and_spec_strings():
    data = inf.datasets.load("breast_cancer", n_train=200, n_test=100, standardize_inputs=False, sphere=False)
    x, y = data.x_train.numpy(), data.labels_train.numpy()
    pipe = make_pipeline(StandardScaler(), NTKClassifier("Dense(16, w_std=1.4) > Relu() > Dense(1, w_std=1.4)"))
    grid = GridSearchCV(pipe, {"ntkclassifier__diag_reg": [1e-4, 1e-1]}, cv=3).fit(x, y)
    acc = grid.score(data.x_test.numpy(), data.labels_test.numpy())
    assert acc > 0.9
    proba = grid.predict_proba(data.x_test.numpy())
    assert proba.shape == (100, 2) and np.allclose(proba.sum(1), 1.0)
    assert np.array_equal(proba.argmax(1), grid.predict(data.x_test.numpy()))


def test_conv_classifier_on_images_and_errors():
    data = inf.datasets.load("digits", n_train=100, n_test=50)
    clf = NNGPClassifier(inf.cntk(2), diag_reg=1e-3).fit(data.x_train.numpy(), data.labels_train.numpy())
    assert clf.score(data.x_test.numpy(), data.labels_test.numpy()) > 0.8
    with pytest.raises(ValueError, match="t must be"):
        NTKRegressor(t=-1.0).fit(np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="invalid architecture spec"):
        NTKRegressor("Dens(3)").fit(np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError):
        NTKRegressor().fit(np.full((4, 2), np.nan), np.ones(4))
    assert math.isinf(NTKRegressor().t)
    assert torch.get_default_dtype() == torch.float32  # estimators never change torch's global state
