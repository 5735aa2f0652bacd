"""The kernel of ResNet-18 (a copy of torchvision's, tests/_vision_models.py) on CIFAR-sized images: time and peak
memory of from_torch(model, x).kernel(x), float64, NNGP and NTK, in eval mode (the limit of its running
statistics at initialization), beside Monte Carlo of the finite model (empirical NNGP and per-example NTK of
``--networks`` freshly initialized ResNet-18s) in the same process.

Usage: python benchmarks/resnet18_kernel.py [--n 16] [--size 32] [--networks 8].
Prints one line per measurement and a JSON line at the end. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def images(n: int, size: int) -> torch.Tensor:
    """Standard normal images of CIFAR's size (CIFAR-10 itself is not on these machines; the cost does not
    depend on the pixel values)."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import infinet as inf
    from tests._torch_models import torch_monte_carlo
    from tests._vision_models import resnet18

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--networks", type=int, default=8)
    args = parser.parse_args()
    x = images(args.n, args.size)
    model = resnet18(num_classes=1).double().eval()
    start_mem = peak_mib()
    t0 = time.perf_counter()
    arch = inf.from_torch(model, x)
    kernel = arch.kernel(x, progress=False)
    seconds = time.perf_counter() - t0
    kernel_mem = peak_mib()
    rel_se = {name: float((getattr(kernel, name + "_se") / getattr(kernel, name).abs().clamp(min=1e-300)).median())
              for name in ("nngp", "ntk")}
    print(f"infinet kernel, {args.n} images {args.size}x{args.size}: {seconds:.1f} s, peak RSS {kernel_mem:.0f} MiB "
          f"(before {start_mem:.0f}), median relative SE nngp {rel_se['nngp']:.3g}, ntk {rel_se['ntk']:.3g}")
    t0 = time.perf_counter()
    mc = torch_monte_carlo(lambda: resnet18(num_classes=1).eval(), x, n_samples=args.networks, seed=7)
    mc_seconds = time.perf_counter() - t0
    mc_se = {name: float((getattr(mc, name + "_stderr") / getattr(mc, name).abs().clamp(min=1e-300)).median())
             for name in ("nngp", "ntk")}
    print(f"Monte Carlo of {args.networks} finite ResNet-18s: {mc_seconds:.1f} s, median relative SE nngp "
          f"{mc_se['nngp']:.3g}, ntk {mc_se['ntk']:.3g}")
    print(json.dumps({"n": args.n, "size": args.size, "seconds": seconds, "peak_rss_mib": kernel_mem,
                      "relative_se": rel_se, "mc_networks": args.networks, "mc_seconds": mc_seconds,
                      "mc_relative_se": mc_se, "time_ratio_to_mc": seconds / mc_seconds}))


if __name__ == "__main__":
    main()
