"""The report writer and the experiment runner; report.html rendered in headless Chromium."""

import csv
import json
import os
import shutil

import pytest

from infinet.experiments import Experiment, ExperimentError, convert, get, registry, run_experiment
from infinet.experiments._common import loglog_slope, mean_and_stderr, pyplot
from infinet.report import Result, Table, write_report

TINY_DEMO = {"n_train": "80", "n_test": "60", "widths": "8,32", "seeds": "2", "steps": "20", "mc_points": "8",
             "mc_samples": "3"}


def sample_result():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, 4, 9])
    fig2, ax2 = plt.subplots()
    ax2.bar(["a", "b"], [3, 1])
    table = Table(["width", "accuracy"], [[64, 0.91], [256, 0.95]], caption="accuracy vs width")
    other = Table(["name", "value"], caption="odd values <script>")
    other.add("nan value", float("nan"))
    other.add("html <b>", "x & y")
    return Result(title="A test report", summary="Summary & more", numbers={"a": 1.5, "nested": {"b": [1, 2]},
                  "bad": float("inf")}, tables={"accuracy": table, "odd": other},
                  figures={"squares": fig, "bars": fig2}, notes=["a note"])


def test_write_report_files(tmp_path):
    path = write_report(sample_result(), tmp_path / "out", experiment="unit", params={"widths": (64, 256)},
                        seed=7, run_time=1.25)
    out = tmp_path / "out"
    assert path == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.csv", "bars.png", "odd.csv", "report.html",
                                                     "results.json", "squares.png"]
    data = json.loads((out / "results.json").read_text())
    assert data["seed"] == 7 and data["params"] == {"widths": [64, 256]} and data["run_time_s"] == 1.25
    assert data["numbers"] == {"a": 1.5, "nested": {"b": [1, 2]}, "bad": "inf"}
    assert data["tables"]["accuracy"] == [{"width": 64, "accuracy": 0.91}, {"width": 256, "accuracy": 0.95}]
    assert {"infinet", "torch", "numpy", "python"} <= set(data["versions"])
    rows = list(csv.reader(open(out / "accuracy.csv")))
    assert rows == [["width", "accuracy"], ["64", "0.91"], ["256", "0.95"]]
    assert (out / "squares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "<script>" not in html and "&lt;script&gt;" in html  # text is escaped
    assert "http://" not in html and "https://" not in html  # self-contained


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        Table(["a", "b", "c"], [[1, 2]])
    t = Table(["a"])
    with pytest.raises(ValueError):
        t.add(1, 2)


def test_report_to_unwritable_folder_names_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_report(sample_result(), blocker / "sub", experiment="e", params={}, seed=0, run_time=0.0)


def _chromium():
    for browser in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        if browser and os.path.exists(browser) and os.path.exists(driver):
            return browser, driver
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium and chromedriver not installed "
                    "(Debian packages chromium chromium-driver; `make test` installs them where it can)")
def test_report_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _chromium()
    path = write_report(sample_result(), tmp_path, experiment="unit", params={"k": 1}, seed=0, run_time=0.5)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(path.as_uri())
        assert driver.title == "A test report"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        assert len(images) == 2
        assert all(done and w > 100 and h > 100 for done, w, h, _ in images), images
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => [t.dataset.name, t.rows.length])")
        names = {name: rows for name, rows in tables}
        assert names["accuracy"] == 3 and names["odd"] == 3 and "parameters" in names
        text = driver.execute_script("return document.body.innerText")
        assert "Summary & more" in text and "odd values <script>" in text
    finally:
        driver.quit()


# ---- experiments ---------------------------------------------------------------------------------
def test_registry_and_lookup():
    table = registry()
    assert "demo" in table and all(isinstance(e, Experiment) and e.description for e in table.values())
    assert get("DEMO") is not None
    with pytest.raises(ExperimentError, match="unknown experiment 'dmeo'; did you mean 'demo'"):
        get("dmeo")


