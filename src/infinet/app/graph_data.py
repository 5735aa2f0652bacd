"""A graph for node classification, offline: Zachary's karate club (:func:`karate_club`), shipped with networkx."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .data_errors import DatasetError

@dataclass(frozen=True)
class GraphNodes:
    """One graph for node classification. ``x``: (1, C, V) node features, channels first (one graph, N = 1);
    ``adjacency``: (V, V) 0/1 symmetric, no self-loops; ``labels``: (V,) class indices; ``classes``: names."""

    name: str
    x: Tensor
    adjacency: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    description: str

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]


def karate_club() -> GraphNodes:
    """Zachary's karate club (Zachary 1977, "An information flow model for conflict and fission in small
    groups"): 34 members, 78 friendships, and the two clubs the members joined after the split ('Mr. Hi'
    and 'Officer'), the classic node-classification benchmark (Kipf and Welling 2017). The graph ships
    with networkx (a dependency of torch), so nothing is downloaded. Features: one-hot node identities
    (the graph is featureless), as in Kipf and Welling 2017."""
    try:
        import networkx
    except ImportError as e:  # pragma: no cover - networkx comes with torch
        raise DatasetError("the karate club graph needs networkx: pip install networkx") from e
    g = networkx.karate_club_graph()
    nodes = sorted(g.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    adjacency = torch.zeros(len(nodes), len(nodes), dtype=torch.float64)
    for a, b in g.edges:
        if a != b:
            adjacency[index[a], index[b]] = adjacency[index[b], index[a]] = 1.0
    classes = ("Mr. Hi", "Officer")
    labels = torch.tensor([classes.index(g.nodes[v]["club"]) for v in nodes])
    x = torch.eye(len(nodes), dtype=torch.float64).unsqueeze(0)
    return GraphNodes("karate_club", x, adjacency, labels, classes,
                      f"Zachary's karate club: {len(nodes)} members, {int(adjacency.sum()) // 2} friendships, 2 clubs")



__all__ = ["GraphNodes", "karate_club"]
