"""The sensor rig (nuScenes-like LIDAR_TOP + 6 cameras) and what each sensor records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmcr.synth.classes import RAW_INDEX
from cmcr.synth.materials import (
    COLOUR,
    INTENSITY,
    LANE_PAINT_INTENSITY,
    LANE_PAINT_RGB,
    SUN,
    TEXTURE,
)
from cmcr.synth.raycast import Hits, cast, hit_classes, lane_paint
from cmcr.synth.world import World

N_BEAMS = 32
BEAM_ELEVATIONS = np.deg2rad(np.linspace(10.0, -30.0, N_BEAMS))  # ring 0 = top beam
LIDAR_TRANSLATION = np.array([0.943713, 0.0, 1.84023])
LIDAR_YAW = -np.pi / 2  # as in nuScenes: the lidar x axis points to the ego's right
TILE = 40  # pixels per side of a ray-casting tile
CAMERA_RANGE = 80.0  # primitives farther than this are left out of camera rays
GROUND_RANGE = 400.0
# cameras sit at about the LiDAR height (nuScenes: ~1.5 m) so both see the same surfaces over car
# roofs; with 0.35 m of vertical parallax ~4 % of points land on a different class
CAMERA_HEIGHT = 1.80

# channel -> (translation in ego, yaw of the optical axis, fx, cx, cy at 1600x900, time offset s)
CAMERAS: dict[str, tuple[tuple[float, float, float], float, float, float, float, float]] = {
    "CAM_FRONT": ((1.70079, 0.0159, 1.51095), 0.0, 1266.4, 816.3, 491.5, 0.012),
    "CAM_FRONT_RIGHT": ((1.5508, -0.4934, 1.4958), -55.0, 1260.8, 807.9, 495.3, 0.020),
    "CAM_BACK_RIGHT": ((1.0149, -0.4807, 1.5621), -110.0, 1259.5, 807.2, 501.2, 0.037),
    "CAM_BACK": ((0.0283, 0.0035, 1.5791), 180.0, 809.2, 829.2, 481.8, 0.045),
    "CAM_BACK_LEFT": ((1.0357, 0.4848, 1.5910), 110.0, 1256.7, 817.8, 452.0, -0.017),
    "CAM_FRONT_LEFT": ((1.5221, 0.4946, 1.5084), 55.0, 1272.6, 826.6, 479.8, 0.004),
}
# camera optical frame (x right, y down, z forward) -> ego (x forward, y left, z up)
_OPTICAL_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rot_z(yaw: float) -> np.ndarray:
    """3x3 rotation about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Pose:
    """A rigid transform child -> parent: p_parent = R @ p_child + t."""

    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)

    def __matmul__(self, other: Pose) -> Pose:
        return Pose(self.R @ other.R, self.R @ other.t + self.t)


def lidar_calib() -> Pose:
    """LIDAR_TOP -> ego."""
    return Pose(rot_z(LIDAR_YAW), LIDAR_TRANSLATION.copy())


def camera_calib(channel: str) -> tuple[Pose, np.ndarray]:
    """Camera -> ego pose and the 3x3 intrinsic matrix at full (1600x900) resolution."""
    t, yaw, f, cx, cy, _ = CAMERAS[channel]
    t = (t[0], t[1], CAMERA_HEIGHT)
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return Pose(rot_z(np.deg2rad(yaw)) @ _OPTICAL_TO_EGO, np.array(t)), K


def scaled_intrinsics(K: np.ndarray, scale: float) -> np.ndarray:
    """Intrinsics of an image resized by `scale` (pixel centres stay consistent)."""
    S = np.diag([scale, scale, 1.0])
    return S @ K


@dataclass
class LidarReturns:
    """One sweep's returns: points in the lidar frame and what each ray hit."""

    points: np.ndarray  # (N, 5) float32 [x, y, z, intensity 0..255, ring]
    cls: np.ndarray  # (N,) uint8 raw nuScenes class
    obj: np.ndarray  # (N,) int32 annotated object (-1 for stuff)
    kind: np.ndarray  # (N,) int8: 0 box, 1 sphere, 2 ground
    index: np.ndarray  # (N,) int32 box or sphere index
    world_xyz: np.ndarray  # (N, 3) float64 hit points in the scene frame


