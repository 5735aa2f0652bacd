"""Old spellings kept for one release (see CHANGELOG.md): they still work and warn."""

from __future__ import annotations

import functools
import warnings

REMOVAL = "0.3"


def renamed_keywords(**renames: str):
    """Decorator: a keyword argument renamed from each key to its value keeps working under the old name
    for one release, with a DeprecationWarning (same meaning, new name)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old!r} and its new name {new!r}; pass {new!r} only")
                    warnings.warn(f"{fn.__name__}({old}=...) is deprecated: call it {new}= (infinet names every "
                                  f"weight standard deviation w_std); {old} will be removed in infinet {REMOVAL}",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def deprecated_keyword(name: str, old: str, new: str, value, message: str = "") -> None:
    """Warn that keyword ``old`` of ``name`` is deprecated in favour of ``new`` (when ``value`` is given)."""
    if value is not None:
        warnings.warn(f"{name}({old}=...) is deprecated: use {new}=...{message}; {old} will be removed in infinet "
                      f"{REMOVAL}", DeprecationWarning, stacklevel=3)
