"""Benchmark: NNGP + NTK of a depth-3 ReLU network, Dense(512) layers, N = 4000 inputs of d = 784, float64.

Compares against a roofline proxy measured in the same process: the input Gram product x @ x.T
plus one elementwise pass per layer over an N x N matrix (3 hidden layers -> 3 passes). Prints
seconds (median and best of --repeats runs), the ratio to the proxy, and peak resident memory of
each phase (Linux: VmHWM after resetting it through /proc/self/clear_refs). Never asserts.

With ``--nt-python`` (a separate virtual environment with neural-tangents 0.6.5 and jax 0.4.23, never a
dependency) the same kernel by neural-tangents in a child process (jitted, warm median after a compiling call),
the ratio of warm medians and the largest difference of the two kernels.

    python benchmarks/fc_kernel.py [--n 4000] [--repeats 3] [--tile-size T] [--nt-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import textwrap
import time

import numpy as np
import torch

import infinet as inf


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _timed(fn, repeats: int):
    times, peaks = [], []
    for _ in range(repeats):
        _reset_peak()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        peaks.append(_peak_mib())
        del out
    return statistics.median(times), min(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--nt-python", help="python of a virtual environment with neural-tangents 0.6.5")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=gen, dtype=torch.float64)
    net = inf.serial(
        inf.Dense(512, w_std=1.4, b_std=0.1), inf.Relu(),
        inf.Dense(512, w_std=1.4, b_std=0.1), inf.Relu(),
        inf.Dense(512, w_std=1.4, b_std=0.1), inf.Relu(),
        inf.Dense(1, w_std=1.4, b_std=0.1),
    )
    layers = 3

    def proxy():
        gram = x @ x.T
        buf = torch.empty_like(gram)
        for _ in range(layers):
            torch.add(gram, 1.0, out=buf)
        return gram, buf

    def ours():
        return net.kernel(x, get=("nngp", "ntk"), tile_size=args.tile_size)

    ours()  # warm-up (allocator, thread pool)
    proxy()
    base_rss = _peak_mib()
    p_med, p_best, p_peak = _timed(proxy, args.repeats)
    o_med, o_best, o_peak = _timed(ours, args.repeats)
    out_mib = 2 * args.n * args.n * 8 / 2**20
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"workload: depth-3 ReLU, Dense(512), N={args.n}, d={args.d}, float64, NNGP+NTK")
    print(f"proxy  (x @ x.T + {layers} elementwise passes): median {p_med:.3f}s  best {p_best:.3f}s  peak RSS {p_peak:.0f} MiB")
    print(f"infinet net.kernel:                       median {o_med:.3f}s  best {o_best:.3f}s  peak RSS {o_peak:.0f} MiB")
    print(f"ratio infinet / proxy: median {o_med / p_med:.2f}x  best {o_best / p_best:.2f}x  (target <= 2x)")
    print(f"outputs (nngp + ntk) are {out_mib:.0f} MiB; process RSS before timing {base_rss:.0f} MiB")
    if args.nt_python:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.npy")
            np.save(path, x.numpy())
            out = subprocess.run([args.nt_python, "-c", NT_CHILD, path, str(args.repeats)], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise SystemExit(f"neural-tangents failed:\n{out.stderr[-2000:]}")
            theirs = json.loads(out.stdout.strip().splitlines()[-1])
            k = ours()
            diff = float(np.abs(np.load(path + ".ntk.npy") - k.ntk.numpy()).max() / k.ntk.abs().max())
        print(f"neural-tangents (jitted, warm): median {theirs['median']:.3f}s  best {theirs['best']:.3f}s  "
              f"(first call {theirs['first']:.3f}s)")
        print(f"ratio infinet / neural-tangents: median {o_med / theirs['median']:.3f}x  best "
              f"{o_best / theirs['best']:.3f}x;  max |NTK difference| / max |NTK| = {diff:.1e}")


NT_CHILD = textwrap.dedent("""
    import json, statistics, sys, time, types
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np
    from neural_tangents import stax
    x = np.load(sys.argv[1]); repeats = int(sys.argv[2])
    layers = [l for _ in range(3) for l in (stax.Dense(512, W_std=1.4, b_std=0.1), stax.Relu())]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.4, b_std=0.1))
    kernel_fn = jax.jit(kernel_fn, static_argnames='get')
    t0 = time.perf_counter(); kernel_fn(x, None, ('nngp', 'ntk'))[1].block_until_ready(); first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); nngp, ntk = kernel_fn(x, None, ('nngp', 'ntk'))
        ntk.block_until_ready(); times.append(time.perf_counter() - t0)
    np.save(sys.argv[1] + '.ntk.npy', np.asarray(ntk))
    print(json.dumps({'first': first, 'median': statistics.median(times), 'best': min(times)}))
""")


if __name__ == "__main__":
    main()
