"""Training finite networks with the loss normalization the kernel predictions assume.

loss = 1 / (2 * y.numel()) * sum (f(x) - y)^2 (neural-tangents' convention), so ``steps`` of full-batch
gradient descent with learning rate ``lr`` correspond to training time t = lr * steps in
:func:`infinet.predict.gradient_descent_mse`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn


def mse_loss(f: Tensor, y: Tensor) -> Tensor:
    """1 / (2 * y.numel()) * sum (f - y)^2."""
    return 0.5 * (f - y).pow(2).sum() / y.numel()


@dataclass
class TrainingRecord:
    """Loss every ``record_every`` steps and the final outputs on the training and test inputs."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    f_train: Tensor | None = None
    f_test: Tensor | None = None


def train_gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    record_every: int = 0,
    optimizer: str = "sgd",
    schedule: str = "constant",
) -> TrainingRecord:
    """Full-batch training on :func:`mse_loss`: plain gradient descent (``optimizer='sgd'``, no momentum;
    ``steps`` x ``lr`` is the training time of :func:`infinet.predict.gradient_descent_mse`) or Adam
    (``'adam'``, Kingma and Ba 2015; to train small networks to convergence). ``schedule='cosine'``
    decays the learning rate as lr (1 + cos(pi step / steps)) / 2 (Loshchilov and Hutter 2017).

    Trains ``model`` in place; raises ``FloatingPointError`` naming the step if the loss becomes NaN
    or inf (a learning rate above the stable limit 2 m / lambda_max of the empirical NTK).
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    if optimizer not in optimizers or schedule not in ("constant", "cosine"):
        raise ValueError(f"optimizer must be one of {sorted(optimizers)} and schedule 'constant' or 'cosine', got "
                         f"{optimizer!r} and {schedule!r}")
    opt = optimizers[optimizer](model.parameters(), lr=lr)
    decay = None if schedule == "constant" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    rec = TrainingRecord()

    def record(step: int, loss: Tensor) -> None:
        rec.steps.append(step)
        rec.loss.append(float(loss))
        if x_test is not None and y_test is not None:
            with torch.no_grad():
                rec.test_loss.append(float(mse_loss(model(x_test), y_test)))

    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = mse_loss(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {float(loss.detach())}); lower the learning rate")
        if record_every and step % record_every == 0:
            record(step, loss.detach())
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
    with torch.no_grad():
        rec.f_train = model(x)
        final = mse_loss(rec.f_train, y)
        if not torch.isfinite(final):
            raise FloatingPointError(f"training diverged by step {steps}; lower the learning rate")
        if record_every:
            record(steps, final)
        rec.f_test = model(x_test) if x_test is not None else None
    return rec


def train_sgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    batch_size: int = 100,
    momentum: float = 0.0,
    seed: int = 0,
    monitor: Callable[[nn.Module], float] | None = None,
    monitor_every: int = 0,
) -> TrainingRecord:
    """Minibatch SGD (optionally with heavy-ball momentum) on :func:`mse_loss` of each minibatch.

    Each epoch visits the training set in a fresh random order (drawn from ``seed``); ``steps``
    counts minibatches. ``monitor(model)`` (e.g. validation accuracy) is recorded every
    ``monitor_every`` steps and at the end in ``record.steps`` / ``record.test_loss``. Trains in
    place; raises ``FloatingPointError`` naming the step if the loss becomes NaN or inf.
    """
    if steps < 0 or lr <= 0 or batch_size < 1 or not 0.0 <= momentum < 1.0:
        raise ValueError(f"need steps >= 0, lr > 0, batch_size >= 1 and 0 <= momentum < 1; got steps={steps}, "
                         f"lr={lr}, batch_size={batch_size}, momentum={momentum}")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(int(seed))
    rec = TrainingRecord()
    order = torch.empty(0, dtype=torch.long)
    position = 0

    def check(loss: Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {float(loss.detach())}); lower the learning rate")

    for step in range(steps + 1):
        if monitor is not None and ((monitor_every and step % monitor_every == 0) or step == steps):
            with torch.no_grad():
                rec.steps.append(step)
                rec.test_loss.append(float(monitor(model)))
        if step == steps:
            break
        if position >= len(order):
            order, position = torch.randperm(len(x), generator=gen).to(x.device), 0
        batch = order[position: position + batch_size]
        position += batch_size
        opt.zero_grad(set_to_none=True)
        loss = mse_loss(model(x[batch]), y[batch])
        check(loss, step)
        rec.loss.append(float(loss.detach()))
        loss.backward()
        opt.step()
    with torch.no_grad():
        rec.f_train = model(x)
        check(mse_loss(rec.f_train, y), steps)
    return rec


@dataclass
class TrainingTrace:
    """What :func:`train_and_track` records every ``record_every`` steps: the step, training loss,
    test outputs, the relative change of the trainable weights ||theta_t - theta_0|| / ||theta_0||
    and of the empirical NTK on the probe inputs ||Theta_t - Theta_0||_F / ||Theta_0||_F."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    f_test: list[Tensor] = field(default_factory=list)
    weight_change: list[float] = field(default_factory=list)
    ntk_change: list[float] = field(default_factory=list)


