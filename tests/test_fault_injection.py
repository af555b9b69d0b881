"""Fault injection: a sweep SIGKILLed at random moments loses no trial and leaves no orphan.

The promise under test (issue 14): a 4-trial smoke sweep whose whole process group is killed
with SIGKILL at 10 random moments (4 in the default run, 10 with ``-m slow``), and re-run each time with default options (``--resume``),
ends with every slot COMPLETE exactly once with distinct parameters, one FINISHED MLflow child
run per trial, no metric step logged twice in any run, no run left RUNNING, and the parent
run FINISHED. The same with two workers on PostgreSQL when one worker is killed: the survivor
(or the parent that started both) recovers the trial without a manual ``--resume``.

The kill moments come from a seeded generator, spread over the whole life of a sweep (setup,
pre-training, checkpointing, probing, the bookkeeping between trials), so a failure reproduces.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
# about half a minute of work (0.45 s a step on an idle core): 10 kills land inside the sweep,
# since each restart spends most of its 1..8 s on start-up; at 40 steps the test took 128 s
FAST = ["--set", "train.max_steps=12", "--set", "downstream.probe_epochs=1"]
N_TRIALS = 4
KILLS = 10
# each kill lands 1..8 s after a (re)start: the startup (imports, stores), the first trial's
# pre-training and checkpoints, and, as resumed progress accumulates, the later trials
KILL_WITHIN_S = 8.0
PG = "postgresql://postgres@127.0.0.1:5432/test"


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _cmd(tmp_path: Path, world: Path, storage: str, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, RUN, "--study", "loss_weights", "--name", name,
        "--n-trials", str(N_TRIALS), "--preset", "smoke", "--storage", storage,
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"data.dataroot={world}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        "--heartbeat", "2", "--no-report", *FAST, *extra,
    ]  # fmt: skip


def _kill_group_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the process group after ``delay`` s; False if it had already exited."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _check_invariants(
    tmp_path: Path, storage: str, name: str, n_trials: int = N_TRIALS
) -> dict[str, int]:
    """The end state every fault sequence must reach; returns counts for the report."""
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    by_slot = collections.Counter(t.user_attrs.get("cmcr.slot") for t in complete)
    assert sorted(by_slot) == list(range(n_trials)), f"slots complete: {dict(by_slot)}"
    assert set(by_slot.values()) == {1}, f"a slot completed twice: {dict(by_slot)}"
    params = {tuple(sorted(t.params.items())) for t in complete}
    assert len(params) == n_trials, "two slots ran with the same parameters"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)  # one experiment per study
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    parents = [r for r in runs if r.data.tags.get("cmcr.kind") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == n_trials, f"{len(children)} child runs for {n_trials} trials"
    assert all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]
    linked = {t.user_attrs.get("mlflow_run_id") for t in complete}
    assert linked == {r.info.run_id for r in children}
    for run in [*children, *parents]:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (
                f"{key} logged twice at a step in {run.info.run_id}"
            )
    return {
        "trials": len(trials),
        "failed_attempts": sum(t.state == TrialState.FAIL for t in trials),
        "runs": len(runs),
    }


# the suite runs seed 14; CMCR_FAULT_SEEDS=1,2,3 runs more kill sequences locally
SEEDS = [14] + [int(s) for s in os.environ.get("CMCR_FAULT_SEEDS", "").split(",") if s.strip()]
# the default run kills 4 times (about 35 s); the ten kills of the promise run with the slow
# tests (`pytest -m slow`, about 85 s on an idle 2-core machine)
KILL_COUNTS = [4, pytest.param(KILLS, marks=pytest.mark.slow, id="ten")]


@pytest.mark.parametrize("kills_wanted", KILL_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_sigkills_lose_no_trial(tmp_path, smoke_world, seed, kills_wanted):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    name = "faults"
    rng = random.Random(seed)
    kills = 0
    for attempt in range(kills_wanted + 1):
        extra = ("--resume",) if attempt else ()
        proc = subprocess.Popen(
            _cmd(tmp_path, smoke_world, storage, name, *extra),
            cwd=tmp_path, env=_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if attempt < kills_wanted and _kill_group_after(proc, rng.uniform(1.0, KILL_WITHIN_S)):
            kills += 1
            continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        break  # the sweep finished (before the next kill, or after the last one)
    assert kills == kills_wanted, f"only {kills} kills landed: the sweep ended before the rest"
    counts = _check_invariants(tmp_path, storage, name)
    print(f"fault injection (seed {seed}): {kills} SIGKILLs, {counts}")


def _postgres_or_skip() -> str:
    from cmcr.tracking.optuna_store import driver_url

    url = driver_url(PG)
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is unreachable at {PG} and CI is set")
        pytest.skip(f"PostgreSQL is unreachable at {PG} (set CI to make this a failure)")
    return url


@pytest.mark.postgres
def test_a_killed_worker_of_two_loses_no_trial(tmp_path, smoke_world):
    storage = _postgres_or_skip()
    name = f"faults-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen(
        _cmd(tmp_path, smoke_world, storage, name, "--workers", "2"),
        cwd=tmp_path, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        victim = _running_worker_pid(storage, name, deadline=time.monotonic() + 180)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # the study itself completes; the parent reports the dead worker, so it may exit non-zero
    counts = _check_invariants(tmp_path, storage, name)
    assert counts["failed_attempts"] >= 1, "the killed worker's trial left no trace"
    print(f"killed worker {victim}: {counts}; parent exit {proc.returncode}: {err[-300:]}")


def _running_worker_pid(storage: str, name: str, deadline: float) -> int:
    """The pid of a worker that holds a RUNNING trial (polls the study until one does)."""
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            time.sleep(0.5)
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("cmcr.worker")
            if worker:
                return int(worker.split(":")[-2])
        time.sleep(0.5)
    raise AssertionError("no worker started a trial in time")
