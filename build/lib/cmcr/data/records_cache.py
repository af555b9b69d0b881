"""A split's keyframe records, cached as JSON per table set, so that a process reading a table
set already read does not import the nuScenes devkit.

``import nuscenes`` costs 1.5-1.9 s of CPU (the package imports its NuScenes class, which pulls
in sklearn, scipy.stats and matplotlib); every trial, probe and evaluation process paid it. The
cache holds what ``load_records`` returned for (dataroot, version, split, cameras) while the
version folder's tables keep their names, sizes and modification times and the label folders
their modification times (the devkit counts their files on opening); anything else is read
through the devkit again, and a table set that fails is never cached (its error is raised each
time). JSON only, written atomically; a cache that cannot be read or written is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cmcr.configs import DataConfig
from cmcr.data.records import SampleRecord, load_records, resolve_dataroot
from cmcr.names import cache_folder

FORMAT = 1  # bump when SampleRecord or load_records' output changes
_ARRAYS = {  # SampleRecord's array fields and their dtypes
    "lidar_to_ego": np.float64,
    "ego_to_global": np.float64,
    "global_to_cam_ego": np.float64,
    "cam_ego_to_cam": np.float64,
    "intrinsics": np.float64,
    "image_hw": np.int64,
}


def cached_records(cfg: DataConfig, split: str) -> list[SampleRecord]:
    """``load_records(cfg, split)``, from the cache when its table set is unchanged."""
    path = _entry(resolve_dataroot(cfg), cfg.version, split, cfg.cameras)
    if path is not None:
        records = _read(path)
        if records is not None:
            return records
    records = load_records(cfg, split)
    if path is not None:
        _write(path, records)
    return records


def _entry(root: Path, version: str, split: str, cameras: list[str]) -> Path | None:
    """The cache file of these records, or None (no cache folder, tables unreadable)."""
    folder = cache_folder()
    if folder is None:
        return None
    try:
        tables = sorted(
            (p.name, st.st_size, st.st_mtime_ns)
            for p in (root / version).glob("*.json")
            for st in (p.stat(),)
        )
        # the devkit counts the label files when it opens the tables: a label folder whose
        # entries changed (its mtime) is read through the devkit again, which names it
        labels = [
            (d, (root / d / version).stat().st_mtime_ns)
            for d in ("lidarseg", "panoptic")
            if (root / d / version).is_dir()
        ]
        resolved = str(root.resolve())
    except OSError:
        return None
    # the root as given and resolved: records hold paths under the root as it was given
    key = json.dumps([FORMAT, str(root), resolved, version, split, list(cameras), tables, labels])
    return folder / "records" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read(path: Path) -> list[SampleRecord] | None:
    try:
        rows = json.loads(path.read_text())
        return [
            SampleRecord(
                **{k: np.array(v, _ARRAYS[k]) if k in _ARRAYS else v for k, v in r.items()}
            )
            for r in rows
        ]
    except (OSError, ValueError, TypeError, KeyError):  # absent, partial or another format
        return None


def _write(path: Path, records: list[SampleRecord]) -> None:
    rows = [{k: v.tolist() if k in _ARRAYS else v for k, v in vars(r).items()} for r in records]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, path)  # readers see the whole file or none
    except OSError:
        tmp.unlink(missing_ok=True)
