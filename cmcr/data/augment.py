"""Joint augmentations and patch masking: pure functions of arrays and a numpy Generator."""

from __future__ import annotations

import numpy as np


def sample_crops(
    rng: np.random.Generator,
    image_hw: np.ndarray,
    out_hw: tuple[int, int],
    scale: tuple[float, float],
) -> np.ndarray:
    """Random crop boxes (C, 4) int64 [top, left, height, width], aspect of out_hw, area in scale.

    image_hw: (C, 2) source image sizes. The crop keeps the output aspect so pixels are not
    stretched; it is clamped to the image when the area would not fit.
    """
    n = len(image_hw)
    src_h, src_w = image_hw[:, 0].astype(np.float64), image_hw[:, 1].astype(np.float64)
    aspect = out_hw[1] / out_hw[0]  # width / height
    area = rng.uniform(scale[0], scale[1], n) * src_h * src_w
    width = np.minimum(np.sqrt(area * aspect), src_w)
    height = np.minimum(width / aspect, src_h)
    width = np.minimum(height * aspect, src_w)
    height_i = np.clip(np.round(height), 1, src_h).astype(np.int64)
    width_i = np.clip(np.round(width), 1, src_w).astype(np.int64)
    top = np.floor(rng.random(n) * (src_h - height_i + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (src_w - width_i + 1)).astype(np.int64)
    return np.stack([top, left, height_i, width_i], axis=1)


def map_pixels(
    u: np.ndarray,
    v: np.ndarray,
    cam: np.ndarray,
    crops: np.ndarray,
    flips: np.ndarray,
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map continuous source pixel coords through crop → resize → hflip; returns (row, col, keep).

    Uses the resize's own convention (output pixel j covers source
    [left + j·w/W, left + (j+1)·w/W)), so a pair lands on the output pixel whose area holds it.
    u, v, cam: (M,); crops (C, 4) [top, left, h, w]; flips (C,) bool. keep: (M,) inside the crop.
    """
    out_h, out_w = out_hw
    box = crops[cam].astype(np.float32)  # (M, 4)
    col = np.floor((u - box[:, 1]) * (out_w / box[:, 3])).astype(np.int64)
    row = np.floor((v - box[:, 0]) * (out_h / box[:, 2])).astype(np.int64)
    keep = (col >= 0) & (col < out_w) & (row >= 0) & (row < out_h)
    col = np.where(flips[cam], out_w - 1 - col, col)
    return row[keep], col[keep], keep


def augment_cloud(
    rng: np.random.Generator, xyz: np.ndarray, rotate: bool, flip_prob: float
) -> np.ndarray:
    """Rotate (N, 3) points about z by U(0, 2π) and flip the x and y axes each with flip_prob."""
    angle = rng.uniform(0.0, 2.0 * np.pi) if rotate else 0.0
    flip = rng.random(2) < flip_prob
    cos, sin = np.cos(angle), np.sin(angle)
    mat = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    mat[0] *= -1.0 if flip[0] else 1.0  # flipping after rotating: rows negate x' or y'
    mat[1] *= -1.0 if flip[1] else 1.0
    return xyz @ mat.T.astype(np.float32)


def patch_mask(
    rng: np.random.Generator,
    n_images: int,
    out_hw: tuple[int, int],
    image_prob: float,
    ratio: float,
    patch: int,
) -> np.ndarray:
    """(C, H, W) bool pixel mask: each image masked with image_prob, then patches with ratio."""
    out_h, out_w = out_hw
    grid_h, grid_w = -(-out_h // patch), -(-out_w // patch)
    masked_image = rng.random(n_images) < image_prob  # (C,)
    drop = rng.random((n_images, grid_h, grid_w)) < ratio  # (C, gh, gw)
    drop &= masked_image[:, None, None]
    pixels = drop.repeat(patch, axis=1).repeat(patch, axis=2)
    return np.ascontiguousarray(pixels[:, :out_h, :out_w])
