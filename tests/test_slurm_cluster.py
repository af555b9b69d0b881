"""The SLURM launcher on a real single-node SLURM (slurmctld + slurmd + munge on this machine).

Nothing of the SLURM path is mocked: ``sweeps/run.py --launcher slurm`` submits a job array with
sbatch, the workers run the real smoke trials under srun, ``scancel --signal=TERM`` warns one of
them mid-trial, and the job requeues itself with ``scontrol requeue``. The one help the test
gives the scheduler: SLURM holds a requeued job for about two minutes (its BeginTime), which the
test shortens with ``scontrol update StartTime=now`` (what an operator may do), to stay within
the CI budget.

One study of 4 trials and 2 workers, the study on PostgreSQL and the MLflow store on a fresh
PostgreSQL database (the multi-machine set-up; CI runs this heavy case once: set
``CMCR_SLURM_STORAGES=postgresql,journal`` to run it on Optuna's journal file too):
- all 4 slots COMPLETE once, one FINISHED MLflow run each, the parent run FINISHED;
- the warned worker checkpointed at the next step, its trial was re-queued (``interrupted``,
  no retry spent) and its retry resumed that checkpoint in the same MLflow run, with no metric
  step logged twice; the warned job ran again (requeued);
- ``--status`` shows the SLURM job ids; ``--cancel`` of a second submission leaves no job queued.

MLflow is not on SQLite here: the test suspends a worker (SIGSTOP, as gang scheduling does), and
a worker suspended inside a SQLite write transaction holds the whole file's lock, so the warned
worker's next metric write failed with "database is locked" (seen once locally, 2026-12-06). A
PostgreSQL store locks rows, not the store.

The cluster comes from ``.ci/slurm-setup.sh`` (installs slurm-wlm and munge when missing).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.names import Attr, Metric, Tag

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
SETUP = ROOT / ".ci" / "slurm-setup.sh"
PG = "postgresql://postgres@127.0.0.1:5432/test"
N_TRIALS, WORKERS = 4, 2
# long enough to be warned mid-pre-training (10 steps took 4.4 s on an idle machine: the
# test's poll, a study load and MLflow reads, missed that window on a loaded one); no periodic
# checkpoint, so a resume at step > 0 can only come from the checkpoint the warning made
MAX_STEPS = 30
FAST = [
    "--set", f"train.max_steps={MAX_STEPS}", "--set", "train.checkpoint_every=1000",
    "--set", "downstream.probe_epochs=1",
]  # fmt: skip
DEADLINE_S = 300
REVOKE_S = 2  # SLURM refuses to start a requeued job in the second its credential was revoked


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"SLURM is unavailable and CI is set: {why}")
    pytest.skip(f"SLURM is unavailable (set CI to make this a failure): {why}")


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A running single-node SLURM, set up by .ci/slurm-setup.sh (idempotent)."""
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        _unavailable("not root (the set-up installs packages and starts daemons) and no sinfo")
    cmd = ["bash", str(SETUP)] if os.geteuid() == 0 else ["sinfo", "-h"]
    # the daemons it may start are the machine's services, not this session's processes: they
    # go without the session mark, so the session-end check does not kill them as survivors
    env = {k: v for k, v in os.environ.items() if k != "CMCR_TEST_SESSION"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        _unavailable(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-1500:]}")


def _storage(kind: str, tmp_path: Path) -> str:
    if kind == "journal":
        return f"journal://{tmp_path / 'study.journal'}"
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


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _cmd(tmp_path: Path, world: Path, storage: str, name: str, *extra: str) -> list[str]:
    tracking = (tmp_path / "tracking-uri").read_text()  # the test's MLflow database
    return [
        sys.executable, RUN, "--study", "loss_weights", "--name", name, "--preset", "smoke",
        "--n-trials", str(N_TRIALS), "--pruner", "none", "--storage", storage,
        "--tracking-uri", tracking, "--heartbeat", "60",
        "--set", f"data.dataroot={world}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        *FAST, *extra,
    ]  # fmt: skip


