"""Attention flow the way the paper's code computes it (samiraabnar/attention_flow): a networkx
graph and one Edmonds-Karp max-flow per (output, input) pair. tests/test_analysis.py and
bench/flow.py compare attnviz's flow with it."""
from __future__ import annotations

import networkx as nx
import numpy as np
from networkx.algorithms.flow import edmonds_karp


def networkx_flows(capacities: np.ndarray, source: int) -> np.ndarray:
    """Max-flow from node (L, source) to every (0, v) of the layered graph whose edge
    (l, i) -> (l-1, j) has capacity ``capacities[l-1, i, j]`` ([layers, queries, keys]; integer
    or float capacities are used as given)."""
    layers, n, _ = capacities.shape
    g = nx.DiGraph()
    for layer in range(1, layers + 1):
        for i in range(n):
            for j in range(n):
                if capacities[layer - 1, i, j] > 0:
                    g.add_edge((layer, i), (layer - 1, j), capacity=capacities[layer - 1, i, j].item())
    return np.array([nx.maximum_flow_value(g, (layers, source), (0, v), flow_func=edmonds_karp) for v in range(n)],
                    dtype=np.float64)
