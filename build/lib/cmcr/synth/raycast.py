"""Vectorised ray casting against boxes, spheres and the ground plane (pure numpy, no I/O).

All rays of one call share an origin (a sensor), so per-primitive offsets are computed once and
each test is a few (R, P) array operations; rays are processed in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmcr.synth.classes import RAW_INDEX
from cmcr.synth.world import ROAD_HALF, World

CHUNK = 8192  # rays per chunk: (CHUNK, P) float32 temporaries stay a few MB
T_MIN = 1e-3
GROUND = -2  # primitive id of the ground plane
MISS = -1


@dataclass
class Hits:
    """Nearest hit per ray: distance, what was hit and the surface normal."""

    t: np.ndarray  # (R,) float32, inf where missed
    kind: np.ndarray  # (R,) int8: 0 box, 1 sphere, 2 ground, -1 miss
    index: np.ndarray  # (R,) int32 box or sphere index (0 for ground/miss)
    normal: np.ndarray  # (R, 3) float32 unit normal facing the ray


def _boxes(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Slab test: nearest entry distance (R,) and box index (R,)."""
    inv = 1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)  # (R, 3)
    a, b = lo - o, hi - o  # (B, 3)
    t_near = np.full((d.shape[0], lo.shape[0]), -np.inf, np.float32)
    t_far = np.full_like(t_near, np.inf)
    for axis in range(3):  # three slabs, each an (R, B) operation
        t1 = inv[:, axis, None] * a[None, :, axis]
        t2 = inv[:, axis, None] * b[None, :, axis]
        np.maximum(t_near, np.minimum(t1, t2), out=t_near)
        np.minimum(t_far, np.maximum(t1, t2), out=t_far)
    t_near[(t_near > t_far) | (t_near < T_MIN)] = np.inf
    idx = np.argmin(t_near, axis=1)
    return t_near[np.arange(len(idx)), idx], idx


def _spheres(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray):
    """Nearest front-surface hit (R,) and sphere index (R,)."""
    oc = o - c  # (S, 3)
    b = d @ oc.T  # (R, S), d is unit length
    disc = b * b - ((oc * oc).sum(1) - r * r)[None, :]
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t[(disc <= 0) | (t < T_MIN)] = np.inf
    idx = np.argmin(t, axis=1)
    return t[np.arange(len(idx)), idx], idx


def _box_normal(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Outward normal of the box face nearest to each hit point p (R, 3)."""
    d_lo, d_hi = np.abs(p - lo), np.abs(p - hi)
    near_lo = d_lo < d_hi
    axis = np.argmin(np.where(near_lo, d_lo, d_hi), axis=1)
    n = np.zeros_like(p)
    rows = np.arange(len(p))
    n[rows, axis] = np.where(near_lo[rows, axis], -1.0, 1.0)
    return n


def cast(
    origin: np.ndarray,
    dirs: np.ndarray,
    world: World,
    keep_box: np.ndarray,
    keep_sph: np.ndarray,
    max_t: float,
) -> Hits:
    """Cast unit rays `dirs` (R, 3) from `origin` (3,) against the kept primitives of `world`."""
    origin = origin.astype(np.float32)
    dirs = dirs.astype(np.float32)
    box_ids, sph_ids = np.flatnonzero(keep_box), np.flatnonzero(keep_sph)
    lo, hi = world.box_min[box_ids], world.box_max[box_ids]
    c, r = world.sph_c[sph_ids], world.sph_r[sph_ids]
    n_rays = dirs.shape[0]
    t = np.full(n_rays, np.inf, np.float32)
    kind = np.full(n_rays, MISS, np.int8)
    index = np.zeros(n_rays, np.int32)
    for s in range(0, n_rays, CHUNK):
        d = dirs[s : s + CHUNK]
        tb, ib = _boxes(origin, d, lo, hi) if len(lo) else (np.full(len(d), np.inf), 0)
        ts, is_ = _spheres(origin, d, c, r) if len(c) else (np.full(len(d), np.inf), 0)
        tg = np.where(d[:, 2] < -1e-6, -origin[2] / np.minimum(d[:, 2], -1e-6), np.inf)
        stack = np.stack([tb, ts, tg], axis=1)  # (r, 3)
        best = np.argmin(stack, axis=1)
        tt = stack[np.arange(len(d)), best]
        hit = tt <= max_t
        t[s : s + CHUNK] = np.where(hit, tt, np.inf)
        kind[s : s + CHUNK] = np.where(hit, best, MISS)
        idx = np.where(best == 0, box_ids[ib] if len(lo) else 0, sph_ids[is_] if len(c) else 0)
        index[s : s + CHUNK] = np.where(hit & (best < 2), idx, 0)
    return Hits(t, kind, index, _normals(origin, dirs, t, kind, index, world))


def _normals(o, d, t, kind, index, world: World) -> np.ndarray:
    """Unit normals (R, 3) of the hit surfaces (zeros where missed)."""
    p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
    n = np.zeros_like(d)
    n[kind == 2, 2] = 1.0
    on_box = kind == 0
    if on_box.any():
        i = index[on_box]
        n[on_box] = _box_normal(p[on_box], world.box_min[i], world.box_max[i])
    on_sph = kind == 1
    if on_sph.any():
        i = index[on_sph]
        v = p[on_sph] - world.sph_c[i]
        n[on_sph] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return n


def hit_classes(hits: Hits, points: np.ndarray, world: World) -> np.ndarray:
    """Raw class per ray (R,) uint8; 0 where missed. Ground is road inside the kerbs, else terrain."""
    cls = np.zeros(len(hits.t), np.uint8)
    on_box, on_sph, on_gnd = hits.kind == 0, hits.kind == 1, hits.kind == 2
    cls[on_box] = world.box_cls[hits.index[on_box]]
    cls[on_sph] = world.sph_cls[hits.index[on_sph]]
    road = np.abs(points[:, 1]) < ROAD_HALF
    cls[on_gnd & road] = RAW_INDEX["flat.driveable_surface"]
    cls[on_gnd & ~road] = RAW_INDEX["flat.terrain"]
    return cls


def lane_paint(points: np.ndarray) -> np.ndarray:
    """True (R,) where a ground point lies on lane paint: dashed centre line and solid edge lines."""
    x, y = points[:, 0], np.abs(points[:, 1])
    centre = (y < 0.08) & (np.mod(x, 6.0) < 3.0)
    edge = np.abs(y - (ROAD_HALF - 2.7)) < 0.08  # between driving and parking lanes
    return centre | edge
