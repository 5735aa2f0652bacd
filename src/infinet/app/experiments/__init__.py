"""Experiments: one module each, declaring its parameters and returning a :class:`~infinet.report.Result`.

A module ``infinet/experiments/<name>.py`` defines ``EXPERIMENT = Experiment(...)``; it is found by
name (underscores written as dashes: ``gp_convergence.py`` is ``gp-convergence``). The runner resolves
parameters (defaults, the quick variant, ``key=value`` overrides), fixes the seeds, times the run
and hands the result to the one report writer.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..report import Result, write_report

_UNSET = object()


class ExperimentError(ValueError):
    """An unknown experiment or parameter, or a parameter value of the wrong type."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default, a help line, optionally its value in the quick variant, and the
    smallest value it accepts (``minimum``; by default 1 for counts, integers whose default is >= 1,
    and 0 for non-negative real defaults; each element of a list)."""

    default: Any
    help: str
    quick: Any = _UNSET
    minimum: Any = _UNSET

    def lowest(self) -> Any:
        if self.minimum is not _UNSET:
            return self.minimum
        sample = self.default[0] if isinstance(self.default, (tuple, list)) and self.default else self.default
        if isinstance(sample, bool) or not isinstance(sample, (int, float)):
            return None
        if isinstance(sample, int):
            return 1 if sample >= 1 else (0 if sample == 0 else None)
        return 0.0 if sample >= 0 else None

    def check(self, value: Any, what: str) -> None:
        """Raise an :class:`ExperimentError` when ``value`` (or an element of it) is below the minimum."""
        low = self.lowest()
        if low is None:
            return
        items = value if isinstance(value, (tuple, list)) else (value,)
        if isinstance(self.default, (tuple, list)) and not items:
            raise ExperimentError(f"{what} needs at least one value")
        for item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not item >= low:
                raise ExperimentError(f"{what} must be >= {low}, got {value!r}")


@dataclass(frozen=True)
class Experiment:
    """An experiment: ``run(params, seed, progress)`` composes library calls and returns a Result."""

    name: str
    description: str
    params: dict[str, Param]
    run: Callable[[dict[str, Any], int, bool], Result]
    details: str = ""
    _module: str = field(default="", compare=False)

    def resolve(self, overrides: dict[str, Any] | None = None, quick: bool = False) -> dict[str, Any]:
        """Parameter values: defaults, then the quick variant when asked, then ``overrides``
        (strings such as ``"64,256"`` are converted to the default's type)."""
        values = {k: (p.quick if quick and p.quick is not _UNSET else p.default) for k, p in self.params.items()}
        for key, raw in (overrides or {}).items():
            if key not in self.params:
                close = difflib.get_close_matches(key, self.params, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ExperimentError(f"experiment {self.name!r} has no parameter {key!r}{hint} "
                                      f"(parameters: {', '.join(self.params)})")
            values[key] = convert(raw, self.params[key].default, f"{self.name}.{key}")
            self.params[key].check(values[key], f"{self.name}.{key}")
        return values


def convert(raw: Any, default: Any, what: str) -> Any:
    """Convert a command-line string to the type of ``default`` (bool, int, float, str, or a tuple of those)."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not np.isfinite(value):
                raise ValueError("expected a finite number")
            return value
        if isinstance(default, (tuple, list)):
            kind = type(default[0]) if default else str
            items = [s for s in text.replace(" ", "").split(",") if s]
            if not items:
                raise ValueError("expected a comma-separated list")
            return tuple(convert(s, kind() if kind is not str else "", what) for s in items)
    except ExperimentError:
        raise
    except ValueError as e:
        expected = type(default).__name__ if not isinstance(default, (tuple, list)) else "comma-separated list"
        raise ExperimentError(f"{what}: cannot read {raw!r} as {expected} ({e})") from None
    return text


def registry() -> dict[str, Experiment]:
    """All experiments, by name, in alphabetical order."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        exp = getattr(module, "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found[exp.name] = exp
    return dict(sorted(found.items()))


def get(name: str) -> Experiment:
    """The experiment called ``name``; an :class:`ExperimentError` lists the known ones otherwise."""
    table = registry()
    key = name.strip().lower().replace("_", "-")
    if key not in table:
        close = difflib.get_close_matches(key, table, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExperimentError(f"unknown experiment {name!r}; {hint}known: {', '.join(table)}")
    return table[key]


def run_experiment(
    name: str,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    quick: bool = False,
    progress: bool | None = None,
) -> tuple[Result, Path]:
    """Run an experiment and write its report into ``out`` (default ``reports/<name>``).

    Seeds torch's and numpy's global generators with ``seed`` (experiments also derive their own
    generators from it), so the same seed gives the same numbers. Returns the Result and the path of
    ``report.html``.
    """
    exp = get(name)
    values = exp.resolve(params, quick=quick)
    out = Path(out) if out is not None else Path("reports") / exp.name
    _check_writable(out)  # before the run, so a bad folder costs nothing
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    start = time.perf_counter()
    result = exp.run(values, seed, progress if progress is not None else False)
    elapsed = time.perf_counter() - start
    values = dict(values, quick=quick)
    path = write_report(result, out, experiment=exp.name, params=values, seed=seed, run_time=elapsed)
    return result, path


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write the report into {folder}: {e.strerror or e}") from None


__all__ = ["Experiment", "ExperimentError", "Param", "convert", "get", "registry", "run_experiment"]
