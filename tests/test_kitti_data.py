"""SemanticKITTI on the synthetic KITTI world: layout, labels aligned, 1 % split, voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cmcr.configs import evaluation_config, load_config
from cmcr.data.kitti import KittiSegDataset, check_kitti_data, cylindrical, voxel_grid
from cmcr.errors import CMCRError, DataError
from cmcr.synth.kitti import generate_kitti_world

SEQUENCES = {"00": 120, "01": 90, "08": 3}
LIDAR_HEIGHT = 1.73  # the synthetic HDL-64E's height above the road


@pytest.fixture(scope="module")
def kitti_world(tmp_path_factory) -> Path:
    """213 small scans (64 beams × 48 firings): enough for every 100th scan, fast to write."""
    out = tmp_path_factory.mktemp("kitti") / "world"
    spec = ",".join(f"{k}:{v}" for k, v in SEQUENCES.items())
    generate_kitti_world(out, preset="smoke", sequences=spec, n_azimuth=48, workers=1)
    return out


def _cfg(root: Path, **over):
    base = {
        "semantickitti.root": str(root),
        "semantickitti.train_sequences": ["00", "01"],
        "data.max_samples": 0,
        "downstream.dataset": "semantickitti",
        "downstream.mode": "finetune",
    }
    cfg = load_config("smoke", {**base, **over})
    return evaluation_config(cfg, "semantickitti", cfg.downstream.mode)


def _learning_map(root: Path) -> dict[int, int]:
    """The dataset's own learning map, read here from its yaml (not through cmcr)."""
    return yaml.safe_load((root / "semantic-kitti.yaml").read_text())["learning_map"]


def test_layout_is_the_standard_one(kitti_world) -> None:
    for seq, n in SEQUENCES.items():
        velo = sorted((kitti_world / "sequences" / seq / "velodyne").glob("*.bin"))
        labels = sorted((kitti_world / "sequences" / seq / "labels").glob("*.label"))
        assert [p.stem for p in velo] == [f"{k:06d}" for k in range(n)]
        assert [p.stem for p in labels] == [p.stem for p in velo]
    raw = np.fromfile(kitti_world / "sequences/00/labels/000000.label", dtype=np.uint32)
    # KITTI raw ids (not nuScenes classes) in the lower 16 bits, instances in the upper 16
    assert set(np.unique(raw & 0xFFFF)) <= set(_learning_map(kitti_world))
    assert {10, 40}.issubset(set(np.unique(raw & 0xFFFF)))
    assert (raw >> 16).max() > 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_dataset_loads_every_scan_with_labels_aligned(kitti_world, split) -> None:
    cfg = _cfg(kitti_world)
    ds = KittiSegDataset(cfg, split, train=False)
    seqs = ["00", "01"] if split == "train" else ["08"]
    assert len(ds) == sum(SEQUENCES[s] for s in seqs)
    lmap = _learning_map(kitti_world)
    road, car = 9, 1  # training classes of raw 40 / 60 and 10 / 252
    for i in range(len(ds)):
        sample, rec = ds[i], ds.records[i]
        assert sample["sample_token"] == f"{rec.sequence}/{rec.frame}"
        pts = np.fromfile(rec.velodyne_path, dtype=np.float32).reshape(-1, 4)
        raw = np.fromfile(rec.label_path, dtype=np.uint32)
        expected = np.array([lmap[int(r) & 0xFFFF] for r in raw])
        np.testing.assert_array_equal(sample["labels"], expected)
        np.testing.assert_array_equal(sample["points"], pts[:, :3])  # every point, file order
        assert sample["inverse"].shape == (len(pts),)
        # aligned with the geometry, not only in length: road lies on the ground plane
        z = pts[:, 2]
        assert np.all(np.abs(z[expected == road] + LIDAR_HEIGHT) < 0.1)
        if (expected == car).any():
            assert z[expected == car].max() > -LIDAR_HEIGHT + 0.5


