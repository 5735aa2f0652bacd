"""Standard multi-head softmax attention (Vaswani et al. 2017; torch's ``nn.MultiheadAttention``): logits scaled by
1 / sqrt(d_head), independent query, key and value weights. Finite module and sampled kernel transform.

Finite layer, for X the P x C input (positions flattened, channels last), H heads of width d, E = H d:

    Q = X W_Q + b_Q,  K = X W_K + b_K,  V = X W_V + b_V             (per head, d columns each)
    G_h = Q_h K_h^T / sqrt(d),  A_h = softmax(G_h + causal mask),   f(X) = concat_h[A_h V_h] W_O + b_O,

'standard' parameterization (torch's): the entries of each weight matrix W N(0, w^2 / fan_in) with its own
standard deviation w (w_q, w_k, w_v, w_out), biases N(0, b^2); 'ntk': N(0, 1) scaled at use by w / sqrt(fan_in)
and b.

**The limit.** Head width d -> infinity and heads H -> infinity, in either order (Hron, Bahri, Sohl-Dickstein
and Novak 2020, "Infinite attention", Sec. 3 with d^(-1/2) scaling: the logits converge to a Gaussian process,
and the heads' outputs, Gaussian given the logits (Sakai, Karakida and Imaizumi 2025), average to a Gaussian
as H grows). With y the layer's input, K_y its kernel (every position pair), K_Q = w_Q^2 K_y + b_Q^2 and so on,
the logits of x and x' are jointly Gaussian with

    E[G_lm(x) G_l'm'(x')] = K_Q(x, x')[l, l'] K_K(x, x')[m, m'],

independent of V, and (A = softmax(G(x)), A' = softmax(G(x')))

    NNGP  K'(x, x') = w_O^2 E_G[A K_V(x, x') A'^T] + b_O^2.

NTK (Jacot et al. 2018, eq. 2: a sum over parameters; the tangents of Q, K, V are independent of the logits'
values in the limit, Yang 2020, Tensor Programs II). With Theta_Q = c(K_y) + w_Q^2 Theta_y, c(K) the gradient
term of the weights and bias (w^2 K + b^2 'ntk'; n K + 1 'standard', n the fan-in), and likewise Theta_K, Theta_V:

    Theta'(x, x') = c_O(E[A K_V A'^T]) + w_O^2 E[A Theta_V A'^T]
                    + w_O^2 E[Theta_Q[l, l'] S(K_K) + K_Q[l, l'] S(Theta_K)],

the last term the logits' path: d f_l / d G_lb = A_lb (V_b - f_l), so with D the covariance of V_b - f_l and
V'_b' - f'_l' under V (given the logits), S(M)[l, l'] = sum_{b, b'} A_lb A'_l'b' D M[b, b'], which expands into
four matrix products. E_G is estimated by sampling the logits (R_Q Z R_K^T with R R^T the joint query and key
kernels of the two examples and Z i.i.d. normal: covariance K_Q (x) K_K), quasi-random points per replicate and
replicates for standard errors (:mod:`infinet.sampling`). Images attend over all their positions (patches).

Padding (``mask_constant``, :mod:`infinet.engine.masks`): each example's padded keys get no weight in its
softmax (torch's ``key_padding_mask``), with or without the causal mask, and every kernel entry at a padded
position is zero after the layer, so a padded batch has the kernel of its sequences computed one by one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import sampling
from ..kernel import Kernel
from ..masks import remask
from .base import Context, Layer, Spec, random_output
from .dense import check_parameterization, check_std, std_repr
from ...core.checks import check_int


class ScaledDotProductAttention(Layer):
    """Multi-head self-attention with 1/sqrt(d_head) logits (``nn.MultiheadAttention``): ``embed_dim`` = E output
    channels of the finite module in ``n_heads`` heads; ``w_std`` / ``b_std`` of the query, key and value maps
    (``w_q_std`` ... ``b_v_std`` override one), ``w_out_std`` / ``b_out_std`` of the output map (``output_map=False``:
    none, the heads merged as F.scaled_dot_product_attention leaves them: w_O = 1, b_O absent, no NTK term of its
    own); ``causal`` masks later positions. Inputs N x C x positions (sequences or images), outputs N x E x the same positions. Kernel: see
    the module docstring (Hron et al. 2020), sampled with ``samples`` points and ``replicates`` replicates."""

    masking = "own"  # padded keys get no weight; entries at padded positions are zeroed (infinet.masks)
    sampled = True
    fresh_output = True

    def __init__(self, embed_dim: int, n_heads: int, w_std: float = 1.0, b_std: float | None = None,
                 w_out_std: float = 1.0, b_out_std: float | None = None, causal: bool = False,
                 parameterization: str = "standard", w_q_std: float | None = None, w_k_std: float | None = None,
                 w_v_std: float | None = None, b_q_std: float | None = None, b_k_std: float | None = None,
                 b_v_std: float | None = None, output_map: bool = True, samples: int = 256, replicates: int = 8,
                 seed: int = 0):
        check_int(embed_dim, "ScaledDotProductAttention embed_dim")
        check_int(n_heads, "ScaledDotProductAttention n_heads")
        if embed_dim % n_heads:
            raise ValueError(f"ScaledDotProductAttention embed_dim {embed_dim} must be a multiple of n_heads {n_heads}")
        if not isinstance(causal, bool):
            raise TypeError(f"ScaledDotProductAttention causal must be True or False, got {causal!r}")
        sampling.check_options("ScaledDotProductAttention", samples, replicates, seed)
        self.embed_dim, self.n_heads, self.causal = embed_dim, n_heads, causal
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.stds = {name: float(check_std(f"w_{name}_std", value, allow_none=False)) if value is not None
                     else float(self.w_std) for name, value in (("q", w_q_std), ("k", w_k_std), ("v", w_v_std))}
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.b_stds = {name: check_std(f"b_{name}_std", value, allow_none=True) if value is not None else self.b_std
                       for name, value in (("q", b_q_std), ("k", b_k_std), ("v", b_v_std))}
        self.w_out_std = check_std("w_out_std", w_out_std, allow_none=False)
        self.b_out_std = check_std("b_out_std", b_out_std, allow_none=True)
        if not isinstance(output_map, bool):
            raise TypeError(f"ScaledDotProductAttention output_map must be True or False, got {output_map!r}")
        if not output_map and (self.w_out_std != 1.0 or self.b_out_std is not None):
            raise ValueError("ScaledDotProductAttention without an output map takes no w_out_std / b_out_std")
        self.output_map = output_map
        self.parameterization = check_parameterization(parameterization)
        self.samples, self.replicates, self.seed = samples, replicates, seed

    def __repr__(self) -> str:
        q, k, v = (self.stds[n] for n in "qkv")
        biases = "".join(f", b_{n}_std={std_repr(self.b_stds[n])}" for n in "qkv" if self.b_stds[n] != self.b_std)
        out = (f"w_out_std={std_repr(self.w_out_std)}, b_out_std={std_repr(self.b_out_std)}" if self.output_map
               else "output_map=False")
        return (f"ScaledDotProductAttention({self.embed_dim}, {self.n_heads}, w_std={std_repr(self.w_std)}, "
                f"b_std={std_repr(self.b_std)}, {out}, causal={self.causal!r}, "
                f"parameterization={self.parameterization!r}, w_q_std={q!r}, w_k_std={k!r}, w_v_std={v!r}{biases}, "
                f"samples={self.samples}, replicates={self.replicates}, seed={self.seed})")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None and len(spec.shape) < 2:
            raise ValueError(f"{self!r} attends over positions: inputs N x C x L or N x C x H x W, got per-example "
                             f"shape {spec.shape}")
        return random_output(spec, ctx, None if spec.shape is None else (self.embed_dim, *spec.shape[1:]))

    def needs_full(self, full_out):
        return True  # every position attends to every other

    # -- kernel ----------------------------------------------------------------------------------------
    def _affine(self, name: str, k_in: Tensor) -> Tensor:
        """The kernel of a query / key / value map's output (every entry of the input kernel)."""
        b = self.b_stds[name]
        return self.stds[name] ** 2 * k_in + (0.0 if b is None else float(b) ** 2)

    def _gradient_term(self, w: float, b: float | None, fan_in: int, k_in: Tensor) -> Tensor:
        """The NTK term of one affine map's own weight and bias, c(K)."""
        if self.parameterization == "ntk":
            return w**2 * k_in + (0.0 if b is None else float(b) ** 2)
        return fan_in * k_in + (0.0 if b is None else 1.0)

    def _tangent(self, name: str, fan_in: int, k_in: Tensor, theta_in: Tensor) -> Tensor:
        return self._gradient_term(self.stds[name], self.b_stds[name], fan_in, k_in) + self.stds[name] ** 2 * theta_in

    def _mask(self, p: int, like: Tensor) -> Tensor | None:
        if not self.causal:
            return None
        return torch.ones(p, p, dtype=torch.bool, device=like.device).triu(1)

    def _softmax(self, g: Tensor, mask: Tensor | None) -> Tensor:
        return torch.softmax(g if mask is None else g.masked_fill(mask, -math.inf), dim=-1)

    def _key_masks(self, causal: Tensor | None, padded: Tensor | None) -> Tensor | None:
        """(N, 1, P, P) logits masks per example (True: no weight), the causal mask with each example's padded keys
        (``padded`` (N, P), True at padding); a query row left without any key (a padded query before every valid
        key under the causal mask) keeps the causal mask alone: its entries are zeroed afterwards."""
        if padded is None:
            return None if causal is None else causal[None, None]
        mask = padded[:, None, None, :].expand(len(padded), 1, padded.shape[1], padded.shape[1])
        if causal is not None:
            mask = mask | causal
        empty = mask.all(-1, keepdim=True)
        return torch.where(empty, torch.zeros_like(mask) if causal is None else causal.expand_as(mask), mask)

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.full:
            raise ValueError(f"{self!r} needs the kernel of every position pair (internal layout error)")
        spatial = k.spatial
        p = math.prod(spatial)
        n1, n2 = k.nngp.shape[:2]
        dtype, dev = k.nngp.dtype, k.nngp.device
        state = k.sampling if k.sampling is not None else sampling.SamplingState(self.seed, 0)
        seed = state.next_seed()
        fan_in = k.shape[0]
        causal = self._mask(p, k.nngp)
        masks1 = self._key_masks(causal, None if k.mask1 is None else k.mask1.reshape(n1, p))
        masks2 = masks1 if k.mask2 is k.mask1 else self._key_masks(causal, None if k.mask2 is None
                                                                   else k.mask2.reshape(n2, p))
        w_o2 = float(self.w_out_std) ** 2
        b_o2 = 0.0 if self.b_out_std is None else float(self.b_out_std) ** 2

        def flat(t, lead):
            return None if t is None else t.reshape(*t.shape[:lead], p, p)

        var1, var2 = flat(k.var1, 1), flat(k.var2, 1)
        nngp, ntk = flat(k.nngp, 2), flat(k.ntk, 2)
        z_self = sampling.normal_points(self.samples, p * p, seed, dtype, dev).reshape(-1, p, p)
        z_pair = sampling.normal_points(self.samples, 4 * p * p, seed + 1, dtype, dev).reshape(-1, 2 * p, 2 * p)

        def pick(masks, rows):  # the logits masks of examples ``rows``: (B, 1, P, P), or one for all
            return None if masks is None else (masks if len(masks) == 1 else masks[rows])

        def own(var, masks):  # each example with itself: E[A K_V A^T]
            out = []
            for part in sampling.chunks(len(var), self.samples * p * p):
                v = var[part]
                g = sampling.psd_sqrt(self._affine("q", v))[:, None] @ z_self @ sampling.psd_sqrt(
                    self._affine("k", v)).transpose(-1, -2)[:, None]
                a = self._softmax(g, pick(masks, part))
                out.append(w_o2 * (a @ self._affine("v", v)[:, None] @ a.transpose(-1, -2)).mean(1) + b_o2)
            return torch.cat(out)

        self1 = own(var1, masks1)
        self2 = self1 if var2 is var1 else own(var2, masks2)
        pairs_nngp, pairs_ntk = [], []
        flat_pairs = n1 * n2
        cross = nngp.reshape(flat_pairs, p, p)
        theta = None if ntk is None else ntk.reshape(flat_pairs, p, p)
        first = var1[:, None].expand(n1, n2, p, p).reshape(flat_pairs, p, p)
        second = var2[None].expand(n1, n2, p, p).reshape(flat_pairs, p, p)
        rows = torch.arange(n1, device=dev)[:, None].expand(n1, n2).reshape(-1)
        cols = torch.arange(n2, device=dev)[None].expand(n1, n2).reshape(-1)
        for part in sampling.chunks(flat_pairs, self.samples * 4 * p * p):
            out = self._pairs(first[part], cross[part], second[part], None if theta is None else theta[part],
                              z_pair, (pick(masks1, rows[part]), pick(masks2, cols[part])), fan_in)
            pairs_nngp.append(w_o2 * out[0] + b_o2)
            if out[1] is not None:
                pairs_ntk.append(out[1])
        out_nngp = torch.cat(pairs_nngp).reshape(n1, n2, p, p)
        out_ntk = None if ntk is None else torch.cat(pairs_ntk).reshape(n1, n2, p, p)
        if k.symmetric:  # the estimate of (x', x) is that of (x, x') transposed; x with itself its own estimate
            out_nngp = 0.5 * (out_nngp + out_nngp.permute(1, 0, 3, 2))
            idx = torch.arange(n1, device=dev)
            out_nngp[idx, idx] = self1
            if out_ntk is not None:
                out_ntk = 0.5 * (out_ntk + out_ntk.permute(1, 0, 3, 2))

        def back(t, lead):
            return None if t is None else t.reshape(*t.shape[:lead], *spatial, *spatial)

        out = k.replace(nngp=back(out_nngp, 2), ntk=back(out_ntk, 2), var1=back(self1, 1), var2=back(self2, 1),
                        shape=(self.embed_dim, *spatial), law=None)
        return out if k.mask1 is None else remask(out)

    def _pairs(self, v1, c, v2, theta, z, masks, fan_in):
        """For a chunk of pairs (B, P, P) blocks: E[A K_V A'^T] and the NTK (None without ``theta``); ``masks``
        the logits masks of the first and second members."""
        p = c.shape[-1]

        def joint(name, a, b, d):
            top = torch.cat([self._affine(name, a), self._affine(name, b)], -1)
            bottom = torch.cat([self._affine(name, b).transpose(-1, -2), self._affine(name, d)], -1)
            return torch.cat([top, bottom], -2)

        r_q = sampling.psd_sqrt(joint("q", v1, c, v2))
        r_k = sampling.psd_sqrt(joint("k", v1, c, v2))
        g = r_q[:, None] @ z @ r_k.transpose(-1, -2)[:, None]  # (B, n, 2P, 2P)
        a = self._softmax(g[..., :p, :p], masks[0])
        a2 = self._softmax(g[..., p:, p:], masks[1])
        a2t = a2.transpose(-1, -2)
        kv = self._affine("v", c)[:, None]  # (B, 1, P, P)
        heads = a @ kv @ a2t  # (B, n, P, P)
        nngp = heads.mean(1)
        if theta is None:
            return nngp, None
        w_o = float(self.w_out_std)
        th_v = self._tangent("v", fan_in, c, theta)[:, None]
        th_q, k_q = self._tangent("q", fan_in, c, theta), self._affine("q", c)
        th_k, k_k = self._tangent("k", fan_in, c, theta)[:, None], self._affine("k", c)[:, None]

        def s(m):  # sum_{b, b'} A_lb A'_l'b' D M[b, b'] per sample
            t1 = a @ (kv * m) @ a2t
            t2 = a @ ((kv @ a2t) * (m @ a2t))
            t3 = ((a @ kv) * (a @ m)) @ a2t
            t4 = heads * (a @ m @ a2t)
            return (t1 - t2 - t3 + t4).mean(1)

        logits = th_q * s(k_k) + k_q * s(th_k)
        return nngp, self._out_gradient(nngp) + w_o**2 * ((a @ th_v @ a2t).mean(1) + logits)

    def _out_gradient(self, heads: Tensor) -> Tensor:
        """The NTK term of the output map's own weight and bias, given the heads' kernel E[A K_V A'^T] (none
        without an output map)."""
        if not self.output_map:
            return torch.zeros_like(heads)
        return self._gradient_term(float(self.w_out_std), self.b_out_std, self.embed_dim, heads)

    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        if spec.shape is None:
            raise ValueError(f"{self!r}.build needs the input shape")
        return ScaledDotProductAttentionModule(self, spec.shape[0], ctx.seed())


