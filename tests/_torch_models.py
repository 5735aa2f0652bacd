"""Monte Carlo of finite torch models, for the from_torch tests: Gaussian redraws of PyTorch's initialization,
empirical NNGP (readout integrated) and per-example NTK."""

from __future__ import annotations

import torch
from torch import nn

import infinet as inf


def gaussian_init(model):
    """Redraw every parameter i.i.d. Gaussian with the variance of PyTorch's default (uniform) initialization,
    1 / (3 fan_in): the initialization from_torch assumes (uniform weights of a layer with a small fan-in, such as
    the first layer on 5 input features, are not Gaussian and give another limit)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):  # xavier-uniform (3E, E) in_proj: Var 2 / (4 E); biases zero
                m.in_proj_weight.normal_(0, (2 * m.embed_dim) ** -0.5)
            if isinstance(m, (nn.RNN, nn.GRU, nn.LSTM)):
                for p in m.parameters():
                    p.normal_(0, (3 * m.hidden_size) ** -0.5)
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (3 * fan_in) ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0, (3 * fan_in) ** -0.5)
            elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                fan_in = m.weight.shape[1] * m.weight[0, 0].numel()  # torch's: out_channels x filter size
                m.weight.normal_(0, (3 * fan_in) ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0, (3 * fan_in) ** -0.5)
        for m in model.modules():  # torch zeroes the output map's bias of attention after its Linear init
            if isinstance(m, nn.MultiheadAttention) and m.out_proj.bias is not None:
                m.out_proj.bias.zero_()
    return model


def per_example_ntk(model, x):
    """Theta(x_i, x_j) = grad f(x_i) . grad f(x_j) for a one-output model, one example at a time; for a model
    with train-mode batch statistics (BatchNorm), the gradients of each output of the whole batch's forward."""
    params = [p for p in model.parameters() if p.requires_grad]
    batch = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    rows = []
    for i in range(len(x)):
        out = model(x.clone())[i] if batch else model(x[i: i + 1].clone())
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return jac @ jac.T


def torch_monte_carlo(make, x, n_samples=32, seed=1000, ntk=True):
    """Empirical NNGP (readout weights integrated with the init variance 1/(3 fan_in)) and NTK of ``n_samples``
    freshly initialized models ``make()`` (Gaussian weights, see :func:`gaussian_init`), whose readout is ``fc``;
    ``ntk=False``: the NNGP alone (its NTK fields None)."""
    nngps, ntks = [], []
    for s in range(n_samples):
        torch.manual_seed(seed + s)
        model = gaussian_init(make().double())
        features = {}
        model.fc.register_forward_hook(lambda m, args, out: features.__setitem__("h", args[0]))
        with torch.no_grad():
            model(x.clone())  # a model may change its input in place
        h = features["h"].reshape(len(x), -1)
        fan_in = h.shape[1]
        nngps.append((h @ h.T + (0.0 if model.fc.bias is None else 1.0)) / (3.0 * fan_in))
        if ntk:
            ntks.append(per_example_ntk(model, x))
    stack = lambda ts: (torch.stack(ts).mean(0), torch.stack(ts).std(0) / len(ts) ** 0.5)  # noqa: E731
    (nngp, nngp_se), (theta, theta_se) = stack(nngps), (stack(ntks) if ntk else (None, None))
    return inf.MonteCarloKernel(nngp, theta, nngp_se, theta_se, n_samples)
