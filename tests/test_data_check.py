"""Data checks before any run: each broken world fails with one line naming the file at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmcr.configs import load_config
from cmcr.data import check_downstream_data, check_pretrain_data
from cmcr.data.pretrain import select_records
from cmcr.data.records import SampleRecord
from cmcr.engine.pipeline import run_pretrain
from cmcr.errors import CheckpointError, CMCRError, DataError
from cmcr.tracking.store import make_client


def _cfg(world: Path, **overrides):
    return load_config("smoke", {"data.dataroot": str(world), **overrides})


def _truncate_lidar(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    path = Path(rec.lidar_path)
    path.write_bytes(path.read_bytes()[:-7])
    return rec.lidar_path, "truncated"


def _tail_bytes(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    """Two bytes past the last point: np.fromfile drops them (the old check counted floats)."""
    with Path(rec.lidar_path).open("ab") as fh:
        fh.write(b"\0\0")
    return rec.lidar_path, "truncated"


def _nan_points(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    points = np.fromfile(rec.lidar_path, dtype=np.float32).reshape(-1, 5)
    points[3, 1] = np.nan
    points.tofile(rec.lidar_path)
    return rec.lidar_path, "non-finite"


def _empty_lidar(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    Path(rec.lidar_path).write_bytes(b"")
    return rec.lidar_path, "no points"


def _missing_image(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    Path(rec.cam_paths[-1]).unlink()
    return rec.cam_paths[-1], "not found"


def _truncated_image(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    path = Path(rec.cam_paths[0])
    path.write_bytes(path.read_bytes()[:-100])
    return rec.cam_paths[0], "truncated"


def _wrong_image_size(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    h, w = (int(x) for x in rec.image_hw[0])
    Image.new("RGB", (w // 2, h)).save(rec.cam_paths[0], format="JPEG")
    return rec.cam_paths[0], f"{h}x{w // 2}, expected {h}x{w}"


def _corrupt_lidarseg(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    path = Path(rec.lidarseg_path)
    path.write_bytes(path.read_bytes()[:-1])
    return rec.lidarseg_path, "labels for"


def _missing_lidarseg(rec: SampleRecord, tmp: Path) -> tuple[str, str]:
    path = Path(rec.lidarseg_path)  # <root>/lidarseg/<version>/<token>_lidarseg.bin
    path.unlink()
    # the devkit counts the label files when it opens the tables: the error names the table set
    return str(path.parents[2] / path.parent.name), "label files"


# (break one sample's file, which check, the error class); the pre-training check reads no
# labels and the downstream check no images, so each case runs the check that must catch it
CASES = {
    "truncated lidar": (_truncate_lidar, "pretrain", DataError),
    "truncated lidar (seg)": (_truncate_lidar, "downstream", DataError),
    "lidar with 2 trailing bytes": (_tail_bytes, "downstream", DataError),
    "nan points": (_nan_points, "pretrain", DataError),
    "empty lidar": (_empty_lidar, "downstream", DataError),
    "missing image": (_missing_image, "pretrain", DataError),
    "truncated image": (_truncated_image, "pretrain", DataError),
    "wrong image size": (_wrong_image_size, "pretrain", DataError),
    "corrupt lidarseg": (_corrupt_lidarseg, "downstream", DataError),
    "missing lidarseg": (_missing_lidarseg, "downstream", DataError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_world_fails_naming_the_file(world: Path, tmp_path: Path, case: str) -> None:
    breaker, which, error = CASES[case]
    cfg = _cfg(world, **{"downstream.probe_label_fraction": 1.0})
    rec = select_records(cfg, cfg.data.train_split)[-1]  # the last sample the run reads
    path, fragment = breaker(rec, tmp_path)
    check = check_pretrain_data if which == "pretrain" else check_downstream_data
    with pytest.raises(error) as info:
        check(cfg)
    message = str(info.value)
    assert message.startswith(path) and fragment in message and "\n" not in message


def test_intact_world_passes_every_sample_the_run_reads(world: Path) -> None:
    cfg = _cfg(world)
    n_train = len(select_records(cfg, cfg.data.train_split))
    assert n_train >= 3 and check_pretrain_data(cfg) == n_train
    n_val = len(select_records(cfg, cfg.data.val_split))
    n_labelled = len(select_records(cfg, cfg.data.train_split, cfg.downstream.label_fraction))
    assert check_downstream_data(cfg) == n_labelled + n_val
    # a sample past data.max_samples is not read by the run, so it is not checked either
    Path(select_records(cfg, cfg.data.train_split)[2].lidar_path).write_bytes(b"\0" * 7)
    assert check_pretrain_data(_cfg(world, **{"data.max_samples": 2})) == 2
    with pytest.raises(DataError, match="truncated"):
        check_pretrain_data(cfg)


@pytest.mark.parametrize(
    ("weights", "fragment"), [("", "is empty"), ("/no/such/moco.pth", "'/no/such/moco.pth'")]
)
def test_missing_image_weights_fail_before_the_run(world: Path, weights: str, fragment: str):
    cfg = _cfg(world, **{"model.image_weights": weights})
    with pytest.raises(CheckpointError, match="model.image_weights") as info:
        check_pretrain_data(cfg)
    assert fragment in str(info.value)
    # method random builds no image encoder and reads no data
    assert check_pretrain_data(_cfg(world, **{"method.name": "random"})) == 0


@pytest.mark.parametrize("case", ["nan points", "wrong image size", "missing image"])
def test_bad_data_creates_no_mlflow_run(world: Path, tmp_path: Path, case: str) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(
        world,
        **{"tracking.tracking_uri": store, "tracking.output_dir": str(tmp_path / "runs")},
    )
    rec = select_records(cfg, cfg.data.train_split)[-1]
    path, _ = CASES[case][0](rec, tmp_path)
    with pytest.raises(CMCRError, match=Path(path).name):
        run_pretrain(cfg)
    assert not (tmp_path / "mlflow.db").exists() or not _runs(store)


def _runs(store: str) -> list:
    client = make_client(store)
    exp = client.get_experiment_by_name("cmcr")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_a_second_start_reads_no_lidar_file_and_a_changed_one_is_read_again(
    world, tmp_path, monkeypatch
) -> None:
    import cmcr.data.check as check_module

    reads: list[str] = []
    real = check_module.read_points
    monkeypatch.setattr(check_module, "read_points", lambda p: reads.append(p) or real(p))
    cfg = _cfg(world, **{"tracking.output_dir": str(tmp_path / "runs")})
    n = check_pretrain_data(cfg)
    assert len(reads) == n > 0  # the first start reads every LiDAR file once
    reads.clear()
    assert check_pretrain_data(cfg) == n and reads == []  # the second start reads none
    assert check_downstream_data(cfg) > 0  # the val split's files: read once, then never
    reads.clear()
    check_downstream_data(cfg)
    assert reads == []
    rec = select_records(cfg, cfg.data.train_split)[1]
    path, expected = _nan_points(rec, tmp_path)  # same size, a new mtime
    with pytest.raises(DataError, match=expected):
        check_pretrain_data(cfg)
    assert reads == [path]  # only the changed file
    assert (tmp_path / "runs" / ".data_check" / "lidar.json").is_file()
