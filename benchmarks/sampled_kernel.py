"""Per-layer sampled kernels against whole-network Monte Carlo at the same compute time (issue 21).

For networks with a layer that has no closed form, on a few inputs (float64, one process, both methods
timed back to back on the same inputs):

  maxpool    Conv(3x3) > MaxPool(2, activation=Relu()) > Conv(3x3) > Relu > GlobalAvgPool > Dense, 6 images 2x6x6
  batchnorm  Dense > BatchNorm(activation=Relu()) > Dense > Erf > Dense, a batch of 8 vectors of 5 features
  gru, lstm  GRU / LSTM (last state) > Dense, N sequences 2 x 8, N from --sizes (the batch estimator, NNGP
             and NTK; ``--pairs`` the per-pair estimator, NNGP only)
  mnist1d    GRU and LSTM (last state) > Dense on --n MNIST-1D sequences averaged to 20 steps (issue 32): the
             batch estimator's NNGP and NTK against Monte Carlo of width --mc-width networks at equal time,
             and GP prediction (NNGP posterior mean, NTK at t = inf) with each kernel on a split of them

Sampled: ``net.kernel(x)`` with the layers' default points and replicates (infinet.sampling), for
--seeds layer seeds: time is the median over seeds, the standard error the mean over seeds (each the
mean over entries on and above the diagonal). Monte Carlo: ``monte_carlo_kernel`` of --networks finite
networks of width 1024 (what the acceptance tests compare with). Its standard error falls as
1/sqrt(networks), so its error at the sampled kernel's time is SE_mc x sqrt(time_mc / time_sampled);
the ratio of that to the sampled kernel's standard error is the figure of merit.

    python benchmarks/sampled_kernel.py [--networks 16] [--seeds 3] [--cases gru lstm] [--sizes 6 24 96]
    python benchmarks/sampled_kernel.py --cases mnist1d [--n 500] [--n-train 350] [--mc-width 256]

mnist1d: Monte Carlo computes both kernels, as a user wanting both would; its networks run in pairs
(``monte_carlo_kernel(n_samples=2)``) until at least --mc-pairs pairs and the sampled kernel's time are spent;
its standard error pools the pairs. The equal-cost Monte Carlo kernel is the mean of the first pairs whose time
reaches the sampled kernel's (at least one pair). Both kernels are Gram matrices of finite layers (positive
semi-definite), so both predict with the same ridge --diag-reg. The NNGP-only rows compare get='nngp' on both
sides (forward passes only).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import infinet as inf

W = 1024


def cases(sizes, estimator="batch"):
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
        get = ("nngp",) if estimator == "pairs" else ("nngp", "ntk")
        yield "gru", lambda seed: inf.serial(inf.GRU(W, w_std=1.2, u_std=1.5, b_std=0.3, seed=seed,
                                                     estimator=estimator), inf.Dense(1)), x, get
        yield "lstm", lambda seed: inf.serial(inf.LSTM(W, w_std=1.5, u_std=1.2, b_std=0.2, seed=seed,
                                                       estimator=estimator), inf.Dense(1)), x, get


def mean_upper(t: torch.Tensor) -> float:
    rows, cols = torch.triu_indices(len(t), len(t))
    return float(t[rows, cols].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=16, help="finite networks in the Monte Carlo estimate")
    ap.add_argument("--seeds", type=int, default=3, help="layer seeds of the sampled kernel")
    ap.add_argument("--cases", nargs="*", default=["maxpool", "batchnorm", "gru", "lstm"], help="which networks")
    ap.add_argument("--sizes", nargs="*", type=int, default=[6, 24], help="numbers of sequences for gru and lstm")
    ap.add_argument("--pairs", action="store_true", help="gru / lstm: the per-pair estimator (NNGP only)")
    ap.add_argument("--n", type=int, default=500, help="mnist1d: sequences whose kernel is computed")
    ap.add_argument("--n-train", type=int, default=350, help="mnist1d: of those, the training sequences")
    ap.add_argument("--mc-width", type=int, default=256, help="mnist1d: width of the Monte Carlo networks")
    ap.add_argument("--mc-pairs", type=int, default=2, help="mnist1d: at least this many pairs of networks")
    ap.add_argument("--diag-reg", type=float, default=1e-3, help="mnist1d: ridge of both predictions")
    args = ap.parse_args()
    if "mnist1d" in args.cases:
        for cls in (inf.GRU, inf.LSTM):
            mnist1d_case(cls, args)
    print(f"{'network':<10} {'N':>3} {'kernel':<5} {'sampled s':>9} {'SE sampled':>10} {'MC s':>7} {'SE MC':>9} "
          f"{'SE MC at sampled time':>21} {'ratio':>7}")
    for name, make, x, get in cases(args.sizes, "pairs" if args.pairs else "batch"):
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


def mnist1d_case(cls, args) -> None:
    """The batch estimator on MNIST-1D against Monte Carlo at equal time: standard errors and GP prediction."""
    from infinet.app import datasets
    from infinet.predict import gp_inference, gradient_descent_mse

    data = datasets.load("mnist1d", n_train=args.n, n_test=10, seed=0)
    x = data.x_train.reshape(args.n, 1, 20, 2).mean(-1).double()
    y, labels, m = data.y_train.double(), data.labels_train, args.n_train

    def make(width):
        return inf.serial(cls(width, w_std=1.0, u_std=1.0, b_std=0.1), inf.Dense(1, w_std=1.0, b_std=0.1))

    name = cls.__name__
    print(f"\n{name} on {args.n} MNIST-1D sequences of length 20 ({m} train / {args.n - m} test), float64, "
          f"{torch.get_num_threads()} threads")
    figures = {}
    for get in (("nngp", "ntk"), ("nngp",)):
        t0 = time.perf_counter()
        k = make(W).kernel(x, get=get)
        t_s = time.perf_counter() - t0
        pairs, t_mc, stop = [], 0.0, None
        while len(pairs) < args.mc_pairs or t_mc < t_s:
            t0 = time.perf_counter()
            pairs.append(inf.monte_carlo_kernel(make(args.mc_width), x, n_samples=2, seed=len(pairs) + 1, get=get))
            t_mc += time.perf_counter() - t0
            if stop is None and t_mc >= t_s:
                stop = len(pairs)
        t_one = t_mc / (2 * len(pairs))
        label = "+".join(get)
        for field in get:
            se_s = mean_upper(getattr(k, field + "_se"))
            se_mc = math.sqrt(statistics.mean(mean_upper(getattr(p, field + "_stderr") ** 2) for p in pairs)
                              / len(pairs))
            at_same = se_mc * math.sqrt(t_mc / t_s)
            figures[(label, field)] = at_same / se_s
            print(f"  {label:<9} {field:<5} sampled {t_s:7.1f} s  SE {se_s:.2e} | Monte Carlo {2 * len(pairs)} networks "
                  f"{t_mc:7.1f} s ({t_one:.1f} s each)  SE {se_mc:.2e}, at the sampled time {at_same:.2e}: "
                  f"{at_same / se_s:.1f}x the sampled SE", flush=True)
        if get == ("nngp",):
            continue
        equal = pairs[:stop]
        mc = {f: torch.stack([getattr(p, f) for p in equal]).mean(0) for f in get}
        print(f"  prediction: equal-cost Monte Carlo kernel = {2 * len(equal)} networks "
              f"({2 * len(equal) * t_one:.1f} s against {t_s:.1f} s); ridge {args.diag_reg}")
        for source, kern in (("sampled", {f: getattr(k, f) for f in get}), ("Monte Carlo", mc)):
            nngp_mean = gp_inference(kern["nngp"][:m, :m], kern["nngp"][m:, :m], y[:m], diag_reg=args.diag_reg).mean
            ntk_mean = gradient_descent_mse(kern["ntk"][:m, :m], kern["ntk"][m:, :m], y[:m], diag_reg=args.diag_reg)
            for what, f in (("NNGP posterior", nngp_mean), ("NTK t=inf", ntk_mean)):
                acc = float((f.argmax(1) == labels[m:]).double().mean())
                mse = float((f - y[m:]).pow(2).mean())
                print(f"    {source:<12} {what:<15} test accuracy {acc:.3f}  test MSE {mse:.5f}", flush=True)


if __name__ == "__main__":
    main()