class ScaledDotProductAttentionModule(nn.Module):
    """The finite layer: N x C x positions in, N x E x positions out (see the module docstring)."""

    def __init__(self, layer: ScaledDotProductAttention, in_channels: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        e, self.layer = layer.embed_dim, layer
        ntk = layer.parameterization == "ntk"

        def weight(fan_out, fan_in, std):
            return nn.Parameter(torch.randn(fan_out, fan_in, generator=g) * (1.0 if ntk else std / math.sqrt(fan_in)))

        def bias(n, std):
            return None if std is None else nn.Parameter(torch.randn(n, generator=g) * (1.0 if ntk else float(std)))

        self.w_q, self.w_k, self.w_v = (weight(e, in_channels, layer.stds[n]) for n in "qkv")
        self.b_q, self.b_k, self.b_v = (bias(e, layer.b_stds[n]) for n in "qkv")
        if layer.output_map:
            self.w_o, self.b_o = weight(e, e, float(layer.w_out_std)), bias(e, layer.b_out_std)
        self.in_channels = in_channels

    def _map(self, x, w, b, std, b_std, fan_in):
        ntk = self.layer.parameterization == "ntk"
        out = x @ w.T * (std / math.sqrt(fan_in) if ntk else 1.0)
        if b is not None:
            out = out + b * (float(b_std) if ntk else 1.0)
        return out

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        tokens = x.reshape(n, c, -1).transpose(1, 2)  # (N, P, C)
        q, k, v = (self._map(tokens, w, b, layer.stds[name], layer.b_stds[name], c)
                   for w, b, name in ((self.w_q, self.b_q, "q"), (self.w_k, self.b_k, "k"), (self.w_v, self.b_v, "v")))
        heads, e = layer.n_heads, layer.embed_dim

        def split(t):
            return t.reshape(n, -1, heads, e // heads).transpose(1, 2)

        # written out rather than F.scaled_dot_product_attention, whose fused CPU kernels have no forward-mode AD
        # (jvp: infinet.finite.training's stable learning rate, the empirical NTK's ntvp)
        q, k, v = split(q), split(k), split(v)
        logits = q @ k.transpose(-1, -2) / math.sqrt(e // heads)
        att = layer._softmax(logits, layer._mask(logits.shape[-1], logits)) @ v
        merged = att.transpose(1, 2).reshape(n, -1, e)
        out = self._map(merged, self.w_o, self.b_o, float(layer.w_out_std), layer.b_out_std, e) if layer.output_map \
            else merged
        return out.transpose(1, 2).reshape(n, e, *spatial)


class MultiheadAttention(ScaledDotProductAttention):
    """The name PyTorch users look for: torch's ``nn.MultiheadAttention`` semantics (self-attention, 1/sqrt(d_head)
    logits, softmax, independent query, key and value weights, 'standard' parameterization by default); the same
    layer and kernel as :class:`ScaledDotProductAttention` (Hron et al. 2020, see the module docstring)."""
