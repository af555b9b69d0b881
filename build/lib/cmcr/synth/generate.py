"""Generate a synthetic world in the nuScenes v1.0-mini layout (scenes in parallel processes).

Rendering a scene and assembling its nuScenes tables share the record layout (tokens,
timestamps, calibrated sensors) that this module defines in one place; the output folder's
handling (checked first, written beside it, swapped in) is ``target.py``, shared with
``kitti.py``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cmcr import progress
from cmcr.synth import tables as tb
from cmcr.synth.classes import RAW_CLASSES
from cmcr.synth.sensors import (
    CAMERAS,
    Pose,
    camera_calib,
    lidar_calib,
    lidar_sweep,
    render_camera,
    rot_z,
    scaled_intrinsics,
)
from cmcr.synth.spec import TEST_VERSION, WorldSpec, resolve_spec, test_scene_names
from cmcr.synth.target import prepare_target, swap_in
from cmcr.synth.world import EGO_LANE_Y, World, build_world

VERSION = "v1.0-mini"
KEYFRAME_DT = 0.5  # s: keyframes at 2 Hz
T0_US = 1_533_000_000_000_000
MARGIN = 75.0  # metres of street before and after the ego path


def generate_world(
    out: str | Path,
    preset: str = "default",
    seed: int | str = 0,
    *,
    scenes_per_split: str | tuple[int, int] | None = None,
    samples_per_scene: int | str | None = None,
    image_scale: float | str | None = None,
    test_scenes: int | str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    **sizes: int,
) -> dict:
    """Write a world to `out` atomically (temp dir beside it, then rename); returns a summary.
    ``test_scenes``: also the devkit's first test scenes under v1.0-test, without labels.
    ``sizes`` (from Python, for tests): WorldSpec fields such as n_azimuth, test_samples."""
    spec = resolve_spec(
        preset,
        seed=seed,
        scenes_per_split=scenes_per_split,
        samples_per_scene=samples_per_scene,
        image_scale=image_scale,
        test_scenes=test_scenes,
    )
    spec = replace(spec, **sizes)
    out = Path(out).absolute()
    tmp = prepare_target(out, overwrite)
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    try:
        summary = _generate_into(tmp, spec, workers)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.update(
        path=str(out),
        seconds=round(time.perf_counter() - t_start, 2),
        cpu_seconds=round(_cpu_seconds() - cpu_start, 2),
    )
    return summary


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the scene workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _generate_into(root: Path, spec: WorldSpec, workers: int | None) -> dict:
    """Render every scene (in parallel), then write the tables and the map."""
    subs = ("samples/LIDAR_TOP", f"lidarseg/{VERSION}", f"lidarseg/{TEST_VERSION}", "synthetic_gt")
    for sub in (*subs, "maps", "sweeps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for channel in CAMERAS:
        (root / "samples" / channel).mkdir(parents=True, exist_ok=True)
    names = spec.scene_names + test_scene_names(spec.test_scenes)
    jobs = [(root, spec, i, name) for i, name in enumerate(names)]
    n_proc = max(1, min(workers or os.cpu_count() or 1, len(jobs), 2 * (os.cpu_count() or 1)))
    with progress.task(progress.WORLD, len(jobs), unit="scene") as bar:
        if n_proc == 1:
            scenes = []
            for job in jobs:
                scenes.append(_render_scene(*job))
                bar.update(1)
        else:  # results come back in scene order
            with fork_pool(n_proc) as pool:
                scenes = []
                for scene in pool.imap(_render_scene_job, jobs):
                    scenes.append(scene)
                    bar.update(1)
    tables = _assemble(spec, scenes[: len(spec.scene_names)])
    tb.write_tables(root, VERSION, tables)
    if spec.test_scenes:  # v1.0-test: no boxes, an empty lidarseg table (the devkit reads it)
        test = _assemble(spec, scenes[len(spec.scene_names) :])
        test.update(lidarseg=[], sample_annotation=[], instance=[])
        tb.write_tables(root, TEST_VERSION, test)
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(root / tables["map"][0]["filename"])
    points = [n for s in scenes for n in s["points_per_sweep"]]
    return {
        "spec": asdict(spec),
        "test_scenes": spec.test_scenes,
        "scenes": len(scenes),
        "samples": len(tables["sample"]),  # of v1.0-mini
        "images": 6 * len(tables["sample"]),
        "points_per_sweep_mean": float(np.mean(points)),
        "points_per_sweep_min": int(np.min(points)),
        "image_size": list(spec.image_size),
    }


def _render_scene_job(job: tuple) -> dict:
    return _render_scene(*job)


def _ego_local(v: float, tau: np.ndarray | float) -> Pose:
    """Ego pose in the scene frame at `tau` seconds: driving along +x with a gentle weave."""
    x = v * tau
    y = EGO_LANE_Y + 0.25 * np.sin(0.15 * x)
    heading = np.arctan(0.25 * 0.15 * np.cos(0.15 * x))
    return Pose(rot_z(heading), np.array([x, y, 0.0]))


@dataclass(frozen=True)
class _Scene:
    """What every keyframe of one scene shares."""

    root: Path
    spec: WorldSpec
    idx: int
    name: str
    world: World
    speed: float  # m/s along the road
    pose: Pose  # scene frame -> global
    yaw: float  # of the scene frame in the global one


def _render_scene(root: Path, spec: WorldSpec, idx: int, name: str) -> dict:
    """Build one scene's world, record every keyframe's sensors; return table-ready records."""
    rng = np.random.default_rng([spec.seed, idx])
    n_frames = spec.samples_per_scene
    if idx >= len(spec.scene_names) and spec.test_samples:  # a test scene
        n_frames = spec.test_samples
    speed = rng.uniform(3.0, 7.0)
    travel = speed * KEYFRAME_DT * max(n_frames - 1, 1)
    world = build_world(rng, -MARGIN, travel + MARGIN, travel / 2)
    yaw = rng.uniform(-np.pi, np.pi)
    offset = np.array([rng.uniform(300, 1500), rng.uniform(300, 1500), 0.0])
    scene = _Scene(root, spec, idx, name, world, speed, Pose(rot_z(yaw), offset), yaw)
    frames = [_record_frame(scene, k) for k in range(n_frames)]
    return {
        "name": name,
        "frames": frames,
        "points_per_sweep": [f["n_points"] for f in frames],
        "objects": _object_boxes(world, scene.pose, yaw),
    }


def _object_boxes(world: World, scene_pose: Pose, yaw: float) -> list[dict]:
    """Global box (centre, [w, l, h], yaw) and class of every annotated object."""
    boxes = []
    for obj, cls in enumerate(world.obj_cls):  # a loop over objects (tens), not points
        mine = world.box_obj == obj
        lo, hi = world.box_min[mine].min(0), world.box_max[mine].max(0)
        centre = scene_pose.R @ ((lo + hi) / 2) + scene_pose.t
        size = [float(hi[1] - lo[1]), float(hi[0] - lo[0]), float(hi[2] - lo[2])]
        boxes.append({"centre": centre.tolist(), "size": size, "yaw": yaw, "cls": int(cls)})
    return boxes


def _timestamp(idx: int, tau: float) -> int:
    """Microseconds; scenes an hour apart."""
    return T0_US + idx * 3_600_000_000 + int(round(tau * 1e6))


def _record_frame(scene: _Scene, k: int) -> dict:
    """Write keyframe k: the LiDAR sweep and its labels, then the 6 camera images."""
    tau = k * KEYFRAME_DT
    ego = _ego_local(scene.speed, tau)
    rng = np.random.default_rng([scene.spec.seed, scene.idx, k])
    pts, labels, obj = lidar_sweep(
        scene.world, ego @ lidar_calib(), scene.spec.n_azimuth, scene.spec.lidar_range, rng
    )
    ts = _timestamp(scene.idx, tau)
    sd_lidar = tb.token(scene.spec.seed, scene.name, k, "LIDAR_TOP")
    lidar_file = f"samples/LIDAR_TOP/{scene.name}__LIDAR_TOP__{ts}.pcd.bin"
    pts.tofile(scene.root / lidar_file)
    # nuScenes-lidarseg keys its records (and label files) by the lidar sample_data token; a
    # test scene (after the mini ones) has none
    if scene.idx < len(scene.spec.scene_names):
        labels.astype(np.uint8).tofile(scene.root / f"lidarseg/{VERSION}/{sd_lidar}_lidarseg.bin")
    records = [_sd_record(scene, sd_lidar, "LIDAR_TOP", ts, lidar_file, ego)]
    records += [_camera_frame(scene, k, tau, channel) for channel in CAMERAS]
    counts = np.bincount(obj[obj >= 0], minlength=len(scene.world.obj_cls))
    return {
        "k": k,
        "timestamp": ts,
        "sample_data": records,
        "lidarseg": sd_lidar,
        "n_points": len(pts),
        "obj_points": {int(i): int(counts[i]) for i in np.flatnonzero(counts)},
    }


def _camera_frame(scene: _Scene, k: int, tau: float, channel: str) -> dict:
    """Render one camera at its own time (and ego pose); write the JPEG and the class map."""
    dt = CAMERAS[channel][-1]
    ego = _ego_local(scene.speed, tau + dt)
    calib, K = camera_calib(channel)
    width, height = scene.spec.image_size
    K = scaled_intrinsics(K, scene.spec.image_scale)
    rgb, gt = render_camera(scene.world, ego @ calib, K, width, height)
    ts = _timestamp(scene.idx, tau + dt)
    sd = tb.token(scene.spec.seed, scene.name, k, channel)
    filename = f"samples/{channel}/{scene.name}__{channel}__{ts}.jpg"
    Image.fromarray(rgb).save(scene.root / filename, quality=92)
    Image.fromarray(gt).save(scene.root / f"synthetic_gt/{sd}.png")
    return _sd_record(scene, sd, channel, ts, filename, ego, width, height)


def _sd_record(
    scene: _Scene,
    sd: str,
    channel: str,
    ts: int,
    filename: str,
    ego: Pose,
    width: int = 0,
    height: int = 0,
) -> dict:
    """A sample_data record plus its ego_pose (global = scene frame composed with local pose)."""
    g = scene.pose @ ego
    heading = scene.yaw + float(np.arctan2(ego.R[1, 0], ego.R[0, 0]))
    return {
        "token": sd,
        "channel": channel,
        "timestamp": ts,
        "filename": filename,
        "width": width,
        "height": height,
        "pose": {
            "token": sd,
            "timestamp": ts,
            "rotation": tb.quat_yaw(heading),
            "translation": g.t.tolist(),
        },
    }


def _assemble(spec: WorldSpec, scenes: list[dict]) -> dict[str, list[dict]]:
    """All tables from the per-scene records."""
    tables = tb.static_tables()
    tables.update(
        {
            n: []
            for n in (
                "calibrated_sensor",
                "ego_pose",
                "log",
                "scene",
                "sample",
                "sample_data",
                "sample_annotation",
                "instance",
                "lidarseg",
            )
        }
    )
    category_of: dict[str, str] = {}
    for scene in scenes:
        _assemble_scene(spec, scene, tables, category_of)
    tables["instance"] = tb.instances(tables["sample_annotation"], category_of)
    tables["map"] = [
        {
            "token": tb.token("map", spec.seed),
            "log_tokens": [log["token"] for log in tables["log"]],
            "category": "semantic_prior",
            "filename": f"maps/{tb.token('map', spec.seed)}.png",
        }
    ]
    return tables


def _calibrated_sensors(spec: WorldSpec, name: str) -> list[dict]:
    """One calibration record per sensor and scene, as nuScenes has per log."""
    lid = lidar_calib()
    recs = [
        {
            "token": tb.token(spec.seed, name, "calib", "LIDAR_TOP"),
            "sensor_token": tb.token("sensor", "LIDAR_TOP"),
            "translation": lid.t.tolist(),
            "rotation": tb.quat_matrix(lid.R),
            "camera_intrinsic": [],
        }
    ]
    for channel in CAMERAS:
        pose, K = camera_calib(channel)
        recs.append(
            {
                "token": tb.token(spec.seed, name, "calib", channel),
                "sensor_token": tb.token("sensor", channel),
                "translation": pose.t.tolist(),
                "rotation": tb.quat_matrix(pose.R),
                "camera_intrinsic": scaled_intrinsics(K, spec.image_scale).tolist(),
            }
        )
    return recs


def _assemble_scene(spec, scene, tables, category_of) -> None:
    """Append one scene's log, scene, samples, sample_data, poses, lidarseg and annotations."""
    name, frames = scene["name"], scene["frames"]
    log_token = tb.token(spec.seed, name, "log")
    scene_token = tb.token(spec.seed, name, "scene")
    tables["log"].append(
        {
            "token": log_token,
            "logfile": f"n000-synthetic-{name}",
            "vehicle": "n000",
            "date_captured": "2018-08-01",
            "location": "synthetic-city",
        }
    )
    tables["calibrated_sensor"] += _calibrated_sensors(spec, name)
    samples = [
        {
            "token": tb.token(spec.seed, name, f["k"], "sample"),
            "timestamp": f["timestamp"],
            "scene_token": scene_token,
        }
        for f in frames
    ]
    tb.link(samples)
    tables["sample"] += samples
    tables["scene"].append(
        {
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": len(samples),
            "first_sample_token": samples[0]["token"],
            "last_sample_token": samples[-1]["token"],
            "name": name,
            "description": "synthetic street, parked traffic, work zone",
        }
    )
    by_channel: dict[str, list[dict]] = {}
    for sample, frame in zip(samples, frames, strict=True):
        for rec in frame["sample_data"]:
            by_channel.setdefault(rec["channel"], []).append(
                _sample_data(spec, name, sample["token"], rec, tables["ego_pose"])
            )
        tables["lidarseg"].append(
            {
                "token": frame["lidarseg"],
                "sample_data_token": frame["sample_data"][0]["token"],
                "filename": f"lidarseg/{VERSION}/{frame['lidarseg']}_lidarseg.bin",
            }
        )
        tables["sample_annotation"] += _annotations(
            spec, name, sample["token"], frame, scene["objects"], category_of
        )
    for records in by_channel.values():
        tb.link(records)
        tables["sample_data"] += records


