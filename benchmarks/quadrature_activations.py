"""Activations without a closed form at unequal variances (issue 33): Tanh against Erf and ReLU, in one process.

Workloads (float64, NNGP + NTK, biases everywhere so that variances differ):

  fc     Dense(512, w_std 1.5, b_std 0.1) > act, three times, > Dense(1) on N inputs of dimension 20 with
         unnormalized rows (each row scaled by a factor uniform in [0.2, 3.2]: variances over a range of about
         250); act = Tanh against act = Erf (closed form)
  cnn    five Conv(3x3 SAME, w_std 1.5, b_std 0.1) > act, global average pooling, Dense(1) on N images
         3 x S x S; act = Tanh against act = ReLU
  flatten the same convolutions with Flatten instead of pooling (only position p with position p is needed: the
         diagonal layout, positions a batch axis) on N images 3 x 16 x 16; Tanh against ReLU

Tanh's expectations come from the certified interpolant in (rho, log var1, log var2)
(:mod:`infinet.engine.variance_interpolation`), built on the first call for the variance range it meets and
kept for the process: "first" includes building it, "warm" is a second network of new layer objects on the same
inputs (baseline and warm: the best of ``--repeats`` calls). ``--direct`` also times the direct bivariate
quadrature the interpolant replaces, on ``--direct-n``
inputs (it costs about 4 ms per kernel entry), for the speed-up.

    python benchmarks/quadrature_activations.py [--fc-n 2000] [--cnn-n 8] [--cnn-size 32] [--flatten-n 100]
        [--direct] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import infinet as inf
from infinet.engine import gaussian, variance_interpolation


def fc_inputs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = 0.2 + 3.0 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return torch.randn(n, 20, generator=g, dtype=torch.float64) * scale


def fc(act) -> inf.Layer:
    return inf.serial(*[m for _ in range(3) for m in (inf.Dense(512, 1.5, 0.1), act())], inf.Dense(1, 1.0, 0.1))


def cnn(act) -> inf.Layer:
    return inf.serial(*[m for _ in range(5) for m in (inf.Conv(1, 3, padding="SAME", w_std=1.5, b_std=0.1), act())],
                      inf.GlobalAvgPool(), inf.Dense(1))


def cnn_flatten(act) -> inf.Layer:
    return inf.serial(*[m for _ in range(5) for m in (inf.Conv(1, 3, padding="SAME", w_std=1.5, b_std=0.1), act())],
                      inf.Flatten(), inf.Dense(1))


def seconds(make, x) -> float:
    t0 = time.perf_counter()
    k = make().kernel(x)
    elapsed = time.perf_counter() - t0
    if not bool(torch.isfinite(k.ntk).all()):
        raise RuntimeError("the kernel is not finite")
    return elapsed


def compare(name: str, make, x, act, baseline, repeats: int = 3) -> dict:
    """Baseline and warm: the best of ``repeats`` calls each (this machine's timings vary by up to 1.5x between
    single calls); first: one call, the tables built."""
    variance_interpolation._TABLES.clear()
    base = min(seconds(lambda: make(baseline), x) for _ in range(repeats))
    first = seconds(lambda: make(act), x)
    warm = min(seconds(lambda: make(act), x) for _ in range(repeats))
    out = {"baseline": baseline.__name__, "baseline_s": round(base, 3), "first_s": round(first, 3),
           "warm_s": round(warm, 3), "first_ratio": round(first / base, 2), "warm_ratio": round(warm / base, 2)}
    print(f"{name}: {baseline.__name__} {base:.3f} s; Tanh first {first:.3f} s ({first / base:.1f}x), warm "
          f"{warm:.3f} s ({warm / base:.1f}x)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fc-n", type=int, default=2000)
    ap.add_argument("--cnn-n", type=int, default=8)
    ap.add_argument("--cnn-size", type=int, default=32)
    ap.add_argument("--flatten-n", type=int, default=100)
    ap.add_argument("--direct", action="store_true", help="also time direct quadrature (slow) on --direct-n")
    ap.add_argument("--direct-n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="calls whose best time is the baseline's and warm time")
    args = ap.parse_args()
    results = {"fc": compare(f"fc N={args.fc_n}", fc, fc_inputs(args.fc_n), inf.Tanh, inf.Erf, args.repeats)}
    images = torch.randn(args.cnn_n, 3, args.cnn_size, args.cnn_size, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    results["cnn"] = compare(f"cnn N={args.cnn_n} {args.cnn_size}x{args.cnn_size}", cnn, images, inf.Tanh, inf.Relu,
                             args.repeats)
    small = torch.randn(args.flatten_n, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results["flatten"] = compare(f"cnn-flatten N={args.flatten_n} 16x16", cnn_flatten, small, inf.Tanh,
                                 inf.Relu, args.repeats)
    if args.direct:
        x = fc_inputs(args.direct_n)
        variance_interpolation._TABLES.clear()
        fast = seconds(lambda: fc(inf.Tanh), x)
        original = gaussian._interpolated
        gaussian._interpolated = lambda *a: None
        try:
            slow = seconds(lambda: fc(inf.Tanh), x)
        finally:
            gaussian._interpolated = original
        results["direct"] = {"n": args.direct_n, "direct_s": round(slow, 3), "interpolant_first_s": round(fast, 3),
                             "speedup": round(slow / fast, 1)}
        print(f"fc N={args.direct_n}: direct quadrature {slow:.2f} s, interpolant (first call) {fast:.2f} s: "
              f"{slow / fast:.0f}x", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
