"""The TorchScript block loops of :mod:`infinet.engine.conv_fusion`: a convolution's tap sums over shifted views of
zero-bordered buffers, and the ReLU family's arc-cosine kernel on each block while it is in cache (Cho and Saul
2009, eq. 6; Jacot et al. 2018 for the NTK), in the full pixel-pair layout and in the diagonal (same-position)
one. Pure functions of their tensors; each is scripted once per process (:func:`infinet.engine.fused.scripted`),
and the plain function computes the same numbers where scripting fails."""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor


def full_blocks(kin: Tensor, tin: Optional[Tensor], kout: Tensor, tout: Optional[Tensor], n1: Tensor,
                norm2: Tensor, valid: Tensor, size: int, rows: int, inner: int, alpha: float, bias: float,
                a: float, b: float, eps: float) -> None:
    """The block loop: for each pair (i, j) and each block of ``rows`` output rows h1, the tap sums of nngp
    (and ntk) from the padded inputs, the activation, and the results into the padded outputs' interiors.

    Shapes: kin, tin, kout, tout (N1, N2, Hp, Wp, Hp, Wp) contiguous; n1 (N1, H, W) = sqrt(var1) after the
    convolution; norm2 (N2, inner) = -sqrt(var2) / (alpha (1 + 4 eps)) in the flattened inner layout (the
    constant folds clamp_unit's factor, the sign and alpha into the one division); valid (inner,) 1 at real
    columns. With cov = alpha S(K) + bias (S the tap sum), rho = cov / (n1 n2), angle = pi - arccos(rho)
    = arccos(-rho) and c = 1 / (2 pi) (Cho and Saul 2009, eq. 6; :func:`infinet.engine.gaussian.abrelu`):
        nngp' = (b - a)^2 n1 n2 c (sqrt(1 - rho^2) + angle rho) + a b cov,
        ntk'  = ((b - a)^2 c angle + a b) (alpha S(Theta) + cov).
    """
    n_1, n_2 = kin.shape[0], kin.shape[1]
    hp, wp = kin.shape[2], kin.shape[3]
    h, w = n1.shape[1], n1.shape[2]
    p = size // 2
    s0, s1 = kin.stride(2), kin.stride(3)
    pair = kin.stride(1)
    rows = min(rows, h)
    buf_a = torch.empty(rows, wp, h * wp, dtype=kin.dtype, device=kin.device)
    cov, theta, norm, rho, angle, value = _block_buffers(kin, [rows, w, inner])
    consts = _constants(valid, alpha, a, b, eps)
    out_offset = p * s0 + p * s1 + p * wp + p
    for i in range(n_1):
        for j in range(n_2):
            base = (i * n_2 + j) * pair
            n2j = norm2[j]
            for r0 in range(0, h, rows):
                r = min(rows, h - r0)
                blk_a = buf_a.narrow(0, 0, r)
                covb = cov.narrow(0, 0, r)
                thetab = theta.narrow(0, 0, r)
                _tap_sums(kin, base + r0 * s0, covb, blk_a, size, w, inner)
                if tin is not None:
                    _tap_sums(tin, base + r0 * s0, thetab, blk_a, size, w, inner)
                normb = norm.narrow(0, 0, r)  # -n1 n2 / (alpha (1 + 4 eps)): see norm2
                torch.mul(n1[i].narrow(0, r0, r).unsqueeze(-1), n2j, out=normb)
                dst_k = kout.as_strided((r, w, inner), (s0, s1, 1), base + out_offset + r0 * s0)
                dst_t: Optional[Tensor] = None
                if tout is not None:
                    dst_t = tout.as_strided((r, w, inner), (s0, s1, 1), base + out_offset + r0 * s0)
                _activation(covb, thetab, tin is not None, normb, rho.narrow(0, 0, r), angle.narrow(0, 0, r),
                            value.narrow(0, 0, r), dst_k, dst_t, consts, alpha, bias, a, b, eps)


