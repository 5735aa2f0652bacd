"""Convolutional kernels at realistic sizes: seconds, peak memory, a roofline proxy, and neural-tangents.

Workloads (float64 unless ``--dtype``, NNGP and NTK, inputs from one seed, w_std = sqrt(2), no bias):

  myrtle5_28      Myrtle-5 (``inf.myrtle(5)``) on N = 20 images 1 x 28 x 28  (full pixel-pair layout)
  cnn_gap5_32     depth-5 CNN-GAP (``inf.cntk(5, pooling='gap')``) on N = 8 images 3 x 32 x 32  (full layout)
  cnn_flatten8_28 depth-8 CNN-Flatten (``inf.cntk(8, pooling='flatten')``) on N = 200 images 1 x 28 x 28
                  (same-position layout: no pooling, so only pixel p with pixel p is ever needed)
  small_gap_8, small_flatten_8   the first wave's 8 x 8 workloads (3 and 5 layers, N = 32 and 400)
  cnn_gap21_32    depth-21 CNN-GAP on 32 x 32 x 3 (the incumbent's published GPU figure; ``--gpu``)

Each library runs in a child process of its own (so peak memory is its own): infinet from this
interpreter, neural-tangents 0.6.5 from ``--nt-python`` (a separate virtual environment with jax
0.4.23, never a dependency of infinet). Both compute the same symmetric kernel K(x, x) of the same
inputs (NT in NHWC, jitted: first call with compilation, then warm calls); the script checks that
they agree and prints the ratio of warm medians. neural-tangents computes all N^2 pairs at once and
the (N, S, S) self-covariances besides; infinet computes each unordered pair once.

Roofline proxy (timed in a child process of its own, eager PyTorch only, each pass the best of 5
rounds, on the same cores): the passes the
mathematics needs over the (pairs, S, S) tensors of the N (N + 1) / 2 pairs of a symmetric kernel
(S^2 entries per pair in the full layout, S in the same-position one), each pass timed as one
torch elementwise operation over that many entries (in chunks of one pair, the size infinet's tiles
work on, using all threads). Per layer, with NNGP and NTK:
  Conv        2 passes: the NNGP's window sum (timed as ``mul_``, one read and one write; the taps
              come from cache) and the NTK's window sum plus the new NNGP (timed as ``add(out=)``);
  ReLU        3 passes: ``arccos`` of the correlation, ``sqrt`` of 1 - rho^2 (the two
              transcendental functions of the arc-cosine kernel; the arithmetic around them is
              counted as free), and the NTK times E[phi' phi'] (timed as ``mul(out=)``);
  AvgPool     1 ``mul_`` pass per kernel over its input;  GAP / Flatten  1 ``sum`` per kernel.
The self-covariances are the diagonal pairs, so nothing else is counted. The ratio measured /
roofline says how far the implementation is from these passes. Each pass of the proxy runs over one
pair's chunk again and again, so that its operands stay in cache (on the 2-core development machine,
with 4 MiB of L2 per core and a large L3, copies of up to 32 MiB run at 41-49 GB/s on two threads and
copies of 128 MiB or more at 19 GB/s); a kernel moves each pair's tensors through memory once per layer.
So the same passes are also timed streamed: each on the next chunk of 256 MiB buffers, beyond the
caches (the "streamed" ratio).

infinet runs under each compile mode of ``--modes`` (``INFINET_COMPILE``, see :mod:`infinet.fused`): "off"
and "auto" (the default; it compiles only computations large enough to repay a cold compilation) fuse each
Conv with the ReLU after it into one blocked TorchScript loop on the CPU (:mod:`infinet.engine.conv_fusion`;
no compile step), "on" compiles each ReLU layer's step with TorchInductor instead (its first call includes
compiling, or loading from TorchInductor's on-disk cache). The mode "unfused" is "auto" with the layers
applied one by one (the eager path before the fusion), for the ratio between the two.

    python benchmarks/conv_kernel.py [--nt-python /path/to/venv/bin/python] [--repeats 3]
        [--only myrtle5_28,cnn_gap5_32] [--modes off,on,auto] [--device cuda] [--dtype float32] [--gpu]
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

# name: (N, channels, size, architecture tokens); tokens: c = Conv 3x3 SAME + Relu, p = AvgPool 2,
# g = global average pooling, f = Flatten (each head ends in a Dense readout)
WORKLOADS = {
    "myrtle5_28": (20, 1, 28, "c c p c p c g"),
    "cnn_gap5_32": (8, 3, 32, "c " * 5 + "g"),
    "cnn_flatten8_28": (200, 1, 28, "c " * 8 + "f"),
    "small_gap_8": (32, 1, 8, "c " * 3 + "g"),
    "small_flatten_8": (400, 1, 8, "c " * 5 + "f"),
}
GPU_WORKLOADS = {"cnn_gap21_32": (8, 3, 32, "c " * 21 + "g")}

INFINET_CHILD = textwrap.dedent("""
    import json, math, os, resource, sys, time, numpy as np, torch, infinet as inf
    from infinet.engine import conv_fusion
    conv_fusion.ENABLED = os.environ.get('BENCH_UNFUSED') != '1'
    tokens, path, repeats, device, dtype = sys.argv[1].split(), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    dtype = getattr(torch, dtype)
    x = torch.from_numpy(np.load(path)).to(device=device, dtype=dtype)
    w = math.sqrt(2.0)
    table = {'c': lambda: [inf.Conv(1, 3, padding='SAME', w_std=w), inf.Relu()], 'p': lambda: [inf.AvgPool(2)],
             'g': lambda: [inf.GlobalAvgPool()], 'f': lambda: [inf.Flatten()]}
    net = inf.serial(*[l for t in tokens for l in table[t]()], inf.Dense(1, w_std=w))
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for r in range(repeats + 1):
        sync(); c0, t0 = time.process_time(), time.perf_counter()
        k = net.kernel(x, get=('nngp', 'ntk'), dtype=dtype, progress=False)
        sync(); times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    np.save(path + '.infinet.npy', np.stack([k.nngp.cpu().double().numpy(), k.ntk.cpu().double().numpy()]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else None

    print(json.dumps({'first': times[0], 'warm': times[1:], 'cpu': cpu[1:], 'threads': torch.get_num_threads(),
                      'peak_rss_mb': peak, 'gpu_peak_mb': gpu_peak}))
""")

ROOFLINE_CHILD = textwrap.dedent("""
    import json, math, sys, time, numpy as np, torch
    tokens, path, device, dtype = sys.argv[1].split(), sys.argv[2], sys.argv[4], getattr(torch, sys.argv[5])
    shape = np.load(path, mmap_mode='r').shape
    n, size = shape[0], shape[-1]
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    pairs = n * (n + 1) // 2
    full = 'g' in tokens or 'p' in tokens
    cost = {}
    def ns(op, m, stream):  # seconds per entry of one pass of op over chunks of m entries (best of 5 rounds);
        # stream: each pass on the next chunk of buffers of STREAM entries (beyond the caches), else on one chunk
        if (op, m, stream) not in cost:
            m_eff = max(m, 1 << 16)
            total = max(m_eff, STREAM) // m_eff * m_eff if stream else m_eff
            a = torch.rand(total, dtype=dtype, device=device) * 0.5 + 0.25
            b = torch.rand(total, dtype=dtype, device=device) + 0.5
            out = torch.empty_like(a)
            chunks = [slice(i, i + m_eff) for i in range(0, total, m_eff)]
            run = {'mul_': lambda c: a[c].mul_(1.0), 'add': lambda c: torch.add(a[c], b[c], out=out[c]),
                   'mul': lambda c: torch.mul(a[c], b[c], out=out[c]),
                   'arccos': lambda c: torch.arccos(a[c], out=out[c]),
                   'sqrt': lambda c: torch.sqrt(b[c], out=out[c]), 'sum': lambda c: a[c].sum()}[op]
            reps = max(3, int(1e7 // m_eff), len(chunks))
            best = math.inf
            for _ in range(5):
                run(chunks[-1]); sync(); t0 = time.perf_counter()
                for r in range(reps):
                    run(chunks[r % len(chunks)])
                sync(); best = min(best, (time.perf_counter() - t0) / reps / m_eff)
            cost[(op, m, stream)] = best
            del a, b, out
        return cost[(op, m, stream)]
    STREAM = 1 << 25  # entries (256 MiB of float64) per streamed buffer: beyond the caches of the machines used
    roofline, streaming, passes, s = 0.0, 0.0, 0, size
    for t in tokens:
        e = s**4 if full else s**2  # entries per pair at this layer
        ops = {'c': ['mul_', 'add', 'arccos', 'sqrt', 'mul'], 'p': ['mul_', 'mul_'], 'g': ['sum', 'sum'],
               'f': ['sum', 'sum']}[t]
        for op in ops:
            roofline += pairs * e * ns(op, e, False)
            streaming += pairs * e * ns(op, e, True)
        passes += len(ops)
        if t == 'p':
            s //= 2
    print(json.dumps({'roofline_s': roofline, 'streaming_s': streaming, 'passes': passes, 'pairs': pairs}))
""")

NT_CHILD = textwrap.dedent("""
    import json, resource, sys, time, types
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np
    from neural_tangents import stax
    tokens, path, repeats, dtype = sys.argv[1].split(), sys.argv[2], int(sys.argv[3]), sys.argv[5]
    x = np.load(path).transpose(0, 2, 3, 1).astype(dtype)  # NCHW -> NHWC
    w = np.sqrt(2.0)
    table = {'c': lambda: [stax.Conv(1, (3, 3), padding='SAME', W_std=w), stax.Relu()],
             'p': lambda: [stax.AvgPool((2, 2), strides=(2, 2))], 'g': lambda: [stax.GlobalAvgPool()],
             'f': lambda: [stax.Flatten()]}
    _, _, kernel_fn = stax.serial(*[l for t in tokens for l in table[t]()], stax.Dense(1, W_std=w))
    kernel_fn = jax.jit(kernel_fn, static_argnames='get')
    times, cpu = [], []
    for r in range(repeats + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        nngp, ntk = kernel_fn(x, None, ('nngp', 'ntk'))
        nngp.block_until_ready(); ntk.block_until_ready()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    np.save(path + '.nt.npy', np.stack([np.asarray(nngp, dtype=np.float64), np.asarray(ntk, dtype=np.float64)]))
    print(json.dumps({'first': times[0], 'warm': times[1:], 'cpu': cpu[1:], 'threads': None,
                      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def run_child(python: str, code: str, args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                         env=None if env is None else dict(os.environ, **env))
    if out.returncode != 0:
        raise RuntimeError(f"child {python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(label: str, r: dict) -> str:
    warm = statistics.median(r["warm"])
    util = statistics.median(c / t for c, t in zip(r["cpu"], r["warm"])) / os.cpu_count()
    gpu = f"   GPU peak {r['gpu_peak_mb']:.0f} MiB" if r.get("gpu_peak_mb") else ""
    return (f"  {label:<16} first call {r['first']:8.3f} s   warm median {warm:8.3f} s (best {min(r['warm']):.3f})"
            f"   CPU {100 * util:5.1f}% of {os.cpu_count()} cores   peak RSS {r['peak_rss_mb']:7.0f} MiB{gpu}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nt-python", help="python of a virtual environment with neural-tangents 0.6.5 and jax 0.4.23")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="comma-separated workload names")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--gpu", action="store_true", help="add the depth-21 CNN-GAP (per-entry milliseconds)")
    ap.add_argument("--modes", default="off,on,auto",
                    help="INFINET_COMPILE settings to run infinet under (see infinet.fused), or 'unfused'")
    args = ap.parse_args()
    workloads = dict(WORKLOADS, **(GPU_WORKLOADS if args.gpu else {}))
    if args.only:
        workloads = {k: workloads[k] for k in args.only.split(",")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (n, channels, size, tokens) in workloads.items():
            path = os.path.join(tmp, f"{name}.npy")
            np.save(path, np.random.default_rng(0).normal(size=(n, channels, size, size)))
            child_args = [tokens, path, str(args.repeats), args.device, args.dtype]
            print(f"{name}: N = {n}, {channels} x {size} x {size}, layers '{tokens}', {args.dtype}, NNGP + NTK, "
                  f"{args.device}", flush=True)
            results[name] = {}
            roof = run_child(sys.executable, ROOFLINE_CHILD, child_args)
            print(f"  roofline proxy {roof['roofline_s']:.3f} s ({roof['passes']} passes per pair, "
                  f"{roof['pairs']} pairs); the same passes streamed from memory {roof['streaming_s']:.3f} s",
                  flush=True)
            for mode in args.modes.split(","):
                env = {"INFINET_COMPILE": "auto", "BENCH_UNFUSED": "1"} if mode == "unfused" else {"INFINET_COMPILE": mode}
                ours = run_child(sys.executable, INFINET_CHILD, child_args, env=env)
                warm = statistics.median(ours["warm"])
                print(summary(f"infinet {mode}", ours))
                print(f"    infinet {mode} / roofline = {warm / roof['roofline_s']:.2f}x (streamed "
                      f"{warm / roof['streaming_s']:.2f}x);  {1e3 * warm / n**2:.3f} ms per kernel entry (N^2 entries)",
                      flush=True)
                results[name][mode] = {"infinet": ours, "over_roofline": warm / roof["roofline_s"],
                                       "over_streaming": warm / roof["streaming_s"],
                                       "ms_per_entry": 1e3 * warm / n**2, "warm_s": warm}
            results[name]["roofline_s"] = roof["roofline_s"]
            results[name]["streaming_s"] = roof["streaming_s"]
            if args.nt_python:
                try:
                    theirs = run_child(args.nt_python, NT_CHILD, child_args)
                except RuntimeError as e:
                    print(f"  neural-tangents failed: {str(e).splitlines()[-1]}")
                    continue
                print(summary("neural-tangents", theirs))
                a, b = np.load(path + ".infinet.npy"), np.load(path + ".nt.npy")
                rel = float(np.abs(a - b).max() / np.abs(b).max())
                for mode, r in results[name].items():
                    if mode in ("roofline_s", "streaming_s"):
                        continue
                    ratio = r["warm_s"] / statistics.median(theirs["warm"])
                    print(f"  infinet {mode} / neural-tangents (warm medians): {ratio:.3f}x (first calls "
                          f"{r['infinet']['first'] / theirs['first']:.3f}x)")
                    r["time_ratio_vs_nt"] = ratio
                print(f"  max |difference| / max |K| (last infinet run vs neural-tangents) = {rel:.2e}", flush=True)
                results[name]["nt"] = {"warm_s": statistics.median(theirs["warm"]), "first_s": theirs["first"],
                                       "peak_rss_mb": theirs["peak_rss_mb"], "max_rel_difference": rel}
    print(json.dumps({k: {m: ({kk: vv for kk, vv in r.items() if kk != "infinet"} if isinstance(r, dict) else r)
                          for m, r in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
