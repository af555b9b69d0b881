"""Malformed data refused before a run exists (issue 28, part D): each case breaks one thing of
a copy of the smoke world that the older checks let through (a JSON table of the wrong shape,
a 2x2 camera matrix, a label outside the label space, a point 1e30 m away, a corrupt JPEG
body, a corrupt image-weights file), and the check says so in one line naming the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_validation_cli import _assert_refused, _harness, _sweep  # noqa: F401 (autouse fixture)

from cmcr.configs import load_config
from cmcr.data import check_downstream_data, check_pretrain_data
from cmcr.data.pretrain import select_records
from cmcr.data.records import SampleRecord
from cmcr.errors import CheckpointError, DataError

TABLES = "v1.0-mini"  # the smoke world's table folder


def _table(name: str, value: object) -> Callable:
    def breaker(world: Path, rec: SampleRecord) -> tuple[str, dict]:
        path = world / TABLES / f"{name}.json"
        path.write_text(json.dumps(value))
        return str(path), {}

    return breaker


def _intrinsic(world: Path, rec: SampleRecord) -> tuple[str, dict]:
    """The first camera of ``rec`` gets a 2x2 camera matrix."""
    tables = world / TABLES
    rows = json.loads((tables / "sample_data.json").read_text())
    cam = next(r for r in rows if str(world / r["filename"]) == rec.cam_paths[0])
    sensors = json.loads((tables / "calibrated_sensor.json").read_text())
    row = next(r for r in sensors if r["token"] == cam["calibrated_sensor_token"])
    row["camera_intrinsic"] = [[1000.0, 0.0], [0.0, 1000.0]]
    (tables / "calibrated_sensor.json").write_text(json.dumps(sensors))
    return str(tables / "calibrated_sensor.json"), {}


def _label_255(world: Path, rec: SampleRecord) -> tuple[str, dict]:
    labels = np.fromfile(rec.lidarseg_path, dtype=np.uint8)
    labels[7] = 255
    labels.tofile(rec.lidarseg_path)
    return rec.lidarseg_path, {}


def _far_point(world: Path, rec: SampleRecord) -> tuple[str, dict]:
    points = np.fromfile(rec.lidar_path, dtype=np.float32).reshape(-1, 5)
    points[3, 0] = 1e30  # finite: the nan check lets it through
    points.tofile(rec.lidar_path)
    return rec.lidar_path, {}


def _corrupt_jpeg(world: Path, rec: SampleRecord) -> tuple[str, dict]:
    """Header and end marker intact, the entropy-coded body replaced by random bytes."""
    path = Path(rec.cam_paths[0])
    data = bytearray(path.read_bytes())
    start = data.find(b"\xff\xda") + 20  # past the start-of-scan header
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 2 - start, dtype=np.uint8)
    data[start:-2] = noise.tobytes()
    path.write_bytes(bytes(data))
    return str(path), {}


def _corrupt_weights(world: Path, rec: SampleRecord) -> tuple[str, dict]:
    path = world / "moco_v2.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # a zip header, then nothing valid
    return str(path), {"model.image_weights": str(path)}


# name: (breaker, the check that must catch it, error class, fragment of the message)
CASES = {
    "scene.json [1]": (_table("scene", [1]), "pretrain", DataError, "record 0 is a JSON number"),
    "sample_data.json {}": (_table("sample_data", {}), "pretrain", DataError, "a JSON object"),
    "2x2 intrinsics": (_intrinsic, "pretrain", DataError, "expected 3x3 finite"),
    "lidarseg 255": (_label_255, "downstream", DataError, "outside the nuScenes-lidarseg"),
    "point at 1e30 m": (_far_point, "pretrain", DataError, "10000 m or more"),
    "corrupt jpeg body": (_corrupt_jpeg, "pretrain", DataError, "not a decodable camera image"),
    "corrupt image weights": (_corrupt_weights, "pretrain", CheckpointError, "is corrupt"),
}


def _break(world: Path, case: str) -> tuple[str, dict]:
    """Break ``case`` in ``world`` at the last sample a run reads; (file at fault, overrides)."""
    cfg = load_config("smoke", {"data.dataroot": str(world)})
    rec = select_records(cfg, cfg.data.train_split)[-1]
    return CASES[case][0](world, rec)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_data_is_one_line_naming_the_file(world: Path, case: str) -> None:
    _, which, error, fragment = CASES[case]
    path, overrides = _break(world, case)
    cfg = load_config("smoke", {"data.dataroot": str(world), **overrides})
    check = check_pretrain_data if which == "pretrain" else check_downstream_data
    with pytest.raises(error) as info:
        check(cfg)
    message = str(info.value)
    assert path in message and fragment in message and "\n" not in message, message


@pytest.mark.parametrize("case", ["scene.json [1]", "lidarseg 255", "corrupt image weights"])
def test_sweep_refuses_malformed_data_before_any_store(tmp_path: Path, world: Path, case: str):
    path, overrides = _break(world, case)
    sets = tuple(f"{k}={v}" for k, v in overrides.items())
    out, _ = _sweep(tmp_path, world, "--study", "mask_ratio", sets=sets)
    _assert_refused(out, tmp_path, path, CASES[case][3])
