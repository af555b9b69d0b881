"""SemanticKITTI input and export folders that used to be accepted silently: each is refused
with one line and exit 2 before any MLflow run exists (issue 31)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmcr.cli import main
from cmcr.synth.kitti import generate_kitti_world


@pytest.fixture(scope="module")
def kitti_small(tmp_path_factory) -> Path:
    """A 4 + 3 scan world of 64 beams × 32 firings (fast to write, never modified)."""
    out = tmp_path_factory.mktemp("kitti_submit") / "world"
    generate_kitti_world(out, preset="smoke", n_azimuth=32, workers=1)
    return out


def _finetune(tmp: Path, world: Path, *extra: str) -> list[str]:
    sets = {
        "semantickitti.root": str(world),
        "downstream.finetune_epochs": 1,
        "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.output_dir": str(tmp / "runs"),
    }
    argv = ["finetune", "--config", "smoke", "--dataset", "semantickitti", "--pretrained", "none"]
    return argv + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")] + list(extra)


def _refused(tmp: Path, argv: list[str], capsys, *fragments: str) -> str:
    """Exit 2, one line naming what is wrong, and no MLflow store (so no run) written."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert not (tmp / "mlflow.db").exists(), "an MLflow store (and run) was created"
    return err[0]


def _copy(world: Path, tmp: Path) -> Path:
    out = tmp / "world"
    shutil.copytree(world, out)
    return out


@pytest.mark.parametrize(
    ("rel", "what"),
    [
        ("sequences/00/velodyne/000000.bin", "16-byte"),
        ("sequences/08/labels/000002.label", "4-byte"),
    ],
)
def test_a_file_with_two_trailing_bytes_is_refused(kitti_small, tmp_path, capsys, rel, what):
    world = _copy(kitti_small, tmp_path)
    with (world / rel).open("ab") as fh:  # np.fromfile drops these: the old check read whole
        fh.write(b"\0\0")  # floats / labels and found none missing
    line = _refused(tmp_path, _finetune(tmp_path, world), capsys, rel, what)
    assert "not a non-empty whole number" in line


def test_an_inverse_map_that_does_not_invert_the_learning_map_is_refused(
    kitti_small, tmp_path, capsys
):
    world = _copy(kitti_small, tmp_path)
    path = world / "semantic-kitti.yaml"
    data = yaml.safe_load(path.read_text())
    data["learning_map_inv"][9] = 48  # road exported as sidewalk: the official tool's 0.002
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    line = _refused(tmp_path, _finetune(tmp_path, world), capsys, "semantic-kitti.yaml")
    assert "class 9 -> raw id 48 -> class 11" in line


def _layout(export: Path) -> Path:
    """A file where sequences/08/predictions should be (the old traceback, run FAILED)."""
    (export / "sequences" / "08").mkdir(parents=True)
    (export / "sequences" / "08" / "predictions").write_text("")
    return export


def _stale(export: Path) -> Path:
    """A previous export: its extra scans would mix with the new ones."""
    (export / "sequences" / "08" / "predictions").mkdir(parents=True)
    np.zeros(3, np.uint32).tofile(export / "sequences" / "08" / "predictions" / "999999.label")
    return export


def _file(export: Path) -> Path:
    export.write_text("a file")
    return export


def _under_file(export: Path) -> Path:
    """A bad path: a folder below a file (found only after training before)."""
    export.write_text("a file")
    return export / "x"


@pytest.mark.parametrize(
    ("make", "overwrite", "expected"),
    [
        (_layout, False, "folder is not empty"),
        (_layout, True, "'sequences/08/predictions' is not a submission file"),
        (_stale, False, "pass --overwrite"),
        (_file, False, "exists and is not a folder"),
        (_under_file, False, "Not a directory"),
    ],
    ids=["file-at-predictions", "overwrite-foreign-file", "stale-export", "file", "under-file"],
)
def test_an_export_folder_that_cannot_hold_the_submission_is_refused_before_training(
    kitti_small, tmp_path, capsys, make, overwrite, expected
):
    target = make(tmp_path / "export")
    extra = ["--export", str(target), *(["--overwrite"] if overwrite else [])]
    _refused(tmp_path, _finetune(tmp_path, kitti_small, *extra), capsys, "--export", expected)


def test_a_second_kitti_check_reads_no_velodyne_file(kitti_small, tmp_path, monkeypatch):
    import cmcr.data.kitti as kitti_module
    from cmcr.configs import evaluation_config, load_config

    reads: list[str] = []
    real = kitti_module.read_kitti_points
    monkeypatch.setattr(kitti_module, "read_kitti_points", lambda p: reads.append(p) or real(p))
    sets = {"semantickitti.root": str(kitti_small), "tracking.output_dir": str(tmp_path / "r")}
    cfg = evaluation_config(load_config("smoke", sets), "semantickitti", "finetune")
    n = kitti_module.check_kitti_data(cfg)
    assert len(reads) == n > 0
    reads.clear()
    assert kitti_module.check_kitti_data(cfg) == n and reads == []
