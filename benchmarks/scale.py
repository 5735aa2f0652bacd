"""Scaling study for infinet.scale: kernel entries per second with 1 and 2 Dask workers (same job, same
process, fresh stores), and peak memory while building and solving a kernel larger than memory would
allow dense in float64 (default N = 60,000 Fashion-MNIST images, fully-connected, stored as float32:
14.4 GB on disk; dense float64 would need 28.8 GB on this 24 GiB machine).

    .venv/bin/python benchmarks/scale.py throughput [--n 6000 --tile 1000]
    .venv/bin/python benchmarks/scale.py large [--n 60000 --store /tmp/big --cg-iterations 5]

Peak memory is the peak RSS of this process and of the workers (sampled every 0.2 s); prints figures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import torch

ARCH = "Dense(512, w_std=1.4, b_std=0.1) > Relu() > Dense(512, w_std=1.4, b_std=0.1) > Relu() > Dense(10, w_std=1.4, b_std=0.1)"


class PeakRSS:
    """Samples the summed RSS of this process and its children (the Dask workers)."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, False

    def _total(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:
                pass
        return total

    def __enter__(self):
        def loop():
            while not self.stop:
                self.peak = max(self.peak, self._total())
                time.sleep(0.2)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def load(n: int) -> torch.Tensor:
    from infinet.datasets import load as load_data

    if n <= 5000:
        return load_data("mnist5k", n_train=min(n, 4990), n_test=10).flat().x_train
    return load_data("fashion_mnist", n_train=n, n_test=100).flat().x_train


def throughput(args) -> None:
    from infinet.scale import kernel_to_store

    x = load(args.n)
    for workers in (1, 2):
        path = f"{args.store}_w{workers}"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        report = kernel_to_store(ARCH, x, path, dtype="float32", tile_size=args.tile, workers=workers)
        seconds = time.perf_counter() - t
        entries = args.n * args.n
        print(f"workers {workers}: {report.tiles_computed} tiles, {seconds:.1f} s (incl. cluster start), "
              f"{entries / seconds:.3g} kernel entries/s (NNGP + NTK, float32 store)")
        shutil.rmtree(path, ignore_errors=True)


def large(args) -> None:
    from infinet.scale import kernel_to_store, solve_store

    x = load(args.n)
    with PeakRSS() as mem:
        t = time.perf_counter()
        report = kernel_to_store(ARCH, x, args.store, get="nngp", dtype="float32", tile_size=args.tile,
                                 workers=args.workers, progress=True)
        build = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.store) for f in files)
    print(f"build N={args.n}: {report.tiles_computed} tiles computed ({report.tiles_skipped} resumed), {build:.0f} s, "
          f"store {size / 1e9:.1f} GB, peak RSS (all processes) {mem.peak / 2**30:.2f} GiB")
    y = torch.randn(args.n, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with PeakRSS() as mem:
        t = time.perf_counter()
        _, cg = solve_store(args.store, y, diag_reg=1e-3, max_iter=args.cg_iterations, preconditioner_rank=50)
        solve = time.perf_counter() - t
    print(f"solve: {cg.iterations} CG iterations in {solve:.0f} s ({solve / max(cg.iterations, 1):.0f} s each incl. the "
          f"preconditioner), relative residual {cg.residuals[-1]:.2e}, peak RSS {mem.peak / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "large"))
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--tile", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default="/tmp/infinet_scale_store")
    parser.add_argument("--cg-iterations", type=int, default=5)
    args = parser.parse_args()
    if args.mode == "throughput":
        args.n = args.n or 4990
        throughput(args)
    else:
        args.n = args.n or 60000
        large(args)


if __name__ == "__main__":
    main()
