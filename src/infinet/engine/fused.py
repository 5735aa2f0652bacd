"""Fused elementwise passes: a layer's kernel arithmetic compiled into one loop over a tile.

A spatial kernel tile is an (N1, N2, S, S) tensor (S pixels; 614,656 entries per pair of 28 x 28
images), and in eager PyTorch each step of a formula is a pass over it: the arc-cosine kernel of a
ReLU layer with its NTK update is about a dozen passes plus a fresh tensor per step. Here such a
step, written once as a pure, branch-free function of tensors (for example
:func:`infinet.gaussian.abrelu_step`), is compiled by ``torch.compile`` (TorchInductor: one C++/OpenMP
loop on CPUs, one Triton kernel on GPUs) and called instead of the eager code. The compiled and the
eager path evaluate the same expressions in the same order, so they agree to rounding (a few ulps:
the compiler may contract a multiply and an add).

When it is used (``set_compile`` or the environment variable ``INFINET_COMPILE``):

- ``"auto"`` (default): for tensors of at least :data:`MIN_ENTRIES` entries inside kernel
  computations large enough to repay compiling (the tile engine estimates the elementwise work, see
  :func:`worth_compiling`; compiling a step takes seconds the first time, then comes from
  TorchInductor's on-disk cache);
- ``"on"``: whenever the tensor is large enough; ``"off"``: never (the eager path).

Where compiling fails (no C++ compiler, no Triton for the GPU), the failure is reported once as a
warning and the eager path is used from then on: results never depend on whether a compiler exists.
Nothing is compiled while autograd records (hyperparameter fitting differentiates the eager code).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Callable

import torch
from torch import Tensor

MODES = ("auto", "on", "off")
#: tensors smaller than this are never worth a compiled call (the call itself costs ~50 us)
MIN_ENTRIES = 1 << 16
#: "auto" compiles inside kernel computations of at least this many entry-layers (entries per tile
#: summed over tiles, times layers): about a minute of eager arithmetic on one core, so that a cold
#: compilation (10-30 s for a network's few steps) is repaid
AUTO_WORK = 4e9

_mode = os.environ.get("INFINET_COMPILE", "auto").lower()
if _mode not in MODES:
    warnings.warn(f"INFINET_COMPILE={_mode!r} is not one of {MODES}; using 'auto'", stacklevel=1)
    _mode = "auto"
_active = 0  # kernel computations in progress that asked for compiled steps ("auto")
_lock = threading.Lock()
_compiled: dict = {}
_broken: str | None = None


def set_compile(mode: str) -> None:
    """Choose when layers' elementwise steps are compiled: ``"auto"`` (default), ``"on"`` or ``"off"``."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"compile mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def get_compile() -> str:
    """The current mode (see :func:`set_compile`)."""
    return _mode


def worth_compiling(entry_layers: float) -> bool:
    """Whether a kernel computation of ``entry_layers`` (entries per tile summed over tiles, times the
    number of layers) compiles its steps in mode "auto"."""
    return _mode == "on" or (_mode == "auto" and entry_layers >= AUTO_WORK)


class active:
    """Context manager: compile steps within (mode "auto") when ``enabled``; nests, and works across the
    tile engine's worker threads (a process-wide count, not a thread-local flag)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        global _active
        if self.enabled:
            with _lock:
                _active += 1
        return self

    def __exit__(self, *exc):
        global _active
        if self.enabled:
            with _lock:
                _active -= 1
        return False


def compiling() -> bool:
    """Whether large steps are compiled right now (mode "on", or "auto" inside a large computation)."""
    return _broken is None and (_mode == "on" or (_mode == "auto" and _active > 0))


def wanted(t: Tensor) -> bool:
    """Whether a step over ``t`` (the largest tensor it reads) would be compiled now."""
    if t.numel() < MIN_ENTRIES or not compiling():
        return False
    return not (torch.is_grad_enabled() and t.requires_grad)


def call(step: Callable, *args):
    """``step(*args)``, compiled where :func:`wanted` says so (tensors first, Python constants after:
    each combination of constants gets its own compiled loop). Falls back to eager once and for all if
    the compiler fails."""
    global _broken
    lead = args[0]
    if not wanted(lead):
        return step(*args)
    fn = _compiled.get(step)
    if fn is None:
        with _lock:
            _allow_variants()
            fn = _compiled.setdefault(step, torch.compile(step, dynamic=True, fullgraph=True))
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step is always right
        _broken = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"infinet: compiling a kernel step failed ({_broken}); using eager PyTorch from now on "
                      "(same numbers, slower). Set INFINET_COMPILE=off to skip the attempt.", RuntimeWarning,
                      stacklevel=2)
        return step(*args)


_scripts: dict = {}


def scripted(fn: Callable) -> Callable:
    """``fn`` compiled by TorchScript, once per process (a fraction of a second, nothing on disk), for block
    loops of many short passes: no Python runs between the passes, and threads of the tile pool do not
    queue on the GIL at each one. Where scripting fails, ``fn`` itself (the same operations in the same
    order: the same numbers). TorchScript is deprecated in favour of ``torch.compile`` (whose compilation
    takes tens of seconds); its warning is silenced at this one call."""
    with _lock:
        if fn not in _scripts:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _scripts[fn] = torch.jit.script(fn)
            except Exception:  # noqa: BLE001 - any failure to script: the plain function computes the same
                _scripts[fn] = fn
    return _scripts[fn]


def _allow_variants() -> None:
    """Each step compiles once per combination of its constants and of size-1 axes (tiles of one
    example); TorchDynamo's default of 8 variants per function would send the rest back to eager."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))


def status() -> dict:
    """The mode, whether computations are currently compiling, and why compiling was given up (or None)."""
    return {"mode": _mode, "active": _active > 0, "broken": _broken}
