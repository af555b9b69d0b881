"""A synthetic pre-training batch for benchmarks and tests: random but well-formed, every key
of the batch contract in docs/architecture.md, no dataset needed.

``cmcr.bench.step`` times the model on it; the model tests feed it to ``CMCRModel``. Not a
benchmark itself (``cmcr.bench.BENCHES`` lists those).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmcr.configs.schema import Config
from cmcr.data.augment import patch_mask


def make_pretrain_batch(
    *,
    batch_size: int = 2,
    n_points: int = 600,
    n_cams: int = 2,
    image_size: tuple[int, int] = (64, 96),
    n_queries: int = 48,
    max_neighbours: int = 8,
    query_radius: float = 1.0,
    voxel_size: float = 0.1,
    n_pairs: int = 300,
    mask_ratio: float = 0.5,
    mask_patch: int = 16,
    extent: float = 6.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Batch dict with every key of the pre-training contract; ``n_*`` are per sample."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    pts, inten, pbatch = _points(rng, batch_size, n_points, extent)
    coords, inverse, feats = _voxelise(pts, inten, pbatch, voxel_size)
    images = rng.random((batch_size * n_cams, 3, h, w), dtype=np.float32)
    mask = patch_mask(rng, batch_size * n_cams, (h, w), 0.5, mask_ratio, mask_patch)
    pairs = _pairs(rng, pbatch, batch_size, n_cams, n_pairs, h, w)
    q = _queries(rng, pts, inten, pbatch, n_queries, query_radius, max_neighbours)
    batch = {
        "batch_size": batch_size,
        "coords": torch.from_numpy(coords).int(),
        "spatial_shape": [int(s) for s in coords[:, 1:].max(0) + 1],
        "feats": torch.from_numpy(feats).float(),
        "inverse": torch.from_numpy(inverse).long(),
        "points": torch.from_numpy(pts).float(),
        "point_batch": torch.from_numpy(pbatch).long(),
        "images": torch.from_numpy(images),
        # black fill (data.mask_fill): the encoder input is the image with masked pixels 0
        "image_input": torch.from_numpy(images * ~mask[:, None]),
        "image_mask": torch.from_numpy(mask),
        "pairs": torch.from_numpy(pairs).long(),
        "pair_masked": torch.from_numpy(mask[pairs[:, 1], pairs[:, 2], pairs[:, 3]]),
        "sample_tokens": [f"token{seed}_{b}" for b in range(batch_size)],
    }
    batch.update(q)
    return batch


def batch_from_config(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """A factory batch sized by ``cfg.data`` (image size, queries, neighbours, masking)."""
    d = cfg.data
    args: dict[str, Any] = {
        "batch_size": cfg.train.batch_size,
        "n_cams": len(d.cameras),
        "image_size": tuple(d.image_size),
        "n_queries": d.n_queries,
        "max_neighbours": d.max_neighbours,
        "query_radius": d.query_radius,
        "voxel_size": d.voxel_size,
        "mask_ratio": d.mask_ratio,
        "mask_patch": d.mask_patch,
    }
    args.update(kwargs)
    return make_pretrain_batch(**args)


def _points(rng, batch_size: int, n: int, extent: float):
    # points on a few planes so that voxels hold several points and queries find neighbours
    xy = rng.uniform(-extent, extent, (batch_size * n, 2))
    z = rng.choice([-1.5, 0.0, 1.0], batch_size * n) + rng.normal(0, 0.05, batch_size * n)
    pts = np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)
    inten = rng.random(batch_size * n).astype(np.float32)
    return pts, inten, np.repeat(np.arange(batch_size), n)


def _voxelise(pts, inten, pbatch, voxel_size: float):
    grid = np.floor(pts / voxel_size).astype(np.int64)
    grid -= grid.min(0)  # non-negative indices
    keys = np.concatenate([pbatch[:, None], grid], axis=1)
    coords, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(coords))
    feats = np.bincount(inverse, weights=inten, minlength=len(coords)) / counts
    return coords.astype(np.int32), inverse, feats[:, None].astype(np.float32)


def _pairs(rng, pbatch, batch_size: int, n_cams: int, n_pairs: int, h: int, w: int):
    rows = []
    for b in range(batch_size):  # per sample, a handful of samples (not per point)
        idx = np.flatnonzero(pbatch == b)
        point = rng.choice(idx, size=min(n_pairs, len(idx)), replace=False)
        image = b * n_cams + rng.integers(0, n_cams, len(point))
        rows.append(
            np.stack(
                [point, image, rng.integers(0, h, len(point)), rng.integers(0, w, len(point))], 1
            )
        )
    return np.concatenate(rows).astype(np.int64)


def _queries(rng, pts, inten, pbatch, n_q: int, radius: float, k: int) -> dict[str, torch.Tensor]:
    batch_size = int(pbatch.max()) + 1
    src = np.concatenate([rng.choice(np.flatnonzero(pbatch == b), n_q) for b in range(batch_size)])
    kind = np.tile(np.arange(n_q) % 3, batch_size)  # 0 inside, 1 near-outside, 2 far-empty
    ray = pts[src] / np.linalg.norm(pts[src], axis=1, keepdims=True)
    shift = rng.uniform(0, 0.1, len(src))[:, None]
    frac = rng.uniform(0, 1, len(src))[:, None]
    q = np.where(kind[:, None] == 0, pts[src] + shift * ray, pts[src] - shift * ray)
    q = np.where(kind[:, None] == 2, frac * pts[src], q).astype(np.float32)
    qb = pbatch[src]
    d = np.linalg.norm(q[:, None, :] - pts[None, :, :], axis=2)  # (Q, N), small test sizes
    d[qb[:, None] != pbatch[None, :]] = np.inf
    order = np.argsort(d, axis=1)[:, :k]
    near = np.take_along_axis(d, order, axis=1) <= radius
    has_int = kind < 2
    return {
        "queries": torch.from_numpy(q),
        "query_batch": torch.from_numpy(qb).long(),
        "query_occ": torch.from_numpy((kind == 0).astype(np.float32)),
        "query_intensity": torch.from_numpy(np.where(has_int, inten[src], 0).astype(np.float32)),
        "query_has_intensity": torch.from_numpy(has_int),
        "query_neighbours": torch.from_numpy(np.where(near, order, -1)).long(),
    }
