"""Compiled CPU loops: ``native_kernels.c`` (the interpolant, closed forms) and ``native_conv.c`` (convolutions),
sharing ``native_math.h``, built once per machine with its own C compiler and loaded with ctypes.

Some steps are many short passes over cache-sized blocks whose cost is the passes themselves (the Clenshaw
recurrence of :mod:`infinet.engine.variance_interpolation`: about 50 per entry). One compiled loop keeps each
entry in registers from the first pass to the last. The source is compiled on the first call that needs it
(about 0.3 s, once per machine: the library is kept in infinet's cache folder,
:func:`infinet.engine.table_cache.root`, under a name that is a SHA-256 of the sources, the compiler, its flags and the CPU's
features, with its SHA-256 beside it, checked before loading) with ``-O3 -march=native
-mprefer-vector-width=512``, or without those where the compiler refuses them.

Nothing depends on it: without a C compiler (``CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH), when
compiling or loading fails, on GPUs, or with ``INFINET_NATIVE=off``, the same steps run in TorchScript with the
same formulas (results then differ in the last bits: the operations' order differs). :func:`status` says which.
The loaded functions release the GIL while they run (ctypes), so the tile pool's threads compute in parallel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

from torch import Tensor

from . import table_cache

#: the C sources compiled together, and the header they share (all part of the library's name)
SOURCES = tuple(pathlib.Path(__file__).with_name(n) for n in ("native_kernels.c", "native_conv.c"))
HEADERS = (pathlib.Path(__file__).with_name("native_math.h"),)
#: flags every build uses (-ffp-contract=fast: a * b + c as one fused multiply-add where the CPU has one;
#: -fno-math-errno: sqrt without errno, so that loops with it vectorize)
FLAGS = ("-O3", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared")
#: flags tried first, dropped from the end when the compiler refuses them (512-bit vectors where the CPU has them:
#: the closed-form loops are compute-bound; GCC prefers 256 bits by default)
TUNED = ("-march=native", "-mprefer-vector-width=512")
#: the largest filter size of the compiled convolution loops (MAX_TAPS in native_conv.c)
MAX_TAPS = 64
#: seconds one compilation may take
TIMEOUT = 120

_LOCK = threading.Lock()
_STATE: dict = {}  # "lib": the loaded library or None, "status": how it was had or why not


def enabled() -> bool:
    """False when ``INFINET_NATIVE=off`` (read at every call, so that tests and users can switch it)."""
    return os.environ.get("INFINET_NATIVE", "on").lower() not in ("off", "0", "no")


def library() -> ctypes.CDLL | None:
    """The compiled library, built or read from the cache on the first call of the process; None where it cannot
    be had (see the module docstring) or is switched off."""
    if not enabled():
        return None
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"], _STATE["status"] = _obtain()
        return _STATE["lib"]


def status() -> str:
    """Where the compiled library came from, or why the TorchScript loops run instead."""
    if not enabled():
        return "switched off (INFINET_NATIVE=off)"
    library()
    return _STATE["status"]


def pointers(tensors: list[Tensor]) -> ctypes.Array:
    """The data pointers of ``tensors`` as a C array of ``double *``."""
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def int64s(values: list[int]) -> ctypes.Array:
    """``values`` as a C array of int64_t."""
    return (ctypes.c_int64 * max(1, len(values)))(*values)


def _compiler() -> str | None:
    named = os.environ.get("CC")
    for name in ([named] if named else ["cc", "gcc", "clang"]):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), so that a shared cache folder never gives a machine a library tuned for
    another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _obtain() -> tuple[ctypes.CDLL | None, str]:
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (CC, cc, gcc or clang): TorchScript loops"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the compiler {compiler} does not run ({e}): TorchScript loops"
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    errors = []
    for flags in [FLAGS + TUNED[:n] for n in range(len(TUNED), -1, -1)]:
        identity = "\n".join([compiler, version, " ".join(flags), platform.machine(), _cpu_features()])
        name = hashlib.sha256(source + identity.encode()).hexdigest()[:40] + ".so"
        folder = table_cache.root()
        kept = None if folder is None else folder / "native" / name
        if kept is not None and _intact(kept):
            try:
                return _bind(ctypes.CDLL(str(kept))), f"read from {kept}"
            except OSError:
                pass  # not loadable: built again below, and replaced
        with tempfile.TemporaryDirectory() as scratch:
            built = pathlib.Path(scratch) / name
            try:
                run = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(built)], capture_output=True,
                                     text=True, timeout=TIMEOUT)
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
                continue
            if run.returncode != 0 or not built.is_file():
                errors.append(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}")
                continue
            data = built.read_bytes()
            if kept is not None and table_cache.write_atomic(kept, data) and table_cache.write_atomic(
                    _digest_file(kept), hashlib.sha256(data).hexdigest().encode()):
                try:
                    return _bind(ctypes.CDLL(str(kept))), f"compiled with {' '.join(flags)} into {kept}"
                except OSError as e:
                    errors.append(str(e))
            try:
                return _bind(ctypes.CDLL(str(built))), f"compiled with {' '.join(flags)} (not kept)"
            except OSError as e:
                errors.append(str(e))
    return None, f"compiling {' and '.join(p.name for p in SOURCES)} failed ({'; '.join(errors)}): TorchScript loops"


def _digest_file(kept: pathlib.Path) -> pathlib.Path:
    return kept.with_suffix(".sha256")


def _intact(kept: pathlib.Path) -> bool:
    """Whether a kept library is the one that was written (its SHA-256 beside it): a truncated or altered file is
    rebuilt, never loaded."""
    try:
        return hashlib.sha256(kept.read_bytes()).hexdigest() == _digest_file(kept).read_text().strip()
    except OSError:
        return False


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the functions' signatures (see native_kernels.c and native_conv.c)."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    f64 = ctypes.c_double
    lib.clenshaw_eval.restype = ctypes.c_int
    lib.clenshaw_eval.argtypes = [i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.interpolation_x.restype = ctypes.c_int
    lib.interpolation_x.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr]
    lib.acos_sine_values.restype = None
    lib.acos_sine_values.argtypes = [i64, ptr, ptr, ptr]
    lib.acos_values.restype = None
    lib.acos_values.argtypes = [i64, ptr, ptr]
    lib.closed_form_pairs.restype = ctypes.c_int
    lib.closed_form_pairs.argtypes = [i64] + [ptr] * 9 + [f64] * 4
    lib.closed_form_chain.restype = ctypes.c_int
    lib.closed_form_chain.argtypes = [i64] * 4 + [ptr] * 10 + [f64]
    lib.atan2_unit_values.restype = None
    lib.atan2_unit_values.argtypes = [i64, ptr, ptr, ptr]
    lib.conv_sums_full.restype = ctypes.c_int
    lib.conv_sums_full.argtypes = [i64] * 5 + [ptr] * 4 + [f64] * 2 + [i64]
    lib.pool_full.restype = ctypes.c_int
    lib.pool_full.argtypes = [i64] * 11 + [ptr] * 2 + [f64]
    lib.conv_relu_full.restype = ctypes.c_int
    lib.conv_relu_full.argtypes = [i64] * 5 + [ptr] * 7 + [f64] * 5
    lib.conv_relu_images.restype = ctypes.c_int
    lib.conv_relu_images.argtypes = [i64] * 5 + [ptr] * 2 + [i64] + [ptr] * 6 + [f64] * 5
    lib.conv_relu_diagonal.restype = ctypes.c_int
    lib.conv_relu_diagonal.argtypes = [i64] * 6 + [ptr] * 2 + [i64] + [ptr] * 7 + [f64] + [i64]
    lib.conv_relu_diagonal_images.restype = ctypes.c_int
    lib.conv_relu_diagonal_images.argtypes = [i64] * 6 + [ptr] * 2 + [i64] + [ptr] * 8 + [f64] + [i64]
    return lib


def address(t: Tensor | None) -> int | None:
    """The data pointer of ``t`` (None for None: a C NULL)."""
    return None if t is None else t.data_ptr()
