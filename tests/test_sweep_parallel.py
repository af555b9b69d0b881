"""Parallel sweeps: two independent processes on PostgreSQL, and ``--workers 2`` on the embedded
SQLite default, finish N trials together with no lost or duplicated trial."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cmcr.tracking.optuna_store import driver_url

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
WITH_TRIAL_FN = str(ROOT / "tests" / "sweep_with_trial_fn.py")
PG = "postgresql://postgres@127.0.0.1:5432/test"
PG_DRIVER = driver_url(PG)  # what optuna/SQLAlchemy are given in this file
# trust auth ignores the password: it is there to prove it never reaches MLflow
PG_WITH_PASSWORD = "postgresql://postgres:s3cret@127.0.0.1:5432/test"
FAST = ["--set", "train.max_steps=2", "--set", "downstream.probe_epochs=1", "--no-report"]


def _postgres_up() -> bool:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG_DRIVER, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.fixture
def postgres() -> str:
    """The PostgreSQL URL; skipped only when it is down and CI is unset (in CI it must run)."""
    if not _postgres_up():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is unreachable at {PG} and CI is set")
        pytest.skip(f"PostgreSQL is unreachable at {PG} (set CI to make this a failure)")
    return PG_DRIVER


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", **extra}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _assert_exactly_once(study: optuna.Study, n: int) -> None:
    """n COMPLETE trials, one per slot, distinct params, nothing else left behind."""
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [t.state for t in trials]
    assert sorted(t.user_attrs["cmcr.slot"] for t in trials) == list(range(n))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == n


@pytest.mark.postgres
def test_two_processes_share_a_postgres_study(tmp_path, smoke_world, postgres):
    name = f"pg-{uuid.uuid4().hex[:10]}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, RUN, "--study", "mask_ratio", "--name", name, "--n-trials", "4",
        "--preset", "smoke", "--storage", PG_WITH_PASSWORD, "--tracking-uri", tracking,
        "--set", f"data.dataroot={smoke_world}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
        *FAST,
    ]  # fmt: skip
    try:
        procs = [
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path,
                env=_env(),
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
        study = optuna.load_study(study_name=name, storage=postgres)
        _assert_exactly_once(study, 4)
        workers = {t.user_attrs["cmcr.worker"].split(":")[1] for t in study.trials}
        assert workers == {str(p.pid) for p in procs}  # both processes ran trials
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking)
        exp = client.get_experiment_by_name(name)  # one experiment per study
        parents = client.search_runs([exp.experiment_id], "tags.`cmcr.kind` = 'study'")
        assert len(parents) == 1  # two processes, one parent run
        runs = client.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
        )
        assert len(runs) == 4
        for run in [*parents, *runs]:
            text = repr(run.data.params) + repr(run.data.tags)
            assert "s3cret" not in text
        assert (
            parents[0].data.tags["optuna.storage"]
            == "postgresql://postgres:***@127.0.0.1:5432/test"
        )
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=postgres)


def test_workers_2_on_the_embedded_default(tmp_path, smoke_world):
    env = _env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded defaults, relative to the checkout
    cmd = [
        sys.executable, RUN, "--study", "mask_ratio", "--n-trials", "4", "--workers", "2",
        "--preset", "smoke", "--set", f"data.dataroot={smoke_world}", *FAST,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "runs" / "optuna.db").is_file() and (
        tmp_path / "runs" / "mlflow.db"
    ).is_file()
    study = optuna.load_study(
        study_name="mask_ratio", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    )
    _assert_exactly_once(study, 4)
    assert len({t.user_attrs["cmcr.worker"] for t in study.trials}) == 2  # both workers ran trials
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "sweep-logs").rglob("*.log"))
    assert "database is locked" not in logs + out.stdout + out.stderr


def test_workers_2_sqlite_under_contention(tmp_path):
    """Many near-instant trials (training replaced through tests/sweep_with_trial_fn.py) make both workers
    hit the SQLite file constantly: still no lock error, no lost or doubled trial."""
    hook = tmp_path / "noop_trial.py"
    hook.write_text(
        "from cmcr.engine.downstream import DownstreamResult\n"
        "def run(cfg, *, run_id=None, parent_run_id=None, tags=None, report=None):\n"
        "    if report: report(0, cfg.data.mask_ratio)\n"
        "    return DownstreamResult(run_id, cfg.data.mask_ratio, 0.0, {})\n"
    )
    env = _env(PYTHONPATH=str(tmp_path))
    cmd = [
        sys.executable, WITH_TRIAL_FN, "noop_trial:run", "--study", "mask_ratio", "--n-trials", "30", "--workers", "2", "--pruner", "none",
        "--preset", "smoke", "--storage", f"sqlite:///{tmp_path / 'o.db'}",
        "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = optuna.load_study(study_name="mask_ratio", storage=f"sqlite:///{tmp_path / 'o.db'}")
    _assert_exactly_once(study, 30)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "sweep-logs").rglob("*.log"))
    assert "database is locked" not in logs + out.stdout + out.stderr


@pytest.mark.postgres
def test_workers_starting_together_on_an_empty_postgres_database_all_open_it(postgres):
    """Optuna creates its tables on first use; four workers doing that at the same moment on an
    empty database must all succeed (without the schema lock one fails with a unique
    violation on pg_type_typname_nsp_index)."""
    import threading

    import sqlalchemy

    from cmcr.tracking.optuna_store import open_storage

    db = f"cmcr_schema_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_DRIVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
    url = PG.rsplit("/", 1)[0] + f"/{db}"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    storages: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            storages.append(open_storage(url))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert len(storages) == 4
        optuna.create_study(study_name="after-race", storage=storages[0])
        assert optuna.get_all_study_names(storage=storages[1]) == ["after-race"]
    finally:
        for s in storages:
            s.engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
