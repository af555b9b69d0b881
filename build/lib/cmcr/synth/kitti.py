"""The synthetic world in the SemanticKITTI layout (``cmcr synth --format semantickitti``).

Same streets as the nuScenes-format world (``cmcr.synth.world``), seen by a KITTI-like
Velodyne HDL-64E: 64 beams from +2° to −24.8°, 1.73 m above the ground, scans at 10 Hz while
the ego drives. Written::

    sequences/NN/velodyne/NNNNNN.bin   float32 (N, 4): x, y, z (lidar frame: x forward,
                                       y left, z up), remission in [0, 1]
    sequences/NN/labels/NNNNNN.label   uint32 (N,): KITTI raw semantic id | instance << 16
                                       (none for the test sequences 11-21, as in the dataset)
    sequences/NN/times.txt             seconds of each scan
    sequences/NN/calib.txt             P0..P3 (3x4 projections) and Tr (velodyne -> camera 0)
    sequences/NN/poses.txt             camera 0's pose of each scan in the first one's frame
                                       (3x4, row-major; generate_sequential.py's input)
    semantic-kitti.yaml                the dataset's labels, learning_map and learning_map_inv

The nuScenes classes of the world become KITTI raw ids (car 10, bus 13, truck 18, …); geometry
adds what KITTI separates: thin manmade boxes are poles (80), tree trunks trunks (71), lane paint
lane-marking (60, learnt as road), the parking lanes parking (44); traffic cones are
other-object (99), which the learning map ignores. So that every one of the 19 classes occurs:
ridden bicycles / motorcycles are bicyclists / motorcyclists (31, 32), the tops of every other
pole traffic signs (81), and every third car, person, rider, bus, truck and other vehicle
carries a moving id (252..259; the learning map sends them to their static class). Instance
ids (the upper 16 bits) mark things only (classes car .. motorcyclist).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from cmcr.errors import CMCRError
from cmcr.synth.classes import RAW_CLASSES, RAW_INDEX, load_data_module
from cmcr.synth.generate import MARGIN, _ego_local, fork_pool
from cmcr.synth.raycast import lane_paint
from cmcr.synth.sensors import LidarReturns, Pose, lidar_returns
from cmcr.synth.spec import parse_int
from cmcr.synth.target import prepare_target, swap_in
from cmcr.synth.world import ROAD_HALF, World, build_world

_kc = load_data_module("kitti_classes")

N_BEAMS = 64
BEAM_ELEVATIONS = np.deg2rad(np.linspace(2.0, -24.8, N_BEAMS))  # HDL-64E vertical field
LIDAR_HEIGHT = 1.73  # m above the ground (KITTI's Velodyne)
SCAN_DT = 0.1  # s: 10 Hz
THIN = 0.5  # m: a box whose footprint is narrower than this on both axes is a pole / trunk
PARKING_WIDTH = 2.7  # m: the outer lane of each side of the road (world.PARK_Y)

# nuScenes raw class name -> KITTI raw id; anything not listed is 0 (unlabeled)
_NUSC_TO_KITTI = {
    "human.pedestrian.adult": 30,
    "human.pedestrian.child": 30,
    "human.pedestrian.construction_worker": 30,
    "human.pedestrian.police_officer": 30,
    "movable_object.barrier": 51,
    "movable_object.trafficcone": 99,
    "movable_object.debris": 99,
    "movable_object.pushable_pullable": 99,
    "vehicle.bicycle": 11,
    "vehicle.bus.bendy": 13,
    "vehicle.bus.rigid": 13,
    "vehicle.car": 10,
    "vehicle.construction": 20,
    "vehicle.motorcycle": 15,
    "vehicle.trailer": 20,
    "vehicle.truck": 18,
    "flat.driveable_surface": 40,
    "flat.other": 49,
    "flat.sidewalk": 48,
    "flat.terrain": 72,
    "static.manmade": 50,
    "static.other": 99,
    "static.vegetation": 70,
}
NUSC_TO_KITTI = np.array([_NUSC_TO_KITTI.get(n, 0) for n in RAW_CLASSES], dtype=np.uint32)


def _remap(pairs: dict[int, int]) -> np.ndarray:
    """(260,) uint32 raw id -> raw id: ``pairs`` changed, every other id kept."""
    table = np.arange(260, dtype=np.uint32)
    table[list(pairs)] = list(pairs.values())
    return table


# every other bicycle / motorcycle carries a rider: SemanticKITTI labels rider and vehicle
# together as bicyclist (31) / motorcyclist (32)
RIDDEN = _remap({11: 31, 15: 32})
# every third car, rider, person, bus, truck, other vehicle is labelled moving (252..259): the
# world is static, the ids exercise the learning map (moving-car -> car, ...)
MOVING = _remap({10: 252, 31: 253, 30: 254, 32: 255, 16: 256, 13: 257, 18: 258, 20: 259})
SIGN_Z = 2.2  # m above the ground: where every other pole carries a traffic sign (81)
# instance ids only on things: the training classes 1..8 (car .. motorcyclist)
THINGS = np.isin(_kc.learning_table(), np.arange(1, 9))


TEST_FIRST = 11  # sequences 11..21: the test split, scans without labels (the benchmark's)
TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(TEST_FIRST, 22))
# KITTI odometry's calibration of sequences 00-02: camera 0's intrinsics, the stereo baseline
FOCAL, CX, CY, BASELINE = 718.856, 607.1928, 185.2157, 0.5372
# velodyne (x forward, y left, z up) -> camera 0 (x right, y down, z forward), and its offset
VELO_TO_CAM = Pose(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]),
                   np.array([0.0, -0.08, -0.27]))  # fmt: skip


def _test(scans: int) -> dict[str, int]:
    """The 11 test sequences, ``scans`` each."""
    return dict.fromkeys(TEST_SEQUENCES, scans)


def _matrix(pose: Pose) -> np.ndarray:
    """(4, 4) homogeneous matrix of a pose."""
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = pose.R, pose.t
    return out


def _rows(matrix: np.ndarray) -> str:
    """The first 3 rows of a matrix as 12 numbers, KITTI's text format."""
    return " ".join(f"{v:.12e}" for v in np.asarray(matrix)[:3].reshape(-1))


