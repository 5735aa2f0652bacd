"""The sampled max-pooling kernel from joint draws of all input positions of a pair of examples.

Where :class:`~infinet.MaxPool` would draw the two windows of every pair of output positions (o, o') on their
own (O^2 draws of 2w values per pair of examples, each window drawn again for every partner), this estimator
draws the P input positions of both examples once per point and takes every window's maximum from that draw:
with V_a, V_b the (P, P) self-covariances and C = Cov(u_a, u_b), and V_a = Q diag(lambda) Q^T,

    u_a = z1 diag(sqrt(lambda)) Q^T,   u_b = z1 G^T + z2 R^T,   G = C^T Q diag(lambda^-1/2),   R R^T = V_b - G G^T

(the conditional law of u_b given u_a; directions with lambda ~ 0 carry no variance and are dropped, so singular
self-covariances are exact). z1, z2 are the quasi-random standard normal points of the layer
(:mod:`infinet.sampling`). The estimate for (a, b) is the mean of the one with a drawn first and the transpose of
the one with b drawn first, so the sampled kernel is exactly symmetric, and tiles holding a pair in either order
agree. Every output pair then comes from the same points (its errors are shared across positions, as a finite
network's are), the same expectations as the window-pair estimator:

    K'(a, o; b, o') = E[g_a,o g_b,o'],   Theta'(a, o; b, o') = E[g'_a,o g'_b,o' Theta(a, i*_o; b, j*_o')]

(g = act(max of the window), i*, j* the argmax of each window; Jacot et al. 2018 for the chain rule through the
maximum). The NTK's sum over the points is one matrix product: with D_a[(o, k), s] = g'_a,o at the winning slot k
of window o in draw s (zero at the other slots),

    Theta'(a, o; b, o') = sum_{k, l} (D_a D_b^T / points)[(o, k), (o', l)] Theta(a, i_o,k; b, j_o',l).

Cost per pair of examples: O(P^3 + points x P^2), against O(O^2 (w^3 + points x w^2)) for window pairs;
:func:`pays` picks the cheaper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import sampling


def pays(p: int, o: int, w: int, points: int) -> bool:
    """Whether joint draws of the P positions cost fewer flops than draws of each pair of windows for every pair
    of output positions (the choice must not depend on the layout asked: the same-position layout is then
    exactly the diagonal of the full one)."""
    joint = 2 * (2 * p**3 + 2 * points * p * p)
    pairs = o * o * (9 * (2 * w) ** 3 + 2 * points * (2 * w) ** 2)
    return joint < pairs


def _whitened(v: Tensor) -> tuple[Tensor, Tensor]:
    """(Q diag(sqrt(lambda)), Q diag(lambda^-1/2)) of each (P, P) self-covariance, directions with lambda below
    round-off zeroed in both."""
    values, vectors = torch.linalg.eigh(0.5 * (v + v.transpose(-1, -2)))
    top = values.amax(-1, keepdim=True).clamp(min=0.0)
    keep = values > top * (v.shape[-1] * torch.finfo(v.dtype).eps * 16)
    safe = torch.where(keep, values, torch.ones_like(values))
    root = vectors * torch.where(keep, safe.sqrt(), torch.zeros_like(values)).unsqueeze(-2)
    inverse = vectors * torch.where(keep, safe.rsqrt(), torch.zeros_like(values)).unsqueeze(-2)
    return root, inverse


def _root(s: Tensor, scale: Tensor) -> Tensor:
    """R with R R^T = s for a batch of PSD matrices. Positions with no conditional variance (every position when
    the two examples coincide; positions whose input is zero, such as an image's blank border under a
    convolution without bias) are exact zeros of R; the rest by Cholesky, or the symmetric root where that
    fails (other singular covariances). ``scale`` (B,): the largest variance of the unconditioned values, the
    measure of round-off."""
    s = 0.5 * (s + s.transpose(-1, -2))
    diagonal = s.diagonal(dim1=-2, dim2=-1)
    none = diagonal <= scale[:, None].clamp(min=0.0) * (64 * s.shape[-1] * torch.finfo(s.dtype).eps)
    cleared = s.masked_fill(none[..., :, None] | none[..., None, :], 0.0)
    factor, info = torch.linalg.cholesky_ex(cleared + torch.diag_embed(none.to(s.dtype)))
    factor = factor.masked_fill(none[..., :, None], 0.0)
    bad = (info != 0) | ~torch.isfinite(factor).flatten(1).all(1)
    if bool(bad.any()):
        factor = factor.clone()
        factor[bad] = sampling.psd_sqrt(cleared[bad])
    return factor


def _reversed_slots(w: int, device) -> Tensor:
    """(w, 1) bytes w, w - 1, ..., 1."""
    return torch.arange(w, 0, -1, dtype=torch.uint8, device=device)[:, None]


class Pooled:
    """The pooled values of draws: g = act(max of each window) (..., O, points), its derivative, the maximum,
    and the slot of each window (0..w-1) that attains it. Points last, so that a window's values are contiguous
    rows."""

    def __init__(self, layer, factor: Tensor, zt: Tensor, index: Tensor, valid: Tensor | None,
                 need_derivative: bool):
        """The draws u = factor @ zt, ``factor`` (..., P, k), ``zt`` (k, points)."""
        if index.numel() <= factor.shape[-2]:  # windows that do not overlap: draw the values in window order
            windows = (factor[..., index.reshape(-1), :] @ zt).unflatten(-2, index.shape)  # (..., O, w, points)
        else:
            windows = (factor @ zt)[..., index, :]
        if layer.sign != 1.0:
            windows = layer.sign * windows
        if valid is not None:
            windows = windows.masked_fill(~valid[..., None], -math.inf)
        w = index.shape[-1]
        if w < 256:
            top = windows.amax(-2)
            # the first slot attaining it (ties: exact zeros of blank inputs): w - max_k [u_k == top] (w - k), in
            # bytes, 2x faster than max with indices over this short axis
            first = (windows == top.unsqueeze(-2)).view(torch.uint8).mul_(_reversed_slots(w, top.device))
            self.slot = w - first.amax(-2).clamp_(min=1).long()
        else:
            top, self.slot = windows.max(-2)
        self.index = index
        self.top = top if layer.sign == 1.0 else layer.sign * top
        self.value, self.derivative = layer._act(self.top, need_derivative)

    def argmax(self, rows: Tensor) -> Tensor:
        """The input position of each window's maximum in the draws ``rows`` (B, O, points)."""
        o, w = self.index.shape
        starts = torch.arange(0, o * w, w, device=self.slot.device)[:, None]
        return self.index.reshape(-1).take(self.slot[rows] + starts)

    def spread(self, weight: Tensor, rows: Tensor | None = None) -> Tensor:
        """``weight`` (B, O, points) placed at the winning slot of each window of the draws ``rows`` (all: None):
        (B, O w, points), zero elsewhere (sums over the points of products with a partner's become one matrix
        product)."""
        slot = self.slot if rows is None else self.slot[rows]
        out = weight.new_zeros(weight.shape[:-1] + self.index.shape[-1:] + weight.shape[-1:])
        return out.scatter_(-2, slot.unsqueeze(-2), weight.unsqueeze(-2)).flatten(-3, -2)


