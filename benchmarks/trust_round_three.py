"""The memory and time blow-ups of the third trust round, measured: each workload in a fresh interpreter,
peak resident memory above the peak after importing infinet (ru_maxrss) and wall time.

  sklearn_gradient N   NNGPKernel(Dense > Tanh > Dense)(X, eval_gradient=True) on N points of unequal norms
  ntvp N               empirical_ntk(implementation='ntvp', max_memory=500 MB) of two 16-channel convolutions
                       and a readout on N images 3 x 32 x 32
  tanh N               fully_connected(width=1, depth=1, Tanh, w_std=1.5, b_std=0.5) on linspace(-1, 1, N)
  maxpool N            Conv > MaxPool(2, Relu) > Flatten > Dense on N images 1 x 6 x 6 (sampled kernel)

Usage: python benchmarks/trust_round_three.py [WORKLOAD=N ...]  (default: the sizes the issue names).
Prints one line per workload and a JSON line at the end. Never asserts anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BODIES = {
    "sklearn_gradient": """
        from infinet.inference.sklearn_kernels import NNGPKernel
        k = NNGPKernel(inf.serial(inf.Dense(64, b_std=0.1), inf.Tanh(), inf.Dense(1, b_std=0.1)), w_std=1.3, b_std=0.2)
        x = np.random.RandomState(0).randn(N, 3) * np.linspace(0.5, 2.0, N)[:, None]
        k(x, eval_gradient=True)
    """,
    "ntvp": """
        from torch import nn
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 32 * 32, 1)).double()
        x = torch.randn(N, 3, 32, 32, dtype=torch.float64)
        inf.empirical_ntk(m, x, implementation="ntvp", trace=True, max_memory=500 * 2**20)
    """,
    "tanh": """
        from infinet.app.experiments._common import fully_connected
        net = fully_connected(width=1, depth=1, n_out=1, w_std=1.5, b_std=0.5, activation=inf.Tanh)
        net.kernel(torch.linspace(-1, 1, N)[:, None])
    """,
    "maxpool": """
        net = inf.serial(inf.Conv(8, 3, padding="SAME"), inf.MaxPool(2, activation=inf.Relu()), inf.Flatten(),
                         inf.Dense(1))
        net.kernel(torch.randn(N, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    """,
}
DEFAULT = [("sklearn_gradient", 10), ("sklearn_gradient", 40), ("ntvp", 20), ("ntvp", 60), ("ntvp", 120),
           ("tanh", 401), ("maxpool", 8), ("maxpool", 100)]


def measure(name: str, n: int) -> dict:
    script = "\n".join([
        "import resource, time, torch, infinet as inf, numpy as np",
        f"N = {n}",
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "start = time.perf_counter()",
        textwrap.dedent(BODIES[name]).strip(),
        "print(time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if out.returncode != 0:
        return {"workload": name, "n": n, "error": out.stderr.strip().splitlines()[-1]}
    seconds, mib = map(float, out.stdout.split())
    return {"workload": name, "n": n, "seconds": round(seconds, 2), "peak_mib": round(mib)}


def main(argv: list[str]) -> None:
    jobs = [(a.split("=")[0], int(a.split("=")[1])) for a in argv] or DEFAULT
    rows = []
    for name, n in jobs:
        row = measure(name, n)
        rows.append(row)
        print(f"{name:17s} N={n:<5d} " + (row.get("error") or f"{row['seconds']:8.2f} s   peak +{row['peak_mib']} MiB"),
              flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
