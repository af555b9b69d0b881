"""Procedural street layout in a scene-local frame: a straight road along +x, ego lane at y<0.

Everything is an axis-aligned box or a sphere (tree crowns) plus the ground plane z = 0, so the
ray caster stays a handful of array operations. Objects stand still; only the ego moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmcr.synth.classes import RAW_INDEX
from cmcr.synth.materials import COLOUR, INTENSITY

ROAD_HALF = 7.0  # |y| < 7 m is asphalt: 2 driving lanes + 2 parking lanes
SIDEWALK = 3.0  # width; raised 0.15 m
CURB = 0.15
EGO_LANE_Y = -1.75
PARK_Y = ROAD_HALF - 1.35  # parking-lane centre line

# vehicle kind -> (raw class, length, width, [(x0, x1, z0, z1, inset) sub-boxes as fractions/metres])
_VEHICLES: dict[str, tuple[str, float, float, list[tuple[float, float, float, float, float]]]] = {
    "car": ("vehicle.car", 4.6, 1.9, [(0.0, 1.0, 0.25, 1.0, 0.0), (0.25, 0.8, 1.0, 1.55, 0.1)]),
    "truck": ("vehicle.truck", 7.5, 2.5, [(0.0, 0.68, 0.45, 3.4, 0.0), (0.7, 1.0, 0.45, 3.0, 0.0)]),
    "bus": ("vehicle.bus.rigid", 11.5, 2.6, [(0.0, 1.0, 0.3, 3.2, 0.0)]),
    "trailer": ("vehicle.trailer", 9.0, 2.5, [(0.0, 1.0, 1.0, 3.8, 0.0)]),
    "construction": (
        "vehicle.construction",
        6.0,
        2.7,
        [(0.0, 0.75, 0.4, 1.9, 0.0), (0.45, 0.75, 1.9, 3.3, 0.3), (0.75, 1.0, 0.8, 1.4, 0.6)],
    ),
    "motorcycle": ("vehicle.motorcycle", 2.1, 0.8, [(0.0, 1.0, 0.3, 1.25, 0.0)]),
    "bicycle": ("vehicle.bicycle", 1.75, 0.55, [(0.0, 1.0, 0.35, 1.1, 0.0)]),
}
_PARKED_MIX = ["car"] * 9 + ["truck", "bus", "trailer", "motorcycle"]


@dataclass
class World:
    """Primitives of one scene: boxes (B) and spheres (S), each with a class, object and look."""

    box_min: np.ndarray  # (B, 3) float32
    box_max: np.ndarray  # (B, 3) float32
    box_cls: np.ndarray  # (B,) uint8 raw class
    box_obj: np.ndarray  # (B,) int32 annotated object id, -1 for stuff
    box_rgb: np.ndarray  # (B, 3) float32
    box_int: np.ndarray  # (B,) float32 LiDAR reflectivity
    sph_c: np.ndarray  # (S, 3) float32
    sph_r: np.ndarray  # (S,) float32
    sph_cls: np.ndarray  # (S,) uint8
    sph_rgb: np.ndarray  # (S, 3) float32
    sph_int: np.ndarray  # (S,) float32
    obj_cls: np.ndarray  # (O,) uint8 raw class of each annotated object


class _Builder:
    """Collects primitives; objects group several boxes under one annotation id."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []
        self.objects: list[int] = []

    def box(self, lo, hi, name: str, obj: int = -1, rgb=None) -> None:
        cls = RAW_INDEX[name]
        tint = COLOUR[cls] if rgb is None else np.asarray(rgb, dtype=np.float32)
        jitter = 1.0 + 0.08 * self.rng.standard_normal()  # per-primitive reflectivity spread
        self.boxes.append((lo, hi, cls, obj, tint, INTENSITY[cls] * jitter))

    def sphere(self, centre, radius: float, name: str) -> None:
        cls = RAW_INDEX[name]
        shade = 0.8 + 0.4 * self.rng.random()
        self.spheres.append((centre, radius, cls, COLOUR[cls] * shade, INTENSITY[cls]))

    def new_object(self, name: str) -> int:
        self.objects.append(RAW_INDEX[name])
        return len(self.objects) - 1

    def build(self) -> World:
        b = self.boxes
        s = self.spheres or [((0.0, 0.0, -100.0), 0.1, 0, COLOUR[0], 0.0)]  # keep arrays 2-D
        return World(
            box_min=np.array([x[0] for x in b], np.float32),
            box_max=np.array([x[1] for x in b], np.float32),
            box_cls=np.array([x[2] for x in b], np.uint8),
            box_obj=np.array([x[3] for x in b], np.int32),
            box_rgb=np.array([x[4] for x in b], np.float32),
            box_int=np.array([x[5] for x in b], np.float32),
            sph_c=np.array([x[0] for x in s], np.float32),
            sph_r=np.array([x[1] for x in s], np.float32),
            sph_cls=np.array([x[2] for x in s], np.uint8),
            sph_rgb=np.array([x[3] for x in s], np.float32),
            sph_int=np.array([x[4] for x in s], np.float32),
            obj_cls=np.array(self.objects, np.uint8),
        )