def _activation(covb: Tensor, thetab: Tensor, has_theta: bool, normb: Tensor, rhob: Tensor, angleb: Tensor,
                value: Tensor, dst_k: Tensor, dst_t: Optional[Tensor], consts: List[Tensor], alpha: float,
                bias: float, a: float, b: float, eps: float) -> None:
    """The activation on one block (both layouts): covb = S(K), thetab = S(Theta) (ignored unless has_theta),
    normb = -n1 n2 / (alpha (1 + 4 eps)) per entry; nngp' into dst_k, ntk' into dst_t (see :func:`full_blocks`);
    consts = (square c^2, finish, gain, shift) from :func:`_constants`. covb, rhob, angleb and value are
    overwritten."""
    c = 1.0 / (2.0 * math.pi)
    slope = (b - a) * (b - a)
    ab = a * b
    square, finish, gain, shift = consts[0], consts[1], consts[2], consts[3]
    if bias != 0.0:  # covb = cov / alpha
        covb.add_(bias / alpha)
    torch.div(covb, normb, out=rhob).clamp_(-1.0, 1.0)  # -rho (1 + 4 eps), clamped: clamp_unit's rho, negated
    torch.arccos(rhob, out=angleb)
    kk = torch.addcmul(square, rhob, rhob, value=-c * c, out=value)
    kk.sqrt_().addcmul_(angleb, rhob, value=-c).mul_(normb)
    if slope != 1.0:
        kk.mul_(slope)
    if ab != 0.0:
        kk.add_(covb, alpha=-ab / (1.0 + 4.0 * eps))
    torch.mul(kk, finish, out=dst_k)
    if dst_t is not None:  # (S(Theta) + cov / alpha), alpha is in gain; S(Theta) = 0 without tin
        angleb.mul_(gain)
        if ab != 0.0:
            angleb.add_(shift)
        if has_theta:
            thetab.add_(covb)
            torch.mul(thetab, angleb, out=dst_t)
        else:
            torch.mul(covb, angleb, out=dst_t)


def _block_buffers(like: Tensor, shape: List[int]) -> List[Tensor]:
    """The six block buffers of :func:`_activation` (cov, theta, norm, rho, angle, value), each of ``shape``."""
    return list(torch.empty([6] + shape, dtype=like.dtype, device=like.device).unbind(0))


def _constants(valid: Tensor, alpha: float, a: float, b: float, eps: float) -> List[Tensor]:
    """(c^2 as a tensor, finish, gain, shift) of :func:`_activation` for the 0/1 mask ``valid`` of real columns:
    finish undoes normb's factor, gain = (b - a)^2 c alpha, shift = a b alpha, all zero at the spare columns."""
    c = 1.0 / (2.0 * math.pi)
    square = torch.full((1,), c * c, dtype=valid.dtype, device=valid.device)
    return [square, valid * (-alpha * (1.0 + 4.0 * eps)), valid * ((b - a) * (b - a) * c * alpha),
            valid * (a * b * alpha)]


def diagonal_blocks(kin: Tensor, tin: Optional[Tensor], kout: Tensor, tout: Optional[Tensor], n1: Tensor,
                         norm2: Tensor, valid: Tensor, size: int, rows: int, alpha: float, bias: float, a: float,
                         b: float, eps: float) -> None:
    """The block loop in the diagonal layout (same-position pairs only): kin, tin, kout, tout (N1, N2, Hp, Wp)
    padded, the positions (h, w) flattened; n1 (N1, inner) = sqrt(var1) and norm2 (N2, inner) = -sqrt(var2) /
    (alpha (1 + 4 eps)) at the same flattened positions (1 at spare columns); blocks of ``rows`` first-batch
    examples against every second-batch one. The formulas are those of :func:`full_blocks`."""
    n_1, n_2 = kin.shape[0], kin.shape[1]
    wp = kin.shape[3]
    inner = valid.shape[0]
    h = (inner + size - 1) // wp
    p = size // 2
    s0, s1 = kin.stride(0), kin.stride(1)
    rows = min(rows, n_1)
    buf_a = torch.empty(rows, n_2, h * wp, dtype=kin.dtype, device=kin.device)
    cov, theta, norm, rho, angle, value = _block_buffers(kin, [rows, n_2, inner])
    consts = _constants(valid, alpha, a, b, eps)
    out_offset = p * wp + p
    for i0 in range(0, n_1, rows):
        r = min(rows, n_1 - i0)
        blk_a = buf_a.narrow(0, 0, r)
        covb = cov.narrow(0, 0, r)
        thetab = theta.narrow(0, 0, r)
        _sum_shifted(kin, [r, n_2, h * wp], [s0, s1, 1], i0 * s0, wp, size, blk_a)
        _sum_shifted(blk_a, [r, n_2, inner], [blk_a.stride(0), blk_a.stride(1), 1], 0, 1, size, covb)
        if tin is not None:
            _sum_shifted(tin, [r, n_2, h * wp], [s0, s1, 1], i0 * s0, wp, size, blk_a)
            _sum_shifted(blk_a, [r, n_2, inner], [blk_a.stride(0), blk_a.stride(1), 1], 0, 1, size, thetab)
        normb = norm.narrow(0, 0, r)
        torch.mul(n1.narrow(0, i0, r).unsqueeze(1), norm2.unsqueeze(0), out=normb)
        dst_k = kout.as_strided((r, n_2, inner), (s0, s1, 1), out_offset + i0 * s0)
        dst_t: Optional[Tensor] = None
        if tout is not None:
            dst_t = tout.as_strided((r, n_2, inner), (s0, s1, 1), out_offset + i0 * s0)
        _activation(covb, thetab, tin is not None, normb, rho.narrow(0, 0, r), angle.narrow(0, 0, r),
                    value.narrow(0, 0, r), dst_k, dst_t, consts, alpha, bias, a, b, eps)


