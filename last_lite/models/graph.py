"""The spatial partition and graph normalisation the models use (numpy only).

Skeleton layouts live in :mod:`last_lite.skeleton`; their names are re-exported here for code
that imports them from this module.
"""

from __future__ import annotations

import numpy as np

from last_lite.skeleton import (LAYOUTS, REGION_NAMES, Layout, custom_layout, get_layout, graph_center,
                                hop_distance)

__all__ = ["LAYOUTS", "REGION_NAMES", "Layout", "custom_layout", "get_layout", "graph_adjacency",
           "graph_center", "hop_distance", "normalize_symmetric", "spatial_partition"]


def spatial_partition(layout: Layout, max_hop: int) -> np.ndarray:
    """ST-GCN "spatial" partition as (K, V, V) with K = 1 + 2*max_hop; ``A[k, j, i] = 1``: j feeds i.

    Subset 0 is the identity; for each hop h, one subset holds pairs at distance h whose source j is
    at the same or a greater distance from the centre than i, the other those whose j is nearer.
    Distances to the centre are true shortest paths (not capped at max_hop).
    """
    if max_hop < 1:
        raise ValueError(f"max_hop must be >= 1, got {max_hop}")
    dist = hop_distance(layout.num_joints, layout.edges)
    to_center = dist[layout.center]
    v = layout.num_joints
    parts = [np.eye(v, dtype=np.float32)]
    for h in range(1, max_hop + 1):
        pair = dist == h
        farther_or_same = pair & (to_center[:, None] >= to_center[None, :])
        nearer = pair & (to_center[:, None] < to_center[None, :])
        parts += [farther_or_same.astype(np.float32), nearer.astype(np.float32)]
    return np.stack(parts)


def normalize_symmetric(adjacency: np.ndarray) -> np.ndarray:
    """``A_k <- D^-1/2 A_k D^-1/2`` for every subset, with D the degree of the whole graph."""
    degree = adjacency.sum(axis=(0, 2))
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return (inv_sqrt[None, :, None] * adjacency * inv_sqrt[None, None, :]).astype(np.float32)


def graph_adjacency(layout: Layout, max_hop: int) -> np.ndarray:
    """The normalised spatial partition the models use, (K, V, V) float32."""
    return normalize_symmetric(spatial_partition(layout, max_hop))
