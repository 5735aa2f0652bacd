"""Interpolation tables of quadrature activations kept on disk, so that only the first process that meets an
activation and a variance range builds its table (seconds); every later one reads it (milliseconds).

A table (:class:`infinet.engine.variance_interpolation.Table`) is fixed by the activation (an infinet class and
its arguments), the quadrature rule, the variance range and the code that builds it. The file name is a SHA-256
of all of these, the installed torch version and the source of the modules that compute tables included, so a
changed formula or rule never reads an old table. Each file holds its own key and a SHA-256 of its numbers,
checked on reading: a file that does not match (truncated, edited, from another version) is ignored and
rebuilt, never used. Files are written to a temporary name and renamed, so readers never see half a file.

Where: ``INFINET_CACHE_DIR``, else ``$XDG_CACHE_HOME/infinet``, else ``~/.cache/infinet``; the tables sit in
its ``tables`` folder (a few hundred kB each). ``INFINET_CACHE=off`` reads and writes nothing. A folder that
cannot be written only costs the rebuild.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import tempfile
from functools import lru_cache

import torch

VERSION = 1  # of the file layout


def root() -> pathlib.Path | None:
    """infinet's cache folder (``INFINET_CACHE_DIR``, else ``$XDG_CACHE_HOME/infinet``, else
    ``~/.cache/infinet``), or None when ``INFINET_CACHE=off``."""
    if os.environ.get("INFINET_CACHE", "on").lower() in ("off", "0", "no"):
        return None
    folder = os.environ.get("INFINET_CACHE_DIR")
    if not folder:
        xdg = os.environ.get("XDG_CACHE_HOME")
        folder = os.path.join(xdg, "infinet") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "infinet")
    return pathlib.Path(folder)


def directory() -> pathlib.Path | None:
    """The folder of cached tables, or None when ``INFINET_CACHE=off``."""
    folder = root()
    return None if folder is None else folder / "tables"


def write_atomic(path: pathlib.Path, data: bytes) -> bool:
    """Write ``data`` to a temporary name beside ``path`` and rename it there (readers never see half a file);
    False when the folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            f.write(data)
            name = f.name
        os.replace(name, path)
        return True
    except OSError:
        return False


def persistent_key(identity, nodes, extra_panels, device: str, lo: float, hi: float) -> str | None:
    """The text that fixes a table, or None when it cannot be kept across processes: ``identity`` must be
    (class, arguments) of an infinet activation with plain numeric or text arguments (a user's function or
    subclass is kept in memory only)."""
    if not (isinstance(identity, tuple) and len(identity) == 2 and isinstance(identity[0], type)):
        return None
    cls, args = identity
    if not cls.__module__.startswith("infinet.") or not isinstance(args, tuple):
        return None
    if not all(isinstance(a, (bool, int, float, str)) for a in args):
        return None
    return (f"v{VERSION}|{cls.__module__}.{cls.__qualname__}{args!r}|nodes={nodes!r}|panels={extra_panels!r}|"
            f"device={torch.device(device).type}|lo={lo!r}|hi={hi!r}|torch={torch.__version__}|code={_code()}")


#: the modules whose source decides a table's numbers (read as files: importing them here would be a cycle)
SOURCES = ("chebyshev.py", "closed_forms.py", "gaussian.py", "variance_interpolation.py",
           "layers/quadrature_activations.py")


@lru_cache(maxsize=None)
def _code() -> str:
    """SHA-256 of the source of the modules whose code decides a table's numbers (:data:`SOURCES`)."""
    here = pathlib.Path(__file__).parent
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def _path(key: str) -> pathlib.Path | None:
    folder = directory()
    return None if folder is None else folder / (hashlib.sha256(key.encode()).hexdigest() + ".pt")


def _digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def load(key: str) -> tuple[bool, dict | None]:
    """(found, tensors): tensors of the table stored under ``key`` (None for a range recorded as unresolved),
    found False when there is no valid file."""
    path = _path(key)
    if path is None or not path.is_file():
        return False, None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("key") != key:
            return False, None
        tensors = stored.get("tensors")
        if tensors is None:
            return True, None
        if not isinstance(tensors, dict) or stored.get("digest") != _digest(tensors):
            return False, None
        return True, tensors
    except Exception:  # noqa: BLE001 - unreadable or foreign file: rebuilt, never used
        return False, None


def save(key: str, tensors: dict | None) -> None:
    """Store a table's tensors (None: the range is unresolved) under ``key``; failures only cost a rebuild later."""
    path = _path(key)
    if path is None:
        return
    stored = {"key": key, "tensors": None}
    if tensors is not None:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        stored.update(tensors=tensors, digest=_digest(tensors))
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    write_atomic(path, buffer.getvalue())
