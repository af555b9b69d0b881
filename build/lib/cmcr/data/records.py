"""Read the nuScenes devkit once into plain per-keyframe records that workers can use alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmcr.configs import DataConfig
from cmcr.data.geometry import rigid_inverse, transform_matrix
from cmcr.errors import DataError
from cmcr.names import DATA_ROOT_ENV

# the keys of each table that the devkit's index and ``_record`` read (lidarseg: when present)
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "category": ("token", "name"),
    "instance": ("token", "category_token"),
    "sensor": ("token", "channel", "modality"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "ego_pose": ("token", "translation", "rotation"),
    "log": ("token",),
    "scene": ("token", "name", "first_sample_token"),
    "sample": ("token", "next"),
    "sample_data": (
        "token",
        "sample_token",
        "calibrated_sensor_token",
        "ego_pose_token",
        "filename",
        "is_key_frame",
        "height",
        "width",
    ),
    "sample_annotation": ("token", "sample_token", "instance_token"),
    "map": ("token", "log_tokens"),
    "lidarseg": ("token", "sample_data_token", "filename"),
}


@dataclass
class SampleRecord:
    """Everything a worker needs for one keyframe: file paths and precomputed 4×4 transforms."""

    sample_token: str
    scene_name: str  # e.g. "scene-0061": label fractions and the held-out list select scenes
    lidar_token: str  # LIDAR_TOP sample_data token (the batch's sample_tokens)
    lidar_path: str
    lidarseg_path: str | None
    lidar_to_ego: np.ndarray  # (4, 4) float64
    ego_to_global: np.ndarray  # (4, 4) at the lidar timestamp
    cam_tokens: list[str]  # camera sample_data tokens, in cfg.data.cameras order
    cam_paths: list[str]
    global_to_cam_ego: np.ndarray  # (C, 4, 4) at each camera's timestamp
    cam_ego_to_cam: np.ndarray  # (C, 4, 4)
    intrinsics: np.ndarray  # (C, 3, 3)
    image_hw: np.ndarray  # (C, 2) int64 (height, width)


def resolve_dataroot(cfg: DataConfig) -> Path:
    """The dataroot of the config (load_config already applied CMCR_DATA_ROOT); must exist."""
    root = Path(cfg.dataroot)
    if not (root / cfg.version).is_dir():
        raise DataError(
            f"data.dataroot: expected a nuScenes folder holding {cfg.version}/, got '{root}' "
            f"(set data.dataroot or {DATA_ROOT_ENV}, or run `cmcr synth`)"
        )
    return root


def split_scene_names(split: str) -> list[str]:
    """Scene names of a devkit split; DataError naming the split and the valid ones."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise DataError(f"split '{split}': unknown, expected one of {', '.join(sorted(splits))}")
    return list(splits[split])


def load_records(cfg: DataConfig, split: str) -> list[SampleRecord]:
    """Keyframe records of a split in scene order then time order; DataError when empty."""
    names = set(split_scene_names(split))
    root = resolve_dataroot(cfg)
    nusc = _open_devkit(root, cfg.version)
    scenes = [s for s in nusc.scene if s["name"] in names]
    if not scenes:
        raise DataError(
            f"split '{split}': none of its {len(names)} scenes is in {root / cfg.version} "
            f"(it holds {', '.join(sorted(s['name'] for s in nusc.scene)[:10])}...)"
        )
    lidarseg = {r["sample_data_token"]: r["filename"] for r in getattr(nusc, "lidarseg", [])}
    records = []
    for scene in scenes:
        token = scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            records.append(_record(nusc, root, sample, scene["name"], cfg.cameras, lidarseg))
            token = sample["next"]
    return records


