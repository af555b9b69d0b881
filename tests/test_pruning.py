"""Pruning during pre-training (issue 17): the representation probe's ``rep/probe_miou`` every
``sweep.eval_every`` steps is the pruner's intermediate value.

- the probe itself: a real measurement on the smoke world, logged at the pre-training step, and
  a run stopped by the report at a probe step is checkpointed there and ends KILLED;
- a sweep (real pre-training, real ASHA pruner) whose trial has poor intermediate values prunes
  it before its last step, with consistent Optuna and MLflow records;
- a kill after a reported step, then ``--resume``: no step is reported or logged twice;
- ``--workers 2`` on PostgreSQL.
The cost and the benchmark figures are ``python -m cmcr.bench pruning`` (docs/results.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.configs import load_config
from cmcr.names import Attr, Metric, Tag
from cmcr.sweep.options import audit_notice

ROOT = Path(__file__).resolve().parents[1]
WITH_TRIAL_FN = str(ROOT / "tests" / "sweep_with_trial_fn.py")
PG = "postgresql://postgres@127.0.0.1:5432/test"
# smoke: 4 steps, a checkpoint every 2; a probe at every step, rungs at 1/4 and 3/4 of the
# budget (reported as 250 and 750 permille, measured at steps 1 and 3); one probe epoch downstream
FAST = ["--set", "sweep.eval_every=1", "--set", "sweep.first_rung=0.25",
        "--set", "downstream.probe_epochs=1"]  # fmt: skip
RUNGS = {250: 1, 750: 3}  # permille → optimiser step (cmcr.engine.probe.rungs(0.25, 4))


def _study(tmp_path: Path, mims: list[float]) -> Path:
    """A grid over loss.weights.mim (the stand-in probe value is mim / 10), in file order."""
    path = tmp_path / "pruning.yaml"
    path.write_text(
        "name: pruning\nsampler: grid\npruner: asha\n"
        f"params:\n  loss.weights.mim: {{type: grid, choices: {mims}}}\n"
    )
    return path


def _cmd(tmp_path: Path, world: Path, trial_fn: str, *argv: str) -> list[str]:
    return [
        sys.executable, WITH_TRIAL_FN, f"probe_trials:{trial_fn}", "--preset", "smoke",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"data.dataroot={world}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        *FAST, *argv,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _check_pruned(client, trial, tmp_path: Path, max_steps: int = 4) -> int:
    """A pruned trial's records agree: Optuna's last reported rung's step is where its run
    stopped, was checkpointed and is tagged; the run is KILLED with the reason; no downstream
    ran. Returns that step."""
    from cmcr.engine.checkpoint import latest_step

    at = RUNGS[max(trial.intermediate_values)]
    assert at < max_steps  # stopped before its last step
    run = client.get_run(trial.user_attrs[Attr.RUN_ID])
    tags = run.data.tags
    assert run.info.status == "KILLED"
    assert tags[Tag.STATE] == "PRUNED"
    assert tags[Tag.PRUNED_AT_STEP] == str(at) and tags[Tag.PRUNED_PHASE] == "pretrain"
    assert f"pruned at pre-training step {at}" in tags[Tag.STATUS_REASON]
    assert _steps(client, run.info.run_id, Metric.TRAIN_LOSS)[-1] == at
    history = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, Metric.PROBE_MIOU)
    }
    assert _at_rungs(history, trial) == pytest.approx(trial.intermediate_values)
    assert Metric.VAL_MIOU not in run.data.metrics  # the downstream evaluation never started
    assert 0 < run.data.metrics[Metric.PROBE_TIME_SHARE] < 1  # the probe's cost is recorded
    cfg = load_config("smoke", [f"tracking.output_dir={tmp_path / 'runs'}"])
    assert latest_step(cfg, run.info.run_id) == at  # its last checkpoint is kept: that step
    return at


def _at_rungs(history: dict[int, float], trial) -> dict[int, float]:
    """The logged probe values at the rungs the trial reported, keyed by permille."""
    return {r: history[RUNGS[r]] for r in trial.intermediate_values}


def test_probe_measures_the_backbone_and_a_pruned_run_is_checkpointed(
    tmp_path, smoke_world, caplog
):
    """The real probe, in-process: a value per probe step in the run; a report at the rung of
    half the budget (step 2) that prunes stops pre-training there, after a checkpoint of step 2,
    and the run ends KILLED."""
    from cmcr.engine.checkpoint import latest_step
    from cmcr.engine.pipeline import run_trial
    from cmcr.sweep.objective import _pruning_report

    cfg = load_config("smoke", [
        f"data.dataroot={smoke_world}", f"tracking.output_dir={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "sweep.eval_every=1",
        "tracking.system_metrics=false", "train.checkpoint_every=3", "sweep.first_rung=0.5",
    ])  # fmt: skip
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2)
    )
    trial = study.ask()
    with (
        caplog.at_level(logging.INFO, logger="cmcr"),
        pytest.raises(optuna.TrialPruned, match="pruned at pre-training step 2") as caught,
    ):
        run_trial(cfg, report=_pruning_report(trial))
    assert (caught.value.step, caught.value.phase) == (2, "pretrain")
    # its log lines name rep/probe_miou, in % (make demo printed "probe at step 7: 0.0259")
    said = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()]
    assert any(re.fullmatch(r"rep/probe_miou at step 1: \d+\.\d\d % \(representation probe, "
                            r"[\d.]+ s so far\)", m) for m in said), said  # fmt: skip
    assert not [m for m in said if m.startswith("probe")], said
    # said as the representation probe, in %, never as the objective's "val mIoU" (issue 32)
    assert "representation probe" in str(caught.value) and "val mIoU" not in str(caught.value)
    assert re.search(r"representation probe \d+\.\d\d %", str(caught.value)), str(caught.value)
    client = _client(tmp_path)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    values = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "rep/probe_miou")}
    assert sorted(values) == [1, 2] and all(0.0 <= v <= 1.0 for v in values.values())
    assert study.trials[0].intermediate_values == pytest.approx({500: values[2]})  # the rung
    assert _steps(client, run.info.run_id, Metric.TRAIN_LOSS) == [1, 2]
    assert run.info.status == "KILLED" and "pruned" in run.data.tags[Tag.STATUS_REASON]
    assert latest_step(cfg, run.info.run_id) == 2  # checkpointed where it stopped (not at 3)
    assert run.data.metrics[Metric.PROBE_SECONDS] > 0
    assert 0 < run.data.metrics[Metric.PROBE_TIME_SHARE] < 1  # a pruned run records its share
    for key in (Metric.PROBE_RANKME, Metric.PROBE_ALPHA_REQ):  # label-free scores, same steps
        assert _steps(client, run.info.run_id, key) == [1, 2], key
    assert run.data.metrics[Metric.PROBE_RANKME] >= 1  # an effective rank


def test_a_trial_with_poor_intermediate_values_is_pruned_in_pretraining(tmp_path, smoke_world):
    study_file = _study(tmp_path, [2.0, 0.5, 3.0])  # probe values 0.2, 0.05, 0.3
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = _cmd(tmp_path, smoke_world, "by_mim", "--study", str(study_file), "--storage", storage)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = optuna.load_study(study_name="pruning", storage=storage).trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    client = _client(tmp_path)
    assert _check_pruned(client, trials[1], tmp_path) == 1  # 0.05 < 0.2 at the first rung
    assert trials[1].intermediate_values == pytest.approx({250: 0.05})
    for t in (trials[0], trials[2]):  # the others: every rung, then the downstream probe
        assert sorted(t.intermediate_values) == [250, 750]
        run = client.get_run(t.user_attrs[Attr.RUN_ID])
        assert run.info.status == "FINISHED" and Metric.VAL_MIOU in run.data.metrics
        assert 0 < run.data.metrics[Metric.PROBE_TIME_SHARE] < 1
    assert "complete 2 pruned 1" in out.stdout + out.stderr  # the sweep's summary says so
    # pruning in pre-training: one line quoting the last audit of this pruner and signal
    notes = [line for line in out.stdout.splitlines() if "last audited study" in line]
    assert len(notes) == 1 and "pruner asha on the probe's 'raw'" in notes[0]  # the default
    assert notes[0] == audit_notice("asha", "raw") and " % vs the shuffled null " in notes[0]


def _killed_then_resumed(tmp_path: Path, smoke_world: Path, trial_fn: str) -> tuple:
    """A one-trial study whose first attempt kills itself (``trial_fn``), resumed: (killed
    trial, retry, MLflow client, run id)."""
    study_file = _study(tmp_path, [2.0])
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = _cmd(tmp_path, smoke_world, trial_fn, "--study", str(study_file),
               "--storage", storage)  # fmt: skip
    first = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=900
    )
    assert (tmp_path / "runs" / "killed-once").exists(), first.stdout[-3000:]
    if first.returncode != 0:  # the killed process was the sweep itself: resume it
        again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path,
                               env=_env(), timeout=900)  # fmt: skip
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = optuna.load_study(study_name="pruning", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    killed, retry = trials
    assert killed.user_attrs[Attr.FAIL_KIND] == "lost"
    run_id = retry.user_attrs[Attr.RUN_ID]
    assert run_id == killed.user_attrs[Attr.RUN_ID]  # the same run continued
    return killed, retry, _client(tmp_path), run_id


def test_resuming_after_a_kill_measures_and_logs_no_step_twice(tmp_path, smoke_world):
    """Killed right after the probe of step 3 was reported (checkpoint at 2): the retry resumes
    at step 2, re-runs step 3 without measuring or logging it again, then step 4; its trial
    (a new one) holds every probe step once, the logged ones reported from the history."""
    killed, retry, client, run_id = _killed_then_resumed(
        tmp_path, smoke_world, "killed_after_step_3"
    )
    assert sorted(killed.intermediate_values) == [250, 750]  # the rungs at steps 1 and 3
    assert retry.intermediate_values == pytest.approx(killed.intermediate_values)
    assert client.get_run(run_id).data.tags[Tag.RESUMED_FROM_STEP] == "2"
    for key in (Metric.PROBE_MIOU, Metric.PROBE_SECONDS, Metric.TRAIN_LOSS):
        assert _steps(client, run_id, key) == [1, 2, 3, 4], key  # each step exactly once


def test_a_step_logged_but_never_reported_is_reported_on_resume(tmp_path, smoke_world):
    """Killed between the probe's MLflow log of step 3 and its Optuna report: the retry reports
    step 3 from the run's history (before it was skipped for good), at step 3, not at 4."""
    killed, retry, client, run_id = _killed_then_resumed(
        tmp_path, smoke_world, "killed_between_log_and_report"
    )
    assert sorted(killed.intermediate_values) == [250]  # the rung at step 1 only
    assert sorted(retry.intermediate_values) == [250, 750]  # 750: step 3, from the history
    history = {m.step: m.value for m in client.get_metric_history(run_id, Metric.PROBE_MIOU)}
    assert retry.intermediate_values == pytest.approx(_at_rungs(history, retry))
    assert _steps(client, run_id, Metric.PROBE_MIOU) == [1, 2, 3, 4]  # logged once each