def _sample_data(spec, name, sample_token, rec, ego_poses) -> dict:
    """The sample_data record of one sensor reading (registers its ego_pose)."""
    ego_poses.append(rec["pose"])
    is_cam = rec["channel"] != "LIDAR_TOP"
    return {
        "token": rec["token"],
        "sample_token": sample_token,
        "ego_pose_token": rec["token"],
        "calibrated_sensor_token": tb.token(spec.seed, name, "calib", rec["channel"]),
        "timestamp": rec["timestamp"],
        "fileformat": "jpg" if is_cam else "pcd",
        "is_key_frame": True,
        "height": rec["height"],
        "width": rec["width"],
        "filename": rec["filename"],
    }


def _annotations(spec, name, sample_token, frame, objects, category_of) -> list[dict]:
    """3D boxes of the objects the keyframe's sweep hits."""
    anns = []
    for obj, n_pts in sorted(frame["obj_points"].items()):
        box = objects[obj]
        inst = tb.token(spec.seed, name, "instance", obj)
        cls_name = RAW_CLASSES[box["cls"]]
        category_of[inst] = tb.token("category", cls_name)
        anns.append(
            {
                "token": tb.token(spec.seed, name, frame["k"], "ann", obj),
                "sample_token": sample_token,
                "instance_token": inst,
                "visibility_token": "4",
                "attribute_tokens": tb.attribute_for(cls_name),
                "translation": box["centre"],
                "size": box["size"],
                "rotation": tb.quat_yaw(box["yaw"]),
                "num_lidar_pts": n_pts,
                "num_radar_pts": 0,
            }
        )
    return anns


def fork_pool(n_proc: int) -> multiprocessing.pool.Pool:
    """A fork pool (workers inherit imports) whose workers take SIGTERM's default action: the
    pool's exit terminates them with it, and a handler inherited from the parent (the sweep CLI
    turns SIGTERM into KeyboardInterrupt) once left a worker alive and the exit waiting forever
    (CI). Both synthetic worlds (nuScenes and SemanticKITTI layouts) render through it."""
    return multiprocessing.get_context("fork").Pool(n_proc, initializer=_default_sigterm)


def _default_sigterm() -> None:
    """Pool worker initialiser: SIGTERM kills the worker (no inherited handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
