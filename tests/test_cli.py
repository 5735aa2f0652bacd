"""Every CLI command's success and error paths, through typer's runner and one real subprocess."""

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from infinet.cli import app

runner = CliRunner()
TINY = ["-p", "n_train=80", "-p", "n_test=60", "-p", "widths=8,16", "-p", "seeds=1", "-p", "steps=10",
        "-p", "mc_points=6", "-p", "mc_samples=2"]


def invoke(*args):
    return runner.invoke(app, list(args))


def one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [l for l in result.output.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output


def test_help_everywhere():
    for args in ([], ["--help"], ["demo", "--help"], ["list", "--help"], ["run", "--help"], ["kernel", "--help"],
                 ["data", "--help"]):
        result = invoke(*args)
        assert "Usage: infinet" in result.output, args
    assert "--arch" in invoke("kernel", "--help").output and "--param" in invoke("run", "--help").output


def test_help_names_every_layer_a_spec_may_use():
    import re

    from infinet.spec import constructors

    text = invoke("--help").output
    named = set(re.findall(r"[A-Za-z_]+", text))
    missing = sorted(set(constructors()) - named)
    assert not missing, missing
    for new in ("Aggregate", "ConvLocal", "ImageResize", "Index", "DotGeneral", "Rbf", "Gabor", "ExpNormalized",
                "Hermite"):
        assert new in text


def test_list_and_data():
    result = invoke("list")
    names = [line.split()[0] for line in result.output.splitlines()]
    assert result.exit_code == 0 and {"demo", "conv-kernels"} <= set(names) and names == sorted(names)
    result = invoke("data")
    assert result.exit_code == 0 and "digits" in result.output and "mnist1d" in result.output


def test_run_writes_report_and_prints_table(tmp_path):
    result = invoke("run", "demo", "--out", str(tmp_path / "r"), "--seed", "3", *TINY)
    assert result.exit_code == 0, result.output
    assert "NTK at t=inf" in result.output and "report: " in result.output
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["seed"] == 3 and data["params"]["widths"] == [8, 16] and data["params"]["quick"] is False
    assert (tmp_path / "r" / "report.html").exists()
    shown = invoke("run", "demo", "--show-params")
    assert shown.exit_code == 0 and "widths = (64, 256, 1024, 4096)" in shown.output


def test_run_errors():
    one_line_error(invoke("run", "nope"), "unknown experiment 'nope'")
    one_line_error(invoke("run", "demo", "-p", "foo=1"), "no parameter 'foo'")
    one_line_error(invoke("run", "demo", "-p", "widths=a"), "cannot read 'a'")
    one_line_error(invoke("run", "demo", "-p", "noequals"), "key=value")
    one_line_error(invoke("run", "demo", "-p", "dataset=diabetes", "-p", "n_train=50", "-p", "n_test=20"),
                   "classification")


def test_demo_quick(tmp_path):
    result = invoke("demo", "--quick", "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "finite, centered f - f0" in result.output
    assert (tmp_path / "d" / "report.html").exists()
    one_line_error(invoke("demo", "--out", "/proc/forbidden/x"), "/proc/forbidden")


def test_kernel_success(tmp_path):
    out = tmp_path / "k" / "digits.npz"
    result = invoke("kernel", "--arch", "Dense(64, w_std=1.5, b_std=0.05) > Relu() > Dense(10)",
                    "--data", "digits", "--n-train", "60", "--n-test", "20", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "flattened" in result.output  # digits are 1x8x8 images; Dense takes vectors
    f = np.load(out)
    assert f["nngp_train_train"].shape == (60, 60) and f["ntk_test_train"].shape == (20, 60)
    assert f["nngp_train_train"].dtype == np.float64 and str(f["arch"]).startswith("serial(Dense(64")
    assert np.allclose(f["ntk_train_train"], f["ntk_train_train"].T)
    # the saved kernel is the library's kernel of the same data
    import infinet as inf
    from infinet.datasets import load

    ds = load("digits", n_train=60, n_test=20).flat()
    net = inf.parse_spec(str(f["arch"]))
    assert np.array_equal(net.kernel(ds.x_test, ds.x_train).nngp.numpy(), f["nngp_test_train"])
    result = invoke("kernel", "-a", "Dense(8) > Erf()", "-d", "breast_cancer", "-o", str(tmp_path / "b.npz"),
                    "--get", "ntk", "--dtype", "float32", "--tile-size", "50")
    assert result.exit_code == 0, result.output
    g = np.load(tmp_path / "b.npz")
    assert g["ntk_train_train"].dtype == np.float32 and "nngp_train_train" not in g.files


def test_kernel_errors(tmp_path):
    out = str(tmp_path / "x.npz")
    one_line_error(invoke("kernel", "--arch", "Dens(5)", "--data", "digits", "--out", out), "did you mean 'Dense'")
    one_line_error(invoke("kernel", "--arch", "Dense(5)", "--data", "nope", "--out", out), "unknown data set")
    one_line_error(invoke("kernel", "--arch", "Dense(5)", "--data", str(tmp_path / "no.csv"), "--out", out), "no such file")
    one_line_error(invoke("kernel", "--arch", "Dense(5)", "--data", "digits", "--out", out, "--get", "nngp,foo"),
                   "unknown kernel 'foo'")
    one_line_error(invoke("kernel", "--arch", "Dense(5)", "--data", "digits", "--out", str(tmp_path / "x.txt")), ".npz")
    one_line_error(invoke("kernel", "--arch", "Dense(5)", "--data", "digits", "--out", out, "--dtype", "float16"),
                   "--dtype")
    one_line_error(invoke("kernel", "--arch", "Relu()", "--data", "digits", "--out", out), "Gaussian input")
    assert not (tmp_path / "x.npz").exists()


def test_kernel_overflow_keeps_finished_tiles(tmp_path):
    out = tmp_path / "o.npz"
    # E[exp(u) exp(v)] = exp((q1 + q2) / 2 + c) overflows float64 for q = w_std^2 = 900
    result = invoke("kernel", "--arch", "Dense(4, w_std=30.0) > Exp() > Dense(1)", "--data",
                    "breast_cancer", "--out", str(out), "--get", "nngp", "--tile-size", "100")
    one_line_error(result, "partial.npz")
    assert not out.exists()
    partial = np.load(tmp_path / "o.partial.npz")
    assert partial["nngp_train_train"].shape == (455, 455) and "y_train" in partial.files


def test_debug_shows_traceback():
    result = invoke("--debug", "run", "nope")
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_console_script_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infinet.cli", "kernel", "--arch", "Dense(3", "--data", "digits",
                           "--out", str(tmp_path / "a.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
    assert "column 8" in proc.stderr


def test_kernel_store_and_solve(tmp_path):
    store = tmp_path / "st"
    args = ["kernel", "--arch", "Dense(64, w_std=1.4, b_std=0.1) > Relu() > Dense(10, w_std=1.4, b_std=0.1)",
            "--data", "digits", "--n-train", "120", "--n-test", "40", "--store", str(store), "--workers", "0",
            "--tile-size", "50"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "6 tiles computed, 0 already there" in result.output  # 3 x 3 tiles, symmetric
    again = invoke(*args)
    assert "0 tiles computed, 6 already there" in again.output  # resumed: nothing left to do
    solved = invoke("solve", "--store", str(store), "--diag-reg", "1e-4", "--out", str(tmp_path / "p.npz"), "--workers", "2")
    assert solved.exit_code == 0, solved.output
    assert "converged" in solved.output and "test accuracy" in solved.output
    assert np.load(tmp_path / "p.npz")["predictions"].shape == (40, 10)
    both = invoke("kernel", "--arch", "Dense(8)", "--data", "digits", "--store", str(store), "--out", str(tmp_path / "x.npz"))
    assert both.exit_code == 2 and "exactly one of --out" in both.output
    mismatch = invoke(*args[:2], "Dense(64, w_std=2.0) > Relu() > Dense(10)", *args[3:])
    assert mismatch.exit_code == 2 and "different job" in mismatch.output


def test_kernel_and_solve_on_an_existing_scheduler(tmp_path):
    """--scheduler ADDRESS: the same job on a cluster this process did not start (here a LocalCluster
    reached over TCP), identical to the in-process store."""
    from distributed import LocalCluster

    arch = "Dense(32, w_std=1.4, b_std=0.1) > Relu() > Dense(10, w_std=1.4, b_std=0.1)"
    common = ["--arch", arch, "--data", "digits", "--n-train", "90", "--n-test", "30", "--tile-size", "40"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = invoke("kernel", *common, "--store", str(tmp_path / "remote"), "--scheduler", cluster.scheduler_address)
        assert remote.exit_code == 0, remote.output
        assert "6 tiles computed" in remote.output
        solved = invoke("solve", "--store", str(tmp_path / "remote"), "--diag-reg", "1e-3", "--scheduler",
                        cluster.scheduler_address, "--out", str(tmp_path / "remote.npz"))
        assert solved.exit_code == 0, solved.output
        from distributed import Client

        with Client(cluster) as client:  # the commands did not close a cluster they did not start
            assert client.submit(sum, [1, 2]).result() == 3
    local = invoke("kernel", *common, "--store", str(tmp_path / "local"), "--workers", "0")
    assert local.exit_code == 0, local.output
    import zarr

    for split in ("train", "test"):
        a = zarr.open_group(str(tmp_path / "remote" / split), mode="r")["ntk"][...]
        b = zarr.open_group(str(tmp_path / "local" / split), mode="r")["ntk"][...]
        # the in-memory kernel computes repeated inputs once, so its tiles differ: equal to round-off
        assert np.allclose(a, b, rtol=1e-12, atol=0)
    plain = invoke("solve", "--store", str(tmp_path / "local"), "--diag-reg", "1e-3", "--preconditioner",
                   "pivoted-cholesky", "--rank", "20", "--out", str(tmp_path / "local.npz"))
    assert plain.exit_code == 0, plain.output
    assert "pivoted-cholesky preconditioner of rank 20" in plain.output
    assert np.allclose(np.load(tmp_path / "remote.npz")["predictions"], np.load(tmp_path / "local.npz")["predictions"],
                       rtol=1e-7, atol=1e-9)
    one_line_error(invoke("solve", "--store", str(tmp_path / "local"), "--preconditioner", "ilu"),
                   "preconditioner must be one of")
