"""Sampled max pooling at the default sampling settings (issue 33): the NNGP and NTK of a max-pooling CNN on 100
8 x 8 digits (sklearn's digits, as the conv-kernels experiment reads them offline), in one process:

  Conv(3x3, VALID, w_std sqrt 2) > MaxPool(2, activation=Relu) > Conv(3x3 SAME) > Relu > global average pooling >
  Dense(10)

MaxPool with its defaults (256 points x 8 replicates). Timed with the estimator the layer picks (joint draws of
all input positions here, :mod:`infinet.engine.layers.maxpool_joint`) and with the window-pair estimator it replaced
(forced), on the same images: seconds and the ratio. Also the largest |difference| of the two estimates in units of
their combined standard error (the same limit, sampled two ways).

    python benchmarks/maxpool_kernel.py [--n 100]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import infinet as inf
from infinet.engine.layers import maxpool_joint


def digits(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images[:n], dtype=torch.float64)[:, None] / 16.0
    return (x - x.mean()) / x.std()


def network() -> inf.Layer:
    w = 2**0.5
    return inf.serial(inf.Conv(1, 3, padding="VALID", w_std=w), inf.MaxPool(2, activation=inf.Relu()),
                      inf.Conv(1, 3, w_std=w), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(10, w_std=w))


def timed(x):
    t0 = time.perf_counter()
    k = network().kernel(x)
    return time.perf_counter() - t0, k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    x = digits(args.n)
    joint_s, joint = timed(x)
    original = maxpool_joint.pays
    maxpool_joint.pays = lambda *a: False
    try:
        windows_s, windows = timed(x)
    finally:
        maxpool_joint.pays = original
    z = max(float(((getattr(joint, n) - getattr(windows, n)).abs()
                   / (getattr(joint, n + "_se") ** 2 + getattr(windows, n + "_se") ** 2).sqrt()).max())
            for n in ("nngp", "ntk"))
    print(f"MaxPool CNN, {args.n} digits 8x8, NNGP + NTK: joint draws {joint_s:.2f} s, window pairs {windows_s:.2f} s "
          f"({windows_s / joint_s:.1f}x); largest |difference| / combined s.e. {z:.2f}")
    print(json.dumps({"n": args.n, "joint_s": round(joint_s, 3), "windows_s": round(windows_s, 3),
                      "speedup": round(windows_s / joint_s, 2), "max_z": round(z, 2)}))


if __name__ == "__main__":
    main()
