"""The straightforward attention-flow reference: Abnar & Zuidema's layered graph and one networkx
Edmonds-Karp max-flow per (output token, input token) pair, rows divided by their sums."""

import networkx as nx
import numpy as np


def layered_adjacency(matrices: np.ndarray) -> np.ndarray:
    """Node l*n + i is token i after layer l; edge (l, i) -> (l-1, j) weighs matrices[l-1][i, j]."""
    layers, n, _ = matrices.shape
    adjacency = np.zeros(((layers + 1) * n, (layers + 1) * n))
    for layer in range(1, layers + 1):
        adjacency[layer * n:(layer + 1) * n, (layer - 1) * n:layer * n] = matrices[layer - 1]
    return adjacency


def networkx_flow(matrices: np.ndarray, rows=None) -> np.ndarray:
    layers, n, _ = matrices.shape
    graph = nx.from_numpy_array(layered_adjacency(matrices), create_using=nx.DiGraph())
    nx.set_edge_attributes(graph, {edge: weight for edge, weight in
                                   nx.get_edge_attributes(graph, "weight").items()}, "capacity")
    rows = range(n) if rows is None else rows
    flows = np.zeros((len(rows), n))
    for r, u in enumerate(rows):
        for v in range(n):
            flows[r, v] = nx.maximum_flow_value(graph, layers * n + u, v,
                                                flow_func=nx.algorithms.flow.edmonds_karp)
        flows[r] /= flows[r].sum()
    return flows
