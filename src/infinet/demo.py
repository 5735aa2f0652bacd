"""`make demo`: one description, two meanings: exact infinite-width kernels checked against finite networks.

Run with ``python -m infinet.demo``. Prints the exact NNGP and NTK of a ReLU network, the same
kernels estimated from random finite networks of growing width built from the same description,
and how far apart they are in standard errors.
"""

from __future__ import annotations

import time

import torch

import infinet as inf


def main(n_samples: int = 32, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 20, generator=gen, dtype=torch.float64)

    def net(width: int):
        return inf.serial(
            inf.Dense(width, w_std=1.5, b_std=0.05), inf.Relu(),
            inf.Dense(width, w_std=1.5, b_std=0.05), inf.Relu(),
            inf.Dense(1, w_std=1.5, b_std=0.05),
        )

    exact = net(1).kernel(x)  # hidden widths do not enter the 'ntk' parameterization's limit
    print("infinet demo: depth-2 ReLU network, w_std=1.5, b_std=0.05, 6 inputs of dimension 20\n")
    print(f"exact NTK(x0, x0..x5): {[round(v, 4) for v in exact.ntk[0].tolist()]}")
    print(f"exact NNGP(x0, x0..x5): {[round(v, 4) for v in exact.nngp[0].tolist()]}\n")
    print(f"{'width':>6} {'NNGP rel. err':>14} {'NTK rel. err':>13} {'max |z| NTK':>12}  ({n_samples} networks each)")
    results = {}
    for width in (64, 256, 1024):
        t0 = time.perf_counter()
        mc = inf.monte_carlo_kernel(net(width), x, n_samples=n_samples, seed=seed)
        nngp_err = float((mc.nngp - exact.nngp).norm() / exact.nngp.norm())
        ntk_err = float((mc.ntk - exact.ntk).norm() / exact.ntk.norm())
        z = float(((mc.ntk - exact.ntk) / mc.ntk_stderr).abs().max())
        results[width] = (nngp_err, ntk_err, z)
        print(f"{width:>6} {nngp_err:>14.4f} {ntk_err:>13.4f} {z:>12.2f}  [{time.perf_counter() - t0:.1f}s]")
    print("\nThe finite network behind the last row (net.build()):")
    print(net(1024).build(20, seed=seed))
    big = torch.randn(3000, 784, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    k = net(512).kernel(big)
    print(f"\nNNGP+NTK of 3000 inputs of dimension 784 (tiled, float64): {time.perf_counter() - t0:.2f}s, "
          f"shape {tuple(k.ntk.shape)}")
    return results


if __name__ == "__main__":
    main()
