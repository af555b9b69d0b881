"""Occupancy queries (inside / near-outside / far-empty) and their neighbour lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

INSIDE, NEAR_OUTSIDE, FAR_EMPTY = 0, 1, 2


@dataclass
class Queries:
    """Occupancy queries of one scan (Q = n_queries)."""

    xyz: np.ndarray  # (Q, 3) float32
    occ: np.ndarray  # (Q,) float32: 1 inside, 0 otherwise
    intensity: np.ndarray  # (Q,) float32, 0 where none
    has_intensity: np.ndarray  # (Q,) bool
    kind: np.ndarray  # (Q,) int8: INSIDE, NEAR_OUTSIDE or FAR_EMPTY
    source: np.ndarray  # (Q,) int64 the point each query was made from


def sample_queries(
    rng: np.random.Generator,
    xyz: np.ndarray,
    intensity: np.ndarray,
    n_queries: int,
    offset: float,
) -> Queries:
    """Thirds of n_queries around random points; the sensor sits at the lidar-frame origin.

    The points of one third are distinct (drawn without replacement), as in the release.

    inside: pushed away from the sensor along the ray by U(0, offset), occupied;
    near-outside: pulled toward the sensor by U(0, offset); far-empty: uniform on the segment
    sensor → point. Inside and near-outside carry the point's intensity.
    """
    n_near = n_queries // 3
    n_in = n_queries - 2 * n_near  # inside takes the remainder, as in the release
    kind = np.repeat(
        np.array([INSIDE, NEAR_OUTSIDE, FAR_EMPTY], np.int8), [n_in, n_near, n_near]
    )
    # each third from its own draw without replacement (the release's three randperms,
    # `pretrain/dataloader_nuscenes.py:339-341`); with replacement only if a cloud has too few
    counts = (n_in, n_near, n_near)
    source = np.concatenate([rng.choice(len(xyz), c, replace=c > len(xyz)) for c in counts])
    src = xyz[source]  # (Q, 3)
    dist = np.linalg.norm(src, axis=1, keepdims=True)  # (Q, 1)
    ray = src / np.maximum(dist, 1e-6)
    step = rng.uniform(0.0, offset, (n_queries, 1)).astype(np.float32)
    frac = rng.random((n_queries, 1)).astype(np.float32)
    along = np.where(
        (kind == INSIDE)[:, None],
        dist + step,
        np.where((kind == NEAR_OUTSIDE)[:, None], dist - step, frac * dist),
    )
    has = kind != FAR_EMPTY
    return Queries(
        xyz=(ray * along).astype(np.float32),
        occ=(kind == INSIDE).astype(np.float32),
        intensity=np.where(has, intensity[source], 0.0).astype(np.float32),
        has_intensity=has,
        kind=kind,
        source=source.astype(np.int64),
    )


def query_neighbours(
    tree: cKDTree,
    queries: np.ndarray,
    radius: float,
    max_neighbours: int,
    order: str = "first",
) -> np.ndarray:
    """(Q, K) int64 indices of the tree's points within radius, −1 padding.

    order "first": the first K points by index (the release's CUDA ``radius(...,
    max_num_neighbors=K)`` scans the points in order and stops at K); "nearest": the K nearest.
    """
    n_q, k = len(queries), max_neighbours
    if order == "nearest":
        _, idx = tree.query(queries, k=k, distance_upper_bound=radius)
        idx = idx.reshape(n_q, k).astype(np.int64)
        idx[idx >= tree.n] = -1  # cKDTree marks missing neighbours with n
        return idx
    # every (query, point) pair within the radius, in C; then the k lowest indices per query
    near = cKDTree(queries).sparse_distance_matrix(tree, radius, output_type="ndarray")
    n = np.int64(tree.n)
    key = near["i"] * n + near["j"]
    key = np.sort(key[near["v"] < radius])  # strict, as the release's test; by query, then index
    qi = key // n
    start = np.searchsorted(qi, np.arange(n_q))  # (Q,) first pair of each query
    rank = np.arange(len(qi)) - start[qi]
    keep = rank < k
    out = np.full((n_q, k), -1, dtype=np.int64)
    out[qi[keep], rank[keep]] = key[keep] - qi[keep] * n
    return out
