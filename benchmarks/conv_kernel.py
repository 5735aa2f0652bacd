"""Convolutional kernels: seconds, peak memory and CPU utilization, against neural-tangents.

Workloads (float64, NNGP and NTK, w_std 1.5, b_std 0.05, inputs N x 1 x 8 x 8 from one seed):
  (a) CNN-GAP: three Conv(3x3, SAME) + Relu, global average pooling, Dense readout, N = 32;
  (b) CNN-Flatten: five Conv(3x3, SAME) + Relu, Flatten, Dense readout, N = 400.

Each library runs in a child process of its own (so peak memory is its own): infinet from this
interpreter, neural-tangents 0.6.5 from ``--nt-python`` (a separate virtual environment with jax
0.4.23, never a dependency of infinet). Both compute the same kernels from the same inputs (NT in
NHWC); the script checks they agree and prints the speed ratio. NT is timed jitted (its fast path),
first call (with compilation) and warm calls separately; infinet has no compilation step.

    python benchmarks/conv_kernel.py [--nt-python /path/to/venv/bin/python] [--repeats 7]
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

import numpy as np

WORKLOADS = {"cnn_gap": (32, 3, "gap"), "cnn_flatten": (400, 5, "flatten")}

INFINET_CHILD = textwrap.dedent("""
    import json, resource, sys, time, numpy as np, torch, infinet as inf
    name, depth, head, path, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    x = torch.from_numpy(np.load(path))
    layers = [l for _ in range(depth) for l in (inf.Conv(1, 3, padding='SAME', w_std=1.5, b_std=0.05), inf.Relu())]
    readout = [inf.GlobalAvgPool()] if head == 'gap' else [inf.Flatten()]
    net = inf.serial(*layers, *readout, inf.Dense(1, w_std=1.5, b_std=0.05))
    times, cpu = [], []
    for r in range(repeats + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        k = net.kernel(x, get=('nngp', 'ntk'))
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    np.save(path + '.infinet.npy', np.stack([k.nngp.numpy(), k.ntk.numpy()]))
    print(json.dumps({'first': times[0], 'warm': times[1:], 'cpu': cpu[1:], 'threads': torch.get_num_threads(),
                      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

NT_CHILD = textwrap.dedent("""
    import json, resource, sys, time, types
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np
    from neural_tangents import stax
    name, depth, head, path, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    x = np.load(path).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    layers = [l for _ in range(depth) for l in (stax.Conv(1, (3, 3), padding='SAME', W_std=1.5, b_std=0.05), stax.Relu())]
    readout = [stax.GlobalAvgPool()] if head == 'gap' else [stax.Flatten()]
    _, _, kernel_fn = stax.serial(*layers, *readout, stax.Dense(1, W_std=1.5, b_std=0.05))
    kernel_fn = jax.jit(kernel_fn, static_argnames='get')
    times, cpu = [], []
    for r in range(repeats + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        nngp, ntk = kernel_fn(x, None, ('nngp', 'ntk'))
        nngp.block_until_ready(); ntk.block_until_ready()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    np.save(path + '.nt.npy', np.stack([np.asarray(nngp), np.asarray(ntk)]))
    print(json.dumps({'first': times[0], 'warm': times[1:], 'cpu': cpu[1:], 'threads': None,
                      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def run_child(python: str, code: str, args: list[str]) -> dict:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(label: str, r: dict) -> str:
    warm = statistics.median(r["warm"])
    util = statistics.median(c / t for c, t in zip(r["cpu"], r["warm"])) / os.cpu_count()
    return (f"  {label:<16} first call {r['first']:7.3f} s   warm median {warm:7.3f} s (best {min(r['warm']):.3f})"
            f"   CPU utilization {100 * util:5.1f}% of {os.cpu_count()} cores   peak RSS {r['peak_rss_mb']:7.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nt-python", help="python of a virtual environment with neural-tangents 0.6.5 and jax 0.4.23")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (n, depth, head) in WORKLOADS.items():
            path = os.path.join(tmp, f"{name}.npy")
            np.save(path, np.random.default_rng(0).normal(size=(n, 1, 8, 8)))
            child_args = [name, str(depth), head, path, str(args.repeats)]
            print(f"{name}: N = {n}, depth {depth}, head {head}, float64, NNGP + NTK")
            ours = run_child(sys.executable, INFINET_CHILD, child_args)
            print(summary("infinet", ours))
            results[name] = {"infinet": ours}
            if args.nt_python:
                theirs = run_child(args.nt_python, NT_CHILD, child_args)
                print(summary("neural-tangents", theirs))
                a, b = np.load(path + ".infinet.npy"), np.load(path + ".nt.npy")
                rel = float(np.abs(a - b).max() / np.abs(b).max())
                ratio = statistics.median(theirs["warm"]) / statistics.median(ours["warm"])
                first = theirs["first"] / ours["first"]
                print(f"  speed-up vs neural-tangents (warm medians): {ratio:.2f}x; first calls: {first:.2f}x;"
                      f" max |difference| / max |K| = {rel:.2e}")
                results[name].update(nt=theirs, speedup_warm=ratio, speedup_first=first, max_rel_difference=rel)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk.startswith(("speed", "max"))} for k, v in results.items()}))


if __name__ == "__main__":
    main()
