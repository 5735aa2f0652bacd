"""infinet: infinite neural networks in PyTorch.

One architecture description gives the finite ``torch.nn.Module`` (``net.build()``) and its exact
infinite-width NNGP and NTK kernels (``net.kernel(x1, x2)``).
"""

from . import _compat

_compat.install()  # the flat module paths of earlier versions (infinet.tiling, infinet.layers.dense, ...)

from . import datasets, empirical, predict  # noqa: E402  (public modules, the first two by their old paths)
from .core import __version__  # noqa: E402
from .engine import architectures, gaussian  # noqa: E402
from .finite import linearization  # noqa: E402
from .inference import fitting  # noqa: E402
from .finite.empirical import empirical_nngp, empirical_ntk
from .finite.linearization import linearize, taylor_expand
from .engine.architectures import cntk, fully_connected, myrtle, wide_resnet
from .engine.kernel import Kernel
from .engine.layers import (
    Aggregate,
    NodeModel,
    node_kernel,
    normalized_adjacency,
    ConvLocal,
    DotGeneral,
    ExpNormalized,
    Gabor,
    Hermite,
    ImageResize,
    Index,
    Rbf,
    Slice,
    AvgPool,
    BatchNorm,
    GRU,
    LSTM,
    MaxPool,
    MinPool,
    Conv,
    ConvTranspose,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalSumPool,
    LayerNorm,
    SumPool,
    ABRelu,
    Abs,
    Cos,
    Dense,
    Scale,
    Elementwise,
    Elu,
    Erf,
    Exp,
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Gaussian,
    GlobalSelfAttention,
    Gelu,
    Identity,
    Layer,
    LeakyRelu,
    Monomial,
    Polynomial,
    RectifiedMonomial,
    Recurrent,
    Relu,
    Reverse,
    Sigmoid,
    Sign,
    Silu,
    Sin,
    Softplus,
    Tanh,
    ValueGraph,
    ElementwiseAffine,
    AdaptiveAvgPool,
    Interpolate,
    ConcatPositions,
    Constant,
    Embedding,
    FlattenPositions,
    ScaledDotProductAttention,
    MultiheadAttention,
    bidirectional,
    parallel,
    repeat,
    serial,
)
from .inference.fitting import fit_hyperparameters
from .engine.from_torch import UnsupportedModuleError, from_torch
from .finite.montecarlo import MonteCarloKernel, monte_carlo_kernel
from .engine.spec import SpecError, format_spec, parse_spec
from .engine.tiles import NonFiniteKernelError
from .engine.tiling import compute_kernel, kernel_tile

_compat.register_loaded()

__all__ = [
    "ValueGraph", "ElementwiseAffine", "AdaptiveAvgPool", "Interpolate", "ConcatPositions", "Constant", "Embedding", "FlattenPositions", "ScaledDotProductAttention", "MultiheadAttention",
    "from_torch", "UnsupportedModuleError", "Aggregate", "NodeModel", "node_kernel", "normalized_adjacency", "ConvLocal", "DotGeneral", "ExpNormalized", "Gabor", "Hermite", "ImageResize", "Index", "Rbf", "Slice",
    "AvgPool", "BatchNorm", "GRU", "LSTM", "MaxPool", "MinPool", "Conv", "ConvTranspose", "Dropout", "Flatten", "GlobalAvgPool", "GlobalSumPool", "LayerNorm",
    "SumPool", "architectures", "cntk", "fully_connected", "myrtle", "wide_resnet", "ABRelu", "Abs", "Cos", "Dense", "Elementwise", "Elu", "Erf", "Exp", "FanInConcat", "FanInProd",
    "FanInSum", "FanOut", "Gaussian", "Gelu", "GlobalSelfAttention", "Identity", "Kernel", "Layer", "LeakyRelu", "Monomial",
    "MonteCarloKernel", "NonFiniteKernelError", "Polynomial", "RectifiedMonomial", "Recurrent", "Relu", "Reverse", "Scale", "Sigmoid", "Sign",
    "Silu", "Sin", "Softplus", "SpecError", "Tanh", "compute_kernel", "datasets", "empirical", "empirical_nngp", "empirical_ntk", "fit_hyperparameters", "linearization", "linearize", "taylor_expand", "fitting", "format_spec", "gaussian",
    "bidirectional", "kernel_tile", "monte_carlo_kernel", "parallel", "parse_spec", "predict", "repeat", "serial",
]


#: public submodules, imported on first use (``inf.meanfield``) so that ``import infinet`` stays light and never
#: imports an optional dependency (see :mod:`infinet.core.extras`); the sub-packages of the layering
#: (:mod:`infinet.engine`, ...) and the old flat paths (:mod:`infinet._compat`) import the same way
SUBMODULES = ("app", "core", "engine", "finite", "inference", "theory", "spectrum", "architectures", "datasets", "depth", "empirical", "estimators", "experiments", "fitting",
              "fused", "gaussian", "sampling", "gpytorch_kernels", "kernel", "layers", "linearization", "masks", "meanfield", "montecarlo", "predict", "report",
              "scale", "sklearn_kernels", "solve", "spec", "tiling", "training")


def __getattr__(name: str):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'infinet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