def calib_text() -> str:
    """calib.txt: P0..P3 (camera i's 3x4 projection, cameras BASELINE apart) and Tr."""
    lines = []
    for i, shift in enumerate((0.0, -BASELINE, 0.06, -BASELINE + 0.06)):  # gray, gray, colour
        proj = np.array([[FOCAL, 0, CX, FOCAL * shift], [0, FOCAL, CY, 0], [0, 0, 1, 0]])
        lines.append(f"P{i}: {_rows(proj)}")
    lines.append(f"Tr: {_rows(_matrix(VELO_TO_CAM))}")
    return "\n".join(lines) + "\n"


def poses_text(lidar_poses: list[Pose]) -> str:
    """poses.txt: camera 0's pose of scan k in scan 0's camera frame, Tr · L0⁻¹ Lk · Tr⁻¹, so
    that generate_sequential.py's Tr⁻¹ · pose · Tr gives the velodyne motion L0⁻¹ Lk."""
    tr = _matrix(VELO_TO_CAM)
    first = np.linalg.inv(_matrix(lidar_poses[0]))
    return "".join(_rows(tr @ first @ _matrix(p) @ np.linalg.inv(tr)) + "\n" for p in lidar_poses)


@dataclass(frozen=True)
class KittiSpec:
    """Sizes of a synthetic SemanticKITTI world: scans per sequence, firings per beam."""

    sequences: dict[str, int] = field(default_factory=lambda: {"00": 4, "08": 3, **_test(1)})
    n_azimuth: int = 360
    lidar_range: float = 70.0
    seed: int = 0


KITTI_PRESETS: dict[str, KittiSpec] = {
    "smoke": KittiSpec(),
    # 1 % of the 202 training scans is 3 scans (00/000000, 00/000100, 01/000099)
    "demo": KittiSpec(sequences={"00": 101, "01": 101, "08": 12, **_test(2)}, n_azimuth=720),
}
KITTI_PRESETS["default"] = KITTI_PRESETS["demo"]


def parse_sequences(text: str) -> dict[str, int]:
    """'00:120,01:90,08:3' -> {'00': 120, '01': 90, '08': 3}; CMCRError naming --sequences."""
    out: dict[str, int] = {}
    for part in str(text).split(","):
        seq, _, count = part.strip().partition(":")
        if not (len(seq) == 2 and seq.isdigit()) or seq in out:
            raise CMCRError(f"--sequences: expected 'NN:SCANS,…' with distinct NN, got {text!r}")
        out[seq] = parse_int(f"--sequences ({seq})", count, 1, 5000)
    return out


def kitti_labels(ret: LidarReturns, world: World) -> np.ndarray:
    """(N,) uint32 SemanticKITTI labels (raw semantic id | instance << 16) of a sweep's returns."""
    sem = NUSC_TO_KITTI[ret.cls]  # (N,)
    on_box = ret.kind == 0
    box = np.where(on_box, ret.index, 0)
    extent = world.box_max[box, :2] - world.box_min[box, :2]  # (N, 2) footprint of the hit box
    thin = on_box & (extent < THIN).all(axis=1)
    sem[thin & (ret.cls == RAW_INDEX["static.manmade"])] = 80  # pole
    sem[thin & (ret.cls == RAW_INDEX["static.vegetation"])] = 71  # trunk
    ground = ret.kind == 2
    road = ground & (sem == 40)
    parking = road & (np.abs(ret.world_xyz[:, 1]) > ROAD_HALF - PARKING_WIDTH)
    sem[parking] = 44
    sem[road & ~parking & lane_paint(ret.world_xyz)] = 60  # lane-marking
    sem[thin & (sem == 80) & (box % 2 == 0) & (ret.world_xyz[:, 2] > SIGN_Z)] = 81  # sign
    sem = np.where((ret.obj >= 0) & (ret.obj % 2 == 1), RIDDEN[sem], sem)
    sem = np.where((ret.obj >= 0) & (ret.obj % 3 == 0), MOVING[sem], sem).astype(np.uint32)
    instance = np.where((ret.obj >= 0) & THINGS[sem], ret.obj + 1, 0).astype(np.uint32)
    return (instance << np.uint32(16)) | sem


