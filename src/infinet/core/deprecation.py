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


_PAIRS = (("w_var", "w_std"), ("b_var", "b_std"))


def variances_as_stds(fn):
    """Wrap ``fn(..., w_var, b_var, ...)`` (variances, its implementation) as a public function taking the
    keyword-only standard deviations ``w_std=``, ``b_std=``. Calls in the old form (variances, positional or
    as w_var= / b_var=) keep their meaning for one release, with a DeprecationWarning. Parameters after the
    first variance become keyword-only in the new form."""
    import inspect
    import math

    sig = inspect.signature(fn)
    pairs = [(var, std) for var, std in _PAIRS if var in sig.parameters]
    names = list(sig.parameters)
    first = min(names.index(var) for var, _ in pairs)

    @functools.wraps(fn)
    def public(*args, **kwargs):
        stds = {std: kwargs.pop(std) for _, std in pairs if std in kwargs}
        bound = sig.bind_partial(*args, **kwargs)
        old = []
        for var, std in pairs:
            if std in stds:
                if var in bound.arguments:
                    raise TypeError(f"{public.__name__}() got both {std}= and the variance {var}; pass {std}= only")
                value = stds[std]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0:
                    raise ValueError(f"{std} must be a finite number >= 0, got {value!r}")
                bound.arguments[var] = float(value) ** 2
            elif var in bound.arguments:
                old.append((var, std))
            elif sig.parameters[var].default is inspect.Parameter.empty:
                raise TypeError(f"{public.__name__}() missing required keyword argument {std!r}")
        if old:
            given = " and ".join(var for var, _ in old)
            wanted = ", ".join(f"{std}=" for _, std in old)
            warnings.warn(f"{public.__name__}() with the variance {given} is deprecated: pass the standard deviation "
                          f"{wanted} (keywords; w_std**2 = w_var); variances will be removed in infinet {REMOVAL}",
                          DeprecationWarning, stacklevel=2)
        return fn(*bound.args, **bound.kwargs)

    kinds = inspect.Parameter
    params = [p for i, p in enumerate(sig.parameters.values()) if i < first]
    rest = [p.replace(kind=kinds.KEYWORD_ONLY) for i, p in enumerate(sig.parameters.values())
            if i >= first and p.name not in dict(pairs)]
    stds = [kinds(std, kinds.KEYWORD_ONLY, annotation=float, default=(
        kinds.empty if sig.parameters[var].default is kinds.empty else math.sqrt(sig.parameters[var].default)))
        for var, std in pairs]
    required = [p for p in stds + rest if p.default is kinds.empty]
    optional = [p for p in stds + rest if p.default is not kinds.empty]
    public.__signature__ = sig.replace(parameters=params + required + optional)
    public.__name__ = public.__qualname__ = fn.__name__.lstrip("_")
    public.implementation = fn
    return public
