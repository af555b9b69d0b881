"""``cmcr ui``: the MLflow UI on the embedded store, bound to 127.0.0.1 by default.

Equivalent plain command: ``MLFLOW_BACKEND_STORE_URI=sqlite:///runs/mlflow.db mlflow server``
(the default store, ``cmcr.names.DEFAULT_TRACKING_URI``). The store URL goes to the server in
that environment variable, which ``mlflow server`` reads, and never on its command line: a URL
with a password would be visible in ``ps`` to every user of the machine.

The links are printed once the server answers (``/health``; MLflow takes ~35 s to start on a
loaded machine, and a link printed earlier opens on "connection refused"), and they open the
runs table of each study's experiment in its saved view (or of ``--study`` alone), on MLflow's
model-training side: MLflow 3's root page is its GenAI welcome page.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cmcr.errors import TrackingError
from cmcr.names import (
    BACKEND_STORE_ENV,
    DEFAULT_ARTIFACTS,
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    TRACKING_URI_ENV,
    UI_WORKFLOW_QUERY,
    ExpTag,
    Kind,
    Tag,
)
from cmcr.tracking.databases import driver_url
from cmcr.tracking.store import check_readable, client_for
from cmcr.tracking.study import ui_urls
from cmcr.uris import redact, tracking_uri

START_TIMEOUT_S = 300.0  # MLflow's server took ~35 s to listen on a machine at load 5-18
POLL_S = 0.5
MAX_LINKS = 10  # study links printed without --study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cmcr ui``."""
    parser.add_argument("--tracking-uri", default="",
                        help=f"store (default: ${TRACKING_URI_ENV} or {DEFAULT_TRACKING_URI})")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the runs)")  # fmt: skip
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                        help=f"artifact root of new experiments (default {DEFAULT_ARTIFACTS})")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2,
                        help="server worker processes (default 2: a UI for one person)")  # fmt: skip
    parser.add_argument("--study", default=None,
                        help="print the link to this study's runs (default: every study's)")  # fmt: skip
    parser.add_argument("--print-command", action="store_true",
                        help="print the mlflow command (password redacted) and exit")  # fmt: skip


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_command(host: str, port: int, artifacts: str, workers: int = 2) -> list[str]:
    """The ``mlflow server`` command line (the store comes from ``server_env``)."""
    return [sys.executable, "-m", "mlflow", "server",
            "--default-artifact-root", artifacts, "--artifacts-destination", artifacts,
            "--host", host, "--port", str(port), "--workers", str(workers)]  # fmt: skip


def server_env(uri: str) -> dict[str, str]:
    """The server's environment: ours plus the store URL in ``MLFLOW_BACKEND_STORE_URI``."""
    return {**os.environ, BACKEND_STORE_ENV: uri}