def _render_sequence(root: Path, spec: KittiSpec, seq: str) -> int:
    """Write one sequence's scans and labels; returns its number of points."""
    n_scans = spec.sequences[seq]
    rng = np.random.default_rng([spec.seed, 7, int(seq)])
    speed = rng.uniform(3.0, 7.0)
    travel = speed * SCAN_DT * (n_scans - 1)
    world = build_world(rng, -MARGIN, travel + MARGIN, travel / 2)
    calib = Pose(np.eye(3), np.array([0.27, 0.0, LIDAR_HEIGHT]))  # lidar -> ego
    folder = root / "sequences" / seq
    labelled = int(seq) < TEST_FIRST
    for sub in ("velodyne", "labels") if labelled else ("velodyne",):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    total, poses = 0, [_ego_local(speed, k * SCAN_DT) @ calib for k in range(n_scans)]
    for k in range(n_scans):  # a loop over scans; each scan is vectorised
        ret = lidar_returns(
            world,
            poses[k],
            BEAM_ELEVATIONS,
            spec.n_azimuth,
            spec.lidar_range,
            np.random.default_rng([spec.seed, 7, int(seq), k]),
        )
        xyz, intensity = ret.points[:, :3], ret.points[:, 3] / np.float32(255.0)
        scan = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
        scan.tofile(folder / "velodyne" / f"{k:06d}.bin")
        if labelled:
            kitti_labels(ret, world).tofile(folder / "labels" / f"{k:06d}.label")
        total += len(scan)
    times = "".join(f"{k * SCAN_DT:.6e}\n" for k in range(n_scans))
    (folder / "times.txt").write_text(times)
    (folder / "calib.txt").write_text(calib_text())
    (folder / "poses.txt").write_text(poses_text(poses))
    return total


def label_yaml() -> str:
    """The dataset's semantic-kitti.yaml (labels, learning maps, the standard split)."""
    data = {
        "name": "kitti",
        "labels": dict(_kc.RAW_LABELS),
        "learning_map": dict(_kc.LEARNING_MAP),
        "learning_map_inv": dict(_kc.LEARNING_MAP_INV),
        "learning_ignore": {i: i == 0 for i in range(_kc.NUM_KITTI + 1)},
        "split": {
            "train": [0, 1, 2, 3, 4, 5, 6, 7, 9, 10],
            "valid": [8],
            "test": list(range(TEST_FIRST, 22)),
        },
    }
    return yaml.safe_dump(data, sort_keys=False)


def resolve_kitti_spec(
    preset: str = "default",
    *,
    seed: int | str = 0,
    sequences: str | None = None,
    n_azimuth: int | None = None,
) -> KittiSpec:
    """A preset with --seed / --sequences (and, from Python, the firings per beam) applied;
    CMCRError naming the argument."""
    if preset not in KITTI_PRESETS:
        raise CMCRError(f"--preset: expected one of {', '.join(KITTI_PRESETS)}, got {preset!r}")
    base = KITTI_PRESETS[preset]
    seqs = parse_sequences(sequences) if sequences is not None else dict(base.sequences)
    azimuth = base.n_azimuth if n_azimuth is None else parse_int("n_azimuth", n_azimuth, 8, 4096)
    return KittiSpec(seqs, azimuth, base.lidar_range, parse_int("--seed", seed, 0, 2**31 - 1))


def generate_kitti_world(
    out: str | Path,
    preset: str = "default",
    seed: int | str = 0,
    *,
    sequences: str | None = None,
    n_azimuth: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict:
    """Write a SemanticKITTI-layout world to ``out`` atomically; returns a summary."""
    spec = resolve_kitti_spec(preset, seed=seed, sequences=sequences, n_azimuth=n_azimuth)
    out = Path(out).absolute()
    tmp = prepare_target(out, overwrite)
    t0 = time.perf_counter()
    try:
        seqs = sorted(spec.sequences)
        n_proc = max(1, min(workers or os.cpu_count() or 1, len(seqs)))
        jobs = [(tmp, spec, s) for s in seqs]
        if n_proc == 1:
            points = [_render_sequence(*job) for job in jobs]
        else:
            with fork_pool(n_proc) as pool:
                points = pool.starmap(_render_sequence, jobs)
        (tmp / "semantic-kitti.yaml").write_text(label_yaml())
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    scans = sum(spec.sequences.values())
    return {
        "path": str(out),
        "sequences": len(seqs),
        "scans": scans,
        "points_per_scan_mean": sum(points) / scans,
        "seconds": round(time.perf_counter() - t0, 2),
    }
