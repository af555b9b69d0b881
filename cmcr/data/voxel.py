"""Voxelisation: cubic voxels, mean-intensity features and the point → voxel inverse index."""

from __future__ import annotations

import numpy as np


def voxelize(
    xyz: np.ndarray, intensity: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns coords (V, 3) int32 ≥ 0, feats (V, 1) float32 mean intensity, inverse (N,) int64.

    Voxel v holds the points p with inverse[p] == v, and coords[v] == floor(xyz[p] / size) − min.
    """
    grid = np.floor(xyz / np.float32(voxel_size)).astype(np.int64)  # (N, 3)
    grid -= grid.min(axis=0)
    extent = grid.max(axis=0) + 1  # (3,)
    # one int64 key per cell: a 1-D unique is several times faster than unique(axis=0)
    key = (grid[:, 0] * extent[1] + grid[:, 1]) * extent[2] + grid[:, 2]
    uniq, inverse = np.unique(key, return_inverse=True)
    coords = np.stack(
        [uniq // (extent[1] * extent[2]), (uniq // extent[2]) % extent[1], uniq % extent[2]],
        axis=1,
    ).astype(np.int32)
    counts = np.bincount(inverse, minlength=len(uniq))
    sums = np.bincount(inverse, weights=intensity, minlength=len(uniq))
    feats = (sums / counts).astype(np.float32)[:, None]
    return coords, feats, inverse.astype(np.int64)
