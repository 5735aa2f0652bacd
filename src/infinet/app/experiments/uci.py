"""NTK classifiers on the 90 UCI data sets of Arora, Du, Li, Salakhutdinov, Wang and Yu 2020 (ICLR, "Harnessing
the power of infinitely wide deep nets on small-data tasks", Sec. 5.1 and Table 1), against random forests and a
Gaussian-kernel SVM run the same way.

Protocol (theirs, from their paper and code): the Fernández-Delgado et al. 2014 collection, keeping the data sets
with at most 5,000 examples and no separate test file (:func:`infinet.datasets.uci_collection`). Kernel: the NTK
of a fully-connected ReLU network with ``depth`` = 0..4 hidden layers of which the first ``fixed`` = 0..depth are
not trained (:func:`infinet.architectures.fully_connected`; on the raw standardized features, x scaled by sqrt(d)
so that infinet's input kernel x.x'/d is their x.x'). Classifier: a one-vs-one soft-margin SVM on the
precomputed kernel with C in 10^-2..10^4 (:func:`infinet.inference.svm.fit_svc`). Hyperparameters are picked by
accuracy on the collection's validation split (the first best in the order depth, fixed, C, as theirs), and the
reported accuracy is the mean over its 4 cross-validation folds with those hyperparameters.

Baselines in the same run, chosen and scored the same way: random forests (scikit-learn, ``n_estimators`` trees,
``max_features`` in {sqrt, 0.25, 0.5, 1.0}) and an SVM with the Gaussian kernel exp(-gamma |x - x'|^2), gamma in
{1/16, 1/4, 1, 4, 16} / d, the same C grid. Also infinet's NNGP of the same networks (depth 0..4, the readout
trained alone) and one deeper architecture: a residual ReLU network, Dense > ``blocks`` x (x + Dense(Relu(x)))
> Relu > Dense, blocks in {2, 4, 8}, NTK. The paper's Friedman rank, P90, P95 and PMA are relative to the 179
classifiers of Fernández-Delgado et al., whose results are not here: the ranks here are among the classifiers
of this run.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..report import Result, Table
from . import Experiment, ExperimentError, Param
from ._common import derived_seed, pyplot

C_GRID = tuple(10.0 ** i for i in range(-2, 5))
GAMMAS = (1 / 16, 1 / 4, 1.0, 4.0, 16.0)
MAX_FEATURES = ("sqrt", 0.25, 0.5, 1.0)
RESIDUAL_BLOCKS = (2, 4, 8)
#: Arora et al. 2020, Table 1 (as we read it): the NTK's and random forests' average accuracy on the 90 sets
PAPER = {"NTK": 81.95, "RF": 81.56}
#: the deterministic handful of the quick variant: small sets of several kinds (binary, multi-class, tiny)
QUICK_SETS = ("acute-inflammation", "breast-tissue", "fertility", "iris", "lenses", "teaching", "wine", "zoo")
CLASSIFIERS = ("NTK", "NNGP", "residual NTK", "RF", "Gaussian SVM")


def residual_network(blocks: int, d: int):
    """Dense(sqrt(d)) > blocks x (x + Dense(Relu(x))) > Relu > Dense(1): NTK of a residual ReLU network."""
    from ...engine.layers import Dense, FanInSum, FanOut, Identity, Relu, parallel, repeat, serial

    block = serial(FanOut(2), parallel(Identity(), serial(Relu(), Dense(512))), FanInSum())
    return serial(Dense(512, w_std=math.sqrt(d)), repeat(block, blocks), Relu(), Dense(1))


def kernel_family(name: str, x: np.ndarray, max_depth: int) -> list[tuple[str, np.ndarray]]:
    """(hyperparameter label, N x N kernel) of one kernel classifier, in the order hyperparameters are tried."""
    import torch

    from ...engine.architectures import fully_connected

    d = x.shape[1]
    scaled = torch.tensor(x) * math.sqrt(d)  # infinet's input kernel x.x'/d becomes x.x'
    if name == "NTK":
        return [(f"depth={dep} fixed={fix}", fully_connected(dep, fix).kernel(scaled, get="ntk").ntk.numpy())
                for dep in range(max_depth) for fix in range(dep + 1)]
    if name == "NNGP":
        return [(f"depth={dep}", fully_connected(dep).kernel(scaled, get="nngp").nngp.numpy()) for dep in range(max_depth)]
    if name == "residual NTK":
        return [(f"blocks={b}", residual_network(b, d).kernel(torch.tensor(x), get="ntk").ntk.numpy())
                for b in RESIDUAL_BLOCKS]
    if name == "Gaussian SVM":
        sq = np.sum(x * x, axis=1)
        dist = np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0, None)
        return [(f"gamma={g:g}/d", np.exp(-(g / d) * dist)) for g in GAMMAS]
    raise ValueError(name)


def _svm_sweep(kernel, train, test, y, Cs, reuse: bool) -> list[float]:
    """Accuracies on ``test`` of SVMs trained on ``train`` for each C of the increasing ``Cs``. With ``reuse``, once
    no multiplier reaches its bound the fit serves every larger C (:func:`infinet.inference.svm.at_bound`)."""
    from ...inference.svm import at_bound, fit_svc, low_rank_factor

    k_train, k_test = kernel[np.ix_(train, train)], kernel[np.ix_(test, train)]
    factor = low_rank_factor(k_train)
    out, last = [], None
    for C in Cs:
        if last is None or not reuse or at_bound(last[0], last[1]):
            model = fit_svc(k_train, y[train], C, factor=factor)
            last = (model, C, float(np.mean(model.predict(k_test) == y[test])))
        out.append(last[2])
    return out


def _select_and_score(task, validation_scores, score, describe) -> dict:
    """Arora et al.'s protocol for any classifier: the first best (strict >) of ``validation_scores``, an iterable
    of (choice, validation accuracy) in the order they are tried, then the mean of ``score(choice, train, test)``
    over the 4 folds."""
    best, choice = -1.0, None
    for candidate, acc in validation_scores:
        if acc > best:
            best, choice = acc, candidate
    folds = [score(choice, tr, te) for tr, te in task.folds]
    return {"validation": best, "accuracy": float(np.mean(folds)), "choice": describe(choice)}


def _kernel_classifier(kernels, task, reuse: bool) -> dict:
    """Select (kernel, C) on the validation split (in the order depth, fixed, C as Arora et al.), then the mean
    accuracy over the 4 folds with that choice."""
    train, val = task.validation
    scores = (((label, kernel, C), acc) for label, kernel in kernels
              for C, acc in zip(C_GRID, _svm_sweep(kernel, train, val, task.y, C_GRID, reuse)))
    return _select_and_score(task, scores,
                             lambda c, tr, te: _svm_sweep(c[1], tr, te, task.y, (c[2],), reuse)[0],
                             lambda c: f"{c[0]} C={c[2]:g}")


def _forest(task, n_trees: int, seed: int) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    def score(features, tr, te):
        rf = RandomForestClassifier(n_estimators=n_trees, max_features=features, random_state=seed, n_jobs=1)
        return float(np.mean(rf.fit(task.x[tr], task.y[tr]).predict(task.x[te]) == task.y[te]))

    train, val = task.validation
    return _select_and_score(task, ((f, score(f, train, val)) for f in MAX_FEATURES), score,
                             lambda f: f"max_features={f}")


def evaluate(folder: str, max_depth: int, n_trees: int, seed: int, reuse: bool = True) -> dict:
    """Every classifier on one data set: validation accuracy, 4-fold accuracy, chosen hyperparameters, seconds."""
    import torch

    from ..uci import read_uci

    torch.set_num_threads(1)
    task = read_uci(folder)
    out = {"name": task.name, "n": len(task.x), "d": task.n_features, "classes": task.n_classes, "seconds": {}}
    for name in CLASSIFIERS:
        start = time.perf_counter()
        if name == "RF":
            out[name] = _forest(task, n_trees, seed)
        else:
            out[name] = _kernel_classifier(kernel_family(name, task.x, max_depth), task, reuse)
        out["seconds"][name] = time.perf_counter() - start
    return out


def friedman_ranks(acc: np.ndarray) -> np.ndarray:
    """Mean rank of each classifier (columns) over data sets (rows): 1 the most accurate, ties averaged
    (Friedman 1937; Demšar 2006, "Statistical comparisons of classifiers over multiple data sets", Sec. 3.2.2)."""
    from scipy.stats import rankdata

    return np.mean([rankdata(-row) for row in acc], axis=0)


def run(p: dict, seed: int, progress: bool) -> Result:
    from tqdm.auto import tqdm

    from ..uci import read_metadata, uci_collection

    if not p["data"]:
        raise ExperimentError("uci needs the collection's folder: infinet run uci --data DIR (see infinet.app.uci)")
    root = Path(p["data"])
    names = list(uci_collection(root))
    if p["sets"]:
        missing = sorted(set(p["sets"]) - set(names))
        if missing:
            raise ExperimentError(f"uci.sets: not among the {len(names)} data sets of {root}: {', '.join(missing)}")
        names = [n for n in names if n in p["sets"]]
    workers = max(1, min(p["workers"], len(names)))
    start = time.perf_counter()
    args = {n: (str(root / n), p["max_depth"], p["trees"], derived_seed(seed, i) % 2**32, p["reuse"])
            for i, n in enumerate(names)}
    results = {}
    bar = tqdm(total=len(names), desc="uci data sets", disable=not progress)
    if workers == 1:
        for n in names:
            results[n] = evaluate(*args[n])
            bar.set_postfix_str(n)
            bar.update()
    else:  # the largest first, so that no long data set starts last
        sizes = {n: os.path.getsize(root / n / read_metadata(root / n / f"{n}.txt")["fich1"]) for n in names}
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(evaluate, *args[n]): n for n in sorted(names, key=sizes.get, reverse=True)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.set_postfix_str(futures[future])
                bar.update()
    bar.close()
    rows = [results[n] for n in names]
    wall = time.perf_counter() - start
    return _result(rows, p, wall, workers)


def _result(rows: list[dict], p: dict, wall: float, workers: int) -> Result:
    acc = np.array([[100 * r[c]["accuracy"] for c in CLASSIFIERS] for r in rows])
    ranks = friedman_ranks(acc)
    mean, sd = acc.mean(axis=0), acc.std(axis=0, ddof=1) if len(acc) > 1 else np.zeros(len(CLASSIFIERS))
    ntk = acc[:, 0]
    summary_table = Table(["classifier", "mean accuracy (%)", "sd over data sets", "Friedman rank", "wins vs NTK",
                           "losses vs NTK", "ties", "seconds"],
                          caption=f"{len(rows)} UCI data sets (Arora et al. 2020 protocol): 4-fold accuracy with "
                                  "hyperparameters chosen on the validation split; ranks among these classifiers")
    for j, c in enumerate(CLASSIFIERS):
        seconds = sum(r["seconds"][c] for r in rows)
        summary_table.rows.append([c, round(mean[j], 2), round(sd[j], 2), round(ranks[j], 2),
                                   int(np.sum(acc[:, j] > ntk)), int(np.sum(acc[:, j] < ntk)),
                                   int(np.sum(acc[:, j] == ntk)), round(seconds, 1)])
    per_set = Table(["data set", "N", "d", "classes"] + [f"{c} (%)" for c in CLASSIFIERS] + ["NTK choice"],
                    caption="per data set: 4-fold accuracy; the NTK's hyperparameters chosen on validation")
    for r, a in zip(rows, acc):
        per_set.rows.append([r["name"], r["n"], r["d"], r["classes"]] + [round(v, 2) for v in a] + [r["NTK"]["choice"]])
    numbers = {"n_datasets": len(rows), "wall_seconds": wall, "workers": workers,
               "mean_accuracy": {c: float(mean[j]) for j, c in enumerate(CLASSIFIERS)},
               "friedman_rank": {c: float(ranks[j]) for j, c in enumerate(CLASSIFIERS)},
               "paper_mean_accuracy": PAPER,
               "ntk_minus_paper": float(mean[0] - PAPER["NTK"]),
               "ntk_beats_rf": bool(mean[0] > mean[3]),
               "per_dataset": rows}
    if len(rows) > 2:
        from scipy.stats import friedmanchisquare

        numbers["friedman_test_p"] = float(friedmanchisquare(*acc.T).pvalue)
    verdict = ("beats" if mean[0] > mean[3] else "does not beat")
    summary = (f"NTK SVM: {mean[0]:.2f}% mean 4-fold accuracy over {len(rows)} data sets (the paper: "
               f"{PAPER['NTK']}% over its 90); random forests {mean[3]:.2f}% (paper {PAPER['RF']}%). On these numbers the "
               f"NTK {verdict} random forests on average accuracy, wins on {int(np.sum(ntk > acc[:, 3]))} and loses on "
               f"{int(np.sum(ntk < acc[:, 3]))} data sets, Friedman rank {ranks[0]:.2f} against {ranks[3]:.2f} among the "
               f"{len(CLASSIFIERS)} classifiers here. NNGP {mean[1]:.2f}%, residual NTK {mean[2]:.2f}%, Gaussian SVM "
               f"{mean[4]:.2f}%. Wall time {wall / 60:.1f} min with {workers} worker(s).")
    notes = ["The paper's Friedman rank, P90, P95 and PMA compare with the 179 classifiers of Fernández-Delgado et al. "
             "2014, whose results are not in this run; the ranks here are among the classifiers of this run only.",
             "Inputs: the collection's standardized features; for the fully-connected kernels scaled by sqrt(d), so that "
             "infinet's input kernel x.x'/d equals Arora et al.'s x.x' (the SVM's C depends on the kernel's scale).",
             "Low-rank training kernels (the linear kernel, depth 0) are solved by an interior-point method on their "
             "factor instead of libsvm's SMO, which needs hours there at large C (infinet.inference.svm)."]
    return Result("NTK classifiers on the UCI collection (Arora et al. 2020)", summary, numbers,
                  {"summary": summary_table, "per_dataset": per_set}, {"ntk_vs_rf": _figure(acc)}, notes,
                  timings={"wall": wall})


def _figure(acc: np.ndarray):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    ax = axes[0]
    ax.scatter(acc[:, 3], acc[:, 0], s=14, alpha=0.7)
    low = float(min(acc[:, 0].min(), acc[:, 3].min())) - 2
    ax.plot([low, 100], [low, 100], "k--", lw=1)
    ax.set_xlabel("random forest accuracy (%)")
    ax.set_ylabel("NTK SVM accuracy (%)")
    ax.set_title("per data set (above the line: NTK better)")
    ax = axes[1]
    order = np.argsort(acc[:, 0])
    for j, c in enumerate(CLASSIFIERS):
        ax.plot(np.arange(len(acc)), acc[order, j], ".-" if j == 0 else ".", ms=4, lw=1, label=c, alpha=0.8)
    ax.set_xlabel("data sets, by NTK accuracy")
    ax.set_ylabel("4-fold accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="uci",
    description="NTK SVMs on the 90 UCI data sets of Arora et al. 2020 vs random forests and a Gaussian SVM",
    params={
        "data": Param("", "folder of the UCI collection (Fernández-Delgado et al. 2014 format); --data DIR"),
        "sets": Param((), "only these data sets (names, comma-separated); empty: all kept by Arora et al.'s rule",
                      quick=QUICK_SETS),
        "max_depth": Param(5, "NTK depths 0..max_depth-1 hidden layers (Arora et al.: 5)"),
        "trees": Param(500, "trees of each random forest", quick=100),
        "workers": Param(min(2, os.cpu_count() or 1), "data sets evaluated in parallel processes"),
        "reuse": Param(True, "reuse an SVM fit for larger C once no multiplier is at its bound (exact; false: "
                             "one fit per C)"),
    },
    run=run,
    details=__doc__,
)
