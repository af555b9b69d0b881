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
    """One smoke fine-tuning through the CLI, Cartesian voxels, validation capped at 2 of the 3
    scans, with its export into a stale export (--overwrite) (run once for every test)."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("kitti_ft")
    world = tmp / "world"
    generate_kitti_world(world, preset="smoke", n_azimuth=96, workers=1)
    uri = f"sqlite:///{tmp}/mlflow.db"
    MlflowClient(uri).search_experiments()
    sets = {
        "semantickitti.root": str(world),
        "semantickitti.finetune_label_fraction": 0.5,  # 2 of the 4 training scans
        "downstream.finetune_epochs": 2,
        "semantickitti.coords": "cartesian",
        "data.max_samples": 2,  # caps validation, never the export
        "tracking.tracking_uri": uri,
        "tracking.output_dir": str(tmp / "runs"),
    }
    argv = ["finetune", "--config", "smoke", "--dataset", "semantickitti", "--pretrained", "none"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    export = tmp / "export"
    stale = export / "sequences" / "08" / "predictions"
    stale.mkdir(parents=True)
    np.zeros(5, np.uint32).tofile(stale / "000007.label")  # a previous export's scan
    line = _cli([*argv, "--export", str(export), "--overwrite"])
    run = MlflowClient(uri).get_run(line["run_id"])
    return {"line": line, "run": run, "world": world, "export": export, "tmp": tmp}


def _cli(argv: list[str]) -> dict:
    """``cmcr`` in-process; its last stdout line (the metrics JSON)."""
    import contextlib
    import io

    from cmcr.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


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
    assert tags["cmcr.protocol.schedule.semantickitti"].endswith("→20)")  # 19 classes + ignore
    assert tags["cmcr.protocol.labels.semantickitti"].startswith("50 % of the labels: 1 scan")
    params = finetuned["run"].data.params
    assert params["downstream.dataset"] == "semantickitti"
    assert params["semantickitti.coords"] == "cartesian"
    weights = Path(finetuned["tmp"] / "runs" / finetuned["line"]["run_id"] / "semantickitti")
    assert (weights / "seg_head.pt").is_file()


def _official_scores(world: Path, export: Path, n: int) -> tuple[float, np.ndarray]:
    """(mIoU, IoU of classes 0..19) of the first ``n`` exported scans of 08 by semantic-kitti-api's
    own iouEval (PyPI ``semantic-kitti-api``, its auxiliary/np_ioueval.py), fed the way its
    evaluate_semantics.py feeds it: both files & 0xFFFF through a lookup table of the dataset
    yaml's learning_map, class 0 ignored."""
    from auxiliary.np_ioueval import iouEval  # semantic-kitti-api (test dependency)

    data = yaml.safe_load((world / "semantic-kitti.yaml").read_text())
    remap = data["learning_map"]
    lut = np.zeros(max(remap) + 100, dtype=np.int32)
    lut[list(remap)] = list(remap.values())
    ignore = [c for c, ign in data["learning_ignore"].items() if ign]
    evaluator = iouEval(len(data["learning_map_inv"]), ignore)
    for gt_file in sorted((world / "sequences" / "08" / "labels").glob("*.label"))[:n]:
        pred_file = export / "sequences" / "08" / "predictions" / gt_file.name
        label = lut[np.fromfile(gt_file, dtype=np.uint32) & 0xFFFF]
        pred = lut[np.fromfile(pred_file, dtype=np.uint32) & 0xFFFF]
        evaluator.addBatch(pred, label)
    miou, iou = evaluator.getIoU()
    return float(miou), iou


