"""Bounded memory of a CNN-GAP kernel over many images: peak RSS against the stated bound.

CNN-GAP (three Conv(3x3, SAME) + Relu, global average pooling, Dense readout), NNGP and NTK in
float64, over N digits images (8x8, so S^2 = 4096 pixel pairs per pair of images). The bound:
the (N, N) outputs (2 x 8 N^2 bytes) plus one tile's working set (at most BYTES_PER_ENTRY x 2^19
entries = 64 MiB) on top of the process's baseline (Python, torch, the data). The full-layout kernel
of all pairs at once would need 2 x 8 N^2 S^2 bytes (N = 1000: 65 GB).

    python benchmarks/conv_memory.py [--n 1000]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import infinet as inf
from infinet import tiling


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    data = inf.datasets.load("digits", n_train=args.n, n_test=1797 - args.n if args.n < 1797 else None, seed=0)
    x = data.x_train
    net = inf.cntk(3)
    net.kernel(x[:4])  # warm up imports and allocator
    baseline = rss_mib()
    t0 = time.perf_counter()
    k = net.kernel(x, progress=True)
    seconds = time.perf_counter() - t0
    outputs = 2 * 8 * args.n**2 / 2**20
    tile = tiling.choose_tile_size(None, None, 64**2, True)
    tile_set = tiling.BYTES_PER_ENTRY * tile**2 * 64**2 / 2**20
    print(f"CNN-GAP kernel of {args.n} images of 1x8x8 (float64, NNGP + NTK): {seconds:.1f} s, "
          f"{args.n * (args.n + 1) / 2 / seconds:,.0f} image pairs per second")
    print(f"peak RSS {rss_mib():.0f} MiB = baseline {baseline:.0f} MiB + {rss_mib() - baseline:.0f} MiB; "
          f"bound: outputs {outputs:.0f} MiB + tile working set {tile_set:.0f} MiB (tile {tile})")
    print(f"the full-layout kernel at once would need {2 * 8 * args.n**2 * 64**2 / 2**30:.0f} GiB")
    assert torch.isfinite(k.ntk).all()


if __name__ == "__main__":
    main()