def _sweep(tmp_path: Path, world: Path, storage: str, name: str, *extra: str) -> str:
    cmd = _cmd(tmp_path, world, storage, name, *extra)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _queue(array: str) -> dict[str, str] | None:
    """{task: state} of the array's queued tasks; None when squeue did not answer (a loaded
    slurmctld times out now and then: an empty answer must not read as an empty queue)."""
    from cmcr.sweep.slurm import queue

    return queue([array])


def _wait(what: str, check, deadline: float, every: float = 0.5):
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mlflow_db(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database for the MLflow store (dropped afterwards); its URI is also
    written to ``tmp_path/tracking-uri`` for the commands."""
    import sqlalchemy

    from cmcr.tracking.optuna_store import driver_url

    db = f"mlflow_slurm_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(driver_url(PG), isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 3})  # fmt: skip
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is unreachable at {PG} and CI is set: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {PG} (set CI to make this a failure)")
    uri = driver_url(PG.rsplit("/", 1)[0] + f"/{db}")  # MLflow's SQLAlchemy needs the driver
    (tmp_path / "tracking-uri").write_text(uri)
    try:
        yield uri
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


# the study's storage: PostgreSQL in CI (once); CMCR_SLURM_STORAGES=postgresql,journal adds more
STORAGES = os.environ.get("CMCR_SLURM_STORAGES", "postgresql").split(",")


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize("kind", [k.strip() for k in STORAGES if k.strip()])
def test_a_study_on_slurm_survives_a_warned_worker(
    slurm_cluster, smoke_world, tmp_path, kind, mlflow_db
):
    from mlflow.tracking import MlflowClient

    storage = _storage(kind, tmp_path)
    name = f"slurm-{kind}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    deadline = t0 + DEADLINE_S
    out = _sweep(tmp_path, smoke_world, storage, name, "--launcher", "slurm",
                 "--workers", str(WORKERS), "--cpus-per-worker", "1", "--mem", "2G")  # fmt: skip
    array = re.search(r"submitted SLURM job array (\d+)", out).group(1)
    tasks = {f"{array}_{k}" for k in range(WORKERS)}
    client = MlflowClient(mlflow_db)
    t_submit = time.monotonic() - t0
    status, status_out = None, None
    try:
        _wait("both workers to hold a trial", lambda: _held(storage, name) == tasks, deadline)
        # --status while both hold a trial (it takes seconds to start: waited for here, as it
        # read the study after the warning otherwise)
        # both tasks are suspended meanwhile: on a loaded machine the status took long enough
        # that both trials had left pre-training before the warning could land (2026-12-06)
        subprocess.run(["scontrol", "suspend", array], capture_output=True)
        try:
            status = _start(tmp_path, smoke_world, storage, name, "--status")
            status_out = status.communicate(timeout=120)[0]
        finally:
            subprocess.run(["scontrol", "resume", array], capture_output=True)
        # one worker pre-training is warned; the other is suspended (SIGSTOP, as SLURM's gang
        # scheduling does) so that the retry is claimed by the requeued task, not by it (a task
        # that has already ended cannot be suspended, nor claim anything)
        trial, seen, other = _wait("a worker mid-way through pre-training",
                                   lambda: _one_training(storage, name, client, tasks), deadline)  # fmt: skip
        victim = trial.user_attrs[Attr.SLURM_JOB]
        subprocess.run(["scontrol", "suspend", other], capture_output=True)
        seen = _last_step(client, trial.user_attrs[Attr.RUN_ID])
        subprocess.run(["scancel", "--signal=TERM", victim], check=True)
        t_warn = time.monotonic()
        # the worker checkpoints at its next step and requeues its task: SLURM holds it ~2 min
        _wait("the warned task to be requeued",
              lambda: (_queue(array) or {}).get(victim) == "PENDING", deadline)  # fmt: skip
        requeued_after = time.monotonic() - t_warn
        # the requeue revoked the job's credential (whole seconds): a start in that second is
        # refused ("Job credential revoked") and the task ends FAILED instead of running again
        time.sleep(REVOKE_S)
        subprocess.run(["scontrol", "update", f"JobId={victim}", "StartTime=now"], check=True)
        _wait("the requeued task to claim the retry",
              lambda: _held(storage, name, retries=True) == {victim}, deadline)  # fmt: skip
        _wait("the requeued task to resume the retry from its checkpoint",
              lambda: "resuming from" in _log(tmp_path, name, victim).partition("restart 1")[2],
              deadline)  # fmt: skip
        subprocess.run(["scontrol", "resume", other], capture_output=True)
        _wait("the study's jobs to leave the queue", lambda: _queue(array) == {}, deadline, 1.0)
        elapsed = time.monotonic() - t0
    finally:
        subprocess.run(["scontrol", "resume", f"{array}"], capture_output=True)
        subprocess.run(["scancel", array], capture_output=True)
        if status is not None and status_out is None:
            status_out = status.communicate(timeout=120)[0]

    # --status named the workers' jobs next to their trials (it ran while both held one)
    assert status is not None and status.returncode == 0, status_out[-2000:]
    for task in tasks:
        assert re.search(rf"#\d+ .*job={task} \((RUNNING|SUSPENDED|PENDING|ended)\)", status_out), (
            status_out
        )
    victim_log = _log(tmp_path, name, victim)
    assert "preempted, requeueing" in victim_log and "restart 1" in victim_log, victim_log[-3000:]
    study = optuna.load_study(study_name=name, storage=_open(storage))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[Attr.SLOT] for t in complete) == list(range(N_TRIALS)), [
        (t.number, t.state.name, t.user_attrs.get(Attr.FAIL_REASON)) for t in trials
    ]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [trial.number]
    assert failed[0].user_attrs[Attr.FAIL_KIND] == "interrupted"
    reason = failed[0].user_attrs[Attr.FAIL_REASON]
    assert "preempted" in reason
    stopped_at = int(re.search(r"checkpointing step (\d+)", reason)[1])
    assert stopped_at > seen  # the step after the warning: no periodic checkpoint in this run
    retry = next(t for t in complete if t.user_attrs[Attr.SLOT] == trial.user_attrs[Attr.SLOT])
    assert retry.system_attrs[Attr.FAILED_TRIAL] == trial.number
    jobs = [(t.number, t.state.name, t.user_attrs.get(Attr.SLOT), t.user_attrs.get(Attr.SLURM_JOB),
             t.user_attrs.get(Attr.WORKER)) for t in trials]  # fmt: skip
    assert retry.user_attrs[Attr.SLURM_JOB] == victim, jobs  # the requeued task resumed it
    assert retry.user_attrs[Attr.RUN_ID] == trial.user_attrs[Attr.RUN_ID]  # in the same MLflow run

    exp = client.get_experiment_by_name(name)  # one experiment per study
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "study")
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get(Tag.PARENT_RUN) == parent.info.run_id]
    assert len(children) == N_TRIALS and {r.info.status for r in children} == {"FINISHED"}
    assert {t.user_attrs[Attr.RUN_ID] for t in complete} == {r.info.run_id for r in children}
    resumed = client.get_run(trial.user_attrs[Attr.RUN_ID])
    assert resumed.data.tags[Tag.RESUMED_FROM_STEP] == str(stopped_at)
    for run in children:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{key} logged twice at a step"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, Metric.TRAIN_LOSS)]
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))

    # --cancel: a second submission (nothing left to run) is cancelled while queued or starting
    t_cancel = time.monotonic()
    out = _sweep(tmp_path, smoke_world, storage, name, "--launcher", "slurm", "--workers", "1",
                 "--resume")  # fmt: skip
    second = re.search(r"submitted SLURM job array (\d+)", out).group(1)
    cancelled = _sweep(tmp_path, smoke_world, storage, name, "--cancel")
    assert f"cancelled SLURM job array(s) {array}, {second}" in cancelled
    assert _queue(second) == {} and _queue(array) == {}
    print(
        f"{kind}: submitted in {t_submit:.0f} s, study done {elapsed:.0f} s after the start, "
        f"--cancel check {time.monotonic() - t_cancel:.0f} s; warned {victim} at step {seen}, "
        f"checkpointed step {stopped_at}, requeued after {requeued_after:.1f} s"
    )


def _start(tmp_path: Path, world: Path, storage: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        _cmd(tmp_path, world, storage, name, *extra), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=_env(),
    )  # fmt: skip


def _log(tmp_path: Path, name: str, task: str) -> str:
    """The worker log of array task ``task`` (all its runs: a requeued task appends)."""
    path = tmp_path / "runs" / "slurm" / name / f"{task}.log"
    return path.read_text() if path.is_file() else ""


def _held(storage: str, name: str, retries: bool = False) -> set[str]:
    """The SLURM jobs holding RUNNING trials (``retries``: retries only)."""
    study = optuna.load_study(study_name=name, storage=_open(storage))
    return {
        t.user_attrs[Attr.SLURM_JOB]
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if Attr.SLURM_JOB in t.user_attrs and (not retries or Attr.FAILED_TRIAL in t.system_attrs)
    }


def _last_step(client, run_id: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, Metric.TRAIN_LOSS)), default=0)


def _one_training(storage: str, name: str, client, tasks: set[str]):
    """(trial, its last step, the other task) when a worker's trial is pre-training at a step in
    [2, MAX_STEPS - 2) (the warning lands before the step after it); None otherwise.

    The other task need not be pre-training too: it is suspended only so that it cannot claim
    the retry, whatever it is doing. (Requiring both to pre-train at once timed out on a loaded
    machine, 2026-12-02: started seconds apart, the two never overlapped in pre-training.)"""
    study = optuna.load_study(study_name=name, storage=_open(storage))
    training = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id, holder = t.user_attrs.get(Attr.RUN_ID), t.user_attrs.get(Attr.SLURM_JOB)
        if run_id and holder in tasks:
            step = _last_step(client, run_id)
            if 2 <= step < MAX_STEPS - 2:
                training.append((step, t, holder))
    if not training:
        return None
    step, trial, holder = max(training, key=lambda item: item[0])
    return trial, step, next(iter(tasks - {holder}))


@functools.lru_cache(maxsize=4)
def _open(storage: str):
    """One storage per URL for the test's polls: a new one each poll (twice a second) kept a
    PostgreSQL connection pool per call until garbage collection, and a loaded CI run reached
    the server's 100 connections ("too many clients already", 2026-12-06)."""
    from cmcr.tracking.optuna_store import open_storage

    return open_storage(storage, create=False)


@pytest.mark.slurm
def test_a_trial_whose_job_left_the_queue_is_failed_as_lost(slurm_cluster, tmp_path, monkeypatch):
    """A worker killed without warning (no heartbeat on the journal) is found by its job: a
    trial held by a job that left the queue is failed as lost; one held by a running job stays."""
    from types import SimpleNamespace

    from cmcr.configs import load_config
    from cmcr.sweep import slurm
    from cmcr.tracking.optuna_store import open_storage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)

    def submit(command: str) -> str:
        out = subprocess.run(
            ["sbatch", "--parsable", "--array=0", f"--output={tmp_path}/%A_%a.log",
             f"--wrap={command}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip().split(";")[0]

    # a job that left the queue: an id SLURM never gave out reads the same in squeue as one
    # that ended long ago (MinJobAge), and saves waiting for a real one to end
    alive, ended = submit("sleep 120"), "999999"
    try:
        deadline = time.monotonic() + 60
        assert _queue(ended) == {}
        _wait("the long job to run", lambda: (_queue(alive) or {}).get(f"{alive}_0") == "RUNNING",
              deadline)  # fmt: skip
        study = optuna.create_study(
            study_name="lost", storage=open_storage(f"journal://{tmp_path / 's.journal'}")
        )
        for job in (ended, alive):
            study.ask().set_user_attr(Attr.SLURM_JOB, f"{job}_0")
        plan = SimpleNamespace(base=load_config("smoke"))
        lost = slurm.fail_lost(plan, study)
        assert [t.number for t in lost] == [0]
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
        assert trials[0].user_attrs[Attr.FAIL_KIND] == "lost"
        assert trials[0].user_attrs[Attr.FAIL_REASON] == f"SLURM job {ended}_0 gone"
        notes = slurm.status_notes(trials)
        assert notes == {0: f" job={ended}_0 (ended)", 1: f" job={alive}_0 (RUNNING)"}
    finally:
        subprocess.run(["scancel", alive], capture_output=True)
