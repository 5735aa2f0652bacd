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
never written (Myrtle-5 on 20 28 x 28 images 1.39 -> 1.18 s). The outputs are views of zero-bordered buffers, so
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

import functools
import weakref

import torch
from torch import Tensor

from . import conv_blocks, fused, native
from .apply import takes_deferred
from .closed_forms import positive_and_product_safe
from .kernel import Kernel, channel_products, diagonal_pairs, known_zero, realized

#: entries per block (each of the block buffers): 2^16 doubles, 512 KiB (the fastest of 2^15 ... 2^17 here)
BLOCK_ENTRIES = 1 << 16

#: the most Conv + activation steps one compiled call of the diagonal layout takes (its per-position tables, five
#: per step and example, stay below the tile's own size for usual tiles; a longer run continues in the next call)
MAX_CHAIN = 16

#: False: every Conv and activation applies its own kernel transform (for comparisons)
ENABLED = True

_bordered: "weakref.WeakValueDictionary[int, Tensor]" = weakref.WeakValueDictionary()  # id -> padded buffer made
# here (its border is zero: no view of it that leaves this module reaches the border)


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
    engine writes the input kernel into the interior of such a buffer (:func:`bordered_input`), which the
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


def bordered_input(n1: int, n2: int, spatial: tuple[int, int], border: int, dtype: torch.dtype) -> Tensor:
    """The (n1, n2, H, W, H, W) interior of a new (n1, n2, H + 2b, W + 2b, H + 2b, W + 2b) CPU buffer, b =
    ``border``, which a convolution of filter size 2b + 1 reads in place (``_Run.padded``). Nothing is written
    here: the input kernel writes it whole, border included (``input_kernel(out=, border=)``: the products of the
    zero-padded images, whose border comes out zero)."""
    (h, w), b = spatial, border
    out = torch.empty(n1, n2, h + 2 * b, w + 2 * b, h + 2 * b, w + 2 * b, dtype=dtype)
    _bordered[id(out)] = out
    return out[:, :, b:b + h, b:b + w, b:b + h, b:b + w]


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
    nngp, ntk = geometry.diagonal_steps(k.nngp, None if k.ntk is None or known_zero(k.ntk) else k.ntk,
                                        k.ntk is not None, sd1, sd2, torch.stack(pins) if k.symmetric else None,
                                        params, mean=mean)
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


def _run(size, alpha, bias, a, b, spatial, dtype) -> "_Run":
    """The :class:`_Run` of these constants, made once (it is read-only; every tile's layers ask for it)."""
    return _kept_run(size, alpha, bias, a, b, spatial, dtype, BLOCK_ENTRIES)


@functools.lru_cache(maxsize=64)
def _kept_run(size, alpha, bias, a, b, spatial, dtype, block_entries) -> "_Run":
    return _Run(size, alpha, bias, a, b, spatial, dtype)  # reads BLOCK_ENTRIES, part of the key


