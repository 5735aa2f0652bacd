"""Scaling study for infinet.scale: kernel entries per second with 1 and 2 Dask workers (same job, same
process, fresh stores), and peak memory while building and solving a kernel larger than memory would
allow dense in float64 (default N = 60,000 Fashion-MNIST images, fully-connected, stored as float32:
14.4 GB on disk; dense float64 would need 28.8 GB on this 24 GiB machine).

    .venv/bin/python benchmarks/scale.py throughput [--n 10000 --tile 1000]
    .venv/bin/python benchmarks/scale.py large [--n 60000 --n-test 10000 --store /tmp/big --rank 500 --tol 1e-6 --preconditioner nystrom]

Peak memory is the peak RSS of this process and of the workers (sampled every 0.2 s); prints figures,
asserts nothing. `large` resumes existing stores (delete them for a timed build).
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


def load(n: int, n_test: int = 10):
    from infinet.datasets import load as load_data

    if n <= 4990:
        return load_data("mnist5k", n_train=n, n_test=n_test).flat()
    return load_data("fashion_mnist", n_train=n, n_test=n_test).flat()


def throughput(args) -> None:
    """The same job on an in-process LocalCluster of 1 and of 2 workers, the cluster started before the
    clock (its start-up reported apart): kernel entries (NNGP and NTK) per second, and the ratio."""
    from distributed import Client, LocalCluster

    from infinet.scale import kernel_to_store

    x = load(args.n).x_train
    rates = {}
    for workers in (1, 2):
        path = f"{args.store}_w{workers}"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(workers)
            started = time.perf_counter() - t
            t = time.perf_counter()
            report = kernel_to_store(ARCH, x, path, dtype="float32", tile_size=args.tile, client=client)
            seconds = time.perf_counter() - t
        rates[workers] = args.n * args.n / seconds
        print(f"workers {workers}: cluster start {started:.1f} s; {report.tiles_computed} tiles of {args.tile} in "
              f"{seconds:.1f} s = {rates[workers]:.3g} kernel entries/s (NNGP + NTK, float32 store)", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


def store_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def large(args) -> None:
    """Build the N x N train store and the test/train store (resuming what exists), then solve by CG
    over the train store and predict the test labels, with peak RSS and wall time of each step."""
    from infinet.scale import kernel_to_store, predict_from_store, solve_store

    ds = load(args.n, args.n_test)
    train, test = f"{args.store}/train", f"{args.store}/test"
    with PeakRSS() as mem:
        t = time.perf_counter()
        report = kernel_to_store(ARCH, ds.x_train, train, get="nngp", dtype="float32", tile_size=args.tile,
                                 workers=args.workers, progress=True)
        build = time.perf_counter() - t
    print(f"build N={args.n}: {report.tiles_computed} tiles computed ({report.tiles_skipped} already there), {build:.0f} s "
          f"= {args.n**2 * report.tiles_computed / max(report.tiles_computed + report.tiles_skipped, 1) / max(build, 1e-9):.3g} "
          f"matrix entries/s (upper tiles only computed), store {store_size(train) / 1e9:.1f} GB, "
          f"peak RSS (all processes) {mem.peak / 2**30:.2f} GiB", flush=True)
    if args.n_test:
        t = time.perf_counter()
        kernel_to_store(ARCH, ds.x_test, test, x2=ds.x_train, get="nngp", dtype="float32", tile_size=args.tile,
                        workers=args.workers, progress=True)
        print(f"test/train store {args.n_test} x {args.n}: {time.perf_counter() - t:.0f} s", flush=True)
    y = ds.y_train.to(torch.float64) - 0.1  # one-hot targets, zero mean per class (Lee et al. 2018)
    client = cluster = None
    if args.solve_workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.solve_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        with PeakRSS() as mem:
            t = time.perf_counter()
            alpha, cg = solve_store(train, y, diag_reg=args.diag_reg, tol=args.tol, max_iter=args.max_iter,
                                    preconditioner_rank=args.rank, preconditioner=args.preconditioner, client=client, progress=True)
            solve = time.perf_counter() - t
    finally:
        if client is not None:
            client.close()
            cluster.close()
    print(f"solve N={args.n} (diag_reg {args.diag_reg}, tol {args.tol:g}): {'converged' if cg.converged else 'NOT converged'} "
          f"in {cg.iterations} CG iterations, relative residual {cg.residuals[-1]:.2e}; {cg.preconditioner} preconditioner rank "
          f"{cg.preconditioner_rank} {cg.setup_seconds:.0f} s, iterations {cg.seconds:.0f} s "
          f"({cg.seconds / max(cg.iterations, 1):.1f} s each), wall {solve:.0f} s, peak RSS {mem.peak / 2**30:.2f} GiB",
          flush=True)
    if args.n_test:
        t = time.perf_counter()
        pred = predict_from_store(test, alpha)
        acc = float((pred.argmax(1) == ds.labels_test).double().mean())
        print(f"test accuracy {acc:.4f} on {args.n_test} test images ({time.perf_counter() - t:.0f} s to predict)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "large"))
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--tile", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default="/tmp/infinet_scale_store")
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--diag-reg", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--rank", type=int, default=500)
    parser.add_argument("--preconditioner", default="nystrom")
    parser.add_argument("--solve-workers", type=int, default=0, help="products on N worker processes (0: this one)")
    args = parser.parse_args()
    if args.mode == "throughput":
        args.n = args.n or 10000
        throughput(args)
    else:
        args.n = args.n or 60000
        large(args)


if __name__ == "__main__":
    main()