def _tap_sums(src: Tensor, start: int, dst: Tensor, buf: Tensor, size: int, w: int, inner: int) -> None:
    """dst = the sum over filter taps (a, b) of src[h1 + a, w1 + b, h2 + a, w2 + b] for the block of output
    rows starting at storage offset ``start`` of a padded (Hp, Wp, Hp, Wp) pair: first the taps along H into
    ``buf`` (rows, Wp, H Wp), then those along W into dst (rows, W, inner); (h2, w2) flattened throughout."""
    r, wp, flat = buf.shape[0], buf.shape[1], buf.shape[2]
    s0, s1 = src.stride(2), src.stride(3)
    _sum_shifted(src, (r, wp, flat), (s0, s1, 1), start, s0 + wp, size, buf)
    q0, q1 = buf.stride(0), buf.stride(1)
    _sum_shifted(buf, (r, w, inner), (q0, q1, 1), buf.storage_offset(), q1 + 1, size, dst)


def _sum_shifted(src: Tensor, shape: List[int], strides: List[int], start: int, step: int, size: int,
                 out: Tensor) -> None:
    """out = the sum over t < size of the view of src at storage offset start + t step, added in order."""
    if size == 1:
        out.copy_(src.as_strided(shape, strides, start))
        return
    torch.add(src.as_strided(shape, strides, start), src.as_strided(shape, strides, start + step), out=out)
    for t in range(2, size):
        out.add_(src.as_strided(shape, strides, start + t * step))


def tap_sum_blocks(kin: Tensor, tin: Optional[Tensor], kout: Tensor, tout: Optional[Tensor], size: int, rows: int,
                     inner: int, alpha: float, bias: float) -> None:
    """The block loop of the convolution alone: kout = alpha S(kin) + bias and tout = alpha S(tin) + kout (tin None:
    tout = kout), S the tap sum (:func:`_tap_sums`); kin, tin (N1, N2, Hp, Wp, Hp, Wp) padded, kout, tout (N1,
    N2, H, W, H, W) contiguous."""
    n_1, n_2 = kin.shape[0], kin.shape[1]
    wp = kin.shape[3]
    h, w = kout.shape[2], kout.shape[3]
    s0 = kin.stride(2)
    pair = kin.stride(1)
    rows = min(rows, h)
    buf_a = torch.empty(rows, wp, h * wp, dtype=kin.dtype, device=kin.device)
    cov = torch.empty(rows, w, inner, dtype=kin.dtype, device=kin.device)
    theta = torch.empty(rows, w, inner, dtype=kin.dtype, device=kin.device)
    for i in range(n_1):
        for j in range(n_2):
            base = (i * n_2 + j) * pair
            for r0 in range(0, h, rows):
                r = min(rows, h - r0)
                blk_a = buf_a.narrow(0, 0, r)
                covb = cov.narrow(0, 0, r)
                _tap_sums(kin, base + r0 * s0, covb, blk_a, size, w, inner)
                view = (r, w, h, w)
                strides = (w * inner, inner, wp, 1)
                dst = kout[i, j].narrow(0, r0, r)
                torch.mul(covb.as_strided(view, strides, covb.storage_offset()), alpha, out=dst)
                if bias != 0.0:
                    dst.add_(bias)
                if tout is not None:
                    dst_t = tout[i, j].narrow(0, r0, r)
                    if tin is None:
                        dst_t.copy_(dst)
                    else:
                        thetab = theta.narrow(0, 0, r)
                        _tap_sums(tin, base + r0 * s0, thetab, blk_a, size, w, inner)
                        torch.add(dst, thetab.as_strided(view, strides, thetab.storage_offset()), alpha=alpha,
                                  out=dst_t)
