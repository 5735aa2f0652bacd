"""Linearized and Taylor-expanded networks (Lee et al. 2019, "Wide neural networks of any depth
evolve as linear models under gradient descent", eq. 6).

``linearize(model)`` is a module computing f_lin(x; theta) = f(x; theta0) + J(x; theta0) (theta - theta0)
by one forward-mode product (``torch.func.jvp``); ``taylor_expand(model, order)`` keeps the terms up to
``order``: f(theta0) + sum_k (1/k!) D^k f(theta0)[theta - theta0, ..., theta - theta0], by nested jvps.
Both train with any torch optimizer: their parameters theta start at theta0 (kept as buffers).
"""

from __future__ import annotations

import copy
import math

from torch import Tensor, nn
from torch.func import functional_call, jvp
from ..core.checks import check_int


class TaylorExpansion(nn.Module):
    """The Taylor polynomial of order ``order`` of ``model`` in its parameters around their values now.

    Parameters (named as in ``model`` with dots replaced by ``__``) are the trainable theta; the
    expansion point theta0 and the model's buffers are frozen. Forward: sum_{k <= order} (1/k!) d^k/ds^k
    f(x; theta0 + s (theta - theta0)) at s = 0, each derivative one more nested jvp (cost about
    2^order forward passes).
    """

    def __init__(self, model: nn.Module, order: int = 1):
        super().__init__()
        check_int(order, "order", 0)
        self.order = order
        self.model = copy.deepcopy(model)
        self._names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        for name in self._names:
            value = dict(self.model.named_parameters())[name].detach().clone()
            self.register_buffer("theta0__" + name.replace(".", "__"), value.clone())
            self.register_parameter(name.replace(".", "__"), nn.Parameter(value))
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _theta0(self) -> dict:
        return {n: getattr(self, "theta0__" + n.replace(".", "__")) for n in self._names}

    def _theta(self) -> dict:
        return {n: getattr(self, n.replace(".", "__")) for n in self._names}

    def forward(self, x: Tensor) -> Tensor:
        theta0, theta = self._theta0(), self._theta()
        delta = {n: theta[n] - theta0[n] for n in self._names}

        def f(params: dict) -> Tensor:
            return functional_call(self.model, params, (x,))

        def derivative(k: int):  # p -> d^k/ds^k f(p + s delta) at s = 0
            if k == 0:
                return f
            inner = derivative(k - 1)
            return lambda p: jvp(inner, (p,), (delta,))[1]

        out = f(theta0)
        for k in range(1, self.order + 1):
            out = out + derivative(k)(theta0) / math.factorial(k)
        return out


def linearize(model: nn.Module) -> TaylorExpansion:
    """f_lin(x; theta) = f(x; theta0) + J(x; theta0)(theta - theta0) (Lee et al. 2019, eq. 6): a module
    whose parameters start at the model's current ones; train it like the model."""
    return TaylorExpansion(model, 1)


def taylor_expand(model: nn.Module, order: int) -> TaylorExpansion:
    """The order-``order`` Taylor expansion of ``model`` in its parameters (see :class:`TaylorExpansion`)."""
    return TaylorExpansion(model, order)


__all__ = ["TaylorExpansion", "linearize", "taylor_expand"]
