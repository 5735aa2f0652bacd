"""Mean-field and infinite-depth simulations on the modules that build() returns (torch.func.vmap over
functional_call, parameters drawn by each module's sample_parameters) against the previous implementation in
the same process: the same random networks written as batched matrix products with weights drawn by hand.

    .venv/bin/python benchmarks/simulations.py [--repeats 3]

Cases: mean field (tanh, width 1000, depth 50, 8 networks, float32, forward and backward); ResNet at infinite
depth (ReLU, width 8, depth 1000, 10,000 networks, float64; and width 128, depth 100, 64 networks).
Prints the median time of each and the ratio new / old (below 1: faster now).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from infinet.depth import simulate_resnet
from infinet.meanfield import activation, simulate


def old_meanfield(act, q0, c0, w_var, b_var, depth, width, n_networks, seed=0, dtype=torch.float32, device=None):
    """The hand-written simulation this replaced: weights N(0, w_var / n) drawn per layer, backward by the
    closed-form derivative, weights drawn again for the backward pass."""
    act = activation(act)
    dphi = act.derivative()
    r, n = n_networks, width
    base = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**62, (depth + 2,), generator=base).tolist()

    def layer(l):
        gen = torch.Generator().manual_seed(int(seeds[l]))
        return (torch.randn(r, n, n, generator=gen, dtype=dtype).to(device) * math.sqrt(w_var / n),
                torch.randn(r, n, 1, generator=gen, dtype=dtype).to(device) * math.sqrt(b_var))

    z = torch.randn(r, n, 2, generator=base, dtype=torch.float64)
    mix = torch.tensor([[1.0, c0], [0.0, math.sqrt(1.0 - c0 * c0)]], dtype=torch.float64)
    hs = [(math.sqrt(q0) * z @ mix).to(device=device, dtype=dtype)]
    for l in range(1, depth + 1):
        w, b = layer(l)
        hs.append(w @ act.fn(hs[-1]) + b)
    v = torch.randn(r, n, generator=torch.Generator().manual_seed(int(seeds[-1])), dtype=dtype).to(device)
    delta = v * dphi(hs[-1][..., 0]) / math.sqrt(n)
    for l in range(depth, 0, -1):
        w, _ = layer(l)
        delta = dphi(hs[l - 1][..., 0]) * (w.transpose(1, 2) @ delta[..., None])[..., 0]
    return hs, delta


def old_resnet(width, depth, n_networks, seed=0, record_every=1, x=None, device=None):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.ones(1, width, dtype=torch.float64) if x is None else x
    d = xs.shape[1]
    y = torch.randn(n_networks, width, d, generator=gen, dtype=torch.float64).to(device) / math.sqrt(d) @ xs.to(device).T
    scale = 1.0 / math.sqrt(width) / math.sqrt(depth)
    ys = [y.clone()]
    for l in range(1, depth + 1):
        w = torch.randn(n_networks, width, width, generator=gen, dtype=torch.float64).to(device)
        y = y + scale * (w @ torch.relu(y))
        if l % record_every == 0 or l == depth:
            ys.append(y.clone())
    return torch.stack(ys)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (weights are drawn on the CPU in both versions)")
    args = parser.parse_args()
    dev = torch.device(args.device)
    xs = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cases = {
        "mean field tanh, width 1000, depth 50, 8 networks (float32)": (
            lambda: simulate("tanh", 1.0, 0.5, w_std=1.5, b_std=0.2, depth=50, width=1000, n_networks=8, device=dev),
            lambda: old_meanfield("tanh", 1.0, 0.5, 2.25, 0.04, 50, 1000, 8, device=dev)),
        "ResNet ReLU, width 8, depth 1000, 10000 networks": (
            lambda: simulate_resnet("relu", 8, 1000, 10000, record_every=100, device=dev),
            lambda: old_resnet(8, 1000, 10000, record_every=100, device=dev)),
        "ResNet ReLU, width 128, depth 100, 64 networks, 3 inputs": (
            lambda: simulate_resnet("relu", 128, 100, 64, x=xs.to(dev), device=dev),
            lambda: old_resnet(128, 100, 64, x=xs.to(dev), device=dev)),
    }
    print(f"{dev}, CPU threads {torch.get_num_threads()}, median of {args.repeats}")
    for name, (new, old) in cases.items():
        t_new, t_old = median_time(new, args.repeats), median_time(old, args.repeats)
        print(f"{name}: build() modules {t_new:.3f} s, hand-written {t_old:.3f} s, ratio {t_new / t_old:.2f}")


if __name__ == "__main__":
    main()
