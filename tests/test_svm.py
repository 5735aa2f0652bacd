"""Kernel SVMs: the low-rank interior-point solver against libsvm, and the SVM estimators."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import infinet as inf
from infinet.estimators import NNGPClassifier, NTKClassifier
from infinet.inference.svm import LowRankSVC, fit_svc, low_rank_factor


def _dual_objective(kernel, y, alpha):
    """1/2 a^T Q a - 1^T a of the binary SVM dual, Q = y y^T K (to be minimized)."""
    q = (y[:, None] * y[None, :]) * kernel
    return 0.5 * alpha @ q @ alpha - alpha.sum()


def _overlapping_classes(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)) + 0.8 * np.eye(classes, d)[labels]  # overlapping: many margin errors
    return x, labels


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_low_rank_solver_reaches_the_optimum_libsvm_approaches(C):
    x, labels = _overlapping_classes(300, 6, 2, seed=0)
    kernel = x @ x.T
    factor = low_rank_factor(kernel)
    assert factor is not None and factor.shape == (300, 6)
    assert np.allclose(factor @ factor.T, kernel, atol=1e-10 * np.abs(kernel).max())
    ours = LowRankSVC(C).fit(factor, labels)
    _, _, idx, coef, bias = ours.pairs_[0]
    y = np.where(labels[idx] == 0, 1.0, -1.0)
    alpha = coef * y
    assert np.all(alpha >= -1e-9 * C) and np.all(alpha <= C * (1 + 1e-9)) and abs(alpha @ y) < 1e-8 * C * len(y)
    svc = SVC(kernel="precomputed", C=C).fit(kernel, labels)
    theirs = np.zeros(len(labels))
    theirs[svc.support_] = np.abs(svc.dual_coef_[0])
    # both are at the optimum to within their tolerances: the interior point's 1e-8 max(1, C) residuals,
    # libsvm's 1e-3 on the gradient
    ours_obj, their_obj = _dual_objective(kernel, y, alpha), _dual_objective(kernel, y, theirs)
    assert ours_obj <= their_obj + 1e-6 * abs(their_obj)
    ours_f, svc_f = ours.decision_function(kernel), svc.decision_function(kernel)
    assert np.abs(ours_f - svc_f).max() < 0.05  # libsvm's tolerance, not more
    assert np.mean(ours.predict(kernel) == svc.predict(kernel)) >= 0.99


def test_low_rank_multiclass_votes_like_libsvm():
    x, labels = _overlapping_classes(400, 5, 4, seed=2)
    kernel = x @ x.T
    ours = fit_svc(kernel, labels, 1.0)
    assert isinstance(ours, LowRankSVC) and len(ours.pairs_) == 6
    svc = SVC(kernel="precomputed", C=1.0).fit(kernel, labels)
    test = x[:50] @ x.T
    assert np.mean(ours.predict(test) == svc.predict(test)) >= 0.98
    assert ours.decision_function(test).shape == (50, 4)
    assert np.array_equal(ours.decision_function(test).argmax(1), ours.predict(test))


def test_fit_svc_takes_libsvm_for_full_rank_small_or_degenerate_kernels():
    x, labels = _overlapping_classes(300, 6, 2, seed=1)
    rbf = np.exp(-0.5 * ((x[:, None] - x[None]) ** 2).sum(-1))
    assert isinstance(fit_svc(rbf, labels, 1.0), SVC)  # full rank
    small = x[:100] @ x[:100].T
    assert low_rank_factor(small) is None and isinstance(fit_svc(small, labels[:100], 1.0), SVC)
    # duplicated points, a tiny rank and all multipliers at the bound: the interior point may not finish; libsvm does
    dup = np.repeat(x[:5, :1], 60, axis=0)
    dup_labels = np.tile([0, 1], 150)
    model = fit_svc(dup @ dup.T, dup_labels, 10.0)
    assert model.predict(dup @ dup.T).shape == (300,)


def test_low_rank_speed_where_libsvm_crawls():
    """A rank-8 kernel on 2,000 overlapping examples at C = 10^4: the case that costs libsvm minutes."""
    import time

    x, labels = _overlapping_classes(2000, 8, 2, seed=3)
    start = time.perf_counter()
    model = fit_svc(x @ x.T, labels, 1e4)
    assert isinstance(model, LowRankSVC) and time.perf_counter() - start < 10


def test_svm_classifier_grid_search_matches_svc_on_the_kernel():
    data = inf.datasets.load("breast_cancer", n_train=200, n_test=100)
    x, y, xt = data.x_train.numpy(), data.labels_train.numpy(), data.x_test.numpy()
    net = inf.fully_connected(2, 1)
    clf = NTKClassifier(net, method="svm", C=3.0).fit(x, y)
    k, kt = net.kernel(data.x_train, get="ntk").ntk.numpy(), net.kernel(data.x_test, data.x_train, get="ntk").ntk.numpy()
    svc = SVC(kernel="precomputed", C=3.0).fit(k, y)
    assert np.array_equal(clf.predict(xt), svc.predict(kt))
    assert np.allclose(clf.decision_function(xt), svc.decision_function(kt))
    assert not hasattr(clf, "predict_proba")
    grid = GridSearchCV(NTKClassifier(net, method="svm"), {"C": [0.1, 1.0, 10.0]}, cv=3).fit(x, y)
    assert grid.best_params_["C"] in (0.1, 1.0, 10.0) and grid.score(xt, data.labels_test.numpy()) > 0.9
    labels = np.array(["benign", "malignant"])[y]
    assert set(NNGPClassifier(net, method="svm").fit(x, labels).predict(xt)) <= {"benign", "malignant"}
    for bad, match in ((dict(method="svr"), "method must be one of"), (dict(method="svm", C=0.0), "C must be"),
                       (dict(method="svm", C=float("inf")), "C must be")):
        with pytest.raises(ValueError, match=match):
            NTKClassifier(net, **bad).fit(x, y)
    assert torch.get_default_dtype() == torch.float32
