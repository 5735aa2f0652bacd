"""Layers and combinators: each knows its finite module and its infinite-width kernel transform."""

from .activations import (
    ABRelu,
    Abs,
    Activation,
    Cos,
    Erf,
    Exp,
    ExpNormalized,
    Gabor,
    Gaussian,
    Gelu,
    Hermite,
    LeakyRelu,
    Monomial,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Relu,
    Sign,
    Sin,
)
from .quadrature_activations import Elementwise, Elu, Sigmoid, Silu, Softplus, Tanh
from .attention import GlobalSelfAttention
from .base import Layer, Spec
from .combinators import (
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Identity,
    Parallel,
    Serial,
    parallel,
    repeat,
    serial,
)
from .conv import Conv, ConvLocal, ConvTranspose
from .graph import Aggregate, NodeModel, node_kernel, normalized_adjacency
from .dense import Dense, Scale
from .norm import Dropout, LayerNorm
from .position_maps import DotGeneral, ImageResize, Index, Slice
from .batchnorm import BatchNorm
from .gated import GRU, LSTM
from .maxpool import MaxPool, MinPool
from .pooling import AvgPool, Flatten, FlattenPositions, GlobalAvgPool, GlobalSumPool, SumPool
from .recurrent import Recurrent
from .sequence import Reverse, bidirectional
from .values import ValueGraph
from .affine import ElementwiseAffine
from .resampling import AdaptiveAvgPool, Interpolate
from .tokens import ConcatPositions, Constant, Embedding
from .softmax_attention import MultiheadAttention, ScaledDotProductAttention

__all__ = [
    "ValueGraph", "FlattenPositions", "ScaledDotProductAttention", "MultiheadAttention", "ConcatPositions", "Constant", "Embedding", "ElementwiseAffine", "AdaptiveAvgPool", "Interpolate", "Aggregate", "NodeModel", "node_kernel", "normalized_adjacency", "ConvLocal", "DotGeneral", "ExpNormalized", "Gabor", "Hermite", "ImageResize", "Index", "Rbf", "Slice",
    "AvgPool", "BatchNorm", "GRU", "LSTM", "MaxPool", "MinPool", "Conv", "ConvTranspose", "Dropout", "Flatten", "GlobalAvgPool", "GlobalSumPool", "LayerNorm",
    "SumPool", "ABRelu", "Abs", "Activation", "Cos", "Dense", "Elementwise", "Elu", "Erf", "Exp", "FanInConcat",
    "FanInProd", "FanInSum", "FanOut", "Gaussian", "GlobalSelfAttention", "Gelu", "Identity", "Layer", "LeakyRelu", "Monomial",
    "Parallel", "Polynomial", "RectifiedMonomial", "Recurrent", "Relu", "Reverse", "Serial", "Sigmoid", "Sign", "Silu", "Sin",
    "Scale", "Softplus", "Spec", "Tanh", "bidirectional", "parallel", "repeat", "serial",
]
