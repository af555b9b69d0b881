"""File readers: LiDAR sweeps, lidarseg labels and cropped JPEGs; failures name the file."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from cmcr.errors import DataError

POINT_DIMS = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring (float32)


def read_points(path: str) -> np.ndarray:
    """(N, 5) float32 points of a nuScenes .pcd.bin; DataError when missing or truncated."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: LiDAR file not found") from err
    if raw.size % POINT_DIMS:
        raise DataError(
            f"{path}: truncated LiDAR file ({raw.size * 4} bytes is not a whole number of "
            f"{POINT_DIMS}-float points)"
        )
    return raw.reshape(-1, POINT_DIMS)


def read_lidarseg(path: str | None, n_points: int, token: str) -> np.ndarray:
    """(N,) uint8 raw class per point; DataError when absent or of the wrong length."""
    if path is None:
        raise DataError(f"lidar sample_data {token}: no lidarseg labels (lidarseg.json)")
    try:
        labels = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DataError(f"{path}: lidarseg file not found") from err
    if labels.size != n_points:
        raise DataError(f"{path}: {labels.size} labels for {n_points} points")
    return labels


def read_image_crop(path: str, crop: np.ndarray, out_hw: tuple[int, int], flip: bool) -> np.ndarray:
    """(H, W, 3) uint8: crop [top, left, h, w] of a JPEG resized (bilinear) to out_hw, flipped.

    JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when the crop is still at least out_hw
    there, which skips most of the decoding work; the box is rescaled to the reduced image.
    """
    top, left, height, width = (int(x) for x in crop)
    out_h, out_w = out_hw
    try:
        img = Image.open(path)
        full_w, full_h = img.size
        need = (math.ceil(full_w * out_w / width), math.ceil(full_h * out_h / height))
        drafted = img.draft("RGB", need)  # None for non-JPEG files: decoded at full size
        # reduced pixel i covers source [s·i, s·(i+1)) with the integer scale s (not W/w')
        scale = full_w / drafted[1][2] if drafted else 1.0
        if img.mode != "RGB":
            img = img.convert("RGB")
        box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
        img = img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    except FileNotFoundError as err:
        raise DataError(f"{path}: camera image not found") from err
    except OSError as err:
        raise DataError(f"{path}: unreadable camera image ({err})") from err
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img)
