"""SemanticKITTI classes: raw label ids, the learning map to 19 classes + ignore, and its inverse.

Values are those of the dataset's own ``semantic-kitti.yaml`` (semantic-kitti-api,
``config/semantic-kitti.yaml``): a ``.label`` file holds one uint32 per point whose lower 16 bits
are the raw semantic id and upper 16 the instance id; ``learning_map`` sends a raw id to 0..19
(0 = ignored), ``learning_map_inv`` sends a training class back to a raw id (the submission
layout). This module is numpy-only (``cmcr synth`` loads it without torch).
"""

from __future__ import annotations

import numpy as np

# raw id -> name (the yaml's ``labels``)
RAW_LABELS: dict[int, str] = {
    0: "unlabeled",
    1: "outlier",
    10: "car",
    11: "bicycle",
    13: "bus",
    15: "motorcycle",
    16: "on-rails",
    18: "truck",
    20: "other-vehicle",
    30: "person",
    31: "bicyclist",
    32: "motorcyclist",
    40: "road",
    44: "parking",
    48: "sidewalk",
    49: "other-ground",
    50: "building",
    51: "fence",
    52: "other-structure",
    60: "lane-marking",
    70: "vegetation",
    71: "trunk",
    72: "terrain",
    80: "pole",
    81: "traffic-sign",
    99: "other-object",
    252: "moving-car",
    253: "moving-bicyclist",
    254: "moving-person",
    255: "moving-motorcyclist",
    256: "moving-on-rails",
    257: "moving-bus",
    258: "moving-truck",
    259: "moving-other-vehicle",
}

# raw id -> training class (the yaml's ``learning_map``; 0 = ignored)
LEARNING_MAP: dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
    40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
    80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}  # fmt: skip

# training class -> raw id (the yaml's ``learning_map_inv``)
LEARNING_MAP_INV: dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
    12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}  # fmt: skip

# index 0 is "ignore"; 1..19 the training classes, named as the raw id learning_map_inv gives
KITTI_CLASSES: tuple[str, ...] = ("ignore",) + tuple(
    RAW_LABELS[LEARNING_MAP_INV[i]] for i in range(1, 20)
)
NUM_KITTI = len(KITTI_CLASSES) - 1  # 19
MAX_RAW = 1 << 16  # raw semantic ids are the lower 16 bits of a label


def lookup_table(mapping: dict[int, int], size: int, what: str) -> np.ndarray:
    """(size,) int64 array with table[k] = mapping[k], -1 for ids the mapping lacks."""
    table = np.full(size, -1, dtype=np.int64)
    for key, value in mapping.items():
        if not 0 <= int(key) < size:
            raise ValueError(f"{what}: id {key} outside 0..{size - 1}")
        table[int(key)] = int(value)
    return table


def learning_table(learning_map: dict[int, int] | None = None) -> np.ndarray:
    """(65536,) raw id -> class 0..19 (-1 where the map has no entry)."""
    return lookup_table(learning_map or LEARNING_MAP, MAX_RAW, "learning_map")


def inverse_table(learning_map_inv: dict[int, int] | None = None) -> np.ndarray:
    """(20,) class 0..19 -> raw id."""
    return lookup_table(learning_map_inv or LEARNING_MAP_INV, NUM_KITTI + 1, "learning_map_inv")
