"""The GPU benchmark: kernels at the sizes the incumbent published, float32 and float64, against a
memory-bandwidth roofline measured on the same device in the same run. Prints one JSON line.

Workloads (NNGP + NTK of K(x, x), inputs N(0, 1) from one seed, w_std = sqrt(2), no bias):

  cnn_gap21_32  a 21-layer CNN (Conv 3x3 SAME + ReLU) with global average pooling on 3 x 32 x 32 inputs: the
                incumbent's published figure is 2.70 ms per NTK entry on a V100 in float32, 6.21 in float64
                (neural-tangents README, "Performance")
  myrtle5_32    Myrtle-5 (``inf.myrtle(5)``) on CIFAR-sized 3 x 32 x 32 inputs
  fc_20000      a depth-3 fully-connected ReLU network (Dense(512)) on 20,000 points of dimension 784

For each: seconds of the first call and of the best warm call, milliseconds per kernel entry (warm time / N^2),
peak device memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident memory so far), and
``over_roofline``: warm time / roofline, where the roofline is the time to stream the passes the mathematics needs
over the kernel entries at the copy bandwidth measured here (``bandwidth_gb_s``: ``b.copy_(a)`` of a large buffer,
bytes read plus written). Passes per entry and layer, as in ``benchmarks/conv_kernel.py``: Conv or Dense 2 (NNGP
window sum, NTK), ReLU 3 (arccos, sqrt, the NTK product), AvgPool 2, global pooling or readout 2; each pass
reads and writes one value. Convolutional kernels with pooling need every pixel pair (S^2 x S^2 entries per pair
of images); the fully-connected one a single entry per pair.

``--device cpu`` runs the same script on the CPU with smaller convolutional batches (it shows that the script
works where no GPU is lent; its figures are not the GPU's). Under 5 minutes on one GPU.

    python benchmarks/gpu.py [--device cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch

import infinet as inf

#: name: (N on a GPU, N on the CPU, input shape per example, layer tokens): c = Conv 3x3 SAME + ReLU,
#: p = AvgPool 2, g = global average pooling, d = Dense(512) + ReLU; each ends in a Dense(1) readout
WORKLOADS = {
    "cnn_gap21_32": (32, 2, (3, 32, 32), "c " * 21 + "g"),
    "myrtle5_32": (32, 2, (3, 32, 32), "c c p c p c g"),
    "fc_20000": (20000, 20000, (784,), "d d d"),
}
PASSES = {"c": 5, "d": 5, "p": 2, "g": 2}
#: the incumbent's published milliseconds per NTK entry (V100), for comparison in the output
PUBLISHED_MS = {"cnn_gap21_32": {"float32": 2.70, "float64": 6.21}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write), the best of 5."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 2 GiB / 256 MiB of float64
    a = torch.ones(n, dtype=torch.float64, device=device)
    b = torch.empty_like(a)
    best = math.inf
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * a.element_size() / best


def network(tokens: str) -> inf.Layer:
    w = math.sqrt(2.0)
    table = {"c": lambda: [inf.Conv(1, 3, padding="SAME", w_std=w), inf.Relu()], "p": lambda: [inf.AvgPool(2)],
             "g": lambda: [inf.GlobalAvgPool()], "d": lambda: [inf.Dense(512, w_std=w), inf.Relu()]}
    return inf.serial(*[layer for t in tokens.split() for layer in table[t]()], inf.Dense(1, w_std=w))


def roofline_s(n: int, shape: tuple, tokens: str, itemsize: int, bytes_per_s: float) -> float:
    """Seconds to stream the passes of every layer over the kernel's entries (symmetric: n (n + 1) / 2 pairs)."""
    pairs = n * (n + 1) // 2
    side = shape[-1] if len(shape) > 1 else 1
    total = 0.0
    for t in tokens.split():
        entries = pairs * (side**4 if len(shape) > 1 else 1)
        total += PASSES[t] * entries * 2 * itemsize
        if t == "p":
            side //= 2
    total += PASSES["g"] * pairs * 2 * itemsize  # the readout
    return total / bytes_per_s


def _digits(value: float) -> float:
    return float(f"{value:.4g}")


def run(name: str, n: int, shape: tuple, tokens: str, dtype: torch.dtype, device: torch.device, repeats: int,
        bytes_per_s: float) -> dict:
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device, dtype)
    net = network(tokens)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        k = net.kernel(x, get=("nngp", "ntk"), dtype=dtype, progress=False)
        sync(device)
        times.append(time.perf_counter() - t0)
    if not bool(torch.isfinite(k.ntk).all()):
        raise RuntimeError(f"{name}: the kernel is not finite")
    warm = min(times[1:])
    roof = roofline_s(n, shape, tokens, torch.empty((), dtype=dtype).element_size(), bytes_per_s)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out = {"n": n, "first_s": _digits(times[0]), "warm_s": _digits(warm), "ms_per_entry": _digits(1e3 * warm / n**2),
           "peak_mib": round(peak / 2**20, 1), "roofline_s": _digits(roof), "over_roofline": round(warm / roof, 2)}
    published = PUBLISHED_MS.get(name, {}).get(str(dtype).removeprefix("torch."))
    if published is not None:
        out["incumbent_published_v100_ms_per_entry"] = published
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", help="comma-separated workload names")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu")
    bytes_per_s = bandwidth(device)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "bandwidth_gb_s": round(bytes_per_s / 1e9, 1), "workloads": {}}
    t0 = time.perf_counter()
    for name in names:
        gpu_n, cpu_n, shape, tokens = WORKLOADS[name]
        n = gpu_n if device.type == "cuda" else cpu_n
        result["workloads"][name] = {str(dtype).removeprefix("torch."): run(name, n, shape, tokens, dtype, device,
                                                                             args.repeats, bytes_per_s)
                                     for dtype in (torch.float32, torch.float64)}
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
