"""Reference kernels from neural-tangents 0.6.5 (the incumbent) for the layers of issue 18: Aggregate,
ConvLocal, ImageResize, Index, DotGeneral, Rbf, Gabor, ExpNormalized, Hermite, and mask_constant on
images and graphs. For tests/test_incumbent_layers.py. Run in a separate environment (see
../../../../shared/DESIGN.md):

    python3 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" "neural-tangents==0.6.5"
    /tmp/ntenv/bin/python tests/data/incumbent_layers/make_reference.py

Each configuration is a list of layers in a small table language (below) that the test reads too, so
both libraries build the same network from the same JSON. Inputs are stored channels first (as
infinet takes them); this script moves channels last for neural-tangents. Index items, resize shapes and
DotGeneral axes are written per spatial axis, so the two layouts map onto each other.
"""

import json
import os
import sys
import types

import numpy as np

sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# inputs: "seq" (4 x 3 x 7), "img" (3 x 2 x 5 x 6), "graph" (4 x 3 x 6 nodes with dense adjacency "adj",
# sparse arcs "arcs"), "seq_masked" / "img_masked" / "graph_masked" (padded with mask_constant = -5)
CONFIGS = {
    # activations (on unit-variance inputs where neural-tangents assumes them, see Hermite)
    "rbf": ("seq", [["dense", 16, 1.2, 0.1], ["rbf", 0.7], ["flatten"], ["dense", 1, 1.0, 0.0]]),
    "rbf-gamma2-conv": ("img", [["conv", 8, 3, 1.5, 0.2, "SAME"], ["rbf", 2.0], ["gap"], ["dense", 1, 1.0, 0.1]]),
    "gabor": ("seq", [["dense", 16, 1.3, 0.2], ["gabor"], ["dense", 16, 1.1, 0.1], ["gabor"], ["flatten"],
                      ["dense", 1, 1.0, 0.0]]),
    "gabor-large-var": ("img", [["conv", 8, 3, 3.0, 0.5, "SAME"], ["gabor"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    "expnormalized": ("seq", [["dense", 16, 1.4, 0.1], ["expnormalized", 1.0, -1.0], ["flatten"],
                              ["dense", 1, 1.0, 0.0]]),
    "expnormalized-gamma3-conv": ("img", [["conv", 8, 3, 1.2, 0.3, "SAME"], ["expnormalized", 3.0, 0.5],
                                          ["conv", 8, 3, 1.0, 0.0, "SAME"], ["expnormalized", 0.5, -1.0], ["gap"],
                                          ["dense", 1, 1.0, 0.0]]),
    "hermite-2": ("seq", [["dense", 16, 1.0, 0.0], ["layernorm"], ["hermite", 2], ["flatten"], ["dense", 1, 1.0, 0.0]]),
    "hermite-3-gap": ("img", [["conv", 8, 3, 1.0, 0.0, "SAME"], ["layernorm"], ["hermite", 3], ["gap"],
                              ["dense", 1, 1.0, 0.0]]),
    "hermite-0-1": ("seq", [["dense", 16, 1.0, 0.0], ["layernorm"], ["hermite", 1], ["dense", 16, 1.0, 0.0],
                            ["layernorm"], ["hermite", 0], ["flatten"], ["dense", 1, 1.0, 0.1]]),
    # locally connected
    "convlocal-valid-flatten": ("img", [["convlocal", 8, 3, 1.3, 0.2, "VALID", 1], ["relu"], ["flatten"],
                                        ["dense", 1, 1.0, 0.0]]),
    "convlocal-same-gap": ("img", [["convlocal", 8, 3, 1.5, 0.1, "SAME", 1], ["relu"], ["conv", 8, 3, 1.2, 0.0, "SAME"],
                                   ["relu"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    "convlocal-strided-seq": ("seq", [["convlocal", 8, 3, 1.1, None, "SAME", 2], ["erf"],
                                      ["convlocal", 8, 2, 1.4, 0.3, "CIRCULAR", 1], ["flatten"], ["dense", 1, 1.0, 0.0]]),
    # indexing
    "index-last-step": ("seq", [["conv", 8, 3, 1.4, 0.1, "SAME"], ["relu"], ["index", [-1]], ["dense", 1, 1.0, 0.0]]),
    "index-slices-img": ("img", [["conv", 8, 3, 1.4, 0.1, "SAME"], ["relu"], ["index", [[1, 4, 1], [None, None, -2]]],
                                 ["dense", 8, 1.1, 0.0], ["relu"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    "index-row": ("img", [["dense", 8, 1.0, 0.0], ["relu"], ["index", [2, [0, 5, 2]]], ["flatten"],
                          ["dense", 1, 1.0, 0.0]]),
    # resizing. neural-tangents resizes the wrong axes of non-square feature maps after an odd number of
    # shared-weight convolutions (its kernels then hold the spatial axes reversed, which ImageResize
    # ignores): an even number of Conv layers or none precedes each resize here, and
    # tests/test_position_maps.py checks the odd case against Monte Carlo of finite networks.
    "resize-linear-down": ("img", [["conv", 8, 3, 1.3, 0.1, "SAME"], ["relu"], ["conv", 8, 3, 1.1, 0.0, "SAME"], ["relu"], ["resize", [3, 4], "linear", True],
                                   ["gap"], ["dense", 1, 1.0, 0.0]]),
    "resize-linear-up-noaa": ("seq", [["conv", 8, 3, 1.3, 0.1, "SAME"], ["relu"], ["resize", [11], "linear", False],
                                      ["flatten"], ["dense", 1, 1.0, 0.0]]),
    "resize-nearest": ("img", [["dense", 8, 1.3, 0.1], ["relu"], ["resize", [7, -1], "nearest", True],
                               ["dense", 8, 1.1, 0.0], ["relu"], ["flatten"], ["dense", 1, 1.0, 0.0]]),
    "resize-linear-down-noaa-flatten": ("img", [["dense", 8, 1.2, 0.0], ["erf"], ["resize", [2, 3], "linear", False],
                                                ["flatten"], ["dense", 1, 1.0, 0.0]]),
    # dot general with a constant (rhs contracting position axes, so channels stay last in neural-tangents)
    "dotgeneral-scalar": ("seq", [["dense", 8, 1.3, 0.1], ["relu"], ["dot", "scalar", []], ["dense", 8, 1.1, 0.0], ["relu"], ["flatten"],
                                  ["dense", 1, 1.0, 0.0]]),
    "dotgeneral-vector": ("img", [["conv", 8, 3, 1.3, 0.1, "SAME"], ["relu"], ["dot", "vec_h", [0]], ["dense", 8, 1.1, 0.0], ["relu"],
                                  ["flatten"], ["dense", 1, 1.0, 0.0]]),
    "dotgeneral-matrix": ("img", [["dense", 8, 1.3, 0.1], ["relu"], ["dot", "mat_hw", [0, 1]], ["dense", 1, 1.0, 0.0]]),
    # graphs
    "aggregate-dense": ("graph", [["dense", 16, 1.2, 0.1], ["aggregate", "dense"], ["relu"], ["dense", 16, 1.1, 0.0],
                                  ["aggregate", "dense"], ["relu"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    "aggregate-sparse": ("graph", [["dense", 16, 1.2, 0.1], ["aggregate", "sparse"], ["relu"], ["dense", 16, 1.1, 0.0],
                                   ["aggregate", "sparse"], ["relu"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    "aggregate-layernorm-flatten": ("graph", [["dense", 16, 1.0, 0.0], ["aggregate", "dense"], ["layernorm"],
                                              ["erf"], ["dense", 16, 1.2, 0.1], ["aggregate", "dense"], ["flatten"],
                                              ["dense", 1, 1.0, 0.0]]),
    "aggregate-rows-img": ("img", [["conv", 8, 3, 1.2, 0.1, "SAME"], ["aggregate", "dense", [0]], ["relu"],
                                   ["conv", 8, 3, 1.1, 0.0, "SAME"], ["relu"], ["gap"], ["dense", 1, 1.0, 0.0]]),
    # mask_constant: padded positions of images and sequences (position-wise layers, global pooling)
    "masked-seq": ("seq_masked", [["dense", 16, 1.3, 0.1], ["relu"], ["dense", 16, 1.2, 0.0], ["gelu"], ["gap"],
                                  ["dense", 1, 1.0, 0.0]]),
    "masked-img": ("img_masked", [["dense", 16, 1.3, 0.1], ["layernorm"], ["erf"], ["dense", 16, 1.2, 0.0], ["relu"],
                                  ["gap"], ["dense", 1, 1.0, 0.0]]),
}
MASK_CONSTANT = -5.0
# finite forward passes of jax.image.resize (which neural-tangents' ImageResize calls): (spatial size, method, antialias)
RESIZES = {"linear-down-aa": ([3, 4], "linear", True), "linear-down": ([3, 4], "linear", False),
           "linear-up": ([7, 9], "linear", True), "nearest": ([3, 8], "nearest", True),
           "cubic-aa": ([4, 8], "cubic", True), "lanczos3-aa": ([3, 4], "lanczos3", True),
           "lanczos5": ([8, 4], "lanczos5", False)}


def make_inputs():
    rng = np.random.default_rng(18)
    seq = rng.standard_normal((4, 3, 7))
    img = rng.standard_normal((3, 2, 5, 6))
    graph = rng.standard_normal((4, 3, 6))
    adj = (rng.random((4, 6, 6)) < 0.4).astype(np.float64) * rng.uniform(0.5, 1.5, (4, 6, 6))
    arcs = rng.integers(0, 6, (4, 9, 2))
    arcs[1, 7:] = -1  # padding arcs
    arcs[3, 2] = arcs[3, 0]  # a repeated arc counts twice
    seq_masked = seq.copy()
    seq_masked[0, :, 5:] = MASK_CONSTANT
    seq_masked[2, :, 3:] = MASK_CONSTANT
    img_masked = img.copy()
    img_masked[0, :, 3:, :] = MASK_CONSTANT
    img_masked[1, :, :, 4:] = MASK_CONSTANT
    return {"seq": seq, "img": img, "graph": graph, "adj": adj, "arcs": arcs, "seq_masked": seq_masked,
            "img_masked": img_masked, "vec_h": rng.standard_normal(5), "mat_hw": rng.standard_normal((5, 6)),
            "scalar": np.array(1.7), "adj_rows": rng.uniform(-0.5, 1.0, (3, 5, 5))}


def nt_index(items):
    out = [slice(None)]
    for item in items:
        out.append(slice(*item) if isinstance(item, list) else item)
    return tuple(out) + (slice(None),)


def nt_layer(spec, data, spatial_ndim):
    kind, args = spec[0], spec[1:]
    if kind == "dense":
        return stax.Dense(args[0], W_std=args[1], b_std=args[2])
    if kind == "conv":
        return stax.Conv(args[0], (args[1],) * spatial_ndim, padding=args[4], W_std=args[2], b_std=args[3])
    if kind == "convlocal":
        return stax.ConvLocal(args[0], (args[1],) * spatial_ndim, strides=(args[5],) * spatial_ndim, padding=args[4],
                              W_std=args[2], b_std=args[3])
    if kind == "relu":
        return stax.Relu()
    if kind == "erf":
        return stax.Erf()
    if kind == "gelu":
        return stax.Gelu()
    if kind == "rbf":
        return stax.Rbf(args[0])
    if kind == "gabor":
        return stax.Gabor()
    if kind == "expnormalized":
        return stax.ExpNormalized(gamma=args[0], shift=args[1])
    if kind == "hermite":
        return stax.Hermite(args[0])
    if kind == "layernorm":
        return stax.LayerNorm(axis=-1)
    if kind == "gap":
        return stax.GlobalAvgPool()
    if kind == "flatten":
        return stax.Flatten()
    if kind == "index":
        return stax.Index(nt_index(args[0]))
    if kind == "resize":
        return stax.ImageResize((-1, *args[0], -1), method=args[1], antialias=args[2])
    if kind == "dot":
        constant = data[args[0]]
        axes = tuple(1 + a for a in args[1])
        return stax.DotGeneral(rhs=constant, dimension_numbers=((axes, tuple(range(len(axes)))), ((), ())))
    if kind == "aggregate":  # optional: the aggregated spatial axes (0 = first spatial axis)
        axes = None if len(args) < 2 else tuple(1 + a for a in args[1])
        return stax.Aggregate(aggregate_axis=axes, implementation=args[0].upper())
    raise ValueError(kind)


def main():
    data = make_inputs()
    out = dict(data)
    for name, (inputs, layers) in CONFIGS.items():
        x = np.moveaxis(data[inputs], 1, -1)
        spatial_ndim = x.ndim - 2
        kernel_fn = stax.serial(*[nt_layer(spec, data, spatial_ndim) for spec in layers])[2]
        kwargs = {}
        for spec in layers:
            if spec[0] == "aggregate":
                pattern = data["adj"] if spec[1] == "dense" else data["arcs"]
                if len(spec) > 2:
                    pattern = data["adj_rows"]
                kwargs["pattern"] = (pattern, pattern)
        if inputs.endswith("_masked"):
            kwargs["mask_constant"] = MASK_CONSTANT
        k = kernel_fn(x, x, ("nngp", "ntk"), **kwargs)
        for what in ("nngp", "ntk"):
            value = np.asarray(getattr(k, what))
            if not np.isfinite(value).all():
                raise SystemExit(f"neural-tangents returned non-finite {what} for {name}")
            out[f"{name}/{what}"] = value
    image = np.moveaxis(data["img"], 1, -1)
    for name, (size, method, antialias) in RESIZES.items():
        resized = jax.image.resize(image, (image.shape[0], *size, image.shape[-1]), method, antialias=antialias)
        out[f"resize/{name}"] = np.moveaxis(np.asarray(resized), -1, 1)
    np.savez(os.path.join(HERE, "reference.npz"), **out)
    with open(os.path.join(HERE, "configs.json"), "w") as f:
        json.dump({"nt_version": "0.6.5", "jax_version": jax.__version__, "mask_constant": MASK_CONSTANT,
                   "configs": CONFIGS, "resizes": RESIZES}, f, indent=1)
    print(f"wrote {len(out)} arrays")


if __name__ == "__main__":
    main()
