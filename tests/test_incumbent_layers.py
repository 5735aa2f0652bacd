"""Issue 18's layers against neural-tangents 0.6.5: reference values made by
tests/data/incumbent_layers/make_reference.py in a separate environment, stored with their configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import infinet as inf

DATA = Path(__file__).parent / "data" / "incumbent_layers"
TABLE = json.loads((DATA / "configs.json").read_text())
CONFIGS = TABLE["configs"]
REFERENCE = np.load(DATA / "reference.npz")


def slice_item(item):
    return slice(*item) if isinstance(item, list) else item


def layer(spec: list) -> inf.Layer:
    """One layer of the configuration language of make_reference.py."""
    kind, args = spec[0], spec[1:]
    simple = {"relu": inf.Relu, "erf": inf.Erf, "gelu": inf.Gelu, "gabor": inf.Gabor, "layernorm": inf.LayerNorm,
              "gap": inf.GlobalAvgPool, "flatten": inf.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "dense":
        return inf.Dense(args[0], w_std=args[1], b_std=args[2])
    if kind == "conv":
        return inf.Conv(args[0], args[1], padding=args[4], w_std=args[2], b_std=args[3])
    if kind == "convlocal":
        return inf.ConvLocal(args[0], args[1], stride=args[5], padding=args[4], w_std=args[2], b_std=args[3])
    if kind == "rbf":
        return inf.Rbf(args[0])
    if kind == "expnormalized":
        return inf.ExpNormalized(gamma=args[0], shift=args[1])
    if kind == "hermite":
        return inf.Hermite(args[0])
    if kind == "index":
        return inf.Index((slice(None), slice(None), *[slice_item(i) for i in args[0]]))
    if kind == "resize":
        return inf.ImageResize((-1, -1, *args[0]), method=args[1], antialias=args[2])
    if kind == "dot":
        axes = tuple(2 + a for a in args[1])
        return inf.DotGeneral(rhs=torch.as_tensor(REFERENCE[args[0]]),
                              dimension_numbers=((axes, tuple(range(len(axes)))), ((), ())))
    if kind == "aggregate":
        return inf.Aggregate(None if len(args) < 2 else tuple(2 + a for a in args[1]), implementation=args[0])
    raise ValueError(kind)


def network(layers: list) -> inf.Layer:
    return inf.serial(*[layer(spec) for spec in layers])


def graph_kwargs(layers: list) -> dict:
    kinds = {(spec[1], len(spec) > 2) for spec in layers if spec[0] == "aggregate"}
    if not kinds:
        return {}
    ((kind, rows),) = kinds
    return {"pattern": torch.as_tensor(REFERENCE["adj_rows" if rows else "adj" if kind == "dense" else "arcs"])}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_equals_neural_tangents(name):
    inputs, layers = CONFIGS[name]
    x = torch.as_tensor(REFERENCE[inputs])
    kwargs = graph_kwargs(layers)
    if inputs.endswith("_masked"):
        kwargs["mask_constant"] = TABLE["mask_constant"]
    k = network(layers).kernel(x, **kwargs)
    for what in ("nngp", "ntk"):
        expected = torch.as_tensor(REFERENCE[f"{name}/{what}"]).reshape(len(x), len(x))
        got = getattr(k, what)
        scale = expected.abs().max()
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-8 * float(scale)), (
            f"{name} {what}: max abs diff {float((got - expected).abs().max()):.3g} (scale {float(scale):.3g})")


def test_every_new_layer_is_covered():
    kinds = {spec[0] for _, layers in CONFIGS.values() for spec in layers}
    assert {"aggregate", "convlocal", "resize", "index", "dot", "rbf", "gabor", "expnormalized", "hermite"} <= kinds
    assert sum(inputs.endswith("_masked") for inputs, _ in CONFIGS.values()) >= 2


@pytest.mark.parametrize("name", sorted(TABLE["resizes"]))
def test_finite_resize_equals_jax_image_resize(name):
    """The finite ImageResize is jax.image.resize (half-pixel centres, antialiasing, every method)."""
    size, method, antialias = TABLE["resizes"][name]
    x = torch.as_tensor(REFERENCE["img"])
    model = inf.ImageResize((-1, -1, *size), method, antialias=antialias).build(tuple(x.shape[1:]))
    expected = torch.as_tensor(REFERENCE[f"resize/{name}"])
    assert torch.allclose(model(x), expected, rtol=1e-12, atol=1e-12)
