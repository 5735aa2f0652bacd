"""A convolution and the ReLU-family activation after it, in one pass over a tile, in blocks that stay in cache;
and a convolution alone (before any other activation) with the same blocked tap sums.

In the full pixel-pair layout a tile is an (N1, N2, H, W, H, W) tensor per kernel, and the eager layers
make about 30 passes over it per Conv + ReLU: the convolution's window sums (Novak et al. 2019, Sec. 2:
K' = w_std^2 A(K) + b_std^2, A the average of K(p + a, q + a) over filter taps a; Theta' = K' + w_std^2
A(Theta)), then the arc-cosine kernel (Cho and Saul 2009, eq. 6) and its derivative kernel on the result
(Jacot et al. 2018). Each pass streams tens of megabytes through memory. Here the same formulas run over
blocks of a few rows of h1 (tens of thousands of entries, which stay in the core's L2 cache):

- the tap sums read shifted views of a copy of the input padded with zeros (separable: the taps along H
  move h1 and h2 together, then those along W move w1 and w2), with the inner (h2, w2) axes flattened so
  that every view has one long contiguous inner axis;
- the activation (phi = a min(x, 0) + b max(x, 0), :func:`infinet.engine.gaussian.abrelu`) follows on the
  block while it is in cache, and its results go straight into the interior of the next padded buffer.

The first such step of a network reads the images instead of the input kernel (:func:`reads_images`): each tap
sum of the input kernel is a sum of products of two zero-padded images, which stay in L1, so the input kernel is
never written (Myrtle-5 on 20 28 x 28 images 1.39 -> 1.18 s); so does the diagonal chain, each pair's input
plane made in L1. The outputs are views of zero-bordered buffers, so
that the next fused layer reads them without padding again; where that layer's input is the previous step's
output in the same serial composition (nothing else holds it), it writes over it, keeping the rows it still
needs in a ring (peak memory of Myrtle-5 482 -> 362 MiB, of CNN-GAP 961 -> 597 MiB; 2-5% faster). Only the two outputs are written to memory and only the two inputs read. On CPUs with a C compiler the
loops are compiled (:mod:`infinet.engine.native`: about 8 ns per entry and layer with the NTK on one core of
this project's CPU, against 25 for the layers one by one); elsewhere they run in TorchScript
(:mod:`infinet.engine.conv_blocks`, about 12 ns; no Python between the short passes, and the tile pool's threads
do not queue on the GIL). In the diagonal layout (N1, N2, H, W) (no pooling later) a pair's positions after a
step depend only on its own positions before it, so a whole run of Conv + activation steps is one compiled call
(:func:`diagonal_chain`): each pair goes through every step while its plane stays in L1, and only the last step
is written (CNN-Flatten depth 8 on 200 28 x 28 images: 0.66-0.72 -> 0.33 s on this project's 2-core machine);
without the compiled loops the same formulas run step by step over blocks of first-batch examples.

It applies to: :class:`~infinet.Conv` in 2 spatial dimensions with stride 1, dilation 1, an odd filter
size and zero padding that keeps the size ('SAME'), 'ntk' parameterization, followed by an
:class:`~infinet.ABRelu` (ReLU, LeakyReLU, Abs), on CPU kernels without masks, laws or sampling, outside
autograd, with every position variance positive and finite; the convolution alone in the full layout.
Everything else (and anything this module declines) takes the layers' own kernel transforms, with the same
formulas. On GPUs the layers' own transforms run (each pass there is one kernel launch over the whole tile).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import fused, native
from .apply import takes_deferred
from .closed_forms import positive_and_product_safe
from .conv_steps import run_of as _run
from .kernel import Kernel, channel_products, diagonal_pairs, known_zero, realized

#: the most Conv + activation steps one compiled call of the diagonal layout takes (its per-position tables, five
#: per step and example, stay below the tile's own size for usual tiles; a longer run continues in the next call)
MAX_CHAIN = 16

#: False: every Conv and activation applies its own kernel transform (for comparisons)
ENABLED = True


def applies(conv, act, k: Kernel, act_out_full: bool) -> bool:
    """Whether :func:`conv_activation` computes ``act`` after ``conv`` on ``k`` (see the module docstring)."""
    if not _fusable_conv(conv) or not isinstance(k, Kernel):
        return False
    slopes = getattr(act, "conv_fusion_slopes", None)
    return slopes is not None and slopes() is not None and k.full == act_out_full and _plain_conv(conv, k)


def has_pairs(layer) -> bool:
    """Whether ``layer`` holds a :class:`~infinet.Conv` directly followed by an :class:`~infinet.ABRelu` in a
    serial composition (candidates for :func:`conv_activation`; the tile engine does not compile those
    networks' steps in mode "auto")."""
    parts = getattr(layer, "layers", ())
    if getattr(layer, "in_sequence", False) and any(
            _fusable_conv(a) and getattr(b, "conv_fusion_slopes", lambda: None)() is not None
            for a, b in zip(parts, parts[1:])):
        return True
    return any(has_pairs(part) for part in parts)


def _fusable_conv(conv) -> bool:
    """A :class:`~infinet.Conv` itself, not a subclass with other placements (the class declares it)."""
    return type(conv).__dict__.get("blocked_tap_sums", False)


def conv_applies(conv, k: Kernel) -> bool:
    """Whether :func:`conv_alone` computes ``conv`` on ``k``: a :class:`~infinet.Conv` in 2 spatial dimensions,
    stride 1, dilation 1, odd square filter, zero padding that keeps the size, 'ntk' parameterization, on a CPU
    kernel in the full layout without masks, laws or sampling, outside autograd."""
    return k.full and _plain_conv(conv, k)


def _plain_layer(conv) -> bool:
    """The conditions of :func:`conv_applies` on the layer itself: a :class:`~infinet.Conv` with float
    hyperparameters, 'ntk' parameterization and zero padding, the fused steps switched on."""
    return (ENABLED and _fusable_conv(conv) and conv.parameterization == "ntk" and conv.padding != "CIRCULAR"
            and not isinstance(conv.w_std, Tensor) and not isinstance(conv.b_std, Tensor))


def _plain_conv(conv, k: Kernel) -> bool:
    """:func:`conv_applies` in either layout."""
    if not _plain_layer(conv):
        return False
    if k.nngp is None or k.mask1 is not None or k.law is not None or k.sampling is not None:
        return False
    if k.sampled or k.tokens or k.nngp.device.type != "cpu" or k.nngp.dtype not in (torch.float32, torch.float64):
        return False
    if fused.compiling() or len(k.spatial) != 2:
        return False
    tensors = [t for t in (k.nngp, k.ntk, k.var1, k.var2) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _same_size_filter(conv, k.shape) is not None


def _same_size_filter(conv, shape) -> int | None:
    """The filter size of ``conv`` on inputs (C, H, W) when it is odd and square with stride 1, dilation 1 and the
    zero padding that keeps the size (size // 2 on each side); else None."""
    try:
        geo = conv.geometry(shape)
    except ValueError:
        return None
    if len(geo) != 2 or geo[0][0] != geo[1][0]:
        return None
    same = all(kk % 2 == 1 and s == 1 and d == 1 and before == after == kk // 2 and n_out == n
               for (kk, s, d, before, after, n_out), n in zip(geo, shape[1:]))
    return geo[0][0] if same else None


def input_border(layer, shape) -> int:
    """The zero border that the first layer of ``layer`` pads the full-layout input kernel of feature maps
    ``shape`` (C, H, W) with, when it is a convolution that :func:`conv_applies` may take (0 otherwise). The tile
    engine writes the input kernel into the interior of such a buffer (:func:`~infinet.engine.conv_steps.bordered_input`), which the
    convolution then reads in place instead of copying the kernel into a padded one."""
    first = layer
    while getattr(first, "in_sequence", False) and getattr(first, "layers", ()):
        first = first.layers[0]
    if not _plain_layer(first) or len(shape) != 3:
        return 0
    size = _same_size_filter(first, tuple(shape))
    return 0 if size is None else size // 2


def reads_images(layer, dtype: torch.dtype) -> bool:
    """Whether the first convolution of ``layer`` (whose :func:`input_border` is not 0) is computed, with the
    activation after it, by the compiled step straight from the images (``conv_relu_images`` of native_conv.c):
    it is the first layer of serial compositions only, the activation right after it in the same one, on float64
    kernels where the compiled library is had. The tile engine then defers the input kernel
    (:class:`~infinet.engine.kernel.ChannelProducts`): never written unless something else reads it
    (:func:`~infinet.engine.kernel.realized`)."""
    if dtype != torch.float64 or native.library() is None:
        return False
    while takes_deferred(layer) and layer.layers:
        first = layer.layers[0]
        if _plain_layer(first):
            return len(layer.layers) > 1 and getattr(layer.layers[1], "conv_fusion_slopes", lambda: None)() is not None
        layer = first
    return False


def _constants(conv, k: Kernel) -> tuple[int, float, float]:
    """(filter size, alpha = w_std^2 / taps, bias = b_std^2) of a convolution that :func:`conv_applies` takes."""
    size = conv.geometry(k.shape)[0][0]
    return size, conv.w_std**2 / size**2, 0.0 if conv.b_std is None else conv.b_std**2


def conv_alone(conv, k: Kernel) -> Kernel:
    """``conv.kernel_fn(k)`` with its tap sums over cache-sized blocks (Novak et al. 2019, Sec. 2: K' = alpha S(K)
    + b_std^2, Theta' = alpha S(Theta) + K', S the sum over filter taps): contiguous outputs, for any activation
    after it. Requires :func:`conv_applies`."""
    size, alpha, bias = _constants(conv, k)
    run = _run(size, alpha, bias, 0.0, 1.0, tuple(k.spatial), k.nngp.dtype)
    ntk_in = None if k.ntk is None or known_zero(k.ntk) else k.ntk
    compiled = run.compiled_sums(k.nngp, ntk_in, k.ntk is not None)
    if compiled is not None:
        nngp, ntk = compiled
    else:
        nngp, ntk = run.sums(run.padded(k.nngp), None if ntk_in is None else run.padded(ntk_in), k.ntk is not None)

    def full_variances(var):
        return run.sums(run.padded(var.unsqueeze(1)), None, False)[0].squeeze(1)

    if k.symmetric and k.var2 is k.var1 and not k.replaying:  # nngp[i, i] is var1[i]: its sums are the new one
        var1 = var2 = diagonal_pairs(nngp)
    else:
        var1, var2 = k.map_variances(full_variances)
    shape = (conv.out_channels,) + tuple(k.spatial)
    return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=shape)


def conv_activation(conv, act, k: Kernel, owned: bool = False) -> Kernel | None:
    """The kernel after ``conv`` and then ``act`` in the full layout (what the two layers' ``kernel_fn`` give, with
    the variance trace stepped once per layer and the diagonal pinned), or None when a position variance after the
    convolution is zero, negative or too large for the closed form's product (the caller then applies the layers
    one by one). Requires :func:`applies` and ``k.full`` (the diagonal layout: :func:`diagonal_chain`). ``owned``: the
    caller holds the only reference to ``k``'s tensors (the previous step's output in the same serial
    composition), which the step may then overwrite."""
    size, alpha, bias = _constants(conv, k)
    pv = _stage_variances(k, k.var1, k.var2, size, alpha, bias)
    if pv is None:
        return None
    pv1, pv2 = pv
    shape = (conv.out_channels,) + tuple(k.spatial)
    trace = k.trace
    if trace is not None:  # the convolution's output: its position variances recorded (or replayed)
        trace.step(k.replace(nngp=None, ntk=None, var1=pv1, var2=pv2, full=False, shape=shape))
    n1, n2 = pv1.sqrt(), pv2.sqrt()
    run = _run(size, alpha, bias, *act.conv_fusion_slopes(), tuple(k.spatial), k.nngp.dtype)
    products = channel_products(k.nngp)
    symmetric = k.symmetric and k.var2 is k.var1
    if products is not None and ((symmetric and k.replaying) or not run.reads(products)):
        k, products = realized(k), None
    if products is not None:  # (p, p) of pairs (i, i): the tap sums of the position variances, as pv1 has them
        pins = _position_conv(k._position_variances(k.var1), size, 1.0, 0.0) if symmetric else None
        nngp, ntk = run.image_pairs(products, k.ntk is not None, n1, n2, pins)
    else:
        nngp, ntk = run.pairs(k.nngp, k.ntk, n1, n2, owned)
    var1 = var2 = None
    if symmetric and not k.replaying:
        # nngp[i, i] is var1[i] (pinned after the layer before): the same arithmetic on the same numbers
        var1 = var2 = diagonal_pairs(nngp)
    elif not k.replaying:
        var1 = run.self_covariances(k.var1, n1)
        var2 = var1 if k.var2 is k.var1 else run.self_covariances(k.var2, n2)
    out = k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=shape)
    if trace is not None:
        out = trace.step(out)
    return out.pin_diagonal(inplace=True)  # nothing to write where var1 is nngp's own diagonal


