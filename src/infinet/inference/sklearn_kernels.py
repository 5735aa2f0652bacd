"""Infinite-width kernels as scikit-learn kernel objects, for ``GaussianProcessRegressor`` and
``GaussianProcessClassifier``: :class:`NNGPKernel` and :class:`NTKKernel`.

The hyperparameters are the weight and bias standard deviations of the architecture's random affine
layers (Dense, Conv, ConvTranspose; :func:`infinet.fitting.affine_layers`), shared by all layers (a
number) or one per layer (a list); they replace the architecture's own values. scikit-learn optimizes
``theta``, their logarithms, within ``w_std_bounds`` / ``b_std_bounds`` ("fixed" holds them). The
gradient with respect to theta is analytic: autograd through the kernel computation, the full
(n, n, len(theta)) Jacobian taken from one backward pass with its graph kept and one more per
hyperparameter (Pearlmutter 1994's double-backward trick for Jacobian-vector products).
Rows of X are flattened inputs: ``input_shape`` restores images or sequences (e.g. (1, 28, 28)).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.extras import require

require("sklearn", "infinet.sklearn_kernels")
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .fitting import affine_layers, with_stds
from ..engine.layers.base import Layer
from ..engine.tiling import compute_kernel, kernel_diagonal
from ..engine.spec import parse_spec


class _NetworkKernel(Kernel):
    kernel_name = "nngp"

    def __init__(self, architecture, w_std=1.0, b_std=0.1, w_std_bounds=(1e-3, 1e3), b_std_bounds=(1e-3, 1e3),
                 input_shape=None):
        self.architecture = architecture
        self.w_std = w_std
        self.b_std = b_std
        self.w_std_bounds = w_std_bounds
        self.b_std_bounds = b_std_bounds
        self.input_shape = input_shape

    # -- hyperparameters (scikit-learn finds every property named hyperparameter_*) -----------------------------
    @property
    def hyperparameter_w_std(self) -> Hyperparameter:
        return Hyperparameter("w_std", "numeric", self.w_std_bounds, int(np.size(self.w_std)))

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", self.b_std_bounds, int(np.size(self.b_std)))

    def is_stationary(self) -> bool:
        return False

    @property
    def requires_vector_input(self) -> bool:
        return True

    # -- the network ---------------------------------------------------------------------------------------------
    def _network(self, w: torch.Tensor, b: torch.Tensor):
        """A copy of the architecture with w_std = w, b_std = b (tensors of 1 or one-per-layer values)."""
        arch = parse_spec(self.architecture) if isinstance(self.architecture, str) else self.architecture
        if not isinstance(arch, Layer):
            raise TypeError(f"architecture must be an infinet layer or spec, got {type(self.architecture).__name__}")
        if not affine_layers(arch):
            raise ValueError(f"{arch!r} has no layer with w_std / b_std (Dense, Conv, ConvTranspose)")
        return with_stds(arch, w, b)

    def _inputs(self, X) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        if x.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(x.shape)}")
        return x if self.input_shape is None else x.reshape(len(x), *self.input_shape)

    def _kernel(self, net, X, Y) -> torch.Tensor:
        x = self._inputs(X)
        y = None if Y is None else self._inputs(Y)
        return getattr(compute_kernel(net, x, y, get=self.kernel_name, progress=False), self.kernel_name)

    def __call__(self, X, Y=None, eval_gradient=False):
        """K(X, Y); with ``eval_gradient`` (Y None) also dK/dtheta, (n, n, len(theta)), theta = log stds."""
        w = torch.tensor(np.atleast_1d(self.w_std), dtype=torch.float64)
        b = torch.tensor(np.atleast_1d(self.b_std), dtype=torch.float64)
        if not eval_gradient:
            with torch.no_grad():
                return self._kernel(self._network(w, b), X, Y).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        log_w = torch.log(w).requires_grad_(True)
        log_b = torch.log(b).requires_grad_(True)
        k = self._kernel(self._network(torch.exp(log_w), torch.exp(log_b)), X, None)
        free = [(name, t) for name, t in (("b_std", log_b), ("w_std", log_w))  # scikit-learn's order: by name
                if not getattr(self, f"hyperparameter_{name}").fixed]
        if not free:
            return k.detach().numpy(), np.empty((len(k), len(k), 0))
        probe = torch.zeros_like(k, requires_grad=True)
        grads = torch.autograd.grad(k, [t for _, t in free], grad_outputs=probe, create_graph=True, allow_unused=True)
        columns = []
        for (_, t), g in zip(free, grads):
            for j in range(len(t)):  # unused (e.g. b_std of a network without biases): zero
                dk = None if g is None or not g.requires_grad else torch.autograd.grad(
                    g[j], probe, retain_graph=True, allow_unused=True)[0]
                columns.append(torch.zeros_like(k) if dk is None else dk)
        return k.detach().numpy(), torch.stack(columns, dim=2).numpy()

    def diag(self, X):
        """The kernel's diagonal K(x, x) for each row."""
        x = self._inputs(X)
        w = torch.tensor(np.atleast_1d(self.w_std), dtype=torch.float64)
        b = torch.tensor(np.atleast_1d(self.b_std), dtype=torch.float64)
        with torch.no_grad():
            return kernel_diagonal(self._network(w, b), x, self.kernel_name).numpy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.architecture!r}, w_std={np.round(self.w_std, 4).tolist()}, "
                f"b_std={np.round(self.b_std, 4).tolist()})")


class NNGPKernel(_NetworkKernel):
    """The NNGP of ``architecture`` as a scikit-learn kernel (see :mod:`infinet.sklearn_kernels`): the
    covariance of infinitely wide random networks' outputs (Lee et al. 2018, eq. 4; Matthews et al. 2018)."""

    kernel_name = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of ``architecture`` as a scikit-learn kernel (Jacot et al. 2018, Thm. 1): used as a GP prior,
    or for the kernel regression that gradient flow on the MSE converges to."""

    kernel_name = "ntk"


__all__ = ["NNGPKernel", "NTKKernel"]