def train_and_track(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    *,
    x_test: Tensor | None = None,
    batch_size: int | None = None,
    record_every: int = 10,
    ntk_inputs: Tensor | None = None,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> TrainingTrace:
    """Train ``model`` in place by full-batch gradient descent (``batch_size=None``) or minibatch SGD
    on :func:`mse_loss`, recording the quantities of :class:`TrainingTrace`. Pass a model and its
    :func:`infinet.linearize` with the same ``lr`` to compare a network with its linearization (Lee et
    al. 2019, sec. 2-3: both changes shrink as width^-1/2). The NTK change needs ``ntk_inputs``
    (a few examples; traced empirical NTK). ``weight_decay`` lambda adds (lambda / 2) ||theta - theta_0||^2
    to the loss (decay toward the initialization): the linearized network then converges to kernel
    ridge regression f0 + Theta(x, X) (Theta + m lambda I)^-1 (Y - f0(X)), m = y.numel()."""
    from .empirical import empirical_ntk

    if steps < 0 or lr <= 0 or record_every < 1 or weight_decay < 0:
        raise ValueError(f"need steps >= 0, lr > 0, record_every >= 1 and weight_decay >= 0; got {steps}, {lr}, "
                         f"{record_every}, {weight_decay}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    theta0 = [p.detach().clone() for p in trainable]
    norm0 = float(torch.sqrt(sum((p * p).sum() for p in theta0)))
    ntk0 = None if ntk_inputs is None else empirical_ntk(model, ntk_inputs, trace=True)
    opt = torch.optim.SGD(trainable, lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    trace = TrainingTrace()

    def record(step: int) -> None:
        with torch.no_grad():
            trace.steps.append(step)
            trace.loss.append(float(mse_loss(model(x), y)))
            if x_test is not None:
                trace.f_test.append(model(x_test).detach().clone())
            moved = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, theta0)))
            trace.weight_change.append(float(moved) / max(norm0, 1e-300))
        if ntk0 is not None:
            ntk = empirical_ntk(model, ntk_inputs, trace=True)
            trace.ntk_change.append(float(torch.linalg.norm(ntk - ntk0) / torch.linalg.norm(ntk0)))

    for step in range(steps):
        if step % record_every == 0:
            record(step)
        rows = slice(None) if batch_size is None else torch.randint(0, len(x), (batch_size,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = mse_loss(model(x[rows]), y[rows])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {float(loss.detach())}); lower the learning rate")
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, theta0))
        loss.backward()
        opt.step()
    record(steps)
    return trace


def train_classifier(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    steps: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> float:
    """Train ``model`` in place with Adam (Kingma and Ba 2015) on the softmax cross-entropy of random
    minibatches for ``steps`` steps; return the final training accuracy. A loss that becomes NaN or
    inf stops training early (the network is then untrainable at this budget) and returns the accuracy
    reached so far, so that trainability studies can record it."""
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0, lr > 0 and batch_size >= 1; got {steps}, {lr}, {batch_size}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(steps):
        rows = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[rows]), labels[rows])
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x)
        if not bool(torch.isfinite(out).all()):
            return 0.0
        return float((out.argmax(1) == labels).double().mean())


def _readout_name(model: nn.Module) -> str:
    names = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not names:
        raise ValueError(f"{type(model).__name__} has no child module with parameters to serve as its readout")
    return names[-1]


def replace_readout(model: nn.Module, fresh: nn.Module) -> nn.Module:
    """A copy of ``model`` whose readout (its last child module with parameters) takes the parameters of
    the same child of ``fresh``, a newly initialized network of the same architecture: the usual start of
    fine-tuning a pretrained network on a new task with the same number of outputs."""
    out = copy.deepcopy(model)
    name = _readout_name(out)
    target, source = getattr(out, name), getattr(fresh, _readout_name(fresh))
    if type(target) is not type(source):
        raise ValueError(f"fresh has a different readout ({type(source).__name__}, not {type(target).__name__})")
    target.load_state_dict(source.state_dict())
    return out


def readout_parameters(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the readout's parameters (see :func:`replace_readout`)."""
    name = _readout_name(model)
    return [f"{name}.{p}" for p, _ in getattr(model, name).named_parameters()]


__all__ = ["TrainingRecord", "replace_readout", "readout_parameters", "TrainingTrace", "train_classifier", "mse_loss", "train_and_track", "train_gradient_descent", "train_sgd"]


def max_stable_learning_rate(model: nn.Module, x: Tensor, iterations: int = 20, seed: int = 0) -> float:
    """2 / lambda_max of the Gauss-Newton matrix J^T J / (N O) of :func:`mse_loss` at the model's current
    parameters (J the (N O) x P Jacobian of the outputs on ``x``): the largest learning rate for which
    full-batch gradient descent on the linearized network does not diverge, the finite-width
    counterpart of :func:`infinet.predict.max_learning_rate` (Lee et al. 2019, "Wide neural networks of
    any depth evolve as linear models under gradient descent", Sec. 2.2). lambda_max by power iteration
    with Jacobian-vector and vector-Jacobian products (``iterations`` of each; it approaches lambda_max
    from below, so keep a margin)."""
    from torch.func import functional_call, jvp, vjp

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v for k, v in model.named_buffers()}

    def f(p):
        return functional_call(model, {**p, **buffers}, (x,))

    out, pullback = vjp(f, params)
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for k, p in params.items()}
    lam = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v.values()))
        v = {k: t / norm for k, t in v.items()}
        _, jv = jvp(f, (params,), (v,))
        (g,) = pullback(jv)
        lam = float(torch.sqrt(sum((t * t).sum() for t in g.values()))) / out.numel()
        v = g
    if not lam > 0 or lam != lam:
        raise FloatingPointError("the network's Jacobian is zero or not finite; no learning rate is stable")
    return 2.0 / lam
