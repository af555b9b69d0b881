"""``cmcr ui``: the MLflow UI on the embedded store, bound to 127.0.0.1 by default.

Equivalent plain command: ``MLFLOW_BACKEND_STORE_URI=sqlite:///runs/mlflow.db mlflow server``
(the default store, ``cmcr.names.DEFAULT_TRACKING_URI``). The store URL goes to the server in
that environment variable, which ``mlflow server`` reads, and never on its command line: a URL
with a password would be visible in ``ps`` to every user of the machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

from cmcr.errors import TrackingError
from cmcr.names import BACKEND_STORE_ENV, DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, TRACKING_URI_ENV
from cmcr.tracking.databases import driver_url
from cmcr.tracking.store import check_readable
from cmcr.uris import redact, tracking_uri


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
    if args.print_command:
        print(f"# store {redact(uri)}, passed in the environment as ${BACKEND_STORE_ENV}")
        print(f"{BACKEND_STORE_ENV}=${BACKEND_STORE_ENV} " + " ".join(redact(c) for c in cmd))
        return 0
    Path(args.artifacts).mkdir(parents=True, exist_ok=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"MLflow UI: http://{host}:{args.port}  (store {redact(uri)}; Ctrl-C stops)", flush=True)
    # Own process group: stopping it ends mlflow's uvicorn workers too, and only them.
    # a plain postgresql:// store with the installed driver (MLflow's default is psycopg 3)
    proc = subprocess.Popen(cmd, start_new_session=True, env=server_env(driver_url(uri)))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)


def _interrupt(*_: object) -> None:
    """SIGTERM → the same path as Ctrl-C (no waiting inside a signal handler: wait() holds a lock)."""
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
