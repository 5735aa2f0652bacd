"""Many independent random networks of one description at once.

A simulation of R random networks uses the module that ``build()`` returns for the description (its forward
pass, its parameterization) and draws R parameter sets from each random module's own initialization law
(:meth:`~infinet.engine.layers.dense.AffineModule.sample_parameters`), then runs the module on all R sets in
one batched call (``torch.func.vmap`` over ``torch.func.functional_call``). So a mean-field or infinite-depth
simulation and the kernel come from the same description: it has two meanings here too.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..engine.layers.base import Layer
from ..engine.layers.combinators import serial


def built_layers(layers: Sequence[Layer], input_shape, *, dtype: torch.dtype = torch.float64, device=None) -> list[nn.Module]:
    """The module ``serial(*layers).build(input_shape)`` makes for each of ``layers``, in order: templates
    whose forward passes a simulation runs with sampled parameters (a layer repeated L times in the network
    it simulates is built once here)."""
    return list(serial(*layers).build(input_shape, seed=0, dtype=dtype, device=device).children())


def sample_ensemble(module: nn.Module, count: int, generator: torch.Generator, *, dtype: torch.dtype = torch.float64,
                    device=None) -> dict[str, Tensor]:
    """``count`` independent draws of every random parameter of ``module`` (names as in
    ``module.named_parameters()``, each with a leading axis of ``count``), module by module in order, from
    ``generator``. Modules without a ``sample_parameters`` method keep their parameters (shared)."""
    params: dict[str, Tensor] = {}
    for prefix, child in module.named_modules():
        draw = getattr(child, "sample_parameters", None)
        if draw is None:
            continue
        for name, value in draw(count, generator, dtype=dtype, device=device).items():
            params[f"{prefix}.{name}" if prefix else name] = value
    return params


def ensemble_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor, *, shared_input: bool = False) -> Tensor:
    """``module`` applied with each of the R parameter sets in ``params`` (leading axis R) to its own input
    ``x[r]`` (or, with ``shared_input``, to the same ``x``): one vectorized call, output (R, ...)."""
    def one(p, inputs):
        return functional_call(module, p, (inputs,))

    return vmap(one, in_dims=(0, None if shared_input else 0))(params, x)


__all__ = ["built_layers", "ensemble_forward", "sample_ensemble"]
