"""Infinite-width kernels as GPyTorch kernels: :class:`NNGPKernel` and :class:`NTKKernel`.

The hyperparameters are the weight and bias standard deviations of the architecture's random affine
layers (:func:`infinet.fitting.affine_layers`), shared by all layers (``share=True``) or one per layer,
stored as raw parameters under GPyTorch constraints (positive by default) and initialized from the
architecture's own values. The kernel is differentiable in them (autograd through the kernel
computation), so an ``ExactGP`` trains them by its marginal likelihood like any GPyTorch kernel.
``batch_shape`` gives a batch of independent hyperparameters (one kernel per batch entry); ``diag=True``
returns K(x, x) per point. Inputs are (..., n, features); ``input_shape`` restores images or sequences.
Kernels are computed in float64 and returned in the inputs' dtype.
"""

from __future__ import annotations

import math

import torch

from ..core.extras import require

gpytorch = require("gpytorch", "infinet.gpytorch_kernels")
from gpytorch.constraints import Positive  # noqa: E402

from .fitting import affine_layers, with_stds
from ..engine.layers.base import Layer
from ..engine.tiling import compute_kernel, kernel_diagonal
from ..engine.spec import parse_spec


class _NetworkKernel(gpytorch.kernels.Kernel):
    kernel_name = "nngp"
    is_stationary = False

    def __init__(self, architecture, share: bool = True, w_std_constraint=None, b_std_constraint=None,
                 input_shape=None, **kwargs):
        super().__init__(**kwargs)
        arch = parse_spec(architecture) if isinstance(architecture, str) else architecture
        if not isinstance(arch, Layer):
            raise TypeError(f"architecture must be an infinet layer or spec, got {type(architecture).__name__}")
        self.architecture, self.share, self.input_shape = arch, bool(share), input_shape
        layers = affine_layers(arch)
        if not layers:
            raise ValueError(f"{arch!r} has no layer with w_std / b_std (Dense, Conv, ConvTranspose)")
        biased = [layer for layer in layers if layer.b_std is not None]
        w0 = [float(layer.w_std) for layer in layers]
        b0 = [max(float(layer.b_std), 1e-3) for layer in biased]
        if self.share:
            w0 = [math.exp(sum(map(math.log, w0)) / len(w0))]
            b0 = [math.exp(sum(map(math.log, b0)) / len(b0))] if b0 else []
        for name, values, constraint in (("w_std", w0, w_std_constraint), ("b_std", b0, b_std_constraint)):
            constraint = Positive() if constraint is None else constraint
            start = torch.tensor(values, dtype=torch.float64).expand(*self.batch_shape, len(values)).clone()
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(constraint.inverse_transform(start)))
            self.register_constraint(f"raw_{name}", constraint)

    @property
    def w_std(self) -> torch.Tensor:
        return self.raw_w_std_constraint.transform(self.raw_w_std)

    @property
    def b_std(self) -> torch.Tensor:
        return self.raw_b_std_constraint.transform(self.raw_b_std)

    def _network(self, w: torch.Tensor, b: torch.Tensor) -> Layer:
        return with_stds(self.architecture, w, b)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        return x if self.input_shape is None else x.reshape(len(x), *self.input_shape)

    def _one(self, w, b, x1, x2, diag: bool) -> torch.Tensor:
        net = self._network(w, b)
        a = self._rows(x1)
        same = x2 is None or (x1.shape == x2.shape and torch.equal(x1, x2))
        if diag:
            return kernel_diagonal(net, a, self.kernel_name)
        k = compute_kernel(net, a, None if same else self._rows(x2), get=self.kernel_name, progress=False)
        return getattr(k, self.kernel_name)

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise NotImplementedError(f"{type(self).__name__} does not take last_dim_is_batch")
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], self.batch_shape)
        n = math.prod(batch)  # explicit: an architecture without biases has b_std of 0 values (-1 is ambiguous)
        w = self.w_std.expand(*batch, self.w_std.shape[-1]).reshape(n, self.w_std.shape[-1])
        b = self.b_std.expand(*batch, self.b_std.shape[-1]).reshape(n, self.b_std.shape[-1])
        a = x1.expand(*batch, *x1.shape[-2:]).reshape(n, *x1.shape[-2:])
        c = x2.expand(*batch, *x2.shape[-2:]).reshape(n, *x2.shape[-2:])
        outs = [self._one(w[i], b[i], a[i], c[i], diag) for i in range(len(a))]
        out = torch.stack(outs).reshape(*batch, *outs[0].shape)
        return out.to(x1.dtype)


class NNGPKernel(_NetworkKernel):
    """The NNGP of ``architecture`` as a GPyTorch kernel (see :mod:`infinet.gpytorch_kernels`; Lee et al. 2018,
    eq. 4): the prior covariance of infinitely wide random networks' outputs."""

    kernel_name = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of ``architecture`` as a GPyTorch kernel (Jacot et al. 2018, Thm. 1), used as a GP prior."""

    kernel_name = "ntk"


__all__ = ["NNGPKernel", "NTKKernel"]
