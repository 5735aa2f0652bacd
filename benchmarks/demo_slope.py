"""The demo's distance-to-limit slope over a wider range of widths: centered networks (f - f0) of the demo's
architecture trained by the demo's gradient descent on digits, their RMS distance to the NTK ensemble's mean after
the same steps, and the local log-log slopes between consecutive widths, beside one network's relative NTK error
at each width (the demo's own functions, infinet.app.experiments.demo). A second run with fewer steps shows
whether the training time changes the picture.

Usage: python benchmarks/demo_slope.py [--widths 64,256,1024,4096,16384] [--seeds 3] [--steps 500,100].
Prints one line per setting and a JSON line at the end. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from infinet.app import datasets
    from infinet.app.experiments import demo
    from infinet.app.experiments._common import mean_and_stderr, network_of

    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="64,256,1024,4096,16384")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", default="500,100")
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    p = demo.EXPERIMENT.resolve({"widths": widths, "seeds": args.seeds, "mc_samples": 4})
    data = datasets.load(p["dataset"], n_train=p["n_train"], n_test=p["n_test"], seed=0).flat()
    n_out = data.y_train.shape[1]

    def net(width):
        return network_of(p, width=width, n_out=n_out)

    out = []
    for steps in (int(s) for s in args.steps.split(",")):
        q = dict(p, steps=steps)
        kernels = demo.kernel_study(q, data, net, 0)
        start = time.perf_counter()
        per_width, _ = demo.finite_study(q, data, net, kernels["lr"], kernels["ntk_t"], kernels["ntk_flow"], 0, True)
        dist = [mean_and_stderr(per_width[(w, True)]["dist"]) for w in widths]
        local = demo.local_slopes(widths, [d for d, _ in dist])
        row = {"steps": steps, "lr": kernels["lr"], "widths": widths, "rms_to_limit": [d for d, _ in dist],
               "rms_se": [s for _, s in dist], "local_slopes": local, "seconds": time.perf_counter() - start}
        print(json.dumps(row), flush=True)
        out.append(row)
    torch.manual_seed(0)
    study = demo.kernel_error_vs_width(net, data.x_train[:50], widths, 4, 0, False)
    print(json.dumps({"ntk_relative_error": study["errors"]["ntk"]}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