def _postgres_up() -> bool:
    import sqlalchemy

    from cmcr.tracking.optuna_store import driver_url

    try:
        engine = sqlalchemy.create_engine(driver_url(PG), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.mark.postgres
def test_pruning_with_two_workers_on_postgresql(tmp_path, smoke_world):
    from cmcr.tracking.optuna_store import driver_url

    if not _postgres_up():
        pytest.fail(f"PostgreSQL is not reachable at {PG} (start it: see the README)")
    name = f"pruning-{uuid.uuid4().hex[:8]}"
    study_file = _study(tmp_path, [2.0, 0.5, 3.0, 0.1])
    cmd = _cmd(tmp_path, smoke_world, "by_mim", "--study", str(study_file), "--storage", PG,
               "--name", name, "--workers", "2")  # fmt: skip
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=900
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        study = optuna.load_study(study_name=name, storage=driver_url(PG))
        trials = study.trials
        assert len(trials) == 4 and {t.state for t in trials} <= {
            TrialState.COMPLETE,
            TrialState.PRUNED,
        }, [(t.number, t.state.name) for t in trials]
        workers = {t.user_attrs[Attr.WORKER] for t in trials}
        assert len(workers) == 2  # both workers ran trials
        client = _client(tmp_path)
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        # mim 0.1 starts after two trials have reported their first probe: it cannot be promoted
        assert any(t.params["loss.weights.mim"] == 0.1 for t in pruned)
        for t in pruned:
            _check_pruned(client, t, tmp_path)
        for t in trials:
            if t.state == TrialState.COMPLETE:
                assert sorted(t.intermediate_values) == [250, 750]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=driver_url(PG))


