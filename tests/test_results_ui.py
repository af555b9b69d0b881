"""``cmcr ui``: the real MLflow server on a scratch store, queried through its REST API."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from waiting import stop_process

from cmcr.errors import TrackingError
from cmcr.results import fake_runs, ui


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ui.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_print_command_redacts_password(capsys) -> None:
    """A store URL with a password is printed with *** (the server gets the real one)."""
    args = _args(tracking_uri="postgresql://cmcr:s3cret@127.0.0.1:5432/test")
    args.print_command = True
    assert ui.run(args) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "postgresql://cmcr:***@127.0.0.1:5432/test" in out
    assert "--host 127.0.0.1 --port 5000" in out
    # the store reaches the server in its environment, never on its command line (ps)
    assert "MLFLOW_BACKEND_STORE_URI=$MLFLOW_BACKEND_STORE_URI" in out
    assert "--backend-store-uri" not in out


def test_server_gets_the_store_in_its_environment_not_argv() -> None:
    """The real URL (password included) is in the server's env; its argv holds no URL."""
    uri = "postgresql://cmcr:s3cret@127.0.0.1:5432/test"
    cmd = ui.server_command("127.0.0.1", 5000, "runs/mlartifacts")
    assert not any("s3cret" in c or "postgresql" in c for c in cmd)
    assert ui.server_env(uri)["MLFLOW_BACKEND_STORE_URI"] == uri


def test_non_loopback_host_warns(capsys, tmp_path: Path) -> None:
    """Binding beyond loopback prints a warning; loopback does not."""
    db = tmp_path / "m.db"
    sqlite3.connect(db).execute("CREATE TABLE experiments (id INTEGER)").connection.close()
    args = _args(tracking_uri=f"sqlite:///{db}", host="0.0.0.0")
    args.print_command = True
    ui.run(args)
    assert "not loopback" in capsys.readouterr().err
    assert ui.is_loopback("127.0.0.1") and ui.is_loopback("::1") and ui.is_loopback("localhost")
    assert not ui.is_loopback("0.0.0.0") and not ui.is_loopback("192.168.1.4")


def test_missing_store_is_an_error(tmp_path: Path) -> None:
    """No store file: a clear error, nothing created."""
    with pytest.raises(TrackingError, match="does not exist"):
        ui.run(_args(tracking_uri=f"sqlite:///{tmp_path / 'none.db'}"))
    assert not (tmp_path / "none.db").exists()


def _get(url: str, data: dict | None = None, timeout: float = 5.0) -> bytes:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def test_server_lists_study_runs(tmp_path: Path) -> None:
    """``cmcr ui`` starts mlflow server; /api/2.0/mlflow/runs/search lists the study's runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    info = fake_runs.log_components_sweep(client, "cmcr", seeds=(0,), extra_unfinished=False)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmcr.cli", "ui", "--tracking-uri", uri, "--port", str(port),
         "--artifacts", str(tmp_path / "art"), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/health") == b"OK":
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
        found = json.loads(_get(f"{base}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [info["experiment_id"]],
            "filter": "tags.\"optuna.study\" = 'components' and tags.\"cmcr.kind\" = 'trial'",
            "max_results": 1000}, timeout=60))  # fmt: skip
        runs = found.get("runs", [])
        assert len(runs) == info["n_trials"] == 8
        variants = {
            t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "cmcr.variant"
        }
        assert "cmcr-mim" in variants and "random" in variants
    finally:
        # cmcr ui stops its server's process group; SIGKILL to the group after the bound
        graceful = stop_process(proc, signal.SIGTERM, grace=60, group=False)
    assert graceful, "cmcr ui did not exit on SIGTERM (killed)"
    out = proc.stdout.read()
    assert f"MLflow UI: http://127.0.0.1:{port}" in out
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"{base}/health", timeout=2)


# A stand-in for ``mlflow server``: listens only after DELAY_S, answers every GET, then exits.
FAKE_SERVER = """
import http.server, sys, threading, time
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
threading.Timer(3.0, srv.shutdown).start()
srv.serve_forever()
"""


def test_links_are_printed_only_once_the_server_answers(tmp_path: Path, monkeypatch) -> None:
    """Issue 32: the link was printed ~35 s before MLflow listened. With a server that listens
    only after 1.5 s, each printed link's host answers at the moment it is printed, and the
    link opens the study's runs view (its experiment, the saved view, the training side)."""
    from cmcr.tracking.study import prepare_study_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    exp_id = prepare_study_experiment(uri, "loss_weights", study="loss_weights",
                                      objective="val/miou", direction="maximize",
                                      params=["loss.weights.mim"])  # fmt: skip
    port = _free_port()
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    monkeypatch.setattr(ui, "server_command",
                        lambda *a, **k: [sys.executable, str(script), str(port), "1.5"])  # fmt: skip
    printed: list[tuple[str, bool]] = []

    def answers() -> bool:
        try:
            return _get(f"http://127.0.0.1:{port}/", timeout=2) == b"OK"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def record(*args, **kwargs) -> None:
        text = " ".join(str(a) for a in args)
        printed.append((text, answers() if "http://" in text else True))

    monkeypatch.setattr(ui, "print", record, raising=False)
    assert ui.run(_args(tracking_uri=uri, port=port, study="loss_weights",
                        artifacts=str(tmp_path / "art"))) == 0  # fmt: skip
    links = [(t, ok) for t, ok in printed if "#/experiments/" in t]
    assert links, printed
    assert all(ok for _, ok in printed), printed  # nothing with a URL before the server answered
    ((text, _),) = links
    assert "study loss_weights:" in text
    assert f"#/experiments/{exp_id}/runs?viewStateShareKey=cmcr-study" in text
    assert "workflowType=machine_learning" in text


def test_unknown_study_lists_the_studies_before_any_server(tmp_path: Path) -> None:
    """--study NAME that the store does not hold: one line naming the studies there are."""
    from cmcr.tracking.study import prepare_study_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("cmcr", artifact_location=str(tmp_path / "art"))
    prepare_study_experiment(uri, "components", study="components", objective="val/miou",
                             direction="maximize", params=[])  # fmt: skip
    with pytest.raises(TrackingError, match=r"no study 'nope' .*\(studies: components\)"):
        ui.run(_args(tracking_uri=uri, study="nope", port=_free_port()))


def test_a_server_that_ignores_sigterm_is_killed_within_5_s() -> None:
    """Issue 29: servers we start exit within 5 s of SIGTERM. `cmcr ui` gives `mlflow server`'s
    process group 3 s after SIGTERM (it waited 10), then SIGKILL."""
    import subprocess
    import sys
    import time

    from cmcr.results import ui

    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)  # its handler is installed
    t0 = time.monotonic()
    ui._stop(proc)
    assert proc.poll() is not None and time.monotonic() - t0 < 5.0
