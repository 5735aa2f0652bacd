"""Checks of arguments shared by every part of infinet: one wording for one rule, and the error names the
argument and the value it got."""

from __future__ import annotations

import numpy as np


def check_int(value, what: str, minimum: int = 1, *, error: type[Exception] = ValueError,
              numpy_ints: bool = False) -> int:
    """``value`` if it is an integer (not a bool; numpy integers too with ``numpy_ints``) of at least ``minimum``,
    else ``error`` saying "<what> must be a positive integer" (``minimum`` 1) or "an integer >= <minimum>"."""
    kinds = (int, np.integer) if numpy_ints else int
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{what} must be {rule}, got {value!r}")
    return int(value)


__all__ = ["check_int"]