def test_the_pruners_resource_is_permille_of_pretraining_when_the_probe_is_on():
    from cmcr.sweep.runner import make_pruner

    probe_on = load_config("demo")  # sweep.eval_every: 7
    asha = make_pruner("asha", probe_on)
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    # first rung: sweep.first_rung of the budget in permille (no public getter)
    assert asha._min_resource == round(probe_on.sweep.first_rung * 1000)
    assert isinstance(make_pruner("hyperband", probe_on), optuna.pruners.HyperbandPruner)
    off = load_config("smoke")  # no probe: the downstream epochs are the resource
    assert make_pruner("asha", off)._min_resource == 1
    assert isinstance(make_pruner("none", off), optuna.pruners.NopPruner)


def test_pruner_comes_from_the_flag_else_the_study_else_none_in_pretraining(tmp_path):
    """Default: no pruning in pre-training (the audit found no signal better than chance),
    median on the downstream epochs; the flag, else the study's ``pruner``, override it."""
    from cmcr.errors import StudyError
    from cmcr.sweep.options import SweepOptions
    from cmcr.sweep.runner import plan_sweep

    study = _study(tmp_path, [1.0, 2.0])  # pruner: asha
    assert plan_sweep(SweepOptions(study=str(study), preset="smoke")).pruner == "asha"
    flag = SweepOptions(study=str(study), preset="smoke", pruner="hyperband")
    assert plan_sweep(flag).pruner == "hyperband"
    assert plan_sweep(SweepOptions(study="mask_ratio", preset="smoke")).pruner == "median"
    probe = SweepOptions(study="mask_ratio", preset="smoke", overrides=["sweep.eval_every=1"])
    assert plan_sweep(probe).pruner == "none"
    assert plan_sweep(probe).pruning_notice() is None  # nothing pruned, nothing to say
    assert plan_sweep(SweepOptions(study="mask_ratio", preset="demo")).pruner == "none"
    bad = tmp_path / "bad.yaml"
    bad.write_text(study.read_text().replace("pruner: asha", "pruner: sometimes"))
    with pytest.raises(StudyError, match="'pruner' must be one of"):
        plan_sweep(SweepOptions(study=str(bad), preset="smoke"))


