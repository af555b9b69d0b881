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

    inside: pushed away from the sensor along the ray by U(0, offset), occupied;
    near-outside: pulled toward the sensor by U(0, offset); far-empty: uniform on the segment
    sensor → point. Inside and near-outside carry the point's intensity.
    """
    n_in = n_queries // 3
    n_near = n_queries // 3
    kind = np.repeat(
        np.array([INSIDE, NEAR_OUTSIDE, FAR_EMPTY], np.int8),
        [n_in, n_near, n_queries - n_in - n_near],
    )
    source = rng.integers(0, len(xyz), n_queries)
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
    tree: cKDTree, queries: np.ndarray, radius: float, max_neighbours: int
) -> np.ndarray:
    """(Q, K) int64 indices of the tree's points within radius (nearest first), −1 padding."""
    _, idx = tree.query(queries, k=max_neighbours, distance_upper_bound=radius)
    idx = idx.reshape(len(queries), max_neighbours).astype(np.int64)
    idx[idx >= tree.n] = -1  # cKDTree marks missing neighbours with n
    return idx
