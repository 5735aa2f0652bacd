"""Optional dependencies: the core (kernels, inference, finite networks, theory) needs torch, numpy, scipy
and tqdm only; everything else comes with an extra of ``pip install infinet[...]``, and a missing one is
an ImportError naming the command that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: top-level module -> the extra that brings it
EXTRA_OF = {"typer": "cli", "matplotlib": "cli", "sklearn": "sklearn", "mnist1d": "data", "mlxtend": "data",
            "dask": "scale", "distributed": "scale", "zarr": "scale", "gpytorch": "gpytorch"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that supplies it."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (a feature's name), or raise :class:`MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRA_OF.get(top, "all")
        raise MissingExtraError(f"{what} needs the optional package {top!r}, which is not installed: "
                                f"pip install 'infinet[{extra}]' (or 'infinet[all]')") from e