def test_the_notice_quotes_the_audit_file(tmp_path):
    """The notice's figures come from the audit JSON: another file, other figures."""
    import json

    from cmcr.sweep.options import LAST_AUDIT, audit_notice

    shipped = json.loads(LAST_AUDIT.read_text())
    row = shipped["results"]["standardised"]["asha"]
    line = audit_notice("asha", "standardised")
    assert "no better than chance" in line and "'standardised'" in line
    assert f"{100 * row['best_kept']:.2f} %" in line and f"{shipped['trials']} trials" in line
    fake = {"trials": 31, "results": {"rankme": {"median": {
        "best_kept": 0.5, "diff_shuffled": 0.1, "diff_shuffled_ci": [0.05, 0.15],
        "p_deal": 0.01, "step_ratio": 3.0}}}}  # fmt: skip
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(fake))
    line = audit_notice("median", "rankme", path)
    assert "was better than chance" in line and "50.00 %" in line and "40.00 %" in line
    assert "31 trials" in line and "3.00x" in line
    assert "not replayed" in audit_notice("asha", "rankme", path)
    assert "missing" in audit_notice("asha", "rankme", tmp_path / "none.json")
    assert audit_notice("none", "rankme", path) is None


def test_probe_settings_are_checked_before_anything_runs():
    from cmcr.errors import CMCRError

    with pytest.raises(CMCRError, match="sweep.eval_every"):
        load_config("smoke", ["sweep.eval_every=-1"])
    with pytest.raises(CMCRError, match="sweep.probe_features"):
        load_config("smoke", ["sweep.probe_features=cosine"])
