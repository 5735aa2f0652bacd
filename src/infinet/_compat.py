"""The module paths of infinet before its sub-packages (``infinet.tiling``, ``infinet.layers.dense``, ...).

Each old path is the *same module object* as its new home (``infinet.tiling is infinet.engine.tiling``), so
code written against the flat layout keeps importing, and patching a module attribute through either path
patches the one module. A meta-path finder maps the names on first import; nothing is imported eagerly.
Four public modules are real modules of the package instead: ``infinet.predict``, ``infinet.meanfield`` and
``infinet.depth`` re-export their implementations' public names (``infinet.predict`` with hyperparameter
fitting, which builds on it), ``infinet.scale`` is a sub-package, and ``infinet.cli`` runs the command.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module path -> its home; a package's submodules follow it (infinet.layers.dense -> ...engine.layers.dense)
MOVED = {
    "infinet._extras": "infinet.core.extras",
    "infinet._deprecation": "infinet.core.deprecation",
    "infinet._allocator": "infinet.core.allocator",
    "infinet._chebyshev": "infinet.engine.chebyshev",
    "infinet.layers": "infinet.engine.layers",
    "infinet.experiments": "infinet.app.experiments",
    **{f"infinet.{m}": f"infinet.engine.{m}" for m in
       ("kernel", "gaussian", "masks", "sampling", "fused", "tiling", "spec", "architectures", "from_torch")},
    **{f"infinet.{m}": f"infinet.inference.{m}" for m in
       ("solve", "fitting", "estimators", "sklearn_kernels", "gpytorch_kernels")},
    **{f"infinet.{m}": f"infinet.finite.{m}" for m in ("empirical", "linearization", "montecarlo", "training")},
    "infinet.spectrum": "infinet.theory.spectrum",
    "infinet.report": "infinet.app.report",
    "infinet.datasets": "infinet.app.datasets",
}


def home(name: str) -> str | None:
    """The new path of an old module path (or of a submodule of a moved package), or None."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)  # the module itself: its attributes are kept
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # already executed; the import system just gave it the alias's spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = home(name)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(name, _Alias(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def register_loaded() -> None:
    """Enter the old path of every moved module that is already imported into ``sys.modules``. An old path
    imported for the first time becomes an attribute of ``infinet``, which would hide a public name of the same
    spelling (the function ``infinet.from_torch``); a registered one is found in ``sys.modules`` and is not set."""
    for old, new in MOVED.items():
        if new in sys.modules and old not in sys.modules:
            sys.modules[old] = sys.modules[new]


#: implementation module -> the public module that re-exports its names (documented there)
FACADES = {
    "infinet.inference.predict": "infinet.predict",
    "infinet.theory.meanfield": "infinet.meanfield",
    "infinet.theory.depth": "infinet.depth",
    "infinet.scale.store": "infinet.scale",
}
