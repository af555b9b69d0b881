"""The 13 nuScenes tables (+ lidarseg) from per-scene records; tokens are deterministic hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cmcr.configs.schema import NUSCENES_CAMERAS
from cmcr.synth.classes import RAW_CLASSES

SENSORS: tuple[tuple[str, str], ...] = (("LIDAR_TOP", "lidar"),) + tuple(
    (c, "camera") for c in NUSCENES_CAMERAS
)
VISIBILITY = ("v0-40", "v40-60", "v60-80", "v80-100")
ATTRIBUTES = ("vehicle.parked", "pedestrian.standing", "cycle.without_rider")


def token(*parts: object) -> str:
    """A 32-hex nuScenes-style token derived from its parts (same parts -> same token)."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def quat_yaw(yaw: float) -> list[float]:
    """Quaternion [w, x, y, z] of a rotation about z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def quat_matrix(R: np.ndarray) -> list[float]:
    """Quaternion [w, x, y, z] of a 3x3 rotation matrix."""
    from pyquaternion import Quaternion

    return [float(x) for x in Quaternion(matrix=R, atol=1e-7).elements]


def static_tables() -> dict[str, list[dict]]:
    """category (with lidarseg `index`), attribute, visibility and sensor."""
    return {
        "category": [
            {"token": token("category", n), "name": n, "description": f"synthetic {n}", "index": i}
            for i, n in enumerate(RAW_CLASSES)
        ],
        "attribute": [
            {"token": token("attribute", a), "name": a, "description": a} for a in ATTRIBUTES
        ],
        "visibility": [
            {"token": str(i + 1), "level": lvl, "description": f"visibility {lvl}"}
            for i, lvl in enumerate(VISIBILITY)
        ],
        "sensor": [
            {"token": token("sensor", ch), "channel": ch, "modality": mod} for ch, mod in SENSORS
        ],
    }


def attribute_for(class_name: str) -> list[str]:
    """Attribute tokens of a standing object of this class."""
    if class_name.startswith("human"):
        return [token("attribute", "pedestrian.standing")]
    if class_name in ("vehicle.bicycle", "vehicle.motorcycle"):
        return [token("attribute", "cycle.without_rider")]
    if class_name.startswith("vehicle"):
        return [token("attribute", "vehicle.parked")]
    return []


def link(records: list[dict]) -> None:
    """Fill prev/next of records that form one sequence, in order."""
    for i, rec in enumerate(records):
        rec["prev"] = records[i - 1]["token"] if i > 0 else ""
        rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


def instances(annotations: list[dict], category_of: dict[str, str]) -> list[dict]:
    """Instance records from annotations (already in time order per instance), linking them."""
    by_inst: dict[str, list[dict]] = {}
    for ann in annotations:
        by_inst.setdefault(ann["instance_token"], []).append(ann)
    out = []
    for inst, anns in by_inst.items():
        link(anns)
        out.append(
            {
                "token": inst,
                "category_token": category_of[inst],
                "nbr_annotations": len(anns),
                "first_annotation_token": anns[0]["token"],
                "last_annotation_token": anns[-1]["token"],
            }
        )
    return out


def write_tables(root: Path, version: str, tables: dict[str, list[dict]]) -> None:
    """One JSON file per table under root/version."""
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(records, indent=0))
