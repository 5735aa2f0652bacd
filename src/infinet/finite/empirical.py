"""Empirical (finite-width) kernels of any ``torch.nn.Module``.

NTK: Theta(x1, x2)[a, b, o, p] = sum_theta d f_o(x1_a) / d theta  d f_p(x2_b) / d theta (Jacot et al.
2018, eq. 2), for all parameters theta that require grad. Three ways to compute it (Novak et al. 2022,
"Fast finite width neural tangent kernel", sec. 3 and 4):

* ``'jacobian'`` (Jacobian contraction): per-example Jacobians by ``vmap(jacrev)``, contracted over
  parameters; cost N O (backward) + N1 N2 O^2 P, memory N O P.
* ``'ntvp'`` (NTK-vector products): for each column example and output, a vector-Jacobian product gives
  a parameter-space vector whose Jacobian-vector product over x1 is one column of Theta; cost N2 O
  (backward + N1 forward), memory O(P) per product.
* ``'structured'``: for affine layers (``nn.Linear`` and infinet's Dense modules) the weight gradient of
  output o is the outer product of the layer's output cotangent delta_o and its input x, so their block
  of Theta is (delta1 . delta2)(x1 . x2) (and delta1 . delta2 for the bias), summed over positions
  when the layer acts on sequences; other parameters by Jacobian contraction. Cost N1 N2 O^2 (fan-in +
  fan-out) per layer instead of N1 N2 O^2 fan-in x fan-out. It assumes an affine module's weight
  enters the output only through that module's forward calls (every call is counted, so shared
  blocks are fine); a weight also used elsewhere (tied embeddings) needs ``'jacobian'``.

``'auto'`` estimates each one's cost from the model's parameter count and forward FLOPs (counted with
``torch.utils.flop_counter``) and picks the cheapest. Results are (N1, N2, O, O), or (N1, N2) with
``trace=True``: the mean over the O diagonal output pairs, which is what the infinite-width NTK of one
output unit approximates (neural-tangents' ``trace_axes=(-1,)`` convention).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from ..engine.layers.dense import DenseModule

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")
DEFAULT_MAX_MEMORY = 2 << 30  # bytes for Jacobians / product vectors held at once


class EmpiricalKernelError(ValueError):
    """A model or input that torch.func cannot differentiate per example; the message says the fix."""


# ----------------------------------------------------------------------------------------------- setup
def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise EmpiricalKernelError(
                f"{name or 'the model'} is a {type(module).__name__} in training mode: it couples the examples "
                "of a batch and updates its running statistics in place, so per-example derivatives are not "
                "defined; call model.eval() first (its running statistics are then used)")


def _inputs(model: nn.Module, x1, x2) -> tuple[Tensor, Tensor, bool]:
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x1.ndim < 1 or len(x1) == 0:
        raise ValueError(f"x1 must be a non-empty batch (N, ...), got shape {tuple(x1.shape)}")
    same = x2 is None or x2 is x1
    x2 = x1 if same else x2
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"x1 and x2 must have the same per-example shape; got {tuple(x1.shape[1:])} and "
                         f"{tuple(x2.shape[1:])}")
    for name, x in (("x1", x1), ("x2", x2)):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf")
    return x1, x2, same


def _parameters(model: nn.Module, params) -> tuple[dict, dict]:
    """(parameters to differentiate, everything else the forward pass needs)."""
    all_params = dict(model.named_parameters())
    if params is None:
        chosen = {k: v.detach() for k, v in all_params.items() if v.requires_grad}
    else:
        unknown = [k for k in params if k not in all_params]
        if unknown:
            raise ValueError(f"unknown parameter names {unknown}; the model has {list(all_params)[:8]}...")
        chosen = {k: all_params[k].detach() for k in params}
    if not chosen:
        raise ValueError("the model has no parameters that require grad; nothing to differentiate")
    rest = {k: v.detach() for k, v in all_params.items() if k not in chosen}
    rest.update(dict(model.named_buffers()))
    return chosen, rest


def _functional(model: nn.Module, rest: dict) -> Callable[[dict, Tensor], Tensor]:
    def f(params: dict, x: Tensor) -> Tensor:
        out = functional_call(model, (params, rest), (x,))
        if not isinstance(out, Tensor):
            raise EmpiricalKernelError(f"the model returns {type(out).__name__}; it must return one tensor")
        return out.reshape(len(x), -1)

    return f


def _friendly(err: RuntimeError) -> EmpiricalKernelError:
    text = str(err)
    if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return EmpiricalKernelError(f"ran out of memory computing the empirical NTK ({text.splitlines()[0]}); pass a "
                                    "smaller max_memory (the chunks follow it), or fewer examples at a time")
    if "forward AD" in text:
        return EmpiricalKernelError(f"an operation of the model has no forward-mode derivative ({text.splitlines()[0]}), "
                                    "which implementation='ntvp' needs; use 'jacobian' or 'structured'")
    hint = ("the model updates a buffer or tensor in place, or calls .item()/data-dependent control flow, "
            "inside forward (torch.func cannot transform that): put such modules in eval mode, replace "
            "in-place updates with out-of-place ones, or use implementation='jacobian' with "
            "functional modules")
    return EmpiricalKernelError(f"torch.func could not differentiate the model per example ({text.splitlines()[0]}); {hint}")


# ------------------------------------------------------------------------------------ implementations
def _jacobian(f, params: dict, x: Tensor) -> dict:
    """Per-example Jacobians {name: (n, O, numel)}."""
    def single(p, xi):
        return f(p, xi.unsqueeze(0))[0]

    jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)
    return {k: v.reshape(len(x), v.shape[1], -1) for k, v in jac.items()}


def _contract(j1: dict, j2: dict, trace: bool) -> Tensor:
    out = None
    for name, a in j1.items():
        b = j2[name]
        if trace:  # sum_o a[:, o] . b[:, o]: a batched product over outputs
            term = torch.bmm(a.transpose(0, 1), b.permute(1, 2, 0)).sum(0)
        else:
            n1, o = a.shape[:2]
            n2 = b.shape[0]
            term = (a.reshape(n1 * o, -1) @ b.reshape(n2 * o, -1).T).reshape(n1, o, n2, o).permute(0, 2, 1, 3)
        out = term if out is None else out + term
    return out / (j1[next(iter(j1))].shape[1] if trace else 1)


def _rows(n_total: int, bytes_per_row: int, budget: int) -> int:
    return max(1, min(n_total, budget // max(1, bytes_per_row)))


def _ntk_jacobian(f, params, x1, x2, same, trace, budget) -> Tensor:
    n_out = f(params, x1[:1]).shape[1]
    per_row = n_out * sum(p.numel() for p in params.values()) * x1.element_size()
    if per_row * (len(x1) + (0 if same else len(x2))) <= budget:  # every Jacobian at once
        j1 = _jacobian(f, params, x1)
        return _contract(j1, j1 if same else _jacobian(f, params, x2), trace)
    rows = _rows(len(x1), per_row, budget // 2)
    blocks = []
    for i in range(0, len(x1), rows):
        j1 = _jacobian(f, params, x1[i: i + rows])
        blocks.append(torch.cat([_contract(j1, _jacobian(f, params, x2[j: j + rows]), trace)
                                 for j in range(0, len(x2), rows)], dim=1))
    return torch.cat(blocks, dim=0)


def activation_bytes(model: nn.Module, f, params: dict, x: Tensor) -> int:
    """Bytes of the intermediate values of one example's forward pass: the outputs of every module (forward
    hooks), at least the input's size. What a forward- or reverse-mode product holds per example."""
    total = [x[:1].numel() * x.element_size()]

    def hook(module, args, out):
        if isinstance(out, Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            f(params, x[:1])
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _ntk_vector_products(model, f, params, x1, x2, trace, budget) -> Tensor:
    """Theta column by column: for each (x2 row, output) a vector-Jacobian product gives a parameter-space
    vector, and its Jacobian-vector product over a chunk of x1 gives those rows of the column. Memory: each
    of the rows x outputs lanes holds its vector (P values) and, per x1 example in the chunk, the forward
    values and their tangents; the chunks keep all of it under ``budget`` bytes."""
    n_out = f(params, x1[:1]).shape[1]
    eye = torch.eye(n_out, dtype=x1.dtype, device=x1.device)
    element = x1.element_size()
    vector_bytes = 3 * sum(p.numel() for p in params.values()) * element
    example_bytes = 3 * (activation_bytes(model, f, params, x1) + n_out * element)
    per_lane = max(1, budget // n_out - vector_bytes)
    chunk = max(1, min(len(x1), per_lane // max(1, example_bytes)))
    rows = _rows(len(x2), n_out * (vector_bytes + chunk * example_bytes), budget)

    def vector(x2_row: Tensor, cotangent: Tensor) -> dict:
        _, pullback = vjp(lambda p: f(p, x2_row.unsqueeze(0))[0], params)
        return pullback(cotangent)[0]

    def column(v: dict, x1_chunk: Tensor) -> Tensor:  # Theta[chunk, b, :, o] for one (b, o)
        return jvp(lambda p: f(p, x1_chunk), (params,), (v,))[1]  # (chunk, O)

    blocks = []
    for j in range(0, len(x2), rows):
        vectors = vmap(vmap(vector, in_dims=(None, 0)), in_dims=(0, None))(x2[j: j + rows], eye)  # (b, o2, ...)
        parts = [vmap(vmap(column, in_dims=(0, None)), in_dims=(0, None))(vectors, x1[i: i + chunk])
                 for i in range(0, len(x1), chunk)]  # each (b, o2, chunk, o1)
        theta = torch.cat(parts, dim=2).permute(2, 0, 3, 1)  # (N1, b, o1, o2)
        blocks.append(theta.diagonal(dim1=2, dim2=3).mean(-1) if trace else theta)
    return torch.cat(blocks, dim=1)


# ------------------------------------------------------------------------------------- structured
def _affine_scales(module: nn.Module) -> tuple[float, float] | None:
    """(weight scale, bias scale) when ``module`` computes scale_w x (x @ W^T) + scale_b x b over its
    last axis (nn.Linear, infinet's Dense module), else None."""
    if type(module) is nn.Linear:
        return 1.0, 1.0
    if isinstance(module, DenseModule) and not module.has_uninitialized_params():
        if module.parameterization == "ntk":
            return float(module.w_std) / math.sqrt(module.in_features), float(module.b_std or 0.0)
        return 1.0, 1.0
    return None


def _affine_sites(model: nn.Module, params: dict) -> dict:
    """{module name: (module, weight name, bias name or None)} for affine modules whose weight is
    differentiated (and whose bias, if any, is too)."""
    sites = {}
    for name, module in model.named_modules():
        if _affine_scales(module) is None:
            continue
        prefix = f"{name}." if name else ""
        w, b = prefix + "weight", (prefix + "bias" if module.bias is not None else None)
        if w in params and (b is None or b in params):
            sites[name] = (module, w, b)
    return sites


def _features_last(module: nn.Module, t: Tensor, axis: int) -> Tensor:
    """``t`` with the affine module's feature axis last: infinet's Dense module takes channels on axis 1
    of (N, C, ...) inputs (``axis`` is where that axis sits in ``t``); nn.Linear already acts on the last."""
    if isinstance(module, DenseModule) and t.ndim > axis + 1:
        return t.movedim(axis, -1)
    return t


def _capture(model: nn.Module, sites: dict, x: Tensor, n_out: int):
    """Inputs and output cotangents of every use of each affine module: {name: [(x (N, T, in),
    delta (O, N, T, out))]}, from one forward and O batched backward passes (examples independent)."""
    uses: dict = {name: [] for name in sites}
    handles = []
    for name, (module, _, _) in sites.items():
        def hook(mod, args, out, name=name):
            uses[name].append((args[0].detach(), out))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            out = model(x).reshape(len(x), -1)
    finally:
        for h in handles:
            h.remove()
    flat = [(name, i) for name in uses for i in range(len(uses[name]))]
    cotangent = torch.eye(n_out, dtype=out.dtype, device=out.device)[:, None, :].expand(n_out, len(x), n_out)
    grads = torch.autograd.grad(out, [uses[n][i][1] for n, i in flat], grad_outputs=cotangent,
                                is_grads_batched=True, allow_unused=True)
    result: dict = {name: [] for name in uses}
    for (name, i), g in zip(flat, grads):
        module = sites[name][0]
        xin = _features_last(module, uses[name][i][0], 1)
        if g is None:
            g = torch.zeros((n_out,) + tuple(uses[name][i][1].shape), dtype=out.dtype, device=out.device)
        g = _features_last(module, g, 2)
        result[name].append((xin.reshape(len(x), -1, xin.shape[-1]), g.reshape(n_out, len(x), -1, g.shape[-1])))
    return result


def _structured_block(u1: list, u2: list, scale_w: float, scale_b: float, has_bias: bool, trace: bool) -> Tensor:
    total = None
    for x1, d1 in u1:
        for x2, d2 in u2:
            o, n1, t1, _ = d1.shape
            n2, t2 = d2.shape[1], d2.shape[2]
            gram_x = (x1.reshape(n1 * t1, -1) @ x2.reshape(n2 * t2, -1).T).reshape(n1, t1, n2, t2)
            weight = scale_w**2 * gram_x + (scale_b**2 if has_bias else 0.0)
            if trace:  # sum_o d1[o] . d2[o]
                gram_d = torch.einsum("oaiz,objz->aibj", d1, d2)
                term = (gram_d * weight).sum((1, 3))
            else:
                gram_d = (d1.reshape(o * n1 * t1, -1) @ d2.reshape(o * n2 * t2, -1).T).reshape(o, n1, t1, o, n2, t2)
                term = torch.einsum("oaipbj,aibj->abop", gram_d, weight)
            total = term if total is None else total + term
    if trace:
        total = total / u1[0][1].shape[0]
    return total


def _ntk_structured(model, f, params, rest, x1, x2, same, trace, budget) -> Tensor:
    sites = _affine_sites(model, params)
    n_out = f(params, x1[:1]).shape[1]
    covered = {w for _, w, _ in sites.values()} | {b for _, _, b in sites.values() if b is not None}
    others = {k: v for k, v in params.items() if k not in covered}
    theta = None
    if sites:
        c1 = _capture(model, sites, x1, n_out)
        c2 = c1 if same else _capture(model, sites, x2, n_out)
        for name, (module, _, b) in sites.items():
            if not c1[name]:
                continue
            scale_w, scale_b = _affine_scales(module)
            term = _structured_block(c1[name], c2[name], scale_w, scale_b, b is not None, trace)
            theta = term if theta is None else theta + term
    if others:
        f_rest = _functional(model, {**rest, **{k: v for k, v in params.items() if k in covered}})
        term = _ntk_jacobian(f_rest, others, x1, x2, same, trace, budget)
        theta = term if theta is None else theta + term
    return theta


# ----------------------------------------------------------------------------------------- choice
def estimate_costs(model: nn.Module, x1: Tensor, x2: Tensor, params: dict | None = None) -> dict[str, float]:
    """Rough operation counts of each implementation (after Novak et al. 2022, Table 1): with F the
    forward FLOPs of one example, P parameters, O outputs, N = N1 + N2: jacobian 3 F N O + 2 N O P
    (storing J) + N1 N2 O^2 P; ntvp N2 O (3 F + 3 F N1); structured the same backward passes, the
    Jacobians of the parameters outside affine layers only, and N1 N2 O^2 (fan-in + fan-out + 1) x
    rows^2 per affine layer (rows: positions it is applied to per example) instead of their P."""
    from torch.utils.flop_counter import FlopCounterMode

    _check_model(model)
    chosen, rest = _parameters(model, params)
    sites = _affine_sites(model, chosen)
    rows: dict = {name: 0 for name in sites}  # per example, how many rows each affine module is applied to
    handles = [module.register_forward_hook(
        lambda mod, args, out, name=name: rows.__setitem__(name, rows[name] + args[0].numel() // _features_last(mod, args[0], 1).shape[-1]))
        for name, (module, _, _) in sites.items()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(x1[:1])
    finally:
        for h in handles:
            h.remove()
    flops = max(1.0, float(counter.get_total_flops()))
    n_out = out.reshape(1, -1).shape[1]
    n1, n2 = len(x1), len(x2)
    total = sum(v.numel() for v in chosen.values())
    covered = sum(chosen[w].numel() + (chosen[b].numel() if b else 0) for _, w, b in sites.values())
    pair_cost = sum((m.weight.shape[0] + m.weight.shape[1] + 1) * rows[name] ** 2 for name, (m, _, _) in sites.items())
    backward = 3 * flops * (n1 + n2) * n_out  # a forward and O backward passes per example
    def stored(params):  # writing and reading the Jacobians of ``params``
        return 2 * (n1 + n2) * n_out * params
    return {
        "jacobian": backward + stored(total) + n1 * n2 * n_out**2 * total,
        "ntvp": n2 * n_out * (3 * flops + 3 * flops * n1),
        "structured": backward + stored(total - covered) + n1 * n2 * n_out**2 * (pair_cost + total - covered),
    }


def choose_implementation(model: nn.Module, x1: Tensor, x2: Tensor, params=None) -> str:
    """The implementation with the smallest :func:`estimate_costs`."""
    costs = estimate_costs(model, x1, x2, params)
    return min(costs, key=costs.get)


# --------------------------------------------------------------------------------------------- API
def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    implementation: str = "auto",
    trace: bool = False,
    params: list[str] | None = None,
    max_memory: int | None = None,
) -> Tensor:
    """Empirical NTK of a finite network (Jacot et al. 2018, eq. 2):

        Theta[a, b, o, p] = sum_theta d f_o(x1[a]) / d theta . d f_p(x2[b]) / d theta,

    over the parameters that require grad (or those named in ``params``), with the model's outputs
    flattened to O per example. Returns (N1, N2, O, O), or (N1, N2) with ``trace=True`` (the mean of
    Theta[a, b, o, o] over o). ``x2=None`` means x1 (Jacobians computed once). ``implementation``:
    'jacobian', 'ntvp', 'structured' or 'auto' (see the module docstring); all give the same matrix.
    Jacobians and product vectors held at once are kept under ``max_memory`` bytes (default 2 GiB) by
    chunking. The model is used as it is (its dtype and device; dropout in training mode is random:
    call ``model.eval()``). Raises :class:`EmpiricalKernelError` for what torch.func cannot handle
    (BatchNorm in training mode, in-place buffer updates) with the fix in the message.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose from {IMPLEMENTATIONS}")
    _check_model(model)
    x1, x2, same = _inputs(model, x1, x2)
    budget = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
    if budget <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    chosen, rest = _parameters(model, params)
    f = _functional(model, rest)
    auto = implementation == "auto"
    if auto:
        implementation = choose_implementation(model, x1, x2, params)
    try:
        if implementation == "jacobian":
            theta = _ntk_jacobian(f, chosen, x1, x2, same, trace, budget)
        elif implementation == "ntvp":
            theta = _ntk_vector_products(model, f, chosen, x1, x2, trace, budget)
        else:
            theta = _ntk_structured(model, f, chosen, rest, x1, x2, same, trace, budget)
    except RuntimeError as err:
        if auto and implementation == "ntvp" and "forward AD" in str(err):  # no forward mode: reverse only
            return empirical_ntk(model, x1, None if same else x2, implementation="jacobian", trace=trace,
                                 params=params, max_memory=max_memory)
        raise _friendly(err) from err
    if not bool(torch.isfinite(theta).all()):
        raise FloatingPointError("the empirical NTK contains NaN or inf (the model's gradients overflow)")
    return theta


def empirical_nngp(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, trace: bool = False) -> Tensor:
    """Empirical NNGP of one network: the output products f_o(x1[a]) f_p(x2[b]), (N1, N2, O, O), or
    with ``trace=True`` their mean over o = p, (1/O) f(x1) . f(x2), which over random
    initializations averages to the infinite-width NNGP (Lee et al. 2018, eq. 4)."""
    _check_model(model)
    x1, x2, same = _inputs(model, x1, x2)
    with torch.no_grad():
        f1 = model(x1).reshape(len(x1), -1)
        f2 = f1 if same else model(x2).reshape(len(x2), -1)
    if trace:
        return f1 @ f2.T / f1.shape[1]
    return torch.einsum("ao,bp->abop", f1, f2)


__all__ = ["EmpiricalKernelError", "IMPLEMENTATIONS", "choose_implementation", "empirical_nngp", "empirical_ntk",
           "estimate_costs"]
