"""Retry accounting by fault kind (issue 14), with the trial function injected (fast).

Interrupted or lost attempts are re-queued without spending a retry; an exception of the trial
spends one; divergence, a non-finite objective and bad input are not retried; ``--resume
--retry-failed`` re-opens failed slots; the per-slot reconciliation heals a retry that a kill
kept from being queued; a dead ``--workers`` child has its trial re-queued at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_sweep_runner import Recorder, SimulatedKill, children, load, run_sweep

from cmcr.errors import DataError
from cmcr.names import Attr
from cmcr.sweep.worker import WorkerStopped

ROOT = Path(__file__).resolve().parents[1]
WITH_TRIAL_FN = str(ROOT / "tests" / "sweep_with_trial_fn.py")
ARGV = ("--study", "mask_ratio", "--pruner", "none")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow sqlite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _sweep(tmp_path, store, name, *argv, rec=None) -> int:
    return run_sweep(tmp_path, store, *ARGV, "--name", name, *argv, trial_fn=rec or Recorder())


def _kinds(study: optuna.Study) -> list[str]:
    return [t.user_attrs.get(Attr.FAIL_KIND) for t in study.trials if t.state == TrialState.FAIL]


def test_an_interrupt_is_requeued_without_spending_a_retry(tmp_path, store):
    rec = Recorder(fail_on={0: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, store, "intr", "--n-trials", "1", "--max-retries", "0", rec=rec)
    study = load(tmp_path, "intr")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert _kinds(study) == ["interrupted"]
    # --max-retries 0: the retry is still owed, because the interrupt spent none
    assert _sweep(tmp_path, store, "intr", "--n-trials", "1", "--max-retries", "0", rec=rec) == 0
    trials = load(tmp_path, "intr").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs[Attr.RUN_ID] == trials[0].user_attrs[Attr.RUN_ID]


def test_an_exception_spends_one_retry(tmp_path, store):
    rec = Recorder(fail_on={0: RuntimeError("flaky")})
    assert _sweep(tmp_path, store, "own", "--n-trials", "1", "--max-retries", "1", rec=rec) == 0
    study = load(tmp_path, "own")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert _kinds(study) == ["own"]
    rec0 = Recorder(fail_on={0: RuntimeError("flaky")})
    assert _sweep(tmp_path, store, "own0", "--n-trials", "1", "--max-retries", "0", rec=rec0) == 1
    assert [t.state for t in load(tmp_path, "own0").trials] == [TrialState.FAIL]


@pytest.mark.parametrize(
    "fail_on, value, reason",
    [
        ({0: DataError("dataroot: no such folder")}, None, "DataError: dataroot"),
        ({}, lambda cfg, n: float("nan"), "objective is nan"),
    ],
)
def test_a_deterministic_failure_is_not_retried(tmp_path, store, capsys, fail_on, value, reason):
    rec = Recorder(fail_on=fail_on, value=value)
    assert _sweep(tmp_path, store, "det", "--n-trials", "1", "--max-retries", "5", rec=rec) == 1
    study = load(tmp_path, "det")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert _kinds(study) == ["deterministic"]
    assert f"trial 0 (slot 0) failed: not retried: {reason}" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(store).get_run(study.user_attrs[Attr.PARENT_RUN])
    assert parent.info.status == "FAILED" and "slot 0" in parent.data.tags["cmcr.status_reason"]


def test_retry_failed_reopens_a_failed_slot(tmp_path, store):
    rec = Recorder(fail_on={0: RuntimeError("a")})
    argv = ("--n-trials", "2", "--max-retries", "0")
    assert _sweep(tmp_path, store, "reopen", *argv, rec=rec) == 1
    assert _sweep(tmp_path, store, "reopen", *argv, rec=rec) == 1  # a plain re-run: still failed
    with pytest.raises(Exception, match="--retry-failed"):
        _sweep(tmp_path, store, "reopen", *argv, "--retry-failed", rec=rec)
    rec2 = Recorder(fail_on={0: RuntimeError("b")})  # fails once more: the count starts again
    assert _sweep(tmp_path, store, "reopen", *argv, "--resume", "--retry-failed", rec=rec2) == 1
    rec3 = Recorder()
    assert _sweep(tmp_path, store, "reopen", *argv, "--resume", "--retry-failed", rec=rec3) == 0
    study = load(tmp_path, "reopen")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[Attr.SLOT] for t in complete) == [0, 1]
    assert len(rec3.calls) == 1
    assert len(children(store, study.user_attrs[Attr.PARENT_RUN])) == 2


def test_reconciliation_queues_a_retry_a_kill_kept_from_being_queued(tmp_path, store):
    assert _sweep(tmp_path, store, "heal", "--n-trials", "2") == 0
    study = load(tmp_path, "heal")
    # slot 1 as a kill between "tell FAIL" and "enqueue retry" leaves it: FAIL, nothing queued
    done = study.trials[1]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params=done.params,
            distributions=done.distributions,
            user_attrs={Attr.SLOT: 2, Attr.FAIL_KIND: "own", Attr.FAIL_REASON: "boom"},
        )
    )
    rec = Recorder()
    assert _sweep(tmp_path, store, "heal", "--n-trials", "3", "--max-retries", "1", rec=rec) == 0
    trials = load(tmp_path, "heal").trials
    slot2 = [t for t in trials if t.user_attrs[Attr.SLOT] == 2]
    assert [t.state for t in slot2] == [TrialState.FAIL, TrialState.COMPLETE]
    assert slot2[1].user_attrs[Attr.RETRY_REASON] == "boom"
    assert len(rec.calls) == 1


def test_disk_full_stops_the_worker_and_spends_no_retry(tmp_path, store):
    full = OSError(errno.ENOSPC, "No space left on device")
    rec = Recorder(fail_on={0: full})
    with pytest.raises(WorkerStopped, match="without spending a retry"):
        _sweep(tmp_path, store, "full", "--n-trials", "2", "--max-retries", "0", rec=rec)
    study = load(tmp_path, "full")
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.WAITING] * 2
    assert _kinds(study) == ["environment"]
    assert len(rec.calls) == 1  # no tight loop of retries
    assert _sweep(tmp_path, store, "full", "--n-trials", "2", "--max-retries", "0", rec=rec) == 0


def test_a_run_created_but_never_linked_is_reused(tmp_path, store, monkeypatch):
    from cmcr.sweep import objective

    link = objective._link_run

    def killed_before_linking(*args, **kwargs):
        raise SimulatedKill()

    monkeypatch.setattr(objective, "_link_run", killed_before_linking)
    with pytest.raises(SimulatedKill):
        _sweep(tmp_path, store, "link", "--n-trials", "1")
    monkeypatch.setattr(objective, "_link_run", link)
    study = load(tmp_path, "link")
    dead = f"{socket.gethostname()}:999999999:123.00"
    study._storage.set_trial_user_attr(study.trials[0]._trial_id, Attr.WORKER, dead)
    assert _sweep(tmp_path, store, "link", "--n-trials", "1") == 0
    study = load(tmp_path, "link")
    runs = children(store, study.user_attrs[Attr.PARENT_RUN])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert study.trials[-1].user_attrs[Attr.RUN_ID] == runs[0].info.run_id


def test_finish_with_mlflow_down_reports_one_line(tmp_path, store, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    from cmcr.tracking import runs

    def down(*args, **kwargs):
        raise MlflowException("API request to http://mlflow:5000 failed with exception refused")

    monkeypatch.setattr(runs, "end_run", down)
    assert _sweep(tmp_path, store, "down", "--n-trials", "1") == 0
    err = capsys.readouterr().err
    assert "MLflow could not be updated" in err and "Traceback" not in err
    assert [t.state for t in load(tmp_path, "down").trials] == [TrialState.COMPLETE]


def test_a_study_killed_before_its_definition_is_adopted(tmp_path, store):
    optuna.create_study(study_name="adopt", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert _sweep(tmp_path, store, "adopt", "--n-trials", "1") == 0
    assert Attr.DEFINITION in load(tmp_path, "adopt").user_attrs


def test_creating_a_sqlite_store_is_all_or_nothing(tmp_path):
    from cmcr.uris import create_sqlite_atomically

    db = tmp_path / "s" / "o.db"

    def killed(url: str) -> None:
        Path(url[len("sqlite:///") :]).write_text("half a schema")
        raise SimulatedKill()

    with pytest.raises(SimulatedKill):
        create_sqlite_atomically(db, killed)
    assert not db.exists() and not list(db.parent.glob("*.tmp"))
    create_sqlite_atomically(db, lambda url: optuna.storages.RDBStorage(url).engine.dispose())
    optuna.create_study(study_name="ok", storage=f"sqlite:///{db}")


def test_a_dead_worker_of_two_is_requeued_by_its_parent_at_once(tmp_path):
    """One spawned worker SIGKILLs itself in its first trial; with a 60 s heartbeat nobody
    could notice before 3 minutes, yet the parent re-queues the trial as soon as the child dies
    (no retry spent) and the sweep completes."""
    hook = tmp_path / "dying_trial.py"
    marker = tmp_path / "died"
    hook.write_text(
        "import os, signal\n"
        "from cmcr.engine.downstream import DownstreamResult\n"
        "def run(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):\n"
        f"    if not os.path.exists({str(marker)!r}):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return DownstreamResult(run_id, cfg.data.mask_ratio, 0.0, {})\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        sys.executable, WITH_TRIAL_FN, "dying_trial:run", *ARGV, "--n-trials", "3",
        "--workers", "2", "--heartbeat", "60", "--max-retries", "0", "--preset", "smoke",
        "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=170)
    # well inside one 60 s heartbeat: neither the heartbeat nor an idle worker's sleep decided
    assert time.monotonic() - t0 < 60
    assert "exited with code -9" in out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.returncode == 1  # the dead worker is reported
    study = optuna.load_study(study_name="mask_ratio", storage=f"sqlite:///{tmp_path / 'o.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[Attr.SLOT] for t in complete) == [0, 1, 2]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[Attr.FAIL_KIND] == "lost"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mask_ratio").experiment_id])
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


@pytest.mark.postgres
def test_two_independent_processes_recover_a_killed_ones_trial(tmp_path):
    """No common parent: the survivor waits out the heartbeat grace instead of leaving with the
    queue empty, fails the dead process's trial and runs its retry; no manual --resume."""
    import uuid

    from test_sweep_parallel import PG_DRIVER, _postgres_up

    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is unreachable and CI is set")
        pytest.skip("PostgreSQL is unreachable (set CI to make this a failure)")
    hook = tmp_path / "one_dies.py"
    marker = tmp_path / "died"
    hook.write_text(
        "import os, signal, time\n"
        "from cmcr.engine.downstream import DownstreamResult\n"
        "def run(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):\n"
        "    try:\n"
        f"        os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL))\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    except FileExistsError:\n"
        "        time.sleep(0.5)\n"
        "    return DownstreamResult(run_id, cfg.data.mask_ratio, 0.0, {})\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    env.pop("MLFLOW_RUN_ID", None)
    name = f"indep-{uuid.uuid4().hex[:10]}"
    cmd = [
        sys.executable, WITH_TRIAL_FN, "one_dies:run", *ARGV, "--n-trials", "4", "--name", name,
        "--heartbeat", "2", "--max-retries", "0", "--preset", "smoke", "--storage", PG_DRIVER,
        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    try:
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=tmp_path, env=env)
            for _ in range(2)
        ]  # fmt: skip
        outs = [p.communicate(timeout=300)[0] for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [-9, 0], outs
        study = optuna.load_study(study_name=name, storage=PG_DRIVER)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(t.user_attrs[Attr.SLOT] for t in complete) == [0, 1, 2, 3]
        assert _kinds(study) == ["lost"]
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_DRIVER)