def test_param_conversion():
    assert convert("64, 256", (1, 2), "w") == (64, 256)
    assert convert("0.5", 1.0, "lr") == 0.5 and convert("3", 1, "n") == 3
    assert convert("yes", False, "b") is True and convert("off", True, "b") is False
    assert convert("mnist1d", "digits", "d") == "mnist1d"
    for raw, default in (("x", 1), ("1.5", 1), ("maybe", True), ("nan", 1.0), ("", (1,)), ("a,b", (1,))):
        with pytest.raises(ExperimentError):
            convert(raw, default, "p")
    exp = get("demo")
    assert exp.resolve(quick=True)["widths"] == exp.params["widths"].quick
    with pytest.raises(ExperimentError, match="did you mean 'widths'"):
        exp.resolve({"width": "4"})


def test_same_seed_same_numbers(tmp_path):
    _, p1 = run_experiment("demo", tmp_path / "a", seed=5, params=TINY_DEMO)
    _, p2 = run_experiment("demo", tmp_path / "b", seed=5, params=TINY_DEMO)
    _, p3 = run_experiment("demo", tmp_path / "c", seed=6, params=TINY_DEMO)
    r1, r2, r3 = (json.loads((p.parent / "results.json").read_text()) for p in (p1, p2, p3))
    assert r1["numbers"] == r2["numbers"] and r1["tables"] == r2["tables"]
    assert r1["numbers"] != r3["numbers"]
    assert r1["params"]["widths"] == [8, 32] and r1["seed"] == 5
    assert {"acc_vs_width.png", "mse_vs_width.png", "mc_error_vs_width.png", "training_loss.png",
            "accuracy.csv", "monte_carlo.csv"} <= {p.name for p in p1.parent.iterdir()}
    # the networks as trained have their own limit: one network of the NTK ensemble, with its z-scores
    limit, z = r1["numbers"]["single_network_limit"], r1["numbers"]["as_trained_vs_limit"]
    widest = r1["numbers"]["finite"]["32"]
    assert 0 < limit["accuracy"] < 1 and limit["accuracy_se"] > 0 and limit["mse"] > r1["numbers"]["kernel"][
        "NTK after 20 steps (mean)"]["test_mse"]  # one network errs more than the mean
    assert z["mse_z"] == pytest.approx((widest["test_mse"] - limit["mse"]) / widest["test_mse_se"])
    assert "one random network of the infinite-width ensemble" in r1["summary"]
    assert f"z = {z['mse_z']:.1f}" in r1["summary"]  # the sentence is computed from the numbers


def test_statistics_helpers():
    m, se = mean_and_stderr([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(se - 1.0 / 3**0.5) < 1e-15
    assert mean_and_stderr([4.0]) == (4.0, 0.0)
    slope, err = loglog_slope([1, 10, 100], [1.0, 0.1, 0.01])
    assert abs(slope + 1) < 1e-12 and err < 1e-10


def test_conv_kernels_experiment_runs(tmp_path):
    result, path = run_experiment("conv-kernels", tmp_path, seed=1,
                                  params={"train_sizes": "20,40", "n_test": "30", "pool_train": "24",
                                          "pool_test": "30", "pool_samples": "32", "pool_replicates": "2",
                                          "pool_draws": "3"})
    data = json.loads((path.parent / "results.json").read_text())
    margins = data["numbers"]["best_conv_minus_fc_ntk_accuracy"]
    assert set(margins) == {"20", "40"} and len(result.tables["accuracy"].rows) == 3 * 2 * 2
    for arch in ("FC-2 (flattened)", "CNN-GAP-3", "Myrtle-5"):
        acc = data["numbers"][arch]["NTK"]["40"]["test_accuracy"]
        assert 0.1 < acc <= 1.0  # well above chance (0.1) on digits
    pooling = data["numbers"]["pooling"]
    for kind in ("NNGP", "NTK"):  # the sampled max-pooling kernel: a sampling error and a ridge at its noise level
        assert pooling["max pooling"][kind]["sampling_se"] >= 0 and pooling["average pooling"][kind]["sampling_se"] == 0
        assert pooling["max pooling"][kind]["diag_reg"] > 1e-4
        assert 0.1 < pooling["average pooling"][kind]["test_accuracy"] <= 1.0
    assert "Max vs average pooling kernels" in result.summary and len(result.tables["pooling"].rows) == 4