def _open_devkit(root: Path, version: str):
    """NuScenes(version, root), its failures turned into a DataError naming the folder, or the
    table at fault: a table that is not a list of records with ``TABLE_KEYS`` names its file.

    The tables the devkit loaded are checked in memory (no second parse of a table set that is
    gigabytes for nuScenes trainval); a failure inside the devkit re-reads them to name the file.
    """
    from nuscenes.nuscenes import NuScenes

    tables = root / version
    try:
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, OSError, KeyError, ValueError, TypeError, AttributeError) as err:
        for name in TABLE_KEYS:  # a malformed table trips the devkit's index: name which
            if (tables / f"{name}.json").is_file():
                check_table(tables / f"{name}.json", _read_json(tables / f"{name}.json"))
        raise DataError(f"{tables}: not a readable nuScenes table set ({err})") from None
    for name in TABLE_KEYS:
        if hasattr(nusc, name):
            check_table(tables / f"{name}.json", getattr(nusc, name))
    return nusc


def _read_json(path: Path) -> object:
    """A table file's JSON; DataError naming it when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not a JSON table ({err})") from None


def check_table(path: Path, rows: object) -> None:
    """``rows`` (the table ``path``) is a list of objects holding the keys the devkit and
    ``_record`` read (TABLE_KEYS); DataError naming the file, the record and the key."""
    keys = TABLE_KEYS[path.stem]
    expected = f"expected a JSON list of objects with keys {', '.join(keys)}"
    if not isinstance(rows, list):
        raise DataError(f"{path}: a JSON {_json_type(rows)}, {expected}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i} is a JSON {_json_type(row)}, {expected}")
        if not row.keys() >= set(keys):
            missing = [k for k in keys if k not in row]
            raise DataError(f"{path}: record {i} lacks {', '.join(missing)}, {expected}")


def _record(
    nusc, root: Path, sample: dict, scene: str, cameras: list[str], lidarseg: dict
) -> SampleRecord:
    """One keyframe's paths and transforms (the devkit's map_pointcloud_to_image chain)."""
    if "LIDAR_TOP" not in sample["data"]:
        raise DataError(
            f"sample {sample['token']}: no LIDAR_TOP key frame "
            f"({Path(nusc.table_root) / 'sample_data.json'})"
        )
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar_cs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    lidar_pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    cams, g2e, e2c, intr, hw = [], [], [], [], []
    for channel in cameras:
        if channel not in sample["data"]:
            raise DataError(f"sample {sample['token']}: no {channel} image (data.cameras)")
        cam = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", cam["ego_pose_token"])
        cams.append(cam)
        g2e.append(rigid_inverse(transform_matrix(pose["rotation"], pose["translation"])))
        e2c.append(rigid_inverse(transform_matrix(cs["rotation"], cs["translation"])))
        intr.append(_intrinsic(nusc, cs, channel))
        hw.append((cam["height"], cam["width"]))
    seg = lidarseg.get(lidar["token"])
    return SampleRecord(
        sample_token=sample["token"],
        scene_name=scene,
        lidar_token=lidar["token"],
        lidar_path=str(root / lidar["filename"]),
        lidarseg_path=str(root / seg) if seg else None,
        lidar_to_ego=transform_matrix(lidar_cs["rotation"], lidar_cs["translation"]),
        ego_to_global=transform_matrix(lidar_pose["rotation"], lidar_pose["translation"]),
        cam_tokens=[c["token"] for c in cams],
        cam_paths=[str(root / c["filename"]) for c in cams],
        global_to_cam_ego=np.stack(g2e),
        cam_ego_to_cam=np.stack(e2c),
        intrinsics=np.stack(intr),
        image_hw=np.asarray(hw, dtype=np.int64),
    )


def _json_type(value: object) -> str:
    """JSON's name for a parsed value's type (a JSON number, not a Python int)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _intrinsic(nusc, cs: dict, channel: str) -> np.ndarray:
    """(3, 3) float64 camera matrix of a calibrated_sensor record; DataError naming the table
    when it is not 3x3 finite numbers with positive focal lengths."""
    try:
        k = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
    except (TypeError, ValueError):  # ragged or non-numeric lists
        k = np.empty(0)
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise DataError(
            f"{Path(nusc.table_root) / 'calibrated_sensor.json'}: record {cs['token']} "
            f"({channel}): camera_intrinsic {str(cs['camera_intrinsic'])[:80]}, expected 3x3 "
            "finite numbers with positive focal lengths"
        )
    return k
