"""The key check: our mIoU equals the nuScenes-devkit evaluator's on the exported predictions.

The world here holds both mini_val scenes (the devkit's evaluator walks every scene of the
split) and four of mini_train, two keyframes each: 8 train scans, 4 val scans.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmcr.cli import main
from cmcr.configs import load_config
from cmcr.data import SegDataset
from cmcr.data.records import load_records
from cmcr.engine.downstream import build_loaders


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from cmcr.synth import generate_world

    out = tmp_path_factory.mktemp("devkit") / "world"
    generate_world(out, preset="smoke", seed=1, scenes_per_split=(4, 2), samples_per_scene=2)
    return out


def _overrides(world: Path, store: Path) -> dict:
    return {
        "data.dataroot": str(world),
        "data.max_samples": 0,  # every scan: the devkit scores the whole split
        "data.voxel_size": 0.3,  # fewer voxels: a fast CPU test, same code path
        "tracking.tracking_uri": f"sqlite:///{store}/mlflow.db",
        "tracking.output_dir": str(store / "runs"),
        "downstream.probe_epochs": 2,
        "downstream.probe_label_fraction": 0.5,
    }


def test_label_fraction_keeps_every_kth_scene(world, tmp_path) -> None:
    over = {**_overrides(world, tmp_path), "downstream.probe_label_fraction": 0.5}
    cfg = load_config("smoke", over)
    every = [r.lidar_token for r in load_records(cfg.data, cfg.data.train_split)]
    assert len(every) == 8  # 4 scenes × 2 keyframes
    kept = [r.lidar_token for r in SegDataset(cfg, cfg.data.train_split, train=True).records]
    assert kept == [every[0], every[1], every[4], every[5]]  # scenes 1 and 3, whole
    # the probe's train loader reads exactly that subset, built from the config as given
    before = repr(cfg)
    train, val = build_loaders(cfg, "probe")
    assert repr(cfg) == before and train.dataset.cfg == cfg.data
    seen = [t for batch in train for t in batch["sample_tokens"]]
    assert sorted(seen) == sorted(kept)
    assert len([t for batch in val for t in batch["sample_tokens"]]) == 4


def _run_cli(argv: list[str], capsys) -> dict:
    code = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    return json.loads(out[-1])


def _sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={v}")]


def test_probe_miou_matches_devkit_evaluator(world, tmp_path, capsys) -> None:
    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    over = _overrides(world, tmp_path)
    export = tmp_path / "export"
    ours = _run_cli(
        ["probe", "--config", "smoke", *_sets(over), "--pretrained", "none",
         "--export-lidarseg", str(export)],
        capsys,
    )  # fmt: skip
    assert ours["miou"] is not None and 0.0 < ours["miou"] <= 1.0

    nusc = NuScenes(version="v1.0-mini", dataroot=str(world), verbose=False)
    validate_submission(nusc, str(export), "mini_val")
    theirs = LidarSegEval(nusc, str(export), eval_set="mini_val").evaluate()
    assert ours["miou"] == pytest.approx(theirs["miou"], abs=1e-4)
    assert ours["fwiou"] == pytest.approx(theirs["freq_weighted_iou"], abs=1e-4)
    for name, value in ours["per_class"].items():
        ref = theirs["iou_per_class"][name]
        assert (value is None and math.isnan(ref)) or value == pytest.approx(ref, abs=1e-4)

    # cmcr evaluate --run re-scores the saved weights to the same numbers and files
    export2 = tmp_path / "export2"
    again = _run_cli(
        ["evaluate", "--run", ours["run_id"], *_sets(over), "--export-lidarseg", str(export2)],
        capsys,
    )
    assert again["miou"] == pytest.approx(ours["miou"], abs=1e-9)
    files = sorted(p.name for p in (export / "lidarseg" / "mini_val").iterdir())
    assert len(files) == 4
    for name in files:
        a = (export / "lidarseg" / "mini_val" / name).read_bytes()
        assert a == (export2 / "lidarseg" / "mini_val" / name).read_bytes()
