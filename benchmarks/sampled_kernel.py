"""Per-layer sampled kernels against whole-network Monte Carlo at the same compute time (issue 21).

For networks with a layer that has no closed form, on a few inputs (float64, one process, both methods
timed back to back on the same inputs):

  maxpool    Conv(3x3) > MaxPool(2, activation=Relu()) > Conv(3x3) > Relu > GlobalAvgPool > Dense, 6 images 2x6x6
  batchnorm  Dense > BatchNorm(activation=Relu()) > Dense > Erf > Dense, a batch of 8 vectors of 5 features
  gru, lstm  GRU / LSTM (last state) > Dense, N sequences 2 x 8 (NNGP only), N from --sizes

Sampled: ``net.kernel(x)`` with the layers' default points and replicates (infinet.sampling), for
--seeds layer seeds: time is the median over seeds, the standard error the mean over seeds (each the
mean over entries on and above the diagonal). Monte Carlo: ``monte_carlo_kernel`` of --networks finite
networks of width 1024 (what the acceptance tests compare with). Its standard error falls as
1/sqrt(networks), so its error at the sampled kernel's time is SE_mc x sqrt(time_mc / time_sampled);
the ratio of that to the sampled kernel's standard error is the figure of merit.

    python benchmarks/sampled_kernel.py [--networks 16] [--seeds 3] [--cases gru lstm] [--sizes 6 24 96]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import infinet as inf

W = 1024


def cases(sizes):
    gen = torch.Generator().manual_seed(0)
    yield "maxpool", lambda seed: inf.serial(
        inf.Conv(W, 3, w_std=1.4, b_std=0.1), inf.MaxPool(2, activation=inf.Relu(), seed=seed), inf.Conv(W, 3),
        inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1)), torch.randn(6, 2, 6, 6, generator=gen, dtype=torch.float64), \
        ("nngp", "ntk")
    yield "batchnorm", lambda seed: inf.serial(
        inf.Dense(W, w_std=1.3, b_std=0.2), inf.BatchNorm(activation=inf.Relu(), seed=seed), inf.Dense(W, w_std=1.2),
        inf.Erf(), inf.Dense(1)), torch.randn(8, 5, generator=gen, dtype=torch.float64), ("nngp", "ntk")
    for n in sizes:
        x = torch.randn(n, 2, 8, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        yield "gru", lambda seed: inf.serial(inf.GRU(W, w_std=1.2, u_std=1.5, b_std=0.3, seed=seed), inf.Dense(1)), \
            x, ("nngp",)
        yield "lstm", lambda seed: inf.serial(inf.LSTM(W, w_std=1.5, u_std=1.2, b_std=0.2, seed=seed),
                                              inf.Dense(1)), x, ("nngp",)


def mean_upper(t: torch.Tensor) -> float:
    rows, cols = torch.triu_indices(len(t), len(t))
    return float(t[rows, cols].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=16, help="finite networks in the Monte Carlo estimate")
    ap.add_argument("--seeds", type=int, default=3, help="layer seeds of the sampled kernel")
    ap.add_argument("--cases", nargs="*", default=["maxpool", "batchnorm", "gru", "lstm"], help="which networks")
    ap.add_argument("--sizes", nargs="*", type=int, default=[6, 24], help="numbers of sequences for gru and lstm")
    args = ap.parse_args()
    print(f"{'network':<10} {'N':>3} {'kernel':<5} {'sampled s':>9} {'SE sampled':>10} {'MC s':>7} {'SE MC':>9} "
          f"{'SE MC at sampled time':>21} {'ratio':>7}")
    for name, make, x, get in cases(args.sizes):
        if name not in args.cases:
            continue
        make(0).kernel(x[:2], get=get)  # warm up
        times, kernels = [], []
        for seed in range(args.seeds):
            net = make(seed)
            t0 = time.perf_counter()
            kernels.append(net.kernel(x, get=get))
            times.append(time.perf_counter() - t0)
        t_sampled = statistics.median(times)
        t0 = time.perf_counter()
        mc = inf.monte_carlo_kernel(make(0), x, n_samples=args.networks, seed=1, get=get)
        t_mc = time.perf_counter() - t0
        for field in get:
            se_s = statistics.mean(mean_upper(getattr(k, field + "_se")) for k in kernels)
            se_mc = mean_upper(getattr(mc, field + "_stderr"))
            at_same_time = se_mc * math.sqrt(t_mc / t_sampled)
            print(f"{name:<10} {len(x):>3} {field:<5} {t_sampled:9.2f} {se_s:10.2e} {t_mc:7.2f} {se_mc:9.2e} "
                  f"{at_same_time:21.2e} {at_same_time / se_s:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
