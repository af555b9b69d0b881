"""Pure geometry: rigid transforms and the LiDAR → camera projection (no file or devkit I/O)."""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion


def transform_matrix(rotation: list[float], translation: list[float]) -> np.ndarray:
    """4×4 float64 matrix of a nuScenes (w, x, y, z) quaternion + translation: child → parent."""
    mat = np.eye(4)
    mat[:3, :3] = Quaternion(rotation).rotation_matrix
    mat[:3, 3] = translation
    return mat


def rigid_inverse(mat: np.ndarray) -> np.ndarray:
    """Inverse of (..., 4, 4) rigid transforms without a general matrix inverse."""
    rot_t = np.swapaxes(mat[..., :3, :3], -1, -2)
    out = np.zeros_like(mat)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ mat[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def project_points(
    xyz: np.ndarray,
    lidar_to_ego: np.ndarray,
    ego_to_global: np.ndarray,
    global_to_cam_ego: np.ndarray,
    cam_ego_to_cam: np.ndarray,
    intrinsics: np.ndarray,
    image_hw: np.ndarray,
    min_depth: float,
    margin: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Project LiDAR points into C cameras; returns (point, camera, u, v) of every kept pairing.

    xyz: (N, 3) in the lidar frame. lidar_to_ego, ego_to_global: (4, 4) at the lidar timestamp.
    global_to_cam_ego, cam_ego_to_cam: (C, 4, 4) at each camera's timestamp. intrinsics (C, 3, 3),
    image_hw (C, 2). A pairing is kept when its depth > min_depth and (u, v) lies strictly inside
    the image less ``margin`` at the far edges: 0 < u < W - margin, 0 < v < H - margin (the
    release's margin is 1: `pretrain/dataloader_nuscenes.py:280-283`); pixel (floor(v), floor(u)).
    """
    # 1. lidar frame -> ego frame at the lidar timestamp
    chain = lidar_to_ego
    # 2. ego (lidar time) -> global
    chain = ego_to_global @ chain
    # 3. global -> ego frame at each camera's timestamp (the ego moved between the two)
    chain = global_to_cam_ego @ chain  # (C, 4, 4)
    # 4. ego (camera time) -> camera frame (z forward)
    chain = cam_ego_to_cam @ chain  # (C, 4, 4)
    # 5. intrinsics: one (3, 4) projection per camera, applied to all points in one matmul
    proj = intrinsics @ chain[:, :3, :]  # (C, 3, 4)
    n_cam = proj.shape[0]
    rot = proj[:, :, :3].transpose(2, 0, 1).reshape(3, 3 * n_cam).astype(np.float32)
    uvz = xyz.astype(np.float32, copy=False) @ rot  # (N, 3C): [u·z, v·z, z] per camera
    uvz += proj[:, :, 3].reshape(-1).astype(np.float32)
    depth = uvz[:, 2::3]  # (N, C)
    # 6. perspective divide (points behind the camera give junk that step 7 drops)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = uvz[:, 0::3] / depth  # (N, C)
        v = uvz[:, 1::3] / depth
    # 7. depth filter and strictly inside the image (less the margin)
    height = image_hw[:, 0].astype(np.float32) - np.float32(margin)
    width = image_hw[:, 1].astype(np.float32) - np.float32(margin)
    keep = (depth > min_depth) & (u > 0) & (u < width) & (v > 0) & (v < height)  # (N, C)
    point, cam = np.nonzero(keep)
    return point, cam, u[point, cam], v[point, cam]
