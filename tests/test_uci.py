"""The UCI collection (Fernández-Delgado et al. 2014 format): its reader, and the uci experiment of Arora et al. 2020."""

from pathlib import Path

import numpy as np
import pytest

import infinet as inf
from infinet.app.experiments import run_experiment
from infinet.app.experiments.uci import friedman_ranks
from infinet.datasets import DatasetError, read_uci, uci_collection

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared UCI collection is not at {SHARED}")


def write_set(root: Path, name: str, x: np.ndarray, y: np.ndarray, classes: int, test=None, splits=None,
              kfold=None) -> Path:
    """A data set in the collection's format: metadata, data file(s) with a header row and row numbers, splits."""
    folder = root / name
    folder.mkdir(parents=True)
    files = [(f"{name}_R.dat" if test is None else f"{name}_train_R.dat", x, y)]
    if test is not None:
        files.append((f"{name}_test_R.dat", *test))
    meta = [f"n_entradas= {x.shape[1]}", f"n_clases= {classes}", f"n_arquivos= {len(files)}",
            f"fich1= {files[0][0]}", f"n_patrons1= {len(x)}"]
    if test is not None:
        meta += [f"fich2= {files[1][0]}", f"n_patrons2= {len(test[0])}"]
    (folder / f"{name}.txt").write_text("\n".join(meta) + "\n")
    for fname, xs, ys in files:
        header = "\t" + "\t".join(f"f{i + 1}" for i in range(xs.shape[1])) + "\tclase"
        rows = [f"{i + 1}\t" + "\t".join(f"{v:g}" for v in row) + f"\t{c}" for i, (row, c) in enumerate(zip(xs, ys))]
        (folder / fname).write_text("\n".join([header] + rows) + "\n")
    n = len(x)
    splits = splits or [list(range(0, n, 2)), list(range(1, n, 2))]
    kfold = kfold or [part for k in range(4) for part in ([i for i in range(n) if i % 4 != k], list(range(k, n, 4)))]
    (folder / "conxuntos.dat").write_text("\n".join(" ".join(map(str, row)) for row in splits) + "\n")
    (folder / "conxuntos_kfold.dat").write_text("\n".join(" ".join(map(str, row)) for row in kfold) + "\n")
    return folder


def test_reader_gives_the_files_examples_splits_and_folds(tmp_path):
    rng = np.random.default_rng(0)
    x, y = np.round(rng.standard_normal((12, 3)), 4), np.arange(12) % 3
    task = read_uci(write_set(tmp_path, "toy", x, y, 3))
    assert task.name == "toy" and np.allclose(task.x, x) and np.array_equal(task.y, y) and task.n_classes == 3
    assert np.array_equal(task.validation[0], np.arange(0, 12, 2)) and len(task.folds) == 4
    assert np.array_equal(task.folds[1][1], np.arange(1, 12, 4)) and task.x_test is None
    held = read_uci(write_set(tmp_path, "held", x, y, 3, test=(x[:4], y[:4])))
    assert held.x_test.shape == (4, 3) and held.n_examples == 16
    data = inf.datasets.load(f"uci:{tmp_path / 'toy'}", standardize_inputs=False, sphere=False)
    assert data.x_train.shape == (6, 3) and data.x_test.shape == (6, 3) and data.task == "classification"
    fold = inf.datasets.load(f"uci:{tmp_path / 'toy'}", fold=2, standardize_inputs=False, sphere=False)
    assert np.allclose(fold.x_test.numpy(), x[2::4])
    # Arora et al.'s rule: no separate test file, at most max_examples examples
    assert uci_collection(tmp_path) == ["toy"]
    assert uci_collection(tmp_path, separate_test=True) == ["held", "toy"]
    assert uci_collection(tmp_path, max_examples=15, separate_test=True) == ["toy"]


