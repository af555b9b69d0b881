"""The synthetic nuScenes-format world: the devkit reads it, LiDAR and pixels agree, bad input fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyquaternion import Quaternion

from cmcr.configs.schema import NUSCENES_CAMERAS
from cmcr.data.classes import RAW_CLASSES, RAW_INDEX, RAW_TO_CHALLENGE

CAMS = NUSCENES_CAMERAS


@pytest.fixture(scope="module")
def nusc(smoke_world: Path):
    """The devkit's own NuScenes object on the smoke world."""
    from nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(smoke_world), verbose=False)


def _labels(nusc, lidar_sd: str) -> np.ndarray:
    from nuscenes.utils.data_io import load_bin_file

    return load_bin_file(str(Path(nusc.dataroot) / nusc.get("lidarseg", lidar_sd)["filename"]))


def _all_labels(nusc) -> np.ndarray:
    return np.concatenate([_labels(nusc, s["data"]["LIDAR_TOP"]) for s in nusc.sample])


def test_devkit_loads_tables_splits_and_files(nusc, smoke_world: Path) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud, LidarSegPointCloud
    from nuscenes.utils.splits import create_splits_scenes

    tables = {p.stem for p in (smoke_world / "v1.0-mini").glob("*.json")}
    assert set(nusc.table_names) <= tables and len(tables) == 14  # 13 tables + lidarseg
    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])
    assert names <= set(splits["mini_train"]) | set(splits["mini_val"])
    assert len(nusc.lidarseg) == len(nusc.sample)
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMS}
        lidar = sample["data"]["LIDAR_TOP"]
        path, boxes, _ = nusc.get_sample_data(lidar)
        pc = LidarPointCloud.from_file(path)
        raw = np.fromfile(path, np.float32).reshape(-1, 5)
        assert 28_000 <= pc.nbr_points() <= 36_000
        assert set(np.unique(raw[:, 4])) <= set(range(32))  # ring index
        assert len(_labels(nusc, lidar)) == pc.nbr_points()
        seg = LidarSegPointCloud(
            path, str(Path(nusc.dataroot) / nusc.get("lidarseg", lidar)["filename"])
        )
        assert seg.labels.shape == (pc.nbr_points(),)
        assert boxes, "keyframes carry 3-D annotations of the objects the sweep hits"
        cam_path, _, K = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
        assert Image.open(cam_path).size == (
            nusc.get("sample_data", sample["data"]["CAM_FRONT"])["width"],
            nusc.get("sample_data", sample["data"]["CAM_FRONT"])["height"],
        )
        assert K.shape == (3, 3)
        pts, coloring, _ = nusc.explorer.map_pointcloud_to_image(
            lidar, sample["data"]["CAM_FRONT"], show_lidarseg=True
        )
        assert pts.shape[1] == len(coloring) > 1000


def test_ego_moves_along_road_at_2hz(nusc) -> None:
    for scene in nusc.scene:
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] >= 2
        ts = np.array([s["timestamp"] for s in samples])
        assert np.all(np.diff(ts) == 500_000)
        poses = [
            nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
            for s in samples
        ]
        xyz = np.array([p["translation"] for p in poses])
        step = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
        assert np.all((step > 1.0) & (step < 4.0))  # 2-8 m/s
        cam_pose = nusc.get(
            "ego_pose", nusc.get("sample_data", samples[0]["data"]["CAM_BACK"])["ego_pose_token"]
        )
        assert cam_pose["timestamp"] != poses[0]["timestamp"]  # cameras at their own time


def test_devkit_class_mapper_and_classes(nusc) -> None:
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    mapper = LidarsegClassMapper(nusc)
    fine2coarse = mapper.fine_idx_2_coarse_idx_mapping
    assert [fine2coarse[i] for i in range(32)] == RAW_TO_CHALLENGE.tolist()
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(RAW_CLASSES)
    labels = _all_labels(nusc)
    present = set(RAW_TO_CHALLENGE[np.unique(labels)].tolist()) - {0}
    assert len(present) >= 10, present
    assert RAW_INDEX["vehicle.ego"] not in labels and RAW_INDEX["noise"] not in labels


