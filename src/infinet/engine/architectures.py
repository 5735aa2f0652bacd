"""Ready-made architectures from the literature, as ordinary layer descriptions.

Each returns a :class:`~infinet.Layer`, so it gives both the finite network (``.build()``) and its
exact kernels (``.kernel()``); the same names work in architecture specs (``"myrtle(5)"``).
Channel widths matter only for the finite network (the 'ntk' parameterization's limit ignores them).
"""

from __future__ import annotations

from .layers import AvgPool, Conv, Dense, FanInSum, FanOut, Flatten, GlobalAvgPool, Identity, Relu, parallel, serial
from .layers.base import Layer
from ..core.checks import check_int

_MYRTLE_BLOCKS = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}
SQRT2 = 2.0**0.5


def myrtle(depth: int = 5, channels: int = 256, n_out: int = 10, w_std: float = SQRT2, b_std: float | None = None) -> Layer:
    """Myrtle-5/7/10 (Shankar, Fang, Guo, Fridovich-Keil, Schmidt, Ragan-Kelley and Recht 2020,
    "Neural kernels without tangents", Sec. 3): three groups of (2, 1, 1), (2, 2, 2) or (3, 3, 3)
    Conv(3x3, SAME) + Relu blocks separated by 2x2 average pooling, a global average pool (their
    final pooling down to 1x1) and a Dense readout; depth counts the Conv and Dense layers. Inputs
    need a spatial size divisible by 4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR-10).
    """
    if depth not in _MYRTLE_BLOCKS:
        raise ValueError(f"Myrtle depth must be one of {sorted(_MYRTLE_BLOCKS)}, got {depth!r}")
    g1, g2, g3 = _MYRTLE_BLOCKS[depth]

    def blocks(n):
        return [layer for _ in range(n) for layer in (Conv(channels, 3, w_std=w_std, b_std=b_std), Relu())]

    return serial(*blocks(g1), AvgPool(2), *blocks(g2), AvgPool(2), *blocks(g3), GlobalAvgPool(),
                  Dense(n_out, w_std=w_std, b_std=b_std))


def cntk(depth: int = 5, channels: int = 256, n_out: int = 10, pooling: str = "gap", w_std: float = SQRT2,
         b_std: float | None = None) -> Layer:
    """The CNTK-V and CNTK-GAP families (Arora, Du, Hu, Li, Salakhutdinov and Wang 2019, "On exact
    computation with an infinitely wide neural net", Sec. 4 and Table 1): ``depth`` Conv(3x3, SAME)
    + Relu layers, then ``pooling='gap'`` (global average pooling) or ``'flatten'`` (vanilla: the
    flattened last layer), and a Dense readout; w_std = sqrt(2) and no bias as in the paper."""
    check_int(depth, "cntk depth")
    heads = {"gap": GlobalAvgPool, "flatten": Flatten}
    if pooling not in heads:
        raise ValueError(f"cntk pooling must be 'gap' or 'flatten', got {pooling!r}")
    body = [layer for _ in range(depth) for layer in (Conv(channels, 3, w_std=w_std, b_std=b_std), Relu())]
    return serial(*body, heads[pooling](), Dense(n_out, w_std=w_std, b_std=b_std))


def wide_resnet_block(channels: int, stride: int = 1, project: bool = False, w_std: float = 1.0,
                      b_std: float | None = None) -> Layer:
    """One residual block: Relu > Conv(3x3, stride) > Relu > Conv(3x3) added to the input, or to a
    Conv(3x3, stride) projection of it when ``project`` (channel or size change)."""
    main = serial(Relu(), Conv(channels, 3, stride=stride, w_std=w_std, b_std=b_std), Relu(),
                  Conv(channels, 3, w_std=w_std, b_std=b_std))
    shortcut = Conv(channels, 3, stride=stride, w_std=w_std, b_std=b_std) if project else Identity()
    return serial(FanOut(2), parallel(main, shortcut), FanInSum())


def wide_resnet(block_size: int = 1, k: int = 1, n_out: int = 10, w_std: float = 1.0,
                b_std: float | None = None) -> Layer:
    """The WideResNet of the neural-tangents paper (Novak, Xiao, Hron, Lee, Alemi, Sohl-Dickstein and
    Schoenholz 2020, Listing 1; Zagoruyko and Komodakis 2016): Conv(16), three groups of
    ``block_size`` residual blocks with 16k, 32k, 64k channels (strides 1, 2, 2), global average
    pooling and a Dense readout."""
    check_int(block_size, "wide_resnet block_size")

    def group(channels, stride):
        first = wide_resnet_block(channels, stride, project=True, w_std=w_std, b_std=b_std)
        rest = [wide_resnet_block(channels, 1, w_std=w_std, b_std=b_std) for _ in range(block_size - 1)]
        return serial(first, *rest)

    return serial(Conv(16, 3, w_std=w_std, b_std=b_std), group(16 * k, 1), group(32 * k, 2), group(64 * k, 2),
                  GlobalAvgPool(), Dense(n_out, w_std=w_std, b_std=b_std))


def fully_connected(depth: int, fixed: int = 0, n_out: int = 1, width: int = 512, w_std: float = 1.0,
                    b_std: float | None = None) -> Layer:
    """The fully-connected ReLU networks of Arora, Du, Li, Salakhutdinov, Wang and Yu 2020 ("Harnessing the
    power of infinitely wide deep nets on small-data tasks", Sec. 3 and their UCI code): ``depth`` hidden
    Dense + Relu layers and a Dense readout (depth + 1 Dense layers, w_std = 1 and no bias as theirs), of which
    the first ``fixed`` are not trained (``Dense(trainable=False)``): 0 <= fixed <= depth. Their kernel
    recursion, with Sigma^(0) = x.x' and the arc-cosine maps of Cho and Saul 2009,

        Sigma^(h) = E[relu(u) relu(v)],  dSigma^(h) = E[relu'(u) relu'(v)],  (u, v) ~ N(0, Sigma^(h-1)),
        Theta^(0) = [fixed = 0] Sigma^(0),  Theta^(h) = Theta^(h-1) dSigma^(h) + [h >= fixed] Sigma^(h),

    is this network's NTK on inputs scaled by sqrt(d) (infinet's input kernel is x.x'/d); ``fixed = depth``
    trains the readout alone, whose NTK is the NNGP. ``width`` matters only for the finite network."""
    check_int(depth, "fully_connected depth", 0)
    check_int(fixed, "fully_connected fixed", 0)
    if fixed > depth:
        raise ValueError(f"fully_connected: fixed={fixed} layers cannot exceed depth={depth} (the readout always trains)")
    layers = []
    for h in range(depth):
        layers += [Dense(width, w_std=w_std, b_std=b_std, trainable=h >= fixed), Relu()]
    return serial(*layers, Dense(n_out, w_std=w_std, b_std=b_std))


ARCHITECTURES = {"fully_connected": fully_connected, "myrtle": myrtle, "cntk": cntk, "wide_resnet": wide_resnet, "wide_resnet_block": wide_resnet_block}

__all__ = ["ARCHITECTURES", "cntk", "fully_connected", "myrtle", "wide_resnet", "wide_resnet_block"]
