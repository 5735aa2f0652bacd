"""Training finite networks with the loss normalization the kernel predictions assume.

loss = 1 / (2 * y.numel()) * sum (f(x) - y)^2 (neural-tangents' convention), so ``steps`` of full-batch
gradient descent with learning rate ``lr`` correspond to training time t = lr * steps in
:func:`infinet.predict.gradient_descent_mse`.

Every trainer here is one call of :func:`train`, the one training loop: an optimizer, a loss, the rows
of each step (full batch or minibatches), and callbacks that record what a study needs into one
:class:`History` at the recorded steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from .empirical import empirical_ntk


def mse_loss(f: Tensor, y: Tensor) -> Tensor:
    """1 / (2 * y.numel()) * sum (f - y)^2."""
    return 0.5 * (f - y).pow(2).sum() / y.numel()


@dataclass
class History:
    """What a training run recorded, one entry per recorded step (``steps``) unless said otherwise.

    ``loss``: the training loss on the whole training set; ``validation``: the value of a monitor (a
    validation accuracy, a test loss); ``f_test``: the outputs on the test inputs; ``weight_change``:
    ||theta_t - theta_0|| / ||theta_0|| over the trainable weights; ``ntk_change``: ||Theta_t - Theta_0||_F /
    ||Theta_0||_F of the empirical NTK on probe inputs. ``f_train``: the outputs on the training inputs
    at the end. Lists a run did not record stay empty."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    f_test: list[Tensor] = field(default_factory=list)
    weight_change: list[float] = field(default_factory=list)
    ntk_change: list[float] = field(default_factory=list)
    f_train: Tensor | None = None

    @property
    def test_loss(self) -> list[float]:
        """The monitor's values under their earlier name (they were never only test losses): ``validation``."""
        return self.validation


#: a callback: called at each recorded step with (step, model, history, training loss at that step)
Callback = Callable[[int, nn.Module, History, float], None]


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = mse_loss,
    rows: Callable[[int], Tensor | None] | None = None,
    penalty: Callable[[], Tensor] | None = None,
    scheduler=None,
    record_every: int = 0,
    callbacks: Sequence[Callback] = (),
    on_nonfinite: str = "raise",
) -> History:
    """The training loop: ``steps`` updates of ``optimizer`` on ``loss_fn(model(x[r]), y[r])`` (+ ``penalty()``),
    r = ``rows(step)`` (None or no ``rows``: the whole batch), stepping ``scheduler`` after each update.

    At step 0, every ``record_every`` steps (0: never) and after the last update, the step, the training
    loss on the whole set (the step's own loss when it used the whole batch) and each callback's
    measurements go into the returned :class:`History`; ``history.f_train`` holds the final outputs on ``x``.
    A loss that is NaN or inf raises ``FloatingPointError`` naming the step (``on_nonfinite='raise'``; a
    learning rate above the stable limit 2 m / lambda_max of the empirical NTK) or ends training there
    (``'stop'``, for studies that record untrainable settings)."""
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    history = History()

    def record(step: int, loss: Tensor | None) -> None:
        with torch.no_grad():
            value = loss if loss is not None else loss_fn(model(x), y)
        history.steps.append(step)
        history.loss.append(float(value))
        for callback in callbacks:
            callback(step, model, history, float(value))

    for step in range(steps):
        batch = None if rows is None else rows(step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y) if batch is None else loss_fn(model(x[batch]), y[batch])
        if not torch.isfinite(loss):
            if on_nonfinite == "stop":
                break
            raise FloatingPointError(f"training diverged at step {step} (loss {float(loss.detach())}); "
                                     "lower the learning rate")
        if record_every and step % record_every == 0:
            record(step, loss.detach() if batch is None else None)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    else:
        step = steps
    with torch.no_grad():
        history.f_train = model(x)
        final = loss_fn(history.f_train, y)
    if not torch.isfinite(final) and on_nonfinite == "raise":
        raise FloatingPointError(f"training diverged by step {step}; lower the learning rate")
    if record_every or callbacks:
        record(step, final)
    return history


# -- callbacks -------------------------------------------------------------------------------------------------
def record_test(x_test: Tensor, y_test: Tensor | None = None) -> Callback:
    """Records the outputs on ``x_test`` (``f_test``) and, given ``y_test``, their :func:`mse_loss` (``validation``)."""
    def callback(step, model, history, loss):
        with torch.no_grad():
            out = model(x_test).detach().clone()
        history.f_test.append(out)
        if y_test is not None:
            history.validation.append(float(mse_loss(out, y_test)))
    return callback