def test_a_retried_slot_counts_once_at_each_rung_of_asha():
    from cmcr.sweep.recovery import enqueue_retry
    from cmcr.sweep.runner import pruner_for

    # the sweep's ASHA with its first rung at resource 7 (a third goes on at each rung)
    pruner = pruner_for("asha", 7, "auto")
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def at_step_7(value: float) -> bool:
        trial = study.ask()
        trial.set_user_attr(Attr.SLOT, len(study.trials))
        trial.report(value, 7)
        return trial.should_prune()

    assert not at_step_7(0.9)  # slot 0 passes the first rung, then fails
    study.tell(0, state=TrialState.FAIL)
    enqueue_retry(study, study.trials[0], "flaky")
    retry = study.ask()  # the WAITING retry, resumed past step 7
    assert retry.number == 1 and "completed_rung_0" in study.trials[1].system_attrs
    # re-reporting its logged step 7 on resume (cmcr.engine.probe) adds no second mark
    retry.report(0.9, 7)
    assert not retry.should_prune()
    for value in (0.1, 0.2, 0.3, 0.4):
        at_step_7(value)
    # seven marks at rung 0 if slot 0 counts twice (0.9, 0.9, ...): the second best is 0.9 and
    # 0.85 is pruned; six if it counts once: 0.85 is second and goes on
    assert not at_step_7(0.85)
    # the retry resumes at rung 1 (step 21): its step-14 value is not judged at rung 0
    retry.report(0.05, 14)
    assert not retry.should_prune()
