"""Global self-attention over sequences N x C x L and images N x C x H x W: finite module and kernel.

Arguments and semantics are those of neural-tangents 0.6.5 ``stax.GlobalSelfAttention`` (Hron, Bahri,
Sohl-Dickstein and Novak 2020, "Infinite attention: NNGP and NTK for deep attention networks"), with
positions flattened (an image attends over all H W pixels). For one head, with X the P x C input
(positions x channels) plus positional embeddings E when asked:

    f_h(X) = mech(QK_std / (C n_key^a) (X W_Q)(X W_K)^T) (X W_V),
    f(X)   = (OV_std / sqrt(n_val n_heads C_v)) concat_h[f_h(X)] W_O + b_std b,

all weights N(0, 1), QK_std = W_query_std W_key_std, OV_std = W_out_std W_value_std, mech one of
SOFTMAX (over keys), IDENTITY, ABS, RELU.

``linear_scaling=True`` (a = 1, W_Q tied to W_K): the logits converge to QK_std C~(x) with C~ the
input's own position-pair covariance (mixed with the embeddings' covariance R), so each example's
attention matrix G(x) = mech(QK_std C~(x)) is deterministic at infinite width (Hron et al. 2020, Sec. 3,
eq. 9) and
    K'(x, x')  = OV_std^2 G(x) V(x, x') G(x')^T + b_std^2,
    Th'(x, x') = OV_std^2 G(x) T(x, x') G(x')^T + b_std^2 + 2 (K'(x, x') - b_std^2)
(the last term: the gradients of W_V and W_O; W_K's vanishes), V, T the input's NNGP and NTK (mixed
with R when ``val_pos_emb``).

``linear_scaling=False`` (a = 1/2, independent W_Q, W_K): the logits stay Gaussian and only
IDENTITY has a closed form (Hron et al. 2020, eq. 11): K' = (QK_std OV_std)^2 <C~, V> C~ + b_std^2 with
<A, B> the sum over all position pairs; any other mechanism is refused, as by neural-tangents.

Positional embeddings (``pos_emb_type`` SUM or CONCAT): random N(0, W_pos_emb_std^2) embeddings with
position covariance R = decay(sum_axes |p - q|^pos_emb_p_norm) (``pos_emb_decay_fn``; None: R = I);
the input's covariances become kw K + pw R with kw = 1, pw = W_pos_emb_std^2 for SUM and kw = C / (C +
C_e), pw = W_pos_emb_std^2 C_e / (C + C_e) for CONCAT (C_e = n_chan_pos_emb). The embeddings are
parameters, so they enter the NTK alike. R must be a covariance: a decay function giving a matrix that is not
positive semi-definite is refused (ValueError), where neural-tangents would return numbers.

The layer needs every pair of positions below it (the full layout) and gives them above it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..kernel import Kernel
from ..masks import remask
from .base import Context, Layer, Spec, with_shape
from .dense import check_std, std_repr
from ...core.checks import check_int

MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")
POS_EMB_TYPES = ("NONE", "SUM", "CONCAT")


def _mechanism(name: str, logits: Tensor) -> Tensor:
    if name == "SOFTMAX":
        return torch.softmax(logits, dim=-1)
    if name == "IDENTITY":
        return logits
    if name == "ABS":
        return logits.abs()
    return torch.relu(logits)


def position_covariance(spatial: tuple[int, ...], p_norm: float, decay_fn, dtype, device) -> Tensor:
    """R (P, P) between flattened positions: the identity without ``decay_fn``, else
    decay_fn(sum over axes of |p_i - q_i|^p_norm)."""
    size = math.prod(spatial)
    if decay_fn is None:
        return torch.eye(size, dtype=dtype, device=device)
    grids = torch.meshgrid(*(torch.arange(n, dtype=dtype, device=device) for n in spatial), indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], 1)
    dist = ((coords[:, None, :] - coords[None, :, :]).abs() ** p_norm).sum(-1)
    r = decay_fn(dist)
    r = torch.as_tensor(r, dtype=dtype, device=device)
    if r.shape != (size, size) or not bool(torch.isfinite(r).all()):
        raise ValueError(f"pos_emb_decay_fn must map the ({size}, {size}) distance matrix to finite values of the "
                         f"same shape; got shape {tuple(r.shape)}")
    lowest = float(torch.linalg.eigvalsh(r.double().cpu()).min())
    if lowest < -1e-10 * max(float(r.abs().max()), 1e-300):
        raise ValueError(f"pos_emb_decay_fn gives a position covariance that is not positive semi-definite "
                         f"(smallest eigenvalue {lowest:.3g}); it is the covariance of the positional embeddings, "
                         "so it must be one (e.g. exp(-d) of squared or absolute distances)")
    return r


class GlobalSelfAttention(Layer):
    """Multi-head global self-attention (neural-tangents ``stax.GlobalSelfAttention``; see the module
    docstring for the finite network, the kernel and the references). Inputs N x C x L or N x C x H x W,
    outputs N x n_chan_out x (same positions). 'ntk' parameterization only, as in neural-tangents."""

    masking = "own"

    def __init__(self, n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int, linear_scaling: bool = True,
                 W_key_std: float = 1.0, W_value_std: float = 1.0, W_query_std: float = 1.0,
                 W_out_std: float = 1.0, b_std: float | None = None, attention_mechanism: str = "SOFTMAX",
                 pos_emb_type: str = "NONE", pos_emb_p_norm: float = 2, pos_emb_decay_fn: Callable | None = None,
                 n_chan_pos_emb: int | None = None, W_pos_emb_std: float = 1.0, val_pos_emb: bool = False):
        for name, value in (("n_chan_out", n_chan_out), ("n_chan_key", n_chan_key), ("n_chan_val", n_chan_val),
                            ("n_heads", n_heads)):
            check_int(value, f"GlobalSelfAttention {name}")
        if n_chan_pos_emb is not None and (isinstance(n_chan_pos_emb, bool) or not isinstance(n_chan_pos_emb, int)
                                           or n_chan_pos_emb < 1):
            raise ValueError(f"n_chan_pos_emb must be a positive integer or None, got {n_chan_pos_emb!r}")
        for name, value in (("linear_scaling", linear_scaling), ("val_pos_emb", val_pos_emb)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        mech = str(attention_mechanism).upper()
        if mech not in MECHANISMS:
            raise ValueError(f"unknown attention_mechanism {attention_mechanism!r}; choose from {MECHANISMS}")
        pos = str(pos_emb_type).upper()
        if pos not in POS_EMB_TYPES:
            raise ValueError(f"unknown pos_emb_type {pos_emb_type!r}; choose from {POS_EMB_TYPES}")
        if not linear_scaling and mech != "IDENTITY":
            raise ValueError(f"GlobalSelfAttention with linear_scaling=False and attention_mechanism={mech!r} has no "
                             "infinite-width closed form (the logits stay Gaussian; Hron et al. 2020): use "
                             "linear_scaling=True, or attention_mechanism='IDENTITY'")
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise TypeError(f"pos_emb_decay_fn must be a function of the distance matrix or None, got {pos_emb_decay_fn!r}")
        p_norm = float(pos_emb_p_norm)
        if not math.isfinite(p_norm) or p_norm <= 0:
            raise ValueError(f"pos_emb_p_norm must be a finite number > 0, got {pos_emb_p_norm!r}")
        self.n_chan_out, self.n_chan_key, self.n_chan_val, self.n_heads = n_chan_out, n_chan_key, n_chan_val, n_heads
        self.linear_scaling = linear_scaling
        self.W_key_std = check_std("W_key_std", W_key_std, allow_none=False)
        self.W_value_std = check_std("W_value_std", W_value_std, allow_none=False)
        self.W_query_std = check_std("W_query_std", W_query_std, allow_none=False)
        self.W_out_std = check_std("W_out_std", W_out_std, allow_none=False)
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.attention_mechanism, self.pos_emb_type = mech, pos
        self.pos_emb_p_norm, self.pos_emb_decay_fn = p_norm, pos_emb_decay_fn
        self.n_chan_pos_emb = n_chan_pos_emb
        self.W_pos_emb_std = check_std("W_pos_emb_std", W_pos_emb_std, allow_none=False)
        self.val_pos_emb = val_pos_emb

    def __repr__(self) -> str:
        parts = [f"{self.n_chan_out}", f"{self.n_chan_key}", f"{self.n_chan_val}", f"{self.n_heads}",
                 f"linear_scaling={self.linear_scaling!r}", f"W_key_std={std_repr(self.W_key_std)}",
                 f"W_value_std={std_repr(self.W_value_std)}", f"W_query_std={std_repr(self.W_query_std)}",
                 f"W_out_std={std_repr(self.W_out_std)}", f"b_std={std_repr(self.b_std)}",
                 f"attention_mechanism={self.attention_mechanism!r}", f"pos_emb_type={self.pos_emb_type!r}"]
        if self.pos_emb_type != "NONE":
            parts += [f"pos_emb_p_norm={self.pos_emb_p_norm!r}", f"n_chan_pos_emb={self.n_chan_pos_emb!r}",
                      f"W_pos_emb_std={std_repr(self.W_pos_emb_std)}", f"val_pos_emb={self.val_pos_emb!r}"]
            if self.pos_emb_decay_fn is not None:
                parts.append(f"pos_emb_decay_fn={getattr(self.pos_emb_decay_fn, '__name__', 'fn')}")
        return "GlobalSelfAttention(" + ", ".join(parts) + ")"

    # -- shapes ---------------------------------------------------------------------------------------
    def _channels(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(input channels C, embedding channels C_e) for a per-example shape (C, *S)."""
        if len(shape) < 2:
            raise ValueError(f"{self!r} expects sequences N x C x L or images N x C x H x W; got per-example shape "
                             f"{shape}")
        if any(n < 1 for n in shape[1:]):
            raise ValueError(f"{self!r}: empty input (per-example shape {shape})")
        c = shape[0]
        c_e = c if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        if self.pos_emb_type == "SUM" and c_e != c:
            raise ValueError(f"{self!r}: SUM positional embeddings need n_chan_pos_emb None or equal to the input "
                             f"channels ({c}), got {self.n_chan_pos_emb}")
        return c, c_e

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        if spec.shape is not None:
            self._channels(spec.shape)
        token = ctx.token()
        shape = None if spec.shape is None else (self.n_chan_out, *spec.shape[1:])
        return with_shape(spec, shape, gaussian=True, fresh=frozenset({token}), ancestry=spec.ancestry | {token},
                          own=frozenset({token}))

    def needs_full(self, full_out):
        return True

    # -- kernel ---------------------------------------------------------------------------------------
    def _weights(self, c: int, c_e: int) -> tuple[float, float]:
        pw = self.W_pos_emb_std**2
        if self.pos_emb_type == "CONCAT":
            return c / (c + c_e), pw * c_e / (c + c_e)
        return 1.0, pw

    def _position_terms(self, spatial, valid1, valid2, c, c_e, like: Tensor):
        """The positional-embedding covariances of the pairs (x1, x2), (x1, x1), (x2, x2), padded positions
        masked out as neural-tangents does, and ``mix(t, r)``, the logits' covariance from the inputs' ``t``
        and the embeddings' ``r`` (``t`` itself without embeddings)."""
        if self.pos_emb_type == "NONE":
            return None, None, None, lambda t, r: t
        r = position_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, like.dtype, like.device)
        kw, pw = self._weights(c, c_e)
        if valid1 is None:
            r12 = r11 = r22 = r
        else:
            r12 = r * (valid1[:, None, :, None] & valid2[None, :, None, :])
            r11 = r * (valid1[:, :, None] & valid1[:, None, :])
            r22 = r11 if valid2 is valid1 else r * (valid2[:, :, None] & valid2[:, None, :])
        return r12, r11, r22, lambda t, r: kw * t + pw * r

    def kernel_fn(self, k: Kernel) -> Kernel:
        if not k.full:
            raise ValueError(f"{self!r} needs the kernel of every pair of positions (full layout)")
        c, c_e = self._channels(k.shape)
        spatial = k.spatial
        p = math.prod(spatial)
        n1, n2 = k.nngp_shape()[:2]
        flat = lambda t, lead: None if t is None else t.reshape(*lead, p, p)  # noqa: E731
        nngp, ntk = flat(k.nngp, (n1, n2)), flat(k.ntk, (n1, n2))
        v1 = flat(k.var1, (len(k.var1),))
        v2 = v1 if k.var2 is k.var1 else flat(k.var2, (len(k.var2),))
        valid1 = None if k.mask1 is None else ~k.mask1.reshape(n1, p)
        valid2 = None if k.mask2 is None else ~k.mask2.reshape(n2, p)
        r12, r11, r22, mix = self._position_terms(spatial, valid1, valid2, c, c_e, nngp)
        qk, ov = self.W_query_std * self.W_key_std, self.W_out_std * self.W_value_std
        ov2, b2 = ov**2, (0.0 if self.b_std is None else self.b_std**2)
        vals = mix if self.val_pos_emb else (lambda t, r: t)
        if self.linear_scaling:
            def weights(v, r, valid):
                logits = qk * mix(v, r)
                if valid is not None:  # padded keys get no weight
                    fill = float("-inf") if self.attention_mechanism == "SOFTMAX" else 0.0
                    logits = logits.masked_fill(~valid[:, None, :], fill)
                return _mechanism(self.attention_mechanism, logits)

            g1 = weights(v1, r11, valid1)
            g2 = g1 if v2 is v1 else weights(v2, r22, valid2)

            def weigh(t, a, b, pair=True):
                eq = "aik,abkl,bjl->abij" if pair else "aik,akl,ajl->aij"
                return ov2 * torch.einsum(eq, a, t, b) + b2

            new_nngp = weigh(vals(nngp, r12), g1, g2)
            new_v1 = weigh(vals(v1, r11), g1, g1, pair=False)
            new_v2 = new_v1 if v2 is v1 else weigh(vals(v2, r22), g2, g2, pair=False)
            new_ntk = None
            if ntk is not None:
                new_ntk = weigh(vals(ntk, r12), g1, g2) + 2 * (new_nngp - b2)
        else:  # IDENTITY with 1/sqrt(n_key) scaling (Hron et al. 2020, eq. 11)
            std2 = (qk * ov) ** 2
            c12 = mix(nngp, r12)
            dot12 = (c12 * vals(nngp, r12)).sum((-2, -1), keepdim=True)
            new_nngp = std2 * dot12 * c12 + b2

            def self_term(v, r):
                cv = mix(v, r)
                return std2 * (cv * vals(v, r)).sum((-2, -1), keepdim=True) * cv + b2

            new_v1 = self_term(v1, r11)
            new_v2 = new_v1 if v2 is v1 else self_term(v2, r22)
            new_ntk = None
            if ntk is not None:
                t12 = mix(ntk, r12)
                if self.val_pos_emb or self.pos_emb_type == "NONE":
                    nd = 2 * (c12 * t12).sum((-2, -1), keepdim=True)
                else:
                    nd = (c12 * ntk).sum((-2, -1), keepdim=True) + (nngp * t12).sum((-2, -1), keepdim=True)
                new_ntk = std2 * (nd * c12 + dot12 * (t12 + 4 * c12)) + b2
        unflat = lambda t, lead: None if t is None else t.reshape(*lead, *spatial, *spatial)  # noqa: E731
        var1 = unflat(new_v1, (len(new_v1),))
        out = k.replace(nngp=unflat(new_nngp, (n1, n2)), ntk=unflat(new_ntk, (n1, n2)), var1=var1,
                        var2=var1 if new_v2 is new_v1 else unflat(new_v2, (len(new_v2),)),
                        shape=(self.n_chan_out, *spatial))
        return out if k.mask1 is None else remask(out)

    # -- finite module --------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        if spec.shape is None:
            raise ValueError(f"{self!r}: build it with the input shape (its weights depend on channels and "
                             "positions), e.g. net.build((C, L))")
        return AttentionModule(self, spec.shape, ctx.seed())


