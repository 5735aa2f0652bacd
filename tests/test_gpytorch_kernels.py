"""The infinite-width kernels as GPyTorch kernels: values, diag and batch shapes, and an ExactGP trained by its
marginal likelihood, matching infinet.fit_hyperparameters at the optimum."""

import gpytorch
import numpy as np
import torch
from sklearn.datasets import load_diabetes

import infinet as inf
from infinet.gpytorch_kernels import NNGPKernel, NTKKernel

F64 = torch.float64
ARCH = "Dense(256, w_std=1.2, b_std=0.2) > Relu() > Dense(1, w_std=1.2, b_std=0.2)"


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_values_diag_and_batches():
    x, z = randn(6, 3), randn(4, 3, seed=1)
    net = inf.parse_spec(ARCH)
    for cls, name in ((NNGPKernel, "nngp"), (NTKKernel, "ntk")):
        k = cls(ARCH)
        assert torch.allclose(k(x, z).to_dense(), getattr(net.kernel(x, z), name), rtol=1e-12)
        assert torch.allclose(k(x, diag=True), torch.diagonal(k(x).to_dense()), rtol=1e-12)
    per_layer = NNGPKernel("Dense(8, w_std=1.5, b_std=0.1) > Erf() > Dense(1, w_std=0.7)", share=False)
    assert per_layer.w_std.shape == (2,) and torch.allclose(per_layer.w_std, torch.tensor([1.5, 0.7], dtype=F64))
    batched = NNGPKernel(ARCH, batch_shape=torch.Size([2]))
    with torch.no_grad():
        batched.raw_w_std[1] += 0.5
    out = batched(x).to_dense()
    assert out.shape == (2, 6, 6)
    for i in range(2):
        one = NNGPKernel(ARCH)
        with torch.no_grad():
            one.raw_w_std.copy_(batched.raw_w_std[i])
            one.raw_b_std.copy_(batched.raw_b_std[i])
        assert torch.allclose(out[i], one(x).to_dense(), rtol=1e-12)
    assert batched(x.expand(2, 6, 3), diag=True).shape == (2, 6)


def test_exact_gp_trains_and_matches_fit_hyperparameters():
    X, y = load_diabetes(return_X_y=True)
    n = 100
    X, y = torch.tensor(X[:n] / X[:n].std(0)), torch.tensor((y[:n] - y[:n].mean()) / y[:n].std())

    class GP(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(X, y, likelihood)
            self.mean, self.cov = gpytorch.means.ZeroMean(), NNGPKernel(ARCH)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.cov(x))

    likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-10))
    model = GP(likelihood).double()
    likelihood.noise = 0.1
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    with gpytorch.settings.cholesky_jitter(double_value=0.0):
        start = float(mll(model(X), y).detach()) * n
        opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = -mll(model(X), y)
            loss.backward()
            return loss

        opt.step(closure)
        end = float(mll(model(X), y).detach()) * n
    assert end > start + 10
    fit = inf.fit_hyperparameters(ARCH, X, y, diag_reg=0.1, steps=200, restarts=3)
    assert abs(fit.log_marginal_likelihood - end) < 1e-4, (fit.log_marginal_likelihood, end)
    assert np.isclose(float(model.cov.w_std), fit.w_std[0], rtol=1e-3)
