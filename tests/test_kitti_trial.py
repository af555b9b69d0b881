"""A trial that evaluates nuScenes and SemanticKITTI, the objective naming one; the results
grouped by downstream evaluation (nuScenes LP, nuScenes 1 % FT, SemanticKITTI 1 % FT)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmcr.configs import load_config, objective_evaluation
from cmcr.errors import ConfigError
from cmcr.results.collect import RunTable, evaluations
from cmcr.results.tables import evaluations_table


def test_trial_scores_the_named_evaluation_and_logs_the_others(smoke_world, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from cmcr.engine.pipeline import run_trial
    from cmcr.synth.kitti import generate_kitti_world

    kitti = tmp_path / "kitti"
    generate_kitti_world(kitti, preset="smoke", n_azimuth=64, workers=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()
    cfg = load_config(
        "smoke",
        {
            "data.dataroot": str(smoke_world),
            "data.voxel_size": 0.3,
            "data.max_samples": 2,
            "semantickitti.root": str(kitti),
            "method.name": "random",  # no pre-training: the downstream part is under test
            "downstream.evaluations": ["nuscenes/probe", "semantickitti/finetune"],
            "downstream.objective": "semantickitti/finetune",
            "downstream.probe_epochs": 1,
            "downstream.finetune_epochs": 1,
            "tracking.tracking_uri": uri,
            "tracking.output_dir": str(tmp_path / "runs"),
        },
    )
    assert objective_evaluation(cfg) == ("semantickitti", "finetune")
    reported = []
    res = run_trial(cfg, report=lambda e, v: reported.append(v))
    metrics = MlflowClient(uri).get_run(res.run_id).data.metrics
    assert res.miou == pytest.approx(metrics["val/semantickitti/miou"], abs=1e-12)
    assert reported == [pytest.approx(res.miou)]  # only the objective reports to the pruner
    assert 0.0 <= metrics["val/miou"] <= 1.0  # nuScenes LP logged too, under its own names
    assert len([k for k in metrics if k.startswith("val/iou_")]) == 16
    assert len([k for k in metrics if k.startswith("val/semantickitti/iou_")]) == 19


def test_evaluations_name_each_dataset_once_and_the_objective_among_them() -> None:
    with pytest.raises(ConfigError, match="downstream.evaluations"):
        load_config("smoke", {"downstream.evaluations": ["nuscenes/probe", "nuscenes/finetune"]})
    with pytest.raises(ConfigError, match="downstream.objective"):
        load_config(
            "smoke",
            {
                "downstream.evaluations": ["nuscenes/probe"],
                "downstream.objective": "semantickitti/finetune",
            },
        )
    with pytest.raises(ConfigError, match="downstream.evaluations"):
        load_config("smoke", {"downstream.evaluations": ["kitti/finetune"]})


def _runs() -> pd.DataFrame:
    """Trials of two studies: LP + KITTI FT in one, nuScenes FT in the other (3 seeds)."""
    rng = np.random.default_rng(0)
    rows = []
    for variant in ("random", "ppkt", "cmcr"):
        for seed in range(3):
            rows.append(
                {
                    "run_id": f"a-{variant}-{seed}",
                    "variant": variant,
                    "seed": seed,
                    "kind": "trial",
                    "state": "COMPLETE",
                    "downstream.evaluations": ("nuscenes/probe", "semantickitti/finetune"),
                    "downstream.mode": "probe",
                    "downstream.probe_label_fraction": 1.0,
                    "semantickitti.finetune_label_fraction": 0.01,
                    "val/miou": rng.uniform(),
                    "val/semantickitti/miou": rng.uniform(),
                }
            )
            rows.append(
                {
                    "run_id": f"b-{variant}-{seed}",
                    "variant": variant,
                    "seed": seed,
                    "kind": "trial",
                    "state": "COMPLETE",
                    "downstream.evaluations": (),
                    "downstream.mode": "finetune",
                    "downstream.finetune_label_fraction": 0.01,
                    "val/miou": rng.uniform(),
                }
            )
    return pd.DataFrame(rows)  # fmt: skip


def test_results_group_by_dataset_side_by_side() -> None:
    df = _runs()
    rt = RunTable(df, [c for c in df if "/" not in c], ["val/miou"], "0", "sqlite://")
    long = evaluations(rt)
    assert len(long) == 27 and set(long["evaluation"]) == {
        "nuScenes LP (100 %)",
        "SemanticKITTI FT (1 %)",
        "nuScenes FT (1 %)",
    }
    table = evaluations_table(rt)
    assert list(table.index) == ["random init", "PPKT", "CMCR"]
    assert list(table.columns) == ["nuScenes LP (100 %)", "nuScenes FT (1 %)",
                                   "SemanticKITTI FT (1 %)"]  # fmt: skip
    kitti = df[df["run_id"].str.startswith("a-ppkt")]["val/semantickitti/miou"]
    expected = f"{100 * kitti.mean():.2f} ± {100 * kitti.std():.2f} (3)"
    assert table.loc["PPKT", "SemanticKITTI FT (1 %)"] == expected
    ft = df[df["run_id"].str.startswith("b-cmcr")]["val/miou"]
    assert table.loc["CMCR", "nuScenes FT (1 %)"].startswith(f"{100 * ft.mean():.2f} ± ")


def test_benchmark_kitti_study_scores_nuscenes_and_logs_semantickitti() -> None:
    from cmcr.sweep.space import check_space, load_study

    spec = load_study("benchmark_kitti")
    base = load_config(spec.preset)
    check_space(spec, base)  # every variant's config is valid with the fixed keys
    assert spec.fixed["downstream.evaluations"] == ["nuscenes/probe", "semantickitti/finetune"]
    assert [c["variant"] for c in spec.grid_cells()] == ["random", "ppkt", "cmcr"]
    cfg = load_config(spec.preset, {**spec.fixed, **spec.overrides_for({"variant": "cmcr"})})
    assert objective_evaluation(cfg) == ("nuscenes", "probe")
