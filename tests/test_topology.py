"""The compose topology without Docker: an MLflow server on PostgreSQL, two sweep workers.

Same shape as docker/compose.yaml: a real ``mlflow server`` process (PostgreSQL backend, proxied
artifacts) and two independent ``python sweeps/run.py`` processes sharing one Optuna study on
PostgreSQL and logging through the server. Fresh databases per test, dropped at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from waiting import stop_process

ROOT = Path(__file__).resolve().parent.parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
N_TRIALS = 4
SERVER_START_S = 120
BARRIER_ENV = "CMCR_TOPOLOGY_BARRIER"
BARRIER_WAIT_S = 90

pytestmark = pytest.mark.postgres


def _admin_connection():
    """Autocommit connection to the `test` database (CREATE/DROP DATABASE need autocommit)."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 unreachable: {exc}")
    conn.autocommit = True
    return conn


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases (mlflow, optuna), dropped afterwards even if the test failed."""
    conn = _admin_connection()
    tag = secrets.token_hex(4)
    names = (f"mlflow_topo_{tag}", f"optuna_topo_{tag}")
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose_allowed_hosts() -> str:
    """MLFLOW_SERVER_ALLOWED_HOSTS exactly as docker/compose.yaml gives the mlflow service."""
    cfg = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return cfg["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(port: int, path: str, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data)
    finally:
        conn.close()


def stop_group(proc: subprocess.Popen) -> None:
    """End a process group this test started (the server forks its own workers)."""
    stop_process(proc, signal.SIGTERM, grace=20)  # then SIGKILL: nothing outlives the test


@pytest.fixture
def mlflow_server(databases: tuple[str, str], tmp_path: Path) -> Iterator[int]:
    """`mlflow server` on the fresh PostgreSQL database, proxying artifacts to a tmp dir."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": _compose_allowed_hosts()}
    cmd = [sys.executable, "-m", "mlflow", "server"]
    cmd += ["--backend-store-uri", PG_URL.format(db=databases[0])]
    cmd += ["--artifacts-destination", str(tmp_path / "mlartifacts"), "--serve-artifacts"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if _get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        yield port
    finally:
        stop_group(proc)
        log.close()


def light_trial(cfg, *, run_id, parent_run_id, tags, report):  # noqa: ANN001, ANN201
    """Stand-in for run_trial (injected by tests/sweep_with_trial_fn.py): no training.

    It meets the other worker first (a file barrier, so both hold a trial at once: the
    concurrency under test), logs val/miou through the tracking server and ends the run.
    The value is a function of the trial's params, so Optuna's bookkeeping is exercised.
    """
    from types import SimpleNamespace

    from cmcr.tracking.store import make_client, resolve_tracking_uri

    barrier = Path(os.environ[BARRIER_ENV])
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_WAIT_S
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    w = cfg.loss.weights
    miou = 1.0 / (1.0 + abs(w.mim - 1.0) + abs(w.occ - 1.0))
    client = make_client(resolve_tracking_uri(cfg))
    client.log_metric(run_id, "val/miou", miou, step=0)
    client.set_terminated(run_id, status="FINISHED")
    report(0, miou)
    return SimpleNamespace(run_id=run_id, miou=miou)


def _run_workers(
    port: int,
    storage: str,
    world: Path,
    n_trials: int,
    tmp_path: Path,
    extra_env: dict,
    timeout: int,
    trial_fn: str | None = None,
) -> None:
    """Two `python sweeps/run.py` processes on one study, each in its own working directory
    (with ``trial_fn``: the test entry point that injects that stand-in for run_trial)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", **extra_env}
    script = [str(ROOT / "sweeps" / "run.py")]
    if trial_fn is not None:
        script = [str(ROOT / "tests" / "sweep_with_trial_fn.py"), trial_fn]
    cmd = [sys.executable, *script, "--study", "loss_weights"]
    cmd += ["--preset", "smoke", "--n-trials", str(n_trials), "--storage", storage]
    cmd += ["--pruner", "none", "--set", f"data.dataroot={world}"]
    # compose's optuna-init step: the schema exists before the workers race to create it
    init = [sys.executable, str(ROOT / "docker" / "init_optuna.py"), storage]
    subprocess.run(init, check=True, env=env, capture_output=True, timeout=120)
    procs = []
    try:
        for k in range(2):
            workdir = tmp_path / f"worker{k}"  # own runs/: nothing shared but the two servers
            workdir.mkdir()
            log = workdir / "worker.log"
            with log.open("w") as fh:
                proc = subprocess.Popen(
                    cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            procs.append((proc, log))
        deadline = time.monotonic() + timeout
        for proc, log in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, log.read_text()[-3000:]
            # MLflow's "View run ... at: <server URL>" line is switched off (issue 14)
            assert "View run" not in log.read_text()
    finally:
        for proc, _ in procs:
            stop_group(proc)


def _check_study_and_runs(port: int, storage: str, n_trials: int) -> dict[str, dict]:
    """n COMPLETE trials, distinct numbers, both workers; 1 parent + n FINISHED child runs."""
    import optuna

    study = optuna.load_study(study_name="loss_weights", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))  # no duplicate numbers
    workers = {t.user_attrs.get("cmcr.worker") for t in trials}
    assert len(workers) == 2, f"both processes should have run trials: {workers}"
    parent_id = study.user_attrs["mlflow_parent_run_id"]

    experiments = _post(port, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    exp_ids = [e["experiment_id"] for e in experiments["experiments"]]
    runs = _post(
        port, "/api/2.0/mlflow/runs/search", {"experiment_ids": exp_ids, "max_results": 1000}
    ).get("runs", [])

    def tags(run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get("cmcr.kind") == "study"]
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent_id]
    assert [r["info"]["run_id"] for r in parents] == [parent_id]
    assert parents[0]["info"]["status"] == "FINISHED"
    assert len(children) == n_trials and len(runs) == n_trials + 1
    assert sorted(int(tags(r)["optuna.trial"]) for r in children) == list(range(n_trials))
    values = {t.user_attrs["mlflow_run_id"]: t.value for t in trials}
    assert set(values) == {r["info"]["run_id"] for r in children}
    for run in children:
        assert run["info"]["status"] == "FINISHED", run["info"]
        assert tags(run)["cmcr.kind"] == "trial"
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        assert metrics["val/miou"] == pytest.approx(values[run["info"]["run_id"]])
    return {r["info"]["run_id"]: r for r in children}


def _check_allowed_hosts(port: int) -> None:
    """The compose allow-list: the service name and private addresses pass, others get 403."""
    api = "/api/2.0/mlflow/experiments/search?max_results=1"  # /health skips the check
    assert _get(port, api, host="mlflow:5000")[0] == 200
    assert _get(port, api, host="10.8.0.1:5000")[0] == 200
    assert _get(port, api, host="evil.example:5000")[0] == 403


def test_two_workers_share_one_study_through_the_mlflow_server(
    mlflow_server: int, databases: tuple[str, str], smoke_world: Path, tmp_path: Path
):
    """4 trials COMPLETE with distinct numbers across 2 concurrent workers; 1 parent + 4 child
    runs on the server (which takes compose's allowed hosts). Trials are the light stand-in;
    the slow test below trains for real."""
    _check_allowed_hosts(mlflow_server)
    storage = PG_URL.format(db=databases[1])
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {BARRIER_ENV: str(barrier)}
    _run_workers(
        mlflow_server, storage, smoke_world, N_TRIALS, tmp_path, env, timeout=240,
        trial_fn="test_topology:light_trial",
    )  # fmt: skip
    assert len(list(barrier.iterdir())) == 2  # two worker processes each ran trials
    _check_study_and_runs(mlflow_server, storage, N_TRIALS)


@pytest.mark.slow
def test_two_workers_train_real_smoke_trials_through_the_mlflow_server(
    mlflow_server: int, databases: tuple[str, str], smoke_world: Path, tmp_path: Path
):
    """The same topology with real smoke trials (pre-training + probe), one per worker;
    each trial's backbone reaches the server's proxied artifact store."""
    storage = PG_URL.format(db=databases[1])
    _run_workers(mlflow_server, storage, smoke_world, 2, tmp_path, {}, timeout=900)
    children = _check_study_and_runs(mlflow_server, storage, 2)
    artifacts = tmp_path / "mlartifacts"
    for run_id in children:
        assert list(artifacts.rglob(f"{run_id}/artifacts/backbone.pt")), run_id
