"""NTK ensemble prediction with covariance: infinet against neural-tangents on the same kernels.

Workload: depth-2 ReLU network (Dense(512, w_std 1.5, b_std 0.05)), 3,000 training and 1,000 test
points of dimension 64, 10 outputs, times (10, 100, 1000, inf), NTK ensemble mean and covariance
(Lee et al. 2019) in float64. Both libraries get the same kernel matrices (computed once by infinet
and saved), so only the prediction is timed; each runs in its own process for its peak memory. NT
0.6.5 runs from ``--nt-python`` (a separate venv with jax 0.4.23; not a dependency): its
``predict.gradient_descent_mse_ensemble`` is given a kernel function that returns the saved matrices.

    python benchmarks/predict.py [--nt-python /path/to/venv/bin/python] [--repeats 3]
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

import numpy as np
import torch

import infinet as inf

TIMES = [10.0, 100.0, 1000.0, float("inf")]

INFINET_CHILD = textwrap.dedent("""
    import json, resource, sys, time, numpy as np, torch
    from infinet import Kernel
    from infinet.predict import gradient_descent_mse_ensemble
    f = np.load(sys.argv[1]); repeats = int(sys.argv[2])
    t = lambda k: torch.from_numpy(f[k])
    k = Kernel(t('nngp_tt'), t('ntk_tt'), None, None, (1,), True)
    ks = Kernel(t('nngp_st'), t('ntk_st'), None, None, (1,))
    kss = Kernel(t('nngp_ss'), None, None, None, (1,), True)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = gradient_descent_mse_ensemble(k, t('y'), [10.0, 100.0, 1000.0, float('inf')], ks, kss, compute_cov=True)
        times.append(time.perf_counter() - t0)
    np.save(sys.argv[1] + '.infinet.npy', np.concatenate([out.mean.numpy().ravel(), out.cov.numpy().ravel()]))
    print(json.dumps({'times': times, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

NT_CHILD = textwrap.dedent("""
    import json, resource, sys, time, types
    from collections import namedtuple
    sys.modules['neural_tangents.experimental'] = types.ModuleType('neural_tangents.experimental')
    import jax; jax.config.update('jax_enable_x64', True)
    import numpy as np, jax.numpy as jnp
    import neural_tangents as nt
    f = np.load(sys.argv[1]); repeats = int(sys.argv[2])
    n, n_test = f['ntk_tt'].shape[0], f['ntk_st'].shape[0]
    x_train, x_test = np.arange(n, dtype=np.float64)[:, None], -1.0 - np.arange(n_test, dtype=np.float64)[:, None]
    blocks = {k: jnp.asarray(f[k]) for k in ('nngp_tt', 'ntk_tt', 'nngp_st', 'ntk_st', 'nngp_ss')}

    def kernel_fn(x1, x2=None, get=('nngp', 'ntk'), **kw):  # serves the saved matrices
        test1 = bool(x1[0, 0] < 0)
        test2 = x2 is not None and bool(x2[0, 0] < 0)
        key = 'ss' if test1 and (x2 is None or test2) else ('st' if test1 else 'tt')
        if isinstance(get, str):
            return blocks[get + '_' + key]
        return namedtuple('Kernel', get)(*[blocks[g + '_' + key] for g in get])

    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, jnp.asarray(f['y']))
        mean, cov = predict_fn(t=np.array([10.0, 100.0, 1000.0, np.inf]), x_test=x_test, get='ntk', compute_cov=True)
        mean.block_until_ready(); cov.block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(sys.argv[1] + '.nt.npy', np.concatenate([np.asarray(mean).ravel(), np.asarray(cov).ravel()]))
    print(json.dumps({'times': times, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nt-python")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(3000, 64, generator=g, dtype=torch.float64), torch.randn(1000, 64, generator=g, dtype=torch.float64)
    y = torch.randn(3000, 10, generator=g, dtype=torch.float64)
    net = inf.serial(inf.Dense(512, w_std=1.5, b_std=0.05), inf.Relu(), inf.Dense(512, w_std=1.5, b_std=0.05),
                     inf.Relu(), inf.Dense(10, w_std=1.5, b_std=0.05))
    k, ks, kss = net.kernel(x), net.kernel(xt, x), net.kernel(xt, get="nngp")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernels.npz")
        np.savez(path, nngp_tt=k.nngp.numpy(), ntk_tt=k.ntk.numpy(), nngp_st=ks.nngp.numpy(), ntk_st=ks.ntk.numpy(),
                 nngp_ss=kss.nngp.numpy(), y=y.numpy())
        print("NTK ensemble mean + covariance, 3000 train / 1000 test, 10 outputs, t in (10, 100, 1000, inf), float64")
        results = {}
        for name, python, code in (("infinet", sys.executable, INFINET_CHILD), ("neural-tangents", args.nt_python, NT_CHILD)):
            if python is None:
                continue
            out = subprocess.run([python, "-c", code, path, str(args.repeats)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[name] = r
            print(f"  {name:<16} first {r['times'][0]:6.2f} s   median {statistics.median(r['times']):6.2f} s   "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MiB")
        if len(results) == 2:
            a, b = np.load(path + ".infinet.npy"), np.load(path + ".nt.npy")
            ratio = statistics.median(results["neural-tangents"]["times"]) / statistics.median(results["infinet"]["times"])
            print(f"  speed-up vs neural-tangents (medians): {ratio:.2f}x; max |difference| / max |value| = "
                  f"{np.abs(a - b).max() / np.abs(b).max():.2e}")


if __name__ == "__main__":
    main()