def run(args: argparse.Namespace) -> int:
    """Start ``mlflow server`` in the foreground; Ctrl-C or SIGTERM stops it and its workers."""
    # a missing, empty or foreign SQLite file is one line here, not a server that builds
    # MLflow's schema into it or dies with a traceback
    uri = check_readable(tracking_uri(args.tracking_uri))
    if not 0 < args.port < 65536:
        raise TrackingError(f"--port: expected 1..65535, got {args.port}")
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} is not loopback: anyone who can reach this machine "
              "can read (and change) the runs; there is no authentication", file=sys.stderr)  # fmt: skip
    if args.workers < 1:
        raise TrackingError(f"--workers: expected an integer >= 1, got {args.workers}")
    cmd = server_command(args.host, args.port, args.artifacts, args.workers)
    host = f"[{args.host}]" if ":" in args.host else args.host
    if args.print_command:
        print(f"# store {redact(uri)}, passed in the environment as ${BACKEND_STORE_ENV}")
        print(f"{BACKEND_STORE_ENV}=${BACKEND_STORE_ENV} " + " ".join(redact(c) for c in cmd))
        return 0
    # an unknown --study is one line before any server starts
    links = study_links(uri, f"http://{host}:{args.port}", args.study)
    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    print(f"starting the MLflow UI on {host}:{args.port} (store {redact(uri)}) ...", flush=True)
    # Own process group: stopping it ends mlflow's uvicorn workers too, and only them.
    # a plain postgresql:// store with the installed driver (MLflow's default is psycopg 3)
    proc = subprocess.Popen(cmd, start_new_session=True, env=server_env(driver_url(uri)))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        waited = wait_until_answers(_probe_url(args.host, args.port), proc)
        if waited is None:  # the server ended before it answered: its own output says why
            return proc.returncode or 1
        print(f"MLflow UI: http://{host}:{args.port} answers (after {waited:.0f} s; Ctrl-C "
              "stops); open:", flush=True)  # fmt: skip
        for label, url in links:
            print(f"  {label}: {url}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)


def _probe_url(host: str, port: int) -> str:
    """Where this machine asks whether the server answers (a wildcard bind: loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/health"


def wait_until_answers(
    url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S
) -> float | None:
    """Seconds until ``url`` answered 200; None when ``proc`` ended first; TrackingError when
    nothing answered within ``timeout_s``."""
    t0 = time.monotonic()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy
    while proc.poll() is None:
        try:
            with direct.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - t0 > timeout_s:
            raise TrackingError(f"the MLflow server did not answer {url} within {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return None


def study_links(uri: str, base: str, study: str | None = None) -> list[tuple[str, str]]:
    """(label, link) of each study's runs view (``study``: that one only; TrackingError naming
    the studies there are when it has no experiment), then the ad-hoc runs of the default
    experiment."""
    client = client_for(uri)
    exps = client.search_experiments()
    studies = _studies(client, exps)  # study → experiment id
    if study is not None and study not in studies:
        shown = ", ".join(sorted(studies)) or "none yet"
        raise TrackingError(f"--study: no study '{study}' in {redact(uri)} (studies: {shown})")
    viewed = {e.tags[ExpTag.STUDY] for e in exps if ExpTag.STUDY in e.tags}  # the saved view
    names = [study] if study is not None else list(studies)[-MAX_LINKS:]
    links = [(f"study {n}", ui_urls(base, studies[n])["runs"] if n in viewed else
              f"{base}/#/experiments/{studies[n]}/runs?{UI_WORKFLOW_QUERY}")
             for n in names]  # fmt: skip
    default = next((e for e in exps if e.name == DEFAULT_EXPERIMENT), None)
    if study is None and default is not None:
        links.append((f"ad-hoc runs ({DEFAULT_EXPERIMENT})",
                      f"{base}/#/experiments/{default.experiment_id}/runs?{UI_WORKFLOW_QUERY}"))  # fmt: skip
    if not links:
        links.append(("experiments", f"{base}/#/experiments?{UI_WORKFLOW_QUERY}"))
    return links


def _studies(client: Any, exps: list) -> dict[str, str]:
    """{study: experiment id}, oldest first: the experiments a sweep marked with its study, and
    the experiments of the studies' parent runs (studies recorded before the mark)."""
    out: dict[str, str] = {}
    query = f"tags.`{Tag.KIND}` = '{Kind.STUDY}'"
    ids = [e.experiment_id for e in exps]
    for run in reversed(client.search_runs(ids, query, max_results=1000) if ids else []):
        if Tag.STUDY in run.data.tags:  # newest first from MLflow: the newest wins
            out[run.data.tags[Tag.STUDY]] = run.info.experiment_id
    for e in exps:
        if ExpTag.STUDY in e.tags:
            out[e.tags[ExpTag.STUDY]] = e.experiment_id
    return out


def _interrupt(*_: object) -> None:
    """SIGTERM → the same path as Ctrl-C (no waiting inside a signal handler: wait() holds a lock)."""
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL after 3 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=3)  # issue 29: cmcr ui exits within 5 s of SIGTERM
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
