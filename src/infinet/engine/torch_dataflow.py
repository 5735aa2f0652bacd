"""The dataflow a torch model computes, read off its ``torch.fx`` graph: in-place operations and aliasing.

An fx graph is a list of calls, each naming the values it reads. In-place operations break that reading:
``h = lin(x); y = relu_(h)`` (``nn.ReLU(inplace=True)``, ``x.relu_()``, ``F.relu(x, inplace=True)``,
``x += y``, ``x.mul_(2)``) changes ``h`` itself, so every later reader of ``h`` reads ``y``.
:func:`functionalize` rewrites the graph so that it says so: each in-place call becomes its out-of-place
counterpart, and every later reader of the value it changed reads its result instead. An in-place call on
a view (``x.view(...)``, ``x[...]``, ``x.flatten()``, ...) also changes the tensor viewed and its other
views; where one of them is read later, the graph cannot say what it holds, and the call is refused,
naming it. :func:`check_dataflow` then runs the rewritten graph and the model on the same input and
refuses when they differ, so that no silent misreading survives a from_torch call with an example input.

fx's own ``Proxy`` has no ``__iadd__``, so ``x += y`` would be traced as ``x + y`` and its effect on the
other readers of ``x`` lost: :class:`InplaceProxy` records it as ``operator.iadd``.
"""

from __future__ import annotations

import copy
import inspect
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

#: in-place operators and their out-of-place counterparts
INPLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                     operator.itruediv: operator.truediv}
#: in-place functions with an out-of-place twin
INPLACE_FUNCTIONS = {torch.relu_: torch.relu, F.relu_: F.relu, F.elu_: F.elu, F.leaky_relu_: F.leaky_relu,
                     torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh, F.hardtanh_: F.hardtanh}
#: calls whose result may share memory with their first argument (a change to one changes the other)
VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute", "squeeze",
                "unsqueeze", "t", "expand", "expand_as", "narrow", "select", "contiguous", "__getitem__", "detach",
                "movedim", "swapaxes", "unfold", "as_strided", "chunk", "split", "unbind"}
VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                  operator.getitem, torch.narrow, torch.select, torch.t, torch.movedim, torch.chunk, torch.split,
                  torch.unbind, torch.detach}
VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout)


class InplaceRefused(ValueError):
    """An in-place operation whose effect on other values the graph cannot express; the message names it."""


class InplaceProxy(fx.Proxy):
    """An fx proxy that records augmented assignments (``x += y``) as the in-place operators they are."""

    def __iadd__(self, other):
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other):
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other):
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other):
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


def _inplace_flag(node: fx.Node) -> bool:
    """Whether a call_function node passes ``inplace=True`` (by keyword or position)."""
    if node.kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


def mutated_argument(node: fx.Node, modules: dict) -> fx.Node | None:
    """The value ``node`` changes in place (its first argument), or None for an out-of-place call."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_module":
        return first if getattr(modules[node.target], "inplace", False) is True else None
    if node.op == "call_method":
        name = str(node.target)
        return first if name.endswith("_") and not name.startswith("_") else None
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in INPLACE_OPERATORS or node.target in INPLACE_FUNCTIONS or _inplace_flag(node):
            return first
        return first if name.endswith("_") and not name.startswith("_") else None
    return None


def _aliases(node: fx.Node, modules: dict) -> fx.Node | None:
    """The value whose memory ``node``'s result may share (a view, or the result of an in-place call)."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_method" and node.target in VIEW_METHODS:
        return first
    if node.op == "call_function" and node.target in VIEW_FUNCTIONS:
        return first
    if node.op == "call_module" and isinstance(modules[node.target], VIEW_MODULES):
        return first
    return mutated_argument(node, modules)


def _out_of_place(node: fx.Node, modules: dict) -> None:
    """Turn an in-place call into its out-of-place counterpart (modules: a copy with ``inplace=False``)."""
    node.meta["infinet_inplace"] = node.target
    if node.op == "call_module":
        modules[node.target].inplace = False
    elif node.op == "call_method":
        node.target = str(node.target)[:-1]
    elif node.target in INPLACE_OPERATORS:
        node.target = INPLACE_OPERATORS[node.target]
    elif node.target in INPLACE_FUNCTIONS:
        node.target = INPLACE_FUNCTIONS[node.target]
    elif "inplace" in node.kwargs or _inplace_flag(node):
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        bound.arguments["inplace"] = False
        node.args, node.kwargs = bound.args, bound.kwargs


def functionalize(graph: fx.Graph, modules: dict) -> None:
    """Rewrite ``graph`` (and ``modules``, a name -> module map of a copy of the model) so that it has no
    in-place call: each reader of a value changed in place reads the value as changed. Raises
    :class:`InplaceRefused` for an in-place call on a value that shares memory with another value read
    after it."""
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    root: dict = {}

    def find(n):
        while root.get(n, n) is not n:
            n = root[n]
        return n

    for node in nodes:
        base = _aliases(node, modules)
        if base is not None:
            root[node] = find(base)
        changed = mutated_argument(node, modules)
        if changed is None:
            continue
        here = position[node]
        group = find(changed)
        for other in nodes[:here]:
            if other is changed or find(other) is not group:
                continue
            later = [u.name for u in other.users if position[u] > here]
            if later:
                raise InplaceRefused(
                    f"{node.name} changes {changed.name} in place, and {changed.name} shares memory with "
                    f"{other.name}, which {', '.join(later)} read afterwards; from_torch cannot tell what they read. "
                    f"Use the out-of-place form (inplace=False, x = x + y, x.relu())")
        for user in list(changed.users):
            if user is not node and position[user] > here:
                user.replace_input_with(changed, node)
        _out_of_place(node, modules)


def seeded_run(fn, example: Tensor):
    """``fn(example)`` without gradients, with torch's random state fixed (dropout draws the same masks each time)
    and restored afterwards; on a copy of ``example`` (an in-place first layer must not change the user's input)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return fn(example.clone())


def check_dataflow(model: nn.Module, example: Tensor, got) -> None:
    """Raise :class:`InplaceRefused` when ``got`` (the rewritten graph's output on ``example``, from
    :func:`seeded_run`) differs from what ``model`` computes on it: a misread dataflow."""
    expected = seeded_run(model, example)
    if not (isinstance(expected, Tensor) and isinstance(got, Tensor)):
        return
    scale = float(expected.detach().abs().max().clamp(min=1.0)) if expected.numel() else 1.0
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * scale):
        diff = float((got.double() - expected.double()).abs().max()) if expected.shape == got.shape else float("nan")
        raise InplaceRefused(
            f"from_torch's reading of the model's dataflow differs from what its forward computes on the example "
            f"input (largest difference {diff:.3g}): an in-place change through a view, or an operation torch.fx "
            "cannot see; write the forward with out-of-place operations")