def test_exported_predictions_score_the_same_miou_by_the_datasets_own_rules(finetuned) -> None:
    world, export = finetuned["world"], finetuned["export"]
    preds = sorted((export / "sequences" / "08" / "predictions").glob("*.label"))
    # every scan of 08 (data.max_samples=2 capped validation only); the stale 000007 cleared
    assert [p.name for p in preds] == ["000000.label", "000001.label", "000002.label"]
    inv = yaml.safe_load((world / "semantic-kitti.yaml").read_text())["learning_map_inv"]
    raw_ids = set(np.concatenate([np.fromfile(p, dtype=np.uint32) for p in preds]).tolist())
    assert raw_ids <= {v for k, v in inv.items() if k != 0}  # raw ids, never "unlabeled"
    miou, iou = _official_scores(world, export, 2)  # the logged values: the first 2 scans
    metrics = finetuned["run"].data.metrics
    assert miou > 0  # something to compare: a trained head predicts some classes right
    assert finetuned["line"]["miou"] == pytest.approx(miou, abs=1e-6)  # printed to 6 digits
    assert abs(metrics["val/semantickitti/miou"] - miou) < 1e-9
    for c, name in enumerate(KITTI_NAMES, start=1):  # classes 1..19 in learning order
        assert abs(metrics[f"val/semantickitti/iou_{name}"] - iou[c]) < 1e-9, name


def test_evaluate_run_rescores_with_the_runs_own_saved_config(finetuned, tmp_path) -> None:
    """`cmcr evaluate --run` of a KITTI run, no --config or --dataset: its config is
    runs/<id>/semantickitti/config.yaml (Cartesian voxels), so the scores are the logged ones,
    and its export (every scan) is byte for byte the fine-tuning's."""
    run_id, runs = finetuned["line"]["run_id"], finetuned["tmp"] / "runs"
    sets = ["--set", f"tracking.output_dir={runs}"]
    line = _cli(["evaluate", "--run", run_id, *sets])
    metrics = finetuned["run"].data.metrics
    assert line["miou"] == pytest.approx(metrics["val/semantickitti/miou"], abs=1e-6)
    for name, v in line["per_class"].items():
        assert v == pytest.approx(metrics[f"val/semantickitti/iou_{name}"], abs=1e-6)
    export = tmp_path / "again"
    _cli(["evaluate", "--run", run_id, *sets, "--export", str(export)])
    ours = sorted((finetuned["export"] / "sequences" / "08" / "predictions").iterdir())
    again = sorted((export / "sequences" / "08" / "predictions").iterdir())
    assert [p.name for p in again] == [p.name for p in ours] and len(ours) == 3
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, again, strict=True))


def _validate_kitti_zip(archive: Path, dataset: Path) -> None:
    """The checks of semantic-kitti-api's validate_submission.py (segmentation task), written
    here: a .zip; directories sequences/, sequences/NN/ and sequences/NN/predictions/ for 11-21;
    for every velodyne scan of the dataset's test sequences a .label of one uint32 per point."""
    import zipfile

    assert archive.name.endswith(".zip")
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        directories = {i.filename for i in infos if i.filename.endswith("/")}
        files = {i.filename: i for i in infos if not i.filename.endswith("/")}
        assert "sequences/" in directories
        for seq in range(11, 22):
            assert {f"sequences/{seq}/", f"sequences/{seq}/predictions/"} <= directories
            velodyne = dataset / "sequences" / f"{seq}" / "velodyne"
            for scan in sorted(velodyne.iterdir()):
                label = f"sequences/{seq}/predictions/{scan.stem}.label"
                assert label in files, label
                assert files[label].file_size / 4 == scan.stat().st_size / 16
                data = np.frombuffer(bundle.read(label), dtype=np.uint32)  # uint32 raw ids
                assert set(np.unique(data).tolist()) <= {
                    10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81
                }  # fmt: skip


def test_test_split_export_passes_the_submission_checks(finetuned, tmp_path) -> None:
    """`cmcr evaluate --split test --export DIR --zip`: sequences 11-21 have no labels, so it
    runs inference only (no metrics) and writes the bundle the benchmark's server takes."""
    run_id, runs = finetuned["line"]["run_id"], finetuned["tmp"] / "runs"
    export = tmp_path / "submission"
    argv = ["evaluate", "--run", run_id, "--set", f"tracking.output_dir={runs}", "--split", "test"]
    from cmcr.cli import main

    assert main(argv) == 2  # no labels and no --export: nothing to do, said in one line
    line = _cli([*argv, "--export", str(export), "--zip"])
    assert line["miou"] is None and line["per_class"] == {}
    _validate_kitti_zip(tmp_path / "submission.zip", finetuned["world"])
    assert sorted(p.name for p in (export / "sequences").iterdir()) == [
        f"{i:02d}" for i in range(11, 22)
    ]
