"""Per-class appearance: camera colour, LiDAR reflectivity and surface texture.

Values are chosen so classes differ in intensity as well as geometry (road dark, lane paint and
sidewalk brighter, cones and barriers retro-reflective), as a linear probe needs.
"""

from __future__ import annotations

import numpy as np

from cmcr.synth.classes import RAW_CLASSES, RAW_INDEX

# name -> (RGB 0..255, LiDAR intensity 0..255, texture amplitude 0..1)
_MATERIALS: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "human.pedestrian.adult": ((150, 60, 70), 18.0, 0.15),
    "human.pedestrian.child": ((190, 120, 60), 18.0, 0.15),
    "human.pedestrian.construction_worker": ((240, 140, 20), 60.0, 0.1),
    "movable_object.barrier": ((235, 235, 225), 95.0, 0.1),
    "movable_object.trafficcone": ((250, 90, 10), 160.0, 0.05),
    "vehicle.bicycle": ((40, 110, 170), 35.0, 0.1),
    "vehicle.bus.rigid": ((220, 190, 40), 45.0, 0.08),
    "vehicle.car": ((90, 90, 120), 30.0, 0.08),
    "vehicle.construction": ((230, 170, 0), 50.0, 0.12),
    "vehicle.motorcycle": ((120, 20, 20), 28.0, 0.1),
    "vehicle.trailer": ((170, 170, 180), 55.0, 0.1),
    "vehicle.truck": ((200, 200, 205), 42.0, 0.1),
    "flat.driveable_surface": ((75, 75, 80), 8.0, 0.12),
    "flat.other": ((175, 160, 140), 45.0, 0.15),
    "flat.sidewalk": ((165, 165, 160), 28.0, 0.2),
    "flat.terrain": ((110, 140, 60), 16.0, 0.35),
    "static.manmade": ((150, 120, 100), 50.0, 0.25),
    "static.vegetation": ((40, 110, 35), 14.0, 0.5),
}

N_RAW = len(RAW_CLASSES)
COLOUR = np.full((N_RAW, 3), 128.0, dtype=np.float32)  # (32, 3) RGB per raw class
INTENSITY = np.full(N_RAW, 20.0, dtype=np.float32)  # (32,)
TEXTURE = np.full(N_RAW, 0.1, dtype=np.float32)  # (32,)
for _name, (_rgb, _inten, _tex) in _MATERIALS.items():
    COLOUR[RAW_INDEX[_name]] = _rgb
    INTENSITY[RAW_INDEX[_name]] = _inten
    TEXTURE[RAW_INDEX[_name]] = _tex

LANE_PAINT_RGB = np.array([235, 235, 230], dtype=np.float32)
LANE_PAINT_INTENSITY = 90.0
SUN = np.array([0.45, 0.3, 0.84], dtype=np.float32) / np.linalg.norm([0.45, 0.3, 0.84])
