"""Balanced neuron partitions for ``moefy``: k-means on weight rows, and co-activation graph bisection.

Both return ``groups``: a (E, d_ff / E) long tensor, row e = the neuron indices of expert e (sorted).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

EXACT_ASSIGNMENT_MAX = 4096  # above this, the balanced assignment step is greedy (the exact one is O(n³))


def balanced_assign(cost: np.ndarray, size: int) -> np.ndarray:
    """Cluster of each row minimising total ``cost`` (n, E) with exactly ``size`` rows per cluster.

    Exact (each cluster replicated ``size`` times, one linear assignment) up to
    ``EXACT_ASSIGNMENT_MAX`` rows; greedy by increasing cost above it.
    """
    n, e = cost.shape
    if n <= EXACT_ASSIGNMENT_MAX:
        rows, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
        out = np.empty(n, dtype=np.int64)
        out[rows] = cols // size
        return out
    out = np.full(n, -1, dtype=np.int64)
    room = np.full(e, size)
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, c = divmod(int(flat), e)
        if out[i] < 0 and room[c] > 0:
            out[i], room[c] = c, room[c] - 1
    return out


def balanced_kmeans(rows: torch.Tensor, num_experts: int, *, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Balanced spherical k-means of ``rows`` (n, d), ℓ2-normalised first; returns groups (E, n/E)."""
    x = torch.nn.functional.normalize(rows.detach().double().cpu(), dim=1).numpy()
    n = x.shape[0]
    size = n // num_experts
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(n, num_experts, replace=False)]
    labels = None
    for _ in range(iters):
        new = balanced_assign(-(x @ centroids.T), size)  # cost = −cosine (rows are unit vectors)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centroids = np.stack([x[labels == c].mean(0) for c in range(num_experts)])
    return _groups(labels, num_experts)


def coactivation_graph(acts: torch.Tensor, *, neighbours: int = 16) -> nx.Graph:
    """Neurons as nodes, edges to each neuron's ``neighbours`` strongest co-activators.

    The weight of (i, j) is the cosine of the two neurons' activation magnitudes over calibration tokens,
    Σ_t |h_ti||h_tj| / (‖h_i‖‖h_j‖) — a soft co-activation count that also suits GELU/SiLU units,
    whose small negative outputs a hard ``h > 0`` count would ignore.
    """
    a = torch.nn.functional.normalize(acts.detach().double().abs().cpu(), dim=0)
    sim = (a.T @ a).numpy()
    np.fill_diagonal(sim, -np.inf)
    k = min(neighbours, sim.shape[0] - 1)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    graph = nx.Graph()
    graph.add_nodes_from(range(sim.shape[0]))
    for i, row in enumerate(top):
        for j in row:
            graph.add_edge(i, int(j), weight=float(max(sim[i, j], 0.0)))
    return graph


def coactivation_partition(acts: torch.Tensor, num_experts: int, *, neighbours: int = 16,
                           seed: int = 0) -> torch.Tensor:
    """Balanced partition of the co-activation graph of ``acts`` (tokens, n) into ``num_experts`` groups.

    Recursive Kernighan–Lin bisection (networkx): a group of n neurons for E' experts splits into parts of
    n·⌊E'/2⌋/E' and the rest; KL swaps pairs, so the part sizes stay as started and every expert gets
    exactly n/E neurons. Each bisection starts from the split of a random order (seeded).
    """
    graph = coactivation_graph(acts, neighbours=neighbours)
    n = acts.shape[1]
    rng = np.random.default_rng(seed)
    labels = np.empty(n, dtype=np.int64)

    def split(nodes: list[int], experts: int, first: int) -> None:
        if experts == 1:
            labels[nodes] = first
            return
        left_experts = experts // 2
        cut = len(nodes) * left_experts // experts
        order = [nodes[i] for i in rng.permutation(len(nodes))]
        start = (set(order[:cut]), set(order[cut:]))
        a, b = nx.algorithms.community.kernighan_lin_bisection(
            graph.subgraph(nodes), partition=start, max_iter=10, weight="weight", seed=int(rng.integers(1 << 31)))
        split(sorted(a), left_experts, first)
        split(sorted(b), experts - left_experts, first + left_experts)

    split(list(range(n)), num_experts, 0)
    return _groups(labels, num_experts)


def _groups(labels: np.ndarray, num_experts: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.flatnonzero(labels == c)) for c in range(num_experts)])
