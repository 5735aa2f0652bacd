"""Kernel time on a quiet machine and beside a busy 2-thread torch process (issue 16, defect 8).

Workload: the NNGP and NTK (float64) of a depth-5 CNN-GAP (Conv 3x3 SAME + Relu, w_std 1.5,
b_std 0.05, global average pooling, Dense readout) on eight 28x28 single-channel images. Each library
runs in a child process of its own; "busy" means a second process runs a 2-thread torch matrix-product
loop (1024 x 1024, float32) for the whole measurement. Reported: median seconds quiet and busy, and the
slowdown busy / quiet, for

  * infinet (tiles T at a time, single-threaded operations: the default),
  * infinet with INFINET_TILE_POOL=0 (one tile at a time with T-threaded operations: the old way),
  * neural-tangents 0.6.5 (jitted) from ``--nt-python`` (a separate virtual environment).

    python benchmarks/under_load.py [--nt-python /path/to/venv/bin/python] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

INFINET_CHILD = textwrap.dedent("""
    import json, sys, time, numpy as np, torch, infinet as inf
    x = torch.from_numpy(np.load(sys.argv[1])); repeats = int(sys.argv[2])
    layers = [l for _ in range(5) for l in (inf.Conv(1, 3, padding='SAME', w_std=1.5, b_std=0.05), inf.Relu())]
    net = inf.serial(*layers, inf.GlobalAvgPool(), inf.Dense(1, w_std=1.5, b_std=0.05))
    net.kernel(x[:2])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); k = net.kernel(x); times.append(time.perf_counter() - t0)
    print(json.dumps(times))
""")

NT_CHILD = textwrap.dedent("""
    import json, sys, time, types
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np
    from neural_tangents import stax
    x = np.load(sys.argv[1]).transpose(0, 2, 3, 1); repeats = int(sys.argv[2])
    layers = [l for _ in range(5) for l in (stax.Conv(1, (3, 3), padding='SAME', W_std=1.5, b_std=0.05), stax.Relu())]
    _, _, kernel_fn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, W_std=1.5, b_std=0.05))
    kernel_fn = jax.jit(kernel_fn, static_argnames='get')
    kernel_fn(x, None, ('nngp', 'ntk'))[0].block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); nngp, ntk = kernel_fn(x, None, ('nngp', 'ntk'))
        nngp.block_until_ready(); ntk.block_until_ready(); times.append(time.perf_counter() - t0)
    print(json.dumps(times))
""")

BUSY = textwrap.dedent("""
    import torch
    torch.set_num_threads(2)
    a = torch.randn(1024, 1024)
    while True:
        a = torch.tanh(a @ a / 32.0)
""")


def child(python: str, code: str, path: str, repeats: int, env: dict | None = None) -> list[float]:
    out = subprocess.run([python, "-c", code, path, str(repeats)], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(label, python, code, path, repeats, env=None) -> dict:
    quiet = child(python, code, path, repeats, env)
    busy_proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(2.0)  # let the busy loop reach its steady state
        busy = child(python, code, path, repeats, env)
    finally:
        busy_proc.kill()
        busy_proc.wait()
    q, b = statistics.median(quiet), statistics.median(busy)
    print(f"  {label:<34} quiet {q:7.2f} s   busy {b:7.2f} s   slowdown {b / q:5.2f}x", flush=True)
    return {"quiet": quiet, "busy": busy, "slowdown": b / q}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nt-python", help="python of a virtual environment with neural-tangents 0.6.5 and jax 0.4.23")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"depth-5 CNN-GAP, eight 28x28 images, float64 NNGP + NTK, {os.cpu_count()} cores; busy = a 2-thread "
          "torch matmul loop in another process")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        np.save(path, np.random.default_rng(0).normal(size=(8, 1, 28, 28)))
        results["infinet"] = measure("infinet (tile pool, default)", sys.executable, INFINET_CHILD, path, args.repeats)
        results["infinet_old"] = measure("infinet INFINET_TILE_POOL=0 (old way)", sys.executable, INFINET_CHILD, path,
                                         args.repeats, {"INFINET_TILE_POOL": "0"})
        if args.nt_python:
            results["neural_tangents"] = measure("neural-tangents 0.6.5 (jit)", args.nt_python, NT_CHILD, path,
                                                 args.repeats)
    print(json.dumps({k: round(v["slowdown"], 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