class AttentionModule(nn.Module):
    """Finite :class:`GlobalSelfAttention`: parameters as neural-tangents (all N(0, 1)): ``key``, ``query``
    (absent with linear scaling: tied to ``key``), ``value`` (heads, C_in, n), ``out`` (n_val heads,
    n_chan_out), ``bias`` (n_chan_out) and ``pos_emb`` (C_e, *S)."""

    def __init__(self, layer: GlobalSelfAttention, shape: tuple[int, ...], seed: int):
        super().__init__()
        self.layer, self.shape = layer, tuple(shape)
        c, c_e = layer._channels(self.shape)
        c_keys = c + (c_e if layer.pos_emb_type == "CONCAT" else 0)
        c_vals = c + (c_e if layer.pos_emb_type == "CONCAT" and layer.val_pos_emb else 0)
        gen = torch.Generator().manual_seed(seed)

        def draw(*size):
            return nn.Parameter(torch.randn(size, generator=gen, dtype=torch.float64).float())

        h = layer.n_heads
        self.key = draw(h, c_keys, layer.n_chan_key)
        self.query = None if layer.linear_scaling else draw(h, c_keys, layer.n_chan_key)
        self.value = draw(h, c_vals, layer.n_chan_val)
        self.out = draw(layer.n_chan_val * h, layer.n_chan_out)
        self.bias = None if layer.b_std is None else draw(layer.n_chan_out)
        self.pos_emb = None if layer.pos_emb_type == "NONE" else draw(c_e, *self.shape[1:])
        if layer.pos_emb_type != "NONE" and layer.pos_emb_decay_fn is not None:
            r = position_covariance(self.shape[1:], layer.pos_emb_p_norm, layer.pos_emb_decay_fn, torch.float64, "cpu")
            self.register_buffer("pos_emb_cholesky", torch.linalg.cholesky(r).float())
        else:
            self.pos_emb_cholesky = None

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"AttentionModule built for inputs (N, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        n, p = len(x), math.prod(self.shape[1:])
        inputs = x.reshape(n, self.shape[0], p).transpose(1, 2)  # (N, P, C)
        inputs_val = inputs
        if self.pos_emb is not None:
            emb = self.pos_emb.reshape(len(self.pos_emb), p).T  # (P, C_e)
            if self.pos_emb_cholesky is not None:
                emb = self.pos_emb_cholesky.to(emb) @ emb
            emb = (emb * layer.W_pos_emb_std).expand(n, p, emb.shape[1])
            if layer.pos_emb_type == "SUM":
                inputs = inputs + emb
            else:
                inputs = torch.cat([inputs, emb], dim=2)
            if layer.val_pos_emb:
                inputs_val = inputs
        keys = torch.einsum("npc,hck->hnpk", inputs, self.key)
        queries = keys if self.query is None else torch.einsum("npc,hck->hnpk", inputs, self.query)
        values = torch.einsum("npc,hcv->hnpv", inputs_val, self.value)
        scale = layer.W_query_std * layer.W_key_std / (inputs.shape[-1] * layer.n_chan_key ** (1.0 if layer.linear_scaling else 0.5))
        g = _mechanism(layer.attention_mechanism, (queries @ keys.transpose(-1, -2)) * scale)
        heads = (g @ values).permute(1, 2, 3, 0).reshape(n, p, -1)  # (N, P, n_val x heads), value-major as NT
        out = heads @ self.out * (layer.W_out_std * layer.W_value_std / math.sqrt(heads.shape[-1] * inputs_val.shape[-1]))
        if self.bias is not None:
            out = out + layer.b_std * self.bias
        return out.transpose(1, 2).reshape(n, layer.n_chan_out, *self.shape[1:])

    def extra_repr(self) -> str:
        return repr(self.layer)
