"""The infinite-width kernels as scikit-learn kernels: gradient check, agreement with NNGPRegressor, and
Gaussian-process regression and classification fitting them."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.gaussian_process import GaussianProcessClassifier, GaussianProcessRegressor
from sklearn.gaussian_process.kernels import _approx_fprime

import infinet as inf
from infinet.estimators import NNGPRegressor
from infinet.fitting import affine_layers
from infinet.sklearn_kernels import NNGPKernel, NTKKernel

ARCH = "Dense(512, w_std=1.0, b_std=0.1) > Relu() > Dense(512) > Erf() > Dense(1, b_std=0.1)"


def diabetes(n=80):
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:n] / X[:n].std(0), y[:n]
    return X, (y - y.mean()) / y.std()


@pytest.mark.parametrize("kernel", [
    NNGPKernel(ARCH, w_std=1.3, b_std=0.2),
    NTKKernel(ARCH, w_std=[1.3, 1.1, 0.9], b_std=[0.2, 0.05]),
    NNGPKernel("Dense(8) > Tanh() > Dense(1)", w_std=1.2, b_std=0.3),
    NTKKernel("Conv(4, 3, b_std=0.1) > Relu() > GlobalAvgPool() > Dense(1)", w_std=1.1, b_std=0.3, input_shape=(2, 5)),
])
def test_gradient_matches_finite_differences(kernel):
    """scikit-learn's own check (sklearn/gaussian_process/tests/test_kernels.py): dK/dtheta against finite
    differences of K(theta)."""
    X = diabetes(12)[0]
    K, grad = kernel(X, eval_gradient=True)
    assert grad.shape == (12, 12, len(kernel.theta)) and np.allclose(K, kernel(X))

    def at(theta):
        return kernel.clone_with_theta(theta)(X, eval_gradient=False)

    numeric = _approx_fprime(kernel.theta, at, 1e-7)
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-7 * np.abs(K).max())
    assert np.allclose(kernel.diag(X), np.diag(K), rtol=1e-12)


def test_fixed_bounds_and_clone():
    kernel = NNGPKernel(ARCH, w_std=1.3, b_std=0.2, b_std_bounds="fixed")
    assert len(kernel.theta) == 1 and kernel(diabetes(5)[0], eval_gradient=True)[1].shape == (5, 5, 1)
    copy = clone(kernel)
    assert copy.get_params()["w_std"] == 1.3 and np.allclose(copy(diabetes(5)[0]), kernel(diabetes(5)[0]))
    with pytest.raises(ValueError, match="one number or one per layer"):
        NNGPKernel(ARCH, w_std=[1.0, 2.0])(diabetes(3)[0])


def test_regressor_matches_nngp_regressor_at_fixed_hyperparameters():
    X, y = diabetes()
    kernel = NNGPKernel(ARCH, w_std=1.3, b_std=0.2)
    gpr = GaussianProcessRegressor(kernel, alpha=1e-2, optimizer=None).fit(X[:60], y[:60])
    net = inf.parse_spec(ARCH)
    for layer in affine_layers(net):
        layer.w_std = 1.3
        layer.b_std = None if layer.b_std is None else 0.2
    k_train = net.kernel(torch.tensor(X[:60])).nngp
    est = NNGPRegressor(net, diag_reg=1e-2 / float(k_train.diagonal().mean())).fit(X[:60], y[:60])
    assert np.allclose(gpr.predict(X[60:]), est.predict(X[60:]), rtol=0, atol=1e-8)


def test_gaussian_processes_fit_the_hyperparameters():
    X, y = diabetes()
    gpr = GaussianProcessRegressor(NNGPKernel(ARCH), alpha=1e-1, random_state=0).fit(X[:60], y[:60])
    start = GaussianProcessRegressor(NNGPKernel(ARCH), alpha=1e-1, optimizer=None).fit(X[:60], y[:60])
    assert gpr.log_marginal_likelihood_value_ > start.log_marginal_likelihood_value_ + 1.0
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xc = (Xc - Xc.mean(0)) / Xc.std(0)
    clf = GaussianProcessClassifier(NNGPKernel("Dense(8, b_std=0.1) > Relu() > Dense(1, b_std=0.1)"), random_state=0)
    clf.fit(Xc[:120], yc[:120])
    assert clf.score(Xc[120:240], yc[120:240]) > 0.9