class _Run:
    """One fused layer's constants, and its calls of the scripted block loop on padded buffers."""

    def __init__(self, size, alpha, bias, a, b, spatial, dtype):
        self.size, self.alpha, self.bias, self.a, self.b = size, alpha, bias, a, b
        self.h, self.w = spatial
        self.p = size // 2
        self.dtype = dtype
        self.hp, self.wp = self.h + 2 * self.p, self.w + 2 * self.p
        self.inner = self.h * self.wp - (size - 1)  # flattened (h2, w2) outputs, W..Wp-1 of each row spare
        valid = torch.zeros(self.h, self.wp, dtype=dtype)
        valid[:, :self.w] = 1.0
        self.valid = valid.reshape(-1)[:self.inner].contiguous()
        self.rows = max(1, min(self.h, BLOCK_ENTRIES // (self.w * self.inner)))

    def _own_border(self, t: Tensor) -> Tensor | None:
        """The zero-bordered buffer of this module whose interior ``t`` is (same border), or None."""
        base = t._base
        if base is not None and _bordered.get(id(base)) is base and self._inside(base, t, 4):
            return base
        return None

    def _inside(self, base: Tensor, t: Tensor, axes: int) -> bool:
        """Whether ``t`` is the interior of ``base`` along its last ``axes`` spatial axes (the border ``p`` on
        each side; the axes before them the same), from shapes, strides and offsets alone (no views made)."""
        spatial = (self.h, self.w) * (axes // 2)
        padded = (self.hp, self.wp) * (axes // 2)
        return (t.ndim == base.ndim and tuple(t.shape[-axes:]) == spatial and tuple(base.shape[-axes:]) == padded
                and tuple(t.shape[:-axes]) == tuple(base.shape[:-axes]) and t.stride() == base.stride()
                and t.storage_offset() == base.storage_offset() + self.p * sum(base.stride()[-axes:]))

    def padded(self, t: Tensor) -> Tensor:
        """The zero-bordered buffer whose interior is ``t`` (..., H, W, H, W): ``t``'s own when it is an
        output of this module with the same border, else a fresh copy."""
        base = self._own_border(t)
        if base is not None:
            return base
        out = t.new_zeros(*t.shape[:-4], self.hp, self.wp, self.hp, self.wp, dtype=self.dtype)
        _bordered[id(out)] = out
        self._interior(out).copy_(t)
        return out

    def bordered(self, lead) -> Tensor:
        """A new padded buffer (lead, Hp, Wp, Hp, Wp) for a zero-bordered output: the compiled loop writes its
        border, the TorchScript one needs :meth:`_zero_border` first."""
        out = torch.empty(*lead, self.hp, self.wp, self.hp, self.wp, dtype=self.dtype)
        _bordered[id(out)] = out
        return out

    def _zero_border(self, out: Tensor) -> None:
        """Zero where :func:`conv_blocks.full_blocks` does not write (the border rows and columns of h1, w1, and of
        each (h1, w1) the head and tail of the flattened (h2, w2) border; the loop itself writes zeros into the
        border columns between)."""
        p, hp, wp = self.p, self.hp, self.wp
        lead = out.shape[:-4]
        rows = out.view(*lead, hp, wp, hp * wp)
        for axis, n in ((-3, hp), (-2, wp)):
            rows.narrow(axis, 0, p).zero_()
            rows.narrow(axis, n - p, p).zero_()
        head = p * wp + p
        inner = rows[..., p:p + self.h, p:p + self.w, :]
        inner[..., :head].zero_()
        inner[..., head + self.inner:].zero_()

    def _interior(self, base: Tensor) -> Tensor:
        p = self.p
        return base[..., p:p + self.h, p:p + self.w, p:p + self.h, p:p + self.w]

    def gains(self, positions: Tensor, spare: float = 1.0) -> tuple[Tensor, Tensor]:
        """(N, H, W) per-position values in the flattened inner layout, ``spare`` at the spare columns (1 for
        sqrt(var): nothing divides by 0 there), and the 0/1 mask of real columns."""
        out = torch.full((len(positions), self.h, self.wp), spare, dtype=self.dtype)
        out[:, :, :self.w] = positions
        return out.reshape(len(positions), -1)[:, :self.inner].contiguous(), self.valid

    def run(self, kin: Tensor, tin: Tensor | None, ntk: bool, n1: Tensor, n2: Tensor, inplace: bool = False):
        """The block loop on padded inputs (``tin`` None: an NTK of zeros, computed only when ``ntk``): the
        interior views of new padded nngp and ntk (None unless ``ntk``); ``inplace`` (where the compiled loop runs
        and ``tin`` is given when ``ntk``): written over ``kin`` and ``tin`` instead."""
        lead = kin.shape[:2]
        inplace = inplace and (tin is not None) == ntk and self._compiled_for(kin, tin)
        kout = kin if inplace else self.bordered(lead)
        tout = (tin if inplace else self.bordered(lead)) if ntk else None
        eps = torch.finfo(self.dtype).eps
        norm2, valid = self.gains(n2)
        norm2 = norm2 * (-1.0 / (self.alpha * (1.0 + 4.0 * eps)))
        n1 = n1.contiguous()
        if not self._compiled("conv_relu_full", kin, tin, kout, tout, n1, norm2, valid, eps):
            for out in (kout, tout) if tout is not None else (kout,):
                self._zero_border(out)
            fused.scripted(conv_blocks.full_blocks)(kin, tin, kout, tout, n1, norm2, valid, self.size, self.rows,
                                                    self.inner, self.alpha, self.bias, self.a, self.b, eps)
        return self._interior(kout), None if tout is None else self._interior(tout)

    def reads(self, products) -> bool:
        """Whether :meth:`image_pairs` takes these :class:`~infinet.engine.kernel.ChannelProducts`: float64
        images padded by this filter's border, the compiled library had."""
        spatial = (self.hp, self.wp)
        return (self.dtype == torch.float64 and self.size <= native.MAX_TAPS and tuple(products.shape) == spatial
                and all(x.dtype == torch.float64 and x.is_contiguous() for x in (products.x1, products.x2))
                and native.library() is not None)

    def image_pairs(self, products, ntk: bool, n1: Tensor, n2: Tensor, pins: Tensor | None):
        """:meth:`run` on the input kernel of the images of ``products`` (:meth:`reads`), which is never written:
        each pair's tap sums come from its two images (``conv_relu_images``). ``pins`` (N1, H, W): the tap sums at
        (p, p) of the pairs (i, i) of a symmetric tile (else None)."""
        lead = (len(products.x1), len(products.x2))
        kout = self.bordered(lead)
        tout = self.bordered(lead) if ntk else None
        eps = torch.finfo(self.dtype).eps
        norm2 = self.gains(n2)[0] * (-1.0 / (self.alpha * (1.0 + 4.0 * eps)))
        n1 = n1.contiguous()
        pins = None if pins is None else pins.contiguous()
        a = native.address
        if native.library().conv_relu_images(
                lead[0], lead[1], self.h, self.w, self.size, a(products.x1), a(products.x2), products.channels,
                a(pins), a(kout), a(tout), a(n1), a(norm2), a(self.valid), self.alpha, self.bias, self.a, self.b,
                eps):
            raise MemoryError("the compiled conv_relu_images could not allocate its buffers")
        return self._interior(kout), None if tout is None else self._interior(tout)

    def _compiled_for(self, *tensors) -> bool:
        """Whether the compiled loops take these buffers (float64, contiguous, the library had)."""
        tensors = [t for t in tensors if t is not None]
        return (self.dtype == torch.float64 and self.size <= native.MAX_TAPS and native.library() is not None
                and all(t.is_contiguous() and t.dtype == torch.float64 for t in tensors))

    def _compiled(self, name: str, kin, tin, kout, tout, norm1, norm2, valid, eps) -> bool:
        """Run the block loop ``name`` of :mod:`infinet.engine.native` (float64, contiguous buffers; the same
        formulas and tap order as the TorchScript loops); False where it is not to be had."""
        if not self._compiled_for(kin, tin, kout, tout, norm1, norm2, valid):
            return False
        lib = native.library()
        a = native.address
        failed = getattr(lib, name)(kin.shape[0], kin.shape[1], self.h, self.w, self.size, a(kin), a(tin), a(kout),
                                    a(tout), a(norm1), a(norm2), a(valid), self.alpha, self.bias, self.a, self.b,
                                    eps)
        if failed:
            raise MemoryError(f"the compiled {name} could not allocate its buffers")
        return True

    def sums(self, kin: Tensor, tin: Tensor | None, ntk: bool) -> tuple[Tensor, Tensor | None]:
        """The convolution alone on padded inputs (``tin`` None: an NTK of zeros): new contiguous (lead, H, W, H,
        W) nngp and ntk (None unless ``ntk``)."""
        lead = kin.shape[:2]
        kout = torch.empty(*lead, self.h, self.w, self.h, self.w, dtype=self.dtype)
        tout = torch.empty_like(kout) if ntk else None
        fused.scripted(conv_blocks.tap_sum_blocks)(kin, tin, kout, tout, self.size, self.rows, self.inner, self.alpha,
                                                   self.bias)
        return kout, tout

    def compiled_sums(self, nngp: Tensor, ntk: Tensor | None, need_ntk: bool):
        """:meth:`sums` by ``conv_sums_full`` of :mod:`infinet.engine.native` (float64), reading a zero-bordered
        buffer of this module as it is and any other input unpadded (each pair's rows bordered one at a time in a ring
        of slabs that stays in cache, instead of a padded copy of the whole tile); None where that library is not
        to be had."""
        lib = native.library() if self.dtype == torch.float64 and self.size <= native.MAX_TAPS else None
        if lib is None:
            return None
        given = [t for t in (nngp, ntk) if t is not None]
        bases = [self._own_border(t) for t in given]
        bordered = all(base is not None for base in bases)  # else one layout for both: the unpadded one
        inputs = bases if bordered else [t.contiguous() for t in given]
        kin, tin = inputs[0], inputs[1] if ntk is not None else None
        lead = nngp.shape[:2]
        kout = torch.empty(*lead, self.h, self.w, self.h, self.w, dtype=self.dtype)
        tout = torch.empty_like(kout) if need_ntk else None
        a = native.address
        if lib.conv_sums_full(lead[0], lead[1], self.h, self.w, self.size, a(kin), a(tin), a(kout), a(tout),
                              self.alpha, self.bias, int(bordered)):
            raise MemoryError("the compiled conv_sums_full could not allocate its buffers")
        return kout, tout

    def pairs(self, nngp: Tensor, ntk: Tensor | None, n1: Tensor, n2: Tensor, owned: bool = False):
        """(nngp, ntk) of the pairs after both layers: interior views of padded buffers. The inputs' NTK (zeros,
        :func:`~infinet.engine.kernel.known_zero`) is not read. Written over the padded inputs where they are this
        call's own: fresh padded copies, or ``owned`` (the caller holds the only reference to ``nngp`` and
        ``ntk``); else new buffers."""
        tin = None if ntk is None or known_zero(ntk) else self.padded(ntk)
        inplace = all(owned or self._own_border(t) is None for t in (nngp, ntk) if t is not None)
        return self.run(self.padded(nngp), tin, ntk is not None, n1, n2, inplace)

    def diagonal_steps(self, nngp: Tensor, ntk: Tensor | None, need_ntk: bool, sd1: Tensor, sd2: Tensor,
                       pins: Tensor | None, params: list[tuple[float, ...]],
                       mean: bool = False) -> tuple[Tensor, Tensor | None]:
        """(nngp, ntk) in the diagonal layout (N1, N2, H, W) after the fused steps of ``params`` ((alpha, bias, a,
        b, scale = -1 / (alpha (1 + 4 eps))) each), given per step sd1 (steps, N1, H, W) = sqrt(var1) and sd2
        (steps, N2, H, W) = sqrt(var2) after its convolution, and the self-covariances after it (steps, N1, H, W)
        that pair (i, i) of a symmetric tile takes, or None. ``ntk`` None: an NTK of zeros, computed only when
        ``need_ntk``. Interior views of new zero-bordered buffers (N1, N2, Hp, Wp), which the next such call reads
        in place. ``mean``: (N1, N2) means over the positions instead (the kernel a Flatten next gives; compiled, no
        (N1, N2, H, W) output is written). Compiled: one call for every step; else the TorchScript loop step by
        step."""
        lead = nngp.shape[:2]
        lib = native.library() if self.dtype == torch.float64 and self.size <= native.MAX_TAPS else None
        if lib is not None:
            given = [t for t in (nngp, ntk) if t is not None]
            bases = [self._own_positions(t) for t in given]
            bordered = all(base is not None for base in bases)  # else one layout for both: the unpadded one
            kin, tin = (bases if bordered else [t.contiguous() for t in given]) + [None] * (2 - len(given))
            new = (lambda: torch.empty(lead, dtype=self.dtype)) if mean else (lambda: self._bordered_positions(lead))
            kout = new()
            tout = new() if need_ntk else None
            tables = [None if t is None else t.contiguous() for t in (sd1, sd2, pins)]
            constants = torch.tensor(params, dtype=torch.float64)
            a = native.address
            if lib.conv_relu_diagonal(len(params), lead[0], lead[1], self.h, self.w, self.size, a(kin), a(tin),
                                      int(bordered), a(kout), a(tout), *map(a, tables), a(self.valid),
                                      a(constants), torch.finfo(torch.float64).eps, int(mean)):
                raise MemoryError("the compiled conv_relu_diagonal could not allocate its buffers")
            if mean:
                return kout, tout
            return self._positions(kout), None if tout is None else self._positions(tout)
        kin = self._padded_positions(nngp)
        tin = None if ntk is None else self._padded_positions(ntk)
        rows = max(1, BLOCK_ENTRIES // (lead[1] * self.inner))
        for step, (alpha, bias, a, b, scale) in enumerate(params):
            kout = self._bordered_positions(lead)
            tout = self._bordered_positions(lead) if need_ntk else None
            for out in (kout, tout) if tout is not None else (kout,):
                self._zero_position_border(out)
            norm1, norm2 = self.gains(sd1[step])[0], self.gains(sd2[step])[0] * scale
            fused.scripted(conv_blocks.diagonal_blocks)(kin, tin, kout, tout, norm1, norm2, self.valid, self.size,
                                                        rows, alpha, bias, a, b, torch.finfo(self.dtype).eps)
            if pins is not None:  # pair (i, i) of a symmetric tile: its self-covariances
                index = torch.arange(lead[0])
                self._positions(kout)[index, index] = pins[step]
            kin, tin = kout, tout
        out = [None if t is None else self._positions(t) for t in (kout, tout)]
        return tuple(None if t is None else t.mean(dim=(-2, -1)) for t in out) if mean else tuple(out)

    def _positions(self, base: Tensor) -> Tensor:
        return base[..., self.p:self.p + self.h, self.p:self.p + self.w]

    def _own_positions(self, t: Tensor) -> Tensor | None:
        """The zero-bordered (N1, N2, Hp, Wp) buffer of this module whose interior ``t`` is, or None."""
        base = t._base
        if base is not None and _bordered.get(id(base)) is base and base.ndim == 4 and self._inside(base, t, 2):
            return base
        return None

    def _padded_positions(self, t: Tensor) -> Tensor:
        """(N1, N2, Hp, Wp) zero-bordered with ``t`` (N1, N2, H, W) inside: ``t``'s own buffer where it is one."""
        base = self._own_positions(t)
        if base is not None:
            return base
        out = t.new_zeros(*t.shape[:2], self.hp, self.wp)
        self._positions(out).copy_(t)
        _bordered[id(out)] = out
        return out

    def _bordered_positions(self, lead) -> Tensor:
        """A new (lead, Hp, Wp) buffer for a zero-bordered output: the compiled loop writes its border, others
        call :meth:`_zero_position_border` first."""
        out = torch.empty(*lead, self.hp, self.wp, dtype=self.dtype)
        _bordered[id(out)] = out
        return out

    def _zero_position_border(self, out: Tensor) -> None:
        """Zero where :func:`conv_blocks.diagonal_blocks` does not write (the head and tail of each flattened
        (Hp, Wp) plane)."""
        flat = out.view(*out.shape[:-2], self.hp * self.wp)
        head = self.p * self.wp + self.p
        flat[..., :head].zero_()
        flat[..., head + self.inner:].zero_()

    def self_covariances(self, var: Tensor, norm: Tensor) -> Tensor:
        """The full self-covariances (N, H, W, H, W) after both layers, each example paired with itself."""
        out = torch.empty(len(var), self.h, self.w, self.h, self.w, dtype=self.dtype)
        for i in range(len(var)):
            k, _ = self.run(self.padded(var[i:i + 1].unsqueeze(1)), None, False, norm[i:i + 1], norm[i:i + 1])
            out[i] = k[0, 0]
        return out
