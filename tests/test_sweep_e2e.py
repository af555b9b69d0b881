"""End-to-end sweeps with the real ``run_trial`` on the smoke world: a fresh 3-trial study, and
the kill test (SIGKILL mid-trial after its first checkpoint, then ``--resume``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
# small but real: pre-training steps, one checkpoint at least, one probe epoch
FAST = ["--set", "train.max_steps=2", "--set", "downstream.probe_epochs=1"]


def sweep_cmd(tmp_path: Path, world: Path, *argv: str) -> list[str]:
    return [
        sys.executable, RUN, "--preset", "smoke",
        "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"data.dataroot={world}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        *argv,
    ]  # fmt: skip


def env() -> dict[str, str]:
    out = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    out.pop("MLFLOW_RUN_ID", None)
    return out


def client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def child_runs(tmp_path: Path, parent: str) -> list:
    c = client(tmp_path)
    exps = [e.experiment_id for e in c.search_experiments()]  # the study's own experiment
    return c.search_runs(exps, f"tags.mlflow.parentRunId = '{parent}'")


def test_fresh_sweep_three_trials_three_child_runs(tmp_path, smoke_world):
    cmd = sweep_cmd(tmp_path, smoke_world, "--study", "loss_weights", "--n-trials", "3", *FAST,
                    "--no-report")  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # --no-report: the closing lines say how to build it, and nothing was built
    assert "report: none yet (python dashboards/build.py --study loss_weights)" in out.stdout
    assert not (tmp_path / "reports").exists()
    study = optuna.load_study(
        study_name="loss_weights", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = {r.info.run_id: r for r in child_runs(tmp_path, parent)}
    assert len(runs) == 3
    assert client(tmp_path).get_run(parent).data.tags["cmcr.kind"] == "study"
    for t in study.trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial"] == str(t.number) and run.data.tags["cmcr.seed"] == "0"
        # the trial's own params, not a neighbour's, are what the run trained with
        for key, value in t.params.items():
            assert float(run.data.params[key]) == value
        assert run.data.metrics["val/miou"] == t.value
        steps = [m.step for m in client(tmp_path).get_metric_history(run.info.run_id, "train/loss")]
        assert steps == [1, 2]


def _wait_for_checkpoint(runs_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The run folder of the running trial once its first checkpoint is complete (a sweep
    attempt saves into <run>/attempts/t<trial>/checkpoints, cmcr.engine.checkpoint)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the sweep ended before its first checkpoint"
        for f in runs_dir.glob("*/attempts/t*/checkpoints/checkpoint_0/COMPLETE"):
            return f.parents[4]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_mid_trial_then_resume_continues_the_same_run(tmp_path, smoke_world):
    argv = ["--study", "mask_ratio", "--n-trials", "1", "--set", "train.max_steps=6",
            "--set", "train.checkpoint_every=2", "--set", "downstream.probe_epochs=1",
            "--no-report"]  # fmt: skip
    cmd = sweep_cmd(tmp_path, smoke_world, *argv)
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 - the process is killed, not closed
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env())
    run_dir = _wait_for_checkpoint(tmp_path / "runs", proc)
    time.sleep(0.2)  # let the process return into training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="mask_ratio", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    assert run_dir.name == run_id
    assert not (run_dir / "backbone.pt").exists(), "killed too late: pre-training had finished"

    out = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="mask_ratio", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    # issue 14: any start recovers a dead local worker's trial, as lost (no retry spent)
    assert "died" in trials[0].user_attrs["fail_reason"]
    assert trials[0].user_attrs["cmcr.fail_kind"] == "lost"
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs["mlflow_run_id"] == run_id  # the SAME run continued
    runs = child_runs(tmp_path, study.user_attrs["mlflow_parent_run_id"])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["optuna.trial"] == "1"
    resumed_from = int(run.data.tags["cmcr.resumed_from_step"])
    assert resumed_from >= 2
    history = client(tmp_path).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # each step exactly once
    # the resumed process started its pre-training at the checkpoint, never at step 0 (the
    # piped view prints at most a line per trial every 30 s: on a loaded machine its first
    # line may already be a later step, 6/6 once in CI)
    shown = [int(s) for s in re.findall(r"pre-training (\d+)/6", out.stdout)]  # the view's lines
    assert shown and min(shown) >= resumed_from, shown


def test_three_seeds_smoke_study_links_every_seed_run_in_the_report(tmp_path, smoke_world):
    """The real run_trial, --seeds 3: the report links all three seeds' runs to their trial."""
    from cmcr.results.collect import Selection, collect

    cmd = sweep_cmd(
        tmp_path, smoke_world, "--study", "mask_ratio", "--n-trials", "1", "--seeds", "3", *FAST
    )
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    rt = collect(
        Selection(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", study="mask_ratio",
                  storage=storage)
    )  # fmt: skip
    assert sorted(rt.runs["seed"].tolist()) == [0, 1, 2]
    assert rt.runs["trial"].tolist() == [0, 0, 0]
    assert rt.runs["optuna_state"].tolist() == ["COMPLETE"] * 3


def test_add_seeds_grows_a_two_configuration_smoke_study_to_three_seeds(tmp_path, smoke_world):
    """The real run_trial: --add-seeds 2 on a 1-seed, 2-configuration study; every row of the
    table then has seeds 0, 1, 2 under the same parent run, and no finished run trained again."""
    import math

    from cmcr.results.ablation import ablation
    from cmcr.results.collect import Selection, collect

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sel = Selection(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", study="mask_ratio",
                    storage=storage)  # fmt: skip
    base = sweep_cmd(tmp_path, smoke_world, "--study", "mask_ratio", *FAST, "--no-report")
    out = subprocess.run([*base, "--n-trials", "2"], capture_output=True, text=True,
                         cwd=tmp_path, env=env(), timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    before = ablation(collect(sel)).table
    first = {r.info.run_id: r for r in child_runs(tmp_path, _parent(storage))}
    assert before["n_runs"].tolist() == [1, 1] and before["val/miou_std"].isna().all()

    out = subprocess.run([*base, "--add-seeds", "2"], capture_output=True, text=True,
                         cwd=tmp_path, env=env(), timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="mask_ratio", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    runs = child_runs(tmp_path, _parent(storage))
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    for run_id, old in first.items():  # the finished runs: same end, trained once
        now = client(tmp_path).get_run(run_id)
        assert now.info.end_time == old.info.end_time
        steps = [m.step for m in client(tmp_path).get_metric_history(run_id, "train/loss")]
        assert steps == [1, 2]
    after = ablation(collect(sel)).table
    assert after["n_runs"].tolist() == [3, 3] and after["seeds"].tolist() == ["0,1,2"] * 2
    # a 95 % t-interval needs two seeds at least: undefined before, finite now
    assert all(math.isfinite(s) for s in after["val/miou_std"])
    # the row's 95 % interval: none with one seed, a finite one with three
    from cmcr.results.ablation import CI

    assert not before[CI].map(math.isfinite).any()
    assert after[CI].map(math.isfinite).all() and (after[CI] > 0).all()


def _parent(storage: str) -> str:
    return optuna.load_study(study_name="mask_ratio", storage=storage).user_attrs[
        "mlflow_parent_run_id"
    ]
