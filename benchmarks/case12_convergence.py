"""Who is right in the independent check's case 12 (trust round three): the architecture

  Conv(1x1, w_std 1.714, b_std 0.034) > RectifiedMonomial(3) > FanInProd(Dense(w_std 1.144, no bias) > Abs,
  Conv(3x3 SAME, w_std 0.554, b_std 0) > ExpNormalized(gamma 1.514, shift -1.143)) > Dense(w_std 1.282, no bias,
  PARAMETERIZATION) > LayerNorm(over C, H, W) > Gelu > GlobalAvgPool > Dense(w_std 1.42, b_std 0.026)

on three 2 x 4 x 5 images, against Monte Carlo of finite networks of the same description (infinet's
build(), many widths). For each variant and width: the largest |z| over the kernel's entries (MC minus
infinet, in MC standard errors) and the largest relative difference, NNGP and NTK.

Variants: 'issue' (as the check ran it), 'relu' (ReLU in the trunk instead of RectifiedMonomial(3)), 'ntk'
(the standard Dense in the NTK parameterization), 'relu+ntk'. Usage: python benchmarks/case12_convergence.py
[--widths 256,512,1024] [--samples 128] [--variants issue,relu,ntk,relu+ntk]. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import infinet as inf


def architecture(width: int, variant: str):
    trunk = inf.Relu() if "relu" in variant else inf.RectifiedMonomial(3)
    parameterization = "ntk" if "ntk" in variant else "standard"
    return inf.serial(
        inf.Conv(width, (1, 1), w_std=1.714, b_std=0.034), trunk, inf.FanOut(2),
        inf.parallel(inf.serial(inf.Dense(width, w_std=1.144, b_std=None), inf.Abs()),
                     inf.serial(inf.Conv(width, (3, 3), padding="SAME", w_std=0.554, b_std=0.0),
                                inf.ExpNormalized(gamma=1.514, shift=-1.143))),
        inf.FanInProd(), inf.Dense(width, w_std=1.282, b_std=None, parameterization=parameterization),
        inf.LayerNorm("channels_space"), inf.Gelu(), inf.GlobalAvgPool(), inf.Dense(1, w_std=1.42, b_std=0.026))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="256,512,1024")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--variants", default="issue,relu,ntk,relu+ntk")
    args = parser.parse_args()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = []
    for variant in args.variants.split(","):
        for width in map(int, args.widths.split(",")):
            net = architecture(width, variant)
            start = time.perf_counter()
            exact, mc = net.kernel(x), inf.monte_carlo_kernel(net, x, n_samples=args.samples, seed=1)
            row = {"variant": variant, "width": width, "samples": args.samples}
            for name in ("nngp", "ntk"):
                e, m, se = getattr(exact, name), getattr(mc, name), getattr(mc, name + "_stderr")
                row[f"{name}_max_z"] = round(float(((m - e) / se).abs().max()), 2)
                row[f"{name}_max_rel"] = round(float(((m - e) / e.abs()).abs().max()), 4)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
