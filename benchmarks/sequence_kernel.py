"""Sequence kernels on MNIST-1D (N x 1 x 40, float64, NNGP and NTK).

(a) A depth-2 ReLU recurrent network read out at its last step, on 4,000 sequences (target: under 60 s
    on a 2-core machine): only same-time pairs are needed, cost linear in the length.
(b) The same network pooled over time (every pair of time steps, cost quadratic in the length), on
    --mean-n sequences, with the time per pair of sequences and what 4,000 would take at that rate.
(c) Self-attention against neural-tangents 0.6.5 on the same inputs (--attention-n sequences):
    serial(Dense(16), Relu, GlobalSelfAttention(softmax, SUM positional embeddings), Relu,
    GlobalAvgPool, Dense(1)); each library in a child process of its own, neural-tangents jitted from
    ``--nt-python`` (a separate virtual environment, never a dependency of infinet), first call and
    warm calls timed apart; the script checks the kernels agree and prints infinet's time / NT's time
    (target <= 0.5).

    python benchmarks/sequence_kernel.py [--nt-python /tmp/ntenv/bin/python] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

INFINET_ATTENTION = textwrap.dedent("""
    import json, sys, time, numpy as np, torch, infinet as inf
    path, repeats = sys.argv[1], int(sys.argv[2])
    x = torch.from_numpy(np.load(path))
    att = inf.GlobalSelfAttention(16, 16, 16, 2, b_std=0.1, pos_emb_type='SUM')
    net = inf.serial(inf.Dense(16, w_std=1.4, b_std=0.1), inf.Relu(), att, inf.Relu(), inf.GlobalAvgPool(),
                     inf.Dense(1, b_std=0.05))
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        k = net.kernel(x)
        times.append(time.perf_counter() - t0)
    np.save(path + '.infinet.npy', np.stack([k.nngp.numpy(), k.ntk.numpy()]))
    print(json.dumps({'first': times[0], 'warm': times[1:], 'threads': torch.get_num_threads()}))
""")

NT_ATTENTION = textwrap.dedent("""
    import json, sys, time, types
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np
    from neural_tangents import stax
    path, repeats = sys.argv[1], int(sys.argv[2])
    x = np.load(path).transpose(0, 2, 1)  # N x C x L -> N x L x C
    att = stax.GlobalSelfAttention(16, 16, 16, 2, b_std=0.1, pos_emb_type='SUM')
    _, _, kernel_fn = stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), stax.Relu(), att, stax.Relu(),
                                  stax.GlobalAvgPool(), stax.Dense(1, b_std=0.05))
    kernel_fn = jax.jit(kernel_fn, static_argnames='get')
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        nngp, ntk = kernel_fn(x, None, ('nngp', 'ntk'))
        nngp.block_until_ready(); ntk.block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(path + '.nt.npy', np.stack([np.asarray(nngp), np.asarray(ntk)]))
    print(json.dumps({'first': times[0], 'warm': times[1:], 'threads': None}))
""")


def run_child(python: str, code: str, args: list[str]) -> dict:
    out = subprocess.run([python, "-W", "ignore", "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rnn(return_sequence_last: bool):
    import infinet as inf

    first = inf.Recurrent(inf.Relu(), w_std=1.2, u_std=1.0, b_std=0.1)
    if return_sequence_last:
        return inf.serial(first, inf.Recurrent(inf.Relu(), w_std=1.2, b_std=0.1, return_sequence=False), inf.Dense(1))
    return inf.serial(first, inf.Recurrent(inf.Relu(), w_std=1.2, b_std=0.1), inf.GlobalAvgPool(), inf.Dense(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="sequences for the last-step readout")
    parser.add_argument("--mean-n", type=int, default=500, help="sequences for mean pooling over time")
    parser.add_argument("--attention-n", type=int, default=200, help="sequences for attention vs neural-tangents")
    parser.add_argument("--nt-python", default="/tmp/ntenv/bin/python")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: last,mean,attention")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    from infinet import datasets

    data = datasets.load("mnist1d", n_train=min(args.n, 4000), n_test=10, seed=0)
    x = data.x_train
    print(f"MNIST-1D: {tuple(x.shape)} float64; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "last" not in skip:
        t0 = time.perf_counter()
        k = rnn(True).kernel(x)
        took = time.perf_counter() - t0
        assert torch.isfinite(k.ntk).all()
        print(f"(a) depth-2 ReLU RNN, last step, N = {len(x)}: NNGP + NTK in {took:.1f} s (target < 60 s)")
    if "mean" not in skip:
        xm = x[: args.mean_n]
        t0 = time.perf_counter()
        rnn(False).kernel(xm)
        took = time.perf_counter() - t0
        per_pair = took / (len(xm) * (len(xm) + 1) / 2)
        print(f"(b) depth-2 ReLU RNN, mean over time, N = {len(xm)}: {took:.1f} s ({per_pair * 1e6:.1f} us per pair of "
              f"sequences; N = 4000 at that rate: {per_pair * 4000 * 4001 / 2 / 60:.0f} min)")
    if "attention" not in skip and not os.path.exists(args.nt_python):
        print(f"(c) attention vs neural-tangents: skipped, no Python at {args.nt_python} (see --nt-python)")
    elif "attention" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/x.npy"
            np.save(path, x[: args.attention_n].numpy())
            ours = run_child(sys.executable, INFINET_ATTENTION, [path, str(args.repeats)])
            theirs = run_child(args.nt_python, NT_ATTENTION, [path, str(args.repeats)])
            a, b = np.load(path + ".infinet.npy"), np.load(path + ".nt.npy")
            rel = float(np.abs(a - b).max() / np.abs(b).max())
        ours_warm, theirs_warm = statistics.median(ours["warm"]), statistics.median(theirs["warm"])
        print(f"(c) attention, N = {args.attention_n}: infinet {ours_warm:.2f} s warm (first {ours['first']:.2f} s); "
              f"neural-tangents 0.6.5 jitted {theirs_warm:.2f} s warm (first call with compilation {theirs['first']:.2f} s); "
              f"max relative difference {rel:.1e}")
        print(f"    ratio infinet / neural-tangents, warm: {ours_warm / theirs_warm:.2f} (target <= 0.5); against NT's "
              f"first call: {ours['first'] / theirs['first']:.2f}")


if __name__ == "__main__":
    main()