def test_intensity_and_geometry_differ_by_class(nusc) -> None:
    """What a probe relies on: road dark and flat, kerb-side surfaces brighter, cones reflective."""
    pts, labels = [], []
    for s in nusc.sample:
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        pts.append(np.fromfile(Path(nusc.dataroot) / sd["filename"], np.float32).reshape(-1, 5))
        labels.append(_labels(nusc, sd["token"]))
    pts, labels = np.concatenate(pts), np.concatenate(labels)

    def median(name: str, col: int) -> float:
        return float(np.median(pts[labels == RAW_INDEX[name], col]))

    road, walk = median("flat.driveable_surface", 3), median("flat.sidewalk", 3)
    assert (
        road < walk < median("movable_object.barrier", 3) < median("movable_object.trafficcone", 3)
    )
    # lidar z axis is up: pedestrians stand taller above the road than cars' mid-body
    z_road = median("flat.driveable_surface", 2)
    assert median("flat.sidewalk", 2) - z_road == pytest.approx(0.15, abs=0.05)
    assert median("static.manmade", 2) > median("vehicle.car", 2) > z_road


def test_lidar_points_land_on_same_class_pixels(nusc, smoke_world: Path) -> None:
    """The devkit's lidar -> ego -> global -> ego -> camera chain, depth > 1 m: >= 95 % agree."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points

    agree = total = 0
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        labels = _labels(nusc, lidar["token"])
        for channel in CAMS:
            cam = nusc.get("sample_data", sample["data"][channel])
            pc = LidarPointCloud.from_file(str(smoke_world / lidar["filename"]))
            for record, inverse in (
                (nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]), False),
                (nusc.get("ego_pose", lidar["ego_pose_token"]), False),
                (nusc.get("ego_pose", cam["ego_pose_token"]), True),
                (nusc.get("calibrated_sensor", cam["calibrated_sensor_token"]), True),
            ):
                R = Quaternion(record["rotation"]).rotation_matrix
                if inverse:
                    pc.translate(-np.array(record["translation"]))
                    pc.rotate(R.T)
                else:
                    pc.rotate(R)
                    pc.translate(np.array(record["translation"]))
            K = np.array(
                nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"]
            )
            uv = view_points(pc.points[:3], K, normalize=True)
            w, h = cam["width"], cam["height"]
            ok = (pc.points[2] > 1.0) & (uv[0] >= 0) & (uv[0] < w) & (uv[1] >= 0) & (uv[1] < h)
            gt = np.asarray(Image.open(smoke_world / "synthetic_gt" / f"{cam['token']}.png"))
            assert gt.shape == (h, w)
            agree += int((gt[uv[1, ok].astype(int), uv[0, ok].astype(int)] == labels[ok]).sum())
            total += int(ok.sum())
    assert total > 50_000
    assert agree / total >= 0.95, f"only {agree / total:.3f} of projected points agree"


def test_gt_maps_and_images_cover_every_camera(nusc, smoke_world: Path) -> None:
    seen: set[int] = set()
    for sd in nusc.sample_data:
        if sd["channel"] == "LIDAR_TOP":
            continue
        gt = np.asarray(Image.open(smoke_world / "synthetic_gt" / f"{sd['token']}.png"))
        img = np.asarray(Image.open(smoke_world / sd["filename"]))
        assert img.shape == (*gt.shape, 3) and gt.shape[1] >= 96 and gt.shape[0] >= 64
        assert gt.max() < 32  # a side camera next to a parked bus may see only the bus
        seen |= set(np.unique(gt).tolist())
        if sd["channel"] == "CAM_FRONT":
            assert (gt[0] == 0).any() and gt[-1].min() > 0  # sky above, ground below
    assert len(seen - {0}) >= 12


def _hashes(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
    }


def test_deterministic_per_seed_and_overwrite(smoke_world: Path, tmp_path: Path) -> None:
    """Same seed -> identical files, whatever the worker count (through the CLI, with --overwrite);
    another seed differs."""
    from cmcr.cli import main
    from cmcr.synth import generate_world

    again = tmp_path / "again"
    again.mkdir()
    (again / "junk.txt").write_text("old")
    assert (
        main(
            [
                "synth",
                "--out",
                str(again),
                "--preset",
                "smoke",
                "--seed",
                "0",
                "--overwrite",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert not (again / "junk.txt").exists()
    for pattern in ("samples/LIDAR_TOP/*", "samples/CAM_FRONT/*", "synthetic_gt/*", "v1.0-mini/*"):
        assert _hashes(again, pattern) == _hashes(smoke_world, pattern) != {}
    other = generate_world(tmp_path / "other", preset="smoke", seed=1, samples_per_scene=2)
    a = _hashes(smoke_world, "samples/LIDAR_TOP/*")
    b = _hashes(Path(other["path"]), "samples/LIDAR_TOP/*")
    assert set(b) <= set(a) and all(a[k] != b[k] for k in b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp dirs left


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--samples-per-scene", "abc"], "--samples-per-scene"),
        (["--samples-per-scene", "1"], "--samples-per-scene"),
        (["--image-scale", "0.01"], "--image-scale"),
        (["--image-scale", "nan"], "--image-scale"),
        (["--scenes-per-split", "9,2"], "--scenes-per-split"),
        (["--scenes-per-split", "3"], "--scenes-per-split"),
        (["--seed", "-4"], "--seed"),
        (["--preset", "huge"], "--preset"),
    ],
)
def test_bad_numbers_fail_on_one_line(extra, named, tmp_path: Path, capsys) -> None:
    from cmcr.cli import main

    assert main(["synth", "--out", str(tmp_path / "w"), "--preset", "smoke", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["non_empty", "no_parent", "unwritable", "is_file"])
def test_bad_output_dir_fails_on_one_line(case: str, tmp_path: Path, capsys) -> None:
    from cmcr.cli import main

    out = {
        "non_empty": tmp_path / "full",
        "no_parent": tmp_path / "missing" / "w",
        "unwritable": Path("/proc/cmcr-synth-test"),
        "is_file": tmp_path / "file",
    }[case]
    if case == "non_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "is_file":
        out.write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert main(["synth", "--out", str(out), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--out" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_box_caster_matches_slow_reference() -> None:
    """The vectorised slab test against a per-ray, per-box loop on random rays."""
    from cmcr.synth.raycast import _boxes

    rng = np.random.default_rng(0)
    lo = rng.uniform(-10, 10, (12, 3)).astype(np.float32)
    hi = lo + rng.uniform(0.2, 4, (12, 3)).astype(np.float32)
    o = np.array([0.0, 0.0, 20.0], np.float32)
    d = rng.normal(size=(300, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t, idx = _boxes(o, d, lo, hi)
    for r in range(len(d)):  # slow, obvious reference: march each box's slabs separately
        best = np.inf
        for b in range(len(lo)):
            with np.errstate(divide="ignore"):
                t1, t2 = (lo[b] - o) / d[r], (hi[b] - o) / d[r]
            near, far = np.minimum(t1, t2).max(), np.maximum(t1, t2).min()
            if near <= far and near > 1e-3:
                best = min(best, near)
        assert t[r] == pytest.approx(best, rel=1e-4) if np.isfinite(best) else np.isinf(t[r])


@pytest.mark.slow
def test_default_world_has_ten_challenge_classes(tmp_path: Path) -> None:
    from nuscenes import NuScenes

    from cmcr.synth import generate_world

    summary = generate_world(tmp_path / "default", preset="default", seed=0)
    nusc = NuScenes("v1.0-mini", summary["path"], verbose=False)
    assert len(nusc.scene) == 10
    present = set(RAW_TO_CHALLENGE[np.unique(_all_labels(nusc))].tolist()) - {0}
    assert len(present) >= 10, present
    assert summary["points_per_sweep_mean"] >= 30_000


def test_synth_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, cmcr.synth, cmcr.synth.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# run in a fresh interpreter: forking the suite's worker, which holds other tests' threads
# (MLflow, SQLAlchemy), once left a pool child waiting forever on a lock one of them held
# (a 250 s hang, 2026-12-06); a fresh process has no such threads, as `cmcr synth` has none
_FORK_POOL_CHECK = """
import signal
from cmcr.synth.generate import fork_pool

def sigterm_is_default(_):
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

def raising(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, raising)
with fork_pool(2) as pool:
    assert pool.map(sigterm_is_default, range(4)) == [True] * 4
"""


def test_fork_pool_workers_take_sigterms_default_action() -> None:
    """Both synthetic worlds render in ``fork_pool``: its workers never keep a SIGTERM handler
    inherited from the parent (the pool's exit terminates them with SIGTERM)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", _FORK_POOL_CHECK], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
