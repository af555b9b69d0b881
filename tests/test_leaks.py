"""Nothing leaked (issue 14): passwords in the tracking URI and the storage URL never reach
stdout, stderr, MLflow (params, tags, artifacts), Optuna attributes, files the run writes, or
the command lines of child processes (``ps`` shows those to every local user).

The MLflow server runs without authentication and PostgreSQL trusts local connections, so both
ignore the passwords: they are there only to be looked for.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_redact import FORMS
from test_topology import stop_group

from cmcr.sweep import options as sweep_options
from cmcr.sweep.options import SweepOptions
from cmcr.uris import RedactingFilter, print_traceback, public_url

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "sweeps" / "run.py")
SECRET, SECRET2 = "SECRETpw14", "SECRET2qs14"
PG_USERINFO = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"
PG_QUERY = f"postgresql://postgres@127.0.0.1:5432/test?password={SECRET2}"
FAST = ["train.max_steps=2", "downstream.probe_epochs=1", "tracking.system_metrics=false"]
SERVER_START_S = 90
FIVE = {form: f"{form.split('-')[0].upper()}x28" for form in FORMS}  # a secret per form


# ---- units: argv / env of spawned workers, logging, tracebacks ------------------------------
def _worker_opts() -> SweepOptions:
    return SweepOptions(
        study="mask_ratio",
        storage=PG_USERINFO,
        tracking_uri=f"http://u:{SECRET}@127.0.0.1:9",
        workers=2,
        overrides=["train.max_steps=2", f"tracking.tracking_uri=http://u:{SECRET2}@h:1"],
    )


def test_worker_argv_holds_no_url_and_its_env_does() -> None:
    opts = _worker_opts()
    argv = sweep_options.worker_args(opts)
    assert not any(SECRET in a or SECRET2 in a or "://" in a for a in argv), argv
    assert "--worker" in argv and "train.max_steps=2" in argv and "--study" in argv
    env = sweep_options.worker_env(opts, base={"PATH": "/bin"})
    assert env["CMCR_SWEEP_STORAGE"] == PG_USERINFO
    assert env["MLFLOW_TRACKING_URI"] == opts.tracking_uri  # --tracking-uri wins over --set
    assert env["CMCR_SWEEP_TRACKING_URI"] == opts.tracking_uri


def test_a_worker_reads_the_urls_back_from_its_env(monkeypatch) -> None:
    opts = _worker_opts()
    for key, value in sweep_options.worker_env(opts, base={}).items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    sweep_options.add_arguments(parser)
    back = sweep_options.sweep_options(parser.parse_args(sweep_options.worker_args(opts)))
    assert back.storage == opts.storage and back.tracking_uri == opts.tracking_uri
    # the --set holding a URI left the argv; the environment brings every override back
    assert back.overrides == opts.overrides and back.study == "mask_ratio"


def test_set_tracking_uri_moves_to_the_env_when_no_flag_names_one() -> None:
    opts = _worker_opts()
    opts.tracking_uri = None
    env = sweep_options.worker_env(opts, base={"CMCR_SWEEP_TRACKING_URI": "stale"})
    assert env["MLFLOW_TRACKING_URI"] == f"http://u:{SECRET2}@h:1"
    opts.overrides = []
    assert "CMCR_SWEEP_TRACKING_URI" not in sweep_options.worker_env(opts, base={"X": "1"})


def test_a_printed_link_drops_the_credentials_and_the_query() -> None:
    """``public_url``: what a browser is sent to holds no user, password or query."""
    assert public_url(f"https://bob:{SECRET}@mlflow.example:8443/base/?token={SECRET}") == (
        "https://mlflow.example:8443/base"
    )
    assert public_url("http://[::1]:5000") == "http://[::1]:5000"


def test_log_lines_and_their_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test_leaks")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"cannot reach {PG_USERINFO}")
        except RuntimeError:
            log.exception("storage %s failed", PG_QUERY)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and SECRET2 not in text
    assert "postgres:***@" in text and "password=***" in text and "RuntimeError" in text


def test_an_unexpected_traceback_is_printed_redacted(capsys) -> None:
    try:
        raise ValueError(f"bad {PG_USERINFO}")
    except ValueError:
        print_traceback("cmcr pretrain")
    err = capsys.readouterr().err
    assert SECRET not in err and "Traceback" in err and "postgres:***@" in err


# ---- a real MLflow server -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a tmp SQLite file, serving artifacts; yields its plain URL."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--artifacts-destination", str(tmp / "mlartifacts"), "--serve-artifacts"]
    cmd += ["--workers", "1"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)
        log.close()


def _with_userinfo(url: str, secret: str) -> str:
    return url.replace("http://", f"http://user:{secret}@")


def test_mlflow_view_run_line_is_switched_off(mlflow_server, capfd, monkeypatch) -> None:
    """MLflow prints 'View run ... at: <URI>' when a run on a server ends; ours does not."""
    from mlflow.tracking import MlflowClient

    from cmcr.tracking.runs import end_run
    from cmcr.tracking.store import make_client

    uri = _with_userinfo(mlflow_server, SECRET)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    raw = MlflowClient(uri)  # control: MLflow's own behaviour, which the test must catch
    exp = raw.create_experiment(f"view-{uuid.uuid4().hex[:8]}")
    raw.set_terminated(raw.create_run(exp).info.run_id)
    assert "View run" in capfd.readouterr().out
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    client = make_client(uri)
    run_id = client.create_run(exp).info.run_id
    end_run(uri, run_id, "FINISHED", client=client)
    out = capfd.readouterr().out
    assert "View run" not in out and SECRET not in out
    assert client.get_run(run_id).info.status == "FINISHED"  # the userinfo URL works


# ---- end to end -----------------------------------------------------------------------------
def _env(tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "CMCR_SWEEP_STORAGE"):
        env.pop(key, None)
    return env


def _grep_tree(folder: Path, secrets: tuple[str, ...], skip: str = "") -> list[str]:
    """Files under ``folder`` (but its subfolder ``skip``) whose bytes contain a secret."""
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not (skip and path.is_relative_to(folder / skip)):
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return hits


def _mlflow_leaks(url: str, tmp: Path, secrets: tuple[str, ...]) -> tuple[list[str], int]:
    """Every run of every experiment on the server: params, tags, downloaded artifacts."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    hits, n_runs = [], 0
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            n_runs += 1
            text = repr(run.data.params) + repr(run.data.tags) + repr(run.info)
            hits += [f"run {run.info.run_id} params/tags: {s}" for s in secrets if s in text]
            dest = tmp / "artifacts" / run.info.run_id
            dest.mkdir(parents=True, exist_ok=True)
            if client.list_artifacts(run.info.run_id):
                download_artifacts(run_id=run.info.run_id, dst_path=str(dest), tracking_uri=url)
            hits += _grep_tree(dest, secrets)
    return hits, n_runs