def expectations(layer, v1: Tensor, v2: Tensor, c: Tensor, theta: Tensor | None, z: Tensor, index: Tensor,
                 valid: Tensor, full_out: bool) -> tuple:
    """(nngp, ntk, self1, self2) of the pooled values: ``v1`` (n1, P, P), ``v2`` (n2, P, P), ``c`` and ``theta``
    (n1, n2, P, P); ``z`` (points, 2P); outputs (n1, n2, O, O) or, without ``full_out``, (n1, n2, O)."""
    p, (o, w) = v1.shape[-1], index.shape
    zt = z.T.contiguous()  # (2P, points): draws come out points last
    valid = None if bool(valid.all()) else valid
    need = theta is not None
    root1, inverse1 = _whitened(v1)
    root2, inverse2 = (root1, inverse1) if v2 is v1 else _whitened(v2)
    first1 = Pooled(layer, root1, zt[:p], index, valid, need)  # (n1, O, points)
    first2 = first1 if v2 is v1 else Pooled(layer, root2, zt[:p], index, valid, need)
    n1, n2 = len(v1), len(v2)

    def mean_products(ga: Tensor, gb: Tensor) -> Tensor:
        return (ga @ gb.transpose(-1, -2) if full_out else (ga * gb).sum(-1)) / len(z)

    def conditional(first: Pooled, inverse: Tensor, v_other: Tensor, cross: Tensor, rows: Tensor, cols: Tensor,
                    th: Tensor | None):
        """E with the examples ``rows`` drawn first and ``cols`` given them; cross (B, P, P) = Cov(u_row, u_col)."""
        g = cross.transpose(-1, -2) @ inverse[rows]  # (B, P, P)
        other = v_other[cols]
        r = _root(other - g @ g.transpose(-1, -2), other.diagonal(dim1=-2, dim2=-1).amax(-1))
        second = Pooled(layer, torch.cat([g, r], -1), zt, index, valid, need)  # (z1 G^T + z2 R^T)^T
        ga = first.value[rows]
        nngp = mean_products(ga, second.value)
        if th is None:
            return nngp, None
        trainable = layer.affine is not None and layer.affine.trainable
        da, db = first.derivative[rows], second.derivative
        if full_out:
            # sum_s d_a[o, s] d_b[o', s] Theta(i*_o,s, j*_o',s): the winners' weights spread over the window slots,
            # one matrix product over the points, then the (O w, O w) blocks of Theta at the window positions
            products = first.spread(da, rows) @ second.spread(db).transpose(-1, -2) / len(z)  # (B, O w, O w)
            flat = index.reshape(-1)
            ntk = (products * th[:, flat[:, None], flat[None, :]]).unflatten(-1, (o, w)).unflatten(-3, (o, w))
            ntk = ntk.sum((-1, -3))
            if trainable:  # the gamma and beta terms at the two maxima
                ntk = ntk + (mean_products(da * first.top[rows], db * second.top) / layer.affine.weight**2
                             + float(layer.affine.bias) * mean_products(da, db))
            return nngp, ntk
        positions = first.argmax(rows) * p + second.argmax(slice(None))
        picked = th.reshape(len(th), -1).gather(1, positions.flatten(1)).reshape(positions.shape)
        if trainable:
            picked = picked + first.top[rows] * second.top / layer.affine.weight**2 + float(layer.affine.bias)
        return nngp, (da * db * picked).mean(-1)

    rows_all = torch.arange(n1, device=c.device)[:, None].expand(n1, n2).reshape(-1)
    cols_all = torch.arange(n2, device=c.device)[None].expand(n1, n2).reshape(-1)
    flat_c = c.reshape(-1, p, p)
    flat_t = None if theta is None else theta.reshape(-1, p, p)
    nngp, ntk = [], []
    for part in sampling.chunks(n1 * n2, len(z) * max(p, o * w) * 4):
        rows, cols = rows_all[part], cols_all[part]
        th = None if flat_t is None else flat_t[part]
        ab = conditional(first1, inverse1, v2, flat_c[part], rows, cols, th)
        ba = conditional(first2, inverse2, v1, flat_c[part].transpose(-1, -2), cols, rows,
                         None if th is None else th.transpose(-1, -2))
        flip = (lambda t: t.transpose(-1, -2)) if full_out else (lambda t: t)  # noqa: E731
        nngp.append(0.5 * (ab[0] + flip(ba[0])))
        if th is not None:
            ntk.append(0.5 * (ab[1] + flip(ba[1])))
    shape = (n1, n2, o, o) if full_out else (n1, n2, o)
    out_nngp = torch.cat(nngp).reshape(shape)
    out_ntk = torch.cat(ntk).reshape(shape) if ntk else None

    def own(first: Pooled) -> Tensor:
        return mean_products(first.value, first.value)

    self1 = own(first1)
    return out_nngp, out_ntk, self1, self1 if first2 is first1 else own(first2)