def _stage_variances(k: Kernel, var1: Tensor, var2: Tensor, size: int, alpha: float,
                     bias: float) -> tuple[Tensor, Tensor] | None:
    """The position variances (pv1, pv2) after a convolution on self-covariances ``var1``, ``var2`` of ``k``'s
    layout (replayed from ``k``'s trace while it replays), or None where the fused step does not take them (a
    variance <= 0, not finite or unsafe for products:
    :func:`~infinet.engine.closed_forms.positive_and_product_safe`)."""
    if k.replaying:
        e1, e2 = k.trace.entries[k.trace.cursor], k.trace.entries2[k.trace.cursor]
        if len(e1) != 1:
            return None
        pv1, pv2 = e1[0], e2[0]
    else:
        pv1 = _position_conv(k._position_variances(var1), size, alpha, bias)
        pv2 = pv1 if var2 is var1 else _position_conv(k._position_variances(var2), size, alpha, bias)
    return (pv1, pv2) if positive_and_product_safe(*((pv1,) if pv2 is pv1 else (pv1, pv2))) else None


def diagonal_run(layers, start: int, k: Kernel, outs: list) -> list[tuple[object, object]]:
    """The (Conv, activation) pairs of ``layers`` from ``start`` that :func:`diagonal_chain` computes on ``k`` in one
    pass: consecutive pairs that :func:`applies` takes in the diagonal layout, all with the first one's filter size,
    at most :data:`MAX_CHAIN` (empty where the first is not taken)."""
    run, i, size = [], start, None
    while len(run) < MAX_CHAIN and i + 1 < len(layers) and not k.full \
            and applies(layers[i], layers[i + 1], k, outs[i + 1]):
        size_i = _constants(layers[i], k)[0]
        if size is not None and size_i != size:
            break
        run.append((layers[i], layers[i + 1]))
        i, size = i + 2, size_i
    return run