def _optuna_leaks(storage: str, name: str, secrets: tuple[str, ...]) -> tuple[list[str], int]:
    import optuna

    from cmcr.tracking.optuna_store import driver_url

    rdb = optuna.storages.RDBStorage(driver_url(storage))
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        text = repr(study.user_attrs)
        text += repr(rdb.get_study_system_attrs(rdb.get_study_id_from_name(name)))
        trials = study.get_trials()
        for t in trials:
            text += repr(t.user_attrs) + repr(t.system_attrs) + repr(t.params)
    finally:
        optuna.delete_study(study_name=name, storage=rdb)
    return [f"study {name} attrs: {s}" for s in secrets if s in text], len(trials)


def _run_sampling_ps(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[str, str, list]:
    """Run ``cmd``; meanwhile sample every other process's command line every 0.2 s."""
    out, err = open(cwd / "stdout.txt", "w+"), open(cwd / "stderr.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd, text=True)
    samples: list[str] = []
    deadline = time.monotonic() + 900
    while proc.poll() is None:
        assert time.monotonic() < deadline, "sweep did not finish"
        ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        # the sweep's own argv is the test's choice (--storage); its children are the product
        samples += [ln for ln in ps.splitlines() if ln.split(None, 1)[0] != str(proc.pid)]
        time.sleep(0.2)
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    out.close(), err.close()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return stdout, stderr, samples


def _five_forms(server: str, folder: Path) -> tuple[list[str], dict[str, str], str, str]:
    """Issue 28: the five URL forms that got past the regex redaction, planted in one sweep
    through every channel a URL comes in. Returns (argv, env, storage, the URI it logs to).

    The storage (a password with '/') comes from $CMCR_SWEEP_STORAGE, no --storage; the
    tracking URI the runs use is the token-as-user one, given as a ``tracking={...}`` mapping
    (workers must receive it through their environment); an empty-user URI comes earlier with a
    key spelled with spaces; the study file's ``fixed:`` holds a secret query parameter and a
    percent-encoded one (stored in ``cmcr.definition``). Every one is looked for everywhere.
    """
    host = server.split("://", 1)[1]
    storage = f"postgresql://postgres:{FIVE['slash-password']}/x@127.0.0.1:5432/test"
    tracking = f"http://{FIVE['token-as-user']}@{host}"
    fixed = f"http://{host}/?auth_token={FIVE['query-param']}&pass%77ord={FIVE['percent-encoded']}"
    study = folder / "five.yaml"
    study.write_text((ROOT / "sweeps" / "studies" / "mask_ratio.yaml").read_text()
                     + f"fixed:\n  tracking.tracking_uri: '{fixed}'\n")  # fmt: skip
    argv = ["--study", str(study), "--set", f" tracking.tracking_uri =http://:{FIVE['empty-user']}@{host}",
            "--set", f"tracking={{tracking_uri: '{tracking}', system_metrics: false}}"]  # fmt: skip
    return argv, {"CMCR_SWEEP_STORAGE": storage}, storage, tracking


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("case", "workers", "n_trials"),
    [("five-forms", 2, 2), ("query-password", 1, 1)],
    ids=["five-forms-workers2", "query-password"],
)
def test_a_sweep_leaks_no_password(
    tmp_path, smoke_world, mlflow_server, case, workers, n_trials
) -> None:
    name = f"leaks-{uuid.uuid4().hex[:8]}"
    sets = [f"data.dataroot={smoke_world}", f"tracking.output_dir={tmp_path / 'runs'}", *FAST]
    cmd = [sys.executable, RUN, "--name", name, "--preset", "smoke", "--n-trials",
           str(n_trials), "--workers", str(workers), "--pruner", "none"]  # fmt: skip
    for item in sets:
        cmd += ["--set", item]
    if case == "five-forms":
        (tmp_path / "in").mkdir()  # the study file holds a secret by design: not searched
        argv, extra, storage, tracking = _five_forms(mlflow_server, tmp_path / "in")
        secrets = tuple(FIVE.values())
    else:  # a percent-encoded parameter name: SQLAlchemy decodes it to 'password'
        storage, secret = f"{PG_QUERY.split('?')[0]}?pass%77ord={SECRET2}", SECRET2
        tracking, extra, secrets = _with_userinfo(mlflow_server, secret), {}, (secret,)
        argv = ["--study", "mask_ratio", "--storage", storage, "--tracking-uri", tracking]
    stdout, stderr, samples = _run_sampling_ps(cmd + argv, {**_env(tracking), **extra}, tmp_path)
    leaked = [s for s in secrets if s in stdout + stderr]
    assert not leaked, (leaked, (stdout + stderr)[-3000:])
    assert "***" in stdout  # the study line names the storage, redacted
    children = [s for s in samples if "cmcr.sweep" in s or "--worker" in s]
    if workers > 1:
        assert children, "no worker process was sampled"
    in_ps = [s for s in samples if any(x in s for x in secrets)]
    assert not in_ps, in_ps[:3]
    hits, n_trials_stored = _optuna_leaks(storage, name, secrets)
    assert n_trials_stored == n_trials and not hits, hits
    mlflow_hits, n_runs = _mlflow_leaks(mlflow_server, tmp_path, secrets)
    assert n_runs >= n_trials + 1 and not mlflow_hits, mlflow_hits
    # checkpoints, configs, worker logs, the report (HTML, CSV), the downloaded artifacts
    assert (tmp_path / "reports").is_dir() and not _grep_tree(tmp_path, secrets, skip="in")


@pytest.mark.postgres
def test_cmcr_pretrain_leaks_no_password(tmp_path, smoke_world, mlflow_server) -> None:
    tracking = _with_userinfo(mlflow_server, SECRET)
    # in the config this time (not the env): the config is logged as params and config.yaml
    sets = [f"data.dataroot={smoke_world}", f"tracking.output_dir={tmp_path / 'runs'}", *FAST]
    sets.append(f"tracking.tracking_uri={tracking}")
    cmd = [sys.executable, "-m", "cmcr.cli", "pretrain", "--config", "smoke", "--set", *sets]
    env = _env("sqlite:///nowhere.db")
    env.pop("MLFLOW_TRACKING_URI")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr and "View run" not in out.stdout
    run_id = out.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.tracking_uri"] == mlflow_server.replace("//", "//***@")
    hits, n_runs = _mlflow_leaks(mlflow_server, tmp_path, (SECRET,))
    assert n_runs >= 1 and not hits, hits
    assert not _grep_tree(tmp_path / "runs", (SECRET,))
