"""Infinite-depth simulation speed: 10,000 residual networks of width 8 and depth 1,000 (ReLU), vectorized
over networks (one batched matrix-vector product per layer), against a baseline in the same process:
the same networks one at a time for 100 of them (a Python loop over networks), extrapolated.

    .venv/bin/python benchmarks/depth.py [--networks 10000 --width 8 --depth 1000]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from infinet.depth import simulate_resnet


def one_at_a_time(width: int, depth: int, count: int) -> float:
    gen = torch.Generator().manual_seed(1)
    t = time.perf_counter()
    for _ in range(count):
        y = torch.randn(width, generator=gen, dtype=torch.float64)
        for _ in range(depth):
            w = torch.randn(width, width, generator=gen, dtype=torch.float64)
            y = y + (w @ torch.relu(y)) / math.sqrt(width * depth)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=10000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    best = math.inf
    for r in range(args.repeats):
        t = time.perf_counter()
        out = simulate_resnet("relu", args.width, args.depth, args.networks, seed=r, record_every=args.depth // 10)
        best = min(best, time.perf_counter() - t)
    loop = one_at_a_time(args.width, args.depth, 100) * args.networks / 100
    print(f"{args.networks} networks, width {args.width}, depth {args.depth} (float64, CPU threads "
          f"{torch.get_num_threads()}): vectorized {best:.2f} s (best of {args.repeats}); a Python loop over networks "
          f"would take ~{loop:.0f} s (measured on 100) -> {loop / best:.0f}x; recorded {tuple(out['y'].shape)}")


if __name__ == "__main__":
    main()
