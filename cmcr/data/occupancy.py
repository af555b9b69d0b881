"""Occupancy queries (inside / near-outside / far-empty) and their neighbour lists."""

from __future__ import annotations

import time
import warnings
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
    kind = np.repeat(np.array([INSIDE, NEAR_OUTSIDE, FAR_EMPTY], np.int8), [n_in, n_near, n_near])
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


# points per index block of the k-d tree "first" search: 2048-4096 measured fastest on a 33k-point
# full-resolution scan with 2048 queries (16-18 ms against 40 ms for one tree over every point)
FIRST_BLOCK = 4096

# The "first" search has two implementations with equal results: k-d trees over blocks of points
# (scipy, no start-up cost) and a compiled grid walk (cmcr/data/first_k.py, 5x faster at full
# resolution, but importing numba and loading its machine code costs a process 0.4-0.9 s CPU).
# A process uses the trees until they have cost it SWITCH_SECONDS, then the compiled search (the
# rent-or-buy rule: never more than twice the better choice's cost), so a test or a short run
# never pays for numba and a pre-training run switches within its first few hundred samples.
SWITCH_SECONDS = 1.0
_search = {"tree_seconds": 0.0, "compiled": None, "unavailable": False}


def use_compiled_search() -> None:
    """Switch this process to the compiled "first" search now (benchmarks of the steady state).

    Raises ImportError when numba cannot be imported (a broken install).
    """
    from cmcr.data.first_k import first_k_within  # lazy: numba only once a process switches

    _search["compiled"] = first_k_within


def _switch() -> None:
    """The switch query_neighbours makes: without numba a run goes on with the k-d trees (the
    same results, slower) and says so once, rather than failing mid-run."""
    try:
        use_compiled_search()
    except ImportError as err:
        _search["unavailable"] = True
        warnings.warn(
            f"occupancy neighbours: the compiled search is unavailable ({err}); "
            "staying with the k-d tree search (same results, about 5x slower)",
            RuntimeWarning,
            stacklevel=3,
        )


def compiled_search_in_use() -> bool:
    """Whether this process's "first" neighbour search is the compiled one."""
    return _search["compiled"] is not None


def query_neighbours(
    points: np.ndarray,
    queries: np.ndarray,
    radius: float,
    max_neighbours: int,
    order: str = "first",
) -> np.ndarray:
    """(Q, K) int64 indices of ``points`` (N, 3) within radius, −1 padding.

    order "first": the first K points by index, ascending (the release's CUDA ``radius(...,
    max_num_neighbors=K)`` scans the points in order and stops at K); "nearest": the K nearest.
    """
    n_q, k = len(queries), max_neighbours
    if order == "nearest":
        tree = cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)
        _, idx = tree.query(queries, k=k, distance_upper_bound=radius)
        idx = idx.reshape(n_q, k).astype(np.int64)
        idx[idx >= len(points)] = -1  # cKDTree marks missing neighbours with n
        return idx
    ready = _search["compiled"] is None and not _search["unavailable"]
    if ready and _search["tree_seconds"] >= SWITCH_SECONDS:
        _switch()
    if _search["compiled"] is not None:
        return _search["compiled"](points, queries, radius, k)
    start = time.thread_time()  # this thread's CPU: not a logging thread's beside it
    out = _first_by_blocks(points, queries, radius, k)
    _search["tree_seconds"] += time.thread_time() - start
    return out


def _first_by_blocks(points: np.ndarray, queries: np.ndarray, radius: float, k: int) -> np.ndarray:
    """The first k points by index within radius of each query, with k-d trees over blocks."""
    n_q = len(queries)
    # blocks of points in index order, each its own tree; a query leaves once it has K, so a
    # query with hundreds of points in its radius does not list them all (a whole-cloud search
    # listed 0.9 M pairs for 2048 queries on a full-resolution scan, 0.1 M are needed)
    out = np.full((n_q, k), -1, dtype=np.int64)
    filled = np.zeros(n_q, dtype=np.int64)
    pending = np.arange(n_q)
    for start in range(0, len(points), FIRST_BLOCK):
        if len(pending) == 0:
            break
        block = points[start : start + FIRST_BLOCK]
        tree = cKDTree(block, leafsize=32, balanced_tree=False, compact_nodes=False)
        near = cKDTree(queries[pending]).sparse_distance_matrix(tree, radius, output_type="ndarray")
        before = filled[pending]
        rows, cols = _first_in_block(near, radius, len(block), before, k)
        out[pending[rows], before[rows] + _rank(rows, len(pending))] = cols + start
        after = before + np.bincount(rows, minlength=len(pending))
        filled[pending] = after
        pending = pending[after < k]
    return out


def _first_in_block(
    near: np.ndarray, radius: float, n: int, filled: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, point column) of the pairs each query still takes from one block: its
    pairs strictly within radius (as the release's test), by column, the first k − filled."""
    # int32 keys where they fit (a block's keys do): the sort, most of this, takes half as long
    kind = np.int32 if len(filled) * n < np.iinfo(np.int32).max else np.int64
    within = near["v"] < radius
    key = near["i"][within].astype(kind) * kind(n) + near["j"][within].astype(kind)
    key.sort()  # by query, then by point index
    rows = key // kind(n)
    keep = _rank(rows, len(filled)) < k - filled[rows]
    rows = rows[keep]
    return rows, key[keep] - rows * kind(n)


def _rank(sorted_rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Position of each element among the equal values before it (``sorted_rows`` sorted)."""
    first = np.searchsorted(sorted_rows, np.arange(n_rows))  # (n_rows,)
    return np.arange(len(sorted_rows)) - first[sorted_rows]
