"""Voxelisation: cubic voxels, intensity features (first point or mean) and the inverse index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmcr.errors import DataError

_BITS = 21  # per axis in the packed int64 cell key: ±2^20 voxels (±105 km at 0.1 m)
_HALF = 1 << (_BITS - 1)
_FIELD = (1 << _BITS) - 1


def voxelize(
    xyz: np.ndarray, intensity: np.ndarray, voxel_size: float, feature: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns coords (V, 3) int32 ≥ 0, feats (V, 1) float32, inverse (N,) int64.

    Voxel v holds the points p with inverse[p] == v, and coords[v] == floor(xyz[p] / size) − min.
    Voxels come in order of first appearance. ``feature`` (data.voxel_feature): "first" = the
    intensity of the voxel's first point in the cloud's order (release), "mean" = the mean.
    """
    grid = np.floor(xyz / np.float32(voxel_size)).astype(np.int64) + _HALF  # (N, 3)
    if len(grid) and (grid.min() < 0 or grid.max() > _FIELD):
        raise DataError(f"data.voxel_size: {voxel_size} m gives more than 2^20 voxels per axis")
    key = (grid[:, 0] << (2 * _BITS)) | (grid[:, 1] << _BITS) | grid[:, 2]
    # a hash factorize is several times faster than np.unique's sort on ~10^4-10^5 keys
    inverse, uniq = pd.factorize(key, sort=False)
    coords = np.stack([uniq >> (2 * _BITS), (uniq >> _BITS) & _FIELD, uniq & _FIELD], axis=1)
    coords = (coords - coords.min(axis=0)).astype(np.int32)
    feats = _voxel_feature(inverse, intensity, len(uniq), feature)
    return coords, feats[:, None], inverse.astype(np.int64, copy=False)


def _voxel_feature(inverse: np.ndarray, intensity: np.ndarray, n_vox: int, feature: str):
    """(V,) float32 per-voxel intensity: the first point's ("first") or the mean ("mean")."""
    if feature == "first":
        # voxel ids are numbered by first appearance, so a point opens its voxel exactly when
        # its id exceeds every id before it: O(N), no sort
        before = np.maximum.accumulate(np.concatenate([[-1], inverse[:-1]]))
        return intensity[inverse > before].astype(np.float32)
    if feature == "mean":
        counts = np.bincount(inverse, minlength=n_vox)
        sums = np.bincount(inverse, weights=intensity, minlength=n_vox)
        return (sums / counts).astype(np.float32)
    raise DataError(f"data.voxel_feature: expected 'first' or 'mean', got {feature!r}")
