"""One fused convolutional step's buffers and block loops (:mod:`infinet.engine.conv_fusion` decides where
they run): the zero-bordered (N1, N2, Hp, Wp, Hp, Wp) buffers that each step writes and the next one reads in
place, the diagonal layout's bordered planes, and the calls of the compiled loops (``native_conv.c``) or of the
TorchScript ones (:mod:`infinet.engine.conv_blocks`), with the formulas of Novak et al. 2019 (Sec. 2) and Cho
and Saul 2009 (eq. 6) as :mod:`infinet.engine.conv_fusion` states them."""

from __future__ import annotations

import functools
import weakref

import torch
from torch import Tensor

from . import conv_blocks, fused, native
from .kernel import known_zero

#: entries per block (each of the block buffers): 2^16 doubles, 512 KiB (the fastest of 2^15 ... 2^17 here)
BLOCK_ENTRIES = 1 << 16

_bordered: "weakref.WeakValueDictionary[int, Tensor]" = weakref.WeakValueDictionary()  # id -> padded buffer made
# here (its border is zero: no view of it that leaves this module reaches the border)


def bordered_input(n1: int, n2: int, spatial: tuple[int, int], border: int, dtype: torch.dtype) -> Tensor:
    """The (n1, n2, H, W, H, W) interior of a new (n1, n2, H + 2b, W + 2b, H + 2b, W + 2b) CPU buffer, b =
    ``border``, which a convolution of filter size 2b + 1 reads in place (``Run.padded``). Nothing is written
    here: the input kernel writes it whole, border included (``input_kernel(out=, border=)``: the products of the
    zero-padded images, whose border comes out zero)."""
    (h, w), b = spatial, border
    out = torch.empty(n1, n2, h + 2 * b, w + 2 * b, h + 2 * b, w + 2 * b, dtype=dtype)
    _bordered[id(out)] = out
    return out[:, :, b:b + h, b:b + w, b:b + h, b:b + w]


def run_of(size, alpha, bias, a, b, spatial, dtype) -> "Run":
    """The :class:`Run` of these constants, made once (it is read-only; every tile's layers ask for it)."""
    return _kept_run(size, alpha, bias, a, b, spatial, dtype, BLOCK_ENTRIES)


@functools.lru_cache(maxsize=64)
def _kept_run(size, alpha, bias, a, b, spatial, dtype, block_entries) -> "Run":
    return Run(size, alpha, bias, a, b, spatial, dtype)  # reads BLOCK_ENTRIES, part of the key


class Run:
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
        """Whether :meth:`image_pairs` (all pairs) or :meth:`diagonal_steps` (same-position products) takes these
        :class:`~infinet.engine.kernel.ChannelProducts`: float64 images (of all pairs: padded by this filter's
        border), the compiled library had."""
        spatial = (self.h, self.w) if products.same_position else (self.hp, self.wp)
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
                       mean: bool = False, images=None, input_pins: Tensor | None = None
                       ) -> tuple[Tensor, Tensor | None]:
        """(nngp, ntk) in the diagonal layout (N1, N2, H, W) after the fused steps of ``params`` ((alpha, bias, a,
        b, scale = -1 / (alpha (1 + 4 eps))) each), given per step sd1 (steps, N1, H, W) = sqrt(var1) and sd2
        (steps, N2, H, W) = sqrt(var2) after its convolution, and the self-covariances after it (steps, N1, H, W)
        that pair (i, i) of a symmetric tile takes, or None. ``ntk`` None: an NTK of zeros, computed only when
        ``need_ntk``. Interior views of new zero-bordered buffers (N1, N2, Hp, Wp), which the next such call reads
        in place. ``mean``: (N1, N2) means over the positions instead (the kernel a Flatten next gives; compiled, no
        (N1, N2, H, W) output is written). Compiled: one call for every step; else the TorchScript loop step by
        step. ``images``: ``nngp`` is the same-position products of these
        :class:`~infinet.engine.kernel.ChannelProducts` (``ntk`` zero), which the compiled call reads instead (each
        pair's input plane made in L1 from its two images; :meth:`reads` must hold), and ``input_pins`` (N1, H, W)
        the input self-covariances that pairs (i, i) of a symmetric tile take (else None)."""
        lead = nngp.shape[:2]
        lib = native.library() if self.dtype == torch.float64 and self.size <= native.MAX_TAPS else None
        if lib is not None:
            new = (lambda: torch.empty(lead, dtype=self.dtype)) if mean else (lambda: self._bordered_positions(lead))
            kout = new()
            tout = new() if need_ntk else None
            tables = [None if t is None else t.contiguous() for t in (sd1, sd2, pins)]
            constants = torch.tensor(params, dtype=torch.float64)  # held until the call returns
            a = native.address
            # the arguments after the input: outputs, per-step tables, constants
            rest = (a(kout), a(tout), *map(a, tables), a(self.valid), a(constants), torch.finfo(torch.float64).eps,
                    int(mean))
            shape = (len(params), lead[0], lead[1], self.h, self.w, self.size)
            if images is not None:
                padded = [torch.nn.functional.pad(x.reshape(len(x), x.shape[1], self.h, self.w), (self.p,) * 4)
                          for x in (images.x1, images.x2)]
                input_pins = None if input_pins is None else input_pins.contiguous()
                name, failed = "conv_relu_diagonal_images", lib.conv_relu_diagonal_images(
                    *shape, a(padded[0]), a(padded[1]), images.channels, a(input_pins), *rest)
            else:
                given = [t for t in (nngp, ntk) if t is not None]
                bases = [self._own_positions(t) for t in given]
                bordered = all(base is not None for base in bases)  # else one layout for both: the unpadded one
                kin, tin = (bases if bordered else [t.contiguous() for t in given]) + [None] * (2 - len(given))
                name, failed = "conv_relu_diagonal", lib.conv_relu_diagonal(*shape, a(kin), a(tin), int(bordered),
                                                                            *rest)
            if failed:
                raise MemoryError(f"the compiled {name} could not allocate its buffers")
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
