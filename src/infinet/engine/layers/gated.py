"""Gated recurrent layers (GRU, LSTM) over sequences N x C x L: finite modules and sampled NNGP and NTK kernels.

Finite networks (h_0 = c_0 = 0, weights shared over time, 'ntk' parameterization: every weight and
bias N(0, 1), scaled at use by w_std / sqrt(width) on the hidden state, u_std / sqrt(C) on the input
and b_std on biases; 'standard' (torch's): drawn N(0, w_std^2 / width), N(0, u_std^2 / C), N(0, b_std^2)
and used as they are. A gate has one bias (two with ``gate_bias_terms=2``, torch's b_ih + b_hh), except
GRU's candidate, which has one inside and one outside the reset product as in PyTorch):

    GRU   r = sig(a_r), z = sig(a_z), n = tanh(p + r c), h_t = (1 - z) n + z h_(t-1),
          a_r, a_z = W_i x_t + W_h h_(t-1) + b, p = W_in x_t + b_in, c = W_hn h_(t-1) + b_hn;
    LSTM  i, f, o = sig(a_i), sig(a_f), sig(a_o), g = tanh(a_g), c_t = f c_(t-1) + i g, h_t = o tanh(c_t),
          every a = W_i x_t + W_h h_(t-1) + b.

NNGP (Yang 2019, "Tensor Programs I", Sec. 3 and the GRU/LSTM examples of its appendix): at infinite
width every pre-activation above is, per unit, a Gaussian process over (example, time), the
different weight matrices giving independent processes, with covariances

    a:  u_std^2 K(t, s) + w_std^2 H(t-1, s-1) + b_std^2,   p: u_std^2 K(t, s) + b_std^2,
    c:  w_std^2 H(t-1, s-1) + b_std^2,

K the input's kernel and H(t, s) = E[h_t h'_s] the kernel of the hidden states, which is what the
layer outputs. Each unit's state is a nonlinear function of its own gate values at every earlier
step, so H has no closed form. Two estimators (``estimator``):

'batch' (default; :mod:`infinet.engine.layers.gated_batch`, where the NTK's derivation is): one finite layer of
``samples`` units fed Gaussian inputs of the exact input kernel, jointly over the whole batch, its NNGP the Gram
matrix of the states and its NTK that of random tangents through the gates (Yang 2020, "Tensor Programs II"),
replicates for standard errors. Its errors are shared across the batch, as a finite network's are, and it costs
O(N L n^2) (plus O((N L)^2 n) when the layer returns sequences). On 500 MNIST-1D sequences of length 20
(``benchmarks/sampled_kernel.py --cases mnist1d``) NNGP and NTK take 76-80 s here, with standard errors 5-9x
(NNGP) and 13-14x (NTK) smaller than Monte Carlo of width-256 networks computing both in the same time, and GP
predictions as accurate; for the NNGP alone, whose Monte Carlo is forward passes only, Monte Carlo of width-256
networks is as good (0.6-0.7x at the defaults). The kernel of x1 against x2 is the block of one computation of
both.

'pairs': whole trajectories of one example (its self-covariances) and of each pair of examples (the cross
terms) sampled with scrambled Sobol points, the covariance of step t built from the estimates of steps < t (an
incremental Cholesky factor with exact zero pivots, so identical inputs are handled), NNGP only. Each unordered
pair is sampled once, its two members in an order fixed by their own input kernels, so K(x, x') is exactly
K(x', x)^T in every call and tile. The defaults (2048 points, 4 replicates) favour many points per replicate:
over these 8-40 dimensional trajectories the scrambled Sobol rule's error fell about as n^-1 up to n = 2048
(against n^-0.5 for plain Monte Carlo) and more slowly beyond. Cost O(N^2 L^2 n): at equal time its standard
error is about 10x smaller than that of width-1024 networks for N = 6 sequences of length 8, and the advantage
falls as 1/N, to none near N = 50; its independent errors per entry also swamp the small eigen-directions that
kernel regression uses. It suits a few dozen short sequences and tiled stores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import sampling
from ..kernel import Kernel
from . import gated_batch
from .base import Context, Layer, Spec, with_shape
from .dense import check_parameterization, check_std, std_repr
from .recurrent import sequence_shape
from ...core.checks import check_int

# pre-activation kinds: "gate" (input, hidden state and bias), "input" (input and bias), "hidden"
# (hidden state and bias); per layer, the kinds of its pre-activations in the order the step reads them
_KINDS = {"GRU": ("gate", "gate", "input", "hidden"), "LSTM": ("gate", "gate", "gate", "gate")}


class _Gated(Layer):
    masking = "refuse"

    sampled = True  # replicates for standard errors (infinet.sampling.plan)

    def __init__(self, width: int = 512, w_std: float = 1.0, u_std: float = 1.0, b_std: float | None = None,
                 return_sequence: bool = False, samples: int = 2048, replicates: int = 4, seed: int = 0,
                 gate_bias_terms: int = 1, estimator: str = "batch", parameterization: str = "ntk"):
        name = type(self).__name__
        self.parameterization = check_parameterization(parameterization)
        if estimator not in ("batch", "pairs"):
            raise ValueError(f"{name} estimator must be 'batch' (one finite layer on Gaussian inputs, NNGP and NTK) "
                             f"or 'pairs' (joint trajectories per pair of sequences, NNGP only), got {estimator!r}")
        self.estimator = estimator
        self.has_ntk = estimator == "batch"  # see infinet.engine.apply.has_ntk
        self.shared_batch = estimator == "batch"  # the whole batch in one symmetric tile (engine.tiling)
        check_int(width, f"{name} width")
        if gate_bias_terms not in (1, 2) or isinstance(gate_bias_terms, bool):
            raise ValueError(f"{name} gate_bias_terms must be 1 or 2 (PyTorch's b_ih + b_hh), got {gate_bias_terms!r}")
        self.gate_bias_terms = gate_bias_terms
        if not isinstance(return_sequence, bool):
            raise TypeError(f"{name} return_sequence must be True or False, got {return_sequence!r}")
        sampling.check_options(name, samples, replicates, seed)
        self.width, self.return_sequence = width, return_sequence
        self.w_std = check_std("w_std", w_std, allow_none=False)
        self.u_std = check_std("u_std", u_std, allow_none=False)
        self.b_std = check_std("b_std", b_std, allow_none=True)
        self.samples, self.replicates, self.seed = samples, replicates, seed

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.width}, w_std={std_repr(self.w_std)}, u_std={std_repr(self.u_std)}, "
                f"b_std={std_repr(self.b_std)}, return_sequence={self.return_sequence!r}, samples={self.samples}, "
                f"replicates={self.replicates}, seed={self.seed}"
                + ("" if self.gate_bias_terms == 1 else f", gate_bias_terms={self.gate_bias_terms}")
                + ("" if self.estimator == "batch" else f", estimator={self.estimator!r}")
                + ("" if self.parameterization == "ntk" else f", parameterization={self.parameterization!r}") + ")")

    def infer(self, spec: Spec, ctx: Context) -> Spec:
        self._single(spec)
        shape = sequence_shape(self, spec.shape)
        out = None if shape is None else ((self.width, shape[1]) if self.return_sequence else (self.width,))
        return with_shape(spec, out, gaussian=False, fresh=None)

    def needs_full(self, full_out):
        return True  # every time pair of the input enters the gates

    # -- kernel ----------------------------------------------------------------------------------------
    def kernel_fn(self, k: Kernel) -> Kernel:
        name = type(self).__name__
        if k.ntk is not None and self.estimator == "pairs":
            raise ValueError(f"{name}: estimator='pairs' computes the NNGP only; the NTK needs estimator='batch' "
                             "(the default), or compute get='nngp'")
        if not k.full:
            raise ValueError(f"{self!r} needs the kernel of every time pair (internal layout error)")
        shape = sequence_shape(self, k.shape)
        length = shape[1]
        state = k.sampling if k.sampling is not None else sampling.SamplingState(self.seed, 0)
        seed = state.next_seed()
        if self.estimator == "batch":
            return self._shared(k, seed, length)
        n1, n2 = k.nngp.shape[:2]
        dev, dtype = k.nngp.device, k.nngp.dtype
        kinds = _KINDS[name]
        z = sampling.normal_points(self.samples, len(kinds) * 2 * length, seed, dtype, dev)
        z = z.reshape(self.samples, len(kinds), 2 * length)  # per pre-activation, coordinates (time, member)

        def own(var):  # each example with itself: one member per trajectory
            return torch.cat([self._hidden_kernel(var[part, None, None], z[:, :, :length], 1)[:, :, 0, :, 0]
                              for part in sampling.chunks(len(var), self.samples * length)])

        var1 = own(k.var1)
        var2 = var1 if k.var2 is k.var1 else own(k.var2)
        nngp = self._cross_kernel(k, var1, z)
        out = k.replace(nngp=nngp, ntk=None, var1=var1, var2=var2, shape=(self.width, length))
        if self.return_sequence:
            return out
        return out.replace(nngp=nngp[..., -1, -1], var1=var1[:, -1, -1], var2=var2[:, -1, -1], shape=(self.width,),
                           full=False)

    def _shared(self, k: Kernel, seed: int, length: int) -> Kernel:
        """The batch-shared estimate (:mod:`infinet.engine.layers.gated_batch`) of a symmetric tile of the
        whole batch."""
        if not k.symmetric:
            raise ValueError(f"{self!r}: the batch estimator needs the whole batch in one symmetric computation "
                             "(net.kernel(x), or x1 and x2 together); tiles of x1 against x2 are not supported")
        nngp, ntk = gated_batch.shared_kernel(self, k, _KINDS[type(self).__name__], seed)
        idx = torch.arange(len(nngp), device=nngp.device)
        var = nngp[idx, idx]
        if self.return_sequence:
            return k.replace(nngp=nngp, ntk=ntk, var1=var, var2=var, shape=(self.width, length))
        return k.replace(nngp=nngp, ntk=ntk, var1=var, var2=var, shape=(self.width,), full=False)

    def _cross_kernel(self, k: Kernel, own1: Tensor, z: Tensor) -> Tensor:
        """H(x, x') (n1, n2, L, L) for every pair of the tile, by joint trajectories of the two members.

        Each unordered pair is sampled once, its members in a canonical order that depends only on their
        own input kernels (:func:`_order_key`), so that the estimate for (x', x) is exactly the transpose
        of the one for (x, x') whichever tile or call holds the pair; pairs whose keys tie are sampled in
        both orders and averaged. A symmetric tile samples only the pairs above its diagonal; pairs of
        identical members (equal input kernels) take the member's own estimate ``own1``."""
        n1, n2, length = k.nngp.shape[0], k.nngp.shape[1], k.nngp.shape[-1]
        var2 = k.var2
        key1 = _order_key(k.var1)
        key2 = key1 if var2 is k.var1 else _order_key(var2)
        if k.symmetric:
            a, b = torch.triu_indices(n1, n2, 1, device=k.nngp.device)
        else:
            a, b = (idx.reshape(-1) for idx in torch.meshgrid(torch.arange(n1, device=k.nngp.device),
                                                              torch.arange(n2, device=k.nngp.device), indexing="ij"))
        cross_in = k.nngp[a, b]
        same = (k.var1[a] == var2[b]).flatten(1).all(1) & (cross_in == k.var1[a]).flatten(1).all(1)
        nngp = k.nngp.new_empty(n1, n2, length, length)
        nngp[a[same], b[same]] = own1[a[same]]
        upper = (a, b)
        a, b, cross_in = a[~same], b[~same], cross_in[~same]
        if len(a):
            first, second = key1[a], key2[b]
            tie = (first - second).abs() <= 1e-9 * torch.maximum(first.abs(), second.abs())
            swap = (first > second) & ~tie
            joint = torch.stack([torch.stack([k.var1[a], cross_in], 1),
                                 torch.stack([cross_in.transpose(-1, -2), var2[b]], 1)],
                                1)  # (pairs, 2, 2, L, L): [[K(x, x), K(x, x')], [K(x', x), K(x', x')]]
            ordered = torch.where(swap[:, None, None, None, None], joint.flip(1, 2), joint)
            batch = torch.cat([ordered, joint[tie].flip(1, 2)])
            # in chunks, whose trajectories (pairs x points x 2L states) stay in cache-sized memory
            out = torch.cat([self._hidden_kernel(batch[part], z, 2)
                             for part in sampling.chunks(len(batch), self.samples * 2 * length)])
            # x is member 1 where the pair was swapped, and then H(x, x')[t, s] is out[t, 1, s, 0]
            values = torch.where(swap[:, None, None], out[: len(a), :, 1, :, 0], out[: len(a), :, 0, :, 1])
            values[tie] = 0.5 * (values[tie] + out[len(a):, :, 1, :, 0])
            nngp[a, b] = values
        if k.symmetric:
            nngp[upper[1], upper[0]] = nngp[upper].transpose(-1, -2)
            diagonal = torch.arange(n1, device=nngp.device)
            nngp[diagonal, diagonal] = own1
        return nngp

    def _hidden_kernel(self, inputs: Tensor, z: Tensor, m: int) -> Tensor:
        """H (B, L, m, L, m) of the hidden states of m examples per batch entry, from their joint input
        kernel ``inputs`` (B, m, m, L, L) and standard normal points z (n, kinds, >= m L), by trajectories
        sampled step by step: the Cholesky row of each new (time, member) coordinate of every pre-activation
        covariance is solved from the steps before (zero pivots stay exact zeros), all covariance forms in
        one batched solve."""
        b, length = inputs.shape[0], inputs.shape[-1]
        dim = m * length
        kinds = _KINDS[type(self).__name__]
        forms = sorted(set(kinds))
        which = torch.tensor([forms.index(kind) for kind in kinds], device=inputs.device)
        b2 = 0.0 if self.b_std is None else self.b_std**2
        u2, w2 = self.u_std**2, self.w_std**2
        kin = inputs.permute(0, 3, 1, 4, 2).reshape(b, dim, dim)  # coordinates ordered (time, member)
        hidden = inputs.new_zeros(b, dim, dim)  # H(t-1, s-1) in the same coordinates, filled as we go
        chol = inputs.new_zeros(len(forms), b, dim, dim)
        pivot = inputs.new_zeros(len(forms), b, dim, dtype=torch.bool)
        n = self.samples
        values = inputs.new_empty(len(kinds), b, m, n)
        h = inputs.new_zeros(b, m, n)
        cell = inputs.new_zeros(b, m, n)
        states = inputs.new_empty(b, length, m, n)  # time-major, so that steps <= t are one block
        out = inputs.new_zeros(b, length, m, length, m)
        zk = z[:, :, :dim].permute(1, 2, 0)  # (kinds, dim, n)
        for t in range(length):
            if t > 0:  # the hidden-state kernel of step t-1 enters step t: H(t-1, s-1) at (t, s)
                prev = out[:, t - 1, :, :t, :].reshape(b, m, t * m)  # H(t-1, s) for s < t
                hidden[:, t * m:(t + 1) * m, m:(t + 1) * m] = prev
                hidden[:, m:(t + 1) * m, t * m:(t + 1) * m] = prev.transpose(1, 2)
            for e in range(m):
                j = t * m + e
                covs = torch.stack([self._covariance(form, kin[:, j, :j + 1], hidden[:, j, :j + 1], u2, w2, b2)
                                    for form in forms])  # (forms, b, j + 1)
                _cholesky_row(chol, pivot, covs, j)
                rows = chol[which, :, j, :j + 1]  # (kinds, b, j + 1)
                torch.bmm(rows, zk[:, :j + 1], out=values[:, :, e])  # (kinds, b, n)
            h, cell = self._step(values, h, cell)
            states[:, t] = h
            # H(t, s) for s <= t
            current = torch.bmm(h, states[:, :t + 1].reshape(b, (t + 1) * m, n).transpose(1, 2)).reshape(b, m, t + 1, m) / n
            out[:, t, :, :t + 1, :] = current
            out[:, :t + 1, :, t, :] = current.permute(0, 2, 3, 1)
        return out

    def _covariance(self, kind, k_row, h_row, u2, w2, b2):
        if kind == "gate":  # PyTorch's gates add two biases, b_ih and b_hh (gate_bias_terms=2)
            return u2 * k_row + w2 * h_row + b2 * self.gate_bias_terms
        if kind == "input":
            return u2 * k_row + b2
        return w2 * h_row + b2  # "hidden"

    def _step(self, a, h, cell):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- finite module ---------------------------------------------------------------------------------
    def module(self, spec: Spec, ctx: Context) -> nn.Module:
        self.infer(spec, Context())
        shape = sequence_shape(self, spec.shape)
        if shape is None:
            raise ValueError(f"{self!r}: build the network with input_shape (C, L)")
        return GatedModule(self, shape[0], seed=ctx.seed())


def _order_key(var: Tensor) -> Tensor:
    """A scalar per example from its own input kernel (n, L, L): a fixed weighted sum, which orders the two
    members of a pair the same way in every tile and call (:meth:`_Gated._cross_kernel`)."""
    length = var.shape[-1]
    steps = torch.arange(length, dtype=var.dtype, device=var.device)
    weights = 1.0 + 0.5 * torch.sin(1.7 * steps[:, None] + 0.37 * steps[None, :] + 0.5)
    return (var * weights).sum((-1, -2))


def _cholesky_row(chol: Tensor, pivot: Tensor, cov: Tensor, j: int) -> None:
    """Fill row j of the lower-triangular factors ``chol`` (..., D, D) from the covariances ``cov``
    (..., j + 1) of coordinate j with coordinates 0..j, in place. Coordinates whose pivot was zero (a
    linear combination of earlier ones) get a unit diagonal in the solve and a zero column, so the row
    stays exact."""
    scale = cov[..., j].abs().clamp(min=1e-300)
    if j > 0:
        lower = chol[..., :j, :j].clone()
        diag = lower.diagonal(dim1=-2, dim2=-1)
        diag.copy_(torch.where(pivot[..., :j], diag, torch.ones_like(diag)))
        row = torch.linalg.solve_triangular(lower, cov[..., :j, None], upper=False).squeeze(-1)
        row = torch.where(pivot[..., :j], row, torch.zeros_like(row))
        chol[..., j, :j] = row
        rest = cov[..., j] - (row * row).sum(-1)
    else:
        rest = cov[..., 0]
    ok = rest > 1e-12 * scale
    chol[..., j, j] = torch.where(ok, rest.clamp(min=0.0).sqrt(), torch.zeros_like(rest))
    pivot[..., j] = ok


class GRU(_Gated):
    """Gated recurrent unit layer of ``width`` units (Cho et al. 2014; PyTorch's gate equations, see the
    module docstring); NNGP and NTK by sampling (``estimator``, see the module docstring).
    ``return_sequence=False`` (default) outputs the last hidden state."""

    def _step(self, a, h, cell):
        r, zg = torch.sigmoid(a[0]), torch.sigmoid(a[1])
        candidate = torch.tanh(a[2] + r * a[3])
        return (1 - zg) * candidate + zg * h, cell


class LSTM(_Gated):
    """Long short-term memory layer of ``width`` units (Hochreiter and Schmidhuber 1997; PyTorch's gate
    equations, see the module docstring); NNGP and NTK by sampling (``estimator``, see the module docstring)."""

    def _step(self, a, h, cell):
        i, f, g, o = torch.sigmoid(a[0]), torch.sigmoid(a[1]), torch.tanh(a[2]), torch.sigmoid(a[3])
        cell = f * cell + i * g
        return o * torch.tanh(cell), cell


class GatedModule(nn.Module):
    """Finite GRU or LSTM of :class:`GRU` / :class:`LSTM`: weights ``weight_ih`` (kinds, n, C), ``weight_hh``
    (kinds, n, n), biases ``bias`` (kinds, n) and, with ``gate_bias_terms=2``, the gates' second bias ``bias_hh``
    (gates, n), torch's b_hh. 'ntk' parameterization: all N(0, 1), scaled at use by u_std / sqrt(C), w_std / sqrt(n)
    and b_std; 'standard': drawn N(0, u_std^2 / C), N(0, w_std^2 / n), N(0, b_std^2) and used as they are (see the
    module docstring); ``forward`` takes sequences (N, C, L)."""

    def __init__(self, layer: _Gated, in_channels: int, seed: int):
        super().__init__()
        self.layer, self.in_channels = layer, in_channels
        kinds = _KINDS[type(layer).__name__]
        n, g = layer.width, len(kinds)
        gen = torch.Generator().manual_seed(seed)
        standard = layer.parameterization == "standard"
        b_std = 0.0 if layer.b_std is None else float(layer.b_std)

        def normal(scale, *shape):
            drawn = torch.randn(*shape, generator=gen, dtype=torch.float64) * (scale if standard else 1.0)
            return nn.Parameter(drawn.to(torch.get_default_dtype()))

        # rows of kinds without an input term are unused
        self.weight_ih = normal(float(layer.u_std) / math.sqrt(in_channels), g, n, in_channels)
        self.weight_hh = normal(float(layer.w_std) / math.sqrt(n), g, n, n)
        self.bias = None if layer.b_std is None else normal(b_std, g, n)
        self.gates = [i for i, kind in enumerate(kinds) if kind == "gate"]
        two = layer.b_std is not None and layer.gate_bias_terms == 2
        self.bias_hh = normal(b_std, len(self.gates), n) if two else None

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(layer).__name__} expects sequences (N, {self.in_channels}, L), got {tuple(x.shape)}")
        kinds = _KINDS[type(layer).__name__]
        n, length = layer.width, x.shape[2]
        w_ih, w_hh, bias = self.weight_ih, self.weight_hh, self.bias
        if bias is not None and self.bias_hh is not None:  # the gates add b_ih + b_hh
            bias = bias.index_add(0, torch.tensor(self.gates, device=bias.device), self.bias_hh)
        if layer.parameterization == "ntk":
            w_ih = w_ih * (layer.u_std / math.sqrt(self.in_channels))
            w_hh = w_hh * (layer.w_std / math.sqrt(n))
            bias = None if bias is None else bias * layer.b_std
        h = x.new_zeros(len(x), n)
        cell = x.new_zeros(len(x), n)
        states = []
        for t in range(length):
            pre = []
            for g, kind in enumerate(kinds):
                a = x.new_zeros(len(x), n)
                if kind in ("gate", "input"):
                    a = a + x[:, :, t] @ w_ih[g].T
                if kind in ("gate", "hidden"):
                    a = a + h @ w_hh[g].T
                if bias is not None:
                    a = a + bias[g]
                pre.append(a)
            h, cell = layer._step(torch.stack(pre), h, cell)
            states.append(h)
        return torch.stack(states, 2) if layer.return_sequence else h

    def extra_repr(self) -> str:
        return repr(self.layer)