def diagonal_chain(run: list[tuple[object, object]], k: Kernel,
                   flatten=None) -> tuple[Kernel, int] | tuple[Kernel, int, Kernel] | None:
    """(the kernel after the longest head of ``run`` (from :func:`diagonal_run`) that the fused steps take, how many
    layers that is), or None where they take none (see :func:`conv_activation`). In the diagonal layout a pair's
    positions after a step depend only on its own positions before it and on the two examples' variances, so with
    the compiled loops each pair goes through every step in the core's L1 cache (``conv_relu_diagonal`` of
    native_conv.c), and the tile is read once and written once, whatever the depth. The result is what the layers'
    ``kernel_fn`` give one by one: the same formulas, the variance trace stepped once per layer and the diagonal
    of a symmetric tile pinned after every step (where it is compiled, a symmetric tile computes each unordered
    pair once: its planes are exactly symmetric).

    ``flatten``: the :class:`~infinet.engine.layers.pooling.Flatten` that follows ``run``; where the whole run is
    taken, also its output (a third item): the steps' last planes are never written, only each pair's mean over
    the positions (the same mean to rounding: summed in another order)."""
    size = _constants(run[0][0], k)[0]
    geometry = _run(size, 1.0, 0.0, 0.0, 1.0, tuple(k.spatial), k.nngp.dtype)
    eps = torch.finfo(k.nngp.dtype).eps
    trace, shape = k.trace, k.shape
    var1, var2 = k.var1, k.var2
    pv1s, pv2s, params, pins = [], [], [], []
    for conv, act in run:
        _, alpha, bias = _constants(conv, k)
        pv = _stage_variances(k, var1, var2, size, alpha, bias)
        if pv is None:
            break
        shape = (conv.out_channels,) + tuple(k.spatial)
        if trace is not None:  # the convolution's output: its position variances recorded (or replayed)
            trace.step(k.replace(nngp=None, ntk=None, var1=pv[0], var2=pv[1], shape=shape))
        if not k.replaying:  # the variances after the activation are its own diagonal
            var1 = act.diagonal(pv[0])
            var2 = var1 if pv[1] is pv[0] else act.diagonal(pv[1])
        if trace is not None:
            stepped = trace.step(k.replace(nngp=None, ntk=None, var1=var1, var2=var2, shape=shape))
            var1, var2 = stepped.var1, stepped.var2
        pv1s.append(pv[0])
        pv2s.append(pv[1])
        params.append((alpha, bias, *act.conv_fusion_slopes(), -1.0 / (alpha * (1.0 + 4.0 * eps))))
        pins.append(var1)
    if not params:
        return None
    stages = len(params)
    sd1 = torch.stack(pv1s).sqrt_()
    sd2 = sd1 if all(b is a for a, b in zip(pv1s, pv2s)) else torch.stack(pv2s).sqrt_()
    mean = flatten is not None and stages == len(run)
    products = channel_products(k.nngp)
    if products is not None and not geometry.reads(products):
        k, products = realized(k), None
    # pairs (i, i) of a symmetric tile read the input's self-covariances, as a written input kernel pins them
    input_pins = k._position_variances(k.var1) if products is not None and k.symmetric else None
    nngp, ntk = geometry.diagonal_steps(k.nngp, None if k.ntk is None or known_zero(k.ntk) else k.ntk,
                                        k.ntk is not None, sd1, sd2, torch.stack(pins) if k.symmetric else None,
                                        params, mean=mean, images=products, input_pins=input_pins)
    if mean:
        after = k.replace(nngp=None, ntk=None, var1=var1, var2=var2, shape=shape)
        return after, 2 * stages, flatten.of_means(after, nngp, ntk)
    return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=shape), 2 * stages


def _position_conv(pv: Tensor, size: int, alpha: float, bias: float) -> Tensor:
    """alpha x the tap sum of the position variances (N, H, W) + bias: the same additions in the same order as
    the blocks of :mod:`infinet.engine.conv_blocks` make on the diagonal, so that cov = var there to the last bit."""
    p = size // 2
    n, h, w = pv.shape
    padded = pv.new_zeros(n, h + 2 * p, w + 2 * p)
    padded[:, p:p + h, p:p + w] = pv
    rows = padded[:, 0:h]
    for a in range(1, size):
        rows = rows + padded[:, a:a + h]
    out = rows[:, :, 0:w]
    for b in range(1, size):
        out = out + rows[:, :, b:b + w]
    out = out * alpha
    return out + bias if bias else out