def lidar_sweep(
    world: World, sensor: Pose, n_azimuth: int, max_range: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N, 5) float32 [x, y, z, intensity, ring] in the lidar frame, raw labels (N,) and
    the annotated object each point hit (N,) int32 (-1 for stuff)."""
    out = lidar_returns(world, sensor, BEAM_ELEVATIONS, n_azimuth, max_range, rng)
    return out.points, out.cls, out.obj


def lidar_returns(
    world: World,
    sensor: Pose,
    elevations: np.ndarray,
    n_azimuth: int,
    max_range: float,
    rng: np.random.Generator,
) -> LidarReturns:
    """Cast every (beam elevation, azimuth) ray of a spinning LiDAR; ring 0 = first elevation."""
    n_beams = len(elevations)
    az = np.linspace(-np.pi, np.pi, n_azimuth, endpoint=False)
    el = np.repeat(elevations, n_azimuth)  # (beams * A,)
    az = np.tile(az, n_beams)
    ring = np.repeat(np.arange(n_beams, dtype=np.float32), n_azimuth)
    d_lidar = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
    d_world = d_lidar @ sensor.R.T
    keep_box, keep_sph = _near(world, sensor.t, max_range + 1.0)
    hits = cast(sensor.t, d_world, world, keep_box, keep_sph, max_range)
    ok = np.isfinite(hits.t)
    p_world = sensor.t + d_world[ok] * hits.t[ok, None]
    cls = hit_classes(_subset(hits, ok), p_world, world)
    t = hits.t[ok].astype(np.float64)
    veg = cls == RAW_INDEX["static.vegetation"]
    t += rng.normal(0.0, 0.01, t.shape) + veg * rng.uniform(-0.08, 0.08, t.shape)  # rough leaves
    cos_inc = np.abs((d_world[ok] * hits.normal[ok]).sum(1))
    inten = _reflectivity(hits, ok, cls, p_world, world) * (0.45 + 0.55 * cos_inc)
    inten *= rng.lognormal(0.0, 0.12, inten.shape)
    pts = np.concatenate(
        [d_lidar[ok] * t[:, None], np.clip(inten, 0, 255)[:, None], ring[ok, None]], axis=1
    )
    on_box = hits.kind[ok] == 0
    obj = np.where(on_box, world.box_obj[np.where(on_box, hits.index[ok], 0)], -1)
    return LidarReturns(
        pts.astype(np.float32), cls, obj.astype(np.int32), hits.kind[ok], hits.index[ok], p_world
    )


def _subset(hits, ok):
    """Hits restricted to rows `ok`."""
    return type(hits)(hits.t[ok], hits.kind[ok], hits.index[ok], hits.normal[ok])


def _reflectivity(hits, ok, cls, p_world, world: World) -> np.ndarray:
    """Material reflectivity per returned point (N,): primitives carry their own, ground by class."""
    kind, index = hits.kind[ok], hits.index[ok]
    refl = INTENSITY[cls].astype(np.float64)
    refl[kind == 0] = world.box_int[index[kind == 0]]
    refl[kind == 1] = world.sph_int[index[kind == 1]]
    paint = (kind == 2) & lane_paint(p_world)
    refl[paint] = LANE_PAINT_INTENSITY
    return refl


def _near(world: World, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of boxes / spheres whose bounding sphere comes within `radius` of `centre`."""
    bc = (world.box_min + world.box_max) / 2
    br = np.linalg.norm(world.box_max - world.box_min, axis=1) / 2
    keep_box = np.linalg.norm(bc - centre, axis=1) - br < radius
    keep_sph = np.linalg.norm(world.sph_c - centre, axis=1) - world.sph_r < radius
    return keep_box, keep_sph