def record_monitor(monitor: Callable[[nn.Module], float]) -> Callback:
    """Records ``monitor(model)`` (e.g. a validation accuracy) in ``validation``."""
    def callback(step, model, history, loss):
        with torch.no_grad():
            history.validation.append(float(monitor(model)))
    return callback


def record_changes(model: nn.Module, ntk_inputs: Tensor | None = None) -> Callback:
    """Records how far the trainable weights moved from where they are now (``weight_change``) and, given
    probe inputs, how much the empirical NTK on them changed (``ntk_change``; traced empirical NTK)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    theta0 = [p.detach().clone() for p in trainable]
    norm0 = float(torch.sqrt(sum((p * p).sum() for p in theta0)))
    ntk0 = None if ntk_inputs is None else empirical_ntk(model, ntk_inputs, trace=True)

    def callback(step, model, history, loss):
        with torch.no_grad():
            moved = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, theta0)))
        history.weight_change.append(float(moved) / max(norm0, 1e-300))
        if ntk0 is not None:
            ntk = empirical_ntk(model, ntk_inputs, trace=True)
            history.ntk_change.append(float(torch.linalg.norm(ntk - ntk0) / torch.linalg.norm(ntk0)))
    return callback


def _require(condition: bool, what: str, **values) -> None:
    if not condition:
        raise ValueError(f"need {what}; got " + ", ".join(f"{k}={v}" for k, v in values.items()))


# -- the trainers of the studies ----------------------------------------------------------------------------------
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
) -> History:
    """Full-batch training on :func:`mse_loss`: plain gradient descent (``optimizer='sgd'``, no momentum;
    ``steps`` x ``lr`` is the training time of :func:`infinet.predict.gradient_descent_mse`) or Adam
    (``'adam'``, Kingma and Ba 2015; to train small networks to convergence). ``schedule='cosine'``
    decays the learning rate as lr (1 + cos(pi step / steps)) / 2 (Loshchilov and Hutter 2017).

    Trains ``model`` in place; raises ``FloatingPointError`` naming the step if the loss becomes NaN
    or inf (a learning rate above the stable limit 2 m / lambda_max of the empirical NTK). With
    ``x_test``, ``history.f_test[-1]`` holds the final test outputs (and the test loss every
    ``record_every`` steps goes into ``validation`` when ``y_test`` is given).
    """
    _require(steps >= 0 and lr > 0, "steps >= 0 and lr > 0", steps=steps, lr=lr)
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    if optimizer not in optimizers or schedule not in ("constant", "cosine"):
        raise ValueError(f"optimizer must be one of {sorted(optimizers)} and schedule 'constant' or 'cosine', got "
                         f"{optimizer!r} and {schedule!r}")
    opt = optimizers[optimizer](model.parameters(), lr=lr)
    decay = None if schedule == "constant" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    # the test loss along training (it records the test outputs too); otherwise the final test outputs alone
    curve = x_test is not None and y_test is not None and record_every > 0
    history = train(model, x, y, steps, opt, scheduler=decay, record_every=record_every,
                    callbacks=[record_test(x_test, y_test)] if curve else [])
    if x_test is not None and not curve:
        with torch.no_grad():
            history.f_test.append(model(x_test))
    return history


def _epochs(n: int, batch_size: int, seed: int, device) -> Callable[[int], Tensor]:
    """Minibatches that visit the n training rows in a fresh random order each epoch (drawn from ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    state = {"order": torch.empty(0, dtype=torch.long), "position": 0}

    def rows(step: int) -> Tensor:
        if state["position"] >= len(state["order"]):
            state["order"], state["position"] = torch.randperm(n, generator=gen).to(device), 0
        batch = state["order"][state["position"]: state["position"] + batch_size]
        state["position"] += batch_size
        return batch
    return rows


def _random_rows(n: int, batch_size: int, seed: int) -> Callable[[int], Tensor]:
    """Minibatches of ``batch_size`` rows drawn with replacement (from ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    return lambda step: torch.randint(0, n, (batch_size,), generator=gen)


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
) -> History:
    """Minibatch SGD (optionally with heavy-ball momentum) on :func:`mse_loss` of each minibatch.

    Each epoch visits the training set in a fresh random order (drawn from ``seed``); ``steps``
    counts minibatches. ``monitor(model)`` (e.g. validation accuracy) is recorded every
    ``monitor_every`` steps and at the end in ``history.steps`` / ``history.validation``. Trains in
    place; raises ``FloatingPointError`` naming the step if the loss becomes NaN or inf.
    """
    _require(steps >= 0 and lr > 0 and batch_size >= 1 and 0.0 <= momentum < 1.0,
             "steps >= 0, lr > 0, batch_size >= 1 and 0 <= momentum < 1", steps=steps, lr=lr, batch_size=batch_size,
             momentum=momentum)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    callbacks = [] if monitor is None else [record_monitor(monitor)]
    return train(model, x, y, steps, opt, rows=_epochs(len(x), batch_size, seed, x.device),
                 record_every=monitor_every if monitor is not None else 0, callbacks=callbacks)


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
) -> History:
    """Train ``model`` in place by full-batch gradient descent (``batch_size=None``) or minibatch SGD
    on :func:`mse_loss`, recording every ``record_every`` steps the training loss, the test outputs
    (``f_test``), the relative change of the weights and, given ``ntk_inputs`` (a few examples; traced
    empirical NTK), of the empirical NTK (see :class:`History`). Pass a model and its
    :func:`infinet.linearize` with the same ``lr`` to compare a network with its linearization (Lee et
    al. 2019, sec. 2-3: both changes shrink as width^-1/2). ``weight_decay`` lambda adds
    (lambda / 2) ||theta - theta_0||^2 to the loss (decay toward the initialization): the linearized
    network then converges to kernel ridge regression f0 + Theta(x, X) (Theta + m lambda I)^-1 (Y - f0(X)),
    m = y.numel()."""
    _require(steps >= 0 and lr > 0 and record_every >= 1 and weight_decay >= 0,
             "steps >= 0, lr > 0, record_every >= 1 and weight_decay >= 0", steps=steps, lr=lr,
             record_every=record_every, weight_decay=weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    theta0 = [p.detach().clone() for p in trainable]
    callbacks = ([] if x_test is None else [record_test(x_test)]) + [record_changes(model, ntk_inputs)]
    def decay_to_start():
        return 0.5 * weight_decay * sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, theta0))

    rows = None if batch_size is None else _random_rows(len(x), batch_size, seed)
    return train(model, x, y, steps, torch.optim.SGD(trainable, lr=lr), rows=rows,
                 penalty=decay_to_start if weight_decay else None, record_every=record_every, callbacks=callbacks)


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
    _require(steps >= 0 and lr > 0 and batch_size >= 1, "steps >= 0, lr > 0 and batch_size >= 1", steps=steps, lr=lr,
             batch_size=batch_size)
    history = train(model, x, labels, steps, torch.optim.Adam(model.parameters(), lr=lr),
                    loss_fn=nn.functional.cross_entropy, rows=_random_rows(len(x), min(batch_size, len(x)), seed),
                    on_nonfinite="stop")
    out = history.f_train
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


#: the names of earlier versions for the history object
TrainingRecord = TrainingTrace = History

__all__ = ["Callback", "History", "TrainingRecord", "TrainingTrace", "max_stable_learning_rate", "mse_loss", "readout_parameters",
           "record_changes", "record_monitor", "record_test", "replace_readout", "train", "train_and_track", "train_classifier",
           "train_gradient_descent", "train_sgd"]


def max_stable_learning_rate(model: nn.Module, x: Tensor, iterations: int = 20, seed: int = 0) -> float:
    """2 / lambda_max of the Gauss-Newton matrix J^T J / (N O) of :func:`mse_loss` at the model's current
    parameters (J the (N O) x P Jacobian of the outputs on ``x``): the largest learning rate for which
    full-batch gradient descent on the linearized network does not diverge, the finite-width
    counterpart of :func:`infinet.predict.max_learning_rate` (Lee et al. 2019, "Wide neural networks of
    any depth evolve as linear models under gradient descent", Sec. 2.2). lambda_max by power iteration
    with Jacobian-vector and vector-Jacobian products (``iterations`` of each; it approaches lambda_max
    from below, so keep a margin)."""
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
