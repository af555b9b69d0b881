"""The release's occupancy neighbours: the first K points by index within a radius of each query.

The release's CUDA ``radius(..., max_num_neighbors=K)`` scans the points in index order and stops
at K. Compiled with numba (imported here only; cmcr/data/occupancy.py says when a process
switches from its k-d tree search to this one): a grid of cells at least ``radius`` wide, each
cell's points in index order (a counting sort), and per query a walk over its 3×3×3 cells that
keeps a sorted list of at most K indices and leaves a cell once its next index is past the
list's last. One pass, no pair list: 5.7-6.3 ms against 31-36 ms for the block-wise k-d
trees (33k points, 2048 queries, K 32, AMD EPYC, one thread), equal results. ``cache=True``
keeps the machine code next to this file (or in numba's user cache when that folder is
read-only): a later process loads it in about 0.35 s instead of compiling for 2 s. Where numba
finds no writable cache folder at all (a read-only install and home, as in a container with a
read-only root file system), each process compiles for itself instead of failing the import.
"""

from __future__ import annotations

import numba
import numpy as np

# a cloud spread far (an outlier at 1 km) gets coarser cells, not a grid of millions
MAX_CELLS = 32  # per point, or MIN_GRID_CELLS when more (a scan's ±100 m: about 24 at 1 m)
MIN_GRID_CELLS = 4096


def _compiled(fn):
    """``fn`` compiled with numba, its machine code cached on disk where numba can write one.

    numba refuses ``cache=True`` when no cache folder is writable (RuntimeError "no locator
    available", at decoration): compiled per process then, the same code.
    """
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


def first_k_within(points: np.ndarray, queries: np.ndarray, radius: float, k: int) -> np.ndarray:
    """(Q, k) int64: for each query the first k indices of ``points`` (N, 3) at a Euclidean
    distance strictly below ``radius``, ascending, −1 padding."""
    pts = np.ascontiguousarray(points, dtype=np.float64)
    qs = np.ascontiguousarray(queries, dtype=np.float64)
    out = np.full((len(qs), k), -1, dtype=np.int64)
    if len(pts) == 0 or len(qs) == 0 or k == 0:
        return out
    _first_k(pts, qs, float(radius), max(MAX_CELLS * len(pts), MIN_GRID_CELLS), out)
    return out


@_compiled
def _grid(pts, radius, max_cells):  # pragma: no cover (compiled)
    """(low corner, 1 / cell, (nx, ny, nz), start (cells + 1), order (N,)): the points of cell c
    are order[start[c]:start[c + 1]], in index order."""
    n = pts.shape[0]
    low, high = pts[0].copy(), pts[0].copy()  # the bounds here: numpy's min(0) took 1.4 ms
    for i in range(n):
        for d in range(3):
            low[d] = min(low[d], pts[i, d])
            high[d] = max(high[d], pts[i, d])
    # cells of `radius` or a whole multiple of it: a query's 27 cells still hold every point
    # within radius of it, however coarse
    cell = radius
    while True:
        nx = int(np.floor((high[0] - low[0]) / cell)) + 1
        ny = int(np.floor((high[1] - low[1]) / cell)) + 1
        nz = int(np.floor((high[2] - low[2]) / cell)) + 1
        if nx * ny * nz <= max_cells:
            break
        cell *= 2.0
    inv = 1.0 / cell
    cell_of = np.empty(n, np.int64)
    start = np.zeros(nx * ny * nz + 1, np.int64)
    for i in range(n):
        cx = min(int(np.floor((pts[i, 0] - low[0]) * inv)), nx - 1)
        cy = min(int(np.floor((pts[i, 1] - low[1]) * inv)), ny - 1)
        cz = min(int(np.floor((pts[i, 2] - low[2]) * inv)), nz - 1)
        cell_of[i] = (cx * ny + cy) * nz + cz
        start[cell_of[i] + 1] += 1
    for c in range(nx * ny * nz):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):  # a counting sort: stable, so each cell's points stay in index order
        order[fill[cell_of[i]]] = i
        fill[cell_of[i]] += 1
    return low, inv, (nx, ny, nz), start, order


@_compiled
def _first_k(pts, qs, radius, max_cells, out):  # pragma: no cover (compiled)
    k = out.shape[1]
    low, inv, (nx, ny, nz), start, order = _grid(pts, radius, max_cells)
    # a root only where the squared distance is not clearly outside: the same test, cheaper
    outside = radius * radius * (1.0 + 1e-9)
    for q in range(qs.shape[0]):
        x, y, z = qs[q, 0], qs[q, 1], qs[q, 2]
        cx = int(np.floor((x - low[0]) * inv))
        cy = int(np.floor((y - low[1]) * inv))
        cz = int(np.floor((z - low[2]) * inv))
        found = 0
        for ax in range(max(cx - 1, 0), min(cx + 2, nx)):
            for ay in range(max(cy - 1, 0), min(cy + 2, ny)):
                for az in range(max(cz - 1, 0), min(cz + 2, nz)):
                    c = (ax * ny + ay) * nz + az
                    for s in range(start[c], start[c + 1]):
                        i = order[s]
                        if found == k and i > out[q, k - 1]:
                            break  # this cell's later points come later still
                        dx, dy, dz = pts[i, 0] - x, pts[i, 1] - y, pts[i, 2] - z
                        d2 = dx * dx + dy * dy + dz * dz
                        if d2 < outside and np.sqrt(d2) < radius:
                            j = found if found < k else k - 1  # insert, the last one falls off
                            while j > 0 and out[q, j - 1] > i:
                                if j < k:
                                    out[q, j] = out[q, j - 1]
                                j -= 1
                            out[q, j] = i
                            if found < k:
                                found += 1
