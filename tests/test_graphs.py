"""Graph data, node-level kernels and finite node models, and the `graphs` experiment's quick form."""

import torch

import infinet as inf
from infinet import datasets
from infinet.experiments import run_experiment
from tests._statistics import assert_within_standard_errors

F64 = torch.float64


def test_karate_club_is_the_published_graph():
    g = datasets.karate_club()
    assert g.n_nodes == 34 and int(g.adjacency.sum()) == 2 * 78 and torch.equal(g.adjacency, g.adjacency.T)
    assert g.labels.bincount().tolist() == [17, 17] and int(g.labels[0]) == 0 and int(g.labels[33]) == 1
    assert g.x.shape == (1, 34, 34)


def test_normalized_adjacency():
    a = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    p = inf.normalized_adjacency(a)
    d = torch.tensor([2.0, 3.0, 2.0], dtype=F64)
    assert torch.allclose(p, (a.double() + torch.eye(3, dtype=F64)) / torch.sqrt(d[:, None] * d[None, :]))
    isolated = inf.normalized_adjacency(torch.zeros(2, 2), self_loops=False)
    assert torch.equal(isolated, torch.zeros(2, 2, dtype=F64))


def node_net(width):
    return inf.serial(inf.Dense(width, w_std=1.3, b_std=0.1), inf.Aggregate(), inf.Relu(), inf.Dense(width, w_std=1.2),
                      inf.Aggregate(), inf.Erf(), inf.Dense(1, b_std=0.1))


def test_node_kernel_matches_finite_networks():
    """Node-level kernels of one graph against the empirical kernels of 48 width-1024 networks at its nodes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, generator=gen, dtype=F64)
    a = inf.normalized_adjacency((torch.rand(6, 6, generator=gen) < 0.4).to(F64)).unsqueeze(0)
    exact = inf.node_kernel(node_net(1), x, a)
    assert exact.nngp.shape == (6, 6) and torch.equal(exact.nngp, exact.nngp.T)
    nngps, ntks = [], []
    nodes = torch.arange(6)
    for s in range(48):
        model = inf.NodeModel(node_net(1024).build((3, 6), seed=s, dtype=F64), x, a)
        jac = []
        out = model(nodes)[:, 0]
        params = list(model.parameters())
        for i in range(6):
            grads = torch.autograd.grad(out[i], params, retain_graph=True)
            jac.append(torch.cat([g.reshape(-1) for g in grads]))
        jac = torch.stack(jac)
        ntks.append(jac @ jac.T)
        nngps.append(out.detach()[:, None] * out.detach()[None, :])
    nngp, ntk = torch.stack(nngps), torch.stack(ntks)
    mc = inf.MonteCarloKernel(nngp.mean(0), ntk.mean(0), nngp.std(0) / 48**0.5, ntk.std(0) / 48**0.5, 48)
    assert_within_standard_errors(exact, mc)
    rect = inf.node_kernel(node_net(1), x, a, x, a)
    assert torch.allclose(rect.ntk, exact.ntk, rtol=1e-12)


def test_node_kernel_errors():
    x = torch.randn(1, 3, 6, dtype=F64)
    a = torch.ones(1, 6, 6, dtype=F64)
    import pytest

    with pytest.raises(ValueError, match="keeps the nodes"):
        inf.node_kernel(inf.serial(inf.Dense(4), inf.Aggregate(), inf.GlobalAvgPool(), inf.Dense(1)), x, a)
    with pytest.raises(ValueError, match="needs the graphs"):
        inf.node_kernel(node_net(1), x, None)
    with pytest.raises(ValueError, match="one graph"):
        inf.NodeModel(node_net(4).build((3, 6)), x.repeat(2, 1, 1), a.repeat(2, 1, 1))


def test_graphs_experiment(tmp_path):
    params = dict(labelled=(2, 6), splits=3, widths=(32, 512), steps=200)
    result, out = run_experiment("graphs", tmp_path / "g", params=params, quick=True, progress=False)
    n = result.numbers
    for per_class in ("2", "6"):
        e = n[per_class]
        assert e["GCN NTK t=inf"]["test_accuracy"] > 0.7 and e["GCN NNGP"]["test_accuracy"] > 0.6  # chance: 0.5
        assert e["MLP (no graph) NNGP"]["test_accuracy"] == 0.5  # one-hot features: no information off the graph
        d = n["distance_to_ntk"][per_class]
        assert d["512"]["mean"] < d["32"]["mean"]  # wider networks stay closer to their infinite-width prediction
    assert "karate" in result.summary and out.exists() and (out.parent / "accuracy_vs_labelled.png").exists()
