"""``cmcr dashboard``: optuna-dashboard on a study's storage, bound to 127.0.0.1, the storage
URL taken from the environment (never the command line), a page fetched over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import optuna
import pytest
from waiting import communicate_or_kill, free_port, stop_process

from cmcr.names import STORAGE_ENV
from cmcr.results import dashboard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="live", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("loss.weights.mim", 0.1, 4.0), n_trials=3)
    return url


def test_serves_the_study_on_loopback(storage: str) -> None:
    """Started as a user would (`python -m cmcr.cli dashboard --study live`), it prints the
    study's page, which answers, and its API lists the study's trials; the storage URL is in
    the environment only."""
    port = free_port()
    cmd = [sys.executable, "-m", "cmcr.cli", "dashboard", "--study", "live", "--port", str(port)]
    env = {**os.environ, STORAGE_ENV: storage, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once the socket is bound
        assert f"http://127.0.0.1:{port}/dashboard/studies/" in line, proc.stderr.read()
        assert not any(storage in c for c in cmd)
        page = line.split()[1]
        with urllib.request.urlopen(page, timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["live"]
    finally:
        # SIGTERM, then SIGKILL after the bound: the server never outlives the test
        graceful = stop_process(proc, signal.SIGTERM, grace=60)
    assert graceful, "the dashboard did not exit on SIGTERM (killed)"
    assert proc.returncode == 0


SIGNALLED_MID_REQUEST = """
import os, signal, sys, time
from wsgiref.simple_server import make_server
from cmcr.results import dashboard

def app(environ, start_response):  # the signal lands while a request is being served
    os.kill(os.getpid(), signal.SIG{name})
    time.sleep(0.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

server = make_server("127.0.0.1", {port}, app, handler_class=dashboard._QuietHandler)
print("ready", flush=True)
dashboard.serve(server)
print("stopped", flush=True)
"""


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_signal_during_a_request_stops_the_server(name: str) -> None:
    """SIGTERM or Ctrl-C arriving while a request is served stops the server (wsgiref's
    handler swallows an exception raised there, so raising KeyboardInterrupt kept it running)."""
    port = free_port()
    code = SIGNALLED_MID_REQUEST.format(name=name, port=port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
                r.read()
        except OSError:
            pass  # the answer may or may not make it out; the point is the exit below
        out, err = communicate_or_kill(proc, 30)
    finally:
        stop_process(proc, signal.SIGKILL, grace=1)
    assert proc.returncode == 0 and out.strip() == "stopped", err


def test_unknown_study_is_one_line_before_serving(storage: str, capsys) -> None:
    """A wrong name: exit 2 naming it and the studies there; nothing is served."""
    from cmcr.cli import main

    assert main(["dashboard", "--study", "nope", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "(studies: live)" in err


def test_missing_store_and_password_stay_out(tmp_path: Path, monkeypatch, capsys) -> None:
    """A missing sqlite file is named; a URL from the environment is used as given."""
    from cmcr.cli import main

    assert main(["dashboard", "--study", "x", "--storage", f"sqlite:///{tmp_path}/no.db"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv(STORAGE_ENV, "postgresql://cmcr:s3cret@127.0.0.1:5432/test")
    assert dashboard.storage_url("") == "postgresql://cmcr:s3cret@127.0.0.1:5432/test"
    assert dashboard.storage_url("sqlite:///a.db") == "sqlite:///a.db"


def test_binds_loopback_by_default(storage: str) -> None:
    """The default host is 127.0.0.1 and the server listens there only."""
    import argparse

    parser = argparse.ArgumentParser()
    dashboard.add_arguments(parser)
    args = parser.parse_args(["--study", "live"])
    assert args.host == "127.0.0.1"
    store, _ = dashboard.open_study(storage, "live")
    server = dashboard.make_dashboard(store, args.host, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_dashboard_names_the_objective_and_links_each_trial_to_its_runs(tmp_path: Path) -> None:
    """Issue 32: optuna-dashboard showed 'Objective 0' and no way to a trial's MLflow run. After
    ``label_study`` its API gives the objective as val/miou and each finished trial a note
    linking every seed's run in the MLflow UI, with the seed's mIoU in %; a second start writes
    nothing, and a trial with a note of its own keeps it."""
    from optuna_dashboard import get_note, save_note

    from cmcr.names import Attr

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="weights", storage=url, direction="maximize")
    dist = {"w": optuna.distributions.FloatDistribution(0.0, 2.0)}
    for n in range(3):
        study.add_trial(optuna.trial.create_trial(
            params={"w": 0.5 * n}, distributions=dist, value=0.07 + 0.001 * n,
            user_attrs={Attr.RUN_IDS: {"0": f"run{n}a", "1": f"run{n}b"},
                        Attr.SEED_RESULTS: {"0": 0.0762, "1": 0.0751}}))  # fmt: skip
    storage, study_id = dashboard.open_study(url, "weights")
    own = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, 2))
    save_note(own, "my own note")
    assert dashboard.label_study(storage, "weights", "http://127.0.0.1:5000") == 2
    assert dashboard.label_study(storage, "weights", "http://127.0.0.1:5000") == 0
    assert get_note(own) == "my own note"
    server = dashboard.make_dashboard(storage, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_port}/api/studies/{study_id}?after=0"
        with urllib.request.urlopen(api, timeout=30) as r:
            detail = json.loads(r.read())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert detail["objective_names"] == ["val/miou"]
    note = detail["trials"][0]["note"]["body"]
    assert "[run0a](http://127.0.0.1:5000/#/runs/run0a)" in note and "7.62 %" in note
    assert "[run0b](http://127.0.0.1:5000/#/runs/run0b)" in note
