"""run_trial: pre-training and the downstream probe in ONE run; a rerun skips pre-training."""

from __future__ import annotations

import pytest

from cmcr.configs import load_config
from cmcr.engine.pipeline import run_trial
from cmcr.tracking.store import make_client


@pytest.mark.slow  # ~60 s of CPU: two probes on top of a pre-training
def test_trial_is_one_run_and_resumes_without_pretraining_again(smoke_world, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    over = {
        "data.dataroot": str(smoke_world),
        "tracking.tracking_uri": store,
        "tracking.output_dir": str(tmp_path / "runs"),
        "data.cameras": ["CAM_FRONT"],
        "train.max_steps": 2,
        "downstream.probe_epochs": 1,
    }
    cfg = load_config("smoke", over)
    reports: list[tuple[int, float]] = []
    res = run_trial(cfg, tags={"optuna.trial": "0"}, report=lambda s, v: reports.append((s, v)))
    client = make_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("cmcr").experiment_id])
    assert run.info.run_id == res.run_id and run.info.status == "FINISHED"
    assert run.data.tags["cmcr.kind"] == "trial" and run.data.tags["cmcr.pretrain_done"] == "true"
    assert {"train/loss", "val/miou"} <= set(run.data.metrics)
    assert 0.0 <= res.miou <= 1.0 and reports and reports[-1][1] == res.miou

    weights = tmp_path / "runs" / res.run_id / "backbone.pt"
    stamp = weights.stat().st_mtime_ns
    again = run_trial(cfg, run_id=res.run_id)
    assert again.run_id == res.run_id
    assert weights.stat().st_mtime_ns == stamp  # pre-training was not redone
    steps = sorted(m.step for m in client.get_metric_history(res.run_id, "train/loss"))
    assert steps == [1, 2]
    assert client.get_run(res.run_id).info.status == "FINISHED"