@pytest.mark.parametrize("damage,match", [
    (lambda f: (f / "toy_R.dat").unlink(), "toy_R.dat: no such file"),
    (lambda f: (f / "toy.txt").write_text("n_entradas= 3\nn_clases= 3\n"), "no 'fich1=' entry"),
    (lambda f: (f / "toy.txt").write_text("n_entradas= three\n"), "must be an integer"),
    (lambda f: (f / "toy.txt").write_text("garbage line here\n"), "expected 'key= value'"),
    (lambda f: (f / "toy_R.dat").write_text("h\n1\t0.5\t1\t2\t0\n2\t0.1\t1\n"), "line 3: expected a row number, 3 features"),
    (lambda f: (f / "toy_R.dat").write_text("h\n1\t0.5\tx\t2\t0\n"), "line 2: non-numeric"),
    (lambda f: (f / "toy_R.dat").write_text("h\n1\t0.5\t1\t2\t7\n"), "class 7 outside 0..2"),
    (lambda f: (f / "toy_R.dat").write_text("h\n1\tnan\t1\t2\t0\n"), "finite numbers"),
    (lambda f: (f / "conxuntos.dat").write_text("0 1 2\n"), "expected 2 rows"),
    (lambda f: (f / "conxuntos.dat").write_text("0 1 2\n3 99\n"), "index 99 outside 0..11"),
    (lambda f: (f / "conxuntos_kfold.dat").unlink(), "conxuntos_kfold.dat: no such file"),
])
def test_malformed_files_are_refused_naming_file_and_line(tmp_path, damage, match):
    folder = write_set(tmp_path, "toy", np.ones((12, 3)), np.arange(12) % 3, 3)
    damage(folder)
    with pytest.raises(DatasetError, match=match):
        read_uci(folder)


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        read_uci(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no UCI data sets found"):
        uci_collection(tmp_path)
    folder = write_set(tmp_path, "toy", np.ones((12, 3)), np.arange(12) % 3, 3)
    with pytest.raises(DatasetError, match="fold must be 0..3"):
        inf.datasets.load(f"uci:{folder}", fold=4)
    with pytest.raises(DatasetError, match="fold= selects a cross-validation fold"):
        inf.datasets.load("digits", fold=0)
    meta = folder / "toy.txt"
    meta.write_text(meta.read_text().replace("n_patrons1= 12", "n_patrons1= 13"))
    with pytest.raises(DatasetError, match="12 examples, but toy.txt says n_patrons1= 13"):
        read_uci(folder)


@needs_shared
def test_shared_collection_is_arora_et_als_90_data_sets():
    names = uci_collection(SHARED)
    assert len(names) == 90 and "bank" in names and "annealing" not in names and "adult" not in names
    for name, n, d, c in (("abalone", 4177, 8, 3), ("iris", 150, 4, 3), ("zoo", 101, 16, 7)):
        task = read_uci(SHARED / name)
        assert (len(task.x), task.n_features, task.n_classes) == (n, d, c)
        assert np.all(np.bincount(task.y, minlength=c) > 0)
        train, val = task.validation
        assert len(np.intersect1d(train, val)) == 0
        tests = [te for _, te in task.folds]
        for tr, te in task.folds:  # each fold trains and tests on different examples, about a quarter in the test part
            assert len(np.intersect1d(tr, te)) == 0 and abs(len(te) - n / 4) <= 2
        # the collection's 4 test parts are different draws, not a partition (together about 70% of the examples)
        assert len(np.unique(np.concatenate(tests))) > n / 2
    held = read_uci(SHARED / "annealing")
    assert held.x_test.shape == (100, 31) and len(held.x) == 798


def test_friedman_ranks_average_ties():
    acc = np.array([[90.0, 80.0, 80.0], [70.0, 75.0, 60.0]])
    assert np.allclose(friedman_ranks(acc), [(1 + 2) / 2, (2.5 + 1) / 2, (2.5 + 3) / 2])


@needs_shared
def test_quick_uci_experiment(tmp_path):
    result, path = run_experiment("uci", tmp_path / "report", quick=True, params={"data": str(SHARED)})
    numbers = result.numbers
    assert numbers["n_datasets"] == 8 and path.is_file() and (tmp_path / "report" / "ntk_vs_rf.png").is_file()
    means = numbers["mean_accuracy"]
    assert set(means) == {"NTK", "NNGP", "residual NTK", "RF", "Gaussian SVM"}
    assert all(50 < v <= 100 for v in means.values())
    assert sum(numbers["friedman_rank"].values()) == pytest.approx(15.0)  # ranks 1..5 on every data set
    iris = next(r for r in numbers["per_dataset"] if r["name"] == "iris")
    assert iris["NTK"]["accuracy"] > 0.9 and iris["RF"]["accuracy"] > 0.9
    with pytest.raises(Exception, match="needs the collection's folder"):
        run_experiment("uci", tmp_path / "r2", quick=True)
    with pytest.raises(Exception, match="not among the"):
        run_experiment("uci", tmp_path / "r3", params={"data": str(SHARED), "sets": "nonexistent"})


def test_cli_data_option(tmp_path):
    from test_cli import invoke, one_line_error

    one_line_error(invoke("run", "demo", "--data", str(tmp_path)), "reads no data folder")
    one_line_error(invoke("run", "uci", "--data", str(tmp_path / "absent"), "--quick"), "no such folder")