def build_world(rng: np.random.Generator, x_lo: float, x_hi: float, focus: float) -> World:
    """A street from x_lo to x_hi; `focus` (the middle of the ego path) gets a work zone."""
    w = _Builder(rng)
    for side in (-1.0, 1.0):
        _sidewalk_and_driveways(w, side, x_lo, x_hi)
        setback = rng.uniform(6.0, 12.0)
        _buildings(w, side, x_lo, x_hi, setback)
        _greenery(w, side, x_lo, x_hi, setback)
        _parked_vehicles(w, side, x_lo, x_hi)
        _street_furniture(w, side, x_lo, x_hi)
        _pedestrians(w, side, x_lo, x_hi)
    _work_zone(w, focus + rng.uniform(-8.0, 8.0))
    return w.build()


def _span(side: float, y0: float, y1: float) -> tuple[float, float]:
    """y interval at distance [y0, y1] from the road axis on one side."""
    return (y0, y1) if side > 0 else (-y1, -y0)


def _sidewalk_and_driveways(w: _Builder, side: float, x_lo: float, x_hi: float) -> None:
    ys = _span(side, ROAD_HALF, ROAD_HALF + SIDEWALK)
    yd = _span(side, ROAD_HALF, ROAD_HALF + SIDEWALK + 4.0)
    x = x_lo
    while x < x_hi:
        run = w.rng.uniform(20.0, 40.0)
        w.box((x, ys[0], 0.0), (x + run, ys[1], CURB), "flat.sidewalk")
        gap = w.rng.uniform(4.0, 7.0)  # a driveway: low concrete slab (flat.other)
        w.box((x + run, yd[0], 0.0), (x + run + gap, yd[1], 0.05), "flat.other")
        x += run + gap


def _buildings(w: _Builder, side: float, x_lo: float, x_hi: float, setback: float) -> None:
    y0 = ROAD_HALF + SIDEWALK + setback
    x = x_lo - 10.0
    while x < x_hi + 10.0:
        length, depth, height = w.rng.uniform(8, 25), w.rng.uniform(8, 15), w.rng.uniform(5, 20)
        ys = _span(side, y0 + w.rng.uniform(0, 2), y0 + depth)
        tint = np.array([150, 120, 100], np.float32) * w.rng.uniform(0.7, 1.3, 3)
        w.box((x, ys[0], 0.0), (x + length, ys[1], height), "static.manmade", rgb=tint)
        x += length + w.rng.uniform(2.0, 8.0)


def _greenery(w: _Builder, side: float, x_lo: float, x_hi: float, setback: float) -> None:
    y_in = ROAD_HALF + SIDEWALK
    x = x_lo + w.rng.uniform(0, 5)
    while x < x_hi:
        y = side * (y_in + w.rng.uniform(1.5, max(setback - 2.0, 1.6)))
        trunk = w.rng.uniform(2.0, 3.0)
        w.box((x - 0.18, y - 0.18, 0.0), (x + 0.18, y + 0.18, trunk + 0.5), "static.vegetation")
        r = w.rng.uniform(1.4, 2.4)
        w.sphere((x, y, trunk + 0.7 * r), r, "static.vegetation")
        if w.rng.random() < 0.4:  # a hedge beside the tree
            length = w.rng.uniform(3.0, 7.0)
            yh = _span(side, y_in + 0.3, y_in + 1.2)
            w.box(
                (x + 2.5, yh[0], 0.0),
                (x + 2.5 + length, yh[1], w.rng.uniform(0.9, 1.4)),
                "static.vegetation",
            )
        x += w.rng.uniform(7.0, 14.0)