def test_one_percent_split_holds_every_100th_scan(kitti_world) -> None:
    cfg = _cfg(kitti_world)
    assert cfg.downstream.label_fraction == 0.01 and cfg.downstream.label_fraction_unit == "scan"
    ds = KittiSegDataset(cfg, "train", train=True)
    # 00 has scans 0..119 (train indices 0..119), 01 has 0..89 (train indices 120..209)
    assert [r.token for r in ds.records] == ["00/000000", "00/000100", "01/000080"]
    ten = KittiSegDataset(_cfg(kitti_world, **{"semantickitti.finetune_label_fraction": 0.1}),
                          "train", train=True)  # fmt: skip
    assert len(ten) == 21 and ten.records[12].token == "01/000000"


def test_cylindrical_voxels_are_a_config_choice_next_to_cartesian(kitti_world) -> None:
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-30, 30, (500, 3)).astype(np.float32)
    cyl = _cfg(kitti_world)
    assert cyl.semantickitti.coords == "cylindrical"  # the release's default
    grid, size = voxel_grid(cyl, xyz)
    for p, g in zip(xyz[:20], grid[:20], strict=True):  # the slow, obvious version
        rho, phi = np.hypot(p[0], p[1]), np.degrees(np.arctan2(p[1], p[0]))
        np.testing.assert_allclose(g, [rho, phi, p[2]], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(size, [0.1, 1.0, 0.1])
    np.testing.assert_allclose(cylindrical(xyz)[:, 0], np.linalg.norm(xyz[:, :2], axis=1), 1e-5)
    cart = _cfg(kitti_world, **{"semantickitti.coords": "cartesian"})
    grid, size = voxel_grid(cart, xyz)
    assert grid is xyz and np.allclose(size, cart.data.voxel_size)
    # one dataset sample: points in one voxel share their cylindrical cell
    sample = KittiSegDataset(cyl, "val", train=False)[0]
    cells = np.floor(cylindrical(sample["points"]) / np.float32([0.1, 1.0, 0.1])).astype(int)
    cells -= cells.min(axis=0)
    np.testing.assert_array_equal(cells, sample["coords"][sample["inverse"]])


def test_bad_input_fails_with_the_key_or_file(kitti_world, tmp_path) -> None:
    with pytest.raises(DataError, match="semantickitti.root"):
        KittiSegDataset(_cfg(tmp_path / "nowhere"), "val", train=False)
    with pytest.raises(CMCRError, match="semantickitti.coords"):
        _cfg(kitti_world, **{"semantickitti.coords": "polar"})
    broken = tmp_path / "broken"
    (broken / "sequences/08/velodyne").mkdir(parents=True)
    (broken / "sequences/08/labels").mkdir(parents=True)
    np.zeros((10, 4), np.float32).tofile(broken / "sequences/08/velodyne/000000.bin")
    np.zeros(9, np.uint32).tofile(broken / "sequences/08/labels/000000.label")
    for seq in ("00", "01"):
        (broken / f"sequences/{seq}/velodyne").mkdir(parents=True)
        np.zeros((10, 4), np.float32).tofile(broken / f"sequences/{seq}/velodyne/000000.bin")
        (broken / f"sequences/{seq}/labels").mkdir(parents=True)
        np.zeros(10, np.uint32).tofile(broken / f"sequences/{seq}/labels/000000.label")
    with pytest.raises(DataError, match=r"08/labels/000000.label: 9 labels for 10 points"):
        check_kitti_data(_cfg(broken))


def test_synth_cli_writes_the_kitti_layout(tmp_path, capsys) -> None:
    from cmcr.cli import main

    out = tmp_path / "w"
    code = main(["synth", "--format", "semantickitti", "--preset", "smoke", "--out", str(out)])
    # 00 (4 scans), 08 (3) and the test sequences 11-21 (1 scan each, no labels/)
    assert code == 0 and "13 sequences, 18 scans" in capsys.readouterr().out
    assert (out / "semantic-kitti.yaml").is_file()
    for seq in [f"{i:02d}" for i in range(11, 22)]:
        folder = out / "sequences" / seq
        assert [p.name for p in (folder / "velodyne").iterdir()] == ["000000.bin"]
        assert not (folder / "labels").exists()
        assert {"calib.txt", "poses.txt", "times.txt"} <= {p.name for p in folder.iterdir()}
    assert main(["synth", "--format", "semantickitti", "--out", str(tmp_path / "x"),
                 "--sequences", "8:3"]) == 2  # fmt: skip


def test_every_class_occurs_moving_ids_map_to_their_class_instances_only_on_things(
    kitti_world,
) -> None:
    lmap = _learning_map(kitti_world)  # the dataset's own yaml
    raw = np.concatenate(
        [np.fromfile(p, np.uint32) for p in sorted(kitti_world.glob("sequences/*/labels/*.label"))]
    )
    sem, inst = raw & 0xFFFF, raw >> 16
    classes = np.array([lmap[int(r)] for r in np.unique(sem)])
    assert set(range(1, 20)) <= set(classes.tolist())  # all 19, traffic-sign and riders too
    assert {31, 32, 81} <= set(np.unique(sem).tolist())
    moving = {int(r) for r in np.unique(sem) if r >= 252}
    assert {252, 254} <= moving  # moving-car, moving-person: through the map to car, person
    assert all(lmap[r] == lmap[{252: 10, 253: 31, 254: 30, 255: 32, 256: 16, 257: 13, 258: 18,
                                259: 20}[r]] for r in moving)  # fmt: skip
    things = np.isin(np.array([lmap[int(r)] for r in sem]), np.arange(1, 9))  # car..motorcyclist
    assert inst[~things].max() == 0 and (inst[things] > 0).all()


def _parse_matrix_lines(lines: list[str]) -> list[np.ndarray]:
    """4x4 matrices of KITTI's 12-number lines, as generate_sequential.py reads them."""
    out = []
    for line in lines:
        values = [float(v) for v in line.strip().split()]
        pose = np.zeros((4, 4))
        pose[0, :4], pose[1, :4], pose[2, :4], pose[3, 3] = values[:4], values[4:8], values[8:12], 1
        out.append(pose)
    return out


def test_calib_and_poses_move_one_scans_static_points_onto_anothers(tmp_path) -> None:
    from scipy.spatial import cKDTree

    # 360 firings per beam: dense enough for nearest neighbours to find the same surfaces
    generate_kitti_world(tmp_path / "w", preset="smoke", sequences="00:11", n_azimuth=360)
    folder = tmp_path / "w" / "sequences" / "00"
    calib = {}
    for line in (folder / "calib.txt").read_text().splitlines():
        key, content = line.strip().split(":")
        calib[key] = _parse_matrix_lines([content])[0]
    assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"}
    tr = calib["Tr"]
    poses = _parse_matrix_lines((folder / "poses.txt").read_text().splitlines())
    assert len(poses) == 11
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)

    def static(k: int) -> np.ndarray:  # building, trunk, pole points of scan k (velodyne frame)
        pts = np.fromfile(folder / f"velodyne/{k:06d}.bin", np.float32).reshape(-1, 4)
        sem = np.fromfile(folder / f"labels/{k:06d}.label", np.uint32) & 0xFFFF
        return pts[np.isin(sem, [50, 71, 80]), :3].astype(np.float64)

    first, later = static(0), static(10)
    motion = np.linalg.inv(tr) @ poses[10] @ tr  # generate_sequential.py's velodyne motion
    moved = later @ motion[:3, :3].T + motion[:3, 3]
    tree = cKDTree(first)
    assert np.linalg.norm(motion[:3, 3]) > 2.0  # the ego drove 3..7 m in the second
    # moved: within the firings' spacing (~0.1 m); unmoved: the second's drive apart
    assert np.median(tree.query(moved)[0]) < 0.2 < 2 * 0.2 < np.median(tree.query(later)[0])
