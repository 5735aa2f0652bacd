"""The batch-shared estimator of a gated recurrent layer's NNGP and NTK: one finite layer, fed Gaussian inputs.

At infinite width the inputs a GRU or LSTM reads through its input weights, a = u U x / sqrt(C), are per unit a
Gaussian process over (example, time) with covariance u^2 K, K the input kernel, and their tangents along a random
direction of every earlier parameter and of U are an independent Gaussian process with covariance
u^2 (K + Theta_in) (Yang 2019, "Tensor Programs I"; Yang 2020, "Tensor Programs II", Sec. 4). This estimator draws
those inputs for ``samples`` units jointly over the whole batch (one low-rank root of the (N L) x (N L)
covariance, :func:`~infinet.engine.sampling.low_rank_root`) and runs one finite layer of that many units, with its
recurrent weights W (shared over time), on them. Its error is therefore shared across the batch, as a finite
network's is, instead of independent per pair of sequences.

NNGP: H(x, t; x', s) = (1/n) sum_i h_t,i(x) h_s,i(x').

NTK, by random tangents: for a direction xi ~ N(0, I) in parameter space, the forward-mode derivative
T = J xi of the hidden states satisfies E_xi[T_i(x) T_i(x')] = sum_p dh_i(x)/dp dh_i(x')/dp, so
Theta(x, t; x', s) = (1/n) sum_i T_t,i(x) T_s,i(x'), averaged over units as the NNGP is. T follows the forward
recursion through the gates (torch.func.jvp of the layer's step) with the pre-activation tangents

    (w / sqrt(n)) (xi_W h_(t-1) + W T_(t-1)) + b xi_b + [input tangent, covariance u^2 (K + Theta_in)],

which is the NTK of every parameter of the layer (W, U, biases) and of those before it ('ntk' parameterization;
'standard' replaces the own-parameter factors w, u, b by sqrt(width), sqrt(C), 1, :func:`tangent_scales`); weight
sharing over time is exact, because xi_W is one matrix for all steps. One pass costs O(N L n^2) (forward and
tangent) plus O((N L)^2 n) for the two Gram matrices (O(N^2 n) for a last-step readout), against O(N^2 L^2 n) for
the pair estimator; its bias is O(1/n), that of a finite network of width n, far below the standard error at the
defaults.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import sampling
from ..kernel import Kernel


def shared_kernel(layer, k: Kernel, kinds: tuple[str, ...], seed: int) -> tuple[Tensor, Tensor | None]:
    """(H, Theta) of the hidden states of ``layer`` (a GRU or LSTM) for the symmetric full kernel ``k`` of its input
    sequences, from one finite layer of ``layer.samples`` units (see the module docstring): each (N, N, L, L) when
    the layer returns sequences, else (N, N) of the last step; Theta is None when ``k.ntk`` is."""
    n_ex, length = k.nngp.shape[0], k.nngp.shape[-1]
    n, dev, dtype = layer.samples, k.nngp.device, k.nngp.dtype
    dim = n_ex * length
    need_ntk = k.ntk is not None
    gen = torch.Generator(device="cpu").manual_seed(seed % (2**63))

    def normal(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=dev, dtype=dtype)

    def flat(t):  # (N, N, L, L) -> (N L, N L), coordinates (example, time)
        return t.permute(0, 2, 1, 3).reshape(dim, dim)

    root_k = sampling.low_rank_root(flat(k.nngp))
    root_t = sampling.low_rank_root(flat(k.ntk)) if need_ntk else None
    slots = len(kinds)
    reads_input = [kind in ("gate", "input") for kind in kinds]
    reads_hidden = [kind in ("gate", "hidden") for kind in kinds]
    u, w = layer.u_std, layer.w_std / math.sqrt(n)
    b = 0.0 if layer.b_std is None else layer.b_std
    bias_terms = [layer.gate_bias_terms if kind == "gate" else 1.0 for kind in kinds]
    grad_w, grad_u, grad_b = tangent_scales(layer, k.shape[0], n)
    zero = torch.zeros(n_ex, length, n, dtype=dtype, device=dev)
    inputs, tangents_in, weights, tangent_w, bias, tangent_b = [], [], [], [], [], []
    for g in range(slots):
        inputs.append((root_k @ normal(root_k.shape[1], n)).reshape(n_ex, length, n) * u if reads_input[g] else zero)
        if need_ntk and reads_input[g]:  # the input weights' own term, then the tangents of the earlier layers
            drawn = root_k @ normal(root_k.shape[1], n) * grad_u + root_t @ normal(root_t.shape[1], n) * u
            tangents_in.append(drawn.reshape(n_ex, length, n))
        else:
            tangents_in.append(zero)
        weights.append(normal(n, n) if reads_hidden[g] else None)
        tangent_w.append(normal(n, n) * grad_w if reads_hidden[g] and need_ntk else None)
        bias.append(normal(n) * (b * math.sqrt(bias_terms[g])))
        tangent_b.append(normal(n) * (grad_b * math.sqrt(bias_terms[g])))
    h = torch.zeros(n_ex, n, dtype=dtype, device=dev)
    cell, dh, dcell = h, h, h
    keep = length if layer.return_sequence else 1
    states = torch.empty(n_ex, keep, n, dtype=dtype, device=dev)
    tangents = torch.empty_like(states) if need_ntk else None
    for t in range(length):
        pre, dpre = [], []
        for g in range(slots):
            a = inputs[g][:, t] + bias[g]
            if reads_hidden[g]:
                a = a + w * (h @ weights[g].T)
            pre.append(a)
            if need_ntk:  # the tangents only when the NTK is asked for
                da = tangents_in[g][:, t] + tangent_b[g]
                if reads_hidden[g]:
                    da = da + h @ tangent_w[g].T + w * (dh @ weights[g].T)
                dpre.append(da)
        if need_ntk:
            (h, cell), (dh, dcell) = torch.func.jvp(layer._step, (torch.stack(pre), h, cell),
                                                    (torch.stack(dpre), dh, dcell))
        else:
            h, cell = layer._step(torch.stack(pre), h, cell)
        if t >= length - keep:
            states[:, t - length + keep] = h
            if need_ntk:
                tangents[:, t - length + keep] = dh

    def gram(values):  # (N, keep, n) -> (N, N, L, L), or (N, N) for the last step alone
        flat_values = values.reshape(n_ex * keep, n)
        out = flat_values @ flat_values.T / n
        if keep == 1:
            return out
        return out.reshape(n_ex, length, n_ex, length).permute(0, 2, 1, 3)

    return gram(states), (gram(tangents) if need_ntk else None)


def tangent_scales(layer, in_channels: int, n: int) -> tuple[float, float, float]:
    """The standard deviations of the random tangents of one simulated unit's pre-activation along its own
    parameters, per unit of the recurrent state (W, scaled for ``n`` simulated units), of the input kernel (U)
    and of each bias term. 'ntk': w_std / sqrt(n), u_std, b_std (the gradients of N(0, 1) parameters scaled at use);
    'standard' (Sohl-Dickstein et al. 2020, eq. 7, each weight's gradient term is its fan-in times the kernel of
    what it multiplies): sqrt(width / n), sqrt(C), 1, so that the sums over the real layer's ``width`` units and
    ``C`` input channels come out (the NTK then depends on those widths, as for :class:`~infinet.Dense`)."""
    if layer.parameterization == "ntk":
        return layer.w_std / math.sqrt(n), layer.u_std, (0.0 if layer.b_std is None else layer.b_std)
    return math.sqrt(layer.width / n), math.sqrt(in_channels), (0.0 if layer.b_std is None else 1.0)
