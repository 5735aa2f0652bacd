"""The layered package on a CUDA device (issue 23): the tile engine, the training loop, the tiled CG products and
the build()-module simulations keep tensors on the GPU and agree with the CPU; and how fast the simulations run
there. Prints figures and one line per check (PASS or FAIL with the numbers); asserts nothing else.

    PYTHONPATH=src python3 benchmarks/gpu_layout_check.py
"""

from __future__ import annotations

import math
import sys
import time

import torch

import infinet as inf
from infinet.depth import simulate_resnet
from infinet.meanfield import simulate
from infinet.solve import TiledKernel, conjugate_gradient
from infinet.training import train_and_track, train_gradient_descent

CUDA = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")  # "cpu": a dry run of the script itself


def sync() -> None:
    if CUDA.type == "cuda":
        torch.cuda.synchronize()
results = []


def check(name: str, ok: bool, detail: str) -> None:
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def timed(fn, repeats=3):
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name(0) if CUDA.type == "cuda" else "cpu", flush=True)
    gen = torch.Generator().manual_seed(0)
    # 1. the tile engine on the GPU: several tiles, symmetric and cross, MLP and CNN
    mlp = inf.serial(inf.Dense(64, 1.5, 0.1), inf.Relu(), inf.Dense(64, 1.5, 0.1), inf.Erf(), inf.Dense(1))
    x = torch.randn(300, 20, dtype=torch.float64, generator=gen)
    cpu = mlp.kernel(x, tile_size=64)
    gpu = mlp.kernel(x.to(CUDA), tile_size=64)
    err = float((gpu.ntk.cpu() - cpu.ntk).abs().max() / cpu.ntk.abs().max())
    check("MLP kernel, 5x5 tiles, stays on cuda", gpu.ntk.device.type == CUDA.type and err < 1e-12, f"max rel diff {err:.1e}")
    cnn = inf.serial(inf.Conv(16, (3, 3), w_std=1.4, b_std=0.1), inf.Relu(), inf.AvgPool((2, 2)),
                     inf.Conv(16, (3, 3), w_std=1.4, b_std=0.1), inf.Relu(), inf.GlobalAvgPool(), inf.Dense(1))
    xi = torch.randn(24, 2, 8, 8, dtype=torch.float64, generator=gen)
    cpu, gpu = cnn.kernel(xi[:10], xi, tile_size=8), cnn.kernel(xi[:10].to(CUDA), xi.to(CUDA), tile_size=8)
    err = float((gpu.ntk.cpu() - cpu.ntk).abs().max() / cpu.ntk.abs().max())
    check("CNN cross kernel, tiles, on cuda", gpu.nngp.device.type == CUDA.type and err < 1e-12, f"max rel diff {err:.1e}")
    # 2. a tile that overflows: the error keeps the finished tiles, on the device
    exploding = inf.serial(inf.Dense(8, 3.0, 0.0), inf.Exp(), inf.Dense(1))  # E[e^u e^v] overflows at variance ~700
    xe = torch.cat([torch.randn(8, 3, dtype=torch.float64, generator=gen) * 0.01,
                    torch.randn(4, 3, dtype=torch.float64, generator=gen) * 10])
    try:
        exploding.kernel(xe.to(CUDA), tile_size=4)
        check("non-finite tile refused on cuda", False, "no error")
    except inf.NonFiniteKernelError as e:
        part = e.partial
        finished = int(torch.isfinite(part.nngp).sum()) if part is not None else 0
        check("non-finite tile refused on cuda", part is not None and part.nngp.device.type == CUDA.type and finished > 0,
              f"partial on {None if part is None else part.nngp.device}, {finished} finite entries kept")
    # 3. CG over a tiled kernel whose blocks are computed on the GPU
    xs = x.to(CUDA)
    k = mlp.kernel(xs, get="nngp").nngp
    op = TiledKernel(lambda r, c: mlp.kernel(xs[r], xs[c], get="nngp").nngp, len(xs), tile=64, device=CUDA)
    y = torch.randn(len(xs), dtype=torch.float64, device=CUDA)
    sol, rep = conjugate_gradient(op, y, 1e-3, tol=1e-10, preconditioner_rank=20)
    dense = torch.linalg.solve(k + 1e-3 * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype, device=CUDA), y)
    err = float((sol - dense).norm() / dense.norm())
    check("tiled CG on cuda", sol.device.type == CUDA.type and err < 1e-8, f"{rep.iterations} iterations, rel error {err:.1e}")
    # 4. the one training loop on the GPU
    model = mlp.build(20, seed=0, dtype=torch.float64, device=CUDA)
    ytr = torch.randn(len(x), 1, dtype=torch.float64, device=CUDA)
    hist = train_gradient_descent(model, xs, ytr, 0.5, 50, x_test=xs[:10], y_test=ytr[:10], record_every=10)
    check("train_gradient_descent on cuda", hist.f_train.device.type == CUDA.type and hist.loss[-1] < hist.loss[0],
          f"loss {hist.loss[0]:.3f} -> {hist.loss[-1]:.3f}, {len(hist.validation)} validation records")
    wide = inf.serial(inf.Dense(2048, 1.5, 0.1), inf.Relu(), inf.Dense(1)).build(20, seed=1, dtype=torch.float64, device=CUDA)
    trace = train_and_track(wide, xs[:100], ytr[:100], 1.0, 40, x_test=xs[:5], record_every=20, ntk_inputs=xs[:4])
    check("train_and_track on cuda", trace.f_test[-1].device.type == CUDA.type and len(trace.ntk_change) == 3,
          f"weight change {trace.weight_change[-1]:.2e}, NTK change {trace.ntk_change[-1]:.2e}")
    # 5. simulations on the modules build() returns, on the GPU against the CPU (same draws)
    mf_cpu = simulate("tanh", 1.0, 0.5, w_std=1.5, b_std=0.2, depth=20, width=500, n_networks=8, dtype=torch.float64)
    mf_gpu = simulate("tanh", 1.0, 0.5, w_std=1.5, b_std=0.2, depth=20, width=500, n_networks=8, dtype=torch.float64,
                      device=CUDA)
    err = max(float(abs(mf_cpu[key] - mf_gpu[key]).max()) for key in ("q", "c", "grad_norm2"))
    check("mean-field simulation on cuda = cpu", err < 1e-9, f"max abs diff {err:.1e}")
    r_cpu = simulate_resnet("relu", 16, 100, 200, record_every=50)
    r_gpu = simulate_resnet("relu", 16, 100, 200, record_every=50, device=CUDA)
    err = float((r_gpu["y"].cpu() - r_cpu["y"]).abs().max() / r_cpu["y"].abs().max())
    check("ResNet simulation on cuda = cpu", r_gpu["y"].device.type == CUDA.type and err < 1e-10, f"max rel diff {err:.1e}")
    # 6. speed of the simulations on the GPU
    _, t_res = timed(lambda: simulate_resnet("relu", 8, 1000, 10000, record_every=100, device=CUDA), repeats=2)
    _, t_mf = timed(lambda: simulate("tanh", 1.0, 0.5, w_std=1.5, b_std=0.2, depth=50, width=1000, n_networks=8,
                                     device=CUDA), repeats=2)
    print(f"GPU: ResNet width 8, depth 1000, 10000 networks {t_res:.2f} s; mean field width 1000, depth 50, "
          f"8 networks (float32) {t_mf:.2f} s", flush=True)
    print(f"{sum(results)} of {len(results)} checks passed", flush=True)


if __name__ == "__main__":
    main()