def _vehicle(w: _Builder, kind: str, x0: float, yc: float) -> float:
    """Place a parked vehicle starting at x0 centred on y = yc; returns its length."""
    name, length, width, parts = _VEHICLES[kind]
    length *= w.rng.uniform(0.92, 1.08)
    obj = w.new_object(name)
    paint = None
    if kind == "car":  # cars come in many paints; the camera must not key on one colour
        paint = w.rng.choice(
            [
                [200, 30, 30],
                [30, 30, 35],
                [220, 220, 225],
                [40, 70, 160],
                [120, 120, 125],
                [90, 90, 120],
            ]
        ).astype(np.float32)
    for fx0, fx1, z0, z1, inset in parts:
        half = width / 2 - inset
        w.box(
            (x0 + fx0 * length, yc - half, z0), (x0 + fx1 * length, yc + half, z1), name, obj, paint
        )
    return length


def _parked_vehicles(w: _Builder, side: float, x_lo: float, x_hi: float) -> None:
    kinds = list(w.rng.permutation(_PARKED_MIX))
    x = x_lo + w.rng.uniform(0, 4)
    i = 0
    while x < x_hi:
        if w.rng.random() < 0.15:  # an empty parking bay
            x += w.rng.uniform(5.0, 10.0)
            continue
        x += _vehicle(w, kinds[i % len(kinds)], x, side * PARK_Y) + w.rng.uniform(1.0, 4.0)
        i += 1


def _street_furniture(w: _Builder, side: float, x_lo: float, x_hi: float) -> None:
    """Poles (manmade) along the curb and two-wheelers parked on the sidewalk."""
    x = x_lo + w.rng.uniform(0, 10)
    while x < x_hi:
        y = side * (ROAD_HALF + 0.5)
        w.box(
            (x - 0.12, y - 0.12, 0.0), (x + 0.12, y + 0.12, w.rng.uniform(5, 8)), "static.manmade"
        )
        if w.rng.random() < 0.6:
            kind = "bicycle" if w.rng.random() < 0.6 else "motorcycle"
            _vehicle(w, kind, x + 1.5, side * (ROAD_HALF + 1.0))
        x += w.rng.uniform(15.0, 28.0)


def _pedestrians(w: _Builder, side: float, x_lo: float, x_hi: float) -> None:
    n = int((x_hi - x_lo) / 12)
    for x in np.sort(w.rng.uniform(x_lo, x_hi, n)):
        y = side * (ROAD_HALF + w.rng.uniform(1.6, SIDEWALK - 0.4))
        child = w.rng.random() < 0.2
        name = "human.pedestrian.child" if child else "human.pedestrian.adult"
        h = w.rng.uniform(1.1, 1.35) if child else w.rng.uniform(1.6, 1.9)
        half = 0.2 if child else 0.28
        w.box((x - half, y - half, CURB), (x + half, y + half, CURB + h), name, w.new_object(name))


def _work_zone(w: _Builder, x0: float) -> None:
    """Cones, barriers, a construction vehicle and workers in the opposite lane."""
    for x in np.arange(x0, x0 + 16.0, 2.0):
        obj = w.new_object("movable_object.trafficcone")
        w.box((x - 0.2, 0.4, 0.0), (x + 0.2, 0.8, 0.75), "movable_object.trafficcone", obj)
    for x in np.arange(x0 + 1.0, x0 + 15.0, 2.6):
        obj = w.new_object("movable_object.barrier")
        w.box((x, 3.1, 0.0), (x + 2.3, 3.6, 1.0), "movable_object.barrier", obj)
    _vehicle(w, "construction", x0 + 17.0, 1.9)
    for dx in (11.5, 13.0):
        name = "human.pedestrian.construction_worker"
        w.box((x0 + dx - 0.28, 1.6, 0.0), (x0 + dx + 0.28, 2.15, 1.8), name, w.new_object(name))
