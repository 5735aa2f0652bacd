"""Every command and option with out-of-range values: one `error:` line and exit status 2, before any
work is done (issue 16, defect 7)."""

import pickle

import numpy as np
import pytest

from test_cli import invoke, one_line_error

ARCH = "Dense(8) > Relu() > Dense(1)"
KERNEL = ["kernel", "--arch", ARCH, "--data", "breast_cancer", "--n-train", "20", "--n-test", "10"]


@pytest.mark.parametrize("extra,fragment", [
    (["--n-train", "0"], "--n-train"), (["--n-test", "-5"], "--n-test"), (["--tile-size", "0"], "--tile-size"),
    (["--workers", "-1", "--store", "S"], "--workers"), (["--seed", "-1"], "--seed"),
    (["--device", "tpu", "--store", "S"], "--device"), (["--dtype", "float16"], "--dtype"),
    (["--get", "nngp,foo"], "foo"), (["--out", "k.txt"], ".npz"),
])
def test_kernel_options_out_of_range(tmp_path, extra, fragment):
    args = KERNEL + [a.replace("S", str(tmp_path / "s")) for a in extra]
    if "--out" not in extra and "--store" not in extra:
        args += ["--out", str(tmp_path / "k.npz")]
    one_line_error(invoke(*args), fragment)


def test_kernel_device_cuda_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    one_line_error(invoke(*KERNEL, "--store", str(tmp_path / "s"), "--device", "cuda", "--workers", "0"), "CUDA")
    assert not (tmp_path / "s" / "train").exists()


@pytest.mark.parametrize("spec,fragment", [
    ("Dense(8) > Monomial(200) > Dense(1)", "error"),  # the message depends on where it is refused
    ("repeat(repeat(repeat(Dense(1) > Relu(), 10000), 10000), 10000)", "layers in all"),
])
def test_kernel_bad_architectures(tmp_path, spec, fragment):
    result = invoke("kernel", "--arch", spec, "--data", "breast_cancer", "--n-train", "10", "--n-test", "5",
                    "--out", str(tmp_path / "k.npz"))
    assert result.exit_code == 2, result.output
    one_line_error(result, "")


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    assert invoke(*KERNEL, "--store", str(path), "--workers", "0", "--tile-size", "8").exit_code == 0
    return path


@pytest.mark.parametrize("extra,fragment", [
    (["--diag-reg", "-1"], "--diag-reg"), (["--diag-reg", "nan"], "--diag-reg"), (["--tol", "0"], "--tol"),
    (["--tol", "inf"], "--tol"), (["--max-iter", "-3"], "--max-iter"), (["--max-iter", "0"], "--max-iter"),
    (["--rank", "-2"], "--rank"), (["--workers", "-1"], "--workers"), (["--preconditioner", "magic"], "preconditioner"),
    (["--kernel", "foo"], "foo"),
])
def test_solve_options_out_of_range(store, extra, fragment):
    one_line_error(invoke("solve", "--store", str(store), *extra), fragment)


def test_solve_missing_store_names_the_store(tmp_path):
    one_line_error(invoke("solve", "--store", str(tmp_path / "nowhere")), "no kernel store")


def test_solve_damaged_store_reports_no_accuracy(store):
    chunk = store / "train" / "nngp" / "c" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:10])
    result = invoke("solve", "--store", str(store))
    one_line_error(result, str(chunk))
    assert "accuracy" not in result.output


@pytest.mark.parametrize("name,params,fragment", [
    ("demo", ["seeds=0"], "seeds"), ("demo", ["mc_samples=1"], "mc_samples"), ("demo", ["widths=8,0"], "widths"),
    ("phase-diagram", ["grid=0"], "grid"), ("activations", ["angles=0"], "angles"),
    ("gp-convergence", ["n_networks=-4"], "n_networks"), ("regularization", ["w_std=-1"], "w_std"),
])
def test_experiment_parameters_checked_before_work(tmp_path, name, params, fragment):
    import time

    args = ["run", name, "--out", str(tmp_path / "r")]
    for p in params:
        args += ["-p", p]
    start = time.perf_counter()
    one_line_error(invoke(*args), fragment)
    assert time.perf_counter() - start < 5.0  # refused before any training
    one_line_error(invoke("run", name, "--seed", "-3", "--out", str(tmp_path / "r")), "--seed")


def test_demo_seed_out_of_range(tmp_path):
    one_line_error(invoke("demo", "--seed", "-1", "--out", str(tmp_path / "d")), "--seed")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,fragment", [
    (lambda p: _npz(p / "zero.npz", x=np.zeros((10, 0)), y=np.arange(10) % 2), "feature"),
    (lambda p: (p / "cut.npz").write_bytes(_npz(p / "full.npz", x=np.ones((10, 3)), y=np.arange(10) % 2)
                                            .read_bytes()[:100]) and p / "cut.npz", "cannot read"),
])
def test_bad_data_files(tmp_path, make, fragment):
    path = make(tmp_path)
    one_line_error(invoke("kernel", "--arch", ARCH, "--data", str(path), "--out", str(tmp_path / "k.npz")), fragment)


@pytest.mark.parametrize("payload", [{"data": np.zeros((2, 3072)), "labels": [0, 1, 2]},  # labels don't match
                                     [1, 2, 3], "not a dict"])
def test_crafted_cifar_pickles(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(payload))
    one_line_error(invoke("kernel", "--arch", ARCH, "--data", f"cifar10:{folder}", "--out", str(tmp_path / "k.npz")),
                   "")


def test_builtin_data_with_a_path(tmp_path):
    one_line_error(invoke("kernel", "--arch", ARCH, "--data", "digits:/tmp/x", "--out", str(tmp_path / "k.npz")),
                   "built in")