def _in_frustum(
    world: World, cam: Pose, K: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Primitives that may appear in the camera (near enough, in front, inside the horizontal FOV)."""
    tan_h = max(K[0, 2], width - K[0, 2]) / K[0, 0]
    masks = []
    for c, r in (
        (
            (world.box_min + world.box_max) / 2,
            np.linalg.norm(world.box_max - world.box_min, axis=1) / 2,
        ),
        (world.sph_c, world.sph_r),
    ):
        q = (c - cam.t) @ cam.R  # (P, 3) centres in the camera frame
        near = np.linalg.norm(q, axis=1) - r < CAMERA_RANGE
        ahead = q[:, 2] > -r
        inside = np.abs(q[:, 0]) - 1.6 * r < np.maximum(q[:, 2], 0.0) * tan_h
        masks.append(near & ahead & inside)
    return masks[0], masks[1]


def render_camera(
    world: World, cam: Pose, K: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (H, W, 3) uint8 and raw-class map (H, W) uint8 (0 = sky) seen by `cam`."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)  # pixel centres
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    d_cam = pix @ np.linalg.inv(K).T
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    d_world = (d_cam @ cam.R.T).astype(np.float32)  # (H*W, 3)
    hits = _cast_tiled(world, cam, K, d_world, width, height)
    ok = np.isfinite(hits.t)
    p = cam.t + d_world * np.where(ok, hits.t, 0.0)[:, None]
    cls = np.where(ok, hit_classes(hits, p, world), 0).astype(np.uint8)
    rgb = _shade(hits, ok, cls, p, d_world, world)
    return rgb.reshape(height, width, 3), cls.reshape(height, width)


def _cast_tiled(
    world: World, cam: Pose, K: np.ndarray, d_world: np.ndarray, width: int, height: int
) -> Hits:
    """Cast pixel rays tile by tile, each tile against the primitives whose screen box meets it."""
    keep_box, keep_sph = _in_frustum(world, cam, K, width)
    box_rect = _screen_rects(world.box_min, world.box_max, cam, K, width, height)  # (B, 4)
    sph_rect = _screen_rects(
        world.sph_c - world.sph_r[:, None],
        world.sph_c + world.sph_r[:, None],
        cam,
        K,
        width,
        height,
    )
    n = width * height
    t = np.full(n, np.inf, np.float32)
    kind = np.full(n, -1, np.int8)
    index = np.zeros(n, np.int32)
    normal = np.zeros((n, 3), np.float32)
    pixel = np.arange(n).reshape(height, width)
    for r0 in range(0, height, TILE):  # a loop over ~100 tiles, not over pixels
        for c0 in range(0, width, TILE):
            ids = pixel[r0 : r0 + TILE, c0 : c0 + TILE].ravel()
            tile = (c0, r0, c0 + TILE, r0 + TILE)
            h = cast(
                cam.t,
                d_world[ids],
                world,
                keep_box & _overlaps(box_rect, tile),
                keep_sph & _overlaps(sph_rect, tile),
                GROUND_RANGE,
            )
            t[ids], kind[ids], index[ids], normal[ids] = h.t, h.kind, h.index, h.normal
    return Hits(t, kind, index, normal)


def _screen_rects(
    lo: np.ndarray, hi: np.ndarray, cam: Pose, K: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Pixel bounding rectangles (P, 4) [u0, v0, u1, v1] of boxes; whole image if near/behind."""
    corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
    pts = np.where(corners[None] == 1, hi[:, None], lo[:, None])  # (P, 8, 3)
    q = (pts - cam.t) @ cam.R  # camera frame
    z = q[..., 2]
    front = np.all(z > 0.1, axis=1)
    uv = (q @ K.T)[..., :2] / np.maximum(z, 0.1)[..., None]
    rect = np.concatenate([uv.min(1) - 1, uv.max(1) + 1], axis=1)
    rect[~front] = (-1e9, -1e9, 1e9, 1e9)
    return rect


def _overlaps(rect: np.ndarray, tile: tuple[int, int, int, int]) -> np.ndarray:
    """Which rectangles (P, 4) intersect the pixel tile (u0, v0, u1, v1)."""
    return (
        (rect[:, 0] < tile[2])
        & (rect[:, 2] > tile[0])
        & (rect[:, 1] < tile[3])
        & (rect[:, 3] > tile[1])
    )


def _shade(hits, ok, cls, p, d, world: World) -> np.ndarray:
    """Lambert shading of per-primitive colours with a procedural texture; sky gradient on misses."""
    base = COLOUR[cls].astype(np.float32)
    on_box, on_sph = hits.kind == 0, hits.kind == 1
    base[on_box] = world.box_rgb[hits.index[on_box]]
    base[on_sph] = world.sph_rgb[hits.index[on_sph]]
    base[(hits.kind == 2) & lane_paint(p)] = LANE_PAINT_RGB
    light = 0.45 + 0.55 * np.clip(hits.normal @ SUN, 0.0, 1.0)
    tex = 1.0 + TEXTURE[cls] * _noise(p, 4.0)
    fog = np.exp(-np.where(ok, hits.t, 0.0) / 250.0)[:, None]  # distant things fade to haze
    haze = np.array([190, 200, 210], np.float32)
    rgb = (base * (light * tex)[:, None]) * fog + haze * (1 - fog)
    sky = np.array([110, 160, 230], np.float32) + 80 * (1 - np.clip(d[:, 2:3] * 4, 0, 1))
    rgb = np.where(ok[:, None], rgb, sky)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _noise(p: np.ndarray, cells_per_m: float) -> np.ndarray:
    """Deterministic value noise in [-1, 1] (R,) from a hash of the 3-D cell of each point."""
    q = np.floor(p * cells_per_m).astype(np.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h & 0xFFFF) / 32767.5 - 1.0).astype(np.float32)
