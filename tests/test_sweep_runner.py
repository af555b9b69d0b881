"""Sweep machinery with the objective's training injected (fast): trials, runs, retries, resume.

The end-to-end versions with the real ``run_trial`` are in test_sweep_e2e.py; here the
trial function is a recorder, so these tests check the sweep's own bookkeeping: one parent run
per study, one child run per (trial, seed), retries that continue the same run, grid cells
never skipped or doubled, no state leaking between trials, --resume and heartbeat recovery.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.engine.downstream import DownstreamResult
from cmcr.engine.train import TrainingDiverged
from cmcr.names import Attr
from cmcr.sweep import cli, options

FAIL_REASON_ATTR, WORKER_ATTR = Attr.FAIL_REASON, Attr.WORKER
# a stand-in trial function reads no data and makes no real runs: no data check, estimate, report
STAND_IN = cli.Extras(check_data=False, estimate=False, build_report=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow sqlite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


class SimulatedKill(BaseException):
    """Stands for SIGKILL: escapes every handler, leaving the trial RUNNING."""


class Recorder:
    """A stand-in for run_trial that records what each trial saw."""

    def __init__(self, fail_on: dict[int, BaseException] | None = None, value=None) -> None:
        self.calls: list[dict] = []
        self.fail_on = dict(fail_on or {})  # call index -> exception raised once
        self.value = value or (lambda cfg, n: cfg.loss.weights.mim / 10)

    def __call__(self, cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):
        import mlflow

        n = len(self.calls)
        self.calls.append(
            {
                "run_id": run_id,
                "parent": parent_run_id,
                "tags": dict(tags or {}),
                "seed": cfg.train.seed,
                "cfg": cfg,
                "env_run_id": os.environ.get("MLFLOW_RUN_ID"),
                "active_run": mlflow.active_run(),
                "leak_var": os.environ.get("CMCR_TEST_LEAK"),
            }
        )
        # leave state behind, as a careless trainer would
        os.environ["MLFLOW_RUN_ID"] = run_id
        os.environ["CMCR_TEST_LEAK"] = str(n)
        if n in self.fail_on:
            raise self.fail_on.pop(n)
        value = self.value(cfg, n)
        for epoch in range(2):
            if report is not None:
                report(epoch, value)
        return DownstreamResult(run_id, value, value, {})


def run_sweep(tmp_path: Path, store: str, *argv: str, trial_fn=None) -> int:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    args = parser.parse_args(
        [
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
            "--tracking-uri", store,
            "--preset", "smoke",
            "--set", f"tracking.output_dir={tmp_path / 'runs'}",
            *argv,
        ]
    )  # fmt: skip
    return cli.run(args, trial_fn=trial_fn, extras=cli.Extras() if trial_fn is None else STAND_IN)


def load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def children(store: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exps = [e.experiment_id for e in client.search_experiments()]  # the study's own experiment
    return client.search_runs(exps, f"tags.mlflow.parentRunId = '{parent}'")


def test_sweep_links_trials_and_runs_both_ways(tmp_path, store):
    rec = Recorder()
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "loss_weights",
            "--n-trials",
            "3",
            "--name",
            "links",
            trial_fn=rec,
        )
        == 0
    )
    study = load(tmp_path, "links")
    trials = study.get_trials()
    # optuna-dashboard names the objective from the start (it showed 'Objective 0')
    assert study.metric_names == ["val/miou (probe)"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = {r.info.run_id: r for r in children(store, parent)}
    assert len(runs) == 3
    for t in trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.study"] == "links"
        assert run.data.tags["optuna.trial"] == str(t.number)
        assert run.data.tags["cmcr.seed"] == "0" and run.data.tags["cmcr.kind"] == "trial"
        assert run.data.tags["optuna.state"] == "COMPLETE"
        # the trial's params reached the config handed to the trainer
        call = next(c for c in rec.calls if c["run_id"] == run.info.run_id)
        assert call["cfg"].loss.weights.mim == pytest.approx(t.params["loss.weights.mim"])
        assert call["parent"] == parent
        assert t.value == pytest.approx(t.params["loss.weights.mim"] / 10)
    from mlflow.tracking import MlflowClient

    prun = MlflowClient(store).get_run(parent)
    assert prun.data.tags["cmcr.kind"] == "study" and prun.data.tags["optuna.study"] == "links"
    # only what holds for the whole study: no seed; the variant, which loss_weights never searches
    assert "cmcr.seed" not in prun.data.tags and prun.data.tags["cmcr.variant"] == "cmcr-gemim"
    assert prun.info.status == "FINISHED"
    assert prun.data.tags["optuna.best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]

    # a re-run finds the same study and parent; --n-trials 4 queues exactly one more trial
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "loss_weights",
            "--n-trials",
            "3",
            "--name",
            "links",
            trial_fn=rec,
        )
        == 0
    )
    assert len(load(tmp_path, "links").trials) == 3 and len(rec.calls) == 3
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "loss_weights",
            "--n-trials",
            "4",
            "--name",
            "links",
            trial_fn=rec,
        )
        == 0
    )
    study = load(tmp_path, "links")
    assert len(study.trials) == 4 and study.user_attrs["mlflow_parent_run_id"] == parent
    assert len(children(store, parent)) == 4


def test_no_state_leaks_from_one_trial_into_the_next(tmp_path, store):
    import mlflow

    def leaky(cfg, **kw):
        out = rec(cfg, **kw)
        mlflow.set_tracking_uri(store)
        mlflow.start_run(run_id=kw["run_id"])  # a fluent run left active
        return out

    rec = Recorder()
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        assert (
            run_sweep(
                tmp_path,
                store,
                "--study",
                "mask_ratio",
                "--n-trials",
                "3",
                "--name",
                "leak",
                trial_fn=leaky,
            )
            == 0
        )
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    assert len(rec.calls) == 3
    for call in rec.calls:
        assert (
            call["env_run_id"] is None and call["active_run"] is None and call["leak_var"] is None
        )
    assert "MLFLOW_RUN_ID" not in os.environ and "CMCR_TEST_LEAK" not in os.environ
    assert len({c["run_id"] for c in rec.calls}) == 3


def test_failed_trial_retries_in_the_same_run(tmp_path, store):
    rec = Recorder(fail_on={0: RuntimeError("flaky disk")})
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "loss_weights",
            "--n-trials",
            "2",
            "--name",
            "retry",
            trial_fn=rec,
        )
        == 0
    )
    study = load(tmp_path, "retry")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 1 and len(complete) == 2
    assert failed[0].user_attrs[FAIL_REASON_ATTR] == "RuntimeError: flaky disk"
    retry = next(t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.params == failed[0].params
    assert retry.user_attrs["mlflow_run_id"] == failed[0].user_attrs["mlflow_run_id"]
    assert rec.calls[1]["run_id"] == rec.calls[0]["run_id"]  # the retry ran first, same run
    assert rec.calls[1]["tags"]["optuna.retry_of"] == str(failed[0].number)
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = children(store, parent)
    assert len(runs) == 2
    retried_run = next(r for r in runs if r.info.run_id == retry.user_attrs["mlflow_run_id"])
    assert retried_run.data.tags["optuna.trial"] == str(retry.number)


def test_retries_stop_at_max_and_divergence_is_not_retried(tmp_path, store, capsys):
    rec = Recorder(
        fail_on={0: RuntimeError("a"), 1: RuntimeError("b"), 2: TrainingDiverged("loss is nan")}
    )
    args = ("--study", "loss_weights", "--n-trials", "3", "--max-retries", "1", "--name", "giveup")
    # issue 14: a sweep whose slots failed for good exits non-zero and says which and why
    assert run_sweep(tmp_path, store, *args, trial_fn=rec) == 1
    err = capsys.readouterr().err
    assert "(slot 0) failed: RuntimeError: b" in err and "(slot 1) failed: not retried" in err
    study = load(tmp_path, "giveup")
    states = [t.state for t in study.trials]
    # slot 0: fail + fail (retries used up); slot 1: diverged, no retry; slot 2: complete
    assert states.count(TrialState.FAIL) == 3 and states.count(TrialState.COMPLETE) == 1
    reasons = [t.user_attrs[FAIL_REASON_ATTR] for t in study.trials if t.state == TrialState.FAIL]
    assert sorted(reasons) == ["RuntimeError: a", "RuntimeError: b", "diverged: loss is nan"]
    from mlflow.tracking import MlflowClient

    diverged = next(t for t in study.trials if "diverged" in t.user_attrs.get(FAIL_REASON_ATTR, ""))
    run = MlflowClient(store).get_run(diverged.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["cmcr.status_reason"]


def test_grid_retry_neither_skips_nor_doubles_a_cell(tmp_path, store):
    from mlflow.tracking import MlflowClient

    rec = Recorder(fail_on={3: RuntimeError("boom")}, value=lambda cfg, n: 0.5)
    assert run_sweep(tmp_path, store, "--study", "components", "--name", "grid", trial_fn=rec) == 0
    study = load(tmp_path, "grid")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    variants = sorted(t.params["variant"] for t in complete)
    assert len(complete) == 8 and len(set(variants)) == 8  # --n-trials defaulted to the grid
    assert sum(t.state == TrialState.FAIL for t in study.trials) == 1
    assert len(children(store, study.user_attrs["mlflow_parent_run_id"])) == 8
    parent = MlflowClient(store).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert "cmcr.variant" not in parent.data.tags  # the grid searches it: no single variant
    methods = {(c["cfg"].method.name, c["cfg"].method.mim) for c in rec.calls}
    assert ("random", True) in methods and ("cmcr", False) in methods


def test_seeds_each_get_a_child_run_and_the_value_is_their_mean(tmp_path, store):
    rec = Recorder(value=lambda cfg, n: 0.2 + 0.1 * cfg.train.seed)
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "2",
            "--seeds",
            "2",
            "--name",
            "seeds",
            trial_fn=rec,
        )
        == 0
    )
    study = load(tmp_path, "seeds")
    assert [t.value for t in study.trials] == pytest.approx([0.25, 0.25])
    runs = children(store, study.user_attrs["mlflow_parent_run_id"])
    assert len(runs) == 4
    assert sorted(r.data.tags["cmcr.seed"] for r in runs) == ["0", "0", "1", "1"]
    for t in study.trials:
        ids = t.user_attrs["mlflow_run_ids"]
        assert set(ids) == {"0", "1"} and t.user_attrs["mlflow_run_id"] == ids["0"]


def test_median_pruner_stops_a_bad_trial(tmp_path, store):
    rec = Recorder(value=lambda cfg, n: 0.5 if n < 5 else 0.01)
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "6",
            "--pruner",
            "median",
            "--name",
            "prune",
            trial_fn=rec,
        )
        == 0
    )
    study = load(tmp_path, "prune")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(store).get_run(study.trials[-1].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "pruned" in run.data.tags["cmcr.status_reason"]
    assert run.data.tags["optuna.state"] == "PRUNED"


def _kill_mid_trial(tmp_path, store, name: str, *extra: str) -> optuna.Study:
    """Run a sweep whose first trial is 'killed' after its child run exists."""
    rec = Recorder(fail_on={0: SimulatedKill()})
    with pytest.raises(SimulatedKill):
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "2",
            "--name",
            name,
            *extra,
            trial_fn=rec,
        )
    study = load(tmp_path, name)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.WAITING]
    return study


def test_any_start_retries_a_dead_workers_trial_in_its_run(tmp_path, store):
    study = _kill_mid_trial(tmp_path, store, "resume")
    lost = study.trials[0]
    # the killed process: same host, a pid that no longer exists
    dead = f"{socket.gethostname()}:999999999:123.00"
    study._storage.set_trial_user_attr(lost._trial_id, WORKER_ATTR, dead)
    rec = Recorder()
    # issue 14: every start (not only --resume) recovers a dead local worker's trial
    argv = ("--study", "mask_ratio", "--n-trials", "2", "--name", "resume")
    assert run_sweep(tmp_path, store, *argv, trial_fn=rec) == 0
    assert rec.calls[0]["run_id"] == lost.user_attrs["mlflow_run_id"]  # the retry ran first
    assert len(rec.calls) == 2
    # --resume afterwards finds nothing left to do
    assert run_sweep(tmp_path, store, *argv, "--resume", trial_fn=rec) == 0
    assert len(rec.calls) == 2
    trials = load(tmp_path, "resume").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "died" in trials[0].user_attrs[FAIL_REASON_ATTR]
    assert trials[2].system_attrs["failed_trial"] == 0
    assert trials[2].user_attrs["mlflow_run_id"] == lost.user_attrs["mlflow_run_id"]
    assert trials[0].user_attrs[Attr.FAIL_KIND] == "lost"  # no retry spent
    assert (
        len(
            children(
                store,
                trials[0].user_attrs["mlflow_run_id"]
                and load(tmp_path, "resume").user_attrs["mlflow_parent_run_id"],
            )
        )
        == 2
    )


def test_live_worker_retries_a_trial_whose_heartbeat_went_stale(tmp_path, store):
    _kill_mid_trial(tmp_path, store, "stale", "--heartbeat", "1")
    # Age the dead worker's last heartbeat past the grace period (3 heartbeats = 3 s). Sleeping
    # 3.5 s was flaky: SQLite's CURRENT_TIMESTAMP, which Optuna uses on both sides of the
    # comparison, has 1-second resolution, so 3.5 s of wall time can read as exactly 3 s.
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        aged = db.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-10 seconds')"
        ).rowcount
    assert aged == 1
    rec = Recorder()
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "2",
            "--name",
            "stale",
            "--heartbeat",
            "1",
            trial_fn=rec,
        )
        == 0
    )
    trials = load(tmp_path, "stale").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[2].user_attrs["retry_reason"].startswith("worker lost")
    assert trials[2].user_attrs["mlflow_run_id"] == trials[0].user_attrs["mlflow_run_id"]


def test_status_lists_trials_with_their_runs(tmp_path, store, capsys):
    rec = Recorder(fail_on={0: RuntimeError("flaky")})
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "1",
            "--name",
            "stat",
            trial_fn=rec,
        )
        == 0
    )
    capsys.readouterr()
    assert run_sweep(tmp_path, store, "--study", "mask_ratio", "--name", "stat", "--status") == 0
    out = capsys.readouterr().out
    study = load(tmp_path, "stat")
    # one slot: the retry is counted as a retry of the trial, not as a second trial
    assert "1 trial(s): 1 complete" in out and "1 retry" in out and "flaky" in out
    assert study.trials[1].user_attrs["mlflow_run_id"] in out and "retry of #0" in out


def test_rerun_with_other_settings_is_refused(tmp_path, store):
    rec = Recorder()
    assert (
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--n-trials",
            "1",
            "--name",
            "compat",
            trial_fn=rec,
        )
        == 0
    )
    from cmcr.errors import CMCRError

    with pytest.raises(CMCRError, match="different seeds"):
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--name",
            "compat",
            "--seeds",
            "2",
            trial_fn=rec,
        )
    with pytest.raises(CMCRError, match="different overrides"):
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--name",
            "compat",
            "--set",
            "train.lr=0.01",
            trial_fn=rec,
        )
    with pytest.raises(CMCRError, match="searched by study"):
        run_sweep(
            tmp_path,
            store,
            "--study",
            "mask_ratio",
            "--name",
            "x",
            "--set",
            "data.mask_ratio=0.3",
            trial_fn=rec,
        )
    assert len(rec.calls) == 1
