"""Where the UCI experiment's time goes, and what the two fixes buy, measured in one process on the collection
(``../shared/data/uci`` by default, or the folder given).

1. The linear kernel (depth 0, the low-rank case): libsvm's SMO against the interior-point method on the
   kernel's factor (infinet.inference.svm.LowRankSVC), per C of Arora et al.'s grid on each data set's validation
   split; libsvm gets ``--libsvm-limit`` seconds per fit in a child process (beyond that it is recorded as
   "over"); prediction agreement and the dual objectives (lower is better) for the fits both finish.
2. Reusing a fit for larger C once no multiplier is at its bound: the fits saved on the NTK sweep, and whether
   any validation accuracy differs from one fit per C (it should not).

Usage: python benchmarks/uci_svm.py [DIR] [--sets a,b,c] [--libsvm-limit SECONDS]. Prints one line per data set
and a JSON line at the end. Never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci"


def _libsvm_fit(queue, k_train, y, C, k_test):
    from sklearn.svm import SVC

    start = time.perf_counter()
    svc = SVC(kernel="precomputed", C=C).fit(k_train, y)
    coef = np.zeros((len(np.unique(y)) - 1, len(y)))
    coef[:, svc.support_] = svc.dual_coef_
    queue.put((time.perf_counter() - start, svc.predict(k_test), coef))


def libsvm(k_train, y, C, k_test, limit):
    """(seconds, predictions, dual coefficients) of libsvm in a child process, or None after ``limit`` seconds."""
    queue = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=_libsvm_fit, args=(queue, k_train, y, C, k_test))
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return queue.get()


def binary_objective(k, y01, alpha):
    y = np.where(y01 == 0, 1.0, -1.0)
    return 0.5 * (alpha * y) @ k @ (alpha * y) - alpha.sum()


def main() -> None:
    import infinet as inf
    from infinet.app.experiments import uci as U
    from infinet.inference.svm import LowRankSVC, low_rank_factor

    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default=str(ROOT))
    parser.add_argument("--sets", default="bank,abalone,wine-quality-red,contrac,titanic,yeast,car")
    parser.add_argument("--libsvm-limit", type=float, default=120.0)
    args = parser.parse_args()
    names = [s for s in args.sets.split(",") if s]
    out = []
    for name in names:
        task = inf.datasets.read_uci(Path(args.root) / name)
        train, val = task.validation
        kernel = task.x @ task.x.T
        k_train, k_val = kernel[np.ix_(train, train)], kernel[np.ix_(val, train)]
        factor = low_rank_factor(k_train)
        row = {"name": name, "n_train": len(train), "rank": None if factor is None else factor.shape[1], "fits": []}
        for C in U.C_GRID:
            start = time.perf_counter()
            ours = LowRankSVC(C).fit(factor, task.y[train]) if factor is not None else None
            t_ours = time.perf_counter() - start
            theirs = libsvm(k_train, task.y[train], C, k_val, args.libsvm_limit)
            fit = {"C": C, "ipm_s": t_ours, "libsvm_s": None if theirs is None else theirs[0]}
            if ours is not None and theirs is not None:
                pred = ours.predict(k_val)
                fit["disagree"] = int(np.sum(pred != theirs[1]))
                fit["acc_ipm"], fit["acc_libsvm"] = float(np.mean(pred == task.y[val])), float(np.mean(theirs[1] == task.y[val]))
                if task.n_classes == 2:
                    _, _, idx, coef, _ = ours.pairs_[0]
                    fit["objective_ipm"] = binary_objective(k_train, task.y[train], np.abs(coef))
                    fit["objective_libsvm"] = binary_objective(k_train, task.y[train], np.abs(theirs[2][0]))
            row["fits"].append(fit)
            print(name, json.dumps(fit), flush=True)
        # reuse of fits across C on the NTK sweep
        kernels = U.kernel_family("NTK", task.x, 5)
        start = time.perf_counter()
        every = [U._svm_sweep(k, train, val, task.y, U.C_GRID, reuse=False) for _, k in kernels]
        t_every = time.perf_counter() - start
        start = time.perf_counter()
        reused = [U._svm_sweep(k, train, val, task.y, U.C_GRID, reuse=True) for _, k in kernels]
        t_reused = time.perf_counter() - start
        row["reuse"] = {"seconds_one_fit_per_C": t_every, "seconds_reuse": t_reused,
                        "accuracies_differ": int(np.sum(np.array(every) != np.array(reused)))}
        print(name, json.dumps(row["reuse"]), flush=True)
        out.append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
