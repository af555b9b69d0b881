"""`cmcr finetune --dataset semantickitti` on the synthetic KITTI world: per-dataset metric names,
per-class IoU of the 19 classes, and the submission export scored independently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmcr.synth.kitti import generate_kitti_world

KITTI_NAMES = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
    "vegetation", "trunk", "terrain", "pole", "traffic-sign",
)  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict:
    """One smoke fine-tuning through the CLI, with its export (run once for every test)."""
    from mlflow.tracking import MlflowClient

    from cmcr.cli import main

    tmp = tmp_path_factory.mktemp("kitti_ft")
    world = tmp / "world"
    generate_kitti_world(world, preset="smoke", n_azimuth=96, workers=1)
    uri = f"sqlite:///{tmp}/mlflow.db"
    MlflowClient(uri).search_experiments()
    sets = {
        "semantickitti.root": str(world),
        "semantickitti.finetune_label_fraction": 0.5,  # 2 of the 4 training scans
        "downstream.finetune_epochs": 2,
        "tracking.tracking_uri": uri,
        "tracking.output_dir": str(tmp / "runs"),
    }
    argv = ["finetune", "--config", "smoke", "--dataset", "semantickitti", "--pretrained", "none"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    export = tmp / "export"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--export", str(export)]) == 0
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    run = MlflowClient(uri).get_run(line["run_id"])
    return {"line": line, "run": run, "world": world, "export": export, "tmp": tmp}


def test_finetune_logs_per_class_iou_for_the_19_classes(finetuned) -> None:
    metrics, line = finetuned["run"].data.metrics, finetuned["line"]
    ious = [metrics[f"val/semantickitti/iou_{name}"] for name in KITTI_NAMES]
    assert all(0.0 <= v <= 1.0 for v in ious)
    # SemanticKITTI's rule: the mean runs over all 19 (a class absent from both counts 0)
    assert metrics["val/semantickitti/miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert line["miou"] == pytest.approx(metrics["val/semantickitti/miou"], abs=1e-6)
    assert sorted(line["per_class"]) == sorted(KITTI_NAMES)
    # the nuScenes names stay nuScenes': nothing of this run is logged under them
    assert "val/miou" not in metrics and "train/seg_loss" not in metrics
    assert "train/semantickitti/seg_loss" in metrics
    tags = finetuned["run"].data.tags
    assert tags["cmcr.kind"] == "finetune"
    assert "Linear(" in tags["cmcr.protocol.schedule.semantickitti"]
    assert tags["cmcr.protocol.schedule.semantickitti"].endswith("→19)")  # the 19 classes
    assert tags["cmcr.protocol.labels.semantickitti"].startswith("50 % of the labels: 1 scan")
    params = finetuned["run"].data.params
    assert params["downstream.dataset"] == "semantickitti"
    assert params["semantickitti.coords"] == "cylindrical"
    weights = Path(finetuned["tmp"] / "runs" / finetuned["line"]["run_id"] / "semantickitti")
    assert (weights / "seg_head.pt").is_file()


def _independent_miou(world: Path, export: Path) -> float:
    """mIoU of exported predictions by semantic-kitti-api's rules, written from scratch here:
    both files through the dataset's learning_map, ground-truth 0 ignored, IoU = TP / (TP + FP
    + FN) over the 19 classes, a class absent from both counting 0."""
    lmap = yaml.safe_load((world / "semantic-kitti.yaml").read_text())["learning_map"]
    to_class = np.vectorize(lambda raw: lmap[int(raw) & 0xFFFF])
    conf = np.zeros((20, 20), dtype=np.int64)  # [prediction, truth] as in the API
    files = sorted((world / "sequences" / "08" / "labels").glob("*.label"))
    for gt_file in files:
        pred_file = export / "sequences" / "08" / "predictions" / gt_file.name
        gt = to_class(np.fromfile(gt_file, dtype=np.uint32))
        pred = to_class(np.fromfile(pred_file, dtype=np.uint32))
        assert len(pred) == len(gt)
        np.add.at(conf, (pred, gt), 1)
    conf[:, 0] = 0  # truth "unlabeled": ignored
    tp = np.diag(conf).astype(np.float64)
    fp, fn = conf.sum(axis=1) - tp, conf.sum(axis=0) - tp
    iou = tp / (tp + fp + fn + 1e-15)
    return float(iou[1:].mean())


def test_exported_predictions_score_the_same_miou_by_the_datasets_own_rules(finetuned) -> None:
    world, export = finetuned["world"], finetuned["export"]
    preds = sorted((export / "sequences" / "08" / "predictions").glob("*.label"))
    assert [p.name for p in preds] == ["000000.label", "000001.label", "000002.label"]
    inv = yaml.safe_load((world / "semantic-kitti.yaml").read_text())["learning_map_inv"]
    raw_ids = set(np.concatenate([np.fromfile(p, dtype=np.uint32) for p in preds]).tolist())
    assert raw_ids <= {v for k, v in inv.items() if k != 0}  # raw ids, never "unlabeled"
    expected = _independent_miou(world, export)
    assert finetuned["line"]["miou"] == pytest.approx(expected, abs=1e-6)
    assert finetuned["run"].data.metrics["val/semantickitti/miou"] == pytest.approx(
        expected, abs=1e-12
    )
