"""Voxelisation: cubic voxels, mean-intensity features and the point → voxel inverse index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmcr.errors import DataError

_BITS = 21  # per axis in the packed int64 cell key: ±2^20 voxels (±105 km at 0.1 m)
_HALF = 1 << (_BITS - 1)
_FIELD = (1 << _BITS) - 1


def voxelize(
    xyz: np.ndarray, intensity: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns coords (V, 3) int32 ≥ 0, feats (V, 1) float32 mean intensity, inverse (N,) int64.

    Voxel v holds the points p with inverse[p] == v, and coords[v] == floor(xyz[p] / size) − min.
    Voxels come in order of first appearance.
    """
    grid = np.floor(xyz / np.float32(voxel_size)).astype(np.int64) + _HALF  # (N, 3)
    if len(grid) and (grid.min() < 0 or grid.max() > _FIELD):
        raise DataError(f"data.voxel_size: {voxel_size} m gives more than 2^20 voxels per axis")
    key = (grid[:, 0] << (2 * _BITS)) | (grid[:, 1] << _BITS) | grid[:, 2]
    # a hash factorize is several times faster than np.unique's sort on ~10^4-10^5 keys
    inverse, uniq = pd.factorize(key, sort=False)
    coords = np.stack([uniq >> (2 * _BITS), (uniq >> _BITS) & _FIELD, uniq & _FIELD], axis=1)
    coords = (coords - coords.min(axis=0)).astype(np.int32)
    counts = np.bincount(inverse, minlength=len(uniq))
    sums = np.bincount(inverse, weights=intensity, minlength=len(uniq))
    feats = (sums / counts).astype(np.float32)[:, None]
    return coords, feats, inverse.astype(np.int64, copy=False)
