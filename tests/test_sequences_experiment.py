"""The `sequences` experiment in a small configuration: its trends, computed from its numbers."""

from infinet.experiments import run_experiment


def test_sequences_experiment(tmp_path):
    params = dict(n_train=120, n_test=100, widths=(32, 64), seeds=2, steps=30, mc_points=8,
                  mc_widths=(64, 256, 1024), mc_samples=6, gated_train=40, gated_test=60, gated_length=5,
                  gated_samples=128, gated_replicates=2, gated_draws=4, gated_widths=(32,), gated_mc=3,
                  transformer_train=80, transformer_test=60)
    result, out = run_experiment("sequences", tmp_path / "s", params=params, quick=True, progress=False)
    n = result.numbers
    for name in ("RNN, mean over time", "CNN + global pooling", "attention", "transformer"):
        kernel = n[name]["kernel"]
        floor = 0.3 if name == "transformer" else 0.5  # the transformer: 80 training sequences, a noisy sampled kernel
        assert kernel["NNGP"]["test_accuracy"] > floor and kernel["NTK t=inf"]["test_accuracy"] > floor, name  # chance: 0.1
        limits = n[name]["stable_learning_rates"]
        assert n[name]["learning_rate"] <= 0.5 * min(limits.values()) * (1 + 1e-12)
        for width in ("32", "64"):
            assert 0.0 <= n[name]["finite"][width]["test_accuracy"] <= 1.0
        single = n[name]["single_network_limit"]  # the limit of one network as trained: one draw of the ensemble
        assert 0.0 <= single["accuracy"] <= 1.0 and single["accuracy_se"] > 0
        assert single["mse"] > kernel["NTK t=train"]["test_mse"] * 0.5 and f"{single['accuracy']:.3f}" in result.summary
    errors = n["rnn_kernel_error"]
    for kind in ("nngp_error", "ntk_error"):
        assert errors[kind][-1] < errors[kind][0]  # one network's kernel error falls with width
    assert errors["nngp_slope"] < -0.25 and errors["ntk_slope"] < -0.25
    assert "Greydanus 2020" in result.summary and f"{errors['nngp_slope']:.2f}" in result.summary
    for layer in ("GRU", "LSTM"):  # sampled NNGP and NTK with their sampling error, Monte Carlo, trained networks
        gated = n["gated"][layer]
        for kernel in ("nngp", "ntk"):
            assert gated[kernel]["test_accuracy"] > 0.15 and gated[kernel]["test_accuracy_sampling_se"] >= 0  # chance 0.1
            assert 0 < gated[kernel]["kernel_max_relative_se"] < 0.2
            assert f"{gated[kernel]['test_accuracy']:.3f}" in result.summary
        assert 0.0 <= gated["nngp_monte_carlo"]["test_accuracy"] <= 1.0
        assert 0.0 <= gated["finite"]["32"]["test_accuracy"] <= 1.0
    assert len(result.tables["gated"].rows) == 2 * 4
    assert out.name == "report.html" and out.exists() and (out.parent / "accuracy_vs_width.png").exists()
