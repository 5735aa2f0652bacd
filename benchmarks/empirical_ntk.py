"""Empirical NTK: time and peak memory of each implementation, and neural-tangents' on the same models.

Models (float32, as neural-tangents' default): an MLP 784-512-512-10 (ReLU, biases) on 256 inputs,
and a small CNN (Conv 3x3 x16 > ReLU > Conv 3x3 x16 > ReLU > Flatten > Dense 10 on 1x16x16 images)
on 64 inputs; full (N, N, O, O) and traced (N, N) kernels. Each case runs in a fresh process so that
its peak RSS is its own; the time is the best of ``--repeats`` after one warm-up call (for
neural-tangents, after jit compilation). ``--nt-python PATH`` names a Python with neural-tangents
0.6.5 (see the design notes) to compare with its jacobian contraction, NTK-vector products and
structured derivatives. Prints a table; asserts nothing.

    .venv/bin/python benchmarks/empirical_ntk.py [--nt-python /tmp/ntenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CASES = {"mlp": 256, "cnn": 64}

TORCH_CASE = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from torch import nn
    from infinet.empirical import empirical_ntk, choose_implementation
    torch.manual_seed(0)
    model_name, impl, trace, repeats, n = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
    if model_name == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        x = torch.randn(n, 784)
    else:
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
        x = torch.randn(n, 1, 16, 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chosen = choose_implementation(model, x, x) if impl == "auto" else impl
    out = empirical_ntk(model, x, implementation=impl, trace=trace, max_memory=8 << 30)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = empirical_ntk(model, x, implementation=impl, trace=trace, max_memory=8 << 30)
        best = min(best, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": best, "peak_mib": peak / 1024, "base_mib": before / 1024, "chosen": chosen,
                      "shape": list(out.shape), "checksum": float(out.double().sum())}))
""")

NT_CASE = textwrap.dedent("""
    import sys, types, json, resource, time
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax, jax.numpy as jnp, neural_tangents as nt
    from neural_tangents import stax
    model_name, impl, trace, repeats, n = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
    if model_name == "mlp":
        init, apply, _ = stax.serial(stax.Dense(512, parameterization="standard"), stax.Relu(),
                                     stax.Dense(512, parameterization="standard"), stax.Relu(),
                                     stax.Dense(10, parameterization="standard"))
        shape = (n, 784)
    else:
        init, apply, _ = stax.serial(stax.Conv(16, (3, 3), padding="SAME", parameterization="standard"), stax.Relu(),
                                     stax.Conv(16, (3, 3), padding="SAME", parameterization="standard"), stax.Relu(),
                                     stax.Flatten(), stax.Dense(10, parameterization="standard"))
        shape = (n, 16, 16, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    _, params = init(jax.random.PRNGKey(0), shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = jax.jit(nt.empirical_ntk_fn(apply, trace_axes=(-1,) if trace else (), vmap_axes=0, implementation=impl))
    out = fn(x, None, params).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(x, None, params).block_until_ready()
        best = min(best, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": best, "peak_mib": peak / 1024, "base_mib": before / 1024, "shape": list(out.shape)}))
""")

NT_IMPLEMENTATIONS = {"jacobian": 1, "ntvp": 2, "structured": 3}


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nt-python", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--implementations", default="structured,jacobian,ntvp,auto")
    parser.add_argument("--nt-implementations", default="jacobian,ntvp,structured")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        n = CASES[model]
        for trace in (False, True):
            results = {}
            for impl in args.implementations.split(","):
                results[f"infinet {impl}"] = run([sys.executable, "-c", TORCH_CASE, model, impl, str(int(trace)),
                                                  str(args.repeats), str(n)])
            if args.nt_python:
                for impl in args.nt_implementations.split(","):
                    code = NT_IMPLEMENTATIONS[impl]
                    results[f"neural-tangents {impl}"] = run([args.nt_python, "-c", NT_CASE, model, str(code),
                                                              str(int(trace)), str(args.repeats), str(n)])
            ok = {k: v for k, v in results.items() if "seconds" in v}
            best_nt = min((v["seconds"] for k, v in ok.items() if k.startswith("neural")), default=None)
            for name, r in results.items():
                label = f"{model} N={n} {'traced' if trace else 'full'}"
                if "error" in r:
                    rows.append((label, name, "failed: " + r["error"], "", "", ""))
                    continue
                ratio = f"{best_nt / r['seconds']:.2f}x" if best_nt and name.startswith("infinet") else ""
                rows.append((label, name, f"{r['seconds']:.3f}", f"{r['peak_mib'] - r['base_mib']:.0f}",
                             r.get("chosen", ""), ratio))
    print(f"{'case':<24} {'implementation':<28} {'seconds':>9} {'+peak MiB':>10} {'auto chose':>11} {'vs best NT':>10}")
    for row in rows:
        print(f"{row[0]:<24} {row[1]:<28} {row[2]:>9} {row[3]:>10} {row[4]:>11} {row[5]:>10}")


if __name__ == "__main__":
    main()
